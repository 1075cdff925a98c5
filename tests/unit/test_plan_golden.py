"""``fmops plan`` for both shipped configs, pinned against golden files.

The golden files under ``tests/golden/`` were written by the code before the ``Target`` seam
(fmops.targets) replaced the branches on the target's name; they pin the requests, instance
choices, costs and the endpoint plan a user sees, in JSON and as text. Machine-specific paths
are replaced by placeholders: the state folder, the project, and the venv's site-packages.

Regenerate, only for a change that is meant to alter the plan, with
``python tests/unit/test_plan_golden.py --write`` and review the diff.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = PROJECT_ROOT / "tests" / "golden"
CONFIGS = ("local", "sagemaker.example")
# Keys a plan item may carry now that the golden file did not: every job plan is one record
# (fmops.jobs.records.JobPlan), so the sagemaker target's evaluation plans gained the pipeline's
# name and the run's force flag that its training plans and the local target's plans had.
ADDED_KEYS = frozenset({"pipeline", "force"})


def _plan(config: str, fmt: str, state: Path) -> str:
    env = {
        **os.environ,
        "FMOPS_HOME": str(state),
        "AWS_DEFAULT_REGION": "us-east-1",
        "MLFLOW_TRACKING_URI": "",
    }
    env.pop("MLFLOW_TRACKING_URI")
    args = [sys.executable, "-m", "fmops.cli", "plan", "--config"]
    args += [str(PROJECT_ROOT / "include" / "configs" / f"{config}.yaml")]
    args += ["--json"] if fmt == "json" else []
    done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def normalized(text: str, state: Path) -> str:
    """The plan with this machine's paths replaced by placeholders."""
    purelib = sysconfig.get_paths()["purelib"]
    for path, name in (
        (str(state), "<FMOPS_HOME>"),
        (purelib, "<SITE_PACKAGES>"),
        (str(PROJECT_ROOT), "<PROJECT>"),
    ):
        text = text.replace(path, name)
    return text


def _items(plan: dict) -> list[dict]:
    return plan["training"] + plan["evaluation"]


def _without_cache_keys(plan: dict) -> dict:
    """The plan less each item's cache key, and less the modification times in a local model's
    fingerprint: the key hashes the cache fields, whose model URIs name this machine's paths
    and whose fingerprints the times its files were installed (the rest of the fields is
    compared, normalized)."""
    for item in _items(plan):
        item.pop("cache_key", None)
        model = item.get("cache_fields", {}).get("model")
        if isinstance(model, list):
            item["cache_fields"]["model"] = [
                [*entry[:2], "<mtime>"] if isinstance(entry, list) and len(entry) == 3 else entry
                for entry in model
            ]
    return plan


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """A fresh state folder (no registry, so no champion to evaluate) of this test's own."""
    return tmp_path_factory.mktemp("fmops-golden-plan")


@pytest.mark.parametrize("config", CONFIGS)
def test_plan_json_matches_the_golden_file(config, state):
    from fmops.jobs import cache

    raw = json.loads(_plan(config, "json", state))
    for item in _items(raw):
        if "cache_key" in item:
            assert item["cache_key"] == cache.key_of(item["cache_fields"]), item["base_name"]
    now = _without_cache_keys(json.loads(normalized(json.dumps(raw), state)))
    golden = _without_cache_keys(json.loads((GOLDEN / f"plan-{config}.json").read_text()))
    for item, before in zip(_items(now), _items(golden), strict=True):
        extra = set(item) - set(before)
        assert extra <= ADDED_KEYS, f"{item['base_name']}: new keys {sorted(extra)}"
        for key in extra:
            item.pop(key)
    assert now == golden


@pytest.mark.parametrize("config", CONFIGS)
def test_plan_text_matches_the_golden_file(config, state):
    now = normalized(_plan(config, "text", state), state)
    assert now == (GOLDEN / f"plan-{config}.txt").read_text()


def write() -> None:
    """Write the golden files from the code as it is now."""
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    for config in CONFIGS:
        with tempfile.TemporaryDirectory(prefix="fmops-golden-plan-") as folder:
            state = Path(folder)
            raw = _plan(config, "json", state)
            (GOLDEN / f"plan-{config}.json").write_text(normalized(raw, state))
            text = _plan(config, "text", state)
            (GOLDEN / f"plan-{config}.txt").write_text(normalized(text, state))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/unit/test_plan_golden.py --write")
    write()
