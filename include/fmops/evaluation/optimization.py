"""Keep the winner's optimized serving artifact, or serve the eager model.

A fine-tuned model's evaluation job also exports it as cheaper-to-serve artifacts (a
classifier's ONNX Runtime graphs, a causal LM's int8 weights: ``include/scripts/optimize.py``)
and evaluates each on the eager model's scenarios and examples. Here, once the gate has chosen
the winner, each of its artifacts, in the order the config prefers them
(``evaluation.optimize.runtimes`` for a classifier, int8 first by default;
``evaluation.optimize.generative`` for a causal LM), is tested as a challenger is tested against
the champion, the other way round: a paired bootstrap of (artifact - eager) on the per-example
scores of the compared metric. The first whose interval's lower end is at or above ``-margin``
is kept; the registered version then carries it beside the eager weights, and the endpoint
serves it (``fmops.registry.registration``). When none passes, the eager model is served.

The decision, both models' metrics and the speed-up are the ``optimization`` entry of select's
result, which the model card shows.
"""

from __future__ import annotations

import logging
from typing import Any

from fmops.config import PipelineConfig
from fmops.evaluation import gate
from fmops.storage import join, read_json

log = logging.getLogger(__name__)

FOLDER = "optimized"  # include/scripts/optimize.py's FOLDER, under the evaluation's output
PER_EXAMPLE = "per_example.json"
EAGER = "eager"
# The card's columns: metric paths under <scenario> and efficiency.
SCENARIO_KEYS = {
    "ece": "calibration.ece",
    "worst_drop": "robustness.worst_drop",
    "max_gap": "fairness.max_gap",
}
EFFICIENCY_KEYS = (
    "request_ms_p50",
    "request_ms_p95",
    "throughput_per_s",
    "tokens_per_second",
    "model_size_mb",
)
# The engine of a job's artifacts when it did not record one (jobs before causal LMs had a step).
ONNX_RUNTIME = "onnxruntime"
# What each engine serves, in the card's and the logs' words.
ARTIFACTS = {
    ONNX_RUNTIME: "the {runtime} ONNX Runtime graph",
    "pytorch-int8": "the PyTorch int8 weights",
}


def artifact_name(runtime: str, engine: str) -> str:
    """How the card and the logs name an artifact: "the int8 ONNX Runtime graph", "the PyTorch
    int8 weights"."""
    return ARTIFACTS.get(engine, "the {runtime} " + engine).format(runtime=runtime)


def summary(metrics: dict[str, Any], metric: str) -> dict[str, float | None]:
    """One model's headline figures: the compared metric, its scenario's calibration,
    robustness and fairness, and the efficiency figures the speed-up is read from."""
    scenario = metric.split(".")[0]
    row: dict[str, float | None] = {metric: gate.metric_value(metrics, metric)}
    for label, path in SCENARIO_KEYS.items():
        row[label] = gate.metric_value(metrics, f"{scenario}.{path}")
    efficiency = metrics.get("efficiency", {})
    row.update({key: efficiency.get(key) for key in EFFICIENCY_KEYS})
    return row


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def speedup(eager: dict[str, Any], graph: dict[str, Any]) -> dict[str, float | None]:
    """How many times faster the artifact answers: a single-text request (median, one thread;
    classifiers), the batched evaluation pass (examples per second) and generated tokens per
    second (causal LMs)."""
    return {
        "single_request": _ratio(eager.get("request_ms_p50"), graph.get("request_ms_p50")),
        "batched": _ratio(graph.get("throughput_per_s"), eager.get("throughput_per_s")),
        "tokens": _ratio(graph.get("tokens_per_second"), eager.get("tokens_per_second")),
    }


def headline(speedups: dict[str, float | None]) -> str:
    """The speed-up a reader of the card needs first: a single request's for a classifier,
    generated tokens per second's for a causal LM."""
    if speedups.get("single_request"):
        return f"{speedups['single_request']}x the eager model's single-request speed"
    if speedups.get("tokens"):
        return f"{speedups['tokens']}x the eager model's generated tokens per second"
    return f"{speedups.get('batched') or 'n/a'}x the eager model's batched pass"


