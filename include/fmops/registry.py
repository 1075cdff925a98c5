"""MLflow: the run records of a pipeline run, the registered model version, review and aliases.

One experiment per pipeline. A parent run per DAG run holds the config, data digests, validation
summary and leaderboard; a nested child run per candidate (and the baseline) holds its
hyperparameters, training curves, evaluation metrics and job log. The winner is logged as an
MLflow pyfunc model (weights, tokenizer, label map, the serving handlers and an input example)
and registered with the alias ``challenger``; its description is the model card (``model_card``)
and its tags carry the lineage (``fmops.pipeline``, ``fmops.dag_run``, ``fmops.data_digest``,
``fmops.gate``, ...). A reviewer sets the version tag ``fmops.approval`` (``approved`` or
``rejected``, with ``fmops.reviewer`` and ``fmops.review_comment``) in the MLflow UI or with
``fmops approve|reject`` (``set_review``); fmops_deploy waits for it and records on the version
how its run ended (``fmops.deploy_outcome``). After a good rollout ``promote`` moves
``champion``, and the version it replaces keeps ``fmops.replaced_at``.

Every step finds what an earlier attempt of the same task created (runs, the logged model and the
version are looked up by tags) before creating anything, so a retry after an MLflow outage never
duplicates runs or versions, and finishes a registration that an earlier attempt left halfway
(a version without its alias, a model whose upload broke off).
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
PENDING, APPROVED, REJECTED = APPROVAL_VALUES
REVIEWER_TAG, COMMENT_TAG, REVIEWED_AT_TAG = (
    "fmops.reviewer",
    "fmops.review_comment",
    "fmops.reviewed_at",
)
# What fmops_deploy records on a version: the run that handled it last and how that run ended.
DEPLOY_RUN_TAG, DEPLOY_OUTCOME_TAG, DEPLOY_NOTE_TAG = (
    "fmops.deploy_run",
    "fmops.deploy_outcome",
    "fmops.deploy_note",
)
REQUESTED_AT_TAG, DEADLINE_TAG = "fmops.approval_requested_at", "fmops.approval_deadline"
MAX_TAG_VALUE = 5000  # MLflow's limit for a model version tag's value
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


def ui_url(config: PipelineConfig | None = None, *, uri: str | None = None) -> str:
    """The MLflow UI that people's browsers reach: ``FMOPS_MLFLOW_UI`` when set (docker-compose:
    the tracking server's name inside the network is not the browser's), else the tracking
    server itself when it is one (``uri``, else the config's), else the local stack's
    http://127.0.0.1:5000."""
    import os

    if os.environ.get("FMOPS_MLFLOW_UI"):
        return os.environ["FMOPS_MLFLOW_UI"].rstrip("/")
    uri = uri or tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def run_url(experiment_id: str, run_id: str, config: PipelineConfig | None = None) -> str:
    return f"{ui_url(config)}/#/experiments/{experiment_id}/runs/{run_id}"


def client(config: PipelineConfig | None = None) -> Any:
    """A client of the config's tracking server and registry; also makes them mlflow's
    current ones (``mlflow.pyfunc.log_model`` and ``download_artifacts`` use those)."""
    import mlflow

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return client_for(uri)


def client_for(uri: str) -> Any:
    """A client of the tracking server and registry at ``uri``, changing no global state."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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
            candidate = _candidate(config, name)
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
    mlflow_client.set_terminated(parent)
    return runs


def _candidate(config: PipelineConfig, name: str) -> Any | None:
    """The config's candidate of that name; None for the baseline and the champion."""
    return next((c for c in config.candidates if c.name == name), None)


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


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def comparison_line(comparison: dict[str, Any] | None) -> str:
    """One gate comparison (``GateDecision.champion``/``baseline`` as a dict) in a sentence:
    the mean difference and its confidence interval, the margin, and the verdict."""
    if not comparison:
        return "not compared"
    result = comparison.get("result")
    if not result:
        return comparison.get("reason", "not compared")
    verdict = "clears" if comparison["cleared"] else "does not clear"
    return (
        f"{comparison['candidate']} - {comparison['against']} on `{comparison['metric']}`: "
        f"mean {result['mean_difference']:+.4f}, {_percent(result['confidence'])} CI "
        f"[{result['lower']:+.4f}, {result['upper']:+.4f}] (paired bootstrap, "
        f"{result['resamples']} resamples, seed {result['seed']}, n={result['n']}); "
        f"the lower end {verdict} the margin {comparison['margin']:g}"
    )


def gate_summary(decision: dict[str, Any]) -> str:
    """The gate's decision in one line, for the ``fmops.gate`` tag: the verdict, the winner's
    bounds, and the confidence intervals against the champion and the untuned baseline."""
    gate = decision.get("gate") or {}
    winner = decision["winner"]
    verdict = "promote" if decision.get("promote", True) else "do not promote"
    parts = [f"{verdict} {winner} ({decision['metric']}={decision['score']:.4f})"]
    checks = (gate.get("checks") or {}).get(winner) or []
    if checks:
        parts.append(f"bounds passed {sum(c['passed'] for c in checks)}/{len(checks)}")
    for role, label in (("champion", "vs champion"), ("baseline", "vs baseline")):
        comparison = gate.get(role)
        result = (comparison or {}).get("result")
        if result:
            cleared = "clears" if comparison["cleared"] else "does not clear"
            parts.append(
                f"{label}: {result['mean_difference']:+.4f}, {_percent(result['confidence'])} CI "
                f"[{result['lower']:+.4f}, {result['upper']:+.4f}] {cleared} margin "
                f"{comparison['margin']:g}"
            )
        elif role == "champion":
            parts.append("no champion to beat" if comparison is None else f"{label}: not tested")
    return "; ".join(parts)[:MAX_TAG_VALUE]


def _hosting(config: PipelineConfig, decision: dict, winner: str) -> tuple[str, str | None]:
    """The card's hosting paragraph and the recommended instance type (None if none fits)."""
    cost = (decision.get("costs_per_1k") or {}).get(winner) or {}
    instance = cost.get("instance_type")
    if not instance:
        return f"No hosting recommendation: {cost.get('estimate', 'no cost estimate')}.", None
    price = cost.get("price_per_hour")
    per_1k = cost.get("usd_per_1k_requests")
    text = f"Recommended instance `{instance}`"
    if price is not None:
        text += f" at ${price}/h ({cost.get('price_source') or 'catalog price'})"
    if per_1k is not None:
        text += f", about ${per_1k:.6f} per 1,000 requests ({cost.get('estimate', 'estimate')})"
    where = (
        f"The sagemaker target serves on endpoint `{config.deployment.endpoint_name}`."
        if config.target == "sagemaker"
        else f"The local target serves on 127.0.0.1:{config.deployment.port} "
        f"(endpoint `{config.deployment.endpoint_name}`); the recommendation is for SageMaker."
    )
    return f"{text}. {where}", instance


def _training_lines(config: PipelineConfig, winner: dict) -> str:
    candidate = _candidate(config, winner["candidate"])
    if candidate is None:
        method = "unknown (the candidate is not in this config)"
        base = "unknown"
    else:
        base = candidate.base_model
        method = candidate.method
        if candidate.lora is not None:
            method += f" ({json.dumps(candidate.lora.model_dump(mode='json', exclude_none=True))})"
    cost = winner.get("cost") or {}
    if cost.get("usd") is not None:
        billed = f"${cost['usd']:.4f} ({cost.get('billed_seconds')} billed s on "
        billed += f"{cost.get('instance_type')} at ${cost.get('usd_per_hour')}/h)"
    elif winner.get("target") == "sagemaker":
        billed = "no billed time reported"
    else:
        billed = "not billed (the local executor ran it on this machine)"
    seconds = winner.get("training_seconds")
    return "\n".join(
        [
            f"- base model `{base}`, method {method}",
            f"- training job `{winner['job_name']}` on the {winner.get('target', config.target)} "
            f"target, {'n/a' if seconds is None else f'{seconds} s'}{instance_line(winner)}",
            f"- cost of the training job: {billed}",
            f"- model artifacts `{winner['model_artifacts']}`",
            f"- hyperparameters: `{json.dumps(winner['hyperparameters'], sort_keys=True)}`",
        ]
    )


def _labels_source(config: PipelineConfig) -> str:
    labels = config.data.labels
    return f"`{labels}`" if isinstance(labels, str) else "the config"


def _known_limits(config: PipelineConfig, staged: dict, decision: dict, winner: str) -> str:
    row = next((r for r in decision["leaderboard"] if r["candidate"] == winner), {})
    data = config.data
    lines = [
        f"- It predicts one of the {staged.get('labels', 'declared')} labels of "
        f"{_labels_source(config)} for every input, also for inputs that belong to none of them "
        "(no abstention): route out-of-scope traffic elsewhere.",
        f"- Trained on {staged['train_rows']} rows sampled from `{data.train}`; it is only as "
        "good as that data is like the traffic it will see.",
    ]
    hyperparameters = next((c.hyperparameters for c in config.candidates if c.name == winner), None)
    if hyperparameters is not None:
        lines.append(
            f"- Texts are cut to {hyperparameters.max_length} tokens in training, and to "
            "`FMOPS_MAX_LENGTH` tokens when served (inference.py: 128 unless the endpoint sets "
            "it): the end of a longer text is not read."
        )
    if row.get("worst_drop") is not None or row.get("max_gap") is not None:
        lines.append(
            f"- Robustness and fairness on the evaluation set: the worst drop of the primary "
            f"metric under perturbation is {row.get('worst_drop')}, the largest gap between "
            f"groups {row.get('max_gap')} (see the report)."
        )
    lines.append(
        "- The cost per 1,000 requests is an estimate from the evaluation machine's throughput, "
        "not a measurement on the hosting instance."
    )
    return "\n".join(lines)


def model_card(
    config: PipelineConfig,
    staged: dict,
    decision: dict,
    winner: dict,
    dag_id: str,
    run_id: str,
    failed: list[dict] | None = None,
    links: dict[str, str] | None = None,
) -> str:
    """The version's description, in Markdown: what a reviewer reads before approving.

    ``links`` (optional): ``parent_run``, ``winner_run`` and ``validation_report`` addresses.
    """
    links = links or {}
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
    gate = decision.get("gate") or {}
    bounds = "\n".join(
        f"  - `{c['metric']}` {c['bound']}: {'passed' if c['passed'] else 'FAILED'} ({c['reason']})"
        for c in (gate.get("checks") or {}).get(winner["candidate"], [])
    )
    hosting, _ = _hosting(config, decision, winner["candidate"])
    validation = staged["validation"]
    review = (
        "`deployment.approval` is `auto` in this config: fmops_deploy approves this version "
        "without a human review and records that on the version."
        if config.deployment.approval == "auto"
        else f"fmops_deploy waits up to {config.deployment.approval_timeout_seconds} s for a "
        "decision."
    )
    lineage = [f"- pipeline `{config.pipeline}`, DAG run `{dag_id}` / `{run_id}`"]
    for key, label in (("parent_run", "MLflow run of the DAG run"), ("winner_run", "winner's run")):
        if links.get(key):
            lineage.append(f"- {label}: {links[key]}")
    validation_link = (
        f"; report: {links['validation_report']}" if links.get("validation_report") else ""
    )
    lineage_text = "\n".join(lineage)
    verdict = "promote" if decision.get("promote", True) else "do not promote"
    champion = (
        comparison_line(gate["champion"])
        if gate.get("champion")
        else "no champion is registered: the bounds alone decide"
    )
    return f"""# {config.registry.model_name}: {winner["candidate"]}

{lineage_text}

## Data
- training: `{config.data.train}` ({staged["train_rows"]} rows after sampling), validation:
  {staged["validation_rows"]} rows, evaluation: `{config.data.evaluation}`
  ({staged["evaluation_rows"]} rows), labels {_labels_source(config)}; staged data digest
  `{staged["digest"]}`
- dataset digests (sha256): train `{staged["train_data_digest"]}`,
  evaluation `{staged["evaluation_data_digest"]}`
- validation: {validation["expectations"]} expectations, {validation["failed"]} failed,
  {validation["warned"]} warning(s): {"; ".join(validation["problems"]) or "none"}{validation_link}

## Training
{_training_lines(config, winner)}

## Evaluation
Primary metric `{decision["metric"]}`; the mean win rate is over every scenario metric
(HELM); cost per 1,000 requests is an estimate (see the report).

{CARD_HEADER}
{rows}

### Gate decision
**{verdict} {winner["candidate"]}**: {decision["metric"]} = {decision["score"]:.4f}; gain over
the untuned baseline: {decision.get("gain_over_baseline", "n/a")}.
- bounds of the winner:
{bounds or "  - none configured"}
- against the champion: {champion}
- against the untuned baseline: {comparison_line(gate.get("baseline"))}

The gate's reasons:
{reasons}

Report: {decision.get("report_url", "n/a")}

Candidates that failed and were not compared:
{failures}

## Hosting
{hosting}

## Cost
{cost_lines(decision.get("costs"))}

## Known limits
{_known_limits(config, staged, decision, winner["candidate"])}

## Review
Approve or reject by setting the version tag `{APPROVAL_TAG}` to `{APPROVED}` or `{REJECTED}`
(with `{REVIEWER_TAG}` and `{COMMENT_TAG}`), or with
`fmops approve|reject {config.registry.model_name} VERSION --reviewer NAME --comment TEXT`.
{review}
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
    """Record the runs and register the winner as a new version (once per DAG run).

    Safe to run again for the same DAG run, after any failure: the runs, the logged model and
    the version are found by their tags, a model whose upload broke off is logged again, and a
    version that an earlier attempt created is finished (alias) rather than created twice."""
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
        version = str(existing.version)
        log.info("version %s of %s was registered for this run already: reusing it", version, name)
    else:
        version = _create_version(
            mlflow_client, config, staged, trained, decision, dag_id, run_id, runs, failed
        )
    _finish_registration(mlflow_client, name, version)
    log.info(
        "registered %s version %s (alias %s): %s",
        name,
        version,
        CHALLENGER,
        version_url(name, version, config),
    )
    experiment_id = mlflow_client.get_run(runs["parent"]).info.experiment_id
    return {
        **_version_summary(config, version, runs),
        "parent_run_url": run_url(experiment_id, runs["parent"], config),
    }


def _create_version(
    mlflow_client: Any,
    config: PipelineConfig,
    staged: dict,
    trained: list[dict],
    decision: dict,
    dag_id: str,
    run_id: str,
    runs: dict[str, str],
    failed: list[dict] | None,
) -> str:
    name, dag_run = config.registry.model_name, f"{dag_id}/{run_id}"
    winner = next(t for t in trained if t and t["candidate"] == decision["winner"])
    winner_run = runs[winner["candidate"]]
    experiment_id = mlflow_client.get_run(winner_run).info.experiment_id
    model = _logged_model(mlflow_client, experiment_id, winner_run)
    if model is None:
        model = _log_model(config, winner, winner_run)
    _ensure_registered_model(mlflow_client, name, config.pipeline)
    parent = runs["parent"]
    links = {
        "parent_run": run_url(experiment_id, parent, config),
        "winner_run": run_url(experiment_id, winner_run, config),
        "validation_report": (
            f"{run_url(experiment_id, parent, config)}/artifacts/validation/data_docs/index.html"
        ),
    }
    _, hosting = _hosting(config, decision, winner["candidate"])
    candidate = _candidate(config, winner["candidate"])
    tags = {
        "fmops.pipeline": config.pipeline,
        "fmops.target": config.target,
        "fmops.dag_run": dag_run,
        "fmops.dag_id": dag_id,
        "fmops.run_id": run_id,
        "fmops.mlflow_parent_run": parent,
        "fmops.candidate": winner["candidate"],
        "fmops.base_model": candidate.base_model if candidate else "",
        "fmops.method": candidate.method if candidate else "",
        "fmops.data_digest": staged["train_data_digest"],
        "fmops.evaluation_data_digest": staged["evaluation_data_digest"],
        "fmops.staged_data": staged["digest"],
        "fmops.training_job": winner["job_name"],
        "fmops.model_artifacts": winner["model_artifacts"],
        "fmops.metric": f"{decision['metric']}={decision['score']:.4f}",
        "fmops.gate": gate_summary(decision),
        "fmops.evaluation_report": decision.get("report_url", ""),
        "fmops.validation_report": links["validation_report"],
        "fmops.hosting_instance": hosting or "none fits",
        APPROVAL_TAG: PENDING,
    }
    if winner["model_artifacts"].startswith("s3://"):
        # What a SageMaker model (CreateModel's ModelDataUrl) is made from.
        tags["fmops.sagemaker.model_data_url"] = winner["model_artifacts"]
    version = mlflow_client.create_model_version(
        name,
        model.model_uri,
        run_id=winner_run,
        tags={k: str(v)[:MAX_TAG_VALUE] for k, v in tags.items()},
        description=model_card(
            config, staged, decision, winner, dag_id, run_id, failed, links=links
        ),
        model_id=model.model_id,
    )
    return str(version.version)


def _logged_model(mlflow_client: Any, experiment_id: str, run_id: str) -> Any | None:
    """The model an earlier attempt logged on the winner's run, if its upload finished; one
    that broke off (not READY) is deleted, so that it is logged again whole."""
    from mlflow.entities import LoggedModelStatus

    found = mlflow_client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = 'model'",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    for broken in (m for m in found if m.status != LoggedModelStatus.READY):
        log.warning(
            "model %s on run %s is %s (an earlier attempt broke off): deleting it, logging again",
            broken.model_id,
            run_id,
            broken.status,
        )
        mlflow_client.delete_logged_model(broken.model_id)
    if ready:
        log.info("reusing model %s, logged by an earlier attempt", ready[0].model_id)
    return ready[0] if ready else None


def model_signature() -> Any:
    """Input: a ``text`` column; output: the predicted ``label`` and its ``score``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )


