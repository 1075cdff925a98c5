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
    recorded = Calls()
    done = recorded.done

    def end_job(*args: object, reason: str) -> None:
        recorded.append((*args, reason))
        done.set()

    monkeypatch.setattr(listener, "_end_job", end_job)
    return recorded


def ti(task_id: str, dag_id: str = "fmops_finetune", map_index: int = 1) -> SimpleNamespace:
    return SimpleNamespace(dag_id=dag_id, run_id="manual__1", task_id=task_id, map_index=map_index)


@pytest.mark.parametrize(
    ("task_id", "submit"),
    [
        ("await_training", "submit_training"),
        ("submit_training", "submit_training"),
        ("await_evaluation", "submit_evaluation"),
        ("submit_evaluation", "submit_evaluation"),
    ],
)
def test_a_job_task_marked_failed_by_hand_stops_its_job(calls, task_id, submit):
    listener.on_task_instance_failed(None, ti(task_id), MANUAL)
    assert calls.done.wait(10)
    ((dag_id, run_id, task, map_index, reason),) = calls
    assert (dag_id, run_id, task, map_index) == ("fmops_finetune", "manual__1", submit, 1)
    assert reason == f"{task_id}[1] was set failed by hand: {MANUAL}"


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
