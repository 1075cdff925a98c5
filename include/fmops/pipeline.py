"""The stages of ``fmops_finetune`` as plain functions: JSON-safe values in, JSON-safe values out.

The DAG wraps each function in a task; nothing here imports Airflow, so every stage is testable
(and runnable) on its own. What differs between targets (planning, staging, instance fallbacks)
is asked of the config's target (``fmops.targets``). Values that cross tasks are small: the
resolved config, URIs, job names, metric dicts (the job records of ``fmops.jobs.records``).
Data stays in files named by URIs.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig, load_config
from fmops.jobs import records
from fmops.jobs.backend import (
    JobBackend,
    describe,
    ensure_job,
    get_backend,
    is_not_found,
    status_of,
)
from fmops.jobs.runner import write_json
from fmops.jobs.specs import base_model_files
from fmops.paths import state_dir
from fmops.registry import review
from fmops.storage import join, read_json
from fmops.targets import get_target

log = logging.getLogger(__name__)


class JobFailedError(RuntimeError):
    """A training or evaluation job ended Failed or Stopped."""


def resolve(
    config_file: str,
    models: list[str] | None = None,
    target: str | None = None,
    force_rerun: bool = False,
    plan_only: bool = False,
    approval: str | None = None,
) -> dict:
    config = load_config(
        config_file, models=models or None, target=target or None, approval=approval or None
    )
    log.info(
        "config %s: pipeline %s, target %s, candidates %s",
        config_file,
        config.pipeline,
        config.target,
        [c.name for c in config.candidates],
    )
    return {
        "config_file": config_file,
        "config": config.model_dump(mode="json"),
        "force_rerun": bool(force_rerun),
        "plan_only": bool(plan_only),
        # The trigger form's approval override, handed on to fmops_deploy with the registration.
        "approval": approval or None,
    }


def config_of(resolved: dict) -> PipelineConfig:
    return PipelineConfig.model_validate(resolved["config"])


def backend_settings(config: PipelineConfig) -> dict[str, Any]:
    return get_target(config.target).backend_settings(config)


def backend_for(handle: dict[str, Any]) -> JobBackend:
    return get_backend(handle["target"], **handle.get("settings", {}))


def tokenizers_for(config: PipelineConfig) -> tuple[dict[str, Any], dict[str, int]]:
    """Each candidate base model's tokenizer, and the smallest max_length its candidates use."""
    from transformers import AutoTokenizer

    tokenizers: dict[str, Any] = {}
    limits: dict[str, int] = {}
    for candidate in config.candidates:
        name = candidate.base_model
        if candidate.jumpstart:
            log.info(
                "no token-length checks for candidate %s: fmops does not load the tokenizer of "
                "JumpStart model %s",
                candidate.name,
                name,
            )
            continue
        if name not in tokenizers:
            tokenizers[name] = AutoTokenizer.from_pretrained(base_model_files(name))
        limit = candidate.hyperparameters.max_length
        limits[name] = min(limits.get(name, limit), limit)
    return tokenizers, limits


def validation_dir(config: PipelineConfig) -> Path:
    return state_dir() / "validation" / config.pipeline


def run_validation(
    config: PipelineConfig,
    folder: Path,
    train_uri: str | None = None,
    evaluation_uri: str | None = None,
) -> tuple[Any, Any, Any]:
    """Load both datasets and validate them; returns (report, train, evaluation) frames with
    the derived columns (after redaction when the PII policy is redact)."""
    from fmops.data.loading import load_table
    from fmops.data.validation import validate_frames

    data = config.data
    train = load_table(train_uri or data.train, data)
    evaluation = load_table(evaluation_uri or data.evaluation, data)
    tokenizers, limits = tokenizers_for(config)
    reference = _drift_reference(validation_dir(config) / LAST_PASSED)
    return validate_frames(
        data,
        train,
        evaluation,
        tokenizers=tokenizers,
        token_limits=limits,
        reference=reference,
        folder=folder,
    )


LAST_PASSED = "last_passed.json"  # the label distribution of the last data that passed


