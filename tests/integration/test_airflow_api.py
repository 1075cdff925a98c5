"""The local stack as ``make up`` starts it, driven through Airflow's REST API (v2) and its UI.

``fmops stack up`` starts ``airflow standalone`` and ``mlflow server`` on free 127.0.0.1 ports
with a state folder of their own and the cron of include/configs/schedule.toml turned on
(``FMOPS_FINETUNE_CRON``, as the README's "Scheduled runs" shows), so that ``fmops_finetune``
has its production schedule: cron or training-data asset. Everything about the runs is then
read and done through the api-server (no database access, no in-process DAG):

- both DAGs parse without import errors; the cron's catch-up run appears and is stopped;
- the trigger form's params carry titles and sections;
- a triggered ``fmops_finetune`` run (tests/configs/tiny.yaml, one candidate, approval ``auto``)
  trains, evaluates and registers under the real scheduler; its task states, the leaderboard,
  the registration and the registered-model asset event are read back, and its mapped task
  instances are named after their candidates;
- an asset event for the training data starts a run (stopped at once);
- headless Chromium logs in through the UI's login page and opens the trigger form (a
  screenshot goes to ``test-artifacts/``).

``fmops stack down`` ends the stack, and no process of it may be left.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow_rest import (
    RestApi,
    clean_env,
    free_port,
    label,
    password_file_credentials,
    port_open,
    session_members,
)

from fmops.demo import ACTIVE_STATES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = "tests/configs/tiny.yaml"
CANDIDATE = "tiny-full"
CONF = {"config_file": TINY, "models": [CANDIDATE], "approval": "auto"}
MODEL_NAME = "fmops-e2e-classifier"  # registry.model_name in tests/configs/tiny.yaml
FINETUNE, DEPLOY = "fmops_finetune", "fmops_deploy"
START_TIMEOUT_SECONDS = 420
RUN_TIMEOUT_SECONDS = 15 * 60
SCREENSHOT = PROJECT_ROOT / "test-artifacts" / "airflow-trigger-form.png"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(RUN_TIMEOUT_SECONDS + 600)]


@dataclass
class Stack:
    """The stack of one ``fmops stack up``, with its own FMOPS_HOME and ports."""

    home: Path
    airflow_port: int
    mlflow_port: int
    db_port: int
    cron: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **clean_env(),
            "FMOPS_HOME": str(self.home),
            "FMOPS_AIRFLOW_PORT": str(self.airflow_port),
            "FMOPS_MLFLOW_PORT": str(self.mlflow_port),
            "FMOPS_AIRFLOW_DB_PORT": str(self.db_port),
            # The local stack leaves the cron part of the schedule off unless this is set.
            "FMOPS_FINETUNE_CRON": self.cron,
            # Scheduled and asset-triggered runs use the small config, should one get far.
            "FMOPS_FINETUNE_CONFIG": TINY,
        }

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.airflow_port}"

    @property
    def password_file(self) -> Path:  # fmops.stack.password_file() under this FMOPS_HOME
        return self.home / "airflow" / "simple_auth_manager_passwords.json.generated"

    def fmops(self, action: str, timeout: float) -> subprocess.CompletedProcess:
        """`fmops stack ACTION` (what `make up` and `make down` run)."""
        return self.cli("stack", action, timeout=timeout)

    def cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        """The `fmops` command in this stack's environment."""
        return subprocess.run(
            [str(BIN / "fmops"), *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def recorded(self) -> dict[str, dict[str, Any]]:
        path = self.home / "stack.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.home / "logs" / f"{name}.log"
        if not path.exists():
            return f"({path} does not exist)"
        return f"--- tail of {path}\n" + "\n".join(path.read_text().splitlines()[-lines:])


@pytest.fixture(scope="module")
def schedule():
    """fmops_finetune's schedule settings as include/configs/schedule.toml ships them."""
    from fmops.airflow.schedule import finetune_schedule

    settings = finetune_schedule()
    assert settings.cron and settings.training_data, f"cron and asset expected: {settings}"
    return settings


@pytest.fixture(scope="module")
def stack(schedule) -> Iterator[Stack]:
    # A state folder of its own, not the session's FMOPS_HOME: the in-process dag.test() tests
    # use that one's MLflow store and job cache, and a registered champion or a cached job would
    # change what this run does. It lies inside the session's temporary folder (conftest.py),
    # which is removed when pytest exits, and never in the developer's .fmops.
    session_tmp = Path(os.environ["FMOPS_HOME"]).parent
    session_tmp.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="stack-", dir=session_tmp))
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    airflow_port, mlflow_port, db_port = sorted(ports)
    local = Stack(home, airflow_port, mlflow_port, db_port, cron=schedule.cron)
    try:
        up = local.fmops("up", timeout=START_TIMEOUT_SECONDS)
        assert up.returncode == 0, (
            f"`fmops stack up` failed ({up.returncode}):\n{up.stdout}\n{up.stderr[-3000:]}\n"
            f"{local.log_tail('postgres')}\n{local.log_tail('airflow')}\n{local.log_tail('mlflow')}"
        )
        assert set(local.recorded()) == {"postgres", "airflow", "mlflow"}, local.recorded()
        print(f"\nstack up: Airflow {local.airflow_url}, FMOPS_HOME {home}", flush=True)
        yield local
    finally:
        _stop_stack(local)


