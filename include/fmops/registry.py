"""MLflow: the run records of a pipeline run, the registered model version, review and aliases.

One experiment per pipeline. A parent run per DAG run holds the config, data digests, validation
summary and leaderboard; a nested child run per candidate (and the baseline) holds its
hyperparameters, training curves, evaluation metrics and job log. The winner is logged as an
MLflow pyfunc model (weights, tokenizer, label map, the serving handlers and an input example)
and registered with the alias ``challenger``; a reviewer sets the version tag ``fmops.approval``.

Every step finds what an earlier attempt of the same task created (runs and versions are looked
up by tags) before creating anything, so retries never duplicate runs or versions.
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig
from fmops.evaluation.selection import flat_metrics
from fmops.paths import SCRIPTS_DIR, state_dir

log = logging.getLogger(__name__)

APPROVAL_TAG = "fmops.approval"
APPROVAL_VALUES = ("pending", "approved", "rejected")
CHALLENGER, CHAMPION = "challenger", "champion"
STEP_LINE = re.compile(r"step=(\d+)/\d+ .*?train_loss=([0-9.eE+-]+) learning_rate=([0-9.eE+-]+)")
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")


class ApprovalError(ValueError):
    """A review decision is malformed or the version does not exist."""


def tracking_uri(config: PipelineConfig | None = None) -> str:
    import os

    if config is not None and config.registry.tracking_uri:
        return config.registry.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = state_dir() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def ui_url() -> str:
    import os

    return os.environ.get("FMOPS_MLFLOW_UI", "http://127.0.0.1:5000")


def client(config: PipelineConfig | None = None) -> Any:
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(mlflow_client: Any, name: str) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if not tracking_uri().startswith("http"):
        location = (state_dir() / "mlflow" / "artifacts" / name).as_uri()
    return mlflow_client.create_experiment(name, artifact_location=location)


def _find_or_create_run(
    mlflow_client: Any, experiment_id: str, tags: dict[str, str], name: str
) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = mlflow_client.search_runs([experiment_id], filter_string=query, max_results=1)
    if found:
        return found[0].info.run_id
    return mlflow_client.create_run(experiment_id, tags=tags, run_name=name).info.run_id


def parent_run(config: PipelineConfig, dag_id: str, run_id: str) -> tuple[Any, str, str]:
    """(client, experiment id, parent run id) of a DAG run, created on first use."""
    mlflow_client = client(config)
    experiment_id = _experiment_id(mlflow_client, config.pipeline)
    run = _find_or_create_run(
        mlflow_client,
        experiment_id,
        {"fmops.dag_id": dag_id, "fmops.run_id": run_id, "fmops.role": "parent"},
        f"{dag_id} {run_id}",
    )
    return mlflow_client, experiment_id, run


def log_validation_report(config: PipelineConfig, dag_id: str, run_id: str, folder: Path) -> str:
    """Put the validation report (summary, GX result, Data Docs) on the DAG run's parent run;
    returns the MLflow UI address of the Data Docs page."""
    mlflow_client, experiment_id, run = parent_run(config, dag_id, run_id)
    mlflow_client.log_artifacts(run, str(folder), "validation")
    return (
        f"{ui_url()}/#/experiments/{experiment_id}/runs/{run}/artifacts/"
        "validation/data_docs/index.html"
    )


def _log_training_curves(mlflow_client: Any, run_id: str, log_text: str) -> int:
    from mlflow.entities import Metric

    now = int(datetime.now(UTC).timestamp() * 1000)
    metrics = []
    for step, loss, lr in STEP_LINE.findall(log_text):
        metrics.append(Metric("train_loss", float(loss), now, int(step)))
        metrics.append(Metric("learning_rate", float(lr), now, int(step)))
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
        child = _find_or_create_run(
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
        mlflow_client.log_batch(
            child,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
            params=_params(params),
        )
        mlflow_client.set_terminated(child)
    mlflow_client.set_terminated(parent)
    return runs


def _params(values: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]


def find_version(mlflow_client: Any, model_name: str, dag_run: str) -> Any | None:
    query = f"name = '{model_name}' and tags.`fmops.dag_run` = '{dag_run}'"
    found = mlflow_client.search_model_versions(query)
    return found[0] if found else None


def _unpack(model_artifacts: str, target: Path, aws_conn_id: str | None = None) -> Path:
    from fmops import storage

    archive = storage.local_file(model_artifacts, target.parent / "archive", aws_conn_id)
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target


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


def instance_line(winner: dict) -> str:
    """The SageMaker instance the winner trained on, and any capacity fallback on the way."""
    instance = winner.get("instance")
    if not instance:
        return ""
    tried = "".join(
        f"\n  - fell back from `{t['instance_type']}`: {t['why'].splitlines()[0][:160]}"
        for t in instance.get("tried", [])
    )
    return f"\n- instance `{instance['instance_type']}`: {instance.get('reason', '')}{tried}"


def cost_lines(costs: dict[str, Any] | None) -> str:
    if not costs:
        return "Local target: the jobs ran on this machine and nothing was billed."
    lines = [
        f"- `{j['job_name']}` ({j['candidate']}): "
        + (
            f"${j['usd']:.4f} = {j['billed_seconds']:.0f} s x ${j['usd_per_hour']}/h x "
            f"{j.get('instances') or 1} {j['instance_type']}"
            if j.get("usd") is not None
            else "no billed time reported"
        )
        + (f", spot saving {j['spot_saving_percent']}%" if "spot_saving_percent" in j else "")
        for j in costs["jobs"]
    ]
    unknown = f" ({len(costs['unknown'])} job(s) without a billed time)" if costs["unknown"] else ""
    return "\n".join([*lines, f"- run total: ${costs['total_usd']:.4f}{unknown}"])


CARD_HEADER = (
    "| model | mean win rate | primary | ECE | worst robustness drop | max fairness gap "
    "| p95 latency (ms) | USD / 1k requests |\n|---|---|---|---|---|---|---|---|"
)


def model_card(
    config: PipelineConfig,
    staged: dict,
    decision: dict,
    winner: dict,
    dag_id: str,
    run_id: str,
    failed: list[dict] | None = None,
) -> str:
    failures = (
        "\n".join(
            f"- {f['candidate']}: training job `{f['job_name']}` ended {f['status']}: "
            f"{f['reason'].splitlines()[0] if f['reason'] else 'no reason given'}"
            for f in failed or []
        )
        or "none"
    )

    def num(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    def model(row: dict) -> str:
        return (
            row["candidate"]
            if row["role"] == "candidate"
            else f"{row['candidate']} ({row['role']})"
        )

    rows = "\n".join(
        f"| {model(r)} | {num(r['mean_win_rate'])} | {num(r['primary'])} | {num(r['ece'])} | "
        f"{num(r['worst_drop'])} | {num(r['max_gap'])} | {num(r['latency_p95_ms'], 1)} | "
        f"{num(r['usd_per_1k_requests'], 5)} |"
        for r in decision["leaderboard"]
    )
    reasons = "\n".join(f"- {reason}" for reason in decision.get("reasons", []))
    return f"""# {config.registry.model_name}: {winner["candidate"]}

