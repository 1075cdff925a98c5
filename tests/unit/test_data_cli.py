"""``fmops data validate``: exit 0 passed, 1 failed, 2 unusable input; the summary on 0 and 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fmops.paths import CONFIGS_DIR, PROJECT_ROOT

FMOPS = Path(sys.executable).parent / "fmops"
LOCAL_YAML = str(CONFIGS_DIR / "local.yaml")
BANKING_TRAIN = PROJECT_ROOT / "include" / "data" / "banking77" / "train.csv"


def fmops(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FMOPS_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [str(FMOPS), "data", "validate", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def broken_train(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The shipped training data with one row's category outside the declared set."""
    frame = pd.read_csv(BANKING_TRAIN, dtype=str, keep_default_na=False)
    frame.loc[7, "category"] = "not_a_banking_intent"
    path = tmp_path_factory.mktemp("broken") / "train.csv"
    frame.to_csv(path, index=False)
    return path, frame.loc[7, "text"]


def test_the_shipped_config_passes(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    result = fmops(tmp_path, "--config", LOCAL_YAML, "--report-dir", str(report_dir))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("data validation PASSED: 0 failed, 1 warned"), result.stdout
    # no library chatter (Great Expectations' logging and progress bars) without --verbose
    assert result.stderr == "", result.stderr[:2000]
    assert "WARN evaluation/normalized_leakage" in result.stdout
    assert f"Report: {report_dir / 'summary.txt'}" in result.stdout
    assert (report_dir / "summary.txt").read_text().strip() in result.stdout
    assert (report_dir / "data_docs" / "index.html").is_file()


def test_a_broken_train_file_fails_with_the_expectation(
    tmp_path: Path, broken_train: tuple[Path, str]
) -> None:
    path, text = broken_train
    result = fmops(tmp_path, "--config", LOCAL_YAML, "--train", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "data validation FAILED: 1 failed" in out
    assert "FAIL train/labels: expect_column_values_to_be_in_set(category)" in out
    assert f"row 7: {text!r}" in out
    assert "No job was started." in out
    assert "Report:" in out


def test_a_broken_train_file_given_as_file_uri(
    tmp_path: Path, broken_train: tuple[Path, str]
) -> None:
    path, _ = broken_train
    evaluation = f"file://{PROJECT_ROOT / 'include' / 'data' / 'banking77' / 'test.csv'}"
    result = fmops(
        tmp_path, "--config", LOCAL_YAML, "--train", f"file://{path}", "--eval", evaluation
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL train/labels" in result.stdout


def test_a_missing_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-train.csv"
    result = fmops(tmp_path, "--config", LOCAL_YAML, "--train", str(missing))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(missing) in result.stderr
    assert "no such file" in result.stderr
    assert "data validation" not in result.stdout


def test_a_missing_evaluation_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-eval.parquet"
    result = fmops(tmp_path, "--config", LOCAL_YAML, "--eval", str(missing))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(missing) in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("train.xlsx", b"PK\x03\x04 not really a workbook", "unsupported format '.xlsx'"),
        ("train.parquet", b"text,category\nhello,greeting\n", "cannot be read as .parquet"),
    ],
)
def test_an_unreadable_format_exits_2(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = fmops(tmp_path, "--config", LOCAL_YAML, "--train", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(path) in result.stderr
    assert message in result.stderr
    assert "data validation" not in result.stdout


def test_a_missing_config_exits_2(tmp_path: Path) -> None:
    result = fmops(tmp_path, "--config", str(tmp_path / "nowhere.yaml"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nowhere.yaml" in result.stderr
