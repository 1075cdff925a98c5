"""The run records of a pipeline run in MLflow: one experiment per pipeline, a run per DAG run
(fmops_finetune's and fmops_deploy's), and nested under a fmops_finetune run a run per job
(``fmops.registry.job_runs``).

The DAG run's run is opened when the DAG run starts (``open_parent_run``), with a view of the
experiment's runs table that lists its jobs (``jobs_view``); it gets the validation report, the
gate's decision and leaderboard (``log_decision``, promoted or declined; each evaluation run gets
its model's serving cost), the registered run's record (``record_runs``) and is ended with the
DAG run's outcome (``close_parent_run``, ``close_dag_run``), or ``KILLED`` when the DAG run ended
without closing it (``open_runs``, ``end_runs``). Each model's params, curves, metrics, costs and
job log are on its job runs. Runs are found by their tags before any is created, so a retried
task never duplicates them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig
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
    config: PipelineConfig,
    dag_id: str,
    run_id: str,
    params: dict[str, Any],
    airflow_url: str | None,
    note: str = "",
    *,
    with_jobs: bool = False,
) -> dict[str, str]:
    """The DAG run's run, opened when the DAG run starts (fmops_finetune's load_config,
    fmops_deploy's resolve_candidate), with the run's settings as ``params`` and a link back to
    the Airflow DAG run (``note``: more Markdown for its description). ``with_jobs``: the DAG
    run has nested job runs, and a view of the experiment's runs table that lists them
    (``jobs_view``). Returns where it is (``tracking_uri``, ``experiment_id``, ``run_id``: what
    ``end_runs`` needs), its MLflow UI address (``url``) and its jobs view's (``jobs_view``)."""
    mlflow_client, experiment_id, parent = parent_run(config, dag_id, run_id)
    tags = {"fmops.pipeline": config.pipeline, "fmops.target": config.target}
    lines = []
    if airflow_url:
        tags["fmops.airflow_dag_run"] = airflow_url
        lines.append(f"Airflow DAG run: [{dag_id} {run_id}]({airflow_url})")
    if with_jobs:
        tags[JOBS_VIEW_TAG] = jobs_view(mlflow_client, experiment_id, parent, config)
        lines.append(f"This DAG run's jobs in the runs table: [jobs]({tags[JOBS_VIEW_TAG]})")
    if note:
        lines.append(note)
    if lines:
        tags["mlflow.note.content"] = "\n\n".join(lines)
    for key, value in tags.items():
        mlflow_client.set_tag(parent, key, value)
    logged = mlflow_client.get_run(parent).data.params
    fresh = {k: v for k, v in params.items() if k not in logged}
    if fresh:
        mlflow_client.log_batch(parent, params=_params(fresh))
    return {
        "tracking_uri": tracking.tracking_uri(config),
        "experiment_id": experiment_id,
        "run_id": parent,
        "url": tracking.run_url(experiment_id, parent, config),
        **({"jobs_view": tags[JOBS_VIEW_TAG]} if with_jobs else {}),
    }


JOBS_VIEW_TAG = "fmops.jobs_view"
# The runs table's columns of a jobs view: the training curve's and validation's last values,
# then where each job ran and whether it was reused (the selection metric is added by select).
JOBS_VIEW_COLUMNS = (
    "metrics.`train_loss`",
    "metrics.`validation_loss`",
    "metrics.`validation_accuracy`",
    "tags.`fmops.instance_type`",
    "tags.`fmops.cache_hit`",
)


def jobs_view(
    mlflow_client: Any,
    experiment_id: str,
    parent: str,
    config: PipelineConfig | None = None,
    metric: str | None = None,
) -> str:
    """A view of the experiment's runs table listing the job runs nested under ``parent``, with
    the columns of ``JOBS_VIEW_COLUMNS`` (and ``metric``'s, the selection metric); returns its
    address.

    The MLflow UI shows nested runs folded under their parent, and its address cannot unfold
    them; a view shared from the UI ("Share" on the experiment page) can filter and pick
    columns. It is the same record: an experiment tag ``mlflow.sharedViewState.<key>`` holding
    the view, opened by ``.../runs?viewStateShareKey=<key>``. One per DAG run, named after its
    run; setting it again (select adds its metric) replaces it."""
    import json

    columns = list(JOBS_VIEW_COLUMNS)
    if metric:
        columns.insert(0, f"metrics.`{metric}`")
    view = {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent}'",
        # Sorted on anything but the start time, the table lists filtered runs flat.
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "selectedColumns": columns,
    }
    key = f"fmops-jobs-{parent}"
    mlflow_client.set_experiment_tag(
        experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(view)
    )
    return f"{tracking.ui_url(config)}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"