Pipeline `{config.pipeline}`, DAG run `{dag_id}` / `{run_id}`.

## Data
- training: `{config.data.train}` ({staged["train_rows"]} rows after sampling), validation:
  {staged["validation_rows"]} rows, evaluation: `{config.data.evaluation}`
  ({staged["evaluation_rows"]} rows); staged data digest `{staged["digest"]}`
- dataset digests (sha256): train `{staged["train_data_digest"]}`,
  evaluation `{staged["evaluation_data_digest"]}`
- validation: {staged["validation"]["expectations"]} expectations, {staged["validation"]["warned"]}
  warning(s): {"; ".join(staged["validation"]["problems"]) or "none"}

## Training
- training job `{winner["job_name"]}`, {winner.get("training_seconds")} s{instance_line(winner)}
- hyperparameters: `{json.dumps(winner["hyperparameters"])}`

## Evaluation
Primary metric `{decision["metric"]}`; the mean win rate is over every scenario metric
(HELM); cost per 1,000 requests is an estimate (see the report).

{CARD_HEADER}
{rows}

Selected by {decision["metric"]} = {decision["score"]:.4f}; gain over the untuned baseline:
{decision.get("gain_over_baseline", "n/a")}. The gate's reasons:
{reasons}

Report: {decision.get("report_url", "n/a")}

