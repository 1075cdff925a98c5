"""The team stack (``make up-team``: docker-compose.yaml's services natively) runs the pipeline,
and keeps its promises under faults.

``fmops stack up --profile team`` starts PostgreSQL (Airflow's and MLflow's), Redis, an S3 store,
``mlflow server`` on Postgres with s3:// artifacts, and Airflow with the CeleryExecutor and two
workers, on free 127.0.0.1 ports with a state folder of their own. Everything about the runs is
read through the api-server, MLflow's REST API, the S3 API and the two databases.

What each fault relies on (Airflow's guarantees, and what fmops adds) is written at the test that
injects it. Natively nothing restarts a process that dies (compose's ``restart: always``): the
tests run ``fmops stack up --profile team`` again, which starts only what is not running.

The scheduler's task-instance heartbeat timeout is 30 s here (Airflow's default is 300 s): it is
how long a task of a killed worker stays "running" before the scheduler fails it and the retry
starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow_rest import RestApi, clean_env, free_port, label, port_open, session_members

from fmops import processes

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONFIG = "tests/configs/team.yaml"  # tests/configs/tiny.yaml under names of its own
CANDIDATES = ["tiny-full", "tiny-lora"]
FINETUNE, DEPLOY = "fmops_finetune", "fmops_deploy"
EXPERIMENT = "fmops-team"  # the config's pipeline
MODEL_NAME = "fmops-team-classifier"
ENDPOINT_PORT = 18190  # the config's deployment.port
WORKERS = {"airflow-worker-1", "airflow-worker-2"}
PORT_NAMES = ("POSTGRES", "MLFLOW_DB", "REDIS", "S3", "MLFLOW", "AIRFLOW", "SCHEDULER_HEALTH")
HEARTBEAT_TIMEOUT_SECONDS = 30
MLFLOW_OUTAGE_SECONDS = 60
START_TIMEOUT_SECONDS = 420
RUN_TIMEOUT_SECONDS = 15 * 60

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2 * RUN_TIMEOUT_SECONDS + 600)]


@dataclass
class Team:
    """The team stack of one ``fmops stack up --profile team``: its FMOPS_HOME and ports."""

    home: Path
    ports: dict[str, int]
    restarts: list[subprocess.Popen] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            **clean_env(),
            "FMOPS_HOME": str(self.home),
            **{f"FMOPS_TEAM_{name}_PORT": str(port) for name, port in self.ports.items()},
            "FMOPS_FINETUNE_CONFIG": CONFIG,
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_SECONDS),
        }

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AIRFLOW']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['MLFLOW']}"

    def cli(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "fmops"), *args],
            env=self.env,
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self) -> None:
        """``fmops stack up --profile team``: starts what is not running, checks the rest."""
        self.settle()
        up = self.cli("stack", "up", "--profile", "team", timeout=START_TIMEOUT_SECONDS)
        assert up.returncode == 0, f"stack up failed:\n{up.stdout}\n{up.stderr[-3000:]}"

    def up_in_background(self) -> None:
        """The same, without waiting (a fault's restart while the run goes on)."""
        self.settle()
        self.restarts.append(
            subprocess.Popen(
                [str(BIN / "fmops"), "stack", "up", "--profile", "team"],
                env=self.env,
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    def settle(self) -> None:
        """Wait for a background ``up`` to finish; it must have succeeded."""
        while self.restarts:
            restart = self.restarts.pop()
            output, _ = restart.communicate(timeout=START_TIMEOUT_SECONDS)
            assert restart.returncode == 0, f"stack up failed:\n{output[-3000:]}"

    def recorded(self) -> dict[str, dict[str, Any]]:
        path = self.home / "team" / "stack.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def secrets(self) -> dict[str, str]:
        lines = (self.home / "team" / ".env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line and line[0] != "#")

    def credentials(self) -> tuple[str, str]:
        return "airflow", self.secrets()["_AIRFLOW_WWW_USER_PASSWORD"]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal every process of ``name``'s session (as a container's processes die with it)
        and wait until none is left."""
        identity = self.recorded()[name]
        pid = int(identity["pid"])
        for member in processes.session_pids(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, sig)
        deadline = time.monotonic() + 60
        while processes.session_pids(pid) or processes.alive(identity):
            assert time.monotonic() < deadline, f"{name} outlived {signal.Signals(sig).name}"
            time.sleep(0.2)
        print(f"  {name} (pid {pid}) ended by {signal.Signals(sig).name}", flush=True)

    def jobs(self, since: float = 0.0) -> dict[str, dict[str, Any]]:
        """The local executor's jobs (their records), created after ``since`` (epoch seconds)."""
        found = {}
        for folder in sorted((self.home / "jobs").glob("*")):
            record = folder / "request.json"
            if record.exists() and record.stat().st_mtime >= since:
                found[folder.name] = json.loads((folder / "record.json").read_text())
        return found

    def psql(self, service: str, query: str, *args: Any) -> list[tuple]:
        import psycopg2

        user, port_name, secret = {
            "postgres": ("airflow", "POSTGRES", "AIRFLOW_DB_PASSWORD"),
            "mlflow-db": ("mlflow", "MLFLOW_DB", "MLFLOW_DB_PASSWORD"),
        }[service]
        password = self.secrets()[secret]
        connection = psycopg2.connect(
            host="127.0.0.1",
            port=self.ports[port_name],
            user=user,
            password=password,
            dbname=user,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(query, args)
                return cursor.fetchall()
        finally:
            connection.close()

    def s3_keys(self, bucket: str) -> list[str]:
        import boto3

        secrets = self.secrets()
        client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.ports['S3']}",
            aws_access_key_id=secrets["MINIO_ROOT_USER"],
            aws_secret_access_key=secrets["MINIO_ROOT_PASSWORD"],
            region_name="us-east-1",
        )
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    session_tmp = Path(os.environ["FMOPS_HOME"]).parent
    session_tmp.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="team-", dir=session_tmp))
    ports: dict[str, int] = {}
    for name in PORT_NAMES:
        port = free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    stack = Team(home, ports)
    try:
        stack.up()
        assert set(stack.recorded()) == {
            "postgres",
            "mlflow-db",
            "redis",
            "minio",
            "mlflow",
            "airflow-apiserver",
            "airflow-scheduler",
            "airflow-dag-processor",
            "airflow-triggerer",
            *WORKERS,
        }, stack.recorded()
        print(f"\nteam stack up: Airflow {stack.airflow_url}, FMOPS_HOME {home}", flush=True)
        yield stack
    finally:
        _stop(stack)


