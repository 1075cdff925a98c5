"""The evaluation job's optimize step: the fine-tuned classifier as ONNX Runtime graphs, each
evaluated on the same scenarios and examples as the eager model, in the same job.

``evaluate.py --optimize int8,fp32`` calls ``run`` after the eager pass, for a fine-tuned
classifier (a candidate or the champion; not the untuned baseline). It writes under
``<output>/optimized/``:

- ``onnx/model.onnx`` (fp32) and ``onnx/model.int8.onnx`` (int8 dynamic quantization of its
  weights), as ``inference.export_onnx`` writes them;
- ``per_example.json``: ``{runtime: {scenario: {metric: [one score per example]}}}``, in the
  eager ``per_example.json``'s example order, for the paired bootstrap;

and returns what ``metrics.json`` records under ``optimized``: per runtime, the graph's path,
size and SHA-256, every scenario's metrics (the eager model's families) and the efficiency
figures, the single-request ones included.

Whether a graph is kept is not decided here: fmops' select stage decides it
(``fmops.evaluation.optimization``: a paired bootstrap of the primary metric against the eager
model's scores, with the configured margin), where the gate's settings are. A job whose image
lacks ONNX Runtime or the exporter (the SageMaker Hugging Face images) records why it skipped
the step, and the eager model is served.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FOLDER = "optimized"
GRAPHS = {"fp32": "onnx/model.onnx", "int8": "onnx/model.int8.onnx"}
PER_EXAMPLE = "per_example.json"
NEEDS = ("onnxruntime", "onnxscript", "onnx")


def unavailable() -> str | None:
    """Why this job cannot export and run the graphs, or None."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed in this job's image" if missing else None


def parse_runtimes(text: str) -> list[str]:
    runtimes = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in runtimes if r not in GRAPHS]
    if unknown:
        raise SystemExit(
            f"ERROR --optimize {text!r}: unknown runtime(s) {unknown}; choose from {sorted(GRAPHS)}"
        )
    return runtimes


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(
    eager: Any,
    graph_predictor: Callable[[Path, int | None], Any],
    runtimes: list[str],
    output: Path,
    evaluate: Callable[[Any, str], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]],
    single: Callable[[Any], dict[str, Any]],
    threads: int,
) -> dict[str, Any]:
    """Export ``eager`` (``evaluate.Classifier``) and evaluate each runtime's graph.

    ``graph_predictor(graph, threads)``: the graph as a predictor with ``eager``'s interface
    (``evaluate.Classifier`` over ``inference.graph_classifier``).
    ``evaluate(predict, runtime)`` runs every scenario the eager model ran, on the same examples,
    and returns (results by scenario, per-example scores by scenario, efficiency);
    ``single(predict)`` times single-text requests as the eager figures were timed (one thread).
    """
    reason = unavailable()
    if reason:
        print(f"optimize: skipped, {reason}; the eager model is what is served", flush=True)
        return {"skipped": reason}
    import inference

    folder = output / FOLDER
    tick = time.perf_counter()
    inference.export_onnx(eager.model, folder / "onnx", quantize="int8" in runtimes)
    exported = round(time.perf_counter() - tick, 2)
    print(f"optimize: exported the ONNX graph(s) in {exported} s", flush=True)
    document: dict[str, Any] = {"export_seconds": exported, "threads": threads, "runtimes": {}}
    per_example: dict[str, Any] = {}
    for runtime in runtimes:
        graph = folder / GRAPHS[runtime]
        results, scores, efficiency = evaluate(graph_predictor(graph, threads), runtime)
        efficiency.update(single(graph_predictor(graph, 1)))
        efficiency["model_size_mb"] = round(graph.stat().st_size / 2**20, 2)
        efficiency["device"] = "cpu"
        document["runtimes"][runtime] = {
            "graph": GRAPHS[runtime],
            "sha256": sha256(graph),
            "bytes": graph.stat().st_size,
            "scenarios": results,
            "efficiency": efficiency,
        }
        per_example[runtime] = scores
        print(
            f"optimize: {runtime}: {json.dumps({k: v['accuracy'] for k, v in results.items()})} "
            f"request p50 {efficiency.get('request_ms_p50')} ms",
            flush=True,
        )
    (folder / PER_EXAMPLE).write_text(json.dumps(per_example))
    return document


def renamed(scenario: Any, runtime: str) -> Any:
    """The scenario under ``<name>@<runtime>``: its progress lines are told apart from the eager
    pass's."""
    return dataclasses.replace(scenario, name=f"{scenario.name}@{runtime}")
