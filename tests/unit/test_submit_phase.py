"""``pipeline.submit_phase``: a phase's jobs submitted from one task, every request at once.

The requests go through a recording ``pipeline.submit`` here; the real one (describe before
create on the local executor) runs in the end-to-end tests (test_airflow_api.py, test_reattach.py).
"""

from __future__ import annotations

import threading
import time

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from fmops import pipeline


def plan(candidate: str) -> dict:
    return {"kind": "training", "candidate": candidate, "target": "local", "settings": {}}


def refusal(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} for this request"}}, "Create")


class Submissions:
    """A recording ``pipeline.submit``: ``errors`` by candidate; each request takes ``delay``."""

    def __init__(self, errors: dict[str, BaseException] | None = None, delay: float = 0.0):
        self.errors = errors or {}
        self.delay = delay
        self.started: list[str] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def __call__(self, plan: dict) -> dict:
        with self.lock:
            self.started.append(plan["candidate"])
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            if plan["candidate"] in self.errors:
                raise self.errors[plan["candidate"]]
            return {**plan, "name": f"train-{plan['candidate']}", "action": "created"}
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def submissions(monkeypatch):
    def install(**kwargs) -> Submissions:
        recorder = Submissions(**kwargs)
        monkeypatch.setattr(pipeline, "submit", recorder)
        return recorder

    return install


def test_every_request_is_sent_at_once_and_the_handles_keep_the_plans_order(submissions):
    recorder = submissions(delay=0.05)
    plans = [plan(f"c{i}") for i in range(24)]

    handles = pipeline.submit_phase(plans)

    assert [h["candidate"] for h in handles] == [p["candidate"] for p in plans]
    assert [h["name"] for h in handles] == [f"train-c{i}" for i in range(24)]
    assert sorted(recorder.started) == sorted(p["candidate"] for p in plans)
    # several in flight, never more than the pool
    assert 1 < recorder.most_in_flight <= pipeline.SUBMIT_THREADS


def test_a_request_refused_for_good_fails_its_candidate_alone(submissions):
    submissions(errors={"b": refusal("ValidationException")})

    handles = pipeline.submit_phase([plan("a"), plan("b"), plan("c")])

    assert [h["name"] for h in handles] == ["train-a", None, "train-c"]
    refused = handles[1]
    assert refused["action"] == "refused"
    assert refused["candidate"] == "b"
    assert "ValidationException" in refused["error"]
    assert "for this request" in refused["error"]


def test_a_quota_refusal_waits_for_the_quota_instead_of_failing(submissions):
    submissions(errors={"b": refusal("ResourceLimitExceeded")})

    handles = pipeline.submit_phase([plan("a"), plan("b")])

    waiting = handles[1]
    assert waiting["action"] == pipeline.WAITING_FOR_QUOTA
    assert waiting["name"] is None and "error" not in waiting
    assert waiting["plan"] == plan("b")  # what its wait sends again (tests/unit/test_quota_wait.py)


def test_a_transient_error_is_raised_after_every_other_request_was_sent(submissions):
    recorder = submissions(
        errors={"a": refusal("ThrottlingException"), "c": refusal("ValidationException")}
    )

    with pytest.raises(ClientError, match="ThrottlingException"):
        pipeline.submit_phase([plan("a"), plan("b"), plan("c"), plan("d")])

    # b and d were started all the same: the task's retry finds them (describe before create)
    assert sorted(recorder.started) == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "error",
    [
        refusal("ThrottlingException"),
        refusal("ServiceUnavailable"),
        refusal("InternalFailure"),
        EndpointConnectionError(endpoint_url="https://api.sagemaker.eu-west-1.amazonaws.com"),
        ConnectionResetError("reset by peer"),
    ],
)
def test_what_counts_as_transient(error):
    assert pipeline.is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        refusal("ValidationException"),
        refusal("AccessDeniedException"),
        ValueError("bad plan"),
    ],
)
def test_what_counts_as_the_candidates_own(error):
    assert not pipeline.is_transient(error)


