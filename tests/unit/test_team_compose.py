"""The native team stack against docker-compose.yaml: the same services, executor, connections
and MLflow stores, so that ``make up-team`` and ``docker compose up`` cannot drift.

Read from the plan of processes (``fmops.team_stack.plan``), which starts nothing; the e2e tests
in tests/integration/test_team_stack.py run it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from fmops import team_compose, team_stack
from fmops.airflow.hostname import HOSTNAME_ENV
from fmops.stack import StackError

PORTS = team_compose.Ports(
    postgres=25432,
    mlflow_db=25433,
    redis=26379,
    s3=29000,
    mlflow=25000,
    api=28080,
    scheduler_health=28974,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "team"


@pytest.fixture
def spec() -> dict:
    return team_compose.compose()


@pytest.fixture
def plan(home: Path) -> dict[str, team_stack.Process]:
    return {item.name: item for wave in team_stack.plan(PORTS) for item in wave}


@pytest.fixture
def waves(home: Path) -> list[list[team_stack.Process]]:
    return team_stack.plan(PORTS)


def test_every_service_compose_starts_has_a_native_process_and_no_other(plan, spec):
    services = set(team_compose.compose_services(spec))
    assert services == {item.service for item in plan.values()}
    assert {"flower", "airflow-cli"}.isdisjoint(services)  # compose profiles: not started by up
    workers = sorted(name for name, item in plan.items() if item.service == "airflow-worker")
    assert workers == ["airflow-worker-1", "airflow-worker-2"]


def test_the_start_order_follows_compose_depends_on(waves, spec):
    wave_of = {item.service: index for index, wave in enumerate(waves) for item in wave}
    checked = 0
    for name, body in team_compose.compose_services(spec).items():
        for dependency in body.get("depends_on", {}):
            assert wave_of[dependency] < wave_of[name], f"{name} starts before {dependency}"
            checked += 1
    assert checked >= 15  # postgres/redis/init for each Airflow service, mlflow's chain


def test_the_airflow_processes_have_compose_s_environment_and_the_celery_executor(plan, spec):
    values = team_compose.ensure_secrets()
    common = spec["x-airflow-common"]["environment"]
    native_only = team_compose.native_airflow_env(PORTS)
    # What the native stack adds never overrides what compose sets.
    assert set(native_only).isdisjoint(common)
    airflow = [item for item in plan.values() if item.service.startswith("airflow-") and item.env]
    assert len(airflow) == 7  # init, api-server, scheduler, dag-processor, 2 workers, triggerer
    for item in airflow:
        env = item.env
        assert set(common) <= set(env), item.name
        assert env["AIRFLOW__CORE__EXECUTOR"] == common["AIRFLOW__CORE__EXECUTOR"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == common["AIRFLOW__CORE__AUTH_MANAGER"]
        password = values["AIRFLOW_DB_PASSWORD"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
            f"postgresql+psycopg2://airflow:{password}@127.0.0.1:{PORTS.postgres}/airflow"
        )
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == (
            f"db+postgresql://airflow:{password}@127.0.0.1:{PORTS.postgres}/airflow"
        )
        assert env["AIRFLOW__CELERY__BROKER_URL"] == f"redis://:@127.0.0.1:{PORTS.redis}/0"
        assert env["AIRFLOW__CORE__FERNET_KEY"] == values["FERNET_KEY"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == values["AIRFLOW__API_AUTH__JWT_SECRET"]
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            f"http://127.0.0.1:{PORTS.api}/execution/"
        )
        assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{PORTS.mlflow}"
        assert env["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{PORTS.s3}"
        assert env["FMOPS_MLFLOW_UI"] == f"http://127.0.0.1:{PORTS.mlflow}"
        # compose's container folders are this checkout's (its volumes)
        assert env["PYTHONPATH"] == str(team_stack.PROJECT_ROOT / "include")
        assert env["AIRFLOW_CONFIG"] == str(team_compose.airflow_home() / "airflow.cfg")
        assert env["FMOPS_HOME"] == os.environ["FMOPS_HOME"]
        assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
        for name, value in env.items():
            if name in common:
                assert "/opt/airflow" not in value, (name, value)
    hostnames = [item.env[HOSTNAME_ENV] for item in airflow if item.kind == "server"]
    assert len(set(hostnames)) == len(hostnames), hostnames
    assert plan["airflow-worker-1"].env["DUMB_INIT_SETSID"] == "0"  # the worker's own compose env


def test_every_host_compose_s_urls_name_is_a_native_process(spec):
    """A service URL added to compose without a native counterpart fails here."""
    hosts = set()
    for body in [spec["x-airflow-common"], *spec["services"].values()]:
        for value in (body.get("environment") or {}).values():
            match = team_compose._URL.match(str(value))
            if match:
                hosts.add(match.group("host"))
    assert hosts, "compose names no service URL?"
    assert hosts - {"localhost"} <= set(PORTS.for_service()), hosts
    native = team_compose.service_env(
        spec["x-airflow-common"]["environment"], team_compose.ensure_secrets(), PORTS, {}
    )
    for name, value in native.items():
        match = team_compose._URL.match(value)
        if match:
            assert match.group("host") == "127.0.0.1", (name, value)


def test_connections_are_the_same_in_both(plan, spec):
    """Airflow connections set in the environment (AIRFLOW_CONN_*): compose's, and no other."""
    compose_connections = {
        name for name in spec["x-airflow-common"]["environment"] if name.startswith("AIRFLOW_CONN_")
    }
    for item in plan.values():
        if item.service.startswith("airflow-") and item.env:
            native = {
                name
                for name in item.env
                if name.startswith("AIRFLOW_CONN_") and name not in os.environ
            }
            assert native == compose_connections, item.name


