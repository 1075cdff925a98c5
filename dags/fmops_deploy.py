"""
### fmops_deploy

Ship a registered model version: check its review, deploy it blue/green to the endpoint, send
smoke traffic through the live endpoint, and make it the `champion`.

`resolve_candidate -> await_approval -> deploy -> smoke_test -> promote`

- Scheduled by the asset `fmops://registered-models` (each registration by `fmops_finetune`),
  or triggered by hand with a config file and a model version.
- `await_approval` waits (rescheduling, no worker slot held) until the version's MLflow tag
  `fmops.approval` is `approved`; `rejected` fails the run. `approval: auto` in the config
  approves on the spot.
- The new variant must answer `/ping` before it gets traffic; the old one is retired after the
  cut-over, and a variant that never becomes healthy is removed while the old one keeps serving.
- On the sagemaker target `deploy` starts the blue/green update and waits for it in the
  triggerer (deferred: no worker slot held while traffic shifts and bakes); a rollback or a
  timeout fails the task without retries.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, PokeReturnValue, chain, dag, task

from fmops.airflow import tasks
from fmops.airflow.operators import DeployEndpointOperator


@dag(
    dag_id="fmops_deploy",
    schedule=[Asset(tasks.REGISTERED_MODELS_URI)],
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
    },
    params={
        "config_file": Param(
            None,
            type=["null", "string"],
            title="Pipeline config",
            description="Pipeline YAML; empty: the one named by the triggering registration.",
            examples=["include/configs/local.yaml"],
        ),
        "version": Param(
            None,
            type=["null", "string"],
            pattern="^[0-9]+$",
            title="Model version",
            description="Registered version to deploy; empty: the registration's version, "
            "else the version with alias challenger.",
        ),
        "target": Param(
            None,
            type=["null", "string"],
            enum=[None, "local", "sagemaker"],
            title="Target",
            description="Where to deploy; empty: the config's target.",
        ),
    },
)
def fmops_deploy():
    _resolve_candidate = task(tasks.resolve_candidate)()

    @task.sensor(
        task_id="await_approval", poke_interval=30, timeout=7 * 24 * 3600, mode="reschedule"
    )
    def await_approval(candidate: dict) -> PokeReturnValue:
        decision = tasks.check_approval(candidate)
        return PokeReturnValue(is_done=decision == "approved", xcom_value=decision)

    _await_approval = await_approval(_resolve_candidate)
    _deploy = DeployEndpointOperator(task_id="deploy", candidate=_resolve_candidate)
    _smoke_test = task(tasks.smoke_test)(_resolve_candidate)
    _promote = task(tasks.promote)(_resolve_candidate)
    chain(_await_approval, _deploy, _smoke_test, _promote)


fmops_deploy()