def _delete_endpoints(local: Stack) -> list[str]:
    """Delete every local endpoint a run of this stack started (`fmops stack down` leaves
    endpoints serving on purpose); returns their names."""
    folder = local.home / "endpoints"
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    live = []
    for name in names:
        deleted = local.cli("endpoint", "delete", name, timeout=120)
        if f"no endpoint {name!r}" in deleted.stderr:
            continue  # deleted already (its folder stays)
        assert deleted.returncode == 0, f"endpoint {name}: {deleted.stdout}{deleted.stderr}"
        live.append(name)
    return live


def _stop_stack(local: Stack) -> None:
    """``fmops stack down``, then: no process of either server's session, both ports closed;
    and no endpoint of the stack's runs left serving."""
    sessions = {int(item["pid"]) for item in local.recorded().values()}
    try:
        endpoints = _delete_endpoints(local)
        print(f"endpoints still serving at teardown, now deleted: {endpoints}", flush=True)
    finally:  # the stack goes down even when an endpoint cannot be deleted
        down = local.fmops("down", timeout=180)
    deadline = time.monotonic() + 30
    while (left := session_members(sessions)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert down.returncode == 0, f"`fmops stack down` failed:\n{down.stdout}\n{down.stderr}"
    assert not left, "processes of the stack outlived `fmops stack down`:\n" + "\n".join(left)
    for port in (local.airflow_port, local.mlflow_port, local.db_port):
        assert not port_open(port), f"127.0.0.1:{port} still accepts connections after down"
    assert not (local.home / "stack.json").exists(), "stack.json outlived `fmops stack down`"


def _stop_run(api: RestApi, dag_id: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Mark a run failed, as the UI's "Mark as failed" does, and wait until none of its tasks has
    work ahead of it. The run stays failed: the stack's Airflow is on PostgreSQL, where the
    scheduler holds a run it examines FOR UPDATE (on SQLite, a scheduling loop that had read the
    run as running set it to `success` after the mark, once in 1,361 tests)."""
    stopped = api.call("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"})
    assert stopped["state"] == "failed", stopped
    deadline = time.monotonic() + timeout
    while active := [
        label(ti) for ti in api.task_instances(dag_id, run_id) if ti["state"] in ACTIVE_STATES
    ]:
        assert time.monotonic() < deadline, f"{dag_id} {run_id}: still active after stop: {active}"
        time.sleep(1)
    return stopped


def _run_report(api: RestApi, dag_id: str, run_id: str) -> str:
    """Each task instance's state, try and host, with the log tail of each that has work ahead
    of it: what a run that does not finish is waiting on."""
    lines = []
    for ti in api.task_instances(dag_id, run_id):
        lines.append(
            f"{label(ti)}: {ti['state']} (try {ti['try_number']}, host {ti.get('hostname')!r}, "
            f"queued {ti.get('queued_when')}, started {ti.get('start_date')})"
        )
        if ti["state"] in ACTIVE_STATES:
            lines.append(api.log_tail(ti))
    return "\n".join(lines)


def _tries(api: RestApi, ti: dict[str, Any]) -> str:
    """Every try's log of a task instance: why each ended."""
    return "\n".join(
        f"--- {ti['task_id']} try {number}:\n" + api.log_tail({**ti, "try_number": number}, 60)
        for number in range(1, ti["try_number"] + 1)
    )


@pytest.fixture(scope="module")
def api(stack: Stack) -> RestApi:
    """A logged-in client, once both DAGs are parsed without import errors."""
    client = RestApi(
        stack.airflow_url,
        password_file_credentials(stack.password_file),
        stack.home / "logs" / "airflow.log",
    )
    client.login()
    deadline = time.monotonic() + 180
    while True:
        errors = client.get("/importErrors")
        assert errors["total_entries"] == 0, "DAG import errors:\n" + "\n\n".join(
            f"{e['filename']}:\n{e['stack_trace']}" for e in errors["import_errors"]
        )
        listed = {d["dag_id"] for d in client.get("/dags", dag_id_pattern="fmops")["dags"]}
        if {FINETUNE, DEPLOY} <= listed:
            return client
        assert time.monotonic() < deadline, f"DAGs not parsed within 180 s; listed: {listed}"
        time.sleep(2)


@pytest.fixture(scope="module")
def finetune_run(api: RestApi) -> dict[str, Any]:
    """One fmops_finetune run triggered through the API and followed to its end."""
    # With catchup=False, Airflow starts a run for the latest cron slot that has passed as soon
    # as the DAG appears (CronTriggerTimetable); under max_active_runs=1 it would hold the
    # triggered run back. The next run in the future means the scheduler has made that one.
    deadline = time.monotonic() + 120
    while True:
        next_run = api.get(f"/dags/{FINETUNE}")["next_dagrun_run_after"]
        if next_run and datetime.fromisoformat(next_run) > datetime.now(UTC):
            break
        assert time.monotonic() < deadline, f"next_dagrun_run_after still {next_run!r}"
        time.sleep(1)
    (catch_up,) = api.get(f"/dags/{FINETUNE}/dagRuns", run_type="scheduled")["dag_runs"]
    print(f"stopping the catch-up run {catch_up['dag_run_id']}", flush=True)
    _stop_run(api, FINETUNE, catch_up["dag_run_id"])

    # Paused, fmops_deploy keeps the registration's asset event without deploying anything.
    paused = api.call("PATCH", f"/dags/{DEPLOY}", json={"is_paused": True})
    assert paused["is_paused"] is True, paused

    run = api.call("POST", f"/dags/{FINETUNE}/dagRuns", json={"logical_date": None, "conf": CONF})
    run_id = run["dag_run_id"]
    assert run["run_type"] == "manual" and run["conf"] == CONF, run
    started = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        run = api.get(f"/dags/{FINETUNE}/dagRuns/{run_id}")
        instances = api.task_instances(FINETUNE, run_id)
        for ti in sorted(instances, key=lambda t: (t["start_date"] or "~", t["task_id"])):
            state = ti["state"] or "none"
            if seen.get(label(ti)) != state:
                seen[label(ti)] = state
                print(f"  {time.monotonic() - started:6.1f}s  {label(ti):32} {state}", flush=True)
        if run["state"] in ("success", "failed"):
            break
        assert time.monotonic() - started < RUN_TIMEOUT_SECONDS, (
            f"{FINETUNE} {run_id} still {run['state']} after {RUN_TIMEOUT_SECONDS} s: {seen}"
        )
        time.sleep(3)
    if run["state"] != "success":
        failed = [ti for ti in instances if ti["state"] == "failed"]
        logs = "\n\n".join(f"--- {label(ti)}:\n{api.log_tail(ti)}" for ti in failed)
        pytest.fail(
            f"{FINETUNE} {run_id} ended {run['state']}; failed tasks "
            f"{[label(ti) for ti in failed]}; states {seen}\n{logs}"
        )
    print(f"{FINETUNE} {run_id}: success in {time.monotonic() - started:.0f} s", flush=True)
    return {"run": run, "run_id": run_id, "instances": instances}


def test_the_admin_password_is_in_no_log_and_only_its_user_reads_it(stack, api):
    """fmops writes the admin's password before Airflow starts (0600), so that Airflow does not
    generate one and print it to the stack's log; the logs are the user's alone too."""
    (password,) = json.loads(stack.password_file.read_text()).values()
    assert len(password) >= 16
    assert stack.password_file.stat().st_mode & 0o777 == 0o600
    database_password = (stack.home / "airflow" / "postgres.password").read_text().strip()
    assert len(database_password) >= 24
    assert (stack.home / "airflow" / "postgres.password").stat().st_mode & 0o777 == 0o600
    for name in ("postgres", "airflow", "mlflow"):
        log = stack.home / "logs" / f"{name}.log"
        assert log.stat().st_mode & 0o777 == 0o600, log
        assert password not in log.read_text(), f"the admin password is in {log}"
        assert database_password not in log.read_text(), f"the database password is in {log}"


def test_airflow_keeps_its_metadata_on_the_stacks_postgresql(stack, api):
    """The DAGs Airflow lists are rows of the stack's PostgreSQL (not of a SQLite file)."""
    import psycopg2

    password = (stack.home / "airflow" / "postgres.password").read_text().strip()
    connection = psycopg2.connect(
        host="127.0.0.1", port=stack.db_port, user="airflow", password=password, dbname="airflow"
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT dag_id FROM dag WHERE dag_id IN (%s, %s)", (FINETUNE, DEPLOY))
            assert sorted(row[0] for row in cursor.fetchall()) == sorted([FINETUNE, DEPLOY])
    finally:
        connection.close()
    assert not (stack.home / "airflow" / "airflow.db").exists()


def test_the_trigger_form_params_have_titles_and_sections(api):
    params = api.get(f"/dags/{FINETUNE}/details")["params"]
    schemas = {name: param["schema"] for name, param in params.items()}
    for name, (title, section) in {
        "config_file": ("Pipeline config", "What to run"),
        "models": ("Candidates", "What to run"),
        "approval": ("Approval", "Review"),
    }.items():
        assert schemas[name]["title"] == title, schemas[name]
        assert schemas[name]["section"] == section, schemas[name]
    sections = {schema.get("section") for schema in schemas.values()}
    assert sections == {"What to run", "Cache and dry run", "Review"}, schemas
    untitled = [name for name, schema in schemas.items() if not schema.get("title")]
    assert not untitled, f"params without a title on the form: {untitled}"
    undescribed = [name for name, param in params.items() if not param.get("description")]
    assert not undescribed, f"params without a description on the form: {undescribed}"


def test_the_triggered_run_succeeds_with_every_task(api, finetune_run):
    tasks = {t["task_id"] for t in api.get(f"/dags/{FINETUNE}/tasks")["tasks"]}
    instances = finetune_run["instances"]
    assert {ti["task_id"] for ti in instances} == tasks
    # With a fresh registry (no champion) and tiny-full over the gate's bound, nothing in this
    # run has a reason to skip: register skips only when the gate does not promote.
    not_success = {label(ti): ti["state"] for ti in instances if ti["state"] != "success"}
    assert not not_success, f"tasks that did not succeed: {not_success}"


def test_the_training_job_log_reaches_the_task_log(api, finetune_run):
    (ti,) = [ti for ti in finetune_run["instances"] if ti["task_id"] == "await_training"]
    log = api.log_tail(ti, lines=100_000)
    assert "train_loss" in log, f"no training progress in {label(ti)}'s log:\n{log[-3000:]}"


def test_mapped_task_instances_show_their_candidate(finetune_run):
    names: dict[str, list[str | None]] = {}
    for ti in finetune_run["instances"]:
        if ti["map_index"] >= 0:
            names.setdefault(ti["task_id"], []).append(ti["rendered_map_index"])
    # The untuned baseline is evaluated next to the candidate (tiny.yaml: baseline: true).
    evaluated = sorted([CANDIDATE, "baseline"])
    # One submit task per phase (not mapped), one wait per candidate.
    assert {task_id: sorted(found) for task_id, found in names.items()} == {
        "await_training": [CANDIDATE],
        "await_evaluation": evaluated,
    }, names


def test_select_returns_the_leaderboard_and_the_winner(api, finetune_run):
    decision = api.xcom(FINETUNE, finetune_run["run_id"], "select")
    assert decision["winner"] == CANDIDATE, decision["reasons"]
    assert decision["promote"] is True, decision["reasons"]
    assert decision["metric"] == "banking77.accuracy.accuracy"
    rows = {row["candidate"]: row for row in decision["leaderboard"]}
    assert set(rows) == {CANDIDATE, "baseline"}, decision["leaderboard"]
    assert rows["baseline"]["role"] == "baseline"
    for name, row in rows.items():
        for column in ("primary", "mean_win_rate", "ece"):
            value = row[column]
            assert isinstance(value, float) and math.isfinite(value), (name, column, value)
            assert 0 <= value <= 1, (name, column, value)
        assert row["usd_per_1k_requests"] > 0, row
    assert decision["score"] == rows[CANDIDATE]["primary"]
    assert rows[CANDIDATE]["primary"] >= 0.3  # tiny.yaml's gate bound, which it passed


def test_register_emits_the_registered_model_event(api, finetune_run):
    run_id = finetune_run["run_id"]
    registered = api.xcom(FINETUNE, run_id, "register")
    assert registered["model_name"] == MODEL_NAME, registered
    assert str(registered["version"]).isdigit(), registered
    assert f"/models/{MODEL_NAME}/versions/{registered['version']}" in registered["url"]

    events = api.get("/assets/events", source_dag_id=FINETUNE, source_run_id=run_id)
    (event,) = events["asset_events"]
    assert event["name"] == "fmops_registered_model", event
    assert event["uri"].rstrip("/") == "fmops://registered-models", event
    assert event["source_task_id"] == "register", event
    assert event["extra"] == {
        "config_file": TINY,
        "model_name": MODEL_NAME,
        "version": registered["version"],
        "approval": "auto",
    }, event
    # The asset schedules fmops_deploy; paused, it started nothing (and a paused DAG gets no
    # queued event either: Airflow queues asset events only for DAGs that are not paused).
    assets = api.get("/assets", uri_pattern="registered-models")["assets"]
    (asset,) = [a for a in assets if a["id"] == event["asset_id"]]
    assert [d["dag_id"] for d in asset["scheduled_dags"]] == [DEPLOY], asset
    assert api.get(f"/dags/{DEPLOY}/dagRuns")["total_entries"] == 0


def test_an_asset_event_for_the_training_data_starts_a_run(api, schedule, finetune_run):
    training_data = schedule.training_data
    details = api.get(f"/dags/{FINETUNE}/details")
    assert details["timetable_summary"] == f"Asset or {schedule.cron}", details
    assert details["asset_expression"]["asset"]["uri"] == training_data.uri, details

    assets = api.get("/assets", uri_pattern=training_data.uri)["assets"]
    (asset,) = [a for a in assets if a["uri"] == training_data.uri]
    assert asset["name"] == training_data.name == "fmops_training_data", asset
    assert [d["dag_id"] for d in asset["scheduled_dags"]] == [FINETUNE], asset
    before = {
        run["dag_run_id"] for run in api.get(f"/dags/{FINETUNE}/dagRuns", limit=100)["dag_runs"]
    }
    event = api.call(
        "POST", "/assets/events", json={"asset_id": asset["id"], "extra": {"refreshed_by": "e2e"}}
    )
    deadline = time.monotonic() + 120
    while True:
        runs = api.get(f"/dags/{FINETUNE}/dagRuns", run_type="asset_triggered", limit=100)
        new = [run for run in runs["dag_runs"] if run["dag_run_id"] not in before]
        if new:
            break
        assert time.monotonic() < deadline, "no asset_triggered run within 120 s of the event"
        time.sleep(1)
    (run,) = new
    run_path = f"/dags/{FINETUNE}/dagRuns/{run['dag_run_id']}"
    # Stopped only once it has started: Airflow 3.3.2 answers every asset-event listing that
    # includes a run without a start date with a 500 (apache/airflow#71360, fixed after 3.3.2),
    # and a run stopped while queued never gets one.
    while not (run := api.get(run_path))["start_date"]:
        assert time.monotonic() < deadline, f"the asset-triggered run did not start: {run}"
        time.sleep(0.5)
    # It would train on the schedule's config; the test needs only its start: stop it now.
    _stop_run(api, FINETUNE, run["dag_run_id"])
    upstream = api.get(f"{run_path}/upstreamAssetEvents")
    assert event["id"] in {e["id"] for e in upstream["asset_events"]}, upstream
    assert api.get(run_path)["state"] == "failed"


def test_a_run_marked_failed_by_hand_stops_its_job_and_ends_its_mlflow_runs_killed(
    stack, api, finetune_run, tmp_path
):
    """Marked failed through the REST API while a candidate trains: close_run never runs, and
    fmops' listener (in the api-server) stops the training job and ends the DAG run's MLflow
    run and the job's run KILLED with Airflow's reason; no run of it is left RUNNING."""
    from mlflow import MlflowClient

    from fmops.jobs.backend import describe, status_of
    from fmops.jobs.local import LocalJobBackend

    raw = yaml.safe_load((PROJECT_ROOT / TINY).read_text())
    raw["pipeline"] = "fmops-e2e-stopped"  # an experiment of its own
    raw["candidates"] = [{**raw["candidates"][0], "name": "tiny-long"}]
    # Long enough (1,000 steps: minutes on 2 cores) that the job still runs when it is stopped.
    raw["candidates"][0]["hyperparameters"]["epochs"] = 100
    config_file = tmp_path / "long.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    conf = {"config_file": str(config_file), "approval": "auto"}
    run = api.call("POST", f"/dags/{FINETUNE}/dagRuns", json={"logical_date": None, "conf": conf})
    run_id = run["dag_run_id"]

    mlflow_client = MlflowClient(f"http://127.0.0.1:{stack.mlflow_port}")

    def runs() -> list[Any]:
        experiment = mlflow_client.get_experiment_by_name(raw["pipeline"])
        if experiment is None:
            return []
        return mlflow_client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run_id}'"
        )

    # Stopped once the job has printed a training step to its run: it trains for sure.
    deadline = time.monotonic() + 600
    while not [
        r
        for r in runs()
        if r.data.tags["fmops.role"] == "training" and "train_loss" in r.data.metrics
    ]:
        instances = api.task_instances(FINETUNE, run_id)
        states = {label(ti): ti["state"] for ti in instances}
        assert time.monotonic() < deadline, f"no training step logged within 600 s: {states}"
        failed = [ti for ti in instances if ti["state"] == "failed"]
        assert not failed, "\n\n".join(f"--- {label(ti)}:\n{api.log_tail(ti)}" for ti in failed)
        time.sleep(2)
    _stop_run(api, FINETUNE, run_id)

    deadline = time.monotonic() + 120
    while running := [r.info.run_name for r in runs() if r.info.status == "RUNNING"]:
        assert time.monotonic() < deadline, f"still RUNNING 120 s after the stop: {running}"
        time.sleep(1)
    found = {r.data.tags["fmops.role"]: r for r in runs()}
    assert set(found) == {"parent", "training"}, set(found)
    reason = "Dag Run's state was manually set to `failed`."
    assert found["parent"].info.status == "KILLED"
    assert found["parent"].data.tags["fmops.outcome"].endswith(reason)
    training = found["training"]
    assert training.info.status == "KILLED"
    assert training.data.tags["fmops.failure_reason"].endswith(reason)
    backend = LocalJobBackend(root=stack.home / "jobs")
    job = training.data.tags["fmops.job_name"]
    deadline = time.monotonic() + 60
    while (status := status_of("training", describe(backend, "training", job))) != "Stopped":
        assert status in ("InProgress", "Stopping"), f"{job} ended {status}, not stopped"
        assert time.monotonic() < deadline, f"{job} still {status} 60 s after the stop"
        time.sleep(1)


# -- the review: a person Airflow authenticated, nobody else ------------------------------------


def test_a_review_is_decided_only_by_an_authenticated_reviewer(stack, api, finetune_run):
    """fmops_deploy with approval manual parks await_approval in Airflow's awaiting_input. An
    approval written as MLflow tags, a response without a token or with a forged one, and
    `fmops reject` with a wrong password all leave it waiting; `fmops reject` with the
    reviewer's password decides, and the version records the user Airflow authenticated."""
    import requests
    from mlflow import MlflowClient

    from fmops import review_client
    from fmops.registry import review

    version = str(api.xcom(FINETUNE, finetune_run["run_id"], "register")["version"])
    tracking_uri = f"http://127.0.0.1:{stack.mlflow_port}"
    mlflow_client = MlflowClient(tracking_uri)
    conf = {"config_file": TINY, "version": version, "approval": "manual"}
    api.call("PATCH", f"/dags/{DEPLOY}", json={"is_paused": False})
    try:
        run = api.call("POST", f"/dags/{DEPLOY}/dagRuns", json={"logical_date": None, "conf": conf})
        run_id = run["dag_run_id"]
        hitl = f"/dags/{DEPLOY}/dagRuns/{run_id}/taskInstances/await_approval/-1/hitlDetails"

        def await_approval() -> dict[str, Any]:
            (ti,) = [
                t for t in api.task_instances(DEPLOY, run_id) if t["task_id"] == "await_approval"
            ]
            return ti

        deadline = time.monotonic() + 300
        while (ti := await_approval())["state"] != "awaiting_input":
            assert ti["state"] not in ("failed", "skipped", "success"), api.log_tail(ti)
            assert time.monotonic() < deadline, f"await_approval still {ti['state']} after 300 s"
            time.sleep(1)
        question = api.get(hitl)
        assert question["subject"].startswith(f"Deploy {MODEL_NAME} version {version} to ")
        assert question["options"] == ["Approve", "Reject"] and not question["response_received"]
        assert f"/models/{MODEL_NAME}/versions/{version}" in question["body"]

        # 1. An approval forged in MLflow, which has no authentication here.
        for key, value in {
            review.APPROVAL_TAG: "approved",
            review.REVIEWER_TAG: "mallory",
        }.items():
            mlflow_client.set_model_version_tag(MODEL_NAME, version, key, value)
        # 2. A response without a token, and one with a token Airflow did not sign.
        body = {"chosen_options": ["Approve"], "params_input": {"comment": "forged"}}
        anonymous = requests.patch(f"{stack.airflow_url}/api/v2{hitl}", json=body, timeout=30)
        assert anonymous.status_code == 401, anonymous.text
        forged = requests.patch(
            f"{stack.airflow_url}/api/v2{hitl}",
            json=body,
            headers={"Authorization": "Bearer eyJhbGciOiJIUzUxMiJ9.e30.forged"},
            timeout=30,
        )
        assert forged.status_code == 403 and "Invalid JWT" in forged.text, forged.text
        # 3. The CLI with a wrong password.
        env = {**stack.env, "FMOPS_AIRFLOW_PASSWORD": "wrong-password"}
        decide = [str(BIN / "fmops"), "reject", MODEL_NAME, version, "--tracking-uri", tracking_uri]
        refused = subprocess.run(
            decide, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2, refused.stderr
        assert "refused the credentials of 'admin'" in refused.stderr

        assert not api.get(hitl)["response_received"]
        assert await_approval()["state"] == "awaiting_input", "a forged review decided"

        # The reviewer's own login decides, seconds after the question appeared: on a busy
        # machine that is when Airflow 3.3.2 can drop an answer (review_client._follow). The CLI
        # answers only once the question has settled (review_client.SETTLE_SECONDS), and answers
        # a retry's question the same way.
        username, password = api.credentials
        env = {**stack.env, "FMOPS_AIRFLOW_USER": username, "FMOPS_AIRFLOW_PASSWORD": password}
        decided = subprocess.run(
            [*decide, "--comment", "the calibration error is too high"],
            env=env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=review_client.CONFIRM_SECONDS + 120,
        )
        assert decided.returncode == 0, decided.stderr
        assert f"{MODEL_NAME} version {version}: Reject by {username}" in decided.stdout
        assert "goes on" in decided.stdout, decided.stdout  # the answered try ended

        deadline = time.monotonic() + 300
        while (found := api.get(f"/dags/{DEPLOY}/dagRuns/{run_id}"))["state"] not in (
            "success",
            "failed",
        ):
            assert time.monotonic() < deadline, (
                f"{DEPLOY} {run_id} still {found['state']} 300 s after the rejection:\n"
                + _run_report(api, DEPLOY, run_id)
            )
            time.sleep(2)
        states = {t["task_id"]: t["state"] for t in api.task_instances(DEPLOY, run_id)}
        # a rejection is a decision, not a failure
        assert found["state"] == "success", (
            f"{states}\nthe CLI: {decided.stdout}\n{_tries(api, await_approval())}\n"
            + stack.log_tail("airflow", 80)
        )
        assert states["await_approval"] == "skipped" and states["deploy"] == "skipped", states
        assert states["close_run"] == "success", states
        answer = api.get(hitl)
        assert answer["responded_by_user"] == {"id": username, "name": username}
        assert answer["chosen_options"] == ["Reject"]
        tags = mlflow_client.get_model_version(MODEL_NAME, version).tags
        assert tags[review.APPROVAL_TAG] == "rejected"
        assert (tags[review.REVIEWER_TAG], tags[review.REVIEWER_ID_TAG]) == (username, username)
        assert tags[review.COMMENT_TAG] == "the calibration error is too high"
        assert tags[review.REVIEW_SOURCE_TAG] == f"airflow:{DEPLOY}/{run_id}/await_approval"
        assert tags[review.DEPLOY_OUTCOME_TAG] == "rejected"
    finally:
        api.call("PATCH", f"/dags/{DEPLOY}", json={"is_paused": True})


# -- the trigger form in the UI ---------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless Chromium driven over the Chrome DevTools Protocol (one page, one websocket)."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-proxy-server",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1400,1400",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: close() ends its helpers too
        )
        self.profile = profile
        self.ids = itertools.count(1)
        self.socket = None

    def connect(self) -> None:
        port_file = self.profile / "DevToolsActivePort"  # Chromium writes the port it chose here
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.process.poll() is None, f"chromium exited ({self.process.returncode})"
            assert time.monotonic() < deadline, "chromium opened no DevTools port in 60 s"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            targets = json.loads(answer.read())
        (page,) = [t for t in targets if t["type"] == "page"]
        from websockets.sync.client import connect

        self.socket = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == message_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, f"{expression[:200]}: {result}"
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                page = self.evaluate("location.href + '\\n' + document.body.innerText")
                raise AssertionError(f"{what}: not within {timeout:.0f} s; the page:\n{page}")
            time.sleep(0.25)
        return value

    def click(self, element: str) -> None:
        """A real mouse click in the middle of ``element`` (a JS expression): the UI's
        accordions react to pointer events, not to a synthetic ``element.click()``."""
        x, y = self.evaluate(
            f"(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
            " })()"
        )
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def settle(self, what: str) -> None:
        """Wait until no finite CSS animation runs (an accordion's opening, a dialog's fade)."""
        self.wait_for(
            "document.getAnimations().every(a => a.playState !== 'running'"
            " || a.effect?.getComputedTiming().iterations === Infinity)",
            f"{what}: animations to end",
            timeout=20,
        )

    def screenshot(self) -> bytes:
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.skip(
            "CHROMIUM IS NOT INSTALLED: the Airflow UI trigger-form check did not run. Install "
            "Debian's package (`apt-get install -y chromium`; .ci/run does it) to run it."
        )
    chromium = Browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        chromium.connect()
        yield chromium
    finally:
        chromium.close()


# JS: the trigger dialog (Chakra renders other role=dialog popovers on the DAG page too).
DIALOG = (
    "[...document.querySelectorAll('[role=dialog]')].find(d => /Trigger Dag/.test(d.innerText))"
)


def _section_button(section: str) -> str:
    return (
        f"[...({DIALOG}).querySelectorAll('button[data-part=item-trigger]')]"
        f".find(b => b.innerText.trim() === {json.dumps(section)})"
    )


def test_the_trigger_form_in_the_ui(stack, api, browser):
    details = api.get(f"/dags/{FINETUNE}/details")
    by_section: dict[str, list[str]] = {}
    for param in details["params"].values():
        by_section.setdefault(param["schema"]["section"], []).append(param["schema"]["title"])
    blank = browser.screenshot()

    # Unauthenticated, the DAG page sends the browser to the simple auth manager's login page.
    browser.send("Page.enable")
    browser.send("Page.navigate", url=f"{stack.airflow_url}/dags/{FINETUNE}")
    browser.wait_for("!!document.querySelector('input[name=username]')", "the login page")
    assert "/auth/login" in browser.evaluate("location.pathname")
    username, password = api.credentials
    # React keeps its own copy of an input's value: set it with the native setter, then tell
    # React with an input event, as typing would.
    fields = json.dumps([["username", username], ["password", password]])
    browser.evaluate(
        "(() => { const set = Object.getOwnPropertyDescriptor(HTMLInputElement.prototype,"
        f" 'value').set; for (const [name, value] of {fields}) {{"
        " const input = document.querySelector(`input[name=${name}]`); set.call(input, value);"
        " input.dispatchEvent(new Event('input', {bubbles: true})); } })()"
    )
    browser.wait_for("!document.querySelector('button[type=submit]').disabled", "Sign in enabled")
    browser.click("document.querySelector('button[type=submit]')")
    browser.wait_for(
        f"location.pathname.endsWith('/dags/{FINETUNE}')"
        " && !!document.querySelector('[data-testid=trigger-dag-button]')",
        "back on the DAG page, logged in, with its Trigger button",
    )

    # The form opens in a dialog from the Trigger button (the UI has no route of its own for it).
    browser.click("document.querySelector('[data-testid=trigger-dag-button]')")
    browser.wait_for(f"!!({DIALOG})", "the trigger dialog")
    browser.settle("the trigger dialog")
    text = browser.evaluate(f"({DIALOG}).innerText")
    assert details["dag_display_name"] in text, text
    for section in ("What to run", "Cache and dry run", "Review"):
        assert browser.evaluate(f"!!({_section_button(section)})"), f"no section {section!r}"
    # One section is open at a time; open each and find its params' titles. "What to run" last,
    # so that the screenshot shows it.
    for section in ("Review", "Cache and dry run", "What to run"):
        browser.click(_section_button(section))
        browser.wait_for(
            f"({_section_button(section)}).getAttribute('aria-expanded') === 'true'",
            f"the section {section!r} open",
            timeout=20,
        )
        browser.settle(f"the section {section!r}")
        for title in by_section[section]:
            browser.wait_for(
                f"({DIALOG}).innerText.includes({json.dumps(title)})",
                f"{title!r} in the open section {section!r}",
                timeout=20,
            )
    text = browser.evaluate(f"({DIALOG}).innerText")
    for title in ("Pipeline config", "Candidates"):
        assert title in text, text
    # The empty choice of a drop-down reads as what it means (values_display), not "null".
    assert "the config's target" in text, text

    shot = browser.screenshot()
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(shot)
    print(f"screenshot of the trigger form: {SCREENSHOT}")
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(shot) > max(20_000, 4 * len(blank)), (len(shot), len(blank))


# -- make demo --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_config(stack: Stack, tmp_path_factory) -> dict[str, Any]:
    """tests/configs/tiny.yaml under names of its own: a registry without a champion and an
    endpoint on a free port, so that the demo's run registers, deploys and serves."""
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / TINY).read_text())
    raw["pipeline"] = "fmops-demo-test"
    raw["registry"]["model_name"] = "fmops-demo-test-classifier"
    port = free_port()
    while port in (stack.airflow_port, stack.mlflow_port):
        port = free_port()
    raw["deployment"].update(endpoint_name="fmops-demo-test", port=port, approval="auto")
    path = tmp_path_factory.mktemp("demo") / "demo.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return {"path": path, "raw": raw}


