"""Benchmark: the local endpoint serving the optimized graphs against eager PyTorch, over HTTP.

    .venv/bin/python benchmarks/endpoint_optimized.py            # ~6 min
    .venv/bin/python benchmarks/endpoint_optimized.py --quick    # ~3 min
    .venv/bin/python benchmarks/endpoint_optimized.py --json out.json

Times are for the 2-core development machine when it is quiet (check the load average printed at
the top before comparing runs).

Three real local endpoints under a temporary ``FMOPS_HOME``, each a router and a variant
(``fmops.deployment``) serving the packaged all-MiniLM-L6-v2 as an untuned fmops classifier over
the 77 BANKING77 labels (``benchmarks/endpoint.py``'s model) through include/scripts/inference.py:

- ``eager``: the model folder as trained models are served without the optimize step;
- ``fp32``: the same folder with the ONNX graph ``inference.export_onnx`` writes and the
  ``serving.json`` that names it, as registration packs a kept graph;
- ``int8``: likewise with the int8 dynamic quantization of that graph.

Throughput and latency: for each client count (``--clients``, default 1 and 16), ``--repeats``
rounds of one block of ``--seconds`` per endpoint, alone, the order rotating every round, each
after a 1 s warm-up; requests carry one BANKING77 test text each, from client threads on kept-
alive connections through the router (``benchmarks/endpoint.py``'s load). Reported per endpoint:
requests per second, p50/p99 latency, errors, and the ratio to eager's requests per second.
Goal (issue 22): >= 2x eager's requests per second at 1 and 16 clients, with no errors.

Accuracy: the first ``--accuracy-examples`` (1,000) shuffled BANKING77 test texts sent through
each endpoint in requests of 32, scored against their labels; each graph's difference from
eager with the paired-bootstrap 95% interval (``fmops.evaluation.gate.paired_bootstrap``, the
test select runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script
from endpoint import BASE_MODEL, DATA, HANDLERS, SEED, build_model, each_alone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("eager", "fp32", "int8")
GRAPHS = {"fp32": "onnx/model.onnx", "int8": "onnx/model.int8.onnx"}
GOAL = 2.0
EXPORT = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import inference
inference.export_onnx(inference.load_classifier(sys.argv[2]), Path(sys.argv[3]))
"""