def _log_model(config: PipelineConfig, winner: dict, run_id: str) -> Any:
    """Log the winner as a pyfunc model on its run: the job's model folder (safetensors weights,
    tokenizer, label map), ``inference.py`` as code, an input example and the signature."""
    import mlflow
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="fmops-register-") as scratch:
        model_dir = _unpack(
            winner["model_artifacts"],
            Path(scratch) / "model",
            config.sagemaker.aws_conn_id if config.sagemaker else None,
        )
        example = pd.DataFrame({"text": ["I still have not received my new card"]})
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={"model_dir": str(model_dir)},
                code_paths=[str(SCRIPTS_DIR / "inference.py")],
                input_example=example,
                signature=model_signature(),
                pip_requirements=_serving_requirements(),
            )
    return info


def _finish_registration(mlflow_client: Any, name: str, version: str) -> None:
    """The steps after the version exists, safe to repeat: wait until it is READY, then point
    ``challenger`` at it, unless a later DAG run has registered a newer version since."""
    _wait_ready(mlflow_client, name, version)
    current = _alias_version(mlflow_client, name, CHALLENGER)
    if current is None or int(current.version) < int(version):
        mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    elif current.version != version:
        log.info("%s: alias %s stays on the newer version %s", name, CHALLENGER, current.version)