def _drift_reference(path: Path) -> dict[str, float] | None:
    """The label-drift reference (``LAST_PASSED``); None when there is none. One that cannot be
    read (a disk that filled up, a hand edit) is reported and left out: the check runs without
    a reference rather than failing every validation from then on."""
    if not path.exists():
        return None
    try:
        labels = json.loads(path.read_text())["labels"]
        if not isinstance(labels, dict):
            raise TypeError(f"labels is a {type(labels).__name__}")
        return labels
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning(
            "the label-drift reference %s cannot be read (%s): label drift is not checked this "
            "run; the next run that passes writes a new one (or delete the file)",
            path,
            err,
        )
        return None


def validate_and_stage(resolved: dict, run_key: str = "adhoc") -> dict:
    """Validate both datasets with Great Expectations, then stage the job channels."""
    from fmops.data import features
    from fmops.data.loading import stage
    from fmops.data.validation import DataValidationError
    from fmops.evaluation import scenarios

    config = config_of(resolved)
    folder = validation_dir(config) / run_key
    report, train_x, eval_x = run_validation(config, folder)
    for line in report.summary().splitlines():
        (log.info if report.success else log.error)("%s", line)
    if not report.success:
        raise DataValidationError(report.summary(), report)
    if "_label" in train_x.columns:  # labelled data: the next run's label-drift reference
        reference = {
            "digest": report.digests["train"],
            "labels": features.label_distribution(train_x["_label"]),
        }
        write_json(validation_dir(config) / LAST_PASSED, reference)
    staged = stage(
        config.data,
        features.strip_derived(train_x),
        features.strip_derived(eval_x),
        config.data.label_set(),
        report.digests,
        scenarios.recipe(config),
        lambda folder: scenarios.write(config, folder),
    )
    uploaded = get_target(config.target).stage_inputs(config, staged.to_dict())
    return {
        **({"uploaded": uploaded} if uploaded else {}),
        **staged.to_dict(),
        "train_data_digest": report.digests["train"],
        "evaluation_data_digest": report.digests["evaluation"],
        "labels": len(config.data.label_set()),
        "validation": report.to_dict(),
    }


def plan_training(resolved: dict, staged: dict, dag_id: str, run_id: str) -> list[dict]:
    """One CreateTrainingJob request per candidate, named deterministically for this run, with
    the cache key of its inputs."""
    config = config_of(resolved)
    force = bool(resolved.get("force_rerun"))
    return get_target(config.target).plan_training(config, staged, dag_id, run_id, force=force)


def _cached_job(plan: dict) -> str | None:
    """A job with the plan's cache key that completed or is still running, if any."""
    from botocore.exceptions import ClientError

    from fmops.jobs import cache
    from fmops.jobs.backend import is_not_found

    work = "training" if plan["kind"] == "training" else "evaluating"
    entry = cache.lookup(plan["cache_key"])
    if entry is None:
        changed = cache.differences(plan["pipeline"], _cache_name(plan), plan["cache_fields"])
        if changed:
            log.info(
                "%s: %s again, changed since its last cached job: %s",
                plan["candidate"],
                work,
                "; ".join(changed),
            )
        else:
            log.info("%s: no cached job with these inputs: %s", plan["candidate"], work)
        return None
    try:
        status = status_of(
            plan["kind"], describe(backend_for(plan), plan["kind"], entry["job_name"])
        )
    except ClientError as err:
        if not is_not_found(err):
            raise
        status = "gone"
    if status not in cache.REUSABLE:
        log.info(
            "%s: the cached job %s is %s: %s again",
            plan["candidate"],
            entry["job_name"],
            status,
            work,
        )
        return None
    log.info(
        "%s: reusing %s job %s (%s; same %s, scripts and image: cache key %s)",
        plan["candidate"],
        plan["kind"],
        entry["job_name"],
        status,
        "dataset, base model, hyperparameters"
        if plan["kind"] == "training"
        else "model, staged data and evaluation settings",
        plan["cache_key"][:12],
    )
    return entry["job_name"]


def _cache_name(plan: dict) -> str:
    """The name a plan's "what changed" entry is kept under: the candidate for training,
    ``evaluation-<candidate>`` for its evaluation."""
    return plan.get("cache_name", plan["candidate"])


