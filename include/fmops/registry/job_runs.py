"""A job's MLflow run, live: nested under its DAG run's parent run, opened when the job is
submitted, fed the job's progress while it runs, closed with the job's status.

- ``open_job_run`` (the submit task, once the job exists): the run, found by its tags before one
  is created (a retried or reattached submit finds it), with the job's request as params and
  tags for the job name, kind, target, instance type, price, the cache (``fmops.cache_hit``,
  ``fmops.reused_job``: a cached job's run says which job it reused) and the job's console page
  where the target has one. Its ids travel in the job handle (``handle["mlflow"]``).
- ``log_points`` (``fmops.airflow.operators.JobTrigger``, every poll): the metric points of the
  new log lines (``fmops.jobs.progress.metric_points``), each at its real step and at the time
  the job measured it. A point logged twice (a restarted triggerer reads the log again) is kept
  once: MLflow's store drops an exact duplicate.
- ``close_job_run`` (the await task, when the job ended): every point of the whole log again
  (what a lost or late live update missed), the log as an artifact, the final metrics (an
  evaluation's per-scenario metrics, its predictions as MLflow tables), and the status:
  ``FINISHED``, ``FAILED`` with ``fmops.failure_reason``, or ``KILLED`` for a stopped job.

MLflow being unreachable for a while delays this and loses nothing: MLflow's client retries with
backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, about two minutes), the trigger keeps the points it
could not send for its next poll, and the await task's closing pass logs the whole log again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fmops.jobs import progress
from fmops.registry import tracking

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's log_batch limit of metrics per call
ROLE = {"training": "training", "processing": "evaluation"}
STATUS = {"Completed": "FINISHED", "Failed": "FAILED", "Stopped": "KILLED"}
MAX_PARAM = 6000
LOG_FILE = "job.log"  # the job's whole log, on its run


def open_job_run(
    config: Any,
    dag_id: str,
    run_id: str,
    plan: dict[str, Any],
    handle: dict[str, Any],
    parent_run: tuple[Any, str, str] | None = None,
) -> dict[str, str]:
    """The job's run under the DAG run's parent, created on first use; returns the ids the
    trigger and the await task need (``handle["mlflow"]``). ``parent_run``: what
    ``runs.parent_run`` returned, when the caller opens the runs of many jobs."""
    from fmops.registry import runs

    mlflow_client, experiment_id, parent = parent_run or runs.parent_run(config, dag_id, run_id)
    candidate = runs.candidate_of(config, handle["candidate"])
    return open_attempt(
        {
            "tracking_uri": tracking.tracking_uri(config),
            "experiment_id": experiment_id,
            "parent_run_id": parent,
        },
        dag_id,
        run_id,
        plan,
        handle,
        mlflow_client,
        # the model as the config names it (the request has only where it was staged)
        {"base_model": candidate.base_model} if candidate and plan["kind"] == "training" else {},
    )


def open_attempt(
    where: dict[str, str],
    dag_id: str,
    run_id: str,
    plan: dict[str, Any] | None,
    handle: dict[str, Any],
    mlflow_client: Any = None,
    params: dict[str, str] | None = None,
) -> dict[str, str]:
    """The run of ``handle``'s job under the parent in ``where`` (a capacity fallback's new
    attempt gets a run of its own); ``plan`` gives its params (None: no params) beside
    ``params``."""
    from fmops.registry.runs import find_or_create_run

    mlflow_client = mlflow_client or tracking.client_for(where["tracking_uri"])
    role = ROLE[handle["kind"]]
    key = {
        "fmops.dag_id": dag_id,
        "fmops.run_id": run_id,
        "fmops.role": role,
        "fmops.candidate": handle["candidate"],
        "fmops.job_name": handle["name"],
        "mlflow.parentRunId": where["parent_run_id"],
    }
    job_run, created = find_or_create_run(
        mlflow_client, where["experiment_id"], key, f"{handle['candidate']} {role}"
    )
    if created:
        mlflow_client.log_batch(
            job_run,
            params=_params({**(_request_params(plan) if plan else {}), **(params or {})}),
            tags=_tags(_job_tags(plan or {}, handle)),
        )
        if plan:
            mlflow_client.log_inputs(job_run, datasets=_datasets(plan))
    return {**where, "run_id": job_run}


# The data channels of a job's request (a training job's channels, an evaluation's inputs), and
# the MLflow dataset context each is logged under; the dataset's name says which split it is.
CONTEXTS = {
    "training": {"train": "training", "validation": "validation"},
    "processing": {"data": "evaluation"},
}


def _datasets(plan: dict[str, Any]) -> list[Any]:
    """The staged data a job reads, as MLflow dataset inputs: named ``<pipeline>/<channel>``,
    with the staged dataset's digest (the content digests of the data and the sampling recipe)
    and the staged copy's URI as the source."""
    import hashlib

    from mlflow.entities import Dataset, DatasetInput, InputTag

    uris = _data_uris(plan)
    staged = (plan.get("cache_fields") or {}).get("dataset")
    found = []
    for channel, context in CONTEXTS[plan["kind"]].items():
        uri = uris.get(channel)
        if uri is None:
            continue
        digest = (staged or hashlib.sha256(uri.encode()).hexdigest())[:32]
        dataset = Dataset(
            name=f"{plan.get('pipeline', 'fmops')}/{context}",
            digest=digest,
            source_type="s3" if uri.startswith("s3://") else "local",
            source=json.dumps({"uri": uri}),
        )
        found.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return found