def _stop(team: Team) -> None:
    """``fmops stack down``, then delete the endpoints the runs started (after the workers are
    gone, so that no deploy can start one again): no process of the stack left, every port
    closed, nothing recorded."""
    try:
        team.settle()
    finally:
        sessions = {int(item["pid"]) for item in team.recorded().values()}
        down = team.cli("stack", "down", timeout=300)
        folder = team.home / "endpoints"
        for name in sorted(p.name for p in folder.iterdir()) if folder.exists() else []:
            team.cli("endpoint", "delete", name, timeout=120)
    deadline = time.monotonic() + 30
    while (left := session_members(sessions)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert down.returncode == 0, f"`fmops stack down` failed:\n{down.stdout}\n{down.stderr}"
    assert not left, "processes of the team stack outlived `fmops stack down`:\n" + "\n".join(left)
    for name, port in {**team.ports, "endpoint": ENDPOINT_PORT}.items():
        assert not port_open(port), f"{name} 127.0.0.1:{port} still open after down"
    assert not (team.home / "team" / "stack.json").exists()


@pytest.fixture(scope="module")
def api(team: Team) -> RestApi:
    client = RestApi(
        team.airflow_url, team.credentials, team.home / "team" / "logs" / "airflow-apiserver.log"
    )
    client.login()
    deadline = time.monotonic() + 300
    for dag_id in (FINETUNE, DEPLOY):
        while True:
            response = client.session.get(f"{client.base}/api/v2/dags/{dag_id}", timeout=30)
            if response.status_code == 200:
                break
            assert time.monotonic() < deadline, f"{dag_id} never appeared: {response.text}"
            time.sleep(2)
        client.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
    assert client.get("/importErrors")["total_entries"] == 0
    return client


def _trigger(api: RestApi, **conf: Any) -> str:
    run = api.call(
        "POST",
        f"/dags/{FINETUNE}/dagRuns",
        json={
            "logical_date": None,
            "conf": {"config_file": CONFIG, "models": CANDIDATES, "approval": "auto", **conf},
        },
    )
    return run["dag_run_id"]


def _deploy_run(api: RestApi, after: str) -> str | None:
    runs = api.get(f"/dags/{DEPLOY}/dagRuns", run_after_gte=after, order_by="-run_after")
    return runs["dag_runs"][0]["dag_run_id"] if runs["dag_runs"] else None


def _wait_for_deploy_run(api: RestApi, after: str, timeout: float = 180) -> str:
    """The fmops_deploy run the registration's asset event scheduled."""
    deadline = time.monotonic() + timeout
    while (deploy := _deploy_run(api, after)) is None:
        assert time.monotonic() < deadline, "the registration scheduled no fmops_deploy run"
        time.sleep(1)
    return deploy


def _state(api: RestApi, dag_id: str, run_id: str) -> str:
    return api.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]


