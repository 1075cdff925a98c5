"""Test-wide settings: every test runs against throwaway state, never a developer's `.fmops/`.

Airflow reads its configuration when it is first imported, so the environment is set here, at
import time of the conftest, before any test module imports Airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_STATE = Path(tempfile.mkdtemp(prefix="fmops-tests-"))
# A session leaves gigabytes there (jobs, models, MLflow artifacts): gone when pytest exits.
atexit.register(shutil.rmtree, _STATE, ignore_errors=True)

os.environ["FMOPS_HOME"] = str(_STATE / "fmops")
os.environ["AIRFLOW_HOME"] = str(_STATE / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("MLFLOW_TRACKING_URI", None)
# What the tests, and the servers, jobs and commands they start, write to the temp folder
# (MLflow's locks, torchrun's folders, Chromium's profiles, reports a command puts in a temp
# folder) goes with the session's state; pytest's tmp_path stays in the system's temp folder,
# where pytest keeps the last sessions' (screenshots and logs to look at).
os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
(_STATE / "tmp").mkdir()
os.environ["TMPDIR"] = tempfile.tempdir = str(_STATE / "tmp")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for the whole session."""
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True,
        capture_output=True,
        cwd=PROJECT_ROOT,
    )
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(PROJECT_ROOT / "dags"))


# `make test` (pytest -n 2) runs four scopes on two workers, in this order:
# - "serial": the integration tests, on one worker, in their usual order, as without xdist;
# - "team-stack": the team stack's module, on the other. It starts a stack of its own (own
#   FMOPS_HOME, free ports, its own config's endpoint port) and spends most of its time waiting for
#   its faults (heartbeat timeouts, an MLflow outage), so it shares the machine without crowding;
# - "jobs": the job scripts' tests (tests/jobs: each runs train.py or evaluate.py in a temporary
#   folder of its own), and then
# - "unit": the unit tests, on whichever worker is free first (the team stack's, in practice).
# The serial scope is the longest (about 57% of the tests' time when measured with --durations on
# 2026-12-07); the job scripts' tests (about 4.5 minutes) moved off it to even the two workers.
# (A scheduler of our own: xdist 3.8's --dist loadgroup leaves the groups of its xdist_group marks
# unapplied under pytest 9.2; its load-scope scheduler with our scopes does it. Its reordering of
# scopes by size is turned off, so the two long scopes start first.)
BESIDE = {"test_team_stack.py": "team-stack"}


def _scope_of(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/unit/"):
        return "unit"
    if path.startswith("tests/jobs/"):
        return "jobs"
    return BESIDE.get(path.rsplit("/", 1)[-1], "serial")


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class Beside(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope_of(nodeid)

    config.option.loadscopereorder = False  # collection order: serial, team-stack, jobs, unit
    return Beside(config, log)
