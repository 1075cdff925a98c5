"""The supervisor of one local job: ``python -S .../fmops/jobs/runner.py JOB_DIR``.

The local executor starts this process detached (its own session), so that the job outlives the
Airflow task that submitted it. It plays SageMaker's control plane for one job:

1. waits for a free slot of the executor's concurrency cap (``SecondaryStatus: Pending``);
2. runs the job's command (``plan.json``) in its own process group, output to ``job.log``;
3. enforces ``MaxRuntimeInSeconds`` and stop requests: SIGTERM to the job's process group, then
   SIGKILL after the grace period;
4. matches ``MetricDefinitions`` over the log, packs ``model.tar.gz`` / copies outputs on success,
   and records the final status with SageMaker's field values in ``record.json``.

Standard library only: it starts in a fraction of a second and has nothing to fail on import. The
executor runs it by its path with ``-S`` (no ``site``: no site-packages, no ``.pth`` files, no
``sitecustomize``), and the modules it needs only at the end (``tarfile``, ``shutil``) are imported
there: a fan-out of 256 jobs starts 256 of these at once, and each one's start-up is CPU taken from
the others (see BENCHMARKS.md, "Fan-out").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

POLL_SECONDS = 0.5
STOP_REQUEST = "stop.request"
LOG_TAIL_BYTES = 2000


def now() -> str:
    return datetime.now(UTC).isoformat()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, data: dict) -> None:
    """Atomic write: a reader never sees half a record."""
    # per process and thread: two writers of the same file never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class Record:
    """record.json, the job's status as describe reports it."""

    def __init__(self, job_dir: Path):
        self.path = job_dir / "record.json"

    def update(self, **fields: object) -> dict:
        data = read_json(self.path)
        data.update(fields)
        data["last_modified"] = now()
        write_json(self.path, data)
        return data

    def transition(self, secondary: str, message: str, **fields: object) -> None:
        data = read_json(self.path)
        stamp = now()
        transitions = data.setdefault("transitions", [])
        if transitions and "EndTime" not in transitions[-1]:
            transitions[-1]["EndTime"] = stamp
        transitions.append({"Status": secondary, "StartTime": stamp, "StatusMessage": message})
        data.update(fields, secondary_status=secondary, last_modified=stamp)
        write_json(self.path, data)


def acquire_slot(
    slots_dir: Path, count: int, should_stop, ticket: str | None = None
) -> object | None:
    """Hold one of ``count`` flock slots; the lock dies with this process, never leaks.

    Jobs beyond the cap wait in the order of their ``ticket`` (the job's submission time, then
    its name): a waiter takes a slot only when fewer waiters are ahead of it than there are
    free slots, so a later job never starts before an earlier one. Each waiter holds a flock on
    its ticket file in ``queue/``; a ticket whose holder died (no lock) is removed by the next
    waiter that looks at it. Written here rather than taken from a library: the supervisor
    imports only the standard library (see the module docstring).
    """
    slots_dir.mkdir(parents=True, exist_ok=True)
    queue = slots_dir / "queue"
    queue.mkdir(exist_ok=True)
    ticket = ticket or f"{time.time_ns():020d}-{os.getpid()}"
    # Locked before it gets its name, so that no waiter ever sees it unlocked and removes it.
    mine = open(queue / f".{ticket}", "w")  # noqa: SIM115 (held while waiting)
    fcntl.flock(mine, fcntl.LOCK_EX)
    os.rename(queue / f".{ticket}", queue / ticket)
    try:
        while not should_stop():
            ahead = _live_tickets_ahead(queue, ticket, limit=count)
            if ahead < count:
                slot = _take_slot(slots_dir, count, skip=ahead)
                if slot is not None:
                    return slot
            time.sleep(POLL_SECONDS)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            (queue / ticket).unlink()
        mine.close()


def _live_tickets_ahead(queue: Path, ticket: str, limit: int) -> int:
    """How many waiters are ahead of ``ticket`` (counted up to ``limit``); removes the tickets
    of waiters that died on the way."""
    ahead = 0
    for name in sorted(n for n in os.listdir(queue) if not n.startswith(".")):
        if name >= ticket or ahead >= limit:
            break
        try:
            handle = open(queue / name)  # noqa: SIM115 (closed below)
        except FileNotFoundError:  # it took its slot meanwhile
            continue
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                ahead += 1  # its waiter holds it: alive
                continue
            with contextlib.suppress(FileNotFoundError):
                (queue / name).unlink()  # nobody holds it: its waiter died
    return ahead


def _take_slot(slots_dir: Path, count: int, skip: int) -> object | None:
    """A free slot, leaving the first ``skip`` free ones to the waiters ahead; None when there
    are not more than ``skip`` free."""
    held = []
    try:
        for index in range(count):
            handle = open(slots_dir / f"slot-{index}", "w")  # noqa: SIM115 (held until exit)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append(handle)
            if len(held) > skip:
                return held.pop()
        return None
    finally:
        for handle in held:
            handle.close()


