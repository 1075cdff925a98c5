"""The evaluation stage around the job: scenarios in the config and staged for evaluate.py, the
champion as an evaluation entry, and select (metrics + per-example scores -> the gate's
decision, the cost estimate, the report in MLflow)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_gate import metrics_json

from fmops.config import CONFIGS_DIR, ConfigError, parse_config
from fmops.evaluation import scenarios, selection

LOCAL = CONFIGS_DIR / "local.yaml"
N = 400


def raw_config(**evaluation: Any) -> dict[str, Any]:
    raw = yaml.safe_load(LOCAL.read_text())
    raw["evaluation"] = {**raw["evaluation"], **evaluation}
    return raw


def config_of(raw: dict[str, Any]):
    return parse_config(copy.deepcopy(raw), "test.yaml")


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config_of(raw)
    return "\n".join(info.value.problems)


# -- config ---------------------------------------------------------------------------------------


def test_default_is_one_heldout_scenario_with_every_family():
    raw = raw_config()
    del raw["evaluation"]["scenarios"], raw["evaluation"]["gate"]
    config = config_of(raw)
    (only,) = config.evaluation.scenarios
    assert (only.name, only.data) == ("heldout", "heldout")
    assert only.families == ["accuracy", "calibration", "robustness", "fairness"]
    assert selection.default_primary(config) == "heldout.accuracy.accuracy"


@pytest.mark.parametrize(
    ("evaluation", "expected"),
    [
        ({"scenarios": [{"name": "a"}, {"name": "a", "data": "x.csv"}]}, "repeated: ['a']"),
        ({"scenarios": [{"name": "a"}, {"name": "b"}]}, "only one scenario can use data: heldout"),
        (
            {"gate": {"bounds": [{"metric": "nosuch.accuracy.accuracy", "min": 0.5}]}},
            "names no scenario; scenarios: ['banking77']",
        ),
        ({"scenarios": [{"name": "a", "families": ["robustness"]}]}, "must include accuracy"),
        ({"metric": "accuracy"}, "unknown key"),
    ],
)
def test_evaluation_config_errors(evaluation, expected):
    assert expected in problems(raw_config(**evaluation))


def test_reserved_candidate_names():
    raw = raw_config()
    raw["candidates"][0]["name"] = "champion"
    assert "reserved" in problems(raw)


# -- scenarios staged for the job -----------------------------------------------------------------


def test_specs_fill_the_defaults(tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text("text,label\nhello,card_arrival\n")
    config = config_of(
        raw_config(
            scenarios=[
                {"name": "banking77", "data": "heldout"},
                {"name": "extra", "data": str(extra), "sample_size": 1, "seed": 3},
                {
                    "name": "chat",
                    "data": "include/data/scenarios/banking77-instructions.jsonl",
                    "task": "generation",
                },
            ]
        )
    )
    heldout, other, chat = (scenarios.spec(config, s) for s in config.evaluation.scenarios)
    assert heldout["folder"] == "." and heldout["input_column"] == "text"
    assert heldout["target_column"] == "category"  # the data block's label column
    assert (other["folder"], other["input_column"], other["target_column"]) == (
        "extra",
        "text",
        "label",
    )
    assert (other["sample_size"], other["seed"]) == (1, 3)
    # Generation measures calibration too (the answer's sequence probability against exact match).
    assert chat["task"] == "generation" and "calibration" in chat["families"]
    assert (chat["input_column"], chat["target_column"]) == ("prompt", "completion")
    recipe = scenarios.recipe(config)
    assert set(recipe["files"]) == {"extra", "chat"}
    extra.write_text("text,label\nhello again,card_arrival\n")
    assert scenarios.recipe(config)["files"]["extra"] != recipe["files"]["extra"]


def test_write_stages_files_and_the_spec(tmp_path):
    config = config_of(
        raw_config(
            scenarios=[
                {"name": "banking77", "data": "heldout"},
                {
                    "name": "chat",
                    "data": "include/data/scenarios/banking77-instructions.jsonl",
                    "task": "generation",
                },
            ]
        )
    )
    written = scenarios.write(config, tmp_path)
    assert json.loads((tmp_path / scenarios.SPEC_FILE).read_text()) == written
    lines = (tmp_path / "chat" / "data.jsonl").read_text().splitlines()
    assert len(lines) == 60 and {"prompt", "completion"} <= set(json.loads(lines[0]))


def test_scenario_file_errors_name_the_fix(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("question,answer\nhi,card_arrival\n")
    config = config_of(raw_config(scenarios=[{"name": "b", "data": str(bad)}], gate={}))
    with pytest.raises(scenarios.ScenarioError, match=r"no column\(s\) \['text', 'label'\]"):
        scenarios.write(config, tmp_path / "out")
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("text,label\nhi,not_an_intent\n")
    config = config_of(raw_config(scenarios=[{"name": "u", "data": str(unknown)}], gate={}))
    with pytest.raises(scenarios.ScenarioError, match="not_an_intent"):
        scenarios.write(config, tmp_path / "out2")
    config = config_of(raw_config(scenarios=[{"name": "h", "task": "generation"}], gate={}))
    with pytest.raises(scenarios.ScenarioError, match="held-out data is classification"):
        scenarios.spec(config, config.evaluation.scenarios[0])


# -- select ---------------------------------------------------------------------------------------


def evaluation(tmp_path: Path, name: str, correct: list[float], **metrics: Any) -> dict:
    """An evaluation outcome as await_evaluation returns it, with its files on disk."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    accuracy = sum(correct) / len(correct)
    document = metrics_json(name, accuracy, **metrics)
    document["efficiency"].update(throughput_per_s=50.0, parameters=22_700_000)
    (folder / "per_example.json").write_text(json.dumps({"banking77": {"accuracy": correct}}))
    return {
        "candidate": name,
        "job_name": f"eval-{name}",
        "output_uri": f"file://{folder}",
        "metrics": document,
        "zero_shot": name == "baseline",
    }


