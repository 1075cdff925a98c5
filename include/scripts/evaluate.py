"""Evaluate a model on benchmark scenarios, after HELM: accuracy, calibration, robustness,
fairness and efficiency, in one processing job.

Runs as the entry point of a SageMaker processing job and under the fmops local executor:

    python3 evaluate.py --model /opt/ml/processing/input/model --data /opt/ml/processing/input/data
                        --output /opt/ml/processing/output [--zero-shot] [options]

``--model`` holds a ``model.tar.gz`` from a training job (unpacked here) or a model folder: an
fmops text classifier (``label_map.json``), or with ``--zero-shot`` an untuned sentence encoder
(each text gets the label whose name has the nearest embedding), or a causal LM that
``train.py task=instruction`` tuned (``prompt_format.json``).

``--data`` holds ``scenarios.json``, a list of scenarios, each ``{"name", "task":
"classification"|"generation", "folder" (relative to --data), "input_column",
"target_column", "messages_column", "sample_size", "seed", "families"}``; without it the folder
itself is one classification scenario (``*.csv`` and optionally ``labels.json``). A scenario
whose task the model cannot do (a classifier on a generation scenario) is recorded as skipped.

Per scenario (the same examples for every model: the sample is seeded):

- accuracy: accuracy and macro-F1 (classification); exact match, token F1 and ROUGE-L of the
  greedy answer (generation);
- calibration (classification): expected calibration error over 10 equal-width bins of the top
  label's probability, with the bins for a reliability diagram, and the confusion matrix;
- robustness: the scenario's main score (accuracy; token F1 for generation) under each seeded
  perturbation of ``perturb.ROBUSTNESS``, with its drop from the clean score on the same examples;
- fairness: the main score per group of each ``perturb.FAIRNESS`` family (American/British
  spelling and vocabulary; first names by group), and the largest gap between groups.

Perturbations run on a seeded subset of at most ``--perturbation-sample-size`` examples; an input
that a perturbation leaves unchanged keeps its clean prediction (inference is deterministic), so
only changed inputs run through the model again.

Efficiency: latency percentiles of the clean pass's batch calls, throughput, model size and
parameters. Writes ``metrics.json`` and ``per_example.json`` (each example's scores, for the
paired bootstrap against the champion) and ``predictions-<scenario>.jsonl``. Imports torch,
transformers, numpy, rouge_score (generation only) and the sibling scripts.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import metrics  # noqa: E402 - beside this file
import perturb  # noqa: E402

FAMILIES = ("accuracy", "calibration", "robustness", "fairness")
GENERATION_METRICS = ("exact_match", "token_f1", "rouge_l")
# The score that robustness and fairness report, per task.
MAIN_SCORE = {"classification": "accuracy", "generation": "token_f1"}
CALIBRATION_BINS = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--zero-shot", action="store_true")
    parser.add_argument("--text-column", default="text", help="without scenarios.json")
    parser.add_argument("--label-column", default="label", help="without scenarios.json")
    parser.add_argument("--batch-size", type=positive, default=64)
    parser.add_argument("--sample-size", type=int, default=0, help="0: every example")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--perturbation-sample-size", type=positive, default=500)
    parser.add_argument("--max-new-tokens", type=positive, default=32)
    return parser.parse_args(argv)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# -- scenarios and examples ---------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    task: str
    folder: Path
    input_column: str = "text"
    target_column: str = "label"
    messages_column: str = "messages"
    sample_size: int = 0
    seed: int = 13
    families: tuple[str, ...] = FAMILIES


@dataclass
class Examples:
    inputs: list[Any]  # texts (classification) or chats without their answer (generation)
    targets: list[str]
    labels: list[str] = field(default_factory=list)


def scenarios_of(args: argparse.Namespace) -> list[Scenario]:
    data = Path(args.data)
    spec = data / "scenarios.json"
    if not spec.exists():
        return [
            Scenario(
                "evaluation",
                "classification",
                data,
                args.text_column,
                args.label_column,
                sample_size=args.sample_size,
                seed=args.seed,
            )
        ]
    scenarios = []
    for item in json.loads(spec.read_text()):
        unknown = set(item.get("families", FAMILIES)) - set(FAMILIES)
        if unknown or item.get("task") not in MAIN_SCORE:
            raise SystemExit(
                f"ERROR scenarios.json: scenario {item.get('name')!r} has task "
                f"{item.get('task')!r} (classification|generation) and families {sorted(unknown)}"
                f" outside {list(FAMILIES)}"
            )
        scenarios.append(
            Scenario(
                name=item["name"],
                task=item["task"],
                folder=data / item.get("folder", "."),
                input_column=item.get("input_column", "text"),
                target_column=item.get("target_column", "label"),
                messages_column=item.get("messages_column", "messages"),
                sample_size=int(item.get("sample_size") or 0),
                seed=int(item.get("seed", args.seed)),
                families=tuple(item.get("families", FAMILIES)),
            )
        )
    return scenarios


def read_rows(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    files = sorted([*folder.glob("*.csv"), *folder.glob("*.jsonl")])
    if not files:
        raise SystemExit(f"ERROR no *.csv or *.jsonl file in {folder}")
    for path in files:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows += list(csv.DictReader(handle))
        else:
            with path.open(encoding="utf-8") as handle:
                rows += [json.loads(line) for line in handle if line.strip()]
    return rows


def load_examples(scenario: Scenario) -> Examples:
    rows = read_rows(scenario.folder)
    every_target = {str(r.get(scenario.target_column)) for r in rows}  # before sampling
    if scenario.sample_size and scenario.sample_size < len(rows):
        order = random.Random(scenario.seed).sample(range(len(rows)), scenario.sample_size)
        rows = [rows[i] for i in order]
    if scenario.task == "classification":
        columns = {scenario.input_column, scenario.target_column}
        missing = sorted(c for c in columns if c not in rows[0])
        if missing:
            raise SystemExit(f"ERROR scenario {scenario.name} lacks column(s) {missing}")
        texts = [str(r[scenario.input_column]) for r in rows]
        truth = [str(r[scenario.target_column]) for r in rows]
        labels_file = scenario.folder / "labels.json"
        labels = (
            json.loads(labels_file.read_text()) if labels_file.exists() else sorted(every_target)
        )
        return Examples(texts, truth, labels)
    import instruction

    chats = [
        instruction.as_chat(
            row,
            f"scenario {scenario.name} record {i}",
            scenario.messages_column,
            scenario.input_column,
            scenario.target_column,
        )
        for i, row in enumerate(rows, 1)
    ]
    return Examples([c[:-1] for c in chats], [c[-1]["content"] for c in chats])


# -- models -------------------------------------------------------------------------------------


def model_folder(model_path: Path, scratch: Path) -> Path:
    archives = list(model_path.glob("*.tar.gz")) if model_path.is_dir() else [model_path]
    if not archives or not str(archives[0]).endswith(".tar.gz"):
        return model_path
    target = scratch / "model"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archives[0]) as tar:
        tar.extractall(target, filter="data")  # refuses absolute paths and links out of target
    return target


def model_kind(model_dir: Path, zero_shot: bool) -> str:
    if zero_shot or (model_dir / "label_map.json").exists():
        return "classification"
    if (model_dir / "prompt_format.json").exists():
        return "generation"
    raise SystemExit(
        f"ERROR {model_dir} is neither an fmops classifier (label_map.json) nor a causal LM "
        "tuned by train.py (prompt_format.json); pass --zero-shot for an untuned encoder"
    )


class Classifier:
    """Batched predictions of the fmops classifier: (label, probability of that label)."""

    def __init__(self, model_dir: Path, zero_shot_labels: list[str] | None) -> None:
        import inference

        self.model = inference.load_classifier(model_dir, zero_shot_labels)
        self._predict = inference.predict_fn

    def __call__(self, texts: list[str]) -> list[tuple[str, float]]:
        return [(p["label"], p["score"]) for p in self._predict(texts, self.model)]

    def key(self, text: str) -> tuple[int, ...]:
        """What the model sees of a text: two texts with the same key get the same prediction
        (an uncased tokenizer does not see a casing change)."""
        import inference

        encoded = self.model["tokenizer"](text, truncation=True, max_length=inference.MAX_LENGTH)
        return tuple(encoded["input_ids"])

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model["model"].parameters())


class Generator:
    """Greedy answers of a causal LM, prompted as train.py rendered its training chats."""

    def __init__(self, model_dir: Path, max_new_tokens: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.format = json.loads((model_dir / "prompt_format.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        # A prompt longer than max_length loses its start, never the end it is answered after.
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.sep_token
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
        self.model.to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.max_length = int(self.format.get("max_length") or 512)
        torch.set_grad_enabled(False)

    def prompt(self, chat: list[dict[str, str]]) -> str:
        import instruction

        placeholder = [*chat, {"role": "assistant", "content": "\x00"}]
        pieces = instruction.segments(placeholder, self.tokenizer, self.format["template"])
        text = "".join(piece for piece, _ in pieces)
        return text[: text.rindex("\x00")]

    def __call__(self, chats: list[list[dict[str, str]]]) -> list[tuple[str, float]]:
        prompts = [self.prompt(chat) for chat in chats]
        encoded = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,
        ).to(self.device)
        output = self.model.generate(
            **encoded,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        answers = self.tokenizer.batch_decode(
            output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
        )
        return [(answer.strip(), 1.0) for answer in answers]

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# -- one scenario -------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    total: float = 0.0


def run_batches(
    predict: Callable[[list[Any]], list[tuple[str, float]]],
    inputs: Sequence[Any],
    batch_size: int,
    timing: Timing | None = None,
    label: str = "",
) -> list[tuple[str, float]]:
    # Batches of similar length: each batch is padded to its longest input, so in file order
    # most of a batch's tokens would be padding (3.5x the work on BANKING77). The answers go
    # back to the inputs' order. Characters stand in for tokens: tokenizing every input one by
    # one just to sort costs more than the padding the better order would save.
    order = sorted(range(len(inputs)), key=lambda i: len(text_of(inputs[i])))
    ordered: list[tuple[str, float]] = []
    started = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        batch = [inputs[i] for i in order[start : start + batch_size]]
        tick = time.perf_counter()
        ordered += predict(batch)
        if timing is not None:
            timing.seconds.append(time.perf_counter() - tick)
            timing.sizes.append(len(batch))
        done = start + len(batch)
        if label and ((start // batch_size) % 10 == 0 or done == len(inputs)):
            print(f"progress {label}={done}/{len(inputs)}", flush=True)
    if timing is not None:
        timing.total += time.perf_counter() - started
    results: list[tuple[str, float]] = [("", 0.0)] * len(inputs)
    for position, answer in zip(order, ordered, strict=True):
        results[position] = answer
    return results


def text_of(item: Any) -> str:
    """The text a perturbation edits: the input text, or the chat's last user message."""
    if isinstance(item, str):
        return item
    return next(m["content"] for m in reversed(item) if m["role"] == "user")