def submit(plan: dict) -> dict:
    """Start the planned job, or find the one this run already started (describe before create).

    A training plan with a cache key first looks for a job with the same inputs (any run):
    a completed one is reused and a running one waited on, unless the plan says ``force``.
    """
    from fmops.jobs import cache

    cached = None
    if plan.get("cache_key") and not plan.get("force"):
        cached = _cached_job(plan)
    elif plan.get("force") and plan.get("cache_key"):
        log.info(
            "%s: force_rerun is set: running the %s job regardless of the cache",
            plan["candidate"],
            plan["kind"],
        )
    if cached:
        name, action = cached, "cached"
    else:
        name, action, plan = _create_with_fallback(plan)
        if plan.get("cache_key"):
            cache.record(
                plan["cache_key"], plan["cache_fields"], name, plan["pipeline"], _cache_name(plan)
            )
    return records.job_handle(plan, name, action)


# Submitting a phase: how many requests are in flight at once. The work per request is
# I/O (describe, create, MLflow), so threads overlap it; 8 keeps 64 local creates within a
# couple of seconds on 2 cores without crowding the scheduler, and stays far below SageMaker's
# request rates.
SUBMIT_THREADS = 8
# Errors a retry of the submit task may fix: everything else about one request is that
# candidate's own (its wait fails with it) and does not stop the others.
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalServerError",
        "RequestTimeout",
    }
)