def test_mlflow_has_compose_s_stores(plan, spec):
    values = team_compose.ensure_secrets()
    service = spec["services"]["mlflow"]
    native = plan["mlflow"]
    assert native.command[1:] == [
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(PORTS.mlflow),
        "--serve-artifacts",
        "--artifacts-destination",
        "s3://fmops-mlflow/",
    ]
    assert service["command"][1:] == [
        "server",
        "--host",
        "0.0.0.0",  # noqa: S104 - compose's, inside its network
        "--port",
        "5000",
        "--serve-artifacts",
        "--artifacts-destination",
        "s3://fmops-mlflow/",
    ]
    assert native.env["MLFLOW_BACKEND_STORE_URI"] == (
        f"postgresql://mlflow:{values['MLFLOW_DB_PASSWORD']}@127.0.0.1:{PORTS.mlflow_db}/mlflow"
    )
    assert native.env["AWS_ACCESS_KEY_ID"] == values["MINIO_ROOT_USER"]
    assert native.env["MLFLOW_S3_ENDPOINT_URL"] == f"http://127.0.0.1:{PORTS.s3}"
    # the artifact bucket is one that compose's minio-init (and the native stack) creates
    assert team_compose.buckets(spec) == ["fmops-mlflow", "fmops-data"]
    # both PostgreSQL services are the image's: superuser, password and database from compose
    for name, port in (("postgres", PORTS.postgres), ("mlflow-db", PORTS.mlflow_db)):
        assert plan[name].command[-5:] == [
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            "unix_socket_directories=",
        ]


