"""Metric families of a HELM-style evaluation, for the evaluation job scripts.

Standalone like the other job scripts: numpy and the standard library only (``rouge_score`` is
imported inside :func:`rouge_l`, the one function that needs it), so it runs in a SageMaker
container beside ``evaluate.py`` and never imports ``fmops``.

Families:

- classification: :func:`accuracy`, :func:`macro_f1` (with :func:`f1_by_label`) and the
  per-example :func:`correctness` vector that calibration needs;
- generation: SQuAD answer normalisation (keeping ``_``), :func:`exact_match`, :func:`token_f1`,
  :func:`rouge_l` and :func:`generation_scores` / :func:`mean_scores` for per-example lists and
  their means;
- calibration: :func:`expected_calibration_error` with the per-bin table of a reliability diagram;
- efficiency: :func:`percentile` and :func:`summarize_latencies`.

Every function that averages over examples raises ``ValueError`` on an empty input, rather than
inventing a score for no data.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np

EMPTY_MSG = "{what} needs at least one example, got none"
LENGTH_MSG = (
    "{left} and {right} differ in length: {n_left} != {n_right}; pass one entry per example"
)


def _check_pair(left: Sequence, right: Sequence, names: tuple[str, str], what: str) -> None:
    if len(left) != len(right):
        raise ValueError(
            LENGTH_MSG.format(left=names[0], right=names[1], n_left=len(left), n_right=len(right))
        )
    if len(left) == 0:
        raise ValueError(EMPTY_MSG.format(what=what))


# --- classification ---------------------------------------------------------------------------


def correctness(truth: Sequence[str], predicted: Sequence[str]) -> list[int]:
    """1 where the predicted label equals the true label, else 0, one entry per example."""
    _check_pair(truth, predicted, ("truth", "predicted"), "correctness")
    return [int(t == p) for t, p in zip(truth, predicted, strict=True)]


def accuracy(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Fraction of examples whose predicted label equals the true label."""
    marks = correctness(truth, predicted)
    return sum(marks) / len(marks)