def is_transient(err: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code") in TRANSIENT_CODES
    # Connection failures (botocore's, requests' and the MLflow client's) are OSErrors.
    return isinstance(err, BotoCoreError | OSError)


# SageMaker's answer when the account's quota (instances of a type, concurrent jobs) is used up.
QUOTA_CODE = "ResourceLimitExceeded"
WAITING_FOR_QUOTA = "waiting_for_quota"


def is_quota_refusal(err: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(err, ClientError) and err.response.get("Error", {}).get("Code") == QUOTA_CODE


def _jobless_handle(source: dict, action: str, **why: Any) -> dict:
    """A handle with no job behind it (yet): what the plan ``source`` says of its candidate, the
    action and why."""
    keys = ("kind", "candidate", "target")
    return {k: source[k] for k in keys} | {
        "settings": source.get("settings", {}),
        "name": None,
        "action": action,
        **why,
    }


def waiting_handle(plan: dict, err: BaseException) -> dict:
    """The handle of a request that the account's quota refused on every instance type it may
    run on: no job yet. Its wait sends the request again with backoff
    (``fmops.airflow.operators.QuotaTrigger``) rather than failing the candidate: the quota frees
    up as other jobs end."""
    return _jobless_handle(plan, WAITING_FOR_QUOTA, plan=plan, reason=str(err)[:1000])


QUEUED = "queued"


def queued_handle(plan: dict, position: int, cap: int) -> dict:
    """The handle of a request beyond ``cap`` jobs at once in its phase, at ``position`` in the
    phase's order: no job yet. Its wait sends the request once fewer than ``cap`` of the jobs
    ahead of it are unfinished (``fmops.airflow.job_queue``)."""
    return _jobless_handle(plan, QUEUED, plan=plan, position=position, cap=cap)


def refused_handle(plan: dict, err: BaseException) -> dict:
    """The handle of a request that was refused for good: no job, and why (its wait fails with
    the reason, the other candidates go on)."""
    return _jobless_handle(plan, "refused", error=f"{type(err).__name__}: {err}"[:2000])


def submit_phase(plans: list[dict], on_submitted: Any = None, cap: int | None = None) -> list[dict]:
    """Start (or find) every job of a phase at once, ``SUBMIT_THREADS`` requests at a time: one
    handle per plan, in the plans' order.

    With ``cap`` (``training.max_concurrent_jobs`` on a target that does not apply it itself),
    only the first ``cap`` plans are sent; each later one gets :func:`queued_handle`, and its
    wait starts it in the phase's order as slots free up.

    ``on_submitted(plan, handle)`` runs for each started job once every job is started (the
    jobs' MLflow runs: their jobs must not wait for them) and returns the handle to keep. Its
    errors are never a candidate's own (MLflow down, its store busy): the first is raised once
    every call is done, for the task's retry.

    A request refused for good gets :func:`refused_handle`, so that one bad candidate does not
    stop the others; one the account's quota refused gets :func:`waiting_handle`. A transient
    error (throttling, a connection) is raised once every other
    request has been sent: the task's retry sends them all again and finds the jobs already
    started (describe before create), so no job is started twice.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(plan: dict) -> dict | BaseException:
        try:
            return submit(plan)
        except Exception as err:  # classified below, per request
            return err

    def after(pair: tuple[dict, dict]) -> dict | BaseException:
        try:
            return on_submitted(*pair)
        except Exception as err:
            return err

    queued = [queued_handle(p, i, cap) for i, p in enumerate(plans) if cap and i >= cap]
    if queued:
        log.info(
            "%d of %d %s requests wait for a slot: %d jobs at once (training.max_concurrent_jobs)",
            len(queued),
            len(plans),
            plans[0]["kind"],
            cap,
        )
        plans = plans[:cap]
    with ThreadPoolExecutor(SUBMIT_THREADS, thread_name_prefix="fmops-submit") as pool:
        results = list(pool.map(one, plans))
        recorded: list[dict | BaseException] = []
        if on_submitted is not None:
            started = [(p, r) for p, r in zip(plans, results, strict=True) if isinstance(r, dict)]
            # The first alone: MLflow makes a dataset's row on first use without a lock (two
            # runs logging a new dataset at once: a UNIQUE constraint error), and a phase's jobs
            # read the same staged data, so the first run makes the rows the others find.
            recorded = [after(pair) for pair in started[:1]]
            recorded += pool.map(after, started[1:])
    unrecorded = [r for r in recorded if isinstance(r, BaseException)]
    if unrecorded:
        log.warning(
            "%d of %d jobs started but their runs could not be recorded; the task's retry finds "
            "the jobs and records them",
            len(unrecorded),
            len(recorded),
        )
        raise unrecorded[0]
    if recorded:
        finished = iter(recorded)
        results = [next(finished) if isinstance(r, dict) else r for r in results]
    transient = [r for r in results if isinstance(r, BaseException) and is_transient(r)]
    handles = []
    for plan, result in zip(plans, results, strict=True):
        if isinstance(result, BaseException) and is_quota_refusal(result):
            log.warning(
                "%s: the account's quota refused the %s request on every instance type it may "
                "use (%s); its wait asks again with backoff",
                plan["candidate"],
                plan["kind"],
                result,
            )
            result = waiting_handle(plan, result)
        elif isinstance(result, BaseException) and not is_transient(result):
            log.error("%s: the %s request was refused: %s", plan["candidate"], plan["kind"], result)
            result = refused_handle(plan, result)
        handles.append(result)
    if transient:
        log.warning(
            "%d of %d requests met a transient error; the task's retry sends them again and "
            "finds the jobs already started",
            len(transient),
            len(plans),
        )
        raise transient[0]
    return handles + queued


def _create_with_fallback(plan: dict) -> tuple[str, str, dict]:
    """ensure_job, moving to the next instance type while the account's quota refuses one."""
    from botocore.exceptions import ClientError

    target = get_target(plan["target"])
    while True:
        try:
            name, action = ensure_job(
                backend_for(plan), plan["kind"], plan["base_name"], plan["request"]
            )
            return name, action, plan
        except ClientError as err:
            moved = target.next_instance_after_quota(plan, err)
            if moved is None:
                raise
            plan = moved


def capacity_fallback(handle: dict, description: dict) -> dict | None:
    """A failed training job that SageMaker could not provision, started again as a new attempt
    on the next instance type that fits; None when it failed otherwise or no type is left."""
    moved = get_target(handle["target"]).next_instance_after_failure(handle, description)
    if moved is None:
        return None
    return submit({**moved, "force": True})  # the failed attempt is kept; ensure_job adds -aN


def _seconds_between(start: Any, end: Any) -> float | None:
    if not start or not end:
        return None
    start, end = (datetime.fromisoformat(t) if isinstance(t, str) else t for t in (start, end))
    return (end - start).total_seconds()


def job_cost(handle: dict, description: dict) -> dict | None:
    """What a finished job cost: billed seconds x the on-demand price x instances, and for
    managed spot training the saving against the seconds it trained. None on the local target
    (no price); ``usd`` None when the description has no billed time."""
    price = handle.get("price")
    if not price or price.get("usd_per_hour") is None:
        return None
    record: dict[str, Any] = dict(price)
    if handle["kind"] == "training":
        trained = description.get("TrainingTimeInSeconds")
        billed = description.get("BillableTimeInSeconds", trained)
        if description.get("EnableManagedSpotTraining") and trained and billed is not None:
            record["spot_saving_percent"] = round(100 * (1 - billed / trained), 1)
    else:
        billed = _seconds_between(
            description.get("ProcessingStartTime"), description.get("ProcessingEndTime")
        )
    record["billed_seconds"] = billed
    record["usd"] = (
        None
        if billed is None
        else round(billed / 3600 * price["usd_per_hour"] * (price.get("instances") or 1), 4)
    )
    return record


def job_outcome(handle: dict, description: dict) -> dict:
    """The small result of a finished job; a Failed or Stopped job raises JobFailedError."""
    kind, name = handle["kind"], handle["name"]
    status = description["TrainingJobStatus" if kind == "training" else "ProcessingJobStatus"]
    if status != "Completed":
        reason = description.get("FailureReason") or description.get("ExitMessage") or ""
        secondary = description.get("SecondaryStatus", status)
        raise JobFailedError(
            f"{kind} job {name} for {handle['candidate']} ended {status} ({secondary}): {reason}"
        )
    metrics = None
    if kind != "training":
        output = records.evaluation_output(description)
        connection = handle.get("settings", {}).get("aws_conn_id")
        metrics = read_json(join(output, "metrics.json"), connection)
    return records.job_outcome(
        handle, description, cost=job_cost(handle, description), metrics=metrics
    )


def record_job_end(
    handle: dict, description: dict, outcome: dict | None = None, error: str | None = None
) -> None:
    """Close the job's MLflow run (``handle["mlflow"]``, opened at submit) with its status: the
    whole log's metric points, the outcome's metrics (an evaluation's scenario metrics, the
    training seconds, the cost) and, for a failed or stopped job, ``error`` as its reason."""
    where = handle.get("mlflow")
    if not where:
        return
    from fmops.registry import job_runs, runs

    kind, name = handle["kind"], handle["name"]
    text = backend_for(handle).read_log(kind, name, 0)[0]
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    tables: dict[str, list[dict]] = {}
    if outcome is not None:
        if kind == "training":
            if outcome.get("training_seconds") is not None:
                metrics["training_seconds"] = float(outcome["training_seconds"])
            tags["fmops.model_artifacts"] = outcome["model_artifacts"]
        else:
            metrics |= runs.flat_metrics(outcome.get("metrics") or {})
            tags["fmops.output_uri"] = outcome["output_uri"]
            tables = _prediction_tables(handle, outcome)
        cost = outcome.get("cost") or {}
        if cost.get("usd") is not None:
            metrics["cost_usd"] = float(cost["usd"])
            tags["fmops.billed_seconds"] = str(cost.get("billed_seconds"))
    job_runs.close_job_run(
        where,
        status_of(kind, description),
        text,
        end_ms=_end_ms(kind, description),
        metrics=metrics,
        tags=tags,
        reason=error,
        tables=tables,
    )


def end_dag_run(
    where: dict[str, str],
    config: PipelineConfig | None,
    dag_id: str,
    run_id: str,
    reason: str,
    jobs: set[str] | None = None,
) -> dict[str, list[str]]:
    """A DAG run that ended without closing its MLflow runs (``fmops.airflow.listener``: marked
    failed or success by hand, timed out): stop the jobs it started that still run (nobody
    waits for them any more, and on SageMaker they bill), then end its runs still ``RUNNING``
    ``KILLED`` with ``reason``. ``config`` gives the job backends' settings (None: no jobs to
    stop). ``jobs``: only these jobs and their runs (a task instance marked failed by hand), not
    the DAG run's own run. A job that cannot be stopped (it ended meanwhile, its backend is
    unreachable) is logged and the rest go on. Returns the jobs stopped and the runs ended."""
    from fmops.registry import runs

    found = runs.open_runs(where, dag_id, run_id)
    if jobs is not None:
        found = [run for run in found if (runs.started_job(run) or {}).get("name") in jobs]
    stopped = []
    for job in filter(None, map(runs.started_job, found)) if config is not None else []:
        handle = {"target": job["target"], "settings": backend_settings(config)}
        backend = backend_for(handle)
        try:
            if status_of(job["kind"], describe(backend, job["kind"], job["name"])) != "InProgress":
                continue
            if job["kind"] == "training":
                backend.stop_training_job(TrainingJobName=job["name"])
            else:
                backend.stop_processing_job(ProcessingJobName=job["name"])
        except Exception as err:  # noqa: BLE001 - one job's trouble must not keep the rest running
            log.warning("%s job %s: could not stop it: %s", job["kind"], job["name"], err)
            continue
        log.info("%s job %s stopped: %s", job["kind"], job["name"], reason)
        stopped.append(job["name"])
    return {"stopped_jobs": stopped, "ended_runs": runs.end_runs(where, found, reason)}


def _prediction_tables(handle: dict, outcome: dict) -> dict[str, list[dict]]:
    """evaluate.py's per-example predictions of each scenario (``predictions-<scenario>.jsonl``
    in its output), as MLflow tables ``predictions-<scenario>.json``."""
    from fmops.storage import read_text

    connection = handle.get("settings", {}).get("aws_conn_id")
    tables = {}
    for scenario in (outcome.get("metrics") or {}).get("scenarios", {}):
        text = read_text(join(outcome["output_uri"], f"predictions-{scenario}.jsonl"), connection)
        tables[f"predictions-{scenario}.json"] = [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    return tables


def _end_ms(kind: str, description: dict) -> int:
    """When the job ended (its description's end time; the last change, else now)."""
    prefix = "Training" if kind == "training" else "Processing"
    for key in (f"{prefix}EndTime", "LastModifiedTime"):
        value = description.get(key)
        if value:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
            return int(moment.timestamp() * 1000)
    return int(datetime.now().timestamp() * 1000)


def _started_since(handle: dict) -> str | None:
    """The job a queued or quota-refused request's wait started (attempt 1), or None."""
    from botocore.exceptions import ClientError

    name = handle["plan"].get("base_name")
    if not name:
        return None
    try:
        describe(backend_for(handle), handle["kind"], name)
    except ClientError as err:
        if is_not_found(err):
            return None
        raise
    return name


def training_failures(handles: list[dict], trained: list[dict]) -> list[dict]:
    """The training jobs without an outcome, with SageMaker's reason for each (or the reason
    their request was refused)."""
    done = {t["candidate"] for t in trained}
    failures = []
    for handle in handles:
        if handle["candidate"] in done:
            continue
        if handle.get("error"):  # refused at submission: no job
            failures.append(
                {
                    "candidate": handle["candidate"],
                    "job_name": None,
                    "status": "Refused",
                    "reason": handle["error"][:1000],
                }
            )
            continue
        if not handle.get("name") and handle.get("plan"):
            # queued or waiting for the quota: its wait may have started the job since
            handle = {**handle, "name": _started_since(handle)}
        if not handle.get("name"):  # the quota never let it start (its wait says more)
            failures.append(
                {
                    "candidate": handle["candidate"],
                    "job_name": None,
                    "status": "NotStarted",
                    "reason": (handle.get("reason") or "")[:1000],
                }
            )
            continue
        description = describe(backend_for(handle), handle["kind"], handle["name"])
        failures.append(
            {
                "candidate": handle["candidate"],
                "job_name": handle["name"],
                "status": status_of(handle["kind"], description),
                "reason": (
                    description.get("FailureReason")
                    or description.get("ExitMessage")
                    or description.get("SecondaryStatus", "")
                )[:1000],
            }
        )
    return failures


def plan_evaluation(
    resolved: dict, staged: dict, trained: list[dict], dag_id: str, run_id: str
) -> list[dict]:
    """A CreateProcessingJob request per trained candidate, plus the untuned baseline."""
    config = config_of(resolved)
    return get_target(config.target).plan_evaluation(
        config,
        staged,
        trained,
        dag_id,
        run_id,
        force=bool(resolved.get("force_rerun")),
        champion=review.champion_entry(config),
    )
