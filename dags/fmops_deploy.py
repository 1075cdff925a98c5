"""
### fmops_deploy: review, blue/green deployment, smoke test, promotion

Ship a registered model version: wait for its review, deploy it blue/green to the endpoint,
send smoke traffic through the live endpoint, and make it the `champion`.

`resolve_candidate -> await_approval -> deploy -> smoke_test -> promote`,
`[deploy, smoke_test] -> rollback` (all done), and `[promote, rollback] -> close_run` (all done)

**When it runs.** On each update of the asset `fmops://registered-models`, that is each
registration by `fmops_finetune` (the config, model and version come from the asset event), or
by hand with **Trigger**: a config file, optionally a model name, and a version (empty: the
version with alias `challenger`).

**Review.** `await_approval` asks a person in Airflow, with links to the version in MLflow:
**Required actions** on this run (Approve or Reject, with a comment), the REST API, or `fmops
approve|reject MODEL VERSION`. Airflow records who answered from their login, and
`deployment.reviewers` limits who may; the decision and the reviewer are then written to the
version's MLflow tags. A tag set in MLflow by hand approves nothing. The task waits in state
`awaiting_input` (no worker slot held), at most `deployment.approval_timeout_seconds`.
- Reject: the rest of the run is skipped, nothing is deployed.
- No decision in time: the task fails, nothing is deployed.
- Both are recorded on the version (`fmops.deploy_outcome`). `approval: auto` in the config, or
  the trigger form's **Approval** (local target only), approves on the spot and says so on the
  version.

**Deployment.**
- Local target: the first deployment creates the endpoint; later ones are blue/green as
  `deployment.traffic` says (ALL_AT_ONCE, CANARY, LINEAR), green serving only once it answers
  `/ping`, with a bake after each shift in which smoke traffic runs and the alarms
  (`deployment.alarms`: error rate, latency) read green's counters. A breach moves all traffic
  back to blue at once, retires green, tags the version `fmops.deployment=rolled_back` and
  fails the run with the alarm's reason.
- SageMaker target: `deploy` starts the blue/green update (CloudWatch alarms, automatic
  rollback) and waits for it in the triggerer; a rollback or a timeout fails the task without
  retries. The task links to the endpoint's console page.
- `rollback` runs whatever happened (trigger rule ALL_DONE): a failed or killed deploy never
  leaves the endpoint half-shifted.

**MLflow.** `resolve_candidate` opens the DAG run's MLflow run in the pipeline's experiment
(what is deployed, where, how; linked to the Airflow DAG run and the version); `close_run` ends
it FINISHED (promoted, or rejected in review) or FAILED with the smoke test's figures and the
endpoint, and fails too in the second case. A run marked failed by hand ends its MLflow run
KILLED (fmops' listener).

A failed task posts to the `fmops_alerts` webhook when that connection exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, chain, dag, task

from fmops.airflow import tasks
from fmops.airflow.approval import AwaitApprovalOperator
from fmops.airflow.forms import approval_param, config_file_param, target_param
from fmops.airflow.notify import failure_notifier
from fmops.airflow.operators import DeployEndpointOperator
from fmops.airflow.schedule import REGISTERED_MODEL

WHAT, REVIEW = "What to deploy", "Review"


@dag(
    dag_id="fmops_deploy",
    dag_display_name="fmops: review and deploy",
    description="Await review, deploy blue/green, smoke test, promote; roll back on failure",
    schedule=[REGISTERED_MODEL],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["fmops", "deployment"],
    default_args={
        "owner": "fmops",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
        # A task that failed for good posts to the fmops_alerts webhook (else it is logged).
        "on_failure_callback": failure_notifier,
    },
    params={
        "config_file": config_file_param(
            None, "Pipeline YAML; empty: the one named by the triggering registration.", WHAT
        ),
        "model_name": Param(
            None,
            type=["null", "string"],
            pattern="^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
            title="Registered model",
            description="MLflow registered model to deploy from; empty: the registration's, "
            "else the config's registry.model_name.",
            section=WHAT,
        ),
        "version": Param(
            None,
            type=["null", "string"],
            pattern="^[0-9]+$",
            title="Model version",
            description="Registered version to deploy; empty: the registration's version, "
            "else the version with alias challenger.",
            section=WHAT,
        ),
        "target": target_param("Where to deploy; empty: the config's target.", WHAT),
        "approval": approval_param(
            "Overrides deployment.approval. manual: wait for a reviewer in Airflow; auto: approve "
            "without a review (local target only); empty: the registration's override, else the "
            "config's.",
            "the registration's, else the config's deployment.approval",
            REVIEW,
        ),
    },
)
def fmops_deploy():
    _resolve_candidate = task(tasks.resolve_candidate, task_display_name="Resolve the version")()
    _await_approval = AwaitApprovalOperator(
        task_id="await_approval",
        task_display_name="Await approval (review)",
        candidate=_resolve_candidate,
    )
    _deploy = DeployEndpointOperator(
        task_id="deploy", task_display_name="Deploy blue/green", candidate=_resolve_candidate
    )
    _smoke_test = task(tasks.smoke_test, task_display_name="Smoke test")(_resolve_candidate)
    _promote = task(tasks.promote, task_display_name="Promote to champion")(_resolve_candidate)
    chain(_await_approval, _deploy, _smoke_test, _promote)
    # Whatever happened (failed, killed, rejected): the endpoint is left on a stable routing.
    _rollback = task(
        tasks.rollback,
        task_display_name="Roll back if needed",
        trigger_rule=TriggerRule.ALL_DONE,
    )()
    chain([_deploy, _smoke_test], _rollback)
    # The DAG run's MLflow run ends with the deployment's outcome; the only leaf, it fails when
    # the run did (see fmops_finetune's close_run).
    _close_run = task(
        tasks.close_deploy_run,
        task_id="close_run",
        task_display_name="Close the MLflow run",
        trigger_rule=TriggerRule.ALL_DONE,
        on_failure_callback=None,  # the task that failed has alerted already
    )()
    chain([_promote, _rollback], _close_run)


fmops_deploy()
