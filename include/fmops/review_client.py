"""``fmops approve|reject``: a reviewer's decision, sent to Airflow as that reviewer.

The decision is the response to fmops_deploy's ``await_approval`` (a human-in-the-loop task, see
``fmops.airflow.approval``), given through Airflow's REST API with a token for the reviewer's own
Airflow login. Airflow records who responded from that token and refuses anyone
``deployment.reviewers`` leaves out, so what this module sends cannot name anyone else.

Which DAG run waits is read from the version's MLflow tags (``fmops.deploy_run``, written by
``await_approval``), or given with ``--run``; either way the task's question must name the model
version, so a tag pointing elsewhere cannot make a reviewer decide on another version.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    import requests

# The question await_approval asks (fmops.airflow.approval imports these when a DAG file is
# parsed: this module imports nothing heavy at its top).
DAG_ID, TASK_ID = "fmops_deploy", "await_approval"
APPROVE, REJECT = "Approve", "Reject"
COMMENT = "comment"
TIMEOUT = 10.0  # seconds per request: a reviewer waits on it
# How long a decision is followed until the task that was answered ends (``_follow``).
CONFIRM_SECONDS = 120.0
ENDED = ("success", "skipped", "failed", "upstream_failed", "removed")
FAILED = ("failed", "upstream_failed")
# How old a question must be before it is answered: Airflow 3.3.2 can drop an answer given while
# the worker that parked the task is still exiting (``_follow``'s docstring), seconds on a busy
# machine. Answering only after this long keeps out of that window; a person in the UI takes
# longer than this anyway.
SETTLE_SECONDS = 15.0


class ReviewError(Exception):
    """The decision was not recorded; ``exit_code`` 2 for what the reviewer must change (the
    version, the run, the credentials), 1 for Airflow or MLflow being unreachable."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Reviewer:
    airflow_url: str
    username: str
    password: str


def waiting_run(tracking_uri: str, model: str, version: str) -> str:
    """The fmops_deploy run that waits for a review of ``model`` version ``version``, from the
    version's tags."""
    from mlflow.exceptions import MlflowException

    from fmops.registry import review, tracking

    try:
        tags = tracking.client_for(tracking_uri).get_model_version(model, str(version)).tags
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ReviewError(
                f"{model} has no version {version} in {tracking_uri}; the MLflow UI's Models page "
                "lists the versions"
            ) from err
        raise ReviewError(f"MLflow at {tracking_uri} failed: {err}", exit_code=1) from err
    run = tags.get(review.DEPLOY_RUN_TAG, "")
    outcome = tags.get(review.DEPLOY_OUTCOME_TAG, "")
    if outcome != "awaiting_approval" or not run.startswith(f"{DAG_ID}/"):
        last = f" (its last deploy run, {run}, ended {outcome})" if run else ""
        raise ReviewError(
            f"no fmops_deploy run waits for a review of {model} version {version}{last}; trigger "
            f"fmops_deploy with version {version}, or name the run with --run"
        )
    return run.split("/", 1)[1]