def test_the_runs_are_opened_once_every_job_is_started(submissions):
    recorder = submissions()
    seen_when_opening: list[int] = []

    def open_run(plan: dict, handle: dict) -> dict:
        seen_when_opening.append(len(recorder.started))
        return handle | {"mlflow": {"run_id": f"run-{plan['candidate']}"}}

    plans = [plan(f"c{i}") for i in range(10)]
    handles = pipeline.submit_phase(plans, open_run)

    assert seen_when_opening == [10] * 10  # the jobs did not wait for MLflow
    assert [h["mlflow"]["run_id"] for h in handles] == [f"run-c{i}" for i in range(10)]


def test_a_refused_request_gets_no_run_and_mlflow_down_is_transient(submissions):
    submissions(errors={"b": refusal("ValidationException")})
    opened: list[str] = []

    def open_run(plan: dict, handle: dict) -> dict:
        opened.append(plan["candidate"])
        return handle

    pipeline.submit_phase([plan("a"), plan("b")], open_run)
    assert opened == ["a"]

    def mlflow_down(plan: dict, handle: dict) -> dict:
        raise ConnectionRefusedError("127.0.0.1:5000")

    with pytest.raises(ConnectionRefusedError):
        pipeline.submit_phase([plan("a")], mlflow_down)

    # Whatever MLflow answers, it is never the candidate's failure: the task retries.
    def store_busy(plan: dict, handle: dict) -> dict:
        raise RuntimeError("(sqlite3.OperationalError) database is locked")

    with pytest.raises(RuntimeError, match="database is locked"):
        pipeline.submit_phase([plan("a"), plan("b")], store_busy)


def test_an_empty_phase_submits_nothing(submissions):
    recorder = submissions()
    assert pipeline.submit_phase([]) == []
    assert recorder.started == []


def test_the_wait_of_a_refused_request_fails_at_once_with_its_reason():
    from airflow.sdk.exceptions import AirflowFailException

    from fmops.airflow.operators import AwaitJobOperator

    handle = pipeline.refused_handle(plan("b"), refusal("ValidationException"))
    wait = AwaitJobOperator(task_id="await_training", handle=handle)

    # AirflowFailException: no retry, the request would be refused again
    with pytest.raises(AirflowFailException, match="training request of b was refused: Client"):
        wait.execute({})


def test_a_refused_request_is_named_among_the_training_failures():
    handle = pipeline.refused_handle(plan("b"), refusal("ValidationException"))

    (failure,) = pipeline.training_failures([handle], trained=[])

    assert failure["candidate"] == "b"
    assert failure["job_name"] is None
    assert failure["status"] == "Refused"
    assert "ValidationException" in failure["reason"]


def test_a_candidate_the_quota_never_let_start_is_named_among_the_failures():
    handle = pipeline.waiting_handle(plan("b"), refusal("ResourceLimitExceeded"))
    started = {"candidate": "a", "job_name": "train-a", "status": "Completed"}

    (failure,) = pipeline.training_failures([{**plan("a"), "name": "train-a"}, handle], [started])

    assert (failure["candidate"], failure["status"]) == ("b", "NotStarted")
    assert "ResourceLimitExceeded" in failure["reason"]


def test_the_first_run_is_opened_alone_before_the_others(submissions):
    """MLflow makes a dataset's row on first use without a lock; a phase's jobs share their
    data, so the first job's run (which makes the rows) is opened before any other starts."""
    submissions()
    spans: dict[str, list[float]] = {}

    def open_run(plan: dict, handle: dict) -> dict:
        spans[plan["candidate"]] = [time.monotonic()]
        time.sleep(0.05)
        spans[plan["candidate"]].append(time.monotonic())
        return handle

    pipeline.submit_phase([plan(f"c{i}") for i in range(6)], open_run)

    first_end = spans["c0"][1]
    assert all(start >= first_end for name, (start, _) in spans.items() if name != "c0"), spans


def test_outcomes_a_wait_returned_from_the_triggerer_are_decoded():
    """A wait ended by JobTrigger's TaskSuccessEvent reaches the next task as a JSON string
    (Airflow 3.3.2 encodes those XComs once more); a worker's outcome and a failed wait's None
    pass as they are."""
    import json

    from fmops.airflow.tasks import job_outcomes

    outcome = {"candidate": "tiny-full", "status": "Completed", "cost": None, "metrics": {"a": 1}}
    assert job_outcomes([json.dumps(outcome), outcome, None]) == [outcome, outcome, None]