def pattern(rate: float, n: int = N) -> list[float]:
    """n per-example correctness marks with ``rate`` right, spread evenly."""
    return [1.0 if (i * rate) % 1 + rate >= 1 else 0.0 for i in range(n)]


@pytest.fixture
def pipeline(request) -> Any:
    """The local config under a pipeline (MLflow experiment) and model name of the test's own."""
    import hashlib

    raw = raw_config()
    raw["pipeline"] = "select-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]
    raw["registry"]["model_name"] = raw["pipeline"]
    return config_of(raw)


def test_winner_without_a_champion_is_promoted_and_the_report_is_in_mlflow(pipeline, tmp_path):
    from fmops.registry import runs

    full, baseline = pattern(0.85), pattern(0.62)
    evaluations = [
        evaluation(tmp_path, "full", full),
        evaluation(tmp_path, "lora", pattern(0.80)),
        evaluation(tmp_path, "baseline", baseline),
    ]
    decision = selection.select(pipeline, evaluations, "fmops_finetune", "run-1")
    assert decision["winner"] == "full" and decision["promote"] is True
    assert decision["metric"] == "banking77.accuracy.accuracy"
    assert decision["score"] == sum(full) / N
    assert decision["gain_over_baseline"] == pytest.approx(sum(full) / N - sum(baseline) / N)
    assert any("no champion is registered" in r for r in decision["reasons"])
    roles = {r["candidate"]: r["role"] for r in decision["leaderboard"]}
    assert roles == {"full": "candidate", "lora": "candidate", "baseline": "baseline"}
    # the report: HTML and plots on the DAG run's parent run, and its address
    client, _, run = runs.parent_run(pipeline, "fmops_finetune", "run-1")
    names = {a.path for a in client.list_artifacts(run, selection.REPORT_FOLDER)}
    assert f"{selection.REPORT_FOLDER}/{selection.REPORT_NAME}" in names
    assert any(n.endswith(".png") for n in names)
    assert decision["report_url"].endswith(f"{run}/artifacts/evaluation/report.html")


def test_a_clearly_better_winner_beats_the_champion(pipeline, tmp_path):
    evaluations = [
        evaluation(tmp_path, "full", pattern(0.90)),
        evaluation(tmp_path, "champion", pattern(0.70)),
    ]
    decision = selection.select(pipeline, evaluations, "fmops_finetune", "run-2")
    assert decision["promote"] is True
    assert decision["gate"]["champion"]["result"]["lower"] > 0


def test_a_tie_with_the_champion_is_not_promoted(pipeline, tmp_path):
    same = pattern(0.85)
    evaluations = [
        evaluation(tmp_path, "full", same),
        evaluation(tmp_path, "champion", list(same)),
    ]
    decision = selection.select(pipeline, evaluations, "fmops_finetune", "run-3")
    assert decision["winner"] == "full" and decision["promote"] is False
    assert any("does not clear the margin" in r for r in decision["reasons"])


