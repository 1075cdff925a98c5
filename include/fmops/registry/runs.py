"""The run records of a pipeline run in MLflow: one experiment per pipeline, a parent run per
DAG run, nested under it a run per job (``fmops.registry.job_runs``) and a summary run per
evaluated model.

The parent run is opened when the DAG run starts (``open_parent_run``), gets the validation
report, the gate's decision and leaderboard (``log_decision``, promoted or declined) and the
run's records, and is ended with the DAG run's outcome (``close_parent_run``). Each summary run
holds a model's hyperparameters, training curves (read from the job log's step lines,
``fmops.jobs.progress``), evaluation metrics (``flat_metrics``: the MLflow metric names), costs
and job log. Runs are found by their tags before any is created, so a retried task never
duplicates them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig
from fmops.jobs import progress
from fmops.paths import state_dir
from fmops.registry import tracking


def _experiment_id(mlflow_client: Any, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    # A tracking server puts artifacts under its own artifact root; only the server-less SQLite
    # store needs a folder, next to it.
    if not mlflow_client.tracking_uri.startswith(("http://", "https://")):
        location = (state_dir() / "mlflow" / "artifacts" / name).as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def find_or_create_run(
    mlflow_client: Any, experiment_id: str, tags: dict[str, str], name: str
) -> tuple[str, bool]:
    """The run with all of ``tags`` (what an earlier attempt created), else a new one; and
    whether it is new."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = mlflow_client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id, False
    return mlflow_client.create_run(experiment_id, tags=tags, run_name=name).info.run_id, True


def parent_run(config: PipelineConfig, dag_id: str, run_id: str) -> tuple[Any, str, str]:
    """(client, experiment id, parent run id) of a DAG run, created on first use."""
    mlflow_client = tracking.client(config)
    experiment_id = _experiment_id(mlflow_client, config.pipeline)
    run, _ = find_or_create_run(
        mlflow_client,
        experiment_id,
        {"fmops.dag_id": dag_id, "fmops.run_id": run_id, "fmops.role": "parent"},
        f"{dag_id} {run_id}",
    )
    return mlflow_client, experiment_id, run


def open_parent_run(
    config: PipelineConfig, dag_id: str, run_id: str, resolved: dict, airflow_url: str | None
) -> str:
    """The DAG run's parent run, opened when the DAG run starts (load_config), with the run's
    settings as params and a link back to the Airflow DAG run; returns its MLflow UI address."""
    mlflow_client, experiment_id, parent = parent_run(config, dag_id, run_id)
    tags = {"fmops.pipeline": config.pipeline, "fmops.target": config.target}
    if airflow_url:
        tags["fmops.airflow_dag_run"] = airflow_url
        tags["mlflow.note.content"] = f"Airflow DAG run: [{dag_id} {run_id}]({airflow_url})"
    for key, value in tags.items():
        mlflow_client.set_tag(parent, key, value)
    logged = mlflow_client.get_run(parent).data.params
    params = {
        "config_file": resolved["config_file"],
        "target": config.target,
        "candidates": ",".join(c.name for c in config.candidates),
        "force_rerun": bool(resolved.get("force_rerun")),
    }
    fresh = {k: v for k, v in params.items() if k not in logged}
    if fresh:
        mlflow_client.log_batch(parent, params=_params(fresh))
    return tracking.run_url(experiment_id, parent, config)


def log_decision(config: PipelineConfig, dag_id: str, run_id: str, decision: dict) -> None:
    """The gate's decision and leaderboard on the parent run, promoted or not."""
    from mlflow.entities import Metric

    mlflow_client, _, parent = parent_run(config, dag_id, run_id)
    logged = mlflow_client.get_run(parent).data.params
    params = {
        "selection_metric": decision["metric"],
        "promoted": decision["promote"],
        "winner": decision["winner"],
        "evaluation_report": decision.get("report_url", ""),
    }
    fresh = {k: v for k, v in params.items() if k not in logged}
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    score = decision.get("score")
    metrics = [Metric("winner_score", float(score), stamp, 0)] if score is not None else []
    if "winner_score" in mlflow_client.get_run(parent).data.metrics:
        metrics = []  # a retried select: the point is there
    mlflow_client.log_batch(parent, metrics=metrics, params=_params(fresh))
    mlflow_client.set_tag(parent, "fmops.gate", "promoted" if decision["promote"] else "declined")
    mlflow_client.log_dict(parent, decision, "leaderboard.json")


