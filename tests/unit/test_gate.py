"""The promotion gate: the paired bootstrap, bounds, the decision's rules, and its settings."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from fmops.evaluation.gate import (
    BASELINE,
    CHAMPION,
    GateError,
    check_bounds,
    decide,
    default_primary,
    metric_value,
    paired_bootstrap,
)
from fmops.evaluation.settings import (
    ChampionSettings,
    GateSettings,
    MetricBound,
    direction,
    parse_metric_path,
)

N = 400


def metrics_json(
    name: str,
    accuracy: float,
    *,
    ece: float = 0.04,
    worst_drop: float = 0.03,
    latency_p95_ms: float = 20.0,
    labels: int = 5,
) -> dict[str, Any]:
    """A metrics.json in the evaluation job's shape (two scenarios, all four families)."""
    names = [f"label_{i}" for i in range(labels)]
    # Eight right per label, one mistaken for the next label.
    matrix = [
        [8 if i == j else (1 if j == (i + 1) % labels else 0) for j in range(labels)]
        for i in range(labels)
    ]
    bins = [
        {
            "lower": i / 10,
            "upper": (i + 1) / 10,
            "count": 10 * i,
            "confidence": i / 10 + 0.05,
            "accuracy": min(1.0, i / 10 + 0.02),
        }
        for i in range(10)
    ]
    kinds = {"typos": worst_drop, "casing": 0.0, "punctuation": worst_drop / 2, "contractions": 0.0}
    return {
        "model": name,
        "scenarios": {
            "banking77": {
                "task": "classification",
                "examples": N,
                "accuracy": {"accuracy": accuracy, "macro_f1": round(accuracy - 0.01, 6)},
                "calibration": {"ece": ece, "bins": bins},
                "robustness": {
                    **{k: {"score": accuracy - d, "drop": d} for k, d in kinds.items()},
                    "worst_drop": worst_drop,
                },
                "fairness": {
                    "dialect": {"groups": {"american": accuracy, "british": accuracy}, "gap": 0.0},
                    "names": {"groups": {"a": accuracy, "b": accuracy - 0.01}, "gap": 0.01},
                    "max_gap": 0.01,
                },
                "confusion": {"labels": names, "matrix": matrix},
            },
            "support-instructions": {
                "task": "generation",
                "examples": 40,
                "accuracy": {"exact_match": 0.2, "token_f1": 0.5, "rouge_l": 0.55},
                "robustness": {"typos": {"score": 0.48, "drop": 0.02}, "worst_drop": 0.02},
                "fairness": {"dialect": {"groups": {"a": 0.5, "b": 0.49}, "gap": 0.01}},
            },
        },
        "efficiency": {
            "latency_p50_ms": 12.0,
            "latency_p95_ms": latency_p95_ms,
            "throughput_per_s": 300.0,
            "model_size_mb": 87.0,
            "parameters": 22_700_000,
        },
        "cost": {
            "instance_type": "ml.g4dn.xlarge",
            "price_per_hour": 0.736,
            "usd_per_1k_requests": 0.0012,
            "estimate": "about $0.02 a day at 1 request per second",
        },
    }


def correct_on(count: int, n: int = N, offset: int = 0) -> list[float]:
    """1.0 on ``count`` examples from ``offset`` on (wrapping), 0.0 elsewhere."""
    return [1.0 if (i - offset) % n < count else 0.0 for i in range(n)]


def settings(**raw: Any) -> GateSettings:
    return GateSettings.model_validate(raw)


# -- the paired bootstrap ----------------------------------------------------------------------


def test_a_clearly_better_model_clears_the_interval():
    champion = correct_on(280)  # 0.70
    candidate = correct_on(340)  # 0.85: right on the champion's 280 and 60 more
    result = paired_bootstrap(candidate, champion, resamples=2000, seed=7)
    assert result.mean_difference == pytest.approx(0.15)
    assert 0.1 < result.lower <= result.mean_difference <= result.upper < 0.2
    assert (result.resamples, result.seed, result.n, result.confidence) == (2000, 7, N, 0.95)


