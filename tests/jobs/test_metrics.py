"""include/scripts/metrics.py: known answers worked by hand, and ROUGE-L against rouge_score."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "include" / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import metrics  # noqa: E402 - the job script's module, beside evaluate.py

# --- classification ---------------------------------------------------------------------------


def test_accuracy_and_correctness():
    truth = ["a", "b", "c", "a"]
    predicted = ["a", "c", "c", "b"]
    assert metrics.correctness(truth, predicted) == [1, 0, 1, 0]
    assert metrics.accuracy(truth, predicted) == 0.5


def test_macro_f1_three_labels_by_hand():
    truth = ["cat", "cat", "cat", "dog", "dog", "bird"]
    predicted = ["cat", "cat", "dog", "dog", "bird", "bird"]
    # cat:  TP 2, FP 0, FN 1 -> 2*2 / (4 + 0 + 1) = 4/5
    # dog:  TP 1, FP 1 (a cat), FN 1 (called bird) -> 2 / (2 + 1 + 1) = 1/2
    # bird: TP 1, FP 1 (a dog), FN 0 -> 2 / (2 + 1) = 2/3
    # macro = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90
    assert metrics.f1_by_label(truth, predicted) == pytest.approx(
        {"bird": 2 / 3, "cat": 4 / 5, "dog": 1 / 2}
    )
    assert metrics.macro_f1(truth, predicted) == pytest.approx(59 / 90)

    from sklearn.metrics import f1_score

    assert metrics.macro_f1(truth, predicted) == pytest.approx(
        f1_score(truth, predicted, average="macro")
    )


def test_macro_f1_label_set_conventions():
    truth, predicted = ["a", "a"], ["a", "b"]
    # Union of truth and predictions: a = 2*1 / (2 + 0 + 1) = 2/3, b = 0 / (0 + 1 + 0) = 0.
    assert metrics.macro_f1(truth, predicted) == pytest.approx(1 / 3)
    # Only the given labels count; the stray "b" still costs "a" its false negative.
    assert metrics.macro_f1(truth, predicted, labels=["a"]) == pytest.approx(2 / 3)
    # A declared label seen in neither truth nor predictions has no F1 and is skipped.
    assert metrics.macro_f1(truth, predicted, labels=["a", "b", "z"]) == pytest.approx(1 / 3)
    assert metrics.macro_f1(["x"], ["x"]) == 1.0


def test_classification_rejects_empty_and_mismatched_inputs():
    with pytest.raises(ValueError, match="at least one example"):
        metrics.accuracy([], [])
    with pytest.raises(ValueError, match="differ in length: 2 != 1"):
        metrics.macro_f1(["a", "b"], ["a"])


# --- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Cat, sat!", "cat sat"),
        ("  an   apple\ta day ", "apple day"),
        ("Theatre (the) ANSWER.", "theatre answer"),
        ("", ""),
    ],
)
def test_normalize_answer_follows_squad(text, normalised):
    assert metrics.normalize_answer(text) == normalised


def test_normalize_answer_keeps_the_underscore():
    """Identifiers keep their underscore (SQuAD would drop it): card_arrival is not cardarrival,
    nor card arrival; the other punctuation around it still goes."""
    assert metrics.normalize_answer("Card_Arrival.") == "card_arrival"
    assert metrics.normalize_answer("(top_up_reverted)!") == "top_up_reverted"
    assert metrics.exact_match("card_arrival", "card_arrival") == 1.0
    assert metrics.exact_match("cardarrival", "card_arrival") == 0.0
    assert metrics.exact_match("card arrival", "card_arrival") == 0.0
    assert metrics.token_f1("card arrival", "card_arrival") == 0.0  # one token, not two


def test_exact_match():
    assert metrics.exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert metrics.exact_match("Denver Broncos!", "denver broncos") == 1.0
    assert metrics.exact_match("Denver", "Denver Broncos") == 0.0


def test_token_f1_by_hand():
    # prediction [denver, broncos, won], reference [denver, broncos]: overlap 2,
    # precision 2/3, recall 1, F1 = 2 * (2/3) * 1 / (2/3 + 1) = 4/5
    assert metrics.token_f1("Denver Broncos won", "the Denver Broncos") == pytest.approx(0.8)
    # bags, not sets: overlap = min(1, 2) cat + min(2, 1) dog = 2, P = R = 2/3
    assert metrics.token_f1("cat dog dog", "cat cat dog") == pytest.approx(2 / 3)
    assert metrics.token_f1("blue", "red") == 0.0
    assert metrics.token_f1("the", "a") == 1.0  # both empty after normalisation
    assert metrics.token_f1("", "Denver") == 0.0
    assert metrics.token_f1("Denver", "") == 0.0


PAIRS = [
    ("the cat sat on the mat", "the cat lay on a mat"),
    ("payments were declined", "payment declined"),
    ("my card has not arrived yet", "card not arrived"),
    ("How do I reset my PIN?", "resetting the pin number"),
    ("completely unrelated", "nothing in common"),
]


@pytest.mark.parametrize(("prediction", "reference"), PAIRS)
def test_rouge_l_is_rouge_score_fmeasure(prediction, reference):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = scorer.score(reference, prediction)["rougeL"].fmeasure
    assert metrics.rouge_l(prediction, reference) == pytest.approx(expected)


def test_rouge_l_by_hand():
    # [the cat sat on the mat] vs [the cat lay on a mat]: LCS "the cat on mat" = 4 tokens,
    # P = 4/6, R = 4/6, F = 2/3 (rouge_score keeps articles, unlike SQuAD normalisation).
    assert metrics.rouge_l(*PAIRS[0]) == pytest.approx(2 / 3)
    # Stemming: [payment were declin] vs [payment declin], LCS 2, P = 2/3, R = 1, F = 4/5.
    assert metrics.rouge_l(*PAIRS[1]) == pytest.approx(0.8)
    assert metrics.rouge_l("", "") == 0.0


def test_generation_scores_lists_and_means():
    scores = metrics.generation_scores(
        ["Denver Broncos", "Paris", "blue"],
        ["the Denver Broncos", ["Lyon", "paris"], "red"],
    )
    assert scores["exact_match"] == [1.0, 1.0, 0.0]  # "Paris" matches its second reference
    assert scores["token_f1"] == [1.0, 1.0, 0.0]
    assert scores["rouge_l"] == pytest.approx([0.8, 1.0, 0.0])  # 2 of 3 reference tokens
    means = metrics.mean_scores(scores)
    assert means["exact_match"] == pytest.approx(2 / 3)
    assert means["rouge_l"] == pytest.approx(0.6)


def test_generation_scores_subset_and_unknown_metric():
    assert metrics.generation_scores(["a b"], ["b"], metrics=["token_f1"]) == {"token_f1": [1.0]}
    with pytest.raises(ValueError, match="unknown metric.*bleu.*choose from"):
        metrics.generation_scores(["x"], ["x"], metrics=["bleu"])
    with pytest.raises(ValueError, match="no reference answer"):
        metrics.generation_scores(["x"], [[]])


# --- calibration ------------------------------------------------------------------------------


def test_expected_calibration_error_by_hand():
    confidences = [0.0, 0.1, 0.3, 0.35, 0.8, 0.9, 0.95, 1.0]
    correct = [0, 0, 1, 0, 1, 1, 0, 1]
    # Bins are (i/10, (i+1)/10], with 0 in the first; N = 8.
    #   bin 0 (0, .1]:   0.0, 0.1   -> acc 0,  conf .05  -> 2/8 * .05  = .0125
    #   bin 2 (.2, .3]:  0.3        -> acc 1,  conf .3   -> 1/8 * .7   = .0875
    #   bin 3 (.3, .4]:  0.35       -> acc 0,  conf .35  -> 1/8 * .35  = .04375
    #   bin 7 (.7, .8]:  0.8        -> acc 1,  conf .8   -> 1/8 * .2   = .025
    #   bin 8 (.8, .9]:  0.9        -> acc 1,  conf .9   -> 1/8 * .1   = .0125
    #   bin 9 (.9, 1]:   0.95, 1.0  -> acc .5, conf .975 -> 2/8 * .475 = .11875
    #   ECE = .0125 + .0875 + .04375 + .025 + .0125 + .11875 = 0.3
    ece, table = metrics.expected_calibration_error(confidences, correct)
    assert ece == pytest.approx(0.3)
    assert len(table) == 10
    assert [row["count"] for row in table] == [2, 0, 1, 1, 0, 0, 0, 1, 1, 2]
    assert table[0] == pytest.approx(
        {"lower": 0.0, "upper": 0.1, "count": 2, "mean_confidence": 0.05, "accuracy": 0.0}
    )
    assert table[9]["mean_confidence"] == pytest.approx(0.975)
    assert table[9]["accuracy"] == 0.5
    assert table[1]["mean_confidence"] is None and table[1]["accuracy"] is None
    assert sum(row["count"] for row in table) == len(confidences)


def test_expected_calibration_error_edges_and_extremes():
    # A perfectly confident, always right model is perfectly calibrated.
    assert metrics.expected_calibration_error([1.0, 1.0], [True, True])[0] == 0.0
    # Always 0.9 sure, right half the time: |0.5 - 0.9| = 0.4.
    assert metrics.expected_calibration_error([0.9] * 4, [1, 0, 1, 0])[0] == pytest.approx(0.4)
    # With 4 bins the edges are 0.25, 0.5, 0.75: a confidence on an edge falls in the lower bin.
    _, table = metrics.expected_calibration_error([0.25, 0.5, 0.75], [1, 1, 1], bins=4)
    assert [row["count"] for row in table] == [1, 1, 1, 0]
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        metrics.expected_calibration_error([1.5], [1])
    with pytest.raises(ValueError, match="bins"):
        metrics.expected_calibration_error([0.5], [1], bins=0)


# --- efficiency -------------------------------------------------------------------------------


def test_percentile_linear():
    # Linear method: rank (n - 1) * q / 100; p50 -> rank 1.5 -> 25, p95 -> rank 2.85 -> 38.5.
    assert metrics.percentile([40, 10, 30, 20], 50) == pytest.approx(25.0)
    assert metrics.percentile([40, 10, 30, 20], 95) == pytest.approx(38.5)
    assert metrics.percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="at least one example"):
        metrics.percentile([], 50)


def test_summarize_latencies():
    summary = metrics.summarize_latencies([0.1, 0.2, 0.3, 0.4], [10, 10, 10, 5])
    # batch ms [100, 200, 300, 400]: p50 250, p95 300 + 0.85 * 100 = 385
    # per-example ms [10, 20, 30, 80]: p50 25, p95 30 + 0.85 * 50 = 72.5
    # throughput: 35 examples / 1.0 s
    assert summary == pytest.approx(
        {
            "batches": 4,
            "examples": 35,
            "batch_latency_ms_p50": 250.0,
            "batch_latency_ms_p95": 385.0,
            "example_latency_ms_p50": 25.0,
            "example_latency_ms_p95": 72.5,
            "throughput_per_sec": 35.0,
        }
    )
    wall = metrics.summarize_latencies([0.1, 0.2, 0.3, 0.4], [10, 10, 10, 5], total_seconds=1.4)
    assert wall["throughput_per_sec"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="positive"):
        metrics.summarize_latencies([0.0], [1])
    with pytest.raises(ValueError, match="batch sizes"):
        metrics.summarize_latencies([0.1], [0])