def decide(
    reviewer: Reviewer, model: str, version: str, run_id: str, approve: bool, comment: str
) -> dict[str, Any]:
    """Answer ``await_approval`` of ``run_id`` as ``reviewer``; returns Airflow's record of the
    response (``responded_by_user`` is who Airflow authenticated)."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {_token(session, reviewer)}"
    task = (
        f"{reviewer.airflow_url.rstrip('/')}/api/v2/dags/{DAG_ID}/dagRuns/"
        f"{quote(run_id, safe='')}/taskInstances/{TASK_ID}"
    )
    path = f"{task}/-1/hitlDetails"
    detail = _airflow_request(session, "GET", path, reviewer, run_id)
    if f"{model} version {version} " not in detail.get("subject", ""):
        raise ReviewError(
            f"the review that {DAG_ID} run {run_id} asks for is not of {model} version {version} "
            f"({detail.get('subject')!r}); give the run that deploys this version with --run"
        )
    if detail.get("response_received"):
        who = (detail.get("responded_by_user") or {}).get("name", "someone")
        raise ReviewError(
            f"{model} version {version} was decided already in run {run_id}: "
            f"{detail.get('chosen_options')} by {who}"
        )
    answered = _airflow_request(session, "GET", task, reviewer, run_id)["try_number"]
    body = {"chosen_options": [APPROVE if approve else REJECT], "params_input": {COMMENT: comment}}
    time.sleep(settle_wait(detail))
    response = _airflow_request(session, "PATCH", path, reviewer, run_id, json=body)
    return _follow(
        lambda method, url, **kw: _airflow_request(session, method, url, reviewer, run_id, **kw),
        task,
        path,
        body,
        answered,
        response,
    )


def settle_wait(detail: dict[str, Any], now: datetime | None = None) -> float:
    """Seconds to wait before answering the question ``detail`` (Airflow's HITL detail): until it
    is SETTLE_SECONDS old, by its ``created_at``; never more than SETTLE_SECONDS (a clock that
    differs from Airflow's cannot make a reviewer wait longer)."""
    created = detail.get("created_at")
    if not created:
        return SETTLE_SECONDS
    asked = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    if asked.tzinfo is None:
        asked = asked.replace(tzinfo=UTC)
    age = ((now or datetime.now(UTC)) - asked).total_seconds()
    return min(max(SETTLE_SECONDS - age, 0.0), SETTLE_SECONDS)


def _follow(
    call: Callable[..., dict[str, Any]],
    task: str,
    question: str,
    body: dict[str, Any],
    answered: int,
    response: dict[str, Any],
    seconds: float = CONFIRM_SECONDS,
    poll: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Follow the answered task until the try that got the answer ends; returns Airflow's record
    of the response, with ``confirmed`` False when it had not ended within ``seconds``, and the
    ``state`` that try ended in (``failed``: the answer was recorded, the task did not act on it).

    Why: Airflow 3.3.2 can drop an answer given in the first seconds after the question appears.
    The answer moves the task on at once, but the worker process that parked the task may still
    be exiting (5 s on a busy machine). When the scheduler then reads that process's exit, it
    takes the task for one killed from outside and retries it: the retry asks afresh and clears
    the answer (``scheduler_job_runner``'s "state attribute is queued" check spares a resumed task
    only while it is ``scheduled``). Here the retry's new question gets the same answer, once
    per try; a person answering in the UI sees the question again and answers again.

    Each answer, the first (``decide``) and a retry's, waits until its question is
    SETTLE_SECONDS old (``settle_wait``): answered at once, a retry's question can fall into the
    same window again, and a task whose every try loses its answer fails when its retries run
    out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        instance = call("GET", task)
        state, attempt = instance["state"], instance["try_number"]
        if attempt == answered and state in ENDED:
            return {**response, "confirmed": True, "state": state}
        if attempt > answered and state == "awaiting_input":
            detail = call("GET", question)
            if not detail.get("response_received"):
                sleep(settle_wait(detail))
                detail = call("GET", question)
            if detail.get("response_received"):  # someone answered the new question
                return {**detail, "confirmed": True, "state": state}
            response = call("PATCH", question, json=body)
            answered = attempt
        sleep(poll)
    return {**response, "confirmed": False}


def _token(session: requests.Session, reviewer: Reviewer) -> str:
    import requests

    url = f"{reviewer.airflow_url.rstrip('/')}/auth/token"
    try:
        response = session.post(
            url,
            json={"username": reviewer.username, "password": reviewer.password},
            timeout=TIMEOUT,
        )
    except requests.RequestException as err:
        raise ReviewError(
            f"Airflow at {reviewer.airflow_url} cannot be reached ({type(err).__name__}): is it "
            "running (`make up` starts the local stack)? Otherwise give its address with "
            "--airflow-url or FMOPS_AIRFLOW_URL",
            exit_code=1,
        ) from err
    if response.status_code in (401, 403):
        raise ReviewError(
            f"Airflow at {reviewer.airflow_url} refused the credentials of {reviewer.username!r}: "
            "give your Airflow user with --user (or FMOPS_AIRFLOW_USER) and its password in "
            "FMOPS_AIRFLOW_PASSWORD, or at the prompt"
        )
    if response.status_code not in (200, 201):
        raise ReviewError(
            f"Airflow at {url} answered {response.status_code}: {response.text[:300]}",
            exit_code=1,
        )
    return response.json()["access_token"]


def _airflow_request(
    session: requests.Session,
    method: str,
    url: str,
    reviewer: Reviewer,
    run_id: str,
    **kwargs: Any,
) -> dict[str, Any]:
    import requests

    try:
        response = session.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.RequestException as err:
        raise ReviewError(f"Airflow at {url} failed: {type(err).__name__}", exit_code=1) from err
    if response.status_code == 404:
        raise ReviewError(
            f"{DAG_ID} run {run_id} has no {TASK_ID} waiting for a review (Airflow answered 404); "
            "see the run in the Airflow UI"
        )
    if response.status_code == 403:
        raise ReviewError(
            f"Airflow user {reviewer.username!r} may not review this version: "
            f"{_detail(response)} (deployment.reviewers lists who may)"
        )
    if response.status_code == 409:
        raise ReviewError(f"the review was decided already: {_detail(response)}")
    if response.status_code != 200:
        raise ReviewError(
            f"Airflow answered {method} {url} with {response.status_code}: {_detail(response)}",
            exit_code=1 if response.status_code >= 500 else 2,
        )
    return response.json()


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:300]
    except ValueError:
        return response.text[:300]