def test_make_demo_prints_stages_progress_and_the_live_endpoint(
    stack, api, finetune_run, demo_config
):
    """`make demo` runs `fmops demo`: here with the small config, against this stack (the demo
    starts the stack only when it is not running), so that it follows a real run of both DAGs.
    Jobs that the run above already did (tiny-full, the baseline's evaluation) come from the
    cache; tiny-lora trains, tiny-broken fails on purpose."""
    raw = demo_config["raw"]
    endpoint = raw["deployment"]["endpoint_name"]
    try:
        demo = stack.cli("demo", "--config", str(demo_config["path"]), timeout=RUN_TIMEOUT_SECONDS)
        out = demo.stdout
        print(out[-6000:])
        assert demo.returncode == 0, f"fmops demo failed:\n{out[-4000:]}\n{demo.stderr[-3000:]}"
        lines = out.splitlines()
        # The demo looks every few seconds, so a stage quicker than that may go unnamed; those
        # it names come in the DAG's order. Training (tiny-lora trains here) and evaluation
        # (tiny-lora's) take longer than a look.
        order = [
            "validating data",
            "planning the training jobs",
            "training",
            "planning the evaluation",
            "evaluating",
            "gate",
            "registering",
            "closing the run's MLflow run",
        ]
        named = [
            next(i for i, stage in enumerate(order) if line.split("Stage: ")[1].startswith(stage))
            for line in lines
            if "fmops_finetune  Stage: " in line and "loading the pipeline config" not in line
        ]
        assert named == sorted(named), f"stages out of order: {named}"
        assert "Stage: training 3 candidates" in out
        assert re.search(r"Stage: evaluating (\d+ )?models", out), "no evaluation stage"
        assert "fmops_deploy    Stage: " in out, "the deploy run's stages are not followed"
        # Progress comes from the jobs' own logs: a reused job says so, a training prints steps.
        assert any("tiny-full" in line and "reused from cache" in line for line in lines)
        # tiny-lora trains in seconds, faster than the demo's 20 s progress pace, so its step
        # lines may not show (tests/unit/test_demo_progress.py follows a longer job); its end,
        # read from the job's own log, does.
        assert any(
            "tiny-lora" in line and "done in" in line and "val_acc" in line for line in lines
        )
        assert any("tiny-broken" in line and "failed" in line.lower() for line in lines)
        assert "Leaderboard" in out and "Winner: " in out
        mlflow = f"http://127.0.0.1:{stack.mlflow_port}/#/experiments/"
        assert re.search(rf"MLflow run of this DAG run: {re.escape(mlflow)}\d+/runs/\w+", out)
        assert re.search(
            rf"its jobs in the runs table: {re.escape(mlflow)}\d+/runs\?viewStateShareKey=", out
        )
        assert f"Registered: {raw['registry']['model_name']} version 1" in out
        assert f"Endpoint: http://127.0.0.1:{raw['deployment']['port']}" in out
        assert "live answer (HTTP 200)" in out and '"predictions"' in out
        assert "Stage durations (s):" in out and "Demo wall time:" in out
    finally:
        deleted = stack.cli("endpoint", "delete", endpoint, timeout=120)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not port_open(raw["deployment"]["port"]), "the demo's endpoint outlived its deletion"


