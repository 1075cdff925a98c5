"""The HELM-style leaderboard: its columns and directions, and the mean win rate."""

from __future__ import annotations

import json

import pytest
from test_gate import metrics_json

from fmops.evaluation.gate import Leaderboard, leaderboard, mean_win_rate


def test_mean_win_rate_on_a_hand_made_table():
    # Three models, three ranked columns and one that is not ranked:
    #
    #            acc (higher)   ece (lower)   f1 (higher)   examples (no direction)
    #   a        0.9            0.05          0.6           100
    #   b        0.8            0.05          0.7           100
    #   c        0.7            0.10          -             100
    #
    # acc:  a beats b and c: 2/2 = 1.0;  b beats c, loses to a: 1/2 = 0.5;  c: 0/2 = 0.0
    # ece:  lower is better; a ties b (half a win) and beats c: 1.5/2 = 0.75;  b likewise 0.75;
    #       c loses to both: 0.0
    # f1:   c has no value, so it is skipped: a and b only; b beats a: b 1/1 = 1.0, a 0/1 = 0.0
    # examples has no direction: not counted.
    #
    # mean: a (1.0 + 0.75 + 0.0) / 3 = 7/12;  b (0.5 + 0.75 + 1.0) / 3 = 0.75;
    #       c (0.0 + 0.0) / 2 = 0.0 (over the two columns where it has a value)
    table = {
        "a": {"acc": 0.9, "ece": 0.05, "f1": 0.6, "examples": 100},
        "b": {"acc": 0.8, "ece": 0.05, "f1": 0.7, "examples": 100},
        "c": {"acc": 0.7, "ece": 0.10, "f1": None, "examples": 100},
    }
    rates = mean_win_rate(table, {"acc": "higher", "ece": "lower", "f1": "higher"})
    assert rates == pytest.approx({"a": 7 / 12, "b": 0.75, "c": 0.0})


def test_a_tie_for_everyone_is_half_a_win_each():
    table = {m: {"x": 0.5} for m in "abcd"}
    assert mean_win_rate(table, {"x": "higher"}) == {m: 0.5 for m in "abcd"}


def test_columns_with_a_single_value_and_models_without_values():
    table = {
        "a": {"x": 0.9, "only_a": 1.0},
        "b": {"x": 0.1, "only_a": None},
        "c": {"x": None, "only_a": None},
    }
    rates = mean_win_rate(table, {"x": "higher", "only_a": "higher"})
    # only_a has one value: no one to beat, so it is skipped; c has no value anywhere.
    assert rates == {"a": 1.0, "b": 0.0, "c": None}


def test_nan_counts_as_no_value():
    table = {"a": {"x": float("nan")}, "b": {"x": 0.2}, "c": {"x": 0.1}}
    assert mean_win_rate(table, {"x": "lower"}) == {"a": None, "b": 0.0, "c": 1.0}


def test_the_leaderboard_has_a_column_per_scenario_family_metric():
    board = leaderboard({"a": metrics_json("a", 0.8)})
    assert [c.key for c in board.columns] == [
        "banking77.accuracy.accuracy",
        "banking77.accuracy.macro_f1",
        "banking77.calibration.ece",
        "banking77.robustness.worst_drop",
        "banking77.fairness.max_gap",
        "support-instructions.accuracy.exact_match",
        "support-instructions.accuracy.token_f1",
        "support-instructions.accuracy.rouge_l",
        "support-instructions.robustness.worst_drop",
        "efficiency.latency_p50_ms",
        "efficiency.latency_p95_ms",
        "efficiency.throughput_per_s",
        "efficiency.model_size_mb",
        "efficiency.parameters",
        "cost.price_per_hour",
        "cost.usd_per_1k_requests",
    ]
    directions = board.directions
    assert directions["banking77.accuracy.macro_f1"] == "higher"
    assert directions["banking77.calibration.ece"] == "lower"
    assert directions["banking77.robustness.worst_drop"] == "lower"
    assert directions["banking77.fairness.max_gap"] == "lower"
    assert directions["support-instructions.accuracy.rouge_l"] == "higher"
    assert directions["efficiency.latency_p95_ms"] == "lower"
    assert directions["efficiency.throughput_per_s"] == "higher"
    assert directions["cost.usd_per_1k_requests"] == "lower"
    # Efficiency and cost are shown, not averaged into the win rate.
    sections = ("efficiency", "cost")
    assert board.win_rate_columns == [k for k in directions if k.split(".")[0] not in sections]
    assert board.columns[0].group == "banking77" and board.columns[-1].group == "cost"


def test_rows_hold_the_values_and_none_where_a_model_lacks_one():
    partial = metrics_json("partial", 0.7)
    del partial["scenarios"]["support-instructions"]
    del partial["cost"]
    board = leaderboard({"full": metrics_json("full", 0.9), "partial": partial})
    table = board.table
    assert table["full"]["banking77.accuracy.accuracy"] == 0.9
    assert table["partial"]["support-instructions.accuracy.rouge_l"] is None
    assert table["partial"]["cost.price_per_hour"] is None
    assert table["partial"]["efficiency.parameters"] == 22_700_000


def test_rows_are_sorted_by_mean_win_rate_and_efficiency_does_not_count():
    slow_but_good = metrics_json("good", 0.9, ece=0.02, worst_drop=0.01, latency_p95_ms=500.0)
    fast_but_poor = metrics_json("poor", 0.6, ece=0.2, worst_drop=0.1, latency_p95_ms=5.0)
    middle = metrics_json("middle", 0.8, ece=0.05, worst_drop=0.05)
    board = leaderboard({"poor": fast_but_poor, "middle": middle, "good": slow_but_good})
    assert board.models == ["good", "middle", "poor"]
    rates = {r["model"]: r["mean_win_rate"] for r in board.rows}
    # banking77: accuracy, macro_f1, ece, worst_drop ranked (max_gap and the generation scenario
    # tie for all, half a win each: 5 of the 9 columns).
    assert rates["good"] == pytest.approx((4 * 1.0 + 5 * 0.5) / 9)
    assert rates["poor"] == pytest.approx((4 * 0.0 + 5 * 0.5) / 9)
    assert board.best("efficiency.latency_p95_ms") == {"poor"}
    assert board.best("banking77.accuracy.accuracy") == {"good"}
    assert board.best("banking77.fairness.max_gap") == {"good", "middle", "poor"}


def test_the_leaderboard_serialises_to_json():
    board = leaderboard({"a": metrics_json("a", 0.8), "b": metrics_json("b", 0.7)})
    assert isinstance(board, Leaderboard)
    data = json.loads(json.dumps(board.to_dict()))
    assert data["rows"][0]["model"] == "a" and data["rows"][0]["mean_win_rate"] > 0.5
    assert data["columns"][0] == {
        "key": "banking77.accuracy.accuracy",
        "group": "banking77",
        "family": "accuracy",
        "name": "accuracy",
        "direction": "higher",
    }
