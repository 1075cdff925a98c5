"""Which task instances fmops' listener acts on when they are marked failed: only a job task of
fmops_finetune set failed by a person (Airflow's api-server calls the hook with no previous
state), never a task that failed by itself. What the hook then does (stop that job, end its run)
is tested with a real job and MLflow server in tests/integration/test_live_tracking.py."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from fmops.airflow import listener

MANUAL = "TaskInstance's state was manually set to `failed`."


class Calls(list):
    """The calls of ``_end_job``; ``done`` is set by the first."""

    def __init__(self) -> None:
        super().__init__()
        self.done = threading.Event()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    """What reaches the job's end: the real ``_end_job`` with its grace period (0.3 s here),
    ``end_dag_run`` recorded instead of run."""
    recorded = Calls()
    monkeypatch.setattr(listener, "DAG_RUN_GRACE_SECONDS", 0.3)
    monkeypatch.setattr(
        listener,
        "_xcom",
        lambda dag_id, run_id, task_id, key, map_index=-1: (
            # a submit task (not mapped) returns its phase's handles as one list
            [{"name": f"job-{task_id}-{i}"} for i in range(3)] + [{"name": None}]
            if key == "return_value" and task_id.startswith("submit") and map_index == -1
            else {"config": {}}
            if key == "return_value"
            else {"run_id": "r"}
        ),
    )
    monkeypatch.setattr("fmops.pipeline.config_of", lambda resolved: "config")

    def end_dag_run(where, config, dag_id, run_id, reason, jobs=None):
        recorded.append((dag_id, run_id, sorted(jobs or []), reason))
        recorded.done.set()
        return {"stopped_jobs": sorted(jobs or []), "ended_runs": []}

    monkeypatch.setattr("fmops.pipeline.end_dag_run", end_dag_run)
    ended_runs: list[tuple] = []
    monkeypatch.setattr(listener, "_end", lambda *args: ended_runs.append(args))
    recorded.dag_runs = ended_runs  # type: ignore[attr-defined]
    return recorded


def ti(task_id: str, dag_id: str = "fmops_finetune", map_index: int = 1) -> SimpleNamespace:
    return SimpleNamespace(dag_id=dag_id, run_id="manual__1", task_id=task_id, map_index=map_index)


@pytest.mark.parametrize(
    ("task_id", "submit"),
    [("await_training", "submit_training"), ("await_evaluation", "submit_evaluation")],
)
def test_a_wait_marked_failed_by_hand_stops_its_candidates_job(calls, task_id, submit):
    listener.on_task_instance_failed(None, ti(task_id), MANUAL)
    assert calls.done.wait(10)
    ((dag_id, run_id, jobs, reason),) = calls
    # the handle at the wait's map index, not its neighbours'
    assert (dag_id, run_id, jobs) == ("fmops_finetune", "manual__1", [f"job-{submit}-1"])
    assert reason == f"{task_id}[1] was set failed by hand: {MANUAL}"
    assert listener._ending == {}  # nothing kept once it is done


def test_a_wait_marked_failed_stops_the_job_it_moved_to(calls, monkeypatch):
    """A wait whose job started later (after a quota refusal) or moved (capacity fallback) keeps
    that job in its own XCom: marking it failed stops that one too."""
    real = listener._xcom

    def xcom(dag_id, run_id, task_id, key, map_index=-1):
        if task_id == "await_training" and key == "job":
            return {"name": f"moved-{map_index}"}
        return real(dag_id, run_id, task_id, key, map_index)

    monkeypatch.setattr(listener, "_xcom", xcom)
    listener.on_task_instance_failed(None, ti("await_training"), MANUAL)
    assert calls.done.wait(10)
    ((_, _, jobs, _),) = calls
    assert jobs == ["job-submit_training-1", "moved-1"]


@pytest.mark.parametrize("submit", ["submit_training", "submit_evaluation"])
def test_a_submit_task_marked_failed_by_hand_stops_every_job_of_its_phase(calls, submit):
    listener.on_task_instance_failed(None, ti(submit, map_index=-1), MANUAL)
    assert calls.done.wait(10)
    ((_, _, jobs, reason),) = calls
    # every job it started; the refused request (no name) has none to stop
    assert jobs == [f"job-{submit}-{i}" for i in range(3)]
    assert reason == f"{submit}[-1] was set failed by hand: {MANUAL}"


def test_task_instances_failed_with_their_dag_run_are_left_to_the_dag_run(calls):
    """A DAG run set failed by hand: Airflow fails its running task instances and calls this
    hook for each, then the DAG run's hook, in one request. Only the DAG run's hook acts (one
    pass over every job, with its reason), not one more per task instance."""
    listener.on_task_instance_failed(None, ti("await_training", map_index=0), MANUAL)
    listener.on_task_instance_failed(None, ti("await_training", map_index=1), MANUAL)
    listener.on_dag_run_failed(
        SimpleNamespace(dag_id="fmops_finetune", run_id="manual__1"), "set failed"
    )
    assert not calls.done.wait(1.0)  # past the grace period: no task instance acted
    assert calls == []
    assert listener._ending == {}
    (ended,) = calls.dag_runs  # the DAG run's own pass
    assert ended[:2] == ("fmops_finetune", "manual__1")


@pytest.mark.parametrize(
    ("previous", "instance"),
    [
        ("running", ti("await_training")),  # it failed by itself: its wait handled the job
        (None, ti("register")),  # no job of its own
        (None, ti("deploy", dag_id="fmops_deploy")),
        (None, ti("await_training", dag_id="someone_elses_dag")),
    ],
)
def test_other_failures_are_left_alone(calls, previous, instance):
    listener.on_task_instance_failed(previous, instance, MANUAL)
    assert not calls.done.wait(0.5)
    assert calls == []


def test_a_broken_task_instance_does_not_raise_into_airflow(calls):
    listener.on_task_instance_failed(None, object(), MANUAL)
    assert calls == []