def test_what_listens_binds_127_0_0_1_only(plan):
    assert plan["redis"].command[plan["redis"].command.index("--bind") + 1] == "127.0.0.1"
    assert plan["minio"].command[plan["minio"].command.index("-H") + 1] == "127.0.0.1"
    for name in ("airflow-worker-1", "airflow-worker-2", "airflow-triggerer"):
        # a log server binds every interface; the api-server reads the shared log folder
        assert "--skip-serve-logs" in plan[name].command, name
    scheduler = plan["airflow-scheduler"].env
    assert scheduler["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST"] == "127.0.0.1"
    assert scheduler["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_secrets_are_generated_once_into_a_private_file(home):
    first = team_compose.ensure_secrets()
    path = team_compose.secrets_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(team_compose.SECRETS) <= set(first)
    Fernet(first["FERNET_KEY"].encode())  # a valid key
    assert len({first[name] for name in team_compose.SECRETS}) == len(team_compose.SECRETS)
    path.chmod(0o644)
    assert team_compose.ensure_secrets() == first  # kept, and made private again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the names are compose's: every one is a ${...:?} compose requires
    text = team_compose.COMPOSE_FILE.read_text()
    for name in team_compose.SECRETS:
        assert f"${{{name}:?" in text, name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", "a"),
        ("x${B:-dflt}y", "xdflty"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${UNSET-dflt}", "dflt"),
        ("$${HOSTNAME}", "${HOSTNAME}"),
        ("${A:?set A}", "a"),
    ],
)
def test_interpolation_is_compose_s(text, expected):
    assert team_compose.interpolate(text, {"A": "a", "EMPTY": ""}) == expected


def test_a_required_variable_that_is_missing_is_named():
    with pytest.raises(StackError, match="MINIO_ROOT_USER is not set: set MINIO_ROOT_USER in .env"):
        team_compose.interpolate("${MINIO_ROOT_USER:?set MINIO_ROOT_USER in .env}", {})


def test_a_compose_volume_without_a_native_place_is_refused(spec):
    changed = yaml.safe_load(yaml.safe_dump(spec))
    changed["x-airflow-common"]["volumes"].append("/srv/models:/opt/airflow/models")
    with pytest.raises(StackError, match="mounts '/srv/models:/opt/airflow/models'"):
        team_compose.container_paths(changed)


def test_up_starts_what_is_not_running_and_runs_the_init_steps_only_when_needed(
    home, monkeypatch: pytest.MonkeyPatch
):
    """`fmops stack up --profile team` on a running stack checks it and starts nothing;
    after one process died it starts that one, without airflow-init (the database is migrated)
    or minio-init (the store kept its buckets); after the S3 store died, minio-init runs again
    (moto starts empty)."""
    ran: list[str] = []
    alive: set[str] = set()

    def server(name: str) -> team_stack.Process:
        return team_stack.Process(name, name, ["true"], {}, healthy=lambda: True)

    def once(name: str, **when: str) -> team_stack.Process:
        def run() -> bool:
            ran.append(name)
            return True

        return team_stack.Process(name, name, [], {}, healthy=run, kind="once", **when)

    waves = [
        [server("postgres"), server("minio")],
        [once("airflow-init", prepares="airflow-apiserver"), once("minio-init", completes="minio")],
        [server("airflow-apiserver"), server("airflow-worker-1")],
    ]
    monkeypatch.setattr(team_stack, "plan", lambda ports=None: waves)

    def spawn(item: team_stack.Process) -> dict:
        ran.append(f"start {item.name}")
        alive.add(item.name)
        return {}

    monkeypatch.setattr(team_stack, "spawn", spawn)
    monkeypatch.setattr(
        team_stack, "_state", lambda: {name: {"pid": name} for name in sorted(alive)}
    )
    monkeypatch.setattr(team_stack.processes, "alive", lambda identity: bool(identity))
    monkeypatch.setattr(team_stack, "status", lambda ports=None: {})

    team_stack.start(PORTS)
    assert ran == [
        "start postgres",
        "start minio",
        "airflow-init",
        "minio-init",
        "start airflow-apiserver",
        "start airflow-worker-1",
    ]
    ran.clear()
    team_stack.start(PORTS)
    assert ran == []  # all running: checked, nothing started
    alive.discard("airflow-worker-1")
    team_stack.start(PORTS)
    assert ran == ["start airflow-worker-1"]
    ran.clear()
    alive.discard("minio")
    team_stack.start(PORTS)
    assert ran == ["start minio", "minio-init"]
