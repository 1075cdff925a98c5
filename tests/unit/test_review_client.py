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
            return {"response_received": False}
        if method == "PATCH" and url == QUESTION:
            self.patches.append(kwargs["json"])
            return {**kwargs["json"], "responded_by_user": {"id": "ann", "name": "ann"}}
        raise AssertionError(f"unexpected {method} {url}")


def follow(airflow: FakeAirflow, seconds: float = 30) -> dict[str, Any]:
    first = {**REJECT, "responded_by_user": {"id": "ann", "name": "ann"}}
    return review_client._follow(airflow, TASK, QUESTION, REJECT, 1, first, seconds, poll=0)


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
    assert answer["confirmed"] is True
    assert answer["responded_by_user"] == {"id": "ann", "name": "ann"}


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
