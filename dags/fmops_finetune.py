"""
### fmops_finetune: train the candidates, evaluate them, register the winner

Validate the data, fine-tune every candidate model in parallel, evaluate each candidate and the
untuned baseline and the registry's champion on the configured benchmark scenarios, let the gate
select the winner, and register it in MLflow for review. The registration starts `fmops_deploy`.

`load_config -> validate_data -> plan_jobs -> submit_training -> await_training[] ->
plan_evaluation -> submit_evaluation -> await_evaluation[] -> select -> register ->
close_run` (all done)

**When it runs.** On a cron schedule *and* whenever the training data's asset is updated
(`include/configs/schedule.toml`, or the `FMOPS_FINETUNE_*` environment variables; see the
README), and by hand with **Trigger**.

**Trigger form.**
- *What to run*: the pipeline config (the shipped ones are suggested), a subset of its
  candidates (empty: all), and the target (empty: the config's).
- *Cache and dry run*: **Force re-run** trains and evaluates even when a finished job has the
  same inputs;
  **Plan only** writes every request the run would send, the instance choices and the costs to
  the `load_config` log and starts nothing.
- *Review*: **Approval** overrides `deployment.approval` for the deployment this run leads to;
  `auto` (approve without a person) is accepted on the local target only.

**What to look at.**
- `load_config` and `validate_data`: a bad config fails the first, bad data the second (its
  task link **Validation report** opens the Great Expectations report); either way the run
  fails before any job starts, without retries.
- `submit_training`: one task starts every candidate's job at once (its log lists each job and
  whether it was created, reattached or taken from the cache).
- `await_training[candidate]`: the job's own log lines, streamed into the task log, and its
  links. The jobs run concurrently; the waits are deferred (no worker slot is held while a job
  runs). A failed candidate does not stop the others: a request refused at submission, or a
  job that failed, fails that candidate's wait with the reason.
- `select`: the gate (per-metric bounds, a paired bootstrap against the champion) and the link
  **Evaluation report** (leaderboard, decision, plots in MLflow). Its XCom is the leaderboard.
  A winner not shown to beat the champion is not registered (`register` is skipped).
  Its log also says whether the winner is served as its optimized ONNX Runtime graph (each
  candidate's evaluation job exports and evaluates one; kept only within
  `evaluation.optimize.margin` of the eager model's quality) or as eager PyTorch.
- `register`: links **MLflow model version** and **MLflow run**; it emits the asset
  `fmops://registered-models`, which schedules `fmops_deploy`.
- **MLflow**: `load_config` opens the DAG run's MLflow run (link **MLflow run**); each job gets
  a nested run when it is submitted, with its metrics while it runs; `close_run` ends the DAG
  run's MLflow run FINISHED (registered, or declined by the gate) or FAILED, and fails too in
  the second case, so that the DAG run's state is the MLflow run's. A DAG run marked failed or
  success by hand, or timed out, ends before `close_run` runs: fmops' listener then ends its
  MLflow runs still running (its own and its jobs') KILLED, with the reason.

**Re-running is safe.** Job names are deterministic per (DAG run, candidate): a retried task
reattaches to its job or reuses a finished one and never starts a second one; training whose
inputs (dataset digest, base model, hyperparameters, scripts, image) match a finished job is
reused, and so is a local evaluation of the same model on the same data and settings. A
failed task posts to the `fmops_alerts` webhook when that connection exists.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, chain, dag, task

from fmops.airflow import tasks
from fmops.airflow.evaluation import SelectOperator
from fmops.airflow.forms import approval_param, config_file_param, target_param
from fmops.airflow.notify import failure_notifier
from fmops.airflow.operators import AwaitJobOperator, ValidateDataOperator
from fmops.airflow.schedule import REGISTERED_MODEL, finetune_schedule

SCHEDULE = finetune_schedule()
RUN, CACHE, REVIEW = "What to run", "Cache and dry run", "Review"
# Mapped tasks show their candidate's name in the UI instead of 0, 1, 2.
BY_CANDIDATE = "{{ task.handle['candidate'] }}"


@dag(
    dag_id="fmops_finetune",
    dag_display_name="fmops: fine-tune, evaluate, register",
    description="Validate data, fine-tune candidates in parallel, evaluate, register the winner",
    schedule=SCHEDULE.timetable(),
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
        # A task that failed for good posts to the fmops_alerts webhook (else it is logged).
        "on_failure_callback": failure_notifier,
    },
    params={
        "config_file": config_file_param(
            SCHEDULE.config_file,
            "Pipeline YAML, relative to the project root (or absolute); the shipped configs are "
            "suggested.",
            RUN,
        ),
        "models": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9-]{0,62}$"},
            uniqueItems=True,
            title="Candidates",
            description="Names of the config's candidates to train, one per line; empty: "
            "every candidate in the config.",
            section=RUN,
        ),
        "target": target_param("Where the jobs run; empty: the config's target.", RUN),
        "force_rerun": Param(
            False,
            type="boolean",
            title="Force re-run (ignore the cache)",
            description="Train and evaluate every candidate even when a finished job has the "
            "same inputs.",
            section=CACHE,
        ),
        "plan_only": Param(
            False,
            type="boolean",
            title="Plan only (dry run)",
            description=(
                "Write every request this run would send (jobs, endpoint, alarms), the instance "
                "choices and the costs to the load_config log, and stop there: nothing is "
                "validated, staged, trained, registered or billed."
            ),
            section=CACHE,
        ),
        "approval": approval_param(
            "Overrides deployment.approval for the deployment this run leads to. manual: a "
            "reviewer approves in MLflow; auto: approved without a review (local target only); "
            "empty: the config's.",
            "the config's deployment.approval",
            REVIEW,
        ),
    },
)
def fmops_finetune():
    _load_config = task(tasks.load_config, task_display_name="Load config")()
    _validate_data = ValidateDataOperator(
        task_id="validate_data",
        task_display_name="Validate data (Great Expectations)",
        resolved=_load_config,
    ).output
    _plan_jobs = task(tasks.plan_jobs, task_display_name="Plan training jobs")(
        _load_config, _validate_data
    )
    _submit_training = task(
        tasks.submit_jobs, task_id="submit_training", task_display_name="Submit training"
    )(_plan_jobs)
    _await_training = AwaitJobOperator.partial(
        task_id="await_training",
        task_display_name="Await training",
        map_index_template=BY_CANDIDATE,
    ).expand(handle=_submit_training)
    # One failed candidate does not stop the others: evaluation starts once any training is done.
    _plan_evaluation = task(
        tasks.plan_evaluation,
        task_display_name="Plan evaluation",
        trigger_rule=TriggerRule.ALL_DONE_MIN_ONE_SUCCESS,
    )(_await_training.output)
    _submit_evaluation = task(
        tasks.submit_jobs, task_id="submit_evaluation", task_display_name="Submit evaluation"
    )(_plan_evaluation)
    _await_evaluation = AwaitJobOperator.partial(
        task_id="await_evaluation",
        task_display_name="Await evaluation",
        map_index_template=BY_CANDIDATE,
    ).expand(handle=_submit_evaluation)
    _select = SelectOperator(
        task_id="select",
        task_display_name="Select the winner (gate)",
        resolved=_load_config,
        evaluations=_await_evaluation.output,
    ).output
    _register = task(
        tasks.register, task_display_name="Register in MLflow", outlets=[REGISTERED_MODEL]
    )(_load_config, _validate_data, _await_evaluation.output, _select)
    # The DAG run's MLflow run ends with its outcome, whatever path it took. Not a teardown: a
    # run marked failed by hand must end failed at once (a pending teardown would hold it
    # running, then let it end by its skipped tasks), and this task fails when the run did.
    _close_run = task(
        tasks.close_run,
        task_display_name="Close the MLflow run",
        trigger_rule=TriggerRule.ALL_DONE,
        on_failure_callback=None,  # the task that failed has alerted already
    )()
    chain(_select, _register, _close_run)


fmops_finetune()
