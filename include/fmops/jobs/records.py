"""The records that cross Airflow tasks about a job: its plan, its handle and its outcome.

They travel as XCom, so they are JSON dicts; the ``TypedDict`` says which keys each has, and
one function here builds each (``training_plan`` and ``evaluation_plan`` for both targets,
``job_handle`` for ``fmops.pipeline.submit``, ``job_outcome`` for a finished job). A target adds
its own facts to a plan (the instance it chose, the cost bound, notes) through ``described``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from fmops.jobs import cache

if TYPE_CHECKING:
    from fmops.config import Candidate, PipelineConfig


class JobPlan(TypedDict):
    """A job to submit: its request in SageMaker's shape and what the cache needs."""

    kind: str  # training | processing
    candidate: str  # a candidate's name, or baseline / champion
    pipeline: str
    base_name: str  # the job's name for attempt 1 (fmops.jobs.naming)
    target: str
    settings: dict[str, Any]  # fmops.jobs.backend.get_backend(target, **settings)
    request: dict[str, Any]  # CreateTrainingJob / CreateProcessingJob, without the name
    force: bool  # run it even when the cache has a job with the same inputs
    cache_name: NotRequired[str]  # the "what changed" entry it is kept under
    zero_shot: NotRequired[bool]  # an evaluation of the untuned base model
    cache_key: NotRequired[str]  # no key: the target does not cache this kind of job
    cache_fields: NotRequired[dict[str, Any]]
    instance: NotRequired[dict[str, Any]]  # the target's instance choice, with its reason
    cost: NotRequired[dict[str, Any]]
    notes: NotRequired[list[str]]
    model_artifacts: NotRequired[str]


class JobHandle(TypedDict):
    """A submitted job: what the waits, the links and the outcome need to find it."""

    kind: str
    candidate: str
    target: str
    settings: dict[str, Any]
    name: str  # the job's name (an attempt may have a suffix)
    base_name: str  # the plan's name for attempt 1 (a cached job's name differs from it)
    action: str  # created | reattached | reused | cached
    zero_shot: NotRequired[bool]
    price: NotRequired[dict[str, Any]]
    plan: NotRequired[JobPlan]  # kept when the job may move to another instance type
    instance: NotRequired[dict[str, Any]]


class JobOutcome(TypedDict):
    """A job that completed: for training, its model; for an evaluation, its metrics."""

    candidate: str
    job_name: str
    target: str
    status: str
    cost: dict[str, Any] | None
    instance: NotRequired[dict[str, Any]]
    model_artifacts: NotRequired[str]
    training_seconds: NotRequired[int | None]
    final_metrics: NotRequired[dict[str, float]]
    hyperparameters: NotRequired[dict[str, str]]
    output_uri: NotRequired[str]
    metrics: NotRequired[dict[str, Any]]
    zero_shot: NotRequired[bool]


def training_plan(
    config: PipelineConfig,
    candidate: Candidate,
    *,
    target: str,
    base_name: str,
    settings: dict[str, Any],
    request: dict[str, Any],
    staged_digest: str,
    force: bool,
    **described: Any,
) -> JobPlan:
    """A candidate's training job, cached on its dataset, base model, request, scripts and image."""
    base_model = candidate.base_model
    if candidate.hub:  # hf:<id>@main moves: the key names the commit staged (its S3 folder)
        base_model = next(
            c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request["InputDataConfig"]
            if c["ChannelName"] == "base_model"
        )
    fields = cache.components(request, staged_digest, base_model)
    plan: dict[str, Any] = {
        "kind": "training",
        "candidate": candidate.name,
        "pipeline": config.pipeline,
        "base_name": base_name,
        "target": target,
        "settings": settings,
        "request": request,
        "cache_key": cache.key_of(fields),
        "cache_fields": fields,
        "force": force,
    }
    return JobPlan(**plan, **described)


def evaluation_plan(
    config: PipelineConfig,
    candidate: str,
    *,
    target: str,
    base_name: str,
    settings: dict[str, Any],
    request: dict[str, Any],
    zero_shot: bool,
    force: bool,
    staged_digest: str | None,
    **described: Any,
) -> JobPlan:
    """An evaluation job of ``candidate`` (or the baseline, or the champion); cached on the
    model, the staged data and the arguments when ``staged_digest`` is given, else not cached."""
    plan: dict[str, Any] = {
        "kind": "processing",
        "candidate": candidate,
        "pipeline": config.pipeline,
    }
    if staged_digest is not None:
        plan["cache_name"] = f"evaluation-{candidate}"
    plan |= {
        "base_name": base_name,
        "target": target,
        "settings": settings,
        "request": request,
        "zero_shot": zero_shot,
    }
    if staged_digest is not None:
        fields = cache.evaluation_components(request, staged_digest)
        plan |= {"cache_key": cache.key_of(fields), "cache_fields": fields}
    return JobPlan(**plan, force=force, **described)


def job_handle(plan: JobPlan, name: str, action: str) -> JobHandle:
    """The handle of the job ``name`` started (or found) for ``plan``."""
    handle: dict[str, Any] = {key: plan[key] for key in ("kind", "candidate", "target", "settings")}
    handle |= {"name": name, "action": action, "base_name": plan["base_name"]}
    if plan.get("zero_shot"):
        handle["zero_shot"] = True
    if plan.get("cost"):
        cost = plan["cost"]
        handle["price"] = {
            k: cost.get(k) for k in ("instance_type", "usd_per_hour", "price_source", "instances")
        }
    instance = plan.get("instance") or {}
    if instance.get("fallbacks"):  # what a capacity fallback needs to start the job elsewhere
        handle["plan"] = plan
    if instance:
        handle["instance"] = instance
    return JobHandle(**handle)


def job_outcome(
    handle: JobHandle,
    description: dict[str, Any],
    *,
    cost: dict[str, Any] | None,
    metrics: dict[str, Any] | None = None,
) -> JobOutcome:
    """The small result of a Completed job from its description (``metrics``: an evaluation's
    metrics.json, read by the caller)."""
    kind = handle["kind"]
    status = description["TrainingJobStatus" if kind == "training" else "ProcessingJobStatus"]
    outcome: dict[str, Any] = {
        "candidate": handle["candidate"],
        "job_name": handle["name"],
        "target": handle["target"],
        "status": status,
        "cost": cost,
    }
    if handle.get("instance"):
        outcome["instance"] = handle["instance"]
    if kind == "training":
        outcome |= {
            "model_artifacts": description["ModelArtifacts"]["S3ModelArtifacts"],
            "training_seconds": description.get("TrainingTimeInSeconds"),
            "final_metrics": {
                m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])
            },
            "hyperparameters": {
                k: v
                for k, v in description.get("HyperParameters", {}).items()
                if not k.startswith("sagemaker_")
            },
        }
    else:
        outcome |= {
            "output_uri": evaluation_output(description),
            "metrics": metrics,
            "zero_shot": bool(handle.get("zero_shot")),
        }
    return JobOutcome(**outcome)


def evaluation_output(description: dict[str, Any]) -> str:
    """Where a processing job wrote its results (its first output)."""
    return description["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
