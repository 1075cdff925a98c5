"""Evaluate a model on benchmark scenarios, after HELM: accuracy, calibration, robustness,
fairness and efficiency, in one processing job.

Runs as the entry point of a SageMaker processing job and under the fmops local executor:

    python3 evaluate.py --model /opt/ml/processing/input/model --data /opt/ml/processing/input/data
                        --output /opt/ml/processing/output [--zero-shot] [options]

``--model`` holds a ``model.tar.gz`` from a training job (unpacked here) or a model folder: an
fmops text classifier (``label_map.json``), or with ``--zero-shot`` an untuned sentence encoder
(each text gets the label whose name has the nearest embedding), or a causal LM: one that
``train.py task=instruction`` tuned (``prompt_format.json`` says how it was prompted) or an
untuned base model (a ``*ForCausalLM`` config), prompted with ``--prompt-template auto|chat|plain``
as train.py would render its training chats. So the untuned base model, every candidate and the
champion answer the same examples in the same prompt format. ``metrics.json`` says which:
``mode`` is ``zero-shot`` (``--zero-shot``), ``base`` (an untuned causal LM) or ``fine-tuned``.

``--data`` holds ``scenarios.json``, a list of scenarios, each ``{"name", "task":
"classification"|"generation"|"multiple_choice"|"perplexity", "folder" (relative to --data),
"input_column", "target_column", "messages_column", "choices_column" (multiple_choice),
"sample_size", "seed", "families"}``; without it the folder itself is one classification scenario
(``*.csv`` and optionally ``labels.json``). A scenario whose task the model cannot do (a
classifier on the three generative tasks, a causal LM on classification) is recorded as skipped.

Per scenario (the same examples for every model: the sample is seeded) and task:

- classification: accuracy and macro-F1; calibration: the expected calibration error over 10
  equal-width bins of the top label's probability, with the bins for a reliability diagram, and
  the confusion matrix;
- generation (records are chats, or prompt/completion pairs, ending with the reference answer):
  exact match, token F1 and ROUGE-L of the greedy answer, generated in batches (``generation.py``);
  calibration: the ECE of the answer's sequence probability (the product of its tokens'
  probabilities) against exact match;
- multiple_choice (a question in the input column, or a chat in the messages column; its options
  in the choices column, a list or its JSON text; the correct option's text or 0-based index in
  the target column): the model picks the option with the highest log-likelihood per token after
  the prompted question (as HELM and MMLU score options); accuracy, and calibration of the
  softmax over the options' per-token log-likelihoods;
- perplexity (chats or prompt/completion pairs): the reference answers scored by teacher forcing,
  perplexity = exp(total NLL / answer tokens) and the mean over examples of each answer's NLL per
  token, which is also the per-example score (lower is better: the scenario lists such metrics
  in ``lower_is_better``). The accuracy family only: there is no answer to calibrate or perturb.

Every scenario records its ``main_score`` (``MAIN_SCORE``): robustness reports it under each
seeded perturbation of ``perturb.ROBUSTNESS``, with its drop from the clean score on the same
examples; fairness reports it per group of each ``perturb.FAIRNESS`` family (American/British
spelling and vocabulary; first names by group) and the largest gap between groups. Perturbations
edit the text (the last user message of a chat, the question of a multiple-choice record) on a
seeded subset of at most ``--perturbation-sample-size`` examples; an input that a perturbation
leaves unchanged keeps its clean prediction (inference is deterministic), so only changed inputs
run through the model again.

Efficiency: latency percentiles of the clean pass's batch calls, throughput, model size and
parameters; with generation scenarios also the median time to the first token of a batch,
generated tokens per second and the tokens generated. A classifier on the CPU also gets the p50
and p95 of 32 single-text requests on one thread (``request_ms_p50``/``p95``): what an endpoint
request costs one core, for the hosting choice (``fmops.sizing``). Writes ``metrics.json`` and
``per_example.json`` (each example's scores, for the paired bootstrap against the champion) and
``predictions-<scenario>.jsonl``. Imports torch, transformers, numpy, rouge_score (generation
only) and the sibling scripts.

``--optimize <runtimes>`` (a fine-tuned model) then runs the optimize step (``optimize.py``): a
classifier's ONNX Runtime graphs (``int8``, ``fp32``) or a causal LM's int8 weights (``int8``),
each evaluated again on every scenario's same examples, under ``optimized`` in ``metrics.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
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
# The score that robustness and fairness report (and the paired bootstrap compares), per task.
MAIN_SCORE = {
    "classification": "accuracy",
    "generation": "token_f1",
    "multiple_choice": "accuracy",
    "perplexity": "nll_per_token",
}
# What each kind of model can be evaluated on.
MODEL_TASKS = {
    "classification": ("classification",),
    "generation": ("generation", "multiple_choice", "perplexity"),
}
# The families a task can measure: perplexity scores reference answers, there is no answer of
# the model's own to calibrate or to perturb.
TASK_FAMILIES = {task: FAMILIES for task in MAIN_SCORE} | {"perplexity": ("accuracy",)}
LOWER_IS_BETTER = {"perplexity": ["perplexity", "nll_per_token"]}
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
    parser.add_argument(
        "--optimize",
        default="",
        help="runtimes to export the fine-tuned model to and evaluate (optimize.py): a "
        "classifier's int8,fp32 ONNX Runtime graphs, a causal LM's int8; empty: none",
    )
    parser.add_argument(
        "--prompt-template",
        choices=("auto", "chat", "plain"),
        default="auto",
        help="how an untuned causal LM is prompted (a tuned one keeps its prompt_format.json)",
    )
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
    choices_column: str = "choices"


@dataclass
class Examples:
    # Texts (classification); chats without their answer (generation); chats with their answer
    # (perplexity); {"chat", "choices"} (multiple_choice).
    inputs: list[Any]
    targets: list[str]  # the label, the reference answer, or the correct option's text
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
                f"{item.get('task')!r} ({'|'.join(MAIN_SCORE)}) and families {sorted(unknown)}"
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
                choices_column=item.get("choices_column", "choices"),
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
    if scenario.task == "multiple_choice":
        questions = [question_of(scenario, row, i) for i, row in enumerate(rows, 1)]
        return Examples([q for q, _ in questions], [t for _, t in questions])
    import instruction

    try:
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
    except instruction.RecordError as err:
        raise SystemExit(f"ERROR {err}") from None
    if scenario.task == "perplexity":
        return Examples(chats, [c[-1]["content"] for c in chats])
    return Examples([c[:-1] for c in chats], [c[-1]["content"] for c in chats])


def question_of(scenario: Scenario, row: dict[str, Any], number: int) -> tuple[dict, str]:
    """A multiple-choice record as ``({"chat", "choices"}, the correct option's text)``.

    The question is the input column's text as a user turn, or the messages column's chat (an
    answer at its end is dropped, and is the target when the record has no target column). The
    target is the correct option's text, or its 0-based index (a JSON integer, or digits that
    are not themselves one of the options)."""
    where = f"scenario {scenario.name} record {number}"
    choices = row.get(scenario.choices_column)
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            choices = None
    if not isinstance(choices, list) or len(choices) < 2:
        raise SystemExit(
            f"ERROR {where}: {scenario.choices_column!r} must be a list of at least two options "
            f"(or its JSON text), got {row.get(scenario.choices_column)!r:.80}; set "
            "choices_column to the column that holds the options"
        )
    choices = [str(c) for c in choices]
    messages = row.get(scenario.messages_column)
    if isinstance(messages, str) and messages.strip():
        messages = json.loads(messages)
    target = row.get(scenario.target_column)
    if isinstance(messages, list) and messages:
        chat = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if chat[-1]["role"] == "assistant":
            answer = chat.pop()["content"]
            target = answer if target is None else target
    elif isinstance(row.get(scenario.input_column), str):
        chat = [{"role": "user", "content": row[scenario.input_column]}]
    else:
        raise SystemExit(
            f"ERROR {where} has neither a {scenario.input_column!r} question nor a "
            f"{scenario.messages_column!r} chat; set input_column to the question's column"
        )
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
        return {"chat": chat, "choices": choices}, choices[target]
    text = "" if target is None else str(target)
    if text in choices:
        return {"chat": chat, "choices": choices}, text
    if text.strip().isdigit() and int(text) < len(choices):
        return {"chat": chat, "choices": choices}, choices[int(text)]
    raise SystemExit(
        f"ERROR {where}: the target {target!r:.60} ({scenario.target_column!r}) is neither one "
        f"of the options {choices!r:.200} nor an index below {len(choices)}"
    )


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
    import generation

    if generation.is_causal_lm(model_dir):
        return "generation"
    raise SystemExit(
        f"ERROR {model_dir} is neither an fmops classifier (label_map.json) nor a causal LM "
        "(a *ForCausalLM config.json, or prompt_format.json from train.py); pass --zero-shot "
        "for an untuned encoder"
    )


def evaluation_mode(model_dir: Path, kind: str, zero_shot: bool) -> str:
    if zero_shot:
        return "zero-shot"
    if kind == "generation" and not (model_dir / "prompt_format.json").exists():
        return "base"
    return "fine-tuned"


class Classifier:
    """Batched predictions of the fmops classifier: (label, probability of that label).
    ``loaded``: a classifier inference.py loaded already (an ONNX graph's, optimize.py)."""

    def __init__(
        self, model_dir: Path, zero_shot_labels: list[str] | None, loaded: Any = None
    ) -> None:
        import inference

        self.model = (
            loaded if loaded is not None else inference.load_classifier(model_dir, zero_shot_labels)
        )
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
    """Greedy answers of a causal LM to chats, a batch per ``generate`` call: (answer, sequence
    probability of the answer). With the plain template, an answer also ends at the next turn's
    header (an untuned model goes on writing the dialogue)."""

    def __init__(self, lm: Any, max_new_tokens: int) -> None:
        import instruction

        self.lm = lm
        self.max_new_tokens = max_new_tokens
        headers = instruction.PLAIN_HEADERS.values()
        self.stop = tuple(h.strip() for h in headers) if lm.template == "plain" else ()

    def __call__(self, chats: list[list[dict[str, str]]]) -> list[tuple[str, float]]:
        prompts = [self.lm.prompt(chat) for chat in chats]
        answers = self.lm.generate(prompts, self.max_new_tokens, stop=self.stop)
        return [(a.text, min(1.0, math.exp(a.logprob))) for a in answers]

    @property
    def last_timing(self) -> dict[str, float | int]:
        return self.lm.last_timing


class MultipleChoice:
    """The option with the highest log-likelihood per token after the prompted question, and its
    probability under the softmax over the options' per-token log-likelihoods."""

    def __init__(self, lm: Any, batch_size: int) -> None:
        self.lm = lm
        self.batch_size = batch_size  # continuations scored per forward pass

    def __call__(self, questions: list[dict[str, Any]]) -> list[tuple[str, float]]:
        pairs = [(self.lm.prompt(q["chat"]), option) for q in questions for option in q["choices"]]
        scored: list[tuple[float, int]] = []
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            scored += self.lm.continuation_logprobs([p for p, _ in chunk], [c for _, c in chunk])
        answers, position = [], 0
        for question in questions:
            options = scored[position : position + len(question["choices"])]
            position += len(options)
            normalised = [total / max(count, 1) for total, count in options]
            best = max(range(len(options)), key=normalised.__getitem__)
            top = max(normalised)
            weights = [math.exp(value - top) for value in normalised]
            answers.append((question["choices"][best], weights[best] / sum(weights)))
        return answers


class Perplexity:
    """Each chat's reference answer scored after its prompt: (answer tokens, summed log-prob)."""

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    def __call__(self, chats: list[list[dict[str, str]]]) -> list[tuple[int, float]]:
        prompts = [self.lm.prompt(chat[:-1]) for chat in chats]
        scored = self.lm.continuation_logprobs(prompts, [chat[-1]["content"] for chat in chats])
        return [(count, total) for total, count in scored]


# -- one scenario -------------------------------------------------------------------------------


@dataclass
class Timing:
    seconds: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    total: float = 0.0
    # Generation batches only: seconds to the first token, seconds in generate, tokens.
    first_token: list[float] = field(default_factory=list)
    generation_seconds: float = 0.0
    generated_tokens: int = 0


def run_batches(
    predict: Callable[[list[Any]], list[tuple[Any, float]]],
    inputs: Sequence[Any],
    batch_size: int,
    timing: Timing | None = None,
    label: str = "",
) -> list[tuple[Any, float]]:
    # Batches of similar length: each batch is padded to its longest input, so in file order
    # most of a batch's tokens would be padding (3.5x the work on BANKING77). The answers go
    # back to the inputs' order. Characters stand in for tokens: tokenizing every input one by
    # one just to sort costs more than the padding the better order would save.
    order = sorted(range(len(inputs)), key=lambda i: len(text_of(inputs[i])))
    ordered: list[tuple[Any, float]] = []
    started = time.perf_counter()
    for start in range(0, len(inputs), batch_size):
        batch = [inputs[i] for i in order[start : start + batch_size]]
        tick = time.perf_counter()
        ordered += predict(batch)
        if timing is not None:
            timing.seconds.append(time.perf_counter() - tick)
            timing.sizes.append(len(batch))
            generated = getattr(predict, "last_timing", None)
            if generated:
                timing.first_token.append(generated["first_token_seconds"])
                timing.generation_seconds += generated["seconds"]
                timing.generated_tokens += generated["generated_tokens"]
        done = start + len(batch)
        if label and ((start // batch_size) % 10 == 0 or done == len(inputs)):
            print(f"progress {label}={done}/{len(inputs)}", flush=True)
    if timing is not None:
        timing.total += time.perf_counter() - started
    results: list[tuple[Any, float]] = [("", 0.0)] * len(inputs)
    for position, answer in zip(order, ordered, strict=True):
        results[position] = answer
    return results


def text_of(item: Any) -> str:
    """The text a perturbation edits: the input text, the chat's last user message, or the
    multiple-choice question's."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return text_of(item["chat"])
    return next(m["content"] for m in reversed(item) if m["role"] == "user")


def with_text(item: Any, text: str) -> Any:
    if isinstance(item, str):
        return text
    if isinstance(item, dict):
        return {**item, "chat": with_text(item["chat"], text)}
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
        if self.task in ("classification", "multiple_choice"):
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
    predict: Callable[[list[Any]], list[tuple[Any, float]]],
    args: argparse.Namespace,
    timing: Timing,
) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, Any]]]:
    clean_pairs = run_batches(
        predict, examples.inputs, args.batch_size, timing, label=scenario.name
    )
    if scenario.task == "perplexity":
        return perplexity_result(scenario, examples, clean_pairs)
    predicted = [label for label, _ in clean_pairs]
    confidence = [score for _, score in clean_pairs]
    result: dict[str, Any] = {
        "task": scenario.task,
        "examples": len(predicted),
        "main_score": MAIN_SCORE[scenario.task],
    }
    per_example: dict[str, list[float]]
    if scenario.task == "generation":
        per_example = metrics.generation_scores(predicted, examples.targets, GENERATION_METRICS)
        result["accuracy"] = {k: round(v, 6) for k, v in metrics.mean_scores(per_example).items()}
        correct = [int(x) for x in per_example["exact_match"]]
    else:
        correct = metrics.correctness(examples.targets, predicted)
        per_example = {"accuracy": [float(c) for c in correct]}
        result["accuracy"] = {"accuracy": round(metrics.accuracy(examples.targets, predicted), 6)}
        if scenario.task == "classification":
            macro = metrics.macro_f1(examples.targets, predicted, examples.labels)
            result["accuracy"]["macro_f1"] = round(macro, 6)
    if "calibration" in scenario.families:
        ece, bins = metrics.expected_calibration_error(confidence, correct, CALIBRATION_BINS)
        result["calibration"] = {"ece": round(ece, 6), "bins": bins}
        if scenario.task == "classification":
            result["confusion"] = confusion(examples.labels, examples.targets, predicted)

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


def perplexity_result(
    scenario: Scenario, examples: Examples, scored: list[tuple[Any, float]]
) -> tuple[dict[str, Any], dict[str, list[float]], list[dict[str, Any]]]:
    """Perplexity of the reference answers: exp(total NLL / total answer tokens), and the mean
    over examples of each answer's NLL per token (the per-example score)."""
    empty = [i for i, (count, _) in enumerate(scored) if count == 0]
    if empty:
        raise SystemExit(
            f"ERROR scenario {scenario.name}: the reference answers of examples {empty[:5]} "
            "have no tokens; a perplexity scenario needs non-empty answers"
        )
    tokens = sum(count for count, _ in scored)
    total = -sum(logprob for _, logprob in scored)
    per_token = [-logprob / count for count, logprob in scored]
    result: dict[str, Any] = {
        "task": scenario.task,
        "examples": len(scored),
        "main_score": MAIN_SCORE[scenario.task],
        "answer_tokens": tokens,
        "lower_is_better": LOWER_IS_BETTER[scenario.task],
        "accuracy": {
            "perplexity": round(math.exp(min(total / tokens, 700.0)), 6),
            "nll_per_token": round(mean(per_token), 6),
        },
    }
    records = [
        {
            "input": text_of(chat),
            "target": target,
            "answer_tokens": count,
            "nll_per_token": value,
        }
        for chat, target, (count, _), value in zip(
            examples.inputs, examples.targets, scored, per_token, strict=True
        )
    ]
    return result, {"nll_per_token": per_token}, records


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


# -- the job ------------------------------------------------------------------------------------


class Models:
    """The model, loaded once on first use, and its predictor for each scenario task."""

    def __init__(self, model_dir: Path, kind: str, args: argparse.Namespace) -> None:
        self.model_dir, self.kind, self.args = model_dir, kind, args
        self.loaded: Any = None

    def predictor(self, task: str, examples: Examples) -> Callable[[list[Any]], list]:
        if self.kind == "classification":
            if self.loaded is None:
                zero_shot = examples.labels if self.args.zero_shot else None
                self.loaded = Classifier(self.model_dir, zero_shot)
            return self.loaded
        if self.loaded is None:
            self.loaded = self.causal_lm()
        return lm_predictor(self.loaded, task, self.args)

    def causal_lm(self, int8_weights: Path | None = None) -> Any:
        """The causal LM, eager; or with the optimize step's int8 weights loaded over it."""
        import generation
        import instruction

        try:
            lm = generation.CausalLM(self.model_dir, self.args.prompt_template, serving=False)
        except instruction.RecordError as err:  # e.g. --prompt-template chat, no template
            raise SystemExit(f"ERROR {self.model_dir}: {err}") from None
        if int8_weights is not None:
            lm.use_int8(int8_weights)
        return lm

    def parameters(self) -> int:
        return self.loaded.parameters()


def lm_predictor(lm: Any, task: str, args: argparse.Namespace) -> Callable[[list[Any]], list]:
    if task == "multiple_choice":
        return MultipleChoice(lm, args.batch_size)
    if task == "perplexity":
        return Perplexity(lm)
    return Generator(lm, args.max_new_tokens)


SINGLE_REQUESTS = 32  # timed single-text requests, after SINGLE_WARMUP untimed ones
SINGLE_WARMUP = 3


def single_requests(classifier: Callable[[list[str]], Any], texts: list[str]) -> dict[str, Any]:
    """What one single-text request costs on one CPU core: the shape of an endpoint's traffic
    (the inference toolkit answers each request alone, one worker per core), which the batched
    pass does not show. fmops.sizing turns it into requests per second per instance type."""
    import torch

    if not texts:
        return {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ordered = [texts[i % len(texts)] for i in range(SINGLE_WARMUP + SINGLE_REQUESTS)]
        seconds = []
        for number, text in enumerate(ordered):
            tick = time.perf_counter()
            classifier([text])
            if number >= SINGLE_WARMUP:
                seconds.append(time.perf_counter() - tick)
    finally:
        torch.set_num_threads(threads)
    return {
        "request_ms_p50": round(metrics.percentile(seconds, 50) * 1000, 3),
        "request_ms_p95": round(metrics.percentile(seconds, 95) * 1000, 3),
        "request_threads": 1,
        "request_samples": len(seconds),
    }


def batched_figures(args: argparse.Namespace, timing: Timing) -> dict[str, Any]:
    latency = metrics.summarize_latencies(timing.seconds, timing.sizes, timing.total)
    return {
        "batch_size": args.batch_size,
        "latency_p50_ms": round(latency["batch_latency_ms_p50"], 2),
        "latency_p95_ms": round(latency["batch_latency_ms_p95"], 2),
        "example_latency_p50_ms": round(latency["example_latency_ms_p50"], 3),
        "throughput_per_s": round(latency["throughput_per_sec"], 2),
    }


def optimized(
    args: argparse.Namespace,
    output: Path,
    model_dir: Path,
    models: Models,
    evaluated: list[tuple[Scenario, Examples]],
    texts: list[str],
    runtimes: list[str],
) -> dict[str, Any]:
    """The optimize step (optimize.py): the kind's artifacts evaluated on the eager pass's
    scenarios and examples, timed as the eager model was."""
    import optimize
    import torch

    def evaluate(model: Any, runtime: str) -> tuple[dict, dict, dict]:
        timing = Timing()
        results, per_example = {}, {}
        for scenario, examples in evaluated:
            if models.kind == "classification":
                predict = model
            else:
                predict = lm_predictor(model, scenario.task, args)
            result, scores, _ = evaluate_scenario(
                optimize.renamed(scenario, runtime), examples, predict, args, timing
            )
            results[scenario.name], per_example[scenario.name] = result, scores
        return results, per_example, timing_figures(args, timing)

    if models.kind == "classification":
        import inference

        def export(folder: Path, runtimes: list[str]) -> str | None:
            inference.export_onnx(models.loaded.model, folder / "onnx", quantize="int8" in runtimes)
            return None

        def load(path: Path, threads: int | None) -> Classifier:
            return Classifier(model_dir, None, inference.graph_classifier(path, model_dir, threads))

        def single(predict: Any) -> dict[str, Any]:
            return single_requests(predict, texts)

    else:
        import generation

        def export(folder: Path, runtimes: list[str]) -> str | None:
            lm = models.causal_lm()
            if not generation.quantize_int8(lm.model):
                return "the model has no nn.Linear layer that int8 dynamic quantization applies to"
            generation.save_int8(lm.model, folder / optimize.KINDS["generation"].artifacts["int8"])
            return None

        def load(path: Path, threads: int | None) -> Any:
            return models.causal_lm(path)

        single = None  # type: ignore[assignment] - single-text requests: classifiers only

    return optimize.run(
        models.kind, export, load, runtimes, output, evaluate, single, torch.get_num_threads()
    )


def optimize_runtimes(args: argparse.Namespace, kind: str) -> list[str]:
    """--optimize's runtimes, checked against the model's kind before any work; none for the
    untuned baseline (--zero-shot)."""
    if not args.optimize or args.zero_shot:
        return []
    import optimize

    return optimize.parse_runtimes(args.optimize, kind)


def timing_figures(args: argparse.Namespace, timing: Timing) -> dict[str, Any]:
    """The batched pass's figures, and the generation batches' when a generation scenario ran."""
    report = batched_figures(args, timing)
    if timing.first_token:
        report["time_to_first_token_ms_p50"] = round(
            metrics.percentile(timing.first_token, 50) * 1000, 2
        )
        report["tokens_per_second"] = round(
            timing.generated_tokens / max(timing.generation_seconds, 1e-9), 2
        )
        report["generated_tokens"] = timing.generated_tokens
    return report


def efficiency(
    args: argparse.Namespace,
    timing: Timing,
    model_dir: Path,
    models: Models,
    texts: list[str] | None = None,
) -> dict:
    import torch

    report: dict[str, Any] = {
        **timing_figures(args, timing),
        "model_size_mb": round(folder_bytes(model_dir) / 2**20, 2),
        "parameters": models.parameters(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),  # the batched pass's CPU threads
    }
    if isinstance(models.loaded, Classifier) and not torch.cuda.is_available():
        report.update(single_requests(models.loaded, texts or []))
    return report


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    scenarios = scenarios_of(args)
    model_dir = model_folder(Path(args.model), output.parent / "scratch")
    kind = model_kind(model_dir, args.zero_shot)
    runtimes = optimize_runtimes(args, kind)
    torch.manual_seed(args.seed)
    results: dict[str, Any] = {}
    per_example: dict[str, dict[str, list[float]]] = {}
    timing = Timing()
    models = Models(model_dir, kind, args)
    texts: list[str] = []  # a classification scenario's, for the single-request figures
    evaluated: list[tuple[Scenario, Examples]] = []  # what the optimize step evaluates again
    for scenario in scenarios:
        if scenario.task not in MODEL_TASKS[kind]:
            why = f"a {kind} model cannot be evaluated on a {scenario.task} scenario"
            print(f"scenario {scenario.name}: skipped, {why}", flush=True)
            results[scenario.name] = {"task": scenario.task, "skipped": why}
            continue
        ignored = [f for f in scenario.families if f not in TASK_FAMILIES[scenario.task]]
        if ignored:
            print(
                f"scenario {scenario.name}: families {ignored} do not apply to a "
                f"{scenario.task} scenario and are not reported",
                flush=True,
            )
        examples = load_examples(scenario)
        if scenario.task == "classification" and not texts:
            texts = [str(t) for t in examples.inputs[: SINGLE_WARMUP + SINGLE_REQUESTS]]
        predict = models.predictor(scenario.task, examples)
        result, scores, records = evaluate_scenario(scenario, examples, predict, args, timing)
        results[scenario.name] = result
        per_example[scenario.name] = scores
        evaluated.append((scenario, examples))
        with (output / f"predictions-{scenario.name}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        print(f"scenario {scenario.name}: {json.dumps(result['accuracy'])}", flush=True)
    if models.loaded is None:
        raise SystemExit(f"ERROR no scenario suits a {kind} model: nothing was evaluated")
    document = {
        "mode": evaluation_mode(model_dir, kind, args.zero_shot),
        "model_kind": kind,
        "scenarios": results,
        "efficiency": efficiency(args, timing, model_dir, models, texts),
        "seed": args.seed,
    }
    if runtimes:
        document["optimized"] = optimized(
            args, output, model_dir, models, evaluated, texts, runtimes
        )
    (output / "metrics.json").write_text(json.dumps(document, indent=1))
    (output / "per_example.json").write_text(json.dumps(per_example))
    print(f"efficiency {json.dumps(document['efficiency'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
