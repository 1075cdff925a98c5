"""The select stage: from every evaluation job's metrics to the gate's decision and the report.

Each evaluated model (every candidate, the untuned ``baseline``, the registry's ``champion``)
brings its ``metrics.json`` and ``per_example.json``. The cost family is added here, where the
instance catalog is: the fleet ``fmops.sizing`` chooses for the model from its measured
efficiency (the lowest cost per 1,000 requests at the endpoint's latency goal and peak traffic,
CPU types included for a classifier), and the price of 1,000 requests on it (an estimate, and said
to be one). Then ``fmops.evaluation.gate`` decides, the report is
written (``fmops.evaluation.report``) and logged to the DAG run's MLflow parent run, and
``fmops.evaluation.optimization`` decides whether the winner is served as its optimized graph.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig
from fmops.evaluation import gate, optimization
from fmops.evaluation.report import report_plots, write_report
from fmops.storage import join, read_json

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
REPORT_FOLDER = "evaluation"


class SelectionError(RuntimeError):
    """No candidate can be selected: none was evaluated, or none passes the gate's bounds."""


def cost_estimate(config: PipelineConfig, efficiency: dict[str, Any]) -> dict[str, Any]:
    """The cost family: the fleet ``fmops.sizing`` chooses for the model (the lowest cost per
    1,000 requests at the endpoint's latency goal and peak traffic, as the deploy chooses it),
    and what 1,000 requests cost on it."""
    from fmops import sizing
    from fmops.catalog import CatalogError, load_catalog
    from fmops.kinds import kind_of
    from fmops.sagemaker.hosting import CLASSIFIER, llm_precision, serving_need
    from fmops.sagemaker.settings import EndpointSettings

    settings = config.sagemaker.endpoint if config.sagemaker else EndpointSettings()
    region = config.sagemaker.region if config.sagemaker else "us-east-1"
    parameters = efficiency.get("parameters")
    generative = kind_of(config).hosting_image != CLASSIFIER
    if not parameters or not (generative or efficiency.get("throughput_per_s")):
        return {"estimate": "no parameters or throughput measured: no cost estimate"}
    profile = sizing.profile_for(
        settings,
        config.evaluation.cost.gpu_speedup,
        int(parameters),
        generative_precision=llm_precision(settings) if generative else None,
        efficiency=efficiency,
    )
    demand = sizing.demand_for(settings, config.deployment.alarms, generative)
    try:
        sized = sizing.choose(
            load_catalog(region),
            serving_need(config, int(parameters)),
            profile,
            demand,
            allowed=settings.allowed_instance_types or None,
            max_price=settings.max_price_per_hour,
            pinned=settings.pinned_instance_type,
        )
    except (CatalogError, sizing.SizingError) as err:
        return {"estimate": f"no hosting instance serves it: {err}"}
    chosen = sized.chosen
    if chosen.instance.price_per_hour is None:
        return {"instance_type": chosen.name, "estimate": f"no known price for {chosen.name}"}
    per_1k = chosen.usd_per_1k(demand)
    return {
        "instance_type": chosen.name,
        "instance_count": chosen.count,
        "price_per_hour": chosen.instance.price_per_hour,
        "price_source": chosen.instance.price_source,
        "usd_per_hour": round(chosen.usd_per_hour or 0.0, 4),
        "peak_rps": demand.peak_rps,
        "latency_ms": round(chosen.latency_ms, 3),
        "usd_per_1k_requests": None if per_1k is None else round(per_1k, 6),
        "estimate": f"an estimate ({sized.explain()})",
        "request_profile": {k: efficiency[k] for k in sizing.MEASURED_KEYS if k in efficiency},
    }


def _usable(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The metrics without the scenarios the model could not run, and those scenarios' reasons."""
    scenarios = metrics.get("scenarios", {})
    skipped = {k: v["skipped"] for k, v in scenarios.items() if "skipped" in v}
    kept = {k: v for k, v in scenarios.items() if "skipped" not in v}
    return {**metrics, "scenarios": kept}, skipped


def gathered(
    config: PipelineConfig, evaluations: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, str]]]:
    """(metrics by model, per-example scores by model and scenario, skipped scenarios)."""
    aws_conn_id = config.sagemaker.aws_conn_id if config.sagemaker else None
    metrics_by_model: dict[str, Any] = {}
    per_example: dict[str, Any] = {}
    skipped: dict[str, dict[str, str]] = {}
    for evaluation in evaluations:
        if not evaluation:
            continue
        name = evaluation["candidate"]
        metrics, skipped[name] = _usable(evaluation["metrics"])
        metrics["cost"] = cost_estimate(config, metrics.get("efficiency", {}))
        metrics_by_model[name] = metrics
        per_example[name] = read_json(
            join(evaluation["output_uri"], "per_example.json"), aws_conn_id
        )
    return metrics_by_model, per_example, skipped