def _follow(
    api: RestApi,
    runs: list[tuple[str, str]],
    on_poll: Callable[[str, str, list[dict[str, Any]]], None],
) -> None:
    """Poll the runs' task instances (4 times a second) until every run ended; ``on_poll`` sees
    each poll and injects the faults."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        ended = True
        for dag_id, run_id in runs:
            instances = api.task_instances(dag_id, run_id)
            for ti in instances:
                key, state = f"{dag_id[6:]}.{label(ti)}", f"{ti['state']} @{ti['hostname']}"
                if seen.get(key) != state:
                    seen[key] = state
                    print(f"  {time.monotonic() - started:6.1f}s  {key:34} {state}", flush=True)
            on_poll(dag_id, run_id, instances)
            ended &= _state(api, dag_id, run_id) in ("success", "failed")
        if ended:
            return
        assert time.monotonic() - started < RUN_TIMEOUT_SECONDS, f"runs still going: {seen}"
        time.sleep(0.25)


def _running(instances: list[dict[str, Any]], task_id: str) -> dict[str, Any] | None:
    return next(
        (ti for ti in instances if ti["task_id"] == task_id and ti["state"] == "running"), None
    )


def _failed_logs(api: RestApi, dag_id: str, run_id: str) -> str:
    failed = [ti for ti in api.task_instances(dag_id, run_id) if ti["state"] != "success"]
    return "\n\n".join(f"--- {label(ti)} ({ti['state']}):\n{api.log_tail(ti)}" for ti in failed)


def _mlflow_runs(team: Team, run_id: str) -> dict[str, list[Any]]:
    """The MLflow runs of one DAG run, by fmops.role."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=team.mlflow_url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found: dict[str, list[Any]] = {}
    for run in client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run_id}'"
    ):
        found.setdefault(run.data.tags.get("fmops.role", "?"), []).append(run)
    return found


def _assert_one_finished_job_each(jobs: dict[str, dict], champion: bool = False) -> None:
    """One training job per candidate and one evaluation job per model (the untuned baseline
    too, and the registry's champion once there is one), each Completed: a job's name is
    ``<kind>-<candidate>-<digest>``."""
    expected = ["eval-baseline", "eval-tiny-full", "eval-tiny-lora"]
    expected += ["eval-champion"] if champion else []
    assert sorted(name.rsplit("-", 1)[0] for name in jobs) == sorted(
        [*expected, "train-tiny-full", "train-tiny-lora"]
    ), sorted(jobs)
    assert {record["status"] for record in jobs.values()} == {"Completed"}


def _has_champion(team: Team) -> bool:
    """Whether the registry has a champion, which every run then evaluates too."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from fmops.registry import tracking

    try:
        client = MlflowClient(tracking_uri=team.mlflow_url)
        client.get_model_version_by_alias(MODEL_NAME, tracking.CHAMPION)
    except MlflowException:
        return False
    return True


def _assert_complete_in_mlflow(team: Team, run_id: str, jobs: dict[str, dict]) -> dict:
    """Nothing lost: the DAG run's run and one run per job, each ended FINISHED, all of them
    rows of MLflow's PostgreSQL."""
    runs = _mlflow_runs(team, run_id)
    assert sorted(runs) == ["evaluation", "parent", "training"], sorted(runs)
    assert len(runs["parent"]) == 1
    by_job = {}
    for role in ("training", "evaluation"):
        for run in runs[role]:
            by_job.setdefault(run.data.tags["fmops.job_name"], []).append(run)
    assert sorted(by_job) == sorted(jobs), (sorted(by_job), sorted(jobs))
    assert all(len(found) == 1 for found in by_job.values()), "a job has two MLflow runs"
    every = [run for found in runs.values() for run in found]
    assert {run.info.status for run in every} == {"FINISHED"}, [
        (run.data.tags.get("fmops.job_name"), run.info.status) for run in every
    ]
    ids = [run.info.run_id for run in every]
    (count,) = team.psql("mlflow-db", "SELECT count(*) FROM runs WHERE run_uuid = ANY(%s)", ids)[0]
    assert count == len(ids) == len(jobs) + 1
    return runs


