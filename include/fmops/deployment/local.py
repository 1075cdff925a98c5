"""The local endpoint: a router on a stable 127.0.0.1 port in front of blue/green model variants.

State lives under ``.fmops/endpoints/<name>/``: ``state.json`` (the variants with their
processes, ports, versions, model folders and weights; the routing ``generation``; the last
``stable`` routing; the ``deployment`` in progress, if any; the last deployment's outcome). The
router reads its routing from the same file (each variant's port, weight and version, and the
generation): one atomic replace per change, under a file lock, so a kill at any instant leaves
the state and the routing of one generation, and a deployment, a rollback and ``fmops endpoint``
commands in other processes never lose each other's changes. The router and the variants are
detached processes, so the endpoint outlives the Airflow task that deployed it; any later task
or ``fmops endpoint ...`` command finds it by name, and ``start`` brings a stopped router (and
variants that carry traffic) back with the persisted routing.

This module is the endpoint's mechanics: start a variant and gate it on ``/ping``, write a
routing and wait until the router applies it, drain a variant, read the router's per-variant
statistics. How a new version takes the traffic (canary, linear, bakes, alarms, rollback) is
``fmops.deployment.rollout``'s: the rollout drives a ``LocalEndpoint`` through these methods,
and this module does not know the rollout.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import http.client
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fmops import processes
from fmops.deployment.router import IDENTITY_FILE
from fmops.paths import state_dir
from fmops.schema import NAME_PATTERN, NAME_RULE

log = logging.getLogger(__name__)
COLORS = ("blue", "green")
ROUTER_START_SECONDS = 30.0
APPLY_SECONDS = 15.0  # the router applies a new routing on its next request or stats read
DRAIN_SECONDS = 60.0  # the longest a retired variant's requests in flight are waited for
# fmops.deployment.router's (not imported: it is a script)
TARGET_HEADER, TOKEN_HEADER = "X-Fmops-Target-Variant", "X-Fmops-Admin-Token"


class EndpointError(RuntimeError):
    """The endpoint cannot do what was asked; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on ``port`` (connections of a stopped server in TIME_WAIT do not count:
    the router binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    timeout: float = 30,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(
            method, path, body, {"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        payload = response.read()
        try:
            return response.status, json.loads(payload or b"{}")
        except json.JSONDecodeError:
            return response.status, {"raw": payload.decode(errors="replace")}
    finally:
        connection.close()


def healthy(port: int | None) -> bool:
    if port is None:
        return False
    try:
        return http_call(port, "GET", "/ping", timeout=2)[0] == 200
    except OSError:
        return False


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: a reader (the router) never sees half a file; unique per thread."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    # the user's alone (it holds the endpoint's admin token), before a byte is in it
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(json.dumps(data, indent=1, default=str))
        out.flush()
        os.fsync(out.fileno())  # on disk before it replaces the file: a crash keeps one of them
    os.replace(tmp, path)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class LocalEndpoint:
    """One named endpoint on this machine. Blocking calls; ``delete`` is idempotent."""

    def __init__(self, name: str):
        # The name is a folder under the state folder: a path ("../../x") must never be one.
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            raise ValueError(
                f"endpoint name {name!r}: {NAME_RULE} (deployment.endpoint_name); "
                f"`fmops endpoint status NAME` takes one of those in {state_dir() / 'endpoints'}"
            )
        self.name = name
        self.dir = state_dir() / "endpoints" / name
        self.state_file = self.dir / "state.json"
        self.lock_file = self.dir / ".lock"

    # -- state --------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if not self.state_file.exists():
            return {
                "name": self.name,
                "port": None,
                "router": None,
                "variants": {},
                "generation": 0,
                "stable": None,
                "deployment": None,
            }
        state = json.loads(self.state_file.read_text())
        state.setdefault("generation", 0)
        state.setdefault("stable", None)
        state.setdefault("deployment", None)
        return state

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """The state, read and written back under the endpoint's file lock."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.lock_file.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.state()
                yield state
                self._save(state)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self, state: dict[str, Any]) -> None:
        """One atomic replace: the state and the routing the router reads from it."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The token that aims a request at a variant (the router's TOKEN_HEADER): in the state
        # file only, which is the user's alone (an endpoint from before it gets one here).
        state.setdefault("admin_token", secrets.token_urlsafe(24))
        _write_json(self.state_file, state)

    def exists(self) -> bool:
        return self.state_file.exists()

    @property
    def port(self) -> int | None:
        return self.state().get("port")

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def weights(self) -> dict[str, int]:
        return {color: v["weight"] for color, v in self.state()["variants"].items()}

    # -- the router ---------------------------------------------------------------------------

    def router_alive(self) -> bool:
        return processes.alive(self.state().get("router"))

    def _ensure_router(self, state: dict[str, Any], port: int) -> bool:
        """Start the router on ``port`` unless it runs; True if it was started (within a
        transaction: the caller saves ``state``, then waits with ``_await_router``)."""
        if state.get("router") and processes.alive(state["router"]):
            if state["port"] != port:
                raise EndpointError(
                    f"endpoint {self.name} already listens on port {state['port']}, not {port}; "
                    f"delete it first (fmops endpoint delete {self.name}) to move it"
                )
            return False
        own = self._own_router()
        if own is not None:  # started by a deploy that was killed before it recorded it
            if own["port"] == port:
                state["router"], state["port"] = {"pid": own["pid"], "start": own["start"]}, port
                log.info("endpoint %s: adopted its router (pid %s)", self.name, own["pid"])
                return False
            processes.stop(own)
        if not port_free(port):
            raise EndpointError(
                f"port {port} on 127.0.0.1 is taken by another process, so endpoint {self.name} "
                "cannot listen there; stop that process or set deployment.port"
            )
        self._save(state)  # the router reads its routing at start
        state["router"] = processes.spawn_detached(
            [
                sys.executable,
                "-m",
                "fmops.deployment.router",
                "--state",
                str(self.state_file),
                "--port",
                str(port),
            ],
            self.dir / "router.log",
        )
        state["port"] = port
        log.info("endpoint %s: router started on 127.0.0.1:%s", self.name, port)
        return True

    def _own_router(self) -> dict[str, Any] | None:
        """The router of this endpoint that runs, by its own record (``router.record_identity``);
        None when there is none."""
        path = self.dir / IDENTITY_FILE
        try:
            identity = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return identity if processes.alive(identity) else None

    def _await_router(self, port: int, identity: dict[str, Any] | None) -> None:
        deadline = time.monotonic() + ROUTER_START_SECONDS
        while time.monotonic() < deadline:
            try:
                if http_call(port, "GET", "/admin/stats", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if not processes.alive(identity):
                break
            time.sleep(0.1)
        raise EndpointError(
            f"the router of {self.name} does not answer on port {port}; "
            f"see {self.dir / 'router.log'}"
        )

    def ensure_router(self, port: int | None = None) -> bool:
        """The router runs (started with the persisted routing if it did not); True if started."""
        with self.transaction() as state:
            port = port or state.get("port")
            if port is None:
                raise EndpointError(f"endpoint {self.name} has no port; deploy a model first")
            started = self._ensure_router(state, port)
        if started or not healthy_admin(port):
            self._await_router(port, self.state().get("router"))
        return started

    def start(self, health_timeout: float = 120) -> dict[str, Any]:
        """Bring the endpoint back after its processes stopped (a reboot, a kill): variants that
        carry traffic start again on their ports, then the router with the persisted routing.
        Idempotent: what runs is left alone."""
        state = self.state()
        if not self.exists():
            raise EndpointError(f"endpoint {self.name} does not exist; deploy a model first")
        for color, variant in state["variants"].items():
            if variant["weight"] > 0 and not processes.alive(variant.get("process")):
                self.restart_variant(color, health_timeout)
        self.ensure_router()
        return self.status()

    # -- variants -----------------------------------------------------------------------------

    def _spawn_variant(self, color: str, variant: dict[str, Any]) -> dict[str, Any]:
        return processes.spawn_detached(
            [
                sys.executable,
                "-m",
                "fmops.deployment.variant",
                "--model-dir",
                str(variant["model_dir"]),
                "--handlers",
                str(variant["handlers"]),
                "--port",
                str(variant["port"]),
                "--name",
                f"{color}-v{variant['version']}",
            ],
            self.dir / f"variant-{color}.log",
        )

    def start_variant(
        self,
        color: str,
        model_dir: Path,
        handlers: Path,
        version: str,
        timeout: float,
        on_wait: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Start ``version`` as variant ``color`` with no traffic and wait until its ``/ping``
        answers. It is recorded (weight 0) before the wait, so that a rollback finds it even if
        this process dies. A variant that does not become healthy within ``timeout`` is stopped,
        removed, and ``EndpointError`` says why with its log's tail. ``on_wait`` runs between
        the looks (a deadline check may raise from it: the variant is then removed too)."""
        variant = {
            "port": free_port(),
            "version": str(version),
            "model_dir": str(model_dir),
            "handlers": str(handlers),
            "weight": 0,
            "started": now_iso(),
        }
        log_path = self.dir / f"variant-{color}.log"
        with self.transaction() as state:
            stale = state["variants"].pop(color, None)
            if stale:
                if stale["weight"] > 0:
                    state["variants"][color] = stale
                    raise EndpointError(
                        f"variant {color} of {self.name} serves {stale['weight']}% of the "
                        "traffic; it cannot be replaced"
                    )
                processes.stop(stale.get("process"))
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            log_path.write_text("")  # this variant's log only, for the error below
            variant["process"] = self._spawn_variant(color, variant)
            state["variants"][color] = variant
        log.info(
            "endpoint %s: starting %s (version %s) on port %s",
            self.name,
            color,
            version,
            variant["port"],
        )
        try:
            if self._await_variant(variant, timeout, on_wait):
                return variant
        except BaseException:
            self.remove_variant(color)
            raise
        self.remove_variant(color)
        tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
        raise EndpointError(
            f"variant {color} (version {version}) did not pass /ping within {timeout:.0f} s; it "
            f"was removed and never received traffic. Its log:\n{tail}"
        )

    def _await_variant(
        self, variant: dict[str, Any], timeout: float, on_wait: Callable[[], None] | None
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if healthy(variant["port"]):
                return True
            if not processes.alive(variant["process"]):
                return False
            if on_wait is not None:
                on_wait()
            time.sleep(0.25)
        return False

    def restart_variant(self, color: str, timeout: float = 120) -> dict[str, Any]:
        """Start a stopped variant again from its recorded model, on its port if it is free."""
        with self.transaction() as state:
            variant = state["variants"][color]
            if processes.alive(variant.get("process")):
                return variant
            if not port_free(variant["port"]):
                variant["port"] = free_port()
                state["generation"] += 1  # the router must learn the new port
            variant["process"] = self._spawn_variant(color, variant)
        log.warning("endpoint %s: variant %s was not running; started again", self.name, color)
        if not self._await_variant(variant, timeout, None):
            raise EndpointError(
                f"variant {color} (version {variant['version']}) of {self.name} did not come back "
                f"within {timeout:.0f} s; see {self.dir / f'variant-{color}.log'}"
            )
        return variant

    def remove_variant(self, color: str) -> bool:
        """Take ``color`` out of the routing and stop its process; True if it was there. Call
        ``drain`` first for a variant that had traffic."""
        with self.transaction() as state:
            variant = state["variants"].pop(color, None)
            if variant is None:
                return False
            state["generation"] += 1
        processes.stop(variant.get("process"))
        log.info("endpoint %s: removed %s (version %s)", self.name, color, variant["version"])
        return True

    # -- routing ------------------------------------------------------------------------------

    def route(self, weights: dict[str, int]) -> int:
        """Persist new weights (colors not named keep theirs) as a new generation and wait until
        the router applies it (if it runs). Returns the generation."""
        with self.transaction() as state:
            unknown = set(weights) - set(state["variants"])
            if unknown:
                raise EndpointError(
                    f"endpoint {self.name} has no variant {sorted(unknown)}; it has "
                    f"{sorted(state['variants'])}"
                )
            for color, weight in weights.items():
                state["variants"][color]["weight"] = int(weight)
            state["generation"] += 1
            generation = state["generation"]
            port, router = state.get("port"), state.get("router")
        if port is not None and processes.alive(router):
            self.await_generation(generation)
        return generation

    def await_generation(self, generation: int, timeout: float = APPLY_SECONDS) -> dict[str, Any]:
        """The router's stats once it applies ``generation`` (or a later one)."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                stats = self.stats()
                if stats["generation"] >= generation:
                    return stats
                last = stats["generation"]
            except (OSError, EndpointError) as err:
                last = err
            time.sleep(0.05)
        raise EndpointError(
            f"the router of {self.name} did not apply routing generation {generation} within "
            f"{timeout:.0f} s (last seen: {last}); see {self.dir / 'router.log'}"
        )

    def stats(
        self,
        window: float | None = None,
        since_generation: int | None = None,
        percentiles: Iterable[float] | None = None,
    ) -> dict[str, Any]:
        """The router's ``/admin/stats``: generation, routing, and per variant the requests,
        4xx, 5xx, timeouts, latency statistics and requests in flight (see the router)."""
        port = self.port
        if port is None:
            raise EndpointError(f"endpoint {self.name} does not exist; deploy a model first")
        query = {}
        if window is not None:
            query["window"] = f"{window:g}"
        if since_generation is not None:
            query["since_generation"] = str(since_generation)
        if percentiles:
            query["percentiles"] = ",".join(f"{q:g}" for q in percentiles)
        path = "/admin/stats" + (f"?{urlencode(query)}" if query else "")
        status, body = http_call(port, "GET", path, timeout=5)
        if status != 200:
            raise EndpointError(f"the router of {self.name} answered {status}: {body}")
        return body

    def drain(self, color: str, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait until the router routes nothing to ``color`` (weight 0 applied) and its requests
        in flight have finished. False if the router does not run or the wait ran out."""
        generation = self.state()["generation"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                stats = self.stats()
            except (OSError, EndpointError):
                return False
            routed = stats["variants"].get(color, {}).get("weight", 0)
            in_flight = stats["stats"].get(color, {}).get("in_flight", 0)
            if stats["generation"] >= generation and routed == 0 and in_flight == 0:
                return True
            time.sleep(0.05)
        log.warning(
            "endpoint %s: %s still had requests in flight after %.0f s", self.name, color, timeout
        )
        return False

    # -- operations ---------------------------------------------------------------------------

    def status(self, window: float = 60) -> dict[str, Any]:
        state = self.state()
        router_up = processes.alive(state.get("router"))
        variants = {
            color: {
                "version": v["version"],
                "weight": v["weight"],
                "port": v["port"],
                "model_dir": v.get("model_dir"),
                "alive": processes.alive(v.get("process")),
                "healthy": healthy(v["port"]),
            }
            for color, v in state["variants"].items()
        }
        result: dict[str, Any] = {
            "name": self.name,
            "port": state.get("port"),
            "url": f"http://127.0.0.1:{state['port']}" if state.get("port") else None,
            "router_alive": router_up,
            "generation": state.get("generation", 0),
            "variants": variants,
            "stable": state.get("stable"),
            "deployment": state.get("deployment"),
            "last_deployment": state.get("last_deployment"),
            "history": state.get("history", []),
        }
        if router_up and state.get("port"):
            try:
                stats = self.stats(window=window)
                result["router_generation"] = stats["generation"]
                result["stats"] = stats["stats"]
                result["stats_window_seconds"] = window
            except (OSError, EndpointError) as err:
                result["stats"] = None
                result["stats_error"] = str(err)
        return result

    def invoke(
        self, payload: dict[str, Any] | bytes, target_variant: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """One request through the router: (HTTP status, JSON body)."""
        port = self.port
        if port is None:
            raise EndpointError(f"endpoint {self.name} does not exist; deploy a model first")
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = None
        if target_variant:  # aimed at a variant: with the admin token the router asks for
            token = self.state().get("admin_token") or ""
            headers = {TARGET_HEADER: target_variant, TOKEN_HEADER: token}
        return http_call(port, "POST", "/invocations", body, headers=headers)

    def delete(self) -> bool:
        """Stop the router and every variant; deleting a missing endpoint is a no-op."""
        if not self.exists():
            return False
        with self.transaction() as state:
            for variant in state["variants"].values():
                processes.stop(variant.get("process"))
            processes.stop(state.get("router"))
            processes.stop(self._own_router())  # one a killed deploy started and never recorded
        self.state_file.unlink(missing_ok=True)
        log.info("endpoint %s deleted", self.name)
        return True


def healthy_admin(port: int) -> bool:
    try:
        return http_call(port, "GET", "/admin/stats", timeout=2)[0] == 200
    except OSError:
        return False