def _scores_for(per_example: dict[str, Any], metric: str) -> dict[str, dict[str, list[float]]]:
    """Each model's per-example scores of ``metric`` (``<scenario>.accuracy.<name>``)."""
    path = metric.split(".")
    scenario, name = path[0], path[-1]
    return {
        model: {scenario: scores[scenario][name]}
        for model, scores in per_example.items()
        if name in scores.get(scenario, {})
    }


def default_primary(config: PipelineConfig) -> str:
    """The first scenario's main metric (evaluate.py's ``main_score`` of its task)."""
    from fmops.evaluation.scenarios import MAIN_SCORE, task_of

    first = config.evaluation.scenarios[0]
    return f"{first.name}.accuracy.{MAIN_SCORE[task_of(config, first)]}"


def summary_rows(board: gate.Leaderboard, roles: dict[str, str], primary: str) -> list[dict]:
    """The leaderboard's headline columns, for the model card and the task log."""
    scenario = primary.split(".")[0]
    keys = {
        "primary": primary,
        "ece": f"{scenario}.calibration.ece",
        "worst_drop": f"{scenario}.robustness.worst_drop",
        "max_gap": f"{scenario}.fairness.max_gap",
        "latency_p95_ms": "efficiency.latency_p95_ms",
        "usd_per_1k_requests": "cost.usd_per_1k_requests",
    }
    return [
        {
            "candidate": row["model"],
            "role": roles.get(row["model"], "candidate"),
            "mean_win_rate": row["mean_win_rate"],
            **{label: row.get(key) for label, key in keys.items()},
        }
        for row in board.rows
    ]


def publish(
    config: PipelineConfig,
    board: gate.Leaderboard,
    decision: gate.GateDecision,
    metrics_by_model: dict[str, Any],
    dag_id: str,
    run_id: str,
) -> str:
    """Write the report and log it (HTML and PNGs) to the DAG run's MLflow parent run."""
    from fmops.registry import runs, tracking

    with tempfile.TemporaryDirectory(prefix="fmops-report-") as scratch:
        page = write_report(
            Path(scratch) / REPORT_NAME,
            board,
            decision,
            metrics_by_model,
            title=f"{config.pipeline}: evaluation",
            subtitle=f"DAG run {dag_id} / {run_id}",
        )
        mlflow_client, experiment_id, run = runs.parent_run(config, dag_id, run_id)
        mlflow_client.log_artifacts(run, scratch, REPORT_FOLDER)
        log.info("report with %d plots logged to MLflow run %s", len(report_plots(page)), run)
    return (
        f"{tracking.ui_url(config)}/#/experiments/{experiment_id}/runs/{run}/artifacts/"
        f"{REPORT_FOLDER}/{REPORT_NAME}"
    )


def select(
    config: PipelineConfig, evaluations: list[dict[str, Any]], dag_id: str, run_id: str
) -> dict[str, Any]:
    """The gate's decision over every evaluated model, with the report's MLflow address.

    Raises SelectionError when no candidate passes the bounds; a winner that does not beat the
    champion is a decision (``promote`` false), not an error.
    """
    metrics_by_model, per_example, skipped = gathered(config, evaluations)
    settings = config.evaluation.gate
    primary = settings.primary or default_primary(config)
    settings = settings.model_copy(update={"primary": primary})
    compared_on = settings.champion.metric or primary
    decision = gate.decide(metrics_by_model, _scores_for(per_example, compared_on), settings)
    board = gate.leaderboard(metrics_by_model)
    for model, reasons in skipped.items():
        for scenario, why in reasons.items():
            decision.reasons.append(f"note: {model} skipped scenario {scenario}: {why}")
    url = publish(config, board, decision, metrics_by_model, dag_id, run_id)
    rows = summary_rows(board, decision.roles, primary)
    for row in rows:
        log.info(
            "%-20s %-9s win rate %s  %s=%s",
            row["candidate"],
            row["role"],
            _fmt(row["mean_win_rate"]),
            primary,
            _fmt(row["primary"]),
        )
    for reason in decision.reasons:
        log.info("gate: %s", reason)
    log.info("evaluation report: %s", url)
    if decision.winner is None:
        raise SelectionError("; ".join(decision.reasons) + f". Report: {url}")
    score = gate.metric_value(metrics_by_model[decision.winner], primary)
    baseline = metrics_by_model.get(gate.BASELINE)
    result = {
        "winner": decision.winner,
        "promote": decision.promote,
        "metric": primary,
        "score": score,
        "reasons": decision.reasons,
        "leaderboard": rows,
        "report_url": url,
        "gate": decision.to_dict(),
        "costs_per_1k": {m: v.get("cost", {}) for m, v in metrics_by_model.items()},
    }
    if baseline is not None and gate.metric_value(baseline, primary) is not None:
        result["gain_over_baseline"] = round(score - gate.metric_value(baseline, primary), 6)
    evaluated = next(e for e in evaluations if e and e["candidate"] == decision.winner)
    optimized = optimization.decide(
        config, evaluated, per_example.get(decision.winner, {}), compared_on
    )
    if optimized is not None:
        result["optimization"] = optimized
    return result


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
