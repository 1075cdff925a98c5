"""What a finished job cost, recorded with its candidate, and the run's total."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fmops.pipeline import job_cost
from fmops.registry.card import cost_lines
from fmops.registry.runs import run_costs

PRICE = {
    "instance_type": "ml.g5.xlarge",
    "usd_per_hour": 1.2,
    "price_source": "page",
    "instances": 2,
}


def training(**description) -> tuple[dict, dict]:
    return {"kind": "training", "price": PRICE}, description


def test_training_cost_is_billed_seconds_times_price_times_instances():
    cost = job_cost(*training(TrainingTimeInSeconds=1800, BillableTimeInSeconds=1800))
    assert cost["usd"] == pytest.approx(1800 / 3600 * 1.2 * 2)
    assert cost["billed_seconds"] == 1800
    assert "spot_saving_percent" not in cost


def test_managed_spot_saving_comes_from_billed_against_trained_seconds():
    cost = job_cost(
        *training(
            EnableManagedSpotTraining=True, TrainingTimeInSeconds=1000, BillableTimeInSeconds=300
        )
    )
    assert cost["spot_saving_percent"] == 70.0
    assert cost["usd"] == pytest.approx(300 / 3600 * 1.2 * 2)


def test_processing_cost_from_start_and_end_times_as_the_trigger_passes_them():
    start = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    end = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    handle = {"kind": "processing", "price": {**PRICE, "instances": 1}}
    for description in (
        {"ProcessingStartTime": start, "ProcessingEndTime": end},
        {"ProcessingStartTime": start.isoformat(), "ProcessingEndTime": end.isoformat()},
    ):
        assert job_cost(handle, description)["usd"] == pytest.approx(0.6)


def test_no_price_means_no_cost_and_no_billed_time_means_unknown():
    assert job_cost({"kind": "training"}, {"BillableTimeInSeconds": 10}) is None
    unknown = job_cost(*training())
    assert unknown["usd"] is None and unknown["billed_seconds"] is None


def test_the_run_total_and_the_model_card_lines():
    trained = [
        {"job_name": "train-a", "candidate": "a", "cost": job_cost(*training(
            EnableManagedSpotTraining=True, TrainingTimeInSeconds=3600, BillableTimeInSeconds=1800
        ))},
        {"job_name": "train-b", "candidate": "b", "cost": job_cost(*training())},
    ]  # fmt: skip
    evaluations = [{"job_name": "eval-a", "candidate": "a", "cost": None}]
    costs = run_costs(trained, evaluations)
    assert costs["total_usd"] == pytest.approx(1.2)
    assert costs["unknown"] == ["train-b"]
    text = cost_lines(costs)
    assert "- `train-a` (a): $1.2000 = 1800 s x $1.2/h x 2 ml.g5.xlarge, spot saving 50.0%" in text
    assert "`train-b` (b): no billed time reported" in text
    assert text.endswith("- run total: $1.2000 (1 job(s) without a billed time)")
    assert run_costs([{"job_name": "x", "candidate": "x", "cost": None}], []) is None
    assert "nothing was billed" in cost_lines(None)


def test_the_model_card_names_the_instance_and_the_fallbacks():
    from fmops.registry.card import instance_line

    assert instance_line({"job_name": "train-a"}) == ""
    line = instance_line(
        {
            "instance": {
                "instance_type": "ml.g5.xlarge",
                "reason": "the cheapest that fits",
                "tried": [{"instance_type": "ml.g4dn.xlarge", "why": "CapacityError: none\nmore"}],
            }
        }
    )
    assert line == (
        "\n- instance `ml.g5.xlarge`: the cheapest that fits"
        "\n  - fell back from `ml.g4dn.xlarge`: CapacityError: none"
    )