def with_text(item: Any, text: str) -> Any:
    if isinstance(item, str):
        return text
    chat = [dict(m) for m in item]
    last = max(i for i, m in enumerate(chat) if m["role"] == "user")
    chat[last]["content"] = text
    return chat


class Scorer:
    """The per-example main score of one scenario's predictions."""

    def __init__(self, task: str, targets: list[str]) -> None:
        self.task = task
        self.targets = targets

    def scores(self, predicted: list[str], index: Sequence[int]) -> list[float]:
        targets = [self.targets[i] for i in index]
        if self.task == "classification":
            return [float(x) for x in metrics.correctness(targets, predicted)]
        return metrics.generation_scores(predicted, targets, ("token_f1",))["token_f1"]


def rerun_changed(
    predict: Callable[[list[Any]], list[tuple[str, float]]],
    inputs: list[Any],
    clean: list[str],
    index: list[int],
    edit: Callable[[str], str],
    batch_size: int,
) -> tuple[list[str], float]:
    """Predictions for the edited inputs at ``index``: an input the edit leaves unchanged, as
    the model sees it, keeps its clean answer (inference is deterministic)."""
    key = getattr(predict, "key", lambda text: text)
    edited = {i: edit(text_of(inputs[i])) for i in index}
    changed = [
        i
        for i in index
        if edited[i] != text_of(inputs[i]) and key(edited[i]) != key(text_of(inputs[i]))
    ]
    fresh = run_batches(predict, [with_text(inputs[i], edited[i]) for i in changed], batch_size)
    answers = dict(zip(changed, (label for label, _ in fresh), strict=True))
    return [answers.get(i, clean[i]) for i in index], len(changed) / max(1, len(index))