Candidates that failed and were not compared:
{failures}

## Cost
{cost_lines(decision.get("costs"))}

## Known limits
English banking queries only; labels outside the declared set are never predicted.
"""


def register(
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
) -> dict[str, Any]:
    """Record the runs and register the winner as a new version (once per DAG run)."""
    import mlflow
    import pandas as pd

    mlflow_client = client(config)
    # The run's bill goes with the leaderboard (leaderboard.json) and onto the model card.
    decision = {**decision, "costs": run_costs(trained, evaluations)}
    runs = record_runs(
        config,
        resolved,
        staged,
        trained,
        evaluations,
        decision,
        dag_id,
        run_id,
        job_logs,
        failed,
    )
    name, dag_run = config.registry.model_name, f"{dag_id}/{run_id}"
    existing = find_version(mlflow_client, name, dag_run)
    if existing is not None:
        log.info(
            "version %s of %s was registered for this run already: reusing it",
            existing.version,
            name,
        )
        return _version_summary(config, existing.version, runs)
    winner = next(t for t in trained if t and t["candidate"] == decision["winner"])
    winner_run = runs[winner["candidate"]]
    logged = mlflow.search_logged_models(
        experiment_ids=[mlflow_client.get_run(winner_run).info.experiment_id],
        filter_string=f"source_run_id = '{winner_run}' AND name = 'model'",
        output_format="list",
    )
    if logged:  # an earlier attempt of this task logged it and failed before registering
        model_uri = logged[0].model_uri
    else:
        with tempfile.TemporaryDirectory(prefix="fmops-register-") as scratch:
            model_dir = _unpack(
                winner["model_artifacts"],
                Path(scratch) / "model",
                config.sagemaker.aws_conn_id if config.sagemaker else None,
            )
            example = pd.DataFrame({"text": ["I still have not received my new card"]})
            with mlflow.start_run(run_id=winner_run):
                model_uri = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(MODEL_CODE),
                    artifacts={"model_dir": str(model_dir)},
                    code_paths=[str(SCRIPTS_DIR / "inference.py")],
                    input_example=example,
                    pip_requirements=_serving_requirements(),
                ).model_uri
    _ensure_registered_model(mlflow_client, name, config.pipeline)
    version = mlflow_client.create_model_version(
        name,
        model_uri,
        run_id=winner_run,
        tags={
            "fmops.pipeline": config.pipeline,
            "fmops.dag_run": dag_run,
            "fmops.candidate": winner["candidate"],
            "fmops.data_digest": staged["train_data_digest"],
            "fmops.staged_data": staged["digest"],
            "fmops.training_job": winner["job_name"],
            "fmops.model_artifacts": winner["model_artifacts"],
            "fmops.metric": f"{decision['metric']}={decision['score']:.4f}",
            "fmops.evaluation_report": decision.get("report_url", ""),
            APPROVAL_TAG: "pending",
        },
        description=model_card(config, staged, decision, winner, dag_id, run_id, failed),
    )
    _wait_ready(mlflow_client, name, version.version)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version.version)
    log.info(
        "registered %s version %s (alias %s): %s",
        name,
        version.version,
        CHALLENGER,
        version_url(name, version.version),
    )
    return _version_summary(config, version.version, runs)


def _ensure_registered_model(mlflow_client: Any, name: str, pipeline: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        mlflow_client.create_registered_model(name, tags={"fmops.pipeline": pipeline})


def _serving_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("torch", "transformers", "safetensors", "pandas")]


def _wait_ready(mlflow_client: Any, name: str, version: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while mlflow_client.get_model_version(name, version).status == "PENDING_REGISTRATION":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} version {version} still pending after {timeout} s")
        time.sleep(1)


def version_url(name: str, version: str) -> str:
    return f"{ui_url()}/#/models/{name}/versions/{version}"


def _version_summary(config: PipelineConfig, version: str, runs: dict[str, str]) -> dict:
    name = config.registry.model_name
    return {
        "model_name": name,
        "version": str(version),
        "url": version_url(name, version),
        "parent_run_id": runs["parent"],
    }


def approval(config: PipelineConfig, version: str) -> str:
    tags = client(config).get_model_version(config.registry.model_name, version).tags
    return tags.get(APPROVAL_TAG, "pending")


def set_approval(
    config: PipelineConfig, version: str, decision: str, reviewer: str, comment: str = ""
) -> None:
    if decision not in APPROVAL_VALUES[1:]:
        raise ApprovalError(f"decision {decision!r}; allowed: {APPROVAL_VALUES[1:]}")
    mlflow_client = client(config)
    name = config.registry.model_name
    for key, value in (
        (APPROVAL_TAG, decision),
        ("fmops.reviewer", reviewer),
        ("fmops.review_comment", comment),
    ):
        mlflow_client.set_model_version_tag(name, version, key, value)
    log.info("%s version %s: %s by %s", name, version, decision, reviewer)


def latest_alias(config: PipelineConfig, alias: str = CHALLENGER) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return client(config).get_model_version_by_alias(config.registry.model_name, alias).version
    except MlflowException:
        return None


def champion_artifacts(config: PipelineConfig) -> tuple[str, str] | None:
    """The champion version and its model artifacts (the training job's model.tar.gz), when a
    champion exists and its artifacts are where the version says; else None, with the reason
    in the log. The evaluation compares the new candidates with it on the same examples."""
    from mlflow.exceptions import MlflowException

    name = config.registry.model_name
    try:
        version = client(config).get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        log.info("no champion of %s is registered: the gate has no champion to beat", name)
        return None
    uri = version.tags.get("fmops.model_artifacts")
    if not uri:
        log.warning(
            "champion %s v%s has no fmops.model_artifacts tag: not evaluated", name, version.version
        )
        return None
    if uri.startswith("file://") and not Path(uri.removeprefix("file://")).exists():
        log.warning(
            "the champion %s v%s's artifacts %s are gone (state folder cleaned?): not evaluated",
            name,
            version.version,
            uri,
        )
        return None
    if config.target == "sagemaker" and not uri.startswith("s3://"):
        log.warning(
            "the champion %s v%s was trained on another target (%s): a SageMaker processing "
            "job cannot read it; not evaluated",
            name,
            version.version,
            uri,
        )
        return None
    return str(version.version), uri


def promote(config: PipelineConfig, version: str) -> str | None:
    """Give ``version`` the alias champion; tag the one it replaces. Returns the replaced one."""
    mlflow_client = client(config)
    name = config.registry.model_name
    previous = latest_alias(config, CHAMPION)
    if previous == str(version):
        return None
    if previous is not None:
        mlflow_client.set_model_version_tag(
            name, previous, "fmops.replaced_at", datetime.now(UTC).isoformat()
        )
        mlflow_client.set_model_version_tag(name, previous, "fmops.replaced_by", str(version))
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    mlflow_client.set_model_version_tag(
        name, str(version), "fmops.deployed_at", datetime.now(UTC).isoformat()
    )
    return previous


def download_model(config: PipelineConfig, version: str, target: Path) -> Path:
    """The registered version's weights folder, downloaded from the registry."""
    import mlflow

    client(config)
    uri = f"models:/{config.registry.model_name}/{version}"
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    entry = flavor.get("artifacts", {}).get("model_dir")
    model_dir = local / entry["path"] if entry else None
    if model_dir is None or not (model_dir / "label_map.json").exists():
        raise LookupError(
            f"{uri} is not an fmops classifier (no model_dir artifact with "
            "label_map.json); register it with fmops_finetune"
        )
    return model_dir