def f1_by_label(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-label F1 = 2TP / (2TP + FP + FN), one-vs-rest, for the labels that count.

    Labels that count: ``labels`` when given, else the union of the labels in ``truth`` and
    ``predicted``. A given label that occurs in neither truth nor predictions (TP + FP + FN = 0)
    has no defined F1 and is left out, so declaring a label the data never uses does not drag the
    macro average down. A predicted label outside a given ``labels`` list still costs its
    example's true label a false negative, but gets no F1 of its own.
    """
    _check_pair(truth, predicted, ("truth", "predicted"), "f1_by_label")
    counted = sorted(set(truth) | set(predicted)) if labels is None else list(labels)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for t, p in zip(truth, predicted, strict=True):
        if t == p:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    scores = {}
    for label in counted:
        denominator = 2 * tp[label] + fp[label] + fn[label]
        if denominator:
            scores[label] = 2 * tp[label] / denominator
    return scores


def macro_f1(
    truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None
) -> float:
    """Unweighted mean of :func:`f1_by_label` over the labels that count (see there)."""
    scores = f1_by_label(truth, predicted, labels)
    return sum(scores.values()) / len(scores) if scores else 0.0


# --- generation -------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# ASCII punctuation but the underscore: answers here are often identifiers (intent names such as
# card_arrival), and dropping "_" would make card_arrival equal cardarrival.
_PUNCTUATION = set(string.punctuation) - {"_"}


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop ASCII punctuation (but ``_``) and the articles
    a/an/the, collapse whitespace (the order of the official ``evaluate-v1.1.py``).

    Unlike SQuAD's, the underscore stays: ``card_arrival`` normalises to itself, so an answer
    ``card arrival`` or ``cardarrival`` is not an exact match for it."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when prediction and reference are equal after :func:`normalize_answer`, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1: the F1 of the bag-of-tokens overlap of the normalised answers.

    Both empty after normalisation gives 1.0 (the answers agree there is nothing to say), exactly
    one empty gives 0.0.
    """
    predicted = normalize_answer(prediction).split()
    expected = normalize_answer(reference).split()
    if not predicted or not expected:
        return float(predicted == expected)
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer  # lazy: only generation evaluations need it
    except ImportError:
        raise SystemExit(
            "ERROR a generation scenario needs the rouge-score package for ROUGE-L, and this "
            "image lacks it: use an evaluation image with rouge-score (fmops' requirements.txt "
            "pins it), or evaluate classification scenarios only"
        ) from None

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure from ``rouge_score`` (``RougeScorer(["rougeL"], use_stemmer=True)``).

    The scorer's own tokeniser applies: lowercase, every character outside ``[a-z0-9]`` splits
    tokens (so non-ASCII letters are dropped), Porter stemming. As in ``rouge_score``, an empty
    prediction or reference scores 0.0, both empty included.
    """
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


GENERATION_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "token_f1": token_f1,
    "rouge_l": rouge_l,
}


def generation_scores(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    metrics: Sequence[str] = tuple(GENERATION_METRICS),
) -> dict[str, list[float]]:
    """Per-example scores of each metric in ``metrics`` (names from ``GENERATION_METRICS``).

    A reference may be one string or several acceptable answers; with several, an example scores
    the maximum over them, as SQuAD does.
    """
    unknown = [name for name in metrics if name not in GENERATION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(GENERATION_METRICS)}")
    _check_pair(predictions, references, ("predictions", "references"), "generation_scores")
    scores: dict[str, list[float]] = {name: [] for name in metrics}
    for prediction, reference in zip(predictions, references, strict=True):
        answers = [reference] if isinstance(reference, str) else list(reference)
        if not answers:
            raise ValueError(f"an example has no reference answer (prediction {prediction!r})")
        for name in metrics:
            metric = GENERATION_METRICS[name]
            scores[name].append(max(metric(prediction, answer) for answer in answers))
    return scores


def mean_scores(scores: dict[str, Sequence[float]]) -> dict[str, float]:
    """The mean of each per-example score list, e.g. of :func:`generation_scores`."""
    means = {}
    for name, values in scores.items():
        if len(values) == 0:
            raise ValueError(EMPTY_MSG.format(what=f"the mean of {name}"))
        means[name] = float(sum(values) / len(values))
    return means


# --- calibration ------------------------------------------------------------------------------


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool | int], bins: int = 10
) -> tuple[float, list[dict[str, float | int | None]]]:
    """Expected calibration error over ``bins`` equal-width confidence bins, and the bin table.

    Bin ``i`` covers ``(i/bins, (i+1)/bins]``: right-closed, so a confidence on an edge belongs to
    the lower bin, and confidence 0 goes into the first bin. With N examples,
    ``ECE = sum over non-empty bins of (count / N) * |accuracy - mean confidence|``.

    The table has one row per bin, empty bins included, with ``lower``, ``upper``, ``count``,
    ``mean_confidence`` and ``accuracy`` (both ``None`` for an empty bin): the points and bar
    heights of a reliability diagram.
    """
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins}")
    _check_pair(confidences, correct, ("confidences", "correct"), "expected_calibration_error")
    conf = np.asarray(confidences, dtype=float)
    hits = np.asarray(correct, dtype=float)
    outside = conf[(conf < 0) | (conf > 1) | np.isnan(conf)]
    if outside.size:
        raise ValueError(f"confidences must lie in [0, 1]; got {outside[:5].tolist()}")
    # Edges as i / bins (not linspace) so that 0.3 is exactly the edge of (0.2, 0.3].
    edges = np.arange(bins + 1) / bins
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    table: list[dict[str, float | int | None]] = []
    ece = 0.0
    for i in range(bins):
        members = index == i
        count = int(members.sum())
        row: dict[str, float | int | None] = {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": count,
            "mean_confidence": None,
            "accuracy": None,
        }
        if count:
            mean_conf = float(conf[members].mean())
            acc = float(hits[members].mean())
            row["mean_confidence"] = mean_conf
            row["accuracy"] = acc
            ece += count / conf.size * abs(acc - mean_conf)
        table.append(row)
    return ece, table


# --- efficiency -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with numpy's default ``linear`` interpolation: the value at
    rank ``(n - 1) * q / 100`` of the sorted values, interpolated between neighbours."""
    if len(values) == 0:
        raise ValueError(EMPTY_MSG.format(what="percentile"))
    if not 0 <= q <= 100:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    return float(np.percentile(np.asarray(values, dtype=float), q, method="linear"))


def summarize_latencies(
    seconds_per_batch: Sequence[float],
    batch_sizes: Sequence[int],
    total_seconds: float | None = None,
) -> dict[str, float | int]:
    """Latency percentiles and throughput of batched inference.

    One entry per inference call: its wall time and how many examples it carried. Definitions:

    - ``batch_latency_ms_p50`` / ``_p95``: percentiles of the wall time of one batch call, i.e.
      the latency of a request carrying a batch;
    - ``example_latency_ms_p50`` / ``_p95``: percentiles over calls of the call's wall time
      divided by its batch size (amortised time per example; each call counts once);
    - ``throughput_per_sec``: examples / seconds, where seconds is ``total_seconds`` when given
      (wall clock around the whole loop, overhead between calls included) and otherwise the sum
      of the call times.
    """
    _check_pair(seconds_per_batch, batch_sizes, ("seconds_per_batch", "batch_sizes"), "latency")
    if any(size < 1 for size in batch_sizes):
        raise ValueError(f"batch sizes must be positive, got {list(batch_sizes)}")
    if any(seconds < 0 or math.isnan(seconds) for seconds in seconds_per_batch):
        raise ValueError("seconds_per_batch must be non-negative numbers")
    batch_ms = [seconds * 1000 for seconds in seconds_per_batch]
    example_ms = [ms / size for ms, size in zip(batch_ms, batch_sizes, strict=True)]
    examples = int(sum(batch_sizes))
    seconds = float(sum(seconds_per_batch)) if total_seconds is None else float(total_seconds)
    if seconds <= 0:
        raise ValueError(f"total time must be positive to give a throughput, got {seconds} s")
    return {
        "batches": len(batch_ms),
        "examples": examples,
        "batch_latency_ms_p50": percentile(batch_ms, 50),
        "batch_latency_ms_p95": percentile(batch_ms, 95),
        "example_latency_ms_p50": percentile(example_ms, 50),
        "example_latency_ms_p95": percentile(example_ms, 95),
        "throughput_per_sec": examples / seconds,
    }