def evaluate_scenario(
    scenario: Scenario,
    examples: Examples,
    predict: Callable[[list[Any]], list[tuple[str, float]]],
    args: argparse.Namespace,
    timing: Timing,
) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, Any]]]:
    clean_pairs = run_batches(
        predict, examples.inputs, args.batch_size, timing, label=scenario.name
    )
    predicted = [label for label, _ in clean_pairs]
    confidence = [score for _, score in clean_pairs]
    result: dict[str, Any] = {"task": scenario.task, "examples": len(predicted)}
    per_example: dict[str, list[float]]
    if scenario.task == "classification":
        correct = metrics.correctness(examples.targets, predicted)
        per_example = {"accuracy": [float(c) for c in correct]}
        result["accuracy"] = {
            "accuracy": round(metrics.accuracy(examples.targets, predicted), 6),
            "macro_f1": round(metrics.macro_f1(examples.targets, predicted, examples.labels), 6),
        }
        if "calibration" in scenario.families:
            ece, bins = metrics.expected_calibration_error(confidence, correct, CALIBRATION_BINS)
            result["calibration"] = {"ece": round(ece, 6), "bins": bins}
            result["confusion"] = confusion(examples.labels, examples.targets, predicted)
    else:
        per_example = metrics.generation_scores(predicted, examples.targets, GENERATION_METRICS)
        result["accuracy"] = {k: round(v, 6) for k, v in metrics.mean_scores(per_example).items()}

    scorer = Scorer(scenario.task, examples.targets)
    order = random.Random(f"{scenario.seed}:perturbations").sample(
        range(len(predicted)), min(len(predicted), args.perturbation_sample_size)
    )
    index = sorted(order)
    clean_subset = mean(scorer.scores([predicted[i] for i in index], index))

    def score_under(edit: Callable[[str], str]) -> tuple[float, float]:
        answers, changed = rerun_changed(
            predict, examples.inputs, predicted, index, edit, args.batch_size
        )
        return mean(scorer.scores(answers, index)), changed

    if "robustness" in scenario.families:
        robustness: dict[str, Any] = {"clean": round(clean_subset, 6), "examples": len(index)}
        for kind in perturb.ROBUSTNESS:
            score, changed = score_under(lambda text, k=kind: perturb.perturb(text, k, args.seed))
            robustness[kind] = {
                "score": round(score, 6),
                "drop": round(clean_subset - score, 6),
                "changed": round(changed, 4),
            }
        robustness["worst_drop"] = max(robustness[k]["drop"] for k in perturb.ROBUSTNESS)
        result["robustness"] = robustness
    if "fairness" in scenario.families:
        fairness: dict[str, Any] = {"examples": len(index)}
        for family, groups in perturb.FAIRNESS.items():
            scores, changed = {}, {}
            for group in groups:
                scores[group], changed[group] = score_under(
                    lambda text, f=family, g=group: perturb.variant(text, f, g, args.seed)
                )
            fairness[family] = {
                "groups": {g: round(s, 6) for g, s in scores.items()},
                "changed": {g: round(c, 4) for g, c in changed.items()},
                "gap": round(max(scores.values()) - min(scores.values()), 6),
            }
        fairness["max_gap"] = max(fairness[f]["gap"] for f in perturb.FAIRNESS)
        result["fairness"] = fairness
    records = [
        {
            "input": text_of(item),
            "target": target,
            "predicted": answer,
            "confidence": round(conf, 6),
            **{name: values[i] for name, values in per_example.items()},
        }
        for i, (item, target, answer, conf) in enumerate(
            zip(examples.inputs, examples.targets, predicted, confidence, strict=True)
        )
    ]
    return result, per_example, records


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def confusion(labels: list[str], truth: list[str], predicted: list[str]) -> dict[str, Any]:
    names = list(labels) + sorted((set(truth) | set(predicted)) - set(labels))
    position = {name: i for i, name in enumerate(names)}
    matrix = [[0] * len(names) for _ in names]
    for t, p in zip(truth, predicted, strict=True):
        matrix[position[t]][position[p]] += 1
    return {"labels": names, "matrix": matrix}