# -- make demo-llm ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_llm_config(stack: Stack, tmp_path_factory) -> dict[str, Any]:
    """include/configs/local-llm.yaml (what `make demo-llm` runs) cut to minutes: its first
    candidate, 48 training chats, 24 evaluation chats, one epoch; names and a port of its own."""
    import yaml

    folder = tmp_path_factory.mktemp("demo-llm")
    raw = yaml.safe_load((PROJECT_ROOT / "include/configs/local-llm.yaml").read_text())
    train = (PROJECT_ROOT / raw["data"]["train"]).read_text().splitlines()[:48]
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    raw["pipeline"] = "fmops-demo-llm-test"
    raw["data"].update(
        train=str(folder / "train.jsonl"),
        evaluation=str(PROJECT_ROOT / raw["data"]["evaluation"]),
        evaluation_sample_size=24,
        checks={"size": {"min_rows": 20}},
    )
    raw["candidates"] = raw["candidates"][:1]  # one of the two: the other trains the same way
    raw["candidates"][0]["hyperparameters"].update(epochs=1, batch_size=8)
    raw["evaluation"]["perturbation_sample_size"] = 12
    raw["evaluation"]["gate"]["bounds"] = [
        {"metric": raw["evaluation"]["gate"]["primary"], "min": 0.0}
    ]
    raw["registry"]["model_name"] = "fmops-demo-llm-test"
    port = free_port()
    while port in (stack.airflow_port, stack.mlflow_port):
        port = free_port()
    raw["deployment"].update(endpoint_name="fmops-demo-llm-test", port=port, smoke_requests=3)
    path = folder / "demo-llm.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return {"path": path, "raw": raw}


