"""Reattach: kill the whole Airflow process while training jobs run, re-run the same DAG run.

The requirement: a killed task or scheduler, retried or re-run, finds its jobs by name and waits
on them, and no job is ever started twice. Here, with real Airflow and real training jobs:

1. ``fmops_finetune`` runs under ``dag.test()`` in its own process group (scheduler loop, task
   runner and inline triggerer all live in that one process) with a fixed logical date, so that
   a second ``dag.test()`` gets the same run_id and therefore the same job names.
2. Once one training job is ``Training``, the other waits for the executor's only slot and an
   ``await_training`` has deferred (its trigger polls the job), the whole process group gets
   SIGKILL. The jobs run on: their supervisors are detached, in sessions of their own.
3. The same DAG run is run again (``dag.test()`` clears it and runs every task anew, so the
   submit task has nothing but the job names to go by). The waiting job is held in
   ``Pending`` until the re-run's submit task is done, so that it must find a job that is still
   running: ``reattached``.
4. Counted from the executor's job records: one training job per candidate, each the same job
   (creation time, supervisor) as before the kill; the re-run ends green.

``force_rerun`` is set so that the re-run's submit can only find the jobs by their names, not
through the training cache (which, without it, answers first with action ``cached``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
DAG_ID = "fmops_finetune"
CANDIDATES = ("tiny-full", "tiny-lora")

if TYPE_CHECKING:
    from fmops.jobs.local import LocalJobBackend

pytestmark = pytest.mark.e2e

# One DAG run under dag.test(): argv is the logical date (also its run_after, hence its run_id)
# and the run conf. The same arguments twice make the same run_id. (`airflow dags test` cannot:
# it leaves run_after to be now, and the run_id is made from run_after, so each call is a new run.)
RUN_DAG = """\
import faulthandler, json, os, signal, sys
from datetime import datetime
faulthandler.register(signal.SIGUSR1, all_threads=True)  # the stacks, when the test asks
from airflow.dag_processing.dagbag import DagBag

dag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag(sys.argv[1])
when = datetime.fromisoformat(sys.argv[2])
run = dag.test(logical_date=when, run_after=when, run_conf=json.loads(sys.argv[3]))
print(f"dag run {run.run_id} ended {run.state}", flush=True)
"""

# Holds one slot of the local executor (the supervisors' flock on .slots/slot-N): a blocking
# flock, so that it wins the slot from a supervisor's 0.5 s polling the moment a job frees it.
# It lets go when killed, or when its stdin closes (the test died).
HOLD_SLOT = """\
import fcntl, sys
handle = open(sys.argv[1], "w")
fcntl.flock(handle, fcntl.LOCK_EX)
sys.stdin.read()
"""

# Seconds; generous, since this machine may be busy with other work.
TRAINING_STARTS_WITHIN = 300
SUBMITS_DONE_WITHIN = 300
RUN_ENDS_WITHIN = 600


def _config_file(tmp_path: Path) -> Path:
    """tiny.yaml with the two good candidates, one job at a time, no baseline evaluation."""
    raw = yaml.safe_load(TINY.read_text())
    raw["pipeline"] = "fmops-reattach"
    raw["candidates"] = [c for c in raw["candidates"] if c["name"] in CANDIDATES]
    raw["data"]["evaluation_sample_size"] = 100
    raw["training"]["max_concurrent_jobs"] = 1
    raw["evaluation"].update(baseline=False, gate={})
    raw["registry"]["model_name"] = "fmops-reattach-classifier"
    raw["deployment"].update(endpoint_name="fmops-reattach", port=18091)
    path = tmp_path / "reattach.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _start(script: str, *args: str, log_path: Path) -> subprocess.Popen:
    """A child in its own process group, with this session's FMOPS_HOME and AIRFLOW_HOME."""
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", script, *args],
            cwd=PROJECT_ROOT,
            env=dict(os.environ),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_group(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _tail(path: Path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def _stacks(process: subprocess.Popen, log_path: Path) -> str:
    """The log's tail with every thread's stack of a run that has not ended (RUN_DAG's
    faulthandler answers SIGUSR1): where it is stuck, e.g. a thread that holds up its exit."""
    os.kill(process.pid, signal.SIGUSR1)
    time.sleep(2)
    return _tail(log_path, 200)


def _wait_for(
    condition: Callable[[], bool], within: float, what: str, state: Callable[[], Any]
) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within:.0f} s; state: {state()}")
        time.sleep(1)


def _jobs(backend: LocalJobBackend) -> dict[str, tuple[str, str]]:
    """Every training job record of the executor: name -> (status, secondary status)."""
    return {
        s["TrainingJobName"]: (s["TrainingJobStatus"], s["SecondaryStatus"])
        for s in backend.list_training_jobs()["TrainingJobSummaries"]
    }


def _task_instances(run_id: str, task_id: str) -> list[tuple[str, str | None, datetime | None]]:
    """(state, next_method, end_date) of each task instance; [] while the database is locked."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    query = select(TaskInstance).where(
        TaskInstance.dag_id == DAG_ID,
        TaskInstance.run_id == run_id,
        TaskInstance.task_id == task_id,
    )
    try:
        with create_session() as session:
            return [(str(ti.state), ti.next_method, ti.end_date) for ti in session.scalars(query)]
    except OperationalError:  # the run's process holds SQLite's write lock: ask again later
        return []


def _run_states(run_id: str) -> tuple[str | None, dict[str, list[str]]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id))
        if run is None:
            return None, {}
        states: dict[str, list[str]] = {}
        for ti in run.get_task_instances(session=session):
            states.setdefault(ti.task_id, []).append(str(ti.state))
        return str(run.state), states


def _returns(run_id: str, task_id: str) -> list[Any]:
    """The return values of a task of ``run_id``, by map index (one for a task not mapped)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=run_id, key="return_value", task_ids=task_id, dag_ids=DAG_ID)
    with create_session() as session:
        rows = session.scalars(query).all()
        values = {row.map_index: XComModel.deserialize_value(row) for row in rows}
    return [values[i] for i in sorted(values)]