def optimized_folders(work: Path, model_dir: Path) -> dict[str, Path]:
    """The eager folder, and one per graph: the eager folder's files (linked), the graph, and
    ``serving.json`` naming it, as a registered version with a kept graph holds them."""
    onnx = work / "onnx"
    subprocess.run(
        [sys.executable, "-c", EXPORT, str(HANDLERS.parent), str(model_dir), str(onnx)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    folders = {"eager": model_dir}
    for runtime, graph in GRAPHS.items():
        folder = work / f"model-{runtime}"
        folder.mkdir()
        for item in model_dir.iterdir():
            (folder / item.name).symlink_to(item.resolve())
        (folder / "onnx").mkdir()
        # a copy: inference.load_onnx refuses a graph that resolves outside the folder
        shutil.copyfile(onnx / Path(graph).name, folder / graph)
        (folder / "serving.json").write_text(json.dumps({"runtime": "onnxruntime", "graph": graph}))
        folders[runtime] = folder
    return folders


def runtime_of(endpoint: Any) -> str:
    """What the endpoint's variant says it serves (its /ping)."""
    import urllib.request

    (variant,) = endpoint.status()["variants"].values()
    with urllib.request.urlopen(f"http://127.0.0.1:{variant['port']}/ping", timeout=10) as answer:
        return json.loads(answer.read())["runtime"]


def labelled(count: int) -> tuple[list[str], list[str]]:
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(row["text"], row["category"]) for row in csv.DictReader(handle)]
    random.Random(SEED).shuffle(rows)
    rows = rows[:count]
    return [text for text, _ in rows], [label for _, label in rows]


def answers(endpoint: Any, texts: list[str]) -> list[str]:
    predicted: list[str] = []
    for start in range(0, len(texts), 32):
        status, body = endpoint.invoke({"inputs": texts[start : start + 32]})
        if status != 200:
            raise RuntimeError(f"{endpoint.name}: HTTP {status}: {body}")
        predicted += [p["label"] for p in body["predictions"]]
    return predicted


def throughput(ports: dict[str, int], args, corpus: list[str]) -> list[dict[str, Any]]:
    rows = []
    for clients in args.clients:
        alone = each_alone(ports, clients, args, corpus)
        rows.append(
            {
                "clients": clients,
                "runtimes": alone,
                "vs_eager": {
                    name: round(alone[name]["rps"] / alone["eager"]["rps"], 2) for name in ports
                },
            }
        )
    return rows


def accuracy(endpoints: dict[str, Any], count: int) -> dict[str, Any]:
    from fmops.evaluation.gate import paired_bootstrap

    texts, labels = labelled(count)
    predicted = {name: answers(endpoint, texts) for name, endpoint in endpoints.items()}
    scores = {
        name: [float(p == t) for p, t in zip(given, labels, strict=True)]
        for name, given in predicted.items()
    }
    result: dict[str, Any] = {"examples": len(texts)}
    for name, marks in scores.items():
        entry: dict[str, Any] = {"accuracy": round(sum(marks) / len(marks), 4)}
        if name != "eager":
            test = paired_bootstrap(marks, scores["eager"])
            entry.update(
                difference=round(test.mean_difference, 4),
                lower=round(test.lower, 4),
                upper=round(test.upper, 4),
                changed=round(
                    sum(a != b for a, b in zip(predicted[name], predicted["eager"], strict=True))
                    / len(marks),
                    4,
                ),
            )
        result[name] = entry
    return result


def report(results: dict[str, Any]) -> None:
    print("\nthe endpoint by runtime, each alone, through the router")
    print(
        f"{'clients':>7} {'runtime':<7} | {'requests':>8} {'req/s':>7} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'errors':>6} | {'vs eager':>8}"
    )
    print("-" * 70)
    met = True
    for row in results["throughput"]:
        for name, s in row["runtimes"].items():
            print(
                f"{row['clients']:>7} {name:<7} | {s['requests']:>8,} {s['rps']:>7.1f} "
                f"{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['errors']:>6} | "
                f"{row['vs_eager'][name]:>7.2f}x"
            )
            if name != "eager":
                met &= row["vs_eager"][name] >= GOAL and not s["errors"]
    a = results["accuracy"]
    print(f"\naccuracy on {a['examples']:,} BANKING77 test texts through each endpoint")
    for name in RUNTIMES:
        entry = a[name]
        extra = (
            f"  {entry['difference'] * 100:+.2f} points vs eager, 95% CI "
            f"[{entry['lower'] * 100:+.2f}, {entry['upper'] * 100:+.2f}], "
            f"{entry['changed']:.1%} of answers changed"
            if name != "eager"
            else ""
        )
        print(f"  {name:<5} {entry['accuracy']:.4f}{extra}")
    print(
        f"goal: >= {GOAL:g}x eager's requests per second at every client count, no errors, for "
        f"both graphs: {'met' if met else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter blocks, fewer rounds")
    parser.add_argument("--seconds", type=float, help="seconds per block (8; quick 4)")
    parser.add_argument("--repeats", type=int, help="rounds per client count (4; quick 2)")
    parser.add_argument("--clients", default="1,16", help="client counts (1,16)")
    parser.add_argument("--accuracy-examples", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    args.seconds = args.seconds or (4.0 if args.quick else 8.0)
    args.repeats = args.repeats or (2 if args.quick else 4)
    args.clients = [int(c) for c in args.clients.split(",")]

    logging.getLogger("fmops").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the endpoints stop
    print("fmops optimized endpoint benchmark (benchmarks/endpoint_optimized.py)")
    for line in _common.machine(("torch", "transformers", "onnxruntime", BASE_MODEL)):
        print(line)
    print(
        f"settings: clients {args.clients} x {args.repeats} rounds of {args.seconds:g} s per "
        f"runtime after a 1 s warm-up; accuracy on {args.accuracy_examples} texts"
    )
    began = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fmops-bench-optimized-") as tmp:
        work = Path(tmp)
        os.environ["FMOPS_HOME"] = str(work / "fmops-home")  # never touches .fmops/
        from fmops.deployment.local import LocalEndpoint, free_port
        from fmops.deployment.rollout import rollout
        from fmops.deployment.settings import AlarmSettings, TrafficSettings

        folders = optimized_folders(work, build_model(work))
        endpoints = {name: LocalEndpoint(f"bench-{name}") for name in RUNTIMES}
        corpus = labelled(500)[0]
        try:
            for name, endpoint in endpoints.items():
                rollout(
                    endpoint,
                    "1",
                    folders[name],
                    HANDLERS,
                    port=free_port(),
                    traffic=TrafficSettings(),
                    alarms=AlarmSettings(),
                )
            served = {name: runtime_of(endpoint) for name, endpoint in endpoints.items()}
            expected = {name: "pytorch" if name == "eager" else "onnxruntime" for name in RUNTIMES}
            if served != expected:
                raise RuntimeError(f"the variants serve {served}, expected {expected}")
            print(f"endpoints up in {time.perf_counter() - began:.1f} s, serving {served}")
            ports = {name: endpoint.port for name, endpoint in endpoints.items()}
            results["throughput"] = throughput(ports, args, corpus)
            results["accuracy"] = accuracy(endpoints, args.accuracy_examples)
        finally:
            for endpoint in endpoints.values():
                endpoint.delete()
    report(results)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
