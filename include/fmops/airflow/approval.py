"""await_approval: fmops_deploy's review, by a person Airflow has authenticated.

The reviewer looks at the version in MLflow (the model card, the leaderboard, the evaluation
report: the task's body links them) and decides in Airflow: the DAG run's **Required actions**
(Approve or Reject, with a comment), Airflow's REST API (``PATCH .../hitlDetails``), or ``fmops
approve|reject MODEL VERSION``, which calls that API with the reviewer's Airflow credentials.

Why Airflow and not an MLflow tag: the decision is only as trustworthy as the identity behind
it. Airflow records who responded from the authenticated request (``responded_by_user``), and
``deployment.reviewers`` restricts who may (Airflow answers 403 to anyone else). MLflow tags
carry whatever a client writes, and the MLflow server of the local and compose setups has no
authentication, so a tag can never approve: fmops writes the decision to the version's tags
afterwards (``fmops.approval``, ``fmops.reviewer``, ``fmops.reviewer_id``,
``fmops.review_comment``, ``fmops.review_source``) as the record a person reads in MLflow.

``AwaitApprovalOperator`` is Airflow's ``HITLOperator`` with two options. ``execute`` handles
``approval: auto`` on the spot (the pipeline approves and says so on the version); otherwise it
records on the version that this run waits, and until when, and parks the task in Airflow's
``awaiting_input`` state: no worker slot and no triggerer are held while a person decides.

How a run ends without deploying, and why:

- **rejected**: ``await_approval`` and everything after it are *skipped*; the run ends in
  success with nothing deployed. The review did its job; nothing broke, so nobody is paged and
  nothing is retried.
- **no decision before the deadline** (``deployment.approval_timeout_seconds``, enforced by the
  scheduler): ``await_approval`` *fails* (no retry), and the run with it: a review that never
  happened is a process failure someone should see. Decide, then trigger fmops_deploy by hand
  with the version.

Both are recorded on the version: ``fmops.deploy_run``, ``fmops.deploy_outcome`` (``rejected``,
``approval_timed_out``) and ``fmops.deploy_note`` (who, why, how long it waited).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.definitions.param import ParamsDict

# fmops' own modules are imported inside the methods: this module is imported when a DAG file
# is parsed, and parsing must stay fast (no pydantic or mlflow at import time).
from fmops.review_client import APPROVE, COMMENT, REJECT

MAX_COMMENT = 2000


class AwaitApprovalOperator(HITLOperator):
    """fmops_deploy's await_approval: returns the review once the version is approved; see the
    module docstring for a rejection and a timeout.

    :param candidate: what resolve_candidate returned (the resolved config and the version).
    """

    template_fields = (*HITLOperator.template_fields, "candidate")
    ui_color = "#fbf3e8"

    def __init__(self, *, candidate: Any, **kwargs: Any):
        # The DAG's params arrive merged into ``params``; the HITL form shows the task's own.
        params = ParamsDict(kwargs.pop("params", None) or {})
        params[COMMENT] = Param(
            "",
            type="string",
            maxLength=MAX_COMMENT,
            title="Comment",
            description="Why: recorded on the version in MLflow with your decision.",
            source="task",
        )
        super().__init__(
            subject="Review a registered model version",  # the version's, once it is resolved
            options=[APPROVE, REJECT],
            params=params,
            **kwargs,
        )
        self.candidate = candidate

    def execute(self, context: Any) -> Any:
        from fmops.airflow.tasks import start_approval

        started = start_approval(self.candidate)
        if "result" in started:
            return started["result"]
        request = started["request"]
        self.subject, self.body = request["subject"], request["body"]
        self.response_timeout = timedelta(seconds=request["timeout_seconds"])
        self.assigned_users = request["assigned_users"] or None
        self.log.info(
            "waiting for a review of %s version %s (at most %.0f s): Approve or Reject in this "
            "run's Required actions, or `fmops approve|reject %s %s --comment TEXT`; %s",
            request["model_name"],
            request["version"],
            request["timeout_seconds"],
            request["model_name"],
            request["version"],
            request["url"],
        )
        return super().execute(context)  # parks the task until a person responds

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        from fmops.airflow.tasks import finish_approval

        if event.get("error_type") == "timeout":
            return finish_approval(self.candidate, None)
        response = super().execute_complete(context, event)  # checks the options and params
        return finish_approval(self.candidate, dict(response))
