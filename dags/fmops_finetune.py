"""
### fmops_finetune

Validate the data, fine-tune every candidate model in parallel, evaluate each candidate and the
untuned baseline and the registry's champion on the configured benchmark scenarios, let the gate
select the winner, and register it in MLflow for review.

`load_config -> validate_data -> plan_jobs -> submit_training[] -> await_training[] ->
plan_evaluation -> submit_evaluation[] -> await_evaluation[] -> select -> register`

- Every job of a run is submitted before the first wait starts, so the jobs run concurrently;
  the waits are deferrable (no worker slot is held while a job runs).
- Job names are deterministic per (DAG run, candidate): a retried task reattaches to its job or
  reuses a finished one, and never starts a second one.
- Training is cached across runs: a job whose inputs (dataset digest, base model,
  hyperparameters, scripts, image) match a finished one is reused (`force_rerun` overrides).
- Bad config or bad data fails the run before any job starts, without retries.
- `select` is the gate: per-metric bounds, and a paired bootstrap against the champion; its
  "Evaluation report" link opens the HTML report (leaderboard, decision, plots) in MLflow.
  A winner not shown to beat the champion is not registered (`register` is skipped).
- `register` emits the asset `fmops://registered-models`, which schedules `fmops_deploy`.

Trigger form: the pipeline config file, an optional subset of candidates, an optional target.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Asset, Param, TriggerRule, chain, dag, task

from fmops.airflow import tasks
from fmops.airflow.evaluation import SelectOperator
from fmops.airflow.operators import AwaitJobOperator, ValidateDataOperator

CONFIG_FILES = ["include/configs/local.yaml"]


@dag(
    dag_id="fmops_finetune",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["fmops", "training"],
    default_args={
        "owner": "fmops",
        "retries": 2,
        "retry_delay": timedelta(seconds=20),
        "retry_exponential_backoff": True,
    },
    params={
        "config_file": Param(
            CONFIG_FILES[0],
            type="string",
            title="Pipeline config",
            description="Pipeline YAML, relative to the project root (or absolute).",
            examples=CONFIG_FILES,
            minLength=1,
        ),
        "models": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Candidates",
            description="Names of the candidates to train; empty: every candidate in the config.",
        ),
        "target": Param(
            None,
            type=["null", "string"],
            enum=[None, "local", "sagemaker"],
            title="Target",
            description="Where jobs run; empty: the config's target.",
        ),
        "force_rerun": Param(
            False,
            type="boolean",
            title="Force re-run",
            description="Train every candidate even when a finished job has the same inputs.",
        ),
        "plan_only": Param(
            False,
            type="boolean",
            title="Plan only",
            description=(
                "Write every request this run would send (jobs, endpoint, alarms), the instance "
                "choices and the costs to the load_config log, and stop there: nothing is "
                "validated, staged, trained, registered or billed."
            ),
        ),
    },
)
def fmops_finetune():
    _load_config = task(tasks.load_config)()
    _validate_data = ValidateDataOperator(task_id="validate_data", resolved=_load_config).output
    _plan_jobs = task(tasks.plan_jobs)(_load_config, _validate_data)
    _submit_training = task(tasks.submit_job, task_id="submit_training").expand(plan=_plan_jobs)
    _await_training = AwaitJobOperator.partial(task_id="await_training").expand(
        handle=_submit_training
    )
    # One failed candidate does not stop the others: evaluation starts once any training is done.
    _plan_evaluation = task(
        tasks.plan_evaluation, trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS
    )(_await_training.output)
    _submit_evaluation = task(tasks.submit_job, task_id="submit_evaluation").expand(
        plan=_plan_evaluation
    )
    _await_evaluation = AwaitJobOperator.partial(task_id="await_evaluation").expand(
        handle=_submit_evaluation
    )
    _select = SelectOperator(
        task_id="select", resolved=_load_config, evaluations=_await_evaluation.output
    ).output
    _register = task(tasks.register, outlets=[Asset(tasks.REGISTERED_MODELS_URI)])(
        _load_config, _validate_data, _await_evaluation.output, _select
    )
    chain(_select, _register)


fmops_finetune()