def decide(
    config: PipelineConfig,
    evaluation: dict[str, Any],
    eager_scores: dict[str, Any],
    metric: str,
) -> dict[str, Any] | None:
    """The winner's optimized artifact, kept or not, and why; None when its evaluation job had
    no optimize step (``evaluation.optimize.runtimes``, or ``generative``, empty).

    ``evaluation``: the winner's evaluation outcome (its ``metrics.json`` and output folder);
    ``eager_scores``: its eager ``per_example.json``; ``metric``: the accuracy metric the gate
    compares per example (``gate.champion.metric``, else the primary metric)."""
    metrics = evaluation["metrics"]
    optimized = metrics.get("optimized")
    if optimized is None:
        return None
    settings = config.evaluation.optimize
    decision: dict[str, Any] = {
        "kept": None,
        "metric": metric,
        "margin": settings.margin,
        "confidence": settings.confidence,
        "checks": [],
        "metrics": {EAGER: summary(metrics, metric)},
        "source": join(evaluation["output_uri"], FOLDER),
    }
    if "skipped" in optimized:
        decision["reason"] = f"not optimized: {optimized['skipped']}; the eager model is served"
        return decision
    aws_conn_id = config.sagemaker.aws_conn_id if config.sagemaker else None
    per_example = read_json(join(decision["source"], PER_EXAMPLE), aws_conn_id)
    scenario, name = metric.split(".")[0], metric.split(".")[-1]
    eager = eager_scores.get(scenario, {}).get(name)
    graphs = optimized.get("runtimes", {})
    preferred = settings.preferred(metrics.get("model_kind") == "generation")
    chosen: dict[str, Any] | None = None
    for runtime in [r for r in preferred if r in graphs]:
        graph = graphs[runtime]
        graph_metrics = {"scenarios": graph["scenarios"], "efficiency": graph["efficiency"]}
        decision["metrics"][runtime] = summary(graph_metrics, metric)
        check: dict[str, Any] = {
            "runtime": runtime,
            "graph": graph["graph"],
            "speedup": speedup(metrics.get("efficiency", {}), graph["efficiency"]),
        }
        scores = per_example.get(runtime, {}).get(scenario, {}).get(name)
        if scores is None or eager is None:
            check.update(passes=False, why=f"no per-example scores of {metric} to compare")
        else:
            result = gate.paired_bootstrap(
                scores,
                eager,
                resamples=settings.resamples,
                seed=settings.seed,
                confidence=settings.confidence,
            )
            passes = result.lower >= -settings.margin
            check.update(
                passes=passes,
                difference=round(result.mean_difference, 6),
                lower=round(result.lower, 6),
                upper=round(result.upper, 6),
                examples=result.n,
                why=(
                    f"{runtime} - eager on {metric}: {result.mean_difference:+.4f}, "
                    f"{result.interval()}, lower end {'at or above' if passes else 'below'} "
                    f"-{settings.margin:g}"
                ),
            )
        decision["checks"].append(check)
        if check["passes"] and chosen is None:
            chosen = check
            decision.update(
                kept=runtime,
                graph=graph["graph"],
                engine=graph.get("engine", ONNX_RUNTIME),
                sha256=graph["sha256"],
                bytes=graph["bytes"],
            )
    if chosen is None:
        decision["reason"] = (
            "no optimized artifact is within the margin of the eager model: the eager model is "
            "served"
            if decision["checks"]
            else "the job exported no optimized artifact: the eager model is served"
        )
    else:
        decision["speedup"] = chosen["speedup"]
        decision["reason"] = (
            f"served: {artifact_name(chosen['runtime'], decision['engine'])}: {chosen['why']}; "
            f"{headline(chosen['speedup'])}"
        )
    log.info("optimize: %s", decision["reason"])
    for check in decision["checks"]:
        log.info("optimize: %s", check["why"])
    return decision
