"""Airflow's REST API (v2) for the tests that drive a running stack, and what they check of its
processes and ports: shared by test_airflow_api.py (the local stack) and test_team_stack.py (the
team stack)."""

from __future__ import annotations

import json
import os
import random
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmops.demo import retrying_session

RESERVED_PORTS = {8080, 5000, 8090}  # a developer's own stack and endpoint use these


def clean_env() -> dict[str, str]:
    """A clean shell's environment, as `make up` sees it: without the test session's Airflow
    and MLflow settings (unit-test mode, its AIRFLOW_HOME) or any FMOPS_* override."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_", "FMOPS_"))
    }


def password_file_credentials(path: Path) -> Callable[[], tuple[str, str]]:
    """The simple auth manager's user and password, from its generated passwords file."""

    def read() -> tuple[str, str]:
        username, password = next(iter(json.loads(path.read_text()).items()))
        return username, password

    return read


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port nothing holds, below the kernel's ephemeral range.

    Not one the kernel hands out (``bind(0)``): those come from the ephemeral range, which every
    outgoing connection also draws its local port from. A server the tests stop and start again
    on its port (a killed scheduler's health server, a restarted PostgreSQL or MLflow) then finds
    it taken by some client's connection in between and exits at start; on the team stack's
    tests that happened in CI. A server's port outside that range is never a client's."""
    low, _ = _ephemeral_range()
    top = max(low - 1, 20_001)
    while True:
        port = random.randint(20_000, top)
        if port in RESERVED_PORTS:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def session_members(session_ids: set[int]) -> list[str]:
    """The processes (pid and command line) in any of these sessions: ``fmops stack`` starts
    each server as a session leader, so its session holds everything it started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue  # exited while we looked
        if fields[0] != "Z" and int(fields[3]) in session_ids:
            found.append(f"{stat.parent.name}: {cmdline.strip()[:160]}")
    return found


class RestApi:
    """Airflow's REST API (v2) as an admin user: a JWT from POST /auth/token (the simple auth
    manager's or FAB's)."""

    def __init__(self, base_url: str, credentials: Callable[[], tuple[str, str]], server_log: Path):
        self.base = base_url
        self.read_credentials = credentials
        self.server_log = server_log  # its tail goes into the message of a server error
        # Retries what SQLite's locking makes transient (fmops.demo.retrying_session).
        self.session = retrying_session()
        # A fresh connection per request: a kept-alive one that the server closes while idle
        # would answer the next request with a connection reset.
        self.session.headers["Connection"] = "close"

    @property
    def credentials(self) -> tuple[str, str]:
        return self.read_credentials()

    def login(self) -> None:
        username, password = self.credentials
        response = self.session.post(
            f"{self.base}/auth/token",
            json={"username": username, "password": password},
            timeout=30,
        )
        assert response.status_code in (200, 201), f"POST /auth/token: {response.text}"
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base}/api/v2{path}", timeout=60, **kwargs)
        if response.status_code == 401:  # the token expired: once more with a new one
            self.login()
            response = self.session.request(
                method, f"{self.base}/api/v2{path}", timeout=60, **kwargs
            )
        if response.status_code != expect:
            tail = ""
            if response.status_code >= 500:
                tail = "\n".join(self.server_log.read_text().splitlines()[-60:])
            raise AssertionError(
                f"{method} /api/v2{path} answered {response.status_code}: "
                f"{response.text[:2000]}\n{tail}"
            )
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", limit=500)[
            "task_instances"
        ]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        entry = self.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            deserialize="true",
            map_index=map_index,
        )
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value

    def log_tail(self, ti: dict[str, Any], lines: int = 30) -> str:
        """The end of a task instance's log of its latest try, read through the API."""
        path = (
            f"/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/{ti['task_id']}"
            f"/logs/{max(ti['try_number'], 1)}"
        )
        response = self.session.get(
            f"{self.base}/api/v2{path}",
            params={"map_index": ti["map_index"], "full_content": "true"},
            headers={"Accept": "application/json"},
            timeout=60,
        )
        if response.status_code != 200:
            return f"(no log: {response.status_code} {response.text[:300]})"
        content = response.json()["content"]
        events = content if isinstance(content, list) else [{"event": content}]
        return "\n".join(
            " ".join(str(e[k]) for k in ("timestamp", "level", "event", "error_detail") if e.get(k))
            for e in events[-lines:]
        )


def label(ti: dict[str, Any]) -> str:
    if ti["map_index"] < 0:
        return ti["task_id"]
    return f"{ti['task_id']}[{ti.get('rendered_map_index') or ti['map_index']}]"
