"""The evaluation job's optimize step: the fine-tuned model as cheaper-to-serve artifacts, each
evaluated on the same scenarios and examples as the eager model, in the same job.

``evaluate.py --optimize <runtimes>`` calls ``run`` after the eager pass, for a fine-tuned model
(a candidate or the champion; not the untuned baseline). What it exports depends on the model's
kind (``KINDS``):

- a classifier, ONNX Runtime graphs (``inference.export_onnx``): ``onnx/model.onnx`` (fp32,
  ``torch.onnx.export``) and ``onnx/model.int8.onnx`` (int8 dynamic quantization of its weights);
- a causal LM, int8 on PyTorch (``generation.quantize_int8``: dynamic quantization of the linear
  layers but the output head, one scale per output channel): ``int8/model.safetensors`` holds
  the int8 weights, which serving loads over the eager ones (``generation.load_int8``). The ONNX
  export of a decode loop (Hugging Face Optimum) cannot be installed beside the pinned
  transformers; this is the one CPU path left for generative models.

It writes them under ``<output>/optimized/``, with ``per_example.json``: ``{runtime: {scenario:
{metric: [one score per example]}}}``, in the eager ``per_example.json``'s example order, for the
paired bootstrap; and returns what ``metrics.json`` records under ``optimized``: per runtime, the
artifact's path, size and SHA-256, the engine that serves it, every scenario's metrics (the eager
model's families) and the efficiency figures.

Whether an artifact is kept is not decided here: fmops' select stage decides it
(``fmops.evaluation.optimization``: a paired bootstrap of the primary metric against the eager
model's scores, with the configured margin), where the gate's settings are. A job whose image
lacks what the kind's step needs (ONNX Runtime and the exporter are not in the SageMaker Hugging
Face images) records why it skipped the step, and the eager model is served.
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
PER_EXAMPLE = "per_example.json"


@dataclasses.dataclass(frozen=True)
class Kind:
    """What a model kind's optimize step exports: each runtime's artifact (relative to
    ``optimized/``), the engine that serves it (``serving.json``'s runtime) and the modules the
    export needs in the job's image."""

    engine: str
    artifacts: dict[str, str]
    needs: tuple[str, ...]


KINDS = {
    "classification": Kind(
        "onnxruntime",
        {"fp32": "onnx/model.onnx", "int8": "onnx/model.int8.onnx"},
        ("onnxruntime", "onnxscript", "onnx"),
    ),
    # generation.INT8_RUNTIME and generation.INT8_WEIGHTS: not imported here, so that a
    # classifier's job never imports the generation module.
    "generation": Kind("pytorch-int8", {"int8": "int8/model.safetensors"}, ("safetensors",)),
}


def unavailable(kind: str) -> str | None:
    """Why this job cannot produce and run the kind's artifacts, or None."""
    missing = [name for name in KINDS[kind].needs if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed in this job's image" if missing else None


def parse_runtimes(text: str, kind: str) -> list[str]:
    runtimes = [r.strip() for r in text.split(",") if r.strip()]
    known = KINDS[kind].artifacts
    unknown = [r for r in runtimes if r not in known]
    if unknown:
        raise SystemExit(
            f"ERROR --optimize {text!r}: unknown runtime(s) {unknown} for a {kind} model; "
            f"choose from {sorted(known)}"
        )
    return runtimes


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(
    kind: str,
    export: Callable[[Path, list[str]], str | None],
    load: Callable[[Path, int | None], Any],
    runtimes: list[str],
    output: Path,
    evaluate: Callable[[Any, str], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]],
    single: Callable[[Any], dict[str, Any]] | None,
    threads: int,
) -> dict[str, Any]:
    """Export the fine-tuned model's artifacts and evaluate each runtime's.

    ``export(folder, runtimes)`` writes each runtime's artifact at ``KINDS[kind]``'s path under
    ``folder``, or returns why it cannot (the step is then skipped);
    ``load(artifact, threads)``: the artifact, loaded as it is served, as a model ``evaluate``
    takes (``evaluate.Classifier`` over ``inference.graph_classifier``, or a
    ``generation.CausalLM`` with the int8 weights);
    ``evaluate(model, runtime)`` runs every scenario the eager model ran, on the same examples,
    and returns (results by scenario, per-example scores by scenario, efficiency);
    ``single(model)`` times single-text requests as the eager figures were timed (one thread;
    classifiers; None for a kind without them).
    """
    reason = unavailable(kind)
    folder = output / FOLDER
    tick = time.perf_counter()
    reason = reason or export(folder, runtimes)
    if reason:
        print(f"optimize: skipped, {reason}; the eager model is what is served", flush=True)
        return {"skipped": reason}
    exported = round(time.perf_counter() - tick, 2)
    print(f"optimize: exported the {', '.join(runtimes)} artifact(s) in {exported} s", flush=True)
    document: dict[str, Any] = {"export_seconds": exported, "threads": threads, "runtimes": {}}
    per_example: dict[str, Any] = {}
    for runtime in runtimes:
        relative = KINDS[kind].artifacts[runtime]
        artifact = folder / relative
        results, scores, efficiency = evaluate(load(artifact, threads), runtime)
        if single is not None:
            efficiency.update(single(load(artifact, 1)))
        efficiency["model_size_mb"] = round(artifact.stat().st_size / 2**20, 2)
        efficiency["device"] = "cpu"
        document["runtimes"][runtime] = {
            "graph": relative,
            "engine": KINDS[kind].engine,
            "sha256": sha256(artifact),
            "bytes": artifact.stat().st_size,
            "scenarios": results,
            "efficiency": efficiency,
        }
        per_example[runtime] = scores
        print(
            f"optimize: {runtime}: {json.dumps({k: v['accuracy'] for k, v in results.items()})} "
            f"request p50 {efficiency.get('request_ms_p50')} ms, "
            f"{efficiency.get('throughput_per_s')} examples/s",
            flush=True,
        )
    (folder / PER_EXAMPLE).write_text(json.dumps(per_example))
    return document


def renamed(scenario: Any, runtime: str) -> Any:
    """The scenario under ``<name>@<runtime>``: its progress lines are told apart from the eager
    pass's."""
    return dataclasses.replace(scenario, name=f"{scenario.name}@{runtime}")