def _identity(backend: LocalJobBackend, name: str) -> dict[str, Any]:
    """What tells one job from another started under the same name: creation and supervisor."""
    job_dir = backend.job_dir(name)
    record = json.loads((job_dir / "record.json").read_text())
    return {
        "creation_time": record["creation_time"],
        "supervisor": json.loads((job_dir / "supervisor.json").read_text()),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_new_jobs(backend: LocalJobBackend, existing: set[str]) -> None:
    """Stop the jobs this test started that still run, and wait until their supervisors exit."""
    from fmops import processes
    from fmops.jobs.backend import ACTIVE

    running = []
    for summary in backend.list_training_jobs()["TrainingJobSummaries"]:
        name = summary["TrainingJobName"]
        if name not in existing and summary["TrainingJobStatus"] in ACTIVE:
            backend.stop_training_job(TrainingJobName=name)
            running.append(name)
    for summary in backend.list_processing_jobs()["ProcessingJobSummaries"]:
        name = summary["ProcessingJobName"]
        if name not in existing and summary["ProcessingJobStatus"] in ACTIVE:
            backend.stop_processing_job(ProcessingJobName=name)
            running.append(name)
    deadline = time.monotonic() + 60
    while running and time.monotonic() < deadline:
        running = [n for n in running if processes.alive(_identity(backend, n)["supervisor"])]
        time.sleep(0.5)


def test_killed_run_reattaches_to_its_running_jobs(airflow_db, tmp_path):
    from fmops import processes
    from fmops.jobs.local import LocalJobBackend
    from fmops.jobs.naming import job_name

    backend = LocalJobBackend(max_concurrent_jobs=1)
    existing = set(_jobs(backend)) | {
        s["ProcessingJobName"] for s in backend.list_processing_jobs()["ProcessingJobSummaries"]
    }
    when = datetime.now(UTC).replace(microsecond=0)
    run_id = f"manual__{when.isoformat()}"
    names = {candidate: job_name(DAG_ID, run_id, candidate) for candidate in CANDIDATES}
    conf = json.dumps({"config_file": str(_config_file(tmp_path)), "force_rerun": True})
    first_log, second_log = tmp_path / "first-run.log", tmp_path / "re-run.log"
    first = second = holder = None

    def ours() -> dict[str, tuple[str, str]]:
        return {n: s for n, s in _jobs(backend).items() if n in names.values()}

    try:
        # -- 1. run; kill the whole Airflow process group while await_training waits ----------
        first = _start(RUN_DAG, DAG_ID, when.isoformat(), conf, log_path=first_log)

        def waiting_on_jobs() -> bool:
            """One job trains, one waits for the slot, and an await_training has deferred."""
            if first.poll() is not None:
                pytest.fail(f"the first run ended before the kill:\n{_tail(first_log)}")
            secondary = sorted(s for _, s in ours().values())
            deferred = [t for t in _task_instances(run_id, "await_training") if t[1]]
            return secondary == ["Pending", "Training"] and bool(deferred)

        _wait_for(waiting_on_jobs, TRAINING_STARTS_WITHIN, "await_training waiting on jobs", ours)
        (training,) = [n for n, (_, s) in ours().items() if s == "Training"]
        (waiting,) = [n for n, (_, s) in ours().items() if s == "Pending"]
        # The waiting job must still be waiting when the re-run's submit looks for it: take the
        # slot the moment the training job frees it, until the re-run's submits are done.
        slot = str(backend.root / ".slots" / "slot-0")
        holder = _start(HOLD_SLOT, slot, log_path=tmp_path / "slot-holder.log")
        before = {name: _identity(backend, name) for name in names.values()}
        trainer_pid = json.loads((backend.job_dir(training) / "record.json").read_text())[
            "child_pid"
        ]

        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

        time.sleep(2)  # a job that died with the task would show as Failed by now
        after_kill = ours()
        assert after_kill[waiting] == ("InProgress", "Pending"), after_kill
        assert after_kill[training][0] in ("InProgress", "Completed"), after_kill
        assert after_kill[training][1] != "Failed", after_kill
        # describe() reports a job whose supervisor died as Failed; the processes are checked too.
        assert processes.alive(before[waiting]["supervisor"]), f"{waiting} died with Airflow"
        if after_kill[training][0] == "InProgress":
            assert _alive(trainer_pid), f"the training process of {training} died with Airflow"

        # -- 2. run the same DAG run again; release the slot once its submits are done ---------
        rerun_started = datetime.now(UTC)
        second = _start(RUN_DAG, DAG_ID, when.isoformat(), conf, log_path=second_log)

        def submits_done() -> bool:
            if second.poll() is not None:
                pytest.fail(f"the re-run ended before its submits:\n{_tail(second_log)}")
            # one task submits every candidate's job
            submits = _task_instances(run_id, "submit_training")
            return any(t[0] == "success" and t[2] >= rerun_started for t in submits)

        _wait_for(submits_done, SUBMITS_DONE_WITHIN, "the re-run's submit_training", ours)
        assert ours()[waiting][1] == "Pending", "the job to reattach to ended too early"
        _kill_group(holder)

        try:
            second.wait(timeout=RUN_ENDS_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the re-run did not end: jobs {ours()}\n{_stacks(second, second_log)}")
    finally:
        for process in (first, second, holder):
            _kill_group(process)
        _stop_new_jobs(backend, existing)

    # -- 3. the re-run found both jobs, waited on them, and started none -----------------------
    state, states = _run_states(run_id)
    assert state == "success", f"{states}\n{_tail(second_log)}"
    assert states["await_training"] == ["success", "success"], states

    (submitted,) = _returns(run_id, "submit_training")  # not mapped: one list of handles
    handles = {h["candidate"]: h for h in submitted}
    assert {c: h["name"] for c, h in handles.items()} == names
    actions = {h["name"]: h["action"] for h in handles.values()}
    assert actions[waiting] == "reattached", actions
    # The training job may have finished while the re-run started up: then it is reused.
    assert actions[training] in ("reattached", "reused"), actions

    # Counted from the executor's records: one job per candidate, no second attempt (-a2) ...
    jobs = _jobs(backend)
    for candidate, name in names.items():
        same = [n for n in jobs if n == name or n.startswith(f"{name}-a")]
        assert same == [name], f"{candidate}: training jobs {same}"
    new = {n: status for n, (status, _) in jobs.items() if n not in existing}
    assert new == dict.fromkeys(names.values(), "Completed"), new
    # ... and each is the very job started before the kill, not one created again under its name.
    assert {name: _identity(backend, name) for name in names.values()} == before
    outcomes = {o["job_name"]: o["status"] for o in _returns(run_id, "await_training")}
    assert outcomes == dict.fromkeys(names.values(), "Completed")

    # -- 4. MLflow: one run per job, found again by the re-run; no point logged twice ----------
    from fmops.config import load_config
    from fmops.registry import tracking

    config = load_config(tmp_path / "reattach.yaml")
    mlflow_client = tracking.client(config)
    experiment = mlflow_client.get_experiment_by_name(config.pipeline)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run_id}'"
    )
    training = [r for r in runs if r.data.tags["fmops.role"] == "training"]
    assert sorted(r.data.tags["fmops.job_name"] for r in training) == sorted(names.values())
    for job_run in training:
        assert job_run.info.status == "FINISHED", job_run.data.tags["fmops.job_name"]
        steps = [
            p.step for p in mlflow_client.get_metric_history(job_run.info.run_id, "train_loss")
        ]
        assert steps and len(steps) == len(set(steps)), steps
    (parent,) = [r for r in runs if r.data.tags["fmops.role"] == "parent"]
    assert parent.info.status == "FINISHED"
