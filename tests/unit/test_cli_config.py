"""``fmops config check FILE``: the console script, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from fmops.paths import CONFIGS_DIR, PROJECT_ROOT, resolve_path

FMOPS = Path(sys.executable).parent / "fmops"


def run_fmops(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    return subprocess.run(
        [str(FMOPS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def write_local_variant(tmp_path: Path, mutate=None) -> Path:
    raw = yaml.safe_load((CONFIGS_DIR / "local.yaml").read_text())
    for key in ("train", "evaluation", "labels"):
        raw["data"][key] = str(resolve_path(raw["data"][key]))
    if mutate:
        mutate(raw)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_console_script_is_installed():
    assert FMOPS.exists(), f"{FMOPS} is missing: is the package installed (pip install -e .)?"


def test_config_check_good_shipped_file():
    result = run_fmops("config", "check", "include/configs/local.yaml", cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert "banking77-intents" in result.stdout


def test_config_check_good_file_in_tmp(tmp_path):
    path = write_local_variant(tmp_path)
    result = run_fmops("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "banking77-intents" in result.stdout


def test_config_check_bad_file_exits_2_with_errors_on_stderr(tmp_path):
    def mutate(raw):
        raw["candidates"][0]["hyperparamters"] = raw["candidates"][0].pop("hyperparameters")
        raw["candidates"][1]["method"] = "qlora"

    path = write_local_variant(tmp_path, mutate)
    result = run_fmops("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "candidates[0].hyperparamters: unknown key" in result.stderr
    assert "candidates[1].method" in result.stderr
    assert "qlora" in result.stderr
    assert "Traceback" not in result.stderr
    assert "banking77-intents" not in result.stdout


def test_config_check_missing_file_exits_2(tmp_path):
    result = run_fmops("config", "check", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "nope.yaml" in result.stderr
    assert "local.yaml" in result.stderr  # the shipped configs are listed
    assert "Traceback" not in result.stderr


def test_config_check_models_subset(tmp_path):
    path = write_local_variant(tmp_path)
    result = run_fmops("config", "check", str(path), "--models", "minilm-lora-r8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "minilm-lora-r8" in result.stdout
    assert "minilm-lora-r16" not in result.stdout


def test_config_check_unknown_model_exits_2(tmp_path):
    path = write_local_variant(tmp_path)
    result = run_fmops("config", "check", str(path), "--models", "gpt-5", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "unknown candidate(s) ['gpt-5']" in result.stderr


def test_config_check_missing_label_file_exits_2(tmp_path):
    path = write_local_variant(
        tmp_path, lambda raw: raw["data"].update(labels=str(tmp_path / "no-labels.json"))
    )
    result = run_fmops("config", "check", str(path), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "data.labels" in result.stderr
    assert "no-labels.json" in result.stderr
