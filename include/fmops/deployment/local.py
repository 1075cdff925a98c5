"""The local endpoint: a router on a stable 127.0.0.1 port in front of blue/green model variants.

State lives under ``.fmops/endpoints/<name>/``: ``state.json`` (variants, their processes,
versions and weights) and ``routing.json`` (what the router reads). The router and the variants
are detached processes, so the endpoint outlives the Airflow task that deployed it; any later
task or ``fmops endpoint ...`` command finds it by name.

A deployment starts the new variant beside the serving one, waits until ``/ping`` answers, then
moves all traffic to it and retires the old variant after a drain period. A variant that never
becomes healthy is removed and the serving one keeps its traffic.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

from fmops import processes
from fmops.jobs.runner import write_json
from fmops.paths import state_dir

log = logging.getLogger(__name__)
COLORS = ("blue", "green")
DRAIN_SECONDS = 2.0


class EndpointError(RuntimeError):
    """The endpoint cannot do what was asked; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_call(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
        try:
            return response.status, json.loads(payload or b"{}")
        except json.JSONDecodeError:
            return response.status, {"raw": payload.decode(errors="replace")}
    finally:
        connection.close()


def healthy(port: int) -> bool:
    try:
        return http_call(port, "GET", "/ping", timeout=2)[0] == 200
    except OSError:
        return False


class LocalEndpoint:
    def __init__(self, name: str):
        self.name = name
        self.dir = state_dir() / "endpoints" / name
        self.state_file = self.dir / "state.json"
        self.routing_file = self.dir / "routing.json"

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {"name": self.name, "port": None, "router": None, "variants": {}}
        return json.loads(self.state_file.read_text())

    def _save(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.state_file, state)
        routing = {
            "variants": {
                color: {"port": v["port"], "weight": v["weight"], "version": v["version"]}
                for color, v in state["variants"].items()
            }
        }
        write_json(self.routing_file, routing)

    def exists(self) -> bool:
        return self.state_file.exists()

    @property
    def port(self) -> int | None:
        return self.state().get("port")

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- processes ----------------------------------------------------------------------------

    def _ensure_router(self, state: dict[str, Any], port: int) -> None:
        if state.get("router") and processes.alive(state["router"]):
            if state["port"] != port:
                raise EndpointError(
                    f"endpoint {self.name} already listens on port {state['port']}, not {port}; "
                    f"delete it first (fmops endpoint delete {self.name}) to move it"
                )
            return
        if not port_free(port):
            raise EndpointError(
                f"port {port} on 127.0.0.1 is taken by another process, so endpoint {self.name} "
                "cannot listen there; stop that process or set deployment.port"
            )
        state["router"] = processes.spawn_detached(
            [
                sys.executable,
                "-m",
                "fmops.deployment.router",
                "--state",
                str(self.routing_file),
                "--port",
                str(port),
            ],
            self.dir / "router.log",
        )
        state["port"] = port

    def _start_variant(
        self, color: str, model_dir: Path, handlers: Path, version: str, timeout: float
    ) -> dict[str, Any]:
        port = free_port()
        identity = processes.spawn_detached(
            [
                sys.executable,
                "-m",
                "fmops.deployment.variant",
                "--model-dir",
                str(model_dir),
                "--handlers",
                str(handlers),
                "--port",
                str(port),
                "--name",
                f"{color}-v{version}",
            ],
            self.dir / f"variant-{color}.log",
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy(port):
                return {
                    "port": port,
                    "version": str(version),
                    "model_dir": str(model_dir),
                    "process": identity,
                    "weight": 0,
                }
            if not processes.alive(identity):
                break
            time.sleep(0.5)
        processes.stop(identity)
        log_tail = (self.dir / f"variant-{color}.log").read_text(errors="replace")[-1500:]
        raise EndpointError(
            f"variant {color} (version {version}) did not become healthy within {timeout:.0f} s; "
            f"it was removed and the endpoint keeps its current traffic. Its log:\n{log_tail}"
        )

    # -- operations ---------------------------------------------------------------------------

    def deploy(
        self, model_dir: Path, handlers: Path, version: str, port: int, health_timeout: float = 120
    ) -> dict[str, Any]:
        """Blue/green, all at once: start the new variant, check it, shift traffic, retire blue."""
        state = self.state()
        serving = [c for c, v in state["variants"].items() if v["weight"] > 0]
        color = next(c for c in COLORS if c not in serving)
        stale = state["variants"].pop(color, None)
        if stale:
            processes.stop(stale.get("process"))
        log.info("endpoint %s: starting %s variant for version %s", self.name, color, version)
        variant = self._start_variant(color, model_dir, handlers, version, health_timeout)
        try:
            self._ensure_router(state, port)
        except EndpointError:
            processes.stop(variant["process"])  # nothing half-deployed stays behind
            raise
        state["variants"][color] = variant
        for name, other in state["variants"].items():
            other["weight"] = 100 if name == color else 0
        self._save(state)
        deadline = time.monotonic() + 30
        while not healthy(port):
            if time.monotonic() > deadline:
                raise EndpointError(
                    f"the router of {self.name} does not answer on port {port}; "
                    f"see {self.dir / 'router.log'}"
                )
            time.sleep(0.3)
        time.sleep(DRAIN_SECONDS)  # requests already routed to the old variant finish
        for name in [n for n in state["variants"] if n != color]:
            old = state["variants"].pop(name)
            processes.stop(old.get("process"))
            log.info("endpoint %s: retired %s (version %s)", self.name, name, old["version"])
        self._save(state)
        log.info("endpoint %s serves version %s at http://127.0.0.1:%s", self.name, version, port)
        return self.status()

    def status(self) -> dict[str, Any]:
        state = self.state()
        router_up = bool(state.get("router")) and processes.alive(state["router"])
        variants = {
            color: {
                "version": v["version"],
                "weight": v["weight"],
                "port": v["port"],
                "alive": processes.alive(v.get("process")),
                "healthy": healthy(v["port"]),
            }
            for color, v in state["variants"].items()
        }
        result = {
            "name": self.name,
            "port": state.get("port"),
            "router_alive": router_up,
            "variants": variants,
        }
        if router_up and state.get("port"):
            try:
                result["stats"] = http_call(state["port"], "GET", "/admin/stats")[1]["stats"]
            except OSError:
                result["stats"] = None
        return result

    def invoke(self, payload: dict[str, Any] | bytes) -> tuple[int, dict[str, Any]]:
        port = self.port
        if port is None:
            raise EndpointError(f"endpoint {self.name} does not exist; deploy a model first")
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return http_call(port, "POST", "/invocations", body)

    def delete(self) -> bool:
        """Stop the router and every variant; deleting a missing endpoint is a no-op."""
        if not self.exists():
            return False
        state = self.state()
        for variant in state["variants"].values():
            processes.stop(variant.get("process"))
        processes.stop(state.get("router"))
        for path in (self.state_file, self.routing_file):
            path.unlink(missing_ok=True)
        log.info("endpoint %s deleted", self.name)
        return True
