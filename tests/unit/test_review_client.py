"""``fmops approve|reject`` follows its answer until the answered try of await_approval ends, and
answers a retry's new question when Airflow dropped the first answer (``review_client._follow``).

The Airflow side is a script of what its REST API returns, call after call: the states are the
ones a stack showed when the race happened (tests/integration/test_airflow_api.py's review test
hit it on a busy machine: try 1 answered, marked up_for_retry by the scheduler, try 2 asking
again with the answer cleared)."""

from __future__ import annotations

from typing import Any

from fmops import review_client

TASK = "/api/v2/dags/fmops_deploy/dagRuns/r/taskInstances/await_approval"
QUESTION = f"{TASK}/-1/hitlDetails"
REJECT = {"chosen_options": ["Reject"], "params_input": {"comment": "too slow"}}


class FakeAirflow:
    """The task instance's (state, try) after each GET, in order; the last one repeats."""

    def __init__(self, states: list[tuple[str, int]], answered_by: str | None = None):
        self.states = list(states)
        self.answered_by = answered_by  # someone else's answer to the retry's question
        self.patches: list[dict[str, Any]] = []
        self.sleeps: list[float] = []  # what the client waited, in order
        self.created_at = "2000-01-01T00:00:00Z"  # when the retry's question was asked

    def __call__(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        if method == "GET" and url == TASK:
            state, attempt = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return {"state": state, "try_number": attempt}
        if method == "GET" and url == QUESTION:
            if self.answered_by:
                return {
                    "response_received": True,
                    "chosen_options": ["Approve"],
                    "responded_by_user": {"id": self.answered_by, "name": self.answered_by},
                }
            return {"response_received": False, "created_at": self.created_at}
        if method == "PATCH" and url == QUESTION:
            self.patches.append(kwargs["json"])
            return {**kwargs["json"], "responded_by_user": {"id": "ann", "name": "ann"}}
        raise AssertionError(f"unexpected {method} {url}")


def follow(airflow: FakeAirflow, seconds: float = 30) -> dict[str, Any]:
    first = {**REJECT, "responded_by_user": {"id": "ann", "name": "ann"}}
    return review_client._follow(
        airflow, TASK, QUESTION, REJECT, 1, first, seconds, poll=0, sleep=airflow.sleeps.append
    )


def test_an_answer_the_task_acts_on_is_confirmed_once_its_try_ends():
    airflow = FakeAirflow([("scheduled", 1), ("queued", 1), ("running", 1), ("skipped", 1)])
    answer = follow(airflow)
    assert answer["confirmed"] is True and answer["chosen_options"] == ["Reject"]
    assert airflow.patches == []  # nothing sent again
    assert airflow.states == [("skipped", 1)]  # it read until the try ended


def test_a_dropped_answer_is_given_again_to_the_retrys_question_once():
    airflow = FakeAirflow(
        [
            ("queued", 1),
            ("up_for_retry", 1),  # the scheduler took try 1 for a task killed from outside
            ("scheduled", 2),
            ("running", 2),
            ("awaiting_input", 2),  # try 2 asks again; the answer is cleared
            ("awaiting_input", 2),  # still parked while the second answer lands
            ("running", 2),
            ("skipped", 2),
        ]
    )
    answer = follow(airflow)
    assert airflow.patches == [REJECT]
    assert answer["confirmed"] is True and answer["state"] == "skipped"
    assert answer["responded_by_user"] == {"id": "ann", "name": "ann"}
    assert max(airflow.sleeps) == 0.0  # the retry's question had long settled: no wait


def test_a_retrys_fresh_question_is_answered_only_once_it_has_settled(monkeypatch):
    """Answered at once, a retry's question can fall into the window where Airflow drops
    answers again, try after try, until await_approval fails with its retries spent."""
    from datetime import UTC, datetime, timedelta

    asked = datetime.now(UTC) - timedelta(seconds=4)  # asked 4 s ago
    airflow = FakeAirflow([("up_for_retry", 1), ("awaiting_input", 2), ("skipped", 2)])
    airflow.created_at = asked.isoformat()
    follow(airflow)
    assert airflow.patches == [REJECT]
    waited = [s for s in airflow.sleeps if s > 0]
    assert len(waited) == 1 and 10.0 <= waited[0] <= review_client.SETTLE_SECONDS - 3.9


def test_the_wait_before_an_answer_is_bounded_by_the_settle_time():
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 12, 8, 1, 0, 0, tzinfo=UTC)

    def wait(seconds_ago: float) -> float:
        created = (now - timedelta(seconds=seconds_ago)).isoformat()
        return review_client.settle_wait({"created_at": created}, now)

    assert wait(0) == review_client.SETTLE_SECONDS
    assert wait(5) == review_client.SETTLE_SECONDS - 5
    assert wait(3600) == 0.0  # a question asked an hour ago is answered at once
    assert wait(-600) == review_client.SETTLE_SECONDS  # Airflow's clock ahead: still bounded
    naive = (now - timedelta(seconds=5)).replace(tzinfo=None).isoformat()  # no zone: UTC
    assert review_client.settle_wait({"created_at": naive}, now) == review_client.SETTLE_SECONDS - 5
    assert review_client.settle_wait({}, now) == review_client.SETTLE_SECONDS


def test_a_try_that_failed_after_the_answer_is_reported_as_failed():
    airflow = FakeAirflow([("running", 1), ("failed", 1)])
    answer = follow(airflow)
    assert answer["confirmed"] is True and answer["state"] == "failed"


def test_a_retry_someone_else_answered_is_left_to_their_answer():
    airflow = FakeAirflow([("up_for_retry", 1), ("awaiting_input", 2)], answered_by="bob")
    answer = follow(airflow)
    assert airflow.patches == []
    assert answer["responded_by_user"]["name"] == "bob" and answer["confirmed"] is True


def test_a_task_that_never_ends_is_reported_unconfirmed_not_answered_twice():
    airflow = FakeAirflow([("queued", 1)])
    answer = follow(airflow, seconds=0.05)
    assert answer["confirmed"] is False and answer["chosen_options"] == ["Reject"]
    assert airflow.patches == []