def _data_uris(plan: dict[str, Any]) -> dict[str, str]:
    """The URIs a job reads, by name: a training job's channels, an evaluation's inputs."""
    request = plan["request"]
    if plan["kind"] == "training":
        return {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request.get("InputDataConfig", [])
        }
    return {i["InputName"]: i["S3Input"]["S3Uri"] for i in request.get("ProcessingInputs", [])}


def _request_params(plan: dict[str, Any]) -> dict[str, str]:
    request = plan["request"]
    if plan["kind"] == "training":
        values = {
            k: v
            for k, v in request.get("HyperParameters", {}).items()
            if not k.startswith("sagemaker_")
        }
        prefix = "channel"
    else:
        arguments = request.get("AppSpecification", {}).get("ContainerArguments", [])
        values = {"arguments": " ".join(arguments)}
        prefix = "input"
    return values | {f"{prefix}.{name}": uri for name, uri in _data_uris(plan).items()}


def _job_tags(plan: dict[str, Any], handle: dict[str, Any]) -> dict[str, str]:
    from fmops.targets import get_target

    tags = {
        "fmops.job_kind": handle["kind"],
        "fmops.target": handle["target"],
        "fmops.cache_hit": str(handle["action"] in ("cached", "reused")).lower(),
        "fmops.job_action": handle["action"],
    }
    if handle["action"] in ("cached", "reused"):
        tags["fmops.reused_job"] = handle["name"]
    instance = handle.get("instance") or {}
    price = handle.get("price") or {}
    instance_type = instance.get("instance_type") or price.get("instance_type")
    if instance_type:
        tags["fmops.instance_type"] = instance_type
    if price.get("usd_per_hour") is not None:
        tags["fmops.usd_per_hour"] = str(price["usd_per_hour"])
    if plan.get("cache_key"):
        tags["fmops.cache_key"] = plan["cache_key"]
    console = get_target(handle["target"]).job_console_url(handle)
    if console:
        tags["fmops.job_console"] = console
    return tags


def log_points(tracking_uri: str, run_id: str, points: list[progress.MetricPoint]) -> int:
    """Log metric points on a job's run; returns how many were sent."""
    from mlflow.entities import Metric

    if not points:
        return 0
    mlflow_client = tracking.client_for(tracking_uri)
    metrics = [Metric(p.key, p.value, p.timestamp_ms, p.step) for p in points]
    for start in range(0, len(metrics), MAX_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + MAX_BATCH])
    return len(metrics)


def close_job_run(
    where: dict[str, str],
    status: str,
    log_text: str,
    *,
    end_ms: int,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    reason: str | None = None,
    tables: dict[str, list[dict[str, Any]]] | None = None,
) -> None:
    """End a job's run: the whole log's points (duplicates are dropped by the store) and the
    log itself (``LOG_FILE``), the final ``metrics`` at ``end_ms``, the ``tags``, the ``tables``
    (an evaluation's predictions, per example: MLflow's evaluation view compares them across
    runs), and the status (``STATUS`` of the job's)."""
    points, _ = progress.metric_points(log_text, end_ms)
    final = [progress.MetricPoint(k, float(v), end_ms, 0) for k, v in (metrics or {}).items()]
    log_points(where["tracking_uri"], where["run_id"], points + final)
    mlflow_client = tracking.client_for(where["tracking_uri"])
    all_tags = dict(tags or {})
    if reason:
        all_tags["fmops.failure_reason"] = reason
    if all_tags:
        mlflow_client.log_batch(where["run_id"], tags=_tags(all_tags))
    if log_text:
        mlflow_client.log_text(where["run_id"], log_text, LOG_FILE)
    for artifact_file, rows in (tables or {}).items():
        import pandas as pd

        mlflow_client.log_table(
            where["run_id"], data=pd.DataFrame(rows), artifact_file=artifact_file
        )
    mlflow_client.set_terminated(where["run_id"], STATUS.get(status, "FAILED"), end_time=end_ms)


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [
        Param(k, (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM])
        for k, v in values.items()
    ]


def _tags(values: dict[str, str]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)[: tracking.MAX_TAG_VALUE]) for k, v in values.items()]