def test_no_candidate_within_the_bounds_is_an_error_with_the_reasons(pipeline, tmp_path):
    evaluations = [evaluation(tmp_path, "full", pattern(0.5))]  # the config asks >= 0.75
    with pytest.raises(selection.SelectionError, match="no candidate passes every bound"):
        selection.select(pipeline, evaluations, "fmops_finetune", "run-4")


def test_skipped_scenarios_are_noted_not_ranked(pipeline, tmp_path):
    full = evaluation(tmp_path, "full", pattern(0.9))
    full["metrics"]["scenarios"]["chat"] = {"task": "generation", "skipped": "a classifier"}
    decision = selection.select(pipeline, [full], "fmops_finetune", "run-5")
    assert any("full skipped scenario chat: a classifier" in r for r in decision["reasons"])
    assert not any(c["metric"].startswith("chat.") for c in decision["gate"]["checks"]["full"])


def test_cost_estimate_arithmetic(pipeline):
    """The cost family is the fleet fmops.sizing chooses from the measured request cost: a
    classifier whose one request takes 30 ms of one core is served from a CPU type, and 1,000
    requests at the peak cost the fleet's hour over the peak's hour of requests."""
    efficiency = {
        "parameters": 22_700_000,
        "throughput_per_s": 50.0,
        "threads": 2,
        "request_ms_p50": 30.0,
        "request_ms_p95": 40.0,
        "latency_p50_ms": 9.0,  # not a sizing input: left off the request profile
    }
    cost = selection.cost_estimate(pipeline, efficiency)
    assert cost["instance_type"].startswith(("ml.c6i.", "ml.c7i.", "ml.m6i."))
    peak = cost["peak_rps"]
    expected = cost["price_per_hour"] * cost["instance_count"] / (peak * 3600) * 1000
    assert cost["usd_per_1k_requests"] == pytest.approx(expected, abs=1e-6)  # rounded to 6
    # one core answers 1000 / 30 = 33.3 requests/s, 70% of it planned for: 23.3 per core
    cores = 1 if cost["instance_type"].endswith(".large") else None
    assert cores == 1 and cost["instance_count"] == max(1, -(-peak // (1000 / 30 * 0.7)))
    assert cost["latency_ms"] == 40.0  # the p95 of one request, on a core like the evaluation's
    assert (
        cost["estimate"].startswith("an estimate (")
        and "measured by the evaluation" in (cost["estimate"])
    )
    assert cost["request_profile"] == {
        k: efficiency[k]
        for k in ("parameters", "throughput_per_s", "threads", "request_ms_p50", "request_ms_p95")
    }
    assert "no cost estimate" in selection.cost_estimate(pipeline, {})["estimate"]


def test_flat_metrics_names():
    from fmops.registry import runs

    flat = runs.flat_metrics(metrics_json("m", 0.8))
    assert flat["banking77.accuracy.accuracy"] == 0.8
    assert flat["banking77.calibration.ece"] == 0.04
    assert flat["banking77.robustness.typos.drop"] == 0.03
    assert flat["banking77.fairness.names.gap"] == 0.01
    assert "efficiency.latency_p95_ms" in flat
    assert all(isinstance(v, float) for v in flat.values())


# -- the champion as an evaluation entry ----------------------------------------------------------


def test_champion_entry_follows_the_alias(pipeline, tmp_path):
    from fmops.registry import runs, tracking
    from fmops.registry.review import champion_entry

    assert champion_entry(pipeline) == []  # nothing registered
    client = tracking.client(pipeline)
    name = pipeline.registry.model_name
    client.create_registered_model(name)
    artifacts = tmp_path / "model.tar.gz"
    artifacts.write_bytes(b"x")
    run = client.create_run(runs._experiment_id(client, pipeline.pipeline)).info.run_id
    version = client.create_model_version(
        name, f"runs:/{run}/model", run_id=run, tags={"fmops.model_artifacts": artifacts.as_uri()}
    )
    client.set_registered_model_alias(name, tracking.CHAMPION, version.version)
    assert champion_entry(pipeline) == [("champion", artifacts.as_uri(), False)]
    no_champion = pipeline.model_copy(
        update={"evaluation": pipeline.evaluation.model_copy(update={"champion": False})}
    )
    assert champion_entry(no_champion) == []
    artifacts.unlink()  # the state folder was cleaned: the gate goes without a champion
    assert champion_entry(pipeline) == []
