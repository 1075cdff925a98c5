"""Evaluate a text classifier on a labelled dataset inside a processing job.

Runs as the entry point of a SageMaker processing job and under the fmops local executor:

    python3 evaluate.py --model /opt/ml/processing/input/model --data /opt/ml/processing/input/data
                        --output /opt/ml/processing/output [--zero-shot] [options]

``--model`` holds a ``model.tar.gz`` from a training job (unpacked here) or a model folder.
With ``--zero-shot`` the model is an untuned sentence encoder and each text gets the label whose
name (underscores read as spaces) has the nearest mean-pooled embedding: a fair baseline that
needs no training, and the fine-tuned classifier's starting point. ``--data`` holds
``*.csv`` and optionally ``labels.json``.

Writes ``metrics.json`` (accuracy, macro-F1, examples, latency and throughput of batched
inference, model size) and ``predictions.csv``. Only torch, transformers, numpy and the standard
library are imported; ``inference.py`` beside this file provides the fine-tuned model's handlers.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--zero-shot", action="store_true")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample-size", type=int, default=0, help="0: every example")
    parser.add_argument("--seed", type=int, default=13)
    return parser.parse_args(argv)


def load_examples(
    data_dir: Path, text_column: str, label_column: str
) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for path in sorted(data_dir.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {text_column, label_column} - set(reader.fieldnames or [])
            if missing:
                raise SystemExit(f"ERROR {path.name} lacks column(s) {sorted(missing)}")
            for row in reader:
                texts.append(row[text_column])
                labels.append(row[label_column])
    if not texts:
        raise SystemExit(f"ERROR no examples in {data_dir}")
    return texts, labels


def model_folder(model_path: Path, scratch: Path) -> Path:
    archives = list(model_path.glob("*.tar.gz")) if model_path.is_dir() else [model_path]
    if not archives or not str(archives[0]).endswith(".tar.gz"):
        return model_path
    target = scratch / "model"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(target, filter="data")  # refuses absolute paths and links out of target
    return target


def macro_f1(truth: list[str], predicted: list[str], labels: list[str]) -> float:
    scores = []
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p != label)
        if tp + fp + fn == 0:
            continue  # a label absent from both truth and predictions has no F1
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else 0.0


def predictor(model_dir: Path, zero_shot_labels: list[str] | None):
    import inference

    model = inference.load_classifier(model_dir, zero_shot_labels)

    def predict(texts: list[str]) -> list[tuple[str, float]]:
        return [(p["label"], p["score"]) for p in inference.predict_fn(texts, model)]

    return predict, model["labels"]


def folder_bytes(path: Path) -> int:
    return sum(
        f.stat().st_size for f in path.rglob("*") if f.is_file() and "adapter" not in f.parts
    )


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data)
    texts, truth = load_examples(data_dir, args.text_column, args.label_column)
    if args.sample_size and args.sample_size < len(texts):
        order = random.Random(args.seed).sample(range(len(texts)), args.sample_size)
        texts, truth = [texts[i] for i in order], [truth[i] for i in order]
    labels_file = data_dir / "labels.json"
    declared = json.loads(labels_file.read_text()) if labels_file.exists() else sorted(set(truth))

    model_dir = model_folder(Path(args.model), output.parent / "scratch")
    predict, labels = predictor(model_dir, declared if args.zero_shot else None)
    torch.manual_seed(args.seed)

    predicted, scores, latencies = [], [], []
    started = time.perf_counter()
    for start in range(0, len(texts), args.batch_size):
        batch = texts[start : start + args.batch_size]
        tick = time.perf_counter()
        results = predict(batch)
        latencies.append((time.perf_counter() - tick) * 1000)
        predicted += [label for label, _ in results]
        scores += [score for _, score in results]
        done = start + len(batch)
        if (start // args.batch_size) % 10 == 0 or done == len(texts):
            print(f"progress={done}/{len(texts)}", flush=True)
    elapsed = time.perf_counter() - started

    latencies.sort()
    accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth)
    metrics = {
        "accuracy": round(accuracy, 6),
        "macro_f1": round(macro_f1(truth, predicted, labels), 6),
        "examples": len(truth),
        "mode": "zero-shot" if args.zero_shot else "fine-tuned",
        "batch_size": args.batch_size,
        "batch_latency_ms_p50": round(latencies[len(latencies) // 2], 2),
        "batch_latency_ms_p95": round(
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))], 2
        ),
        "throughput_per_sec": round(len(texts) / elapsed, 2),
        "model_bytes": folder_bytes(model_dir),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with (output / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "predicted", "score"])
        writer.writerows(zip(texts, truth, predicted, scores, strict=True))
    print(" ".join(f"{k}={v}" for k, v in metrics.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
