"""await_approval: fmops_deploy's wait for a reviewer's decision, without holding a worker slot.

A reviewer decides in the MLflow UI, by setting the model version's tag ``fmops.approval`` to
``approved`` or ``rejected`` (with ``fmops.reviewer`` and ``fmops.review_comment``), or with
``fmops approve|reject MODEL VERSION --reviewer NAME --comment TEXT``.

``AwaitApprovalOperator.execute`` reads the version's review (``approval: auto`` approves on the
spot, saying so on the version). Approved: it returns at once. Rejected: the run ends without
deploying. Pending: it records on the version that this run waits, and until when
(``fmops.approval_requested_at``, ``fmops.approval_deadline``), and defers to
``ApprovalTrigger``, which polls the version's tags from the triggerer every
``deployment.approval_poll_seconds`` until a decision or the deadline
(``deployment.approval_timeout_seconds``). The deadline is an absolute time, so a restarted
triggerer (or a retried task of the same run) keeps it. MLflow being unreachable for a while does
not end the wait: the trigger logs it and looks again.

How a run ends without deploying, and why:

- **rejected**: ``await_approval`` and everything after it are *skipped*; the run ends in
  success with nothing deployed. The review did its job; nothing broke, so nobody is paged and
  nothing is retried.
- **no decision before the deadline**: ``await_approval`` *fails* (no retry), and the run with
  it: a review that never happened is a process failure someone should see. The version stays
  ``pending``; approve it and trigger fmops_deploy by hand with the version.

Both are recorded on the version: ``fmops.deploy_run``, ``fmops.deploy_outcome`` (``rejected``,
``approval_timed_out``) and ``fmops.deploy_note`` (who, why, how long it waited).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator
from airflow.triggers.base import BaseTrigger, TriggerEvent

# fmops' own modules are imported inside the methods: this module is imported when a DAG file
# is parsed, and parsing must stay fast (no pydantic or mlflow at import time).
DECIDED = ("approved", "rejected")


def read_review(tracking_uri: str, model_name: str, version: str) -> dict[str, Any]:
    """One look at the version's review, blocking (run it in a thread): ``{"state": "decided" |
    "pending" | "missing" | "unreachable", "review": ..., "message": ...}``."""
    from mlflow.exceptions import MlflowException

    import fmops.registry.review

    try:
        review = fmops.registry.review.read_review(tracking_uri, model_name, version)
    except fmops.registry.review.ApprovalError as err:
        return {"state": "missing", "message": str(err)}
    except (MlflowException, OSError) as err:
        return {"state": "unreachable", "message": f"{type(err).__name__}: {err}"[:500]}
    state = "decided" if review["decision"] in DECIDED else "pending"
    return {"state": state, "review": review}


class ApprovalTrigger(BaseTrigger):
    """Polls a model version's review until it is decided or ``deadline`` (epoch seconds)
    passes; fires once with ``{"status": "approved" | "rejected" | "timed_out" | "missing",
    "model_name", "version", "review" (decided), "waited_seconds", "message"}``."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        model_name: str,
        version: str,
        deadline: float,
        poll_interval: float = 30.0,
        started_at: float | None = None,
    ):
        super().__init__()
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.version = str(version)
        self.deadline = float(deadline)
        self.poll_interval = float(poll_interval)
        self.started_at = time.time() if started_at is None else float(started_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "tracking_uri": self.tracking_uri,
                "model_name": self.model_name,
                "version": self.version,
                "deadline": self.deadline,
                "poll_interval": self.poll_interval,
                "started_at": self.started_at,
            },
        )

    def _event(self, status: str, **fields: Any) -> TriggerEvent:
        return TriggerEvent(
            {
                "status": status,
                "model_name": self.model_name,
                "version": self.version,
                "waited_seconds": round(time.time() - self.started_at, 1),
                **fields,
            }
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        label = f"{self.model_name} version {self.version}"
        while True:
            look = await asyncio.to_thread(
                read_review, self.tracking_uri, self.model_name, self.version
            )
            if look["state"] == "decided":
                review = look["review"]
                self.log.info("%s: %s by %s", label, review["decision"], review["reviewer"])
                yield self._event(review["decision"], review=review)
                return
            if look["state"] == "missing":
                yield self._event("missing", message=look["message"])
                return
            if look["state"] == "unreachable":
                self.log.warning(
                    "%s: MLflow unreachable (%s); looking again", label, look["message"]
                )
            left = self.deadline - time.time()
            if left <= 0:
                self.log.warning("%s: no review before the deadline", label)
                yield self._event("timed_out", message=f"no review of {label} before the deadline")
                return
            self.log.info("%s: review pending; %.0f s left", label, left)
            await asyncio.sleep(min(self.poll_interval, left))


class AwaitApprovalOperator(BaseOperator):
    """fmops_deploy's await_approval: returns the review once the version is approved; see the
    module docstring for a rejection and a timeout.

    :param candidate: what resolve_candidate returned (the resolved config and the version).
    """

    template_fields = ("candidate",)
    ui_color = "#fbf3e8"

    def __init__(self, *, candidate: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.candidate = candidate

    def execute(self, context: Any) -> dict[str, Any]:
        from fmops.airflow.tasks import start_approval

        started = start_approval(self.candidate)
        if "result" in started:
            return started["result"]
        wait = started["wait"]
        self.log.info(
            "waiting for a review of %s version %s (at most %.0f s, a look every %.0f s): set "
            "the tag fmops.approval to approved or rejected in the MLflow UI, or run `fmops "
            "approve|reject %s %s --reviewer NAME --comment TEXT`; %s",
            wait["model_name"],
            wait["version"],
            wait["deadline"] - time.time(),
            wait["poll_interval"],
            wait["model_name"],
            wait["version"],
            self.candidate.get("url", ""),
        )
        self.defer(trigger=ApprovalTrigger(**wait), method_name="execute_complete")

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from fmops.airflow.tasks import finish_approval

        return finish_approval(self.candidate, event)
