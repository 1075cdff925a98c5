"""The local endpoint's router: ``python -m fmops.deployment.router --state FILE --port PORT``.

Listens on a stable 127.0.0.1 port and forwards each ``POST /invocations`` to one of the model
variants (blue, green) by the weights in the endpoint's state file, which it re-reads whenever
the file changes: a deployment shifts traffic by rewriting that file, and a restarted router
comes back with the same routing. A request whose variant refuses the connection (a variant
being retired) is sent once to another variant with traffic, so a cut-over drops no request.

Per variant it counts requests, errors (5xx and failed connections) and latencies over a sliding
window; ``GET /admin/stats`` returns them for the deploy tasks' bake and smoke checks.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import sys
import threading
import time
from collections import deque
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("fmops.router")
MAX_BODY_BYTES = 256 * 1024
UPSTREAM_TIMEOUT_SECONDS = 30
WINDOW = 1000


class VariantStats:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies_ms: deque[float] = deque(maxlen=WINDOW)

    def snapshot(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            return (
                round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2) if ordered else None
            )

        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency_ms_p50": pct(0.5),
            "latency_ms_p95": pct(0.95),
        }


class Router(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state_file: Path):
        super().__init__(("127.0.0.1", port), RouterHandler)
        self.state_file = state_file
        self.state_mtime = 0.0
        self.variants: dict[str, dict[str, Any]] = {}
        self.stats: dict[str, VariantStats] = {}
        self.lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        try:
            mtime = self.state_file.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self.state_mtime:
            return
        state = json.loads(self.state_file.read_text())
        with self.lock:
            self.variants = state.get("variants", {})
            self.state_mtime = mtime
            for name in self.variants:
                self.stats.setdefault(name, VariantStats())
        log.info("routing: %s", {n: v["weight"] for n, v in self.variants.items()})

    def choose(self, exclude: set[str]) -> tuple[str, dict[str, Any]] | None:
        self.reload()
        with self.lock:
            live = [
                (n, v) for n, v in self.variants.items() if v["weight"] > 0 and n not in exclude
            ]
        if not live:
            return None
        return random.choices(live, weights=[v["weight"] for _, v in live])[0]

    def record(self, name: str, ok: bool, elapsed_ms: float) -> None:
        with self.lock:
            stats = self.stats.setdefault(name, VariantStats())
            stats.requests += 1
            stats.errors += 0 if ok else 1
            stats.latencies_ms.append(elapsed_ms)


class RouterHandler(BaseHTTPRequestHandler):
    server: Router
    timeout = UPSTREAM_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug(format, *args)

    def _reply(self, status: int, body: bytes, variant: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if variant:
            self.send_header("X-Fmops-Variant", variant)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._reply(status, json.dumps(data).encode())

    def do_GET(self) -> None:  # noqa: N802
        self.server.reload()
        if self.path == "/ping":
            live = [n for n, v in self.server.variants.items() if v["weight"] > 0]
            status = HTTPStatus.OK if live else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, {"status": "healthy" if live else "no variant", "variants": live})
        elif self.path == "/admin/stats":
            with self.server.lock:
                stats = {n: s.snapshot() for n, s in self.server.stats.items()}
                variants = dict(self.server.variants)
            self._json(HTTPStatus.OK, {"variants": variants, "stats": stats})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route GET {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/invocations":
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route POST {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body of {length} bytes; at most {MAX_BODY_BYTES}"},
            )
            return
        body = self.rfile.read(length)
        tried: set[str] = set()
        while (choice := self.server.choose(tried)) is not None:
            name, variant = choice
            tried.add(name)
            started = time.monotonic()
            try:
                connection = http.client.HTTPConnection(
                    "127.0.0.1", variant["port"], timeout=UPSTREAM_TIMEOUT_SECONDS
                )
                connection.request(
                    "POST",
                    "/invocations",
                    body,
                    {"Content-Type": self.headers.get("Content-Type", "application/json")},
                )
                response = connection.getresponse()
                payload = response.read()
                connection.close()
            except ConnectionRefusedError:
                continue  # variant retired between routing and connecting: try another one
            except OSError as err:
                self.server.record(name, False, (time.monotonic() - started) * 1000)
                self._json(HTTPStatus.BAD_GATEWAY, {"error": f"variant {name} failed: {err}"})
                return
            elapsed = (time.monotonic() - started) * 1000
            self.server.record(name, response.status < 500, elapsed)
            self._reply(response.status, payload, name)
            return
        self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no variant is serving traffic"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Route the local endpoint's traffic")
    parser.add_argument("--state", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    router = Router(args.port, args.state)
    log.info("router listening on 127.0.0.1:%s", args.port)
    router.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