def close_parent_run(
    config: PipelineConfig, dag_id: str, run_id: str, status: str, reason: str = ""
) -> None:
    """End the DAG run's parent run with the DAG run's outcome (FINISHED or FAILED)."""
    mlflow_client, _, parent = parent_run(config, dag_id, run_id)
    if reason:
        mlflow_client.set_tag(parent, "fmops.outcome", reason[: tracking.MAX_TAG_VALUE])
    mlflow_client.set_terminated(parent, status)


def log_validation_report(config: PipelineConfig, dag_id: str, run_id: str, folder: Path) -> str:
    """Put the validation report (summary, GX result, Data Docs) on the DAG run's parent run;
    returns the MLflow UI address of the Data Docs page."""
    mlflow_client, experiment_id, run = parent_run(config, dag_id, run_id)
    mlflow_client.log_artifacts(run, str(folder), "validation")
    return (
        f"{tracking.ui_url()}/#/experiments/{experiment_id}/runs/{run}/artifacts/"
        "validation/data_docs/index.html"
    )


def _log_training_curves(mlflow_client: Any, run_id: str, log_text: str) -> int:
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = []
    for line in progress.steps(log_text):
        if line.train_loss is None or line.learning_rate is None:
            continue
        metrics.append(Metric("train_loss", line.train_loss, now, line.step))
        metrics.append(Metric("learning_rate", line.learning_rate, now, line.step))
    for start in range(0, len(metrics), 1000):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + 1000])
    return len(metrics) // 2


def record_runs(
    config: PipelineConfig,
    resolved: dict,
    staged: dict,
    trained: list[dict],
    evaluations: list[dict],
    decision: dict,
    dag_id: str,
    run_id: str,
    job_logs: dict[str, str],
    failed: list[dict] | None = None,
) -> dict[str, str]:
    """The parent run of this DAG run and one child run per candidate; returns their ids."""
    mlflow_client, experiment_id, parent = parent_run(config, dag_id, run_id)
    base = {"fmops.dag_id": dag_id, "fmops.run_id": run_id}
    mlflow_client.log_batch(
        parent,
        params=_params(
            {
                "config_file": resolved["config_file"],
                "target": config.target,
                "data_digest": staged["digest"],
                "train_data_digest": staged["train_data_digest"],
                "evaluation_data_digest": staged["evaluation_data_digest"],
                "train_rows": staged["train_rows"],
                "evaluation_rows": staged["evaluation_rows"],
                "selection_metric": decision["metric"],
                "promoted": decision["promote"],
                "winner": decision["winner"],
                "evaluation_report": decision.get("report_url", ""),
                "failed_candidates": ",".join(f["candidate"] for f in failed or []) or "none",
            }
        ),
    )
    if failed:
        mlflow_client.log_dict(parent, {"failed": failed}, "failed-candidates.json")
    mlflow_client.log_dict(parent, resolved["config"], "config.json")
    mlflow_client.log_dict(parent, {"validation": staged["validation"]}, "validation.json")
    mlflow_client.log_dict(parent, decision, "leaderboard.json")
    runs = {"parent": parent}
    trained_by_name = {t["candidate"]: t for t in trained if t}
    for evaluation in evaluations:
        name = evaluation["candidate"]
        child, _ = find_or_create_run(
            mlflow_client,
            experiment_id,
            {
                **base,
                "fmops.role": "candidate",
                "fmops.candidate": name,
                "mlflow.parentRunId": parent,
            },
            name,
        )
        runs[name] = child
        from mlflow.entities import Metric

        stamp = int(datetime.now(UTC).timestamp() * 1000)
        cost = decision.get("costs_per_1k", {}).get(name, {})  # select's estimate
        metrics = flat_metrics({**evaluation["metrics"], "cost": cost})
        params: dict[str, Any] = {"evaluation_job": evaluation["job_name"]}
        training = trained_by_name.get(name)
        if training:
            candidate = candidate_of(config, name)
            if candidate is not None:
                params.update(base_model=candidate.base_model, method=candidate.method)
            params.update(training["hyperparameters"])
            params.update(
                training_job=training["job_name"], model_artifacts=training["model_artifacts"]
            )
            metrics.update({k.replace(":", "_"): v for k, v in training["final_metrics"].items()})
            if training.get("training_seconds") is not None:
                metrics["training_seconds"] = training["training_seconds"]
            if (training.get("cost") or {}).get("usd") is not None:
                metrics["training_cost_usd"] = training["cost"]["usd"]
        if (evaluation.get("cost") or {}).get("usd") is not None:
            metrics["evaluation_cost_usd"] = evaluation["cost"]["usd"]
        if training:
            text = job_logs.get(training["job_name"], "")
            if text and not mlflow_client.get_run(child).data.metrics.get("train_loss"):
                _log_training_curves(mlflow_client, child, text)
            if text:
                mlflow_client.log_text(child, text, "training-job.log")
        # A retried task logs only what its earlier attempt did not: no doubled metric points.
        logged = mlflow_client.get_run(child).data.metrics
        mlflow_client.log_batch(
            child,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items() if k not in logged],
            params=_params(params),
        )
        mlflow_client.set_terminated(child)
    return runs