def log_decision(config: PipelineConfig, dag_id: str, run_id: str, decision: dict) -> None:
    """The gate's decision and leaderboard on the parent run, promoted or not."""
    from mlflow.entities import Metric

    mlflow_client, experiment_id, parent = parent_run(config, dag_id, run_id)
    logged = mlflow_client.get_run(parent).data
    params = {
        "selection_metric": decision["metric"],
        "promoted": decision["promote"],
        "winner": decision["winner"],
        "evaluation_report": decision.get("report_url", ""),
    }
    fresh = {k: v for k, v in params.items() if k not in logged.params}
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    score = decision.get("score")
    metrics = []  # a retried select finds its point there already
    if score is not None and "winner_score" not in logged.metrics:
        metrics = [Metric("winner_score", float(score), stamp, 0)]
    mlflow_client.log_batch(parent, metrics=metrics, params=_params(fresh))
    mlflow_client.set_tag(parent, "fmops.gate", "promoted" if decision["promote"] else "declined")
    mlflow_client.log_dict(parent, decision, "leaderboard.json")
    jobs_view(mlflow_client, experiment_id, parent, config, decision["metric"])
    _log_serving_costs(mlflow_client, experiment_id, dag_id, run_id, decision)


def _log_serving_costs(
    mlflow_client: Any, experiment_id: str, dag_id: str, run_id: str, decision: dict
) -> None:
    """select's estimate of each model's serving cost per 1,000 requests, on the model's
    evaluation run beside its scenario metrics (``cost.usd_per_1k_requests``), once."""
    from mlflow.entities import Metric

    stamp = int(datetime.now(UTC).timestamp() * 1000)
    query = f"{dag_run_filter(dag_id, run_id)} and tags.`fmops.role` = 'evaluation'"
    for found in mlflow_client.search_runs([experiment_id], filter_string=query):
        cost = decision.get("costs_per_1k", {}).get(found.data.tags.get("fmops.candidate"), {})
        value = flat_metrics({"cost": cost}).get("cost.usd_per_1k_requests")
        if value is not None and "cost.usd_per_1k_requests" not in found.data.metrics:
            metric = Metric("cost.usd_per_1k_requests", value, stamp, 0)
            mlflow_client.log_batch(found.info.run_id, metrics=[metric])


def close_parent_run(
    config: PipelineConfig, dag_id: str, run_id: str, status: str, reason: str = ""
) -> None:
    """End the DAG run's parent run with the DAG run's outcome (FINISHED or FAILED)."""
    mlflow_client, experiment_id, parent = parent_run(config, dag_id, run_id)
    where = {"tracking_uri": tracking.tracking_uri(config), "run_id": parent}
    close_dag_run(where, status, reason, mlflow_client=mlflow_client)


def close_dag_run(
    where: dict[str, str],
    status: str,
    reason: str = "",
    *,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    mlflow_client: Any = None,
) -> None:
    """End the DAG run's run in ``where`` (``open_parent_run``) with its outcome, after its
    last ``metrics`` (logged once: a retried task adds no point) and ``tags``."""
    from mlflow.entities import Metric, RunTag

    mlflow_client = mlflow_client or tracking.client_for(where["tracking_uri"])
    all_tags = dict(tags or {})
    if reason:
        all_tags["fmops.outcome"] = reason
    logged = mlflow_client.get_run(where["run_id"]).data.metrics if metrics else {}
    stamp = int(datetime.now(UTC).timestamp() * 1000)
    mlflow_client.log_batch(
        where["run_id"],
        metrics=[
            Metric(k, float(v), stamp, 0) for k, v in (metrics or {}).items() if k not in logged
        ],
        tags=[RunTag(k, str(v)[: tracking.MAX_TAG_VALUE]) for k, v in all_tags.items()],
    )
    mlflow_client.set_terminated(where["run_id"], status)