def _alias_version(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The version with ``alias``; None when no version has it. An unreachable server raises:
    "no champion" must never be concluded from an outage."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


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


def version_url(
    name: str, version: str, config: PipelineConfig | None = None, *, uri: str | None = None
) -> str:
    return f"{ui_url(config, uri=uri)}/#/models/{name}/versions/{version}"


def _version_summary(config: PipelineConfig, version: str, runs: dict[str, str]) -> dict:
    name = config.registry.model_name
    return {
        "model_name": name,
        "version": str(version),
        "url": version_url(name, version, config),
        "parent_run_id": runs["parent"],
    }


# -- review ---------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def review_of(tags: dict[str, str]) -> dict[str, str]:
    """The review recorded in a version's tags: decision (pending when unset or not one of the
    allowed values, which the log says), reviewer, comment, when."""
    decision = (tags.get(APPROVAL_TAG) or PENDING).strip().lower()
    if decision not in APPROVAL_VALUES:
        log.warning(
            "%s=%r is not one of %s: treated as pending", APPROVAL_TAG, decision, APPROVAL_VALUES
        )
        decision = PENDING
    return {
        "decision": decision,
        "reviewer": tags.get(REVIEWER_TAG, ""),
        "comment": tags.get(COMMENT_TAG, ""),
        "reviewed_at": tags.get(REVIEWED_AT_TAG, ""),
    }


def read_review(uri: str, name: str, version: str) -> dict[str, str]:
    """The review of ``name`` version ``version`` in the registry at ``uri`` (for the approval
    trigger, which has no config). Raises ApprovalError when the version does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        found = client_for(uri).get_model_version(name, version)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ApprovalError(f"{name} has no version {version} in {uri}") from err
        raise
    return review_of(found.tags)


def set_review(
    mlflow_client: Any, name: str, version: str, decision: str, reviewer: str, comment: str = ""
) -> dict[str, str]:
    """Record a review decision on a version: ``fmops.approval``, ``fmops.reviewer``,
    ``fmops.review_comment`` and ``fmops.reviewed_at``. Returns the tags it set.

    Raises ApprovalError for a decision other than approved/rejected, an empty reviewer, or a
    version that does not exist."""
    from mlflow.exceptions import MlflowException

    if decision not in (APPROVED, REJECTED):
        raise ApprovalError(f"decision {decision!r}; allowed: {APPROVED}, {REJECTED}")
    if not reviewer.strip():
        raise ApprovalError("a review needs a reviewer: name who decided (--reviewer NAME)")
    try:
        previous = review_of(mlflow_client.get_model_version(name, str(version)).tags)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ApprovalError(
                f"{name} has no version {version} (or no such registered model); the MLflow "
                "UI's Models page lists the versions"
            ) from err
        raise
    tags = {
        APPROVAL_TAG: decision,
        REVIEWER_TAG: reviewer.strip(),
        COMMENT_TAG: comment,
        REVIEWED_AT_TAG: now_iso(),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, str(version), key, value[:MAX_TAG_VALUE])
    if previous["decision"] not in (PENDING, decision):
        log.warning(
            "%s version %s: %s replaces the earlier %s by %s",
            name,
            version,
            decision,
            previous["decision"],
            previous["reviewer"] or "someone",
        )
    log.info("%s version %s: %s by %s", name, version, decision, reviewer)
    return tags


def tag_version(config: PipelineConfig, version: str, tags: dict[str, str]) -> None:
    """Set tags on a version of the config's model (values cut to MLflow's limit)."""
    mlflow_client = client(config)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(
            config.registry.model_name, str(version), key, str(value)[:MAX_TAG_VALUE]
        )


def latest_alias(config: PipelineConfig, alias: str = CHALLENGER) -> str | None:
    """The version with ``alias``, None when there is none (an unreachable MLflow raises)."""
    found = _alias_version(client(config), config.registry.model_name, alias)
    return None if found is None else str(found.version)


def champion_artifacts(config: PipelineConfig) -> tuple[str, str] | None:
    """The champion version and its model artifacts (the training job's model.tar.gz), when a
    champion exists and its artifacts are where the version says; else None, with the reason
    in the log. The evaluation compares the new candidates with it on the same examples."""
    name = config.registry.model_name
    version = _alias_version(client(config), name, CHAMPION)
    if version is None:
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


def promote(config: PipelineConfig, version: str, deploy_run: str | None = None) -> str | None:
    """Give ``version`` the alias champion after a good rollout; the version it replaces keeps
    ``fmops.replaced_at`` / ``fmops.replaced_by``. Returns the replaced version (None if none,
    or if ``version`` was the champion already). Safe to repeat: a retry after the alias moved
    finds nothing left to replace and only refreshes the deployment tags."""
    mlflow_client = client(config)
    name = config.registry.model_name
    previous = latest_alias(config, CHAMPION)
    now = now_iso()
    replaced = None
    if previous is not None and previous != str(version):
        tag_version(config, previous, {"fmops.replaced_at": now, "fmops.replaced_by": str(version)})
        replaced = previous
    if previous != str(version):
        mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    tags = {
        "fmops.deployed_at": now,
        DEPLOY_OUTCOME_TAG: "deployed",
        DEPLOY_NOTE_TAG: f"{CHAMPION} since {now}"
        + (f", replacing version {replaced}" if replaced else ""),
    }
    if deploy_run:
        tags[DEPLOY_RUN_TAG] = deploy_run
    tag_version(config, version, tags)
    return replaced


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
