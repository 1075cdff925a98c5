"""The stages of ``fmops_finetune`` as plain functions: JSON-safe values in, JSON-safe values out.

The DAG wraps each function in a task; nothing here imports Airflow, so every stage is testable
(and runnable) on its own. Values that cross tasks are small: the resolved config, URIs, job
names, metric dicts. Data stays in files named by URIs.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig, load_config
from fmops.jobs.backend import JobBackend, describe, ensure_job, get_backend, status_of
from fmops.jobs.naming import job_name
from fmops.jobs.specs import PlanError, evaluation_request, resolve_base_model, training_request
from fmops.paths import state_dir
from fmops.storage import join, read_json

log = logging.getLogger(__name__)
CHAMPION = "champion"  # the registry's champion, evaluated beside the candidates
BASELINE = "baseline"


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
    if config.target == "sagemaker":
        from fmops.sagemaker import options, plan

        return plan.backend_settings(options.settings_of(config))
    return {"max_concurrent_jobs": config.training.max_concurrent_jobs}


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
            tokenizers[name] = AutoTokenizer.from_pretrained(resolve_base_model(name))
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
    train = load_table(train_uri or data.train)
    evaluation = load_table(evaluation_uri or data.evaluation)
    tokenizers, limits = tokenizers_for(config)
    reference_file = validation_dir(config) / "last_passed.json"
    reference = (
        json.loads(reference_file.read_text())["labels"] if reference_file.exists() else None
    )
    return validate_frames(
        data,
        train,
        evaluation,
        tokenizers=tokenizers,
        token_limits=limits,
        reference=reference,
        folder=folder,
    )


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
    if config.data.task == "classification":
        reference = {
            "digest": report.digests["train"],
            "labels": features.label_distribution(train_x["_label"]),
        }
        (validation_dir(config) / "last_passed.json").write_text(json.dumps(reference, indent=1))
    staged = stage(
        config.data,
        features.strip_derived(train_x),
        features.strip_derived(eval_x),
        config.data.label_set(),
        report.digests,
        scenarios.recipe(config),
        lambda folder: scenarios.write(config, folder),
    )
    uploaded = {}
    if config.target == "sagemaker":
        from fmops.sagemaker import run

        uploaded = run.upload_inputs(config, staged.to_dict())
    return {
        **({"uploaded": uploaded} if uploaded else {}),
        **staged.to_dict(),
        "train_data_digest": report.digests["train"],
        "evaluation_data_digest": report.digests["evaluation"],
        "labels": len(config.data.label_set()),
        "validation": report.to_dict(),
    }


def _tags(config: PipelineConfig, dag_id: str, run_id: str, candidate: str) -> dict[str, str]:
    return {
        "fmops:pipeline": config.pipeline,
        "fmops:dag_id": dag_id,
        "fmops:run_id": run_id[:256],
        "fmops:candidate": candidate,
    }


def plan_training(resolved: dict, staged: dict, dag_id: str, run_id: str) -> list[dict]:
    """One CreateTrainingJob request per candidate, named deterministically for this run, with
    the cache key of its inputs."""
    from fmops.jobs import cache

    config = config_of(resolved)
    force = bool(resolved.get("force_rerun"))
    if config.data.task != "classification":
        raise PlanError(
            f"data.task={config.data.task!r}: the data was validated and staged, train.py "
            "instruction-tunes causal LMs (task=instruction) and evaluate.py scores their "
            "answers (generation scenarios), but this version cannot register or serve a "
            "causal LM, so fmops_finetune would train candidates it cannot ship; run "
            "include/scripts/train.py and evaluate.py as jobs on the staged channels (README, "
            "'Instruction tuning'), or use task: classification"
        )
    if config.target == "sagemaker":
        from fmops.sagemaker import plan, run

        run.read_jumpstart_with_connection(config)
        return plan.plan_training(config, staged, dag_id, run_id, force=force)
    plans = []
    for candidate in config.candidates:
        base_name = job_name(dag_id, run_id, candidate.name, "training")
        request = training_request(
            config,
            candidate,
            staged,
            _tags(config, dag_id, run_id, candidate.name),
            checkpoints=f"file://{state_dir() / 'checkpoints' / base_name}",
        )
        fields = cache.components(request, staged["digest"], candidate.base_model)
        plans.append(
            {
                "kind": "training",
                "candidate": candidate.name,
                "pipeline": config.pipeline,
                "base_name": base_name,
                "target": config.target,
                "settings": backend_settings(config),
                "request": request,
                "cache_key": cache.key_of(fields),
                "cache_fields": fields,
                "force": force,
            }
        )
        log.info(
            "planned training job for %s: %s, %s, instance %s",
            candidate.name,
            candidate.method,
            candidate.hyperparameters.model_dump(),
            config.training.instance_type,
        )
    return plans


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
    elif plan.get("force"):
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
    return {key: plan[key] for key in ("kind", "candidate", "target", "settings")} | {
        "name": name,
        "action": action,
        **({"zero_shot": True} if plan.get("zero_shot") else {}),
        **({"price": _price(plan["cost"])} if plan.get("cost") else {}),
        # What a capacity fallback needs to start the job again on the next instance type.
        **({"plan": plan} if (plan.get("instance") or {}).get("fallbacks") else {}),
        **({"instance": plan["instance"]} if plan.get("instance") else {}),
    }


def _create_with_fallback(plan: dict) -> tuple[str, str, dict]:
    """ensure_job, moving to the next instance type while the account's quota refuses one."""
    from botocore.exceptions import ClientError

    from fmops.sagemaker import capacity

    while True:
        try:
            name, action = ensure_job(
                backend_for(plan), plan["kind"], plan["base_name"], plan["request"]
            )
            return name, action, plan
        except ClientError as err:
            moved = capacity.next_type(plan, str(err)) if capacity.is_quota_error(err) else None
            if moved is None:
                raise
            plan = moved