def dag_run_filter(dag_id: str, run_id: str) -> str:
    """MLflow's search filter for the runs of one DAG run (its own and its jobs')."""
    return f"tags.`fmops.dag_id` = '{dag_id}' and tags.`fmops.run_id` = '{run_id}'"


def open_runs(where: dict[str, str], dag_id: str, run_id: str) -> list[Any]:
    """The runs of a DAG run that are still ``RUNNING``: its own and its jobs'."""
    query = f"{dag_run_filter(dag_id, run_id)} and attributes.status = 'RUNNING'"
    mlflow_client = tracking.client_for(where["tracking_uri"])
    return mlflow_client.search_runs([where["experiment_id"]], filter_string=query)


def started_job(run: Any) -> dict[str, str] | None:
    """The job a job run stands for, when this DAG run started it (``kind``, ``name``,
    ``target``); None for the DAG run's own run and for a job it reused from the cache."""
    tags = run.data.tags
    if tags.get("fmops.job_action") not in ("created", "reattached"):
        return None
    return {
        "kind": tags["fmops.job_kind"],
        "name": tags["fmops.job_name"],
        "target": tags["fmops.target"],
    }


def end_runs(where: dict[str, str], found: list[Any], reason: str) -> list[str]:
    """End the runs ``found`` (``open_runs``) ``KILLED`` with ``reason`` (the DAG run's own in
    ``fmops.outcome``, a job's in ``fmops.failure_reason``); returns their ids."""
    from mlflow.entities import RunTag

    mlflow_client = tracking.client_for(where["tracking_uri"])
    for run in found:
        parent = run.data.tags.get("fmops.role") == "parent"
        key = "fmops.outcome" if parent else "fmops.failure_reason"
        mlflow_client.log_batch(
            run.info.run_id, tags=[RunTag(key, reason[: tracking.MAX_TAG_VALUE])]
        )
        mlflow_client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in found]


def log_validation_report(config: PipelineConfig, dag_id: str, run_id: str, folder: Path) -> str:
    """Put the validation report (summary, GX result, Data Docs) on the DAG run's parent run;
    returns the MLflow UI address of the Data Docs page."""
    mlflow_client, experiment_id, run = parent_run(config, dag_id, run_id)
    mlflow_client.log_artifacts(run, str(folder), "validation")
    return (
        f"{tracking.ui_url()}/#/experiments/{experiment_id}/runs/{run}/artifacts/"
        "validation/data_docs/index.html"
    )


def record_runs(
    config: PipelineConfig,
    resolved: dict,
    staged: dict,
    decision: dict,
    dag_id: str,
    run_id: str,
    failed: list[dict] | None = None,
) -> dict[str, str]:
    """The registered run's record on its parent run: the data's digests and sizes, the
    leaderboard with the run's costs, the failed candidates, the config and the validation
    summary (the settings and the decision are there since load_config and select); returns the
    parent run's id (``{"parent": id}``). Each model's params, curves and metrics are on its job
    runs (``fmops.registry.job_runs``)."""
    mlflow_client, _, parent = parent_run(config, dag_id, run_id)
    mlflow_client.log_batch(
        parent,
        params=_params(
            {
                "data_digest": staged["digest"],
                "train_data_digest": staged["train_data_digest"],
                "evaluation_data_digest": staged["evaluation_data_digest"],
                "train_rows": staged["train_rows"],
                "evaluation_rows": staged["evaluation_rows"],
                "failed_candidates": ",".join(f["candidate"] for f in failed or []) or "none",
            }
        ),
    )
    if failed:
        mlflow_client.log_dict(parent, {"failed": failed}, "failed-candidates.json")
    mlflow_client.log_dict(parent, resolved["config"], "config.json")
    mlflow_client.log_dict(parent, {"validation": staged["validation"]}, "validation.json")
    mlflow_client.log_dict(parent, decision, "leaderboard.json")
    return {"parent": parent}


def job_run_of(
    mlflow_client: Any, experiment_id: str, dag_id: str, run_id: str, job_name: str
) -> str | None:
    """The MLflow run that a job of this DAG run got when it was submitted
    (``fmops.registry.job_runs``); None when it has none."""
    query = f"{dag_run_filter(dag_id, run_id)} and tags.`fmops.job_name` = '{job_name}'"
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