def job_run_of(
    mlflow_client: Any, experiment_id: str, dag_id: str, run_id: str, job_name: str
) -> str | None:
    """The MLflow run that a job of this DAG run got when it was submitted
    (``fmops.registry.job_runs``); None when it has none."""
    query = (
        f"tags.`fmops.dag_id` = '{dag_id}' and tags.`fmops.run_id` = '{run_id}' "
        f"and tags.`fmops.job_name` = '{job_name}'"
    )
    found = mlflow_client.search_runs([experiment_id], filter_string=query, max_results=1)
    return found[0].info.run_id if found else None


def candidate_of(config: PipelineConfig, name: str) -> Any | None:
    """The config's candidate of that name; None for the baseline and the champion."""
    return next((c for c in config.candidates if c.name == name), None)


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def run_costs(trained: list[dict], evaluations: list[dict]) -> dict[str, Any] | None:
    """Each job's cost and the run's total; None on the local target (nothing is billed)."""
    jobs = [
        {"job_name": o["job_name"], "candidate": o["candidate"], **o["cost"]}
        for o in [*trained, *evaluations]
        if o and o.get("cost")
    ]
    if not jobs:
        return None
    known = [j["usd"] for j in jobs if j.get("usd") is not None]
    return {
        "jobs": jobs,
        "total_usd": round(sum(known), 4),
        "unknown": [j["job_name"] for j in jobs if j.get("usd") is None],
    }


def flat_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A model's headline numbers as MLflow metric names: ``<scenario>.<family>.<name>``
    (per-perturbation drops and per-family gaps included), ``efficiency.*`` and the cost."""
    flat: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool):
            flat[key] = float(value)

    for scenario, result in metrics.get("scenarios", {}).items():
        put(f"{scenario}.examples", result.get("examples"))
        for name, value in result.get("accuracy", {}).items():
            put(f"{scenario}.accuracy.{name}", value)
        put(f"{scenario}.calibration.ece", result.get("calibration", {}).get("ece"))
        for family, leaf in (("robustness", "drop"), ("fairness", "gap")):
            for name, value in result.get(family, {}).items():
                put(f"{scenario}.{family}.{name}", value)
                if isinstance(value, dict):
                    put(f"{scenario}.{family}.{name}.{leaf}", value.get(leaf))
    for name, value in metrics.get("efficiency", {}).items():
        put(f"efficiency.{name}", value)
    put("cost.usd_per_1k_requests", metrics.get("cost", {}).get("usd_per_1k_requests"))
    return flat
