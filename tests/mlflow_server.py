"""`mlflow server` on 127.0.0.1 for the tests that need a real tracking server: started on a
free port with a SQLite backend store and a local artifact root, stopped (and started again, as an
outage) by the tests. ``tests/`` is on ``sys.path``: ``from mlflow_server import MlflowServer``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from airflow_rest import free_port  # below the ephemeral range: the server restarts on it


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with a SQLite store and a local artifact root; stop() and
    start() again keep the store, so a restart is an outage, not a new server."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 90) -> None:
        log = (self.folder / "server.log").open("a")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'mlflow.db'}",
                "--default-artifact-root",
                (self.folder / "artifacts").as_uri(),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends it and its workers
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited; see {self.folder / 'server.log'}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not healthy after {timeout} s")
            time.sleep(0.3)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        while self.healthy():  # until the port refuses
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rest(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A POST to MLflow's REST API, as a reviewer's script or the UI sends it."""
        request = urllib.request.Request(
            f"{self.url}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    def set_version_tag(self, model: str, version: str, key: str, value: str) -> None:
        self.rest(
            "model-versions/set-tag",
            {"name": model, "version": version, "key": key, "value": value},
        )