def test_the_pipeline_runs_on_the_team_stack_through_a_killed_worker_and_an_mlflow_outage(
    team: Team, api: RestApi
):
    """``fmops_finetune`` and the ``fmops_deploy`` run it schedules, on CeleryExecutor with two
    workers, Airflow and MLflow on PostgreSQL and model artifacts in S3, while:

    - the worker running ``submit_training`` (one task for every candidate's job) is SIGKILLed
      (and started again). Airflow: the task instance's heartbeats stop; the scheduler fails it
      after the heartbeat timeout and its retry runs on a live worker (the Redis broker does not
      redeliver an unacknowledged task before its visibility timeout, 24 h, so it is not run
      twice). fmops: the retry reattaches to the jobs the killed try may have started (a job's
      name is a digest of its request): exactly one job per candidate.
    - the MLflow server is stopped for a minute while ``register`` runs. MLflow's client retries
      an unreachable server (about two minutes); fmops' registration is idempotent (a version
      of this DAG run is found again, not made twice), so a retried ``register`` cannot make a
      second version.
    - the worker running ``deploy`` is SIGKILLed. The retry of ``deploy`` finds the endpoint the
      killed try was making and finishes it (fmops' deployment is keyed by the version).
    """
    trigger_time = datetime.now(UTC).isoformat()
    started = time.time()
    run_id = _trigger(api)
    faults: dict[str, Any] = {}

    def inject(dag_id: str, _run_id: str, instances: list[dict[str, Any]]) -> None:
        if dag_id == FINETUNE and "submit" not in faults:
            ti = _running(instances, "submit_training")
            if ti and ti["hostname"] in WORKERS:
                faults["submit"] = ti["hostname"]
                team.kill(ti["hostname"])
                team.up_in_background()
        if dag_id == FINETUNE and "mlflow" not in faults and _running(instances, "register"):
            team.settle()
            faults["mlflow"] = time.monotonic()
            team.kill("mlflow", signal.SIGTERM)
        outage = time.monotonic() - faults.get("mlflow", time.monotonic())
        if "mlflow_back" not in faults and outage >= MLFLOW_OUTAGE_SECONDS:
            faults["mlflow_back"] = True
            team.up_in_background()
        if dag_id == DEPLOY and "deploy" not in faults:
            ti = _running(instances, "deploy")
            if ti and ti["hostname"] in WORKERS:
                team.settle()
                faults["deploy"] = ti["hostname"]
                team.kill(ti["hostname"])
                team.up_in_background()

    _follow(api, [(FINETUNE, run_id)], inject)
    assert _state(api, FINETUNE, run_id) == "success", _failed_logs(api, FINETUNE, run_id)
    deploy_id = _wait_for_deploy_run(api, trigger_time)
    _follow(api, [(DEPLOY, deploy_id)], inject)
    team.settle()
    assert _state(api, DEPLOY, deploy_id) == "success", _failed_logs(api, DEPLOY, deploy_id)
    assert {"submit", "mlflow", "mlflow_back", "deploy"} <= set(faults), faults

    # The killed tries were retried, on the workers (task instances name their worker).
    finetune_tis = api.task_instances(FINETUNE, run_id)
    deploy_tis = api.task_instances(DEPLOY, deploy_id)
    (killed,) = [ti for ti in finetune_tis if ti["task_id"] == "submit_training"]
    assert killed["try_number"] >= 2, killed
    (deploy_ti,) = [ti for ti in deploy_tis if ti["task_id"] == "deploy"]
    assert deploy_ti["try_number"] >= 2, deploy_ti
    assert {ti["hostname"] for ti in finetune_tis + deploy_tis} == WORKERS

    # Exactly one job per candidate (and per evaluation), each finished.
    jobs = team.jobs(since=started)
    _assert_one_finished_job_each(jobs)
    runs = _assert_complete_in_mlflow(team, run_id, jobs)

    # One version, registered once, approved (approval auto) and served; its files are in S3.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=team.mlflow_url)
    (version,) = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert version.tags["fmops.dag_run"] == f"{FINETUNE}/{run_id}"
    assert version.tags["fmops.approval"] == "approved"
    model = client.get_logged_model(version.source.rsplit("/", 1)[-1])
    # proxied: the server writes s3://fmops-mlflow/<the path after mlflow-artifacts:/>
    assert model.artifact_location.startswith("mlflow-artifacts:/"), model.artifact_location
    prefix = model.artifact_location.removeprefix("mlflow-artifacts:/").lstrip("/")
    keys = team.s3_keys("fmops-mlflow")
    experiment_id = runs["parent"][0].info.experiment_id
    model_files = [k for k in keys if k.startswith(prefix + "/")]
    assert any(k.endswith("/MLmodel") for k in model_files), model_files
    assert any(k.endswith(".safetensors") for k in model_files), model_files
    assert f"{experiment_id}/{version.run_id}/artifacts/model_card.md" in keys
    # Airflow's metadata is in its PostgreSQL.
    assert team.psql("postgres", "SELECT state FROM dag_run WHERE run_id = %s", run_id) == [
        ("success",)
    ]

    # The endpoint serves the version the deploy read back from the registry (S3).
    deployed = api.xcom(DEPLOY, deploy_id, "deploy")
    assert deployed["version"] == version.version
    smoke = api.xcom(DEPLOY, deploy_id, "smoke_test")
    assert smoke["errors"] == 0 and smoke["requests"] > 0, smoke
    answer = requests.post(
        f"{deployed['url']}/invocations", json={"inputs": ["I lost my card"]}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["label"], answer.json()


def test_a_run_survives_the_scheduler_triggerer_postgres_and_redis_going_down(
    team: Team, api: RestApi
):
    """A run whose training jobs are held (SIGSTOP: a long training) while, one after another:

    - the triggerer is SIGKILLed and started again. Airflow: a trigger whose triggerer stops
      heartbeating is assigned to a live triggerer (after ``triggerer_health_check_threshold``),
      and the deferred task instance keeps its try; fmops' triggers are rebuilt from the job
      handle, so the wait resumes where it was.
    - the scheduler is SIGKILLed and started again: the new scheduler adopts the queued and
      running task instances (Airflow's orphan adoption) and goes on.
    - PostgreSQL (Airflow's) is restarted (fast shutdown, then start): every component loses
      its connections and reconnects (SQLAlchemy's pool pre-ping).
    - Redis is restarted: Celery's workers and the executor reconnect to the broker.

    Then the jobs go on, and the run must end green with one job per candidate and nothing lost
    in MLflow.
    """
    champion = _has_champion(team)  # the first test's version, when it ran first
    started = time.time()
    run_id = _trigger(api, force_rerun=True)  # the cache would reuse the first test's jobs
    faults: list[str] = []

    def inject(_dag_id: str, _run_id: str, instances: list[dict[str, Any]]) -> None:
        if faults:
            return
        waiting = [ti for ti in instances if ti["task_id"] == "await_training"]
        if len(waiting) < 2 or any(ti["state"] != "deferred" for ti in waiting):
            return
        held = [
            int(json.loads((team.home / "jobs" / name / "supervisor.json").read_text())["pid"])
            for name in team.jobs(since=started)
            if name.startswith("train-")
        ]
        assert len(held) == 2, held
        members = [pid for leader in held for pid in processes.session_pids(leader)]
        for pid in members:
            os.kill(pid, signal.SIGSTOP)
        try:
            for name, sig in (
                ("airflow-triggerer", signal.SIGKILL),
                ("airflow-scheduler", signal.SIGKILL),
                ("postgres", signal.SIGINT),  # PostgreSQL's fast shutdown
                ("redis", signal.SIGTERM),
            ):
                team.kill(name, sig)
                faults.append(name)
                team.up()
        finally:
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    _follow(api, [(FINETUNE, run_id)], inject)
    assert faults == ["airflow-triggerer", "airflow-scheduler", "postgres", "redis"], faults
    assert _state(api, FINETUNE, run_id) == "success", _failed_logs(api, FINETUNE, run_id)
    instances = api.task_instances(FINETUNE, run_id)
    assert {ti["state"] for ti in instances} <= {"success", "skipped"}, [
        (label(ti), ti["state"]) for ti in instances
    ]
    # The waits were deferred across the outages and resumed, not failed and retried.
    waits = [ti for ti in instances if ti["task_id"] == "await_training"]
    assert [ti["try_number"] for ti in waits] == [1, 1], waits
    jobs = team.jobs(since=started)
    _assert_one_finished_job_each(jobs, champion=champion)
    _assert_complete_in_mlflow(team, run_id, jobs)
    # A deploy run the registration scheduled (the gate promoted) ends before the next test.
    registered = [ti for ti in instances if ti["task_id"] == "register"][0]["state"] == "success"
    if registered:
        deploy = _wait_for_deploy_run(api, datetime.fromtimestamp(started, UTC).isoformat())
        _follow(api, [(DEPLOY, deploy)], lambda *_: None)


def test_a_task_and_then_the_run_marked_failed_stop_their_jobs(team: Team, api: RestApi):
    """Stopping by hand stops the work, on the team stack (the local stack's counterpart is in
    test_airflow_api.py): ``await_training`` of one candidate set failed through the REST API
    stops that candidate's job and ends its MLflow run KILLED (fmops' listener, called by the
    api-server); the DAG run then set failed stops the other job and ends every run still
    RUNNING. The run stays failed.

    The training jobs are held (SIGSTOP) until each stop was requested, so that neither job
    can end on its own first."""
    from fmops.jobs.runner import STOP_REQUEST

    started = time.time()
    run_id = _trigger(api, force_rerun=True)
    held: dict[str, list[int]] = {}

    def hold(_dag_id: str, _run_id: str, instances: list[dict[str, Any]]) -> None:
        waiting = [ti for ti in instances if ti["task_id"] == "await_training"]
        if held or len(waiting) < 2 or any(ti["state"] != "deferred" for ti in waiting):
            return
        for name in team.jobs(since=started):
            if name.startswith("train-"):
                supervisor = json.loads((team.home / "jobs" / name / "supervisor.json").read_text())
                held[name] = processes.session_pids(int(supervisor["pid"]))
                for pid in held[name]:
                    os.kill(pid, signal.SIGSTOP)
        raise StopIteration  # both held: stop following

    with contextlib.suppress(StopIteration):
        _follow(api, [(FINETUNE, run_id)], hold)
    assert len(held) == 2, held
    first, second = (h["name"] for h in api.xcom(FINETUNE, run_id, "submit_training"))

    def stop_and_release(name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while not (team.home / "jobs" / name / STOP_REQUEST).exists():
            assert time.monotonic() < deadline, f"no stop was requested for {name}"
            time.sleep(0.25)
        for pid in held[name]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        while (record := team.jobs(since=started)[name])["status"] != "Stopped":
            assert time.monotonic() < deadline, f"{name} is {record['status']} after its stop"
            time.sleep(0.25)
        return record

    try:
        api.call(
            "PATCH",
            f"/dags/{FINETUNE}/dagRuns/{run_id}/taskInstances/await_training/0",
            json={"new_state": "failed"},
        )
        stop_and_release(first)
        assert team.jobs(since=started)[second]["status"] == "InProgress"
        # its run ended too (right after the stop) before the DAG run is set failed
        deadline = time.monotonic() + 60
        while {
            run.info.status
            for run in _mlflow_runs(team, run_id)["training"]
            if run.data.tags["fmops.job_name"] == first
        } != {"KILLED"}:
            assert time.monotonic() < deadline, f"the run of {first} was not ended KILLED"
            time.sleep(0.5)
        stopped = api.call("PATCH", f"/dags/{FINETUNE}/dagRuns/{run_id}", json={"state": "failed"})
        assert stopped["state"] == "failed", stopped
        stop_and_release(second)
    finally:
        for pids in held.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    _follow(api, [(FINETUNE, run_id)], lambda *_: None)
    time.sleep(5)  # nothing brings it back: a late task would flip it
    assert _state(api, FINETUNE, run_id) == "failed"
    runs = _mlflow_runs(team, run_id)
    (parent,) = runs["parent"]
    assert parent.info.status == "KILLED", parent.info.status
    killed = {run.data.tags["fmops.job_name"]: run for run in runs["training"]}
    assert {name: run.info.status for name, run in killed.items()} == {
        first: "KILLED",
        second: "KILLED",
    }
    assert (
        "await_training[0] was set failed by hand"
        in (killed[first].data.tags["fmops.failure_reason"])
    )
    assert "the DAG run ended failed" in killed[second].data.tags["fmops.failure_reason"]