def test_a_tied_model_does_not_clear_zero():
    champion = correct_on(280)
    identical = paired_bootstrap(champion, champion, resamples=1000, seed=1)
    assert (identical.lower, identical.mean_difference, identical.upper) == (0.0, 0.0, 0.0)
    # Same accuracy, right on different examples: the difference is centred on 0.
    shifted = paired_bootstrap(correct_on(280, offset=40), champion, resamples=2000, seed=1)
    assert shifted.mean_difference == 0.0
    assert shifted.lower < 0 < shifted.upper


def test_a_worse_model_has_an_interval_below_zero():
    result = paired_bootstrap(correct_on(200), correct_on(280), resamples=2000, seed=3)
    assert result.mean_difference == pytest.approx(-0.2)
    assert result.lower <= result.upper < 0


def test_the_same_seed_gives_the_same_interval():
    candidate, champion = correct_on(300, offset=17), correct_on(280)
    first = paired_bootstrap(candidate, champion, resamples=1500, seed=42)
    again = paired_bootstrap(candidate, champion, resamples=1500, seed=42)
    other = paired_bootstrap(candidate, champion, resamples=1500, seed=43)
    assert first == again
    assert (other.lower, other.upper) != (first.lower, first.upper)


def unpaired_interval(
    a: list[float], b: list[float], resamples: int, seed: int
) -> tuple[float, ...]:
    """The bootstrap done wrong for this question: each model's examples drawn independently."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a), np.asarray(b)
    means = [
        x[rng.integers(0, x.size, x.size)].mean() - y[rng.integers(0, y.size, y.size)].mean()
        for _ in range(resamples)
    ]
    return tuple(np.quantile(means, [0.025, 0.975]))


def test_pairing_cancels_the_examples_difficulty():
    # Per-example token F1 that varies a lot from example to example (some are hard for every
    # model); the candidate is 0.02 better on every single example. Paired, the difference is
    # the same on each example and the interval is a point; unpaired, the examples' spread
    # swamps it and the interval straddles zero.
    difficulty = np.random.default_rng(0).uniform(0.0, 0.9, size=200)
    champion = difficulty.tolist()
    candidate = (difficulty + 0.02).tolist()
    paired = paired_bootstrap(candidate, champion, resamples=2000, seed=5)
    assert paired.lower == pytest.approx(0.02) and paired.upper == pytest.approx(0.02)
    assert paired.lower > 0.0
    low, high = unpaired_interval(candidate, champion, resamples=2000, seed=5)
    assert low < 0.0 < high
    assert high - low > 50 * (paired.upper - paired.lower + 1e-9)


def test_many_examples_are_drawn_in_bounded_chunks_deterministically():
    rng = np.random.default_rng(1)
    champion = (rng.random(9000) < 0.8).astype(float)
    candidate = np.where(rng.random(9000) < 0.05, 1.0, champion)
    first = paired_bootstrap(candidate, champion, resamples=1000, seed=2)
    assert first == paired_bootstrap(candidate, champion, resamples=1000, seed=2)
    assert 0 < first.lower < first.mean_difference < first.upper


def test_the_interval_is_the_percentile_interval_of_paired_resamples():
    # The procedure written out: the seeded generator draws n indices per replicate, the same
    # indices for both models, and the interval is the replicates' means' quantiles.
    rng = np.random.default_rng(8)
    champion = rng.random(250)
    candidate = champion + rng.normal(0.01, 0.05, size=250)
    indices = np.random.default_rng(21).integers(0, 250, size=(600, 250))
    means = (candidate[indices] - champion[indices]).mean(axis=1)
    expected = np.quantile(means, [0.05, 0.95])

    result = paired_bootstrap(candidate, champion, resamples=600, seed=21, confidence=0.9)

    assert (result.lower, result.upper) == pytest.approx(tuple(expected), abs=1e-12)


def test_one_example_gives_a_point_interval():
    result = paired_bootstrap([0.75], [0.5], resamples=100)
    assert (result.lower, result.mean_difference, result.upper, result.n) == (0.25, 0.25, 0.25, 1)


@pytest.mark.parametrize(
    ("candidate", "champion", "expected"),
    [
        ([1.0, 0.0], [1.0], "got 2 candidate and 1 champion scores"),
        ([], [], "no per-example scores"),
        ([1.0, float("nan")], [1.0, 0.0], "candidate's score at example 1 is nan"),
        ([[1.0], [0.0]], [[1.0], [0.0]], "flat lists"),
    ],
)
def test_the_bootstrap_refuses_what_it_cannot_pair(candidate, champion, expected):
    with pytest.raises(GateError, match=expected.replace("(", r"\(")):
        paired_bootstrap(candidate, champion)


def test_the_bootstrap_refuses_a_bad_level_or_no_resamples():
    with pytest.raises(GateError, match="confidence is 1.5"):
        paired_bootstrap([1.0], [0.0], confidence=1.5)
    with pytest.raises(GateError, match="resamples is 0"):
        paired_bootstrap([1.0], [0.0], resamples=0)


# -- bounds ------------------------------------------------------------------------------------


def test_bounds_pass_and_fail_with_their_numbers():
    metrics = {"a": metrics_json("a", 0.85, ece=0.12), "b": metrics_json("b", 0.75)}
    bounds = [
        MetricBound(metric="banking77.accuracy.accuracy", min=0.8),
        MetricBound(metric="banking77.calibration.ece", max=0.1),
        MetricBound(metric="efficiency.latency_p95_ms", min=1, max=50),
    ]
    checks = check_bounds(metrics, bounds)
    a, b = checks["a"], checks["b"]
    assert [c.passed for c in a] == [True, False, True]
    assert a[0].reason == "banking77.accuracy.accuracy = 0.85 >= 0.8"
    assert a[1].reason == "banking77.calibration.ece = 0.12 is above the maximum 0.1"
    assert (a[2].bound, a[2].value) == ("in [1, 50]", 20.0)
    assert b[0].reason == "banking77.accuracy.accuracy = 0.75 is below the minimum 0.8"


def test_a_missing_metric_fails_its_check_and_says_so():
    partial = metrics_json("partial", 0.9)
    del partial["scenarios"]["banking77"]["robustness"]
    del partial["efficiency"]
    bounds = [
        MetricBound(metric="banking77.robustness.worst_drop", max=0.05),
        MetricBound(metric="efficiency.latency_p95_ms", max=50),
        MetricBound(metric="summaries.accuracy.rouge_l", min=0.3),
        MetricBound(metric="banking77.robustness.typos", max=0.05),
    ]
    full = metrics_json("full", 0.9)
    checks = check_bounds({"partial": partial, "full": full}, bounds)
    missing = checks["partial"]
    assert not any(c.passed for c in missing)
    assert all(c.value is None for c in missing)
    assert missing[0].reason == (
        "banking77.robustness.worst_drop is missing from the metrics.json of partial "
        "(no 'robustness' under scenarios.banking77)"
    )
    assert "no 'efficiency' under the top level" in missing[1].reason
    assert "no 'summaries' under scenarios" in missing[2].reason
    # A path that ends at a mapping is no number: it fails, naming what is there.
    assert [c.passed for c in checks["full"]] == [True, True, False, False]
    assert "is not a number but a mapping with keys score, drop" in checks["full"][3].reason


def test_metric_value_reads_deep_paths_and_returns_none_when_missing():
    metrics = metrics_json("m", 0.8)
    assert metric_value(metrics, "banking77.robustness.typos.drop") == 0.03
    assert metric_value(metrics, "banking77.fairness.names.gap") == 0.01
    assert metric_value(metrics, "cost.usd_per_1k_requests") == 0.0012
    assert metric_value(metrics, "banking77.fairness.nope.gap") is None
    assert metric_value(metrics, "cost.instance_type") is None  # not a number


# -- the decision ------------------------------------------------------------------------------


def evaluation(champion_correct: int | None = None) -> tuple[dict, dict]:
    """Two candidates, the baseline and optionally a champion, with consistent per-example
    scores (each model's scores average to its accuracy in metrics.json)."""
    counts = {"minilm-full": 340, "minilm-lora": 320, BASELINE: 120}
    if champion_correct is not None:
        counts[CHAMPION] = champion_correct
    metrics = {m: metrics_json(m, c / N) for m, c in counts.items()}
    per_example = {m: {"banking77": correct_on(c)} for m, c in counts.items()}
    return metrics, per_example


GATE = {
    "bounds": [
        {"metric": "banking77.accuracy.accuracy", "min": 0.7},
        {"metric": "banking77.calibration.ece", "max": 0.1},
        {"metric": "efficiency.latency_p95_ms", "max": 50},
    ]
}


def test_without_a_champion_the_bounds_alone_decide():
    metrics, per_example = evaluation()
    decision = decide(metrics, per_example, settings(**GATE))
    assert decision.promote and decision.winner == "minilm-full"
    assert decision.primary == "banking77.accuracy.accuracy"
    assert decision.ranking == [("minilm-full", 0.85), ("minilm-lora", 0.8)]
    assert decision.roles == {
        "minilm-full": "candidate",
        "minilm-lora": "candidate",
        BASELINE: "baseline",
    }
    text = "\n".join(decision.reasons)
    assert "candidates ranked by banking77.accuracy.accuracy (higher is better): " in text
    assert "minilm-full passes every bound (3): banking77.accuracy.accuracy = 0.85 >= 0.7" in text
    assert "no champion is registered: the bounds alone decide" in text
    assert decision.champion is None
    # The baseline comparison is information only.
    assert decision.baseline is not None and decision.baseline.against == BASELINE
    assert decision.baseline.result.mean_difference == pytest.approx(0.55)
    assert "for information: minilm-full vs baseline" in text
    assert decision.reasons[-1] == "promote minilm-full"
    assert not any(r.startswith("note:") for r in decision.reasons)


def test_the_best_candidate_that_fails_a_bound_gives_way_to_the_next():
    metrics, per_example = evaluation()
    metrics["minilm-full"]["efficiency"]["latency_p95_ms"] = 80.0
    decision = decide(metrics, per_example, settings(**GATE))
    assert decision.winner == "minilm-lora" and decision.promote
    assert (
        "minilm-full fails 1 of 3 bounds: efficiency.latency_p95_ms = 80 is above the maximum 50"
        in decision.reasons[1]
    )


def test_no_candidate_passing_means_no_promotion():
    metrics, per_example = evaluation()
    del metrics["minilm-full"]["scenarios"]["banking77"]["calibration"]
    metrics["minilm-lora"]["scenarios"]["banking77"]["calibration"]["ece"] = 0.3
    decision = decide(metrics, per_example, settings(**GATE))
    assert not decision.promote and decision.winner is None
    assert (
        "banking77.calibration.ece is missing from the metrics.json of minilm-full"
        in (decision.reasons[1])
    )
    assert decision.reasons[-1] == "no candidate passes every bound: do not promote"


def test_a_clearly_better_candidate_replaces_the_champion():
    metrics, per_example = evaluation(champion_correct=280)
    decision = decide(metrics, per_example, settings(**GATE))
    assert decision.promote and decision.winner == "minilm-full"
    comparison = decision.champion
    assert comparison is not None and comparison.cleared
    assert comparison.result.lower > 0
    assert comparison.reason.startswith(
        "minilm-full vs champion on banking77.accuracy.accuracy (paired bootstrap, 2000 "
        "resamples, seed 13, n=400): mean difference +0.1500; the 95% CI ["
    )
    assert comparison.reason.endswith("of the difference clears the margin 0")
    assert decision.roles[CHAMPION] == "champion"
    assert CHAMPION not in dict(decision.ranking)


def test_a_tied_candidate_does_not_replace_the_champion():
    metrics, per_example = evaluation(champion_correct=340)
    per_example[CHAMPION]["banking77"] = correct_on(340, offset=50)
    decision = decide(metrics, per_example, settings(**GATE))
    assert decision.winner == "minilm-full" and not decision.promote
    result = decision.champion.result
    expected = (
        f"the 95% CI [{result.lower:+.4f}, {result.upper:+.4f}] of the difference does not "
        "clear the margin 0"
    )
    assert decision.champion.reason.endswith(expected)
    assert result.lower < 0 < result.upper
    assert (
        decision.reasons[-1] == "do not promote minilm-full: it is not shown to beat the champion"
    )


def test_a_worse_candidate_does_not_replace_the_champion():
    metrics, per_example = evaluation(champion_correct=380)
    decision = decide(metrics, per_example, settings(**GATE))
    assert not decision.promote
    assert decision.champion.result.upper < 0


def test_the_margin_must_be_cleared_not_just_zero():
    metrics, per_example = evaluation(champion_correct=320)  # the winner is 0.05 better
    assert decide(metrics, per_example, settings(**GATE)).promote
    strict = settings(**GATE, champion={"margin": 0.1})
    decision = decide(metrics, per_example, strict)
    assert not decision.promote
    assert "does not clear the margin 0.1" in decision.champion.reason


def test_without_per_example_scores_the_champion_is_kept():
    metrics, per_example = evaluation(champion_correct=200)
    del per_example[CHAMPION]
    decision = decide(metrics, per_example, settings(**GATE))
    assert not decision.promote and decision.champion.result is None
    assert "no per-example scores of champion on scenario banking77" in decision.champion.reason


def test_mismatched_example_counts_keep_the_champion_with_the_reason():
    metrics, per_example = evaluation(champion_correct=200)
    per_example[CHAMPION]["banking77"] = correct_on(100, n=200)
    decision = decide(metrics, per_example, settings(**GATE))
    assert not decision.promote
    assert "got 400 candidate and 200 champion scores" in decision.champion.reason


def test_scores_that_disagree_with_metrics_json_are_noted():
    metrics, per_example = evaluation()
    per_example["minilm-full"]["banking77"] = correct_on(300)
    decision = decide(metrics, per_example, settings())
    assert (
        "note: the per-example scores of minilm-full on banking77 average to 0.75 while its "
        "metrics.json reports banking77.accuracy.accuracy = 0.85; the bootstrap tests the "
        "per-example scores" in decision.reasons
    )


def test_no_bounds_and_no_candidates():
    metrics, per_example = evaluation()
    decision = decide(metrics, per_example, settings())
    assert "no bounds are configured: every candidate passes them" in decision.reasons
    only_baseline = {BASELINE: metrics[BASELINE]}
    empty = decide(only_baseline, per_example, settings())
    assert not empty.promote and empty.winner is None
    assert empty.reasons == ["no candidate was evaluated: nothing to promote"]


def test_a_lower_is_better_primary_ranks_ascending():
    metrics, per_example = evaluation()
    metrics["minilm-full"]["scenarios"]["banking77"]["calibration"]["ece"] = 0.09
    metrics["minilm-lora"]["scenarios"]["banking77"]["calibration"]["ece"] = 0.02
    gate = settings(
        primary="banking77.calibration.ece", champion={"metric": "banking77.accuracy.accuracy"}
    )
    decision = decide(metrics, per_example, gate)
    assert [m for m, _ in decision.ranking] == ["minilm-lora", "minilm-full"]
    assert decision.winner == "minilm-lora"
    assert "(lower is better)" in decision.reasons[0]


def test_a_candidate_without_the_primary_metric_cannot_win():
    metrics, per_example = evaluation()
    del metrics["minilm-full"]["scenarios"]["banking77"]["accuracy"]["accuracy"]
    decision = decide(metrics, per_example, settings())
    assert decision.ranking[-1] == ("minilm-full", None)
    assert decision.winner == "minilm-lora"
    assert "minilm-full has no banking77.accuracy.accuracy, so it cannot be ranked or win" in (
        decision.reasons
    )


def test_the_decision_serialises_to_json():
    metrics, per_example = evaluation(champion_correct=280)
    data = json.loads(json.dumps(decide(metrics, per_example, settings(**GATE)).to_dict()))
    assert data["promote"] is True
    assert data["ranking"][0] == {"model": "minilm-full", "value": 0.85}
    assert data["champion"]["result"]["n"] == N
    assert data["checks"]["minilm-full"][0]["passed"] is True


def test_the_default_primary_is_the_first_scenarios_accuracy():
    metrics = {"a": metrics_json("a", 0.8)}
    assert default_primary(metrics) == "banking77.accuracy.accuracy"
    generation_first = {"scenarios": {"qa": {"accuracy": {"token_f1": 0.4, "rouge_l": 0.5}}}}
    assert default_primary({"g": generation_first}) == "qa.accuracy.token_f1"
    with pytest.raises(GateError, match="no metrics.json has any scenario"):
        default_primary({"x": {"efficiency": {}}})


# -- settings ----------------------------------------------------------------------------------


def test_the_settings_defaults():
    gate = GateSettings()
    assert gate.primary is None and gate.bounds == []
    assert gate.champion == ChampionSettings(margin=0.0, confidence=0.95, resamples=2000, seed=13)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"bounds": [{"metric": "banking77.accuracy.accuracy"}]},
            "sets neither min nor max; set min",
        ),
        (
            {"bounds": [{"metric": "banking77.accuracy.accuracy", "min": 0.9, "max": 0.8}]},
            "min (0.9) exceeds max (0.8)",
        ),
        (
            {"bounds": [{"metric": "banking77.acc.accuracy", "min": 0.8}]},
            "unknown family 'acc'; the family is one of accuracy, calibration, robustness, "
            "fairness",
        ),
        ({"bounds": [{"metric": "banking77.accuracy", "min": 0.8}]}, "is too short"),
        ({"bounds": [{"metric": "banking77..ece", "max": 0.1}]}, "has an empty part"),
        (
            {"bounds": [{"metric": "efficiency.latency.p95", "max": 1}]},
            "efficiency metrics are efficiency.<name> (e.g. efficiency.latency_p95_ms)",
        ),
        ({"bounds": [{"metric": "efficiency.latency_p95_ms", "max": "nan"}]}, "finite number"),
        ({"champion": {"resamples": 500}}, "greater than or equal to 1000"),
        ({"champion": {"margin": -0.01}}, "greater than or equal to 0"),
        ({"champion": {"confidence": 1.0}}, "less than 1"),
        (
            {"champion": {"metric": "banking77.calibration.ece"}},
            "is not an accuracy metric",
        ),
        ({"primary": "banking77.accuracy.examples"}, "cannot rank by it"),
        (
            {"primary": "banking77.robustness.worst_drop"},
            "champion.metric defaults to primary ('banking77.robustness.worst_drop'), which is "
            "not an accuracy metric",
        ),
        ({"champion": {"seeds": 1}}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_name_the_problem_and_the_fix(raw, expected):
    with pytest.raises(ValidationError) as info:
        GateSettings.model_validate(raw)
    assert expected in str(info.value)


def test_a_non_accuracy_primary_is_fine_with_an_explicit_champion_metric():
    gate = GateSettings(
        primary="banking77.robustness.worst_drop",
        champion=ChampionSettings(metric="banking77.accuracy.macro_f1"),
    )
    assert gate.champion.metric == "banking77.accuracy.macro_f1"


def test_metric_paths():
    path = parse_metric_path("banking77.robustness.typos.drop")
    assert (path.scenario, path.family, path.keys, path.name) == (
        "banking77",
        "robustness",
        ("typos", "drop"),
        "drop",
    )
    assert path.location == ("scenarios", "banking77", "robustness", "typos", "drop")
    efficiency = parse_metric_path("efficiency.latency_p95_ms")
    assert (efficiency.scenario, efficiency.location) == (None, ("efficiency", "latency_p95_ms"))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("accuracy", "higher"),
        ("macro_f1", "higher"),
        ("token_f1", "higher"),
        ("exact_match", "higher"),
        ("rouge_l", "higher"),
        ("score", "higher"),
        ("throughput_per_s", "higher"),
        ("ece", "lower"),
        ("drop", "lower"),
        ("worst_drop", "lower"),
        ("gap", "lower"),
        ("max_gap", "lower"),
        ("latency_p95_ms", "lower"),
        ("model_size_mb", "lower"),
        ("parameters", "lower"),
        ("usd_per_1k_requests", "lower"),
        ("price_per_hour", "lower"),
        ("examples", None),
    ],
)
def test_metric_directions(name, expected):
    assert direction(name) == expected