def scan_metrics(log_path: Path, definitions: list[dict]) -> dict[str, dict]:
    """The last value of each MetricDefinitions regex in the log, as SageMaker reports it."""
    if not definitions or not log_path.exists():
        return {}
    text = log_path.read_text(errors="replace")
    found: dict[str, dict] = {}
    for definition in definitions:
        matches = re.findall(definition["Regex"], text)
        if matches:
            last = matches[-1]
            value = last[0] if isinstance(last, tuple) else last
            try:
                found[definition["Name"]] = {"value": float(value), "timestamp": now()}
            except ValueError:
                continue
    return found


def log_tail(log_path: Path) -> str:
    if not log_path.exists():
        return ""
    with log_path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
        return handle.read().decode(errors="replace").strip()


def failure_reason(job_dir: Path, plan: dict, code: int) -> str:
    # A job script may explain its own failure in output/failure (the SageMaker convention).
    failure_file = Path(plan["failure_file"])
    if failure_file.exists() and failure_file.read_text().strip():
        return "AlgorithmError: " + failure_file.read_text().strip()[:1000]
    tail = "\n".join(log_tail(job_dir / "job.log").splitlines()[-8:])
    if code < 0:  # Popen's code for a process ended by a signal
        how = f"was killed by {signal.Signals(-code).name}"
        if -code == signal.SIGKILL:
            how += " (by a person, or by the kernel when memory ran out)"
        return f"AlgorithmError: the job's process {how}. Last log lines:\n{tail}"[:1024]
    return f"AlgorithmError: the job exited with code {code}. Last log lines:\n{tail}"[:1024]


def finish_outputs(plan: dict) -> None:
    import shutil  # here, not at the top: see the module docstring
    import tarfile

    if plan.get("pack_model"):
        source = Path(plan["pack_model"]["source"])
        target = Path(plan["pack_model"]["target"])
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        # gzip level 1, not tarfile's default 9: model weights barely compress (538 MB of fp32
        # SmolLM2: 268 MB at level 1 in 12 s, 253 MB at level 9 in 120 s on one core).
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            for item in sorted(source.iterdir()):
                tar.add(item, arcname=item.name)
        os.replace(tmp, target)
    for output in plan.get("outputs", []):
        source, target = Path(output["source"]), Path(output["target"])
        if source.exists():
            shutil.copytree(source, target, dirs_exist_ok=True)


def main(job_dir: Path) -> int:
    plan = read_json(job_dir / "plan.json")
    record = Record(job_dir)
    stop = {"requested": False}

    def on_term(signum, frame):  # noqa: ARG001
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)

    def stop_requested() -> bool:
        return stop["requested"] or (job_dir / STOP_REQUEST).exists()

    record.transition("Pending", "Waiting for a free slot of the local executor")
    slot = acquire_slot(
        Path(plan["slots_dir"]),
        plan["max_concurrent"],
        stop_requested,
        ticket=f"{plan.get('submitted_ns', time.time_ns()):020d}-{job_dir.name}",
    )
    if slot is None:
        record.transition("Stopped", "Stopped before it started", status="Stopped", end_time=now())
        return 0

    record.transition("Starting", "Preparing the job environment")
    started = time.monotonic()
    with (job_dir / "job.log").open("ab", buffering=0) as log_file:
        child = subprocess.Popen(
            plan["command"],
            cwd=plan["cwd"],
            env=plan["env"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            process_group=0,
        )
        record.transition(
            plan["running_status"],
            "Running the job's entry point",
            child_pid=child.pid,
            start_time=now(),
        )
        deadline = started + plan["max_runtime_seconds"]
        outcome = None
        last_metrics = 0.0
        while True:
            try:
                code = child.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            if outcome is None and stop_requested():
                outcome = ("Stopped", "Stopped", "Stopped on request")
                record.transition("Stopping", "Stopping the job on request", status="Stopping")
                terminate(child, plan["stop_grace_seconds"])
            elif time.monotonic() > deadline and outcome is None:
                outcome = (
                    "Stopped",
                    "MaxRuntimeExceeded",
                    f"Job exceeded MaxRuntimeInSeconds={plan['max_runtime_seconds']}",
                )
                record.transition("Stopping", outcome[2], status="Stopping")
                terminate(child, plan["stop_grace_seconds"])
            if time.monotonic() - last_metrics > 5:
                record.update(metrics=scan_metrics(job_dir / "job.log", plan["metric_definitions"]))
                last_metrics = time.monotonic()
    runtime = round(time.monotonic() - started)
    metrics = scan_metrics(job_dir / "job.log", plan["metric_definitions"])
    common = {"end_time": now(), "runtime_seconds": runtime, "exit_code": code, "metrics": metrics}
    if outcome is not None:
        status, secondary, message = outcome
        record.transition(secondary, message, status=status, exit_message=message, **common)
        return 0
    if code != 0:
        reason = failure_reason(job_dir, plan, code)
        record.transition(
            "Failed",
            "The job's entry point failed",
            status="Failed",
            failure_reason=reason,
            **common,
        )
        return 0
    record.transition("Uploading", "Uploading the generated artifacts")
    try:
        finish_outputs(plan)
    except OSError as err:
        record.transition(
            "Failed",
            "Uploading failed",
            status="Failed",
            failure_reason=f"ClientError: could not save the outputs: {err}",
            **common,
        )
        return 0
    record.transition("Completed", "Job completed", status="Completed", **common)
    return 0


def terminate(child: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM the job's process group, then SIGKILL whatever is left after the grace period."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