def folder_bytes(path: Path) -> int:
    """The model's size on disk, without its LoRA adapters (the merged weights hold them)."""
    return sum(
        f.stat().st_size
        for f in path.rglob("*")
        if f.is_file() and "adapter" not in f.relative_to(path).parts
    )


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    scenarios = scenarios_of(args)
    model_dir = model_folder(Path(args.model), output.parent / "scratch")
    kind = model_kind(model_dir, args.zero_shot)
    torch.manual_seed(args.seed)
    results: dict[str, Any] = {}
    per_example: dict[str, dict[str, list[float]]] = {}
    timing = Timing()
    model: Classifier | Generator | None = None
    for scenario in scenarios:
        if scenario.task != kind:
            why = f"a {kind} model cannot be evaluated on a {scenario.task} scenario"
            print(f"scenario {scenario.name}: skipped, {why}", flush=True)
            results[scenario.name] = {"task": scenario.task, "skipped": why}
            continue
        examples = load_examples(scenario)
        if model is None:
            zero_shot = examples.labels if args.zero_shot else None
            model = (
                Classifier(model_dir, zero_shot)
                if kind == "classification"
                else Generator(model_dir, args.max_new_tokens)
            )
        result, scores, records = evaluate_scenario(scenario, examples, model, args, timing)
        results[scenario.name] = result
        per_example[scenario.name] = scores
        with (output / f"predictions-{scenario.name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        print(f"scenario {scenario.name}: {json.dumps(result['accuracy'])}", flush=True)
    if model is None:
        raise SystemExit(f"ERROR no scenario suits a {kind} model: nothing was evaluated")
    latency = metrics.summarize_latencies(timing.seconds, timing.sizes, timing.total)
    document = {
        "mode": "zero-shot" if args.zero_shot else "fine-tuned",
        "model_kind": kind,
        "scenarios": results,
        "efficiency": {
            "batch_size": args.batch_size,
            "latency_p50_ms": round(latency["batch_latency_ms_p50"], 2),
            "latency_p95_ms": round(latency["batch_latency_ms_p95"], 2),
            "example_latency_p50_ms": round(latency["example_latency_ms_p50"], 3),
            "throughput_per_s": round(latency["throughput_per_sec"], 2),
            "model_size_mb": round(folder_bytes(model_dir) / 2**20, 2),
            "parameters": model.parameters(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        },
        "seed": args.seed,
    }
    (output / "metrics.json").write_text(json.dumps(document, indent=1))
    (output / "per_example.json").write_text(json.dumps(per_example))
    print(f"efficiency {json.dumps(document['efficiency'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