def test_make_demo_llm_tunes_registers_and_serves_a_generative_lm(stack, api, demo_llm_config):
    """`make demo-llm` runs `fmops demo --config include/configs/local-llm.yaml`: here with that
    config cut to minutes, against this stack, so that the real scheduler runs both DAGs for
    SmolLM2 and the demo ends with a live chat completion."""
    raw = demo_llm_config["raw"]
    endpoint = raw["deployment"]["endpoint_name"]
    try:
        demo = stack.cli(
            "demo", "--config", str(demo_llm_config["path"]), timeout=RUN_TIMEOUT_SECONDS
        )
        out = demo.stdout
        print(out[-6000:])
        assert demo.returncode == 0, f"fmops demo failed:\n{out[-4000:]}\n{demo.stderr[-3000:]}"
        lines = out.splitlines()
        assert re.search(r"Stage: training 1 candidate", out), "no training stage"
        assert re.search(r"Stage: evaluating (\d+ )?models", out), "no evaluation stage"
        assert "fmops_deploy    Stage: " in out, "the deploy run's stages are not followed"
        assert any("smollm2-lora-r8" in line and "done in" in line for line in lines)
        assert "Leaderboard (banking77-chat.accuracy.token_f1" in out
        assert any(line.strip().startswith("baseline ") for line in lines), "no baseline row"
        assert "Winner: smollm2-lora-" in out
        assert f"Registered: {raw['registry']['model_name']} version 1" in out
        assert f"Endpoint: http://127.0.0.1:{raw['deployment']['port']}" in out
        live = next(line for line in lines if "live answer (HTTP" in line)
        assert "live answer (HTTP 200)" in live and '"chat.completion"' in live, live
        assert "Demo wall time:" in out
    finally:
        deleted = stack.cli("endpoint", "delete", endpoint, timeout=120)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not port_open(raw["deployment"]["port"]), "the demo's endpoint outlived its deletion"