def capacity_fallback(handle: dict, description: dict) -> dict | None:
    """A failed training job that SageMaker could not provision, started again as a new attempt
    on the next instance type that fits; None when it failed otherwise or no type is left."""
    from fmops.sagemaker import capacity

    if "plan" not in handle or not capacity.is_capacity_failure(description):
        return None
    moved = capacity.next_type(handle["plan"], description.get("FailureReason", "")[:200])
    if moved is None:
        return None
    return submit({**moved, "force": True})  # the failed attempt is kept; ensure_job adds -aN


def _price(cost: dict) -> dict:
    return {k: cost.get(k) for k in ("instance_type", "usd_per_hour", "price_source", "instances")}


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


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


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
    outcome: dict[str, Any] = {
        "candidate": handle["candidate"],
        "job_name": name,
        "target": handle["target"],
        "status": status,
        "cost": job_cost(handle, description),
        **({"instance": handle["instance"]} if handle.get("instance") else {}),
    }
    if kind == "training":
        outcome.update(
            model_artifacts=description["ModelArtifacts"]["S3ModelArtifacts"],
            training_seconds=description.get("TrainingTimeInSeconds"),
            final_metrics={
                m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])
            },
            hyperparameters={
                k: v
                for k, v in description.get("HyperParameters", {}).items()
                if not k.startswith("sagemaker_")
            },
        )
    else:
        output = description["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
        outcome.update(
            output_uri=output,
            metrics=read_json(
                join(output, "metrics.json"), handle.get("settings", {}).get("aws_conn_id")
            ),
            zero_shot=bool(handle.get("zero_shot")),
        )
    return outcome


def training_failures(handles: list[dict], trained: list[dict]) -> list[dict]:
    """The submitted training jobs without an outcome, with SageMaker's reason for each."""
    done = {t["job_name"] for t in trained}
    failures = []
    for handle in handles:
        if handle["name"] in done:
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
    if config.target == "sagemaker":
        from fmops.sagemaker import plan

        return plan.plan_evaluation(config, staged, trained, dag_id, run_id, champion=True)
    entries = [(t["candidate"], t["model_artifacts"], False) for t in trained if t]
    if config.evaluation.baseline:
        base = resolve_base_model(config.candidates[0].base_model)
        entries.append((BASELINE, f"file://{base}", True))
    entries += champion_entry(config)
    plans = []
    from fmops.jobs import cache

    for candidate, model_uri, zero_shot in entries:
        base_name = job_name(dag_id, run_id, candidate, "processing")
        output = f"file://{state_dir() / 'artifacts' / 'evaluation' / base_name}"
        request = evaluation_request(
            config,
            model_uri,
            staged,
            _tags(config, dag_id, run_id, candidate),
            zero_shot=zero_shot,
            output_uri=output,
        )
        fields = cache.evaluation_components(request, staged["digest"])
        plans.append(
            {
                "kind": "processing",
                "candidate": candidate,
                "pipeline": config.pipeline,
                "cache_name": f"evaluation-{candidate}",
                "base_name": base_name,
                "target": config.target,
                "settings": backend_settings(config),
                "request": request,
                "zero_shot": zero_shot,
                "cache_key": cache.key_of(fields),
                "cache_fields": fields,
                "force": bool(resolved.get("force_rerun")),
            }
        )
    return plans


def champion_entry(config: PipelineConfig) -> list[tuple[str, str, bool]]:
    """The registry's champion as an evaluation entry, when the config asks for it and one
    exists: it is evaluated on the same examples as the candidates, for the gate's test."""
    if not config.evaluation.champion:
        return []
    from fmops import registry

    found = registry.champion_artifacts(config)
    if found is None:
        return []
    version, uri = found
    log.info("evaluating the champion, version %s (%s), beside the candidates", version, uri)
    return [(CHAMPION, uri, False)]
