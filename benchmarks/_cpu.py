"""CPU seconds by process group while a benchmark's DAG run goes on (benchmarks/fanout.py).

Every process on the machine is sampled every ``interval`` seconds (psutil: its own user +
system time, children not included, so nothing is counted twice) and put in a group by its
command line, which Airflow rewrites to say what each process does (``setproctitle``):

- ``scheduler``: the scheduler's main loop;
- ``executor workers``: the LocalExecutor's worker processes, each a task supervisor while it
  runs a workload (Celery: the worker pool processes and their supervisors);
- ``task processes``: the task runners the supervisors fork (``airflow worker -- <ti id>``):
  Airflow's task runner, the DAG file's import and fmops' task code;
- ``triggerer``: the triggerer and its trigger runner, where fmops' ``JobTrigger`` polls;
- ``dags test``: ``airflow dags test``, which runs the scheduling loop, the tasks and the
  triggers in one process;
- ``dag processor``, ``api server`` (the UI, the REST API, and the execution API that every
  task process and the triggerer call), ``postgres`` (Airflow's metadata database),
  ``jobs`` (the no-op jobs and their runner), ``mlflow``, ``redis``, and ``other`` (whatever
  else ran on the machine, this benchmark's own process included).

A process's CPU time after its last sample is not seen (up to ``interval`` of a process that
ends); ``unattributed`` is the machine's CPU time over the same window (``/proc/stat``, every
core) minus the sum of the groups, which bounds that loss. Written here rather than taken from
Airflow's metrics: Airflow's StatsD metrics time its loops, not the CPU its processes spend.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from typing import Any

import psutil

# (group, substrings of the command line), first match wins; the order matters: a task process
# ("airflow worker -- <id>") is not a LocalExecutor worker ("airflow worker -- LocalExecutor").
GROUPS = (
    ("dags test", ("airflow dags test",)),
    ("executor workers", ("airflow worker -- LocalExecutor", "airflow supervisor:")),
    ("task processes", ("airflow worker -- ",)),
    ("executor workers", ("airflow task supervisor", "celery")),
    ("scheduler", ("airflow scheduler", "scheduler_command")),
    ("dag processor", ("dag-processor", "dag_processor")),
    ("triggerer", ("triggerer",)),
    ("jobs", ("fmops.jobs.runner", "fmops/jobs/runner.py", "_noop_job", "train.py", "evaluate.py")),
    ("mlflow", ("mlflow",)),
    ("api server", ("api_server", "api-server", "uvicorn", "gunicorn")),
    ("postgres", ("postgres",)),
    ("redis", ("redis-server",)),
    ("airflow (other)", ("airflow",)),
)


CATCH_ALL = frozenset({"airflow (other)", "other"})


def group_of(cmdline: str) -> str:
    for group, needles in GROUPS:
        if any(needle in cmdline for needle in needles):
            return group
    return "other"


class CpuSampler:
    """``with CpuSampler() as cpu: ...``, then ``cpu.result()``: CPU seconds per group."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self._last: dict[tuple[int, float], tuple[str, float]] = {}
        self._base: dict[tuple[int, float], float] = {}
        self._names: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self.samples = 0
        self._own = 0.0

    def _sample(self) -> None:
        for proc in psutil.process_iter(["pid", "create_time", "cmdline", "name", "cpu_times"]):
            info = proc.info
            times = info["cpu_times"]
            if times is None or info["create_time"] is None:
                continue  # gone, or not ours to read
            key = (info["pid"], info["create_time"])
            cmdline = " ".join(info["cmdline"] or []) or (info["name"] or "")
            group = group_of(cmdline)
            known = self._last.get(key)
            # A forked task runner renames itself after its first sample: the latest name wins,
            # unless it says less (a process that is exiting shows no command line, only a
            # 15-character name).
            if known and group in CATCH_ALL and known[0] not in CATCH_ALL:
                group = known[0]
            self._last[key] = (group, times.user + times.system)
            self._names[key] = cmdline.replace("\n", " ")[:90]
        self.samples += 1

    def _loop(self) -> None:
        began = time.thread_time()
        while not self._stop.wait(self.interval):
            self._sample()
        self._own = time.thread_time() - began  # the sampling's own cost, inside "other"

    def __enter__(self) -> CpuSampler:
        self._machine0 = psutil.cpu_times()
        self._wall0 = time.perf_counter()
        self._sample()
        self._base = {key: seconds for key, (_, seconds) in self._last.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self._wall = time.perf_counter() - self._wall0
        machine = psutil.cpu_times()
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        self._machine = sum(getattr(machine, f) - getattr(self._machine0, f) for f in busy)

    def result(self) -> dict[str, Any]:
        groups: dict[str, float] = defaultdict(float)
        for key, (group, seconds) in self._last.items():
            groups[group] += seconds - self._base.get(key, 0.0)
        counted = sum(groups.values())
        # the biggest processes of the catch-all groups, to name what they hold
        loose = [
            (seconds - self._base.get(key, 0.0), group, self._names[key])
            for key, (group, seconds) in self._last.items()
            if group in CATCH_ALL
        ]
        loose.sort(reverse=True)
        return {
            "wall_s": self._wall,
            "cores": os.cpu_count(),
            "machine_busy_s": self._machine,
            "groups_s": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
            "unattributed_s": self._machine - counted,
            "samples": self.samples,
            "sampler_s": self._own,
            "largest_unsorted": [
                {"cpu_s": round(c, 2), "group": g, "cmdline": n} for c, g, n in loose[:6] if c > 0
            ],
        }


def print_cpu(label: str, cpu: dict[str, Any]) -> None:
    """One run's CPU table: seconds and share of the machine's busy time per group."""
    busy = cpu["machine_busy_s"] or 1.0
    print(
        f"\nCPU by process group, {label}: {cpu['machine_busy_s']:.0f} CPU s busy over "
        f"{cpu['wall_s']:.0f} s on {cpu['cores']} cores "
        f"({cpu['machine_busy_s'] / (cpu['wall_s'] * cpu['cores']) * 100:.0f}% of the machine)"
    )
    for group, seconds in cpu["groups_s"].items():
        print(f"  {group:22} {seconds:8.1f} s {seconds / busy * 100:5.1f}%")
    print(
        f"  {'unattributed':22} {cpu['unattributed_s']:8.1f} s "
        f"{cpu['unattributed_s'] / busy * 100:5.1f}%  (ended between samples; kernel)"
    )
    print(f"  the sampling itself: {cpu['sampler_s']:.1f} s ({cpu['samples']} samples), in other")
    for item in cpu["largest_unsorted"]:
        print(f"    {item['group']:16} {item['cpu_s']:6.1f} s  {item['cmdline']}")
