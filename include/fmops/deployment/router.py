"""The local endpoint's router: ``python -m fmops.deployment.router --state FILE --port PORT``.

Listens on a stable 127.0.0.1 port and forwards each ``POST /invocations`` to one of the model
variants (blue, green), chosen at random by the weights of the endpoint's routing file, its
``state.json`` (each variant's ``port``, ``weight`` and ``version``, and the ``generation``;
``fmops.deployment.local``). The file is the router's only input: a deployment shifts traffic
by rewriting it (atomically, with a new ``generation``), the router picks the change up on its
next request, and a restarted router comes back with the same routing. ``GET /admin/stats``
says which generation it applies, so a deployment can wait until a shift has taken effect.

No request is dropped by a cut-over: choosing a variant and counting the request as in flight on
it happen under one lock, so once the router applies a generation that gives a variant no
weight and its in-flight count is zero, nothing can reach it any more and it can be stopped. A
variant that refuses the connection or drops it before answering (one that crashed) is counted
as an error of that variant and the request goes to another variant with traffic; inference is
idempotent, so the retry is safe. A request that times out is answered 504.

Per variant the router keeps every request of a sliding window (status, latency, the routing
generation it was sent under): ``GET /admin/stats?window=S&since_generation=N&percentiles=50,95``
returns counts of requests, 4xx, 5xx (502/504 from the router included) and timeouts, latency
statistics and the requests in flight, over the last S seconds and/or since generation N (the
traffic of one baking period). The deployment's alarms read it. A variant that serves a
generative model says how many tokens it generated (TGI's ``x-generated-tokens`` header): for
those answers the router also keeps the latency per generated token (the router's latency
divided by the count; answers of 0 tokens have none), whose statistics ``latency_per_token_ms``
gives beside the number of requests they cover (``token_requests``).

A ``X-Fmops-Target-Variant: <color>`` header sends a request to that variant whatever the weights
(SageMaker's ``TargetVariant``): the smoke traffic of a baking period uses it.

Request hygiene: ``POST /invocations`` only, a ``Content-Length`` of at most ``MAX_BODY_BYTES``
(413; 411 without one), and the variant behind it validates the JSON (400 with a message).
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import http.client
import json
import logging
import math
import os
import random
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("fmops.router")
MAX_BODY_BYTES = 256 * 1024
UPSTREAM_TIMEOUT_SECONDS = 30.0
# A client's whole request (its line, headers and body; the wait for the next one on a kept-alive
# connection) must arrive within this, however it trickles in: the socket timeout is per read, so
# a byte every few seconds would hold a thread for ever. Past it the connection is closed.
REQUEST_READ_SECONDS = 30.0
# Connections served at once (a thread each); one more is answered 503 and closed at once.
MAX_CONNECTIONS = 256
WINDOW_SECONDS = 600.0  # how far back the per-variant records go
MAX_RECORDS = 100_000  # per variant, whatever the window: bounds the router's memory
DEFAULT_PERCENTILES = (50.0, 95.0, 99.0)
IDENTITY_FILE = "router.identity.json"  # beside the routing file: see record_identity
TARGET_HEADER = "X-Fmops-Target-Variant"
# Aiming a request at a variant (the deployment's smoke traffic on green, whatever its weight)
# takes the endpoint's admin token, which only its state file holds (0600): a client cannot aim
# traffic at green, nor skew its counters during a bake.
TOKEN_HEADER = "X-Fmops-Admin-Token"
STATS_EXAMPLE = "/admin/stats?window=60&since_generation=3&percentiles=50,95"
VARIANT_HEADER = "X-Fmops-Variant"
VERSION_HEADER = "X-Fmops-Version"
GENERATED_TOKENS_HEADER = "x-generated-tokens"  # TGI's name; HTTP headers ignore case
# A pooled connection to a variant that the variant closed while idle fails like this on reuse.
STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def body_refusal(headers: Any, max_bytes: int = MAX_BODY_BYTES) -> tuple[HTTPStatus, str] | None:
    """Why a request's body is refused before it is read (the router and the variants share
    the rule): chunked or without ``Content-Length`` (411), a bad length (400), too large (413).
    None when it may be read."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send a Content-Length"
    declared = headers.get("Content-Length")
    if declared is None:
        return HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required"
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if length < 0:
        return HTTPStatus.BAD_REQUEST, f"Content-Length {declared!r} is not a byte count"
    if length > max_bytes:
        return (
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the body has {length} bytes; at most {max_bytes} per request",
        )
    return None


@dataclass(frozen=True)
class Record:
    at: float  # time.monotonic() when the answer came
    generation: int  # the routing generation the request was routed under
    status: int  # the status the client got (502 / 504 from the router itself)
    latency_ms: float
    timed_out: bool = False
    generated_tokens: int | None = None  # the variant's x-generated-tokens, when it sent one

    @property
    def latency_per_token_ms(self) -> float | None:
        return self.latency_ms / self.generated_tokens if self.generated_tokens else None


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values (CloudWatch's pNN on a full sample)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class VariantStats:
    """One variant's requests over a sliding window, its totals, and what is in flight."""

    def __init__(self, max_records: int = MAX_RECORDS, window_seconds: float = WINDOW_SECONDS):
        self.records: deque[Record] = deque(maxlen=max_records)
        self.window_seconds = window_seconds
        self.total_requests = 0
        self.total_errors = 0
        self.in_flight = 0

    def add(self, record: Record) -> None:
        self.records.append(record)
        self.total_requests += 1
        self.total_errors += record.status >= 500
        horizon = record.at - self.window_seconds
        while self.records and self.records[0].at < horizon:
            self.records.popleft()

    def frozen(self) -> tuple[list[Record], dict[str, int]]:
        """The records and counters as they are now (taken under the router's lock, so that
        the statistics are computed outside it)."""
        counters = {
            "in_flight": self.in_flight,
            "total_requests": self.total_requests,
            "total_errors_5xx": self.total_errors,
        }
        return list(self.records), counters

    def snapshot(
        self,
        now: float | None = None,
        window: float | None = None,
        since_generation: int | None = None,
        percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    ) -> dict[str, Any]:
        records, counters = self.frozen()
        return summarize(records, counters, now, window, since_generation, percentiles)


def latency_statistics(
    values: list[float], percentiles: Iterable[float]
) -> dict[str, float | None]:
    """Average, maximum and the percentiles of ``values`` (None each when there are none)."""
    ordered = sorted(values)
    found: dict[str, float | None] = {
        "average": round(sum(ordered) / len(ordered), 2) if ordered else None,
        "maximum": round(ordered[-1], 2) if ordered else None,
    }
    for q in percentiles:
        value = percentile(ordered, q)
        found[f"p{q:g}"] = round(value, 2) if value is not None else None
    return found


def summarize(
    records: list[Record],
    counters: dict[str, int],
    now: float | None = None,
    window: float | None = None,
    since_generation: int | None = None,
    percentiles: Iterable[float] = DEFAULT_PERCENTILES,
) -> dict[str, Any]:
    """Counts and latency statistics of the records in the window and since the generation."""
    now = time.monotonic() if now is None else now
    percentiles = tuple(percentiles)
    selected = [
        r
        for r in records
        if (window is None or r.at >= now - window)
        and (since_generation is None or r.generation >= since_generation)
    ]
    count = len(selected)
    errors_5xx = sum(r.status >= 500 for r in selected)
    errors_4xx = sum(400 <= r.status < 500 for r in selected)
    per_token = [r.latency_per_token_ms for r in selected if r.latency_per_token_ms is not None]
    return {
        "requests": count,
        "ok": sum(200 <= r.status < 300 for r in selected),
        "errors_4xx": errors_4xx,
        "errors_5xx": errors_5xx,
        "timeouts": sum(r.timed_out for r in selected),
        "error_rate_5xx": round(errors_5xx / count, 6) if count else None,
        "error_rate_4xx": round(errors_4xx / count, 6) if count else None,
        "latency_ms": latency_statistics([r.latency_ms for r in selected], percentiles),
        "token_requests": len(per_token),
        "latency_per_token_ms": latency_statistics(per_token, percentiles),
        **counters,
    }


class Router(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many clients connect at once under load; the default is 5

    def __init__(self, port: int, routing_file: Path):
        super().__init__(("127.0.0.1", port), RouterHandler)
        self.routing_file = routing_file
        self.file_key: tuple[int, int, int] | None = None
        self.variants: dict[str, dict[str, Any]] = {}
        self.generation = 0
        self.timeout = UPSTREAM_TIMEOUT_SECONDS
        self.admin_token: str | None = None
        self.stats: dict[str, VariantStats] = {}
        self.lock = threading.Lock()
        self.local = threading.local()  # per handler thread: pooled connections to the variants
        self.started = time.monotonic()
        self.read_seconds = REQUEST_READ_SECONDS
        self.max_connections = MAX_CONNECTIONS
        self.connections = 0
        self.deadlines: dict[socket.socket, float] = {}  # connections reading a request
        self.reload()
        threading.Thread(target=self._reap, name="router-reaper", daemon=True).start()

    # -- bounds on clients ------------------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, up to ``max_connections``; past it, 503 and close.

        The refusal is written at once, in the accept loop, without reading the request (a slow
        client must not hold the loop): a client still sending its body when the connection
        closes may see a reset instead of the 503. Either way it should retry later."""
        with self.lock:
            admitted = self.connections < self.max_connections
            if admitted:
                self.connections += 1
        if admitted:
            super().process_request(request, client_address)
            return
        body = json.dumps(
            {"error": f"the endpoint serves {self.max_connections} connections at once; retry"}
        ).encode()
        with contextlib.suppress(OSError):
            request.sendall(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Retry-After: 1\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections -= 1
                self.deadlines.pop(request, None)

    def reading(self, connection: socket.socket, reading: bool) -> None:
        """A connection starts (or ends) reading a request: its deadline is set (or cleared)."""
        with self.lock:
            if reading:
                self.deadlines[connection] = time.monotonic() + self.read_seconds
            else:
                self.deadlines.pop(connection, None)

    def _reap(self) -> None:
        """Close the connections whose request has not arrived whole by its deadline."""
        while True:
            time.sleep(min(1.0, self.read_seconds / 4))
            now = time.monotonic()
            with self.lock:
                late = [c for c, deadline in self.deadlines.items() if deadline < now]
                for connection in late:
                    del self.deadlines[connection]
            for connection in late:
                log.warning("closing a connection whose request took over %gs", self.read_seconds)
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def reload(self) -> None:
        """Apply the routing file if it changed (an atomic replace gives it a new inode)."""
        try:
            info = os.stat(self.routing_file)
        except FileNotFoundError:
            return
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if key == self.file_key:
            return
        try:
            routing = json.loads(Path(self.routing_file).read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.error("cannot read %s (%s); keeping the current routing", self.routing_file, err)
            return
        with self.lock:
            if key == self.file_key:
                return
            self.file_key = key
            # what routing needs of each variant (the state file holds more: processes, folders)
            variants = {
                name: {k: v[k] for k in ("port", "weight", "version") if k in v}
                for name, v in routing.get("variants", {}).items()
            }
            previous, self.variants = self.variants, variants
            self.generation = int(routing.get("generation", 0))
            self.timeout = float(routing.get("timeout_seconds", UPSTREAM_TIMEOUT_SECONDS))
            self.admin_token = routing.get("admin_token")
            self.read_seconds = float(routing.get("request_read_seconds", REQUEST_READ_SECONDS))
            self.max_connections = int(routing.get("max_connections", MAX_CONNECTIONS))
            # A color that now names another process (port) starts counting afresh, and a
            # removed one is forgotten; requests in flight keep the counters they started with.
            for name in set(self.stats) - set(self.variants):
                del self.stats[name]
            for name, variant in self.variants.items():
                before = previous.get(name)
                if before is None or before.get("port") != variant.get("port"):
                    self.stats[name] = VariantStats()
        log.info(
            "routing generation %s: %s",
            self.generation,
            {n: v["weight"] for n, v in self.variants.items()},
        )

    def choose(
        self, exclude: set[str], target: str | None = None
    ) -> tuple[str, dict[str, Any], int, VariantStats] | None:
        """A variant by weight (or the target one): its name, routing entry, the generation and
        its counters, where the request counts as in flight until ``release``."""
        self.reload()
        with self.lock:
            if target is not None:
                variant = self.variants.get(target)
                if variant is None or target in exclude:
                    return None
                name = target
            else:
                live = [
                    (n, v)
                    for n, v in self.variants.items()
                    if v.get("weight", 0) > 0 and n not in exclude
                ]
                if not live:
                    return None
                name, variant = random.choices(live, weights=[v["weight"] for _, v in live])[0]
            stats = self.stats.setdefault(name, VariantStats())
            stats.in_flight += 1
            return name, variant, self.generation, stats

    def release(self, stats: VariantStats, record: Record | None) -> None:
        with self.lock:
            stats.in_flight -= 1
            if record is not None:
                stats.add(record)

    def snapshot(
        self,
        window: float | None = None,
        since_generation: int | None = None,
        percentiles: Iterable[float] = DEFAULT_PERCENTILES,
    ) -> dict[str, Any]:
        self.reload()
        percentiles = tuple(percentiles)
        now = time.monotonic()
        with self.lock:  # copies only: requests wait for this lock
            generation = self.generation
            variants = {n: dict(v) for n, v in self.variants.items()}
            frozen = {n: s.frozen() for n, s in self.stats.items()}
        return {
            "generation": generation,
            "variants": variants,
            "stats": {
                n: summarize(records, counters, now, window, since_generation, percentiles)
                for n, (records, counters) in frozen.items()
            },
            "window_seconds": window,
            "since_generation": since_generation,
            "uptime_seconds": round(now - self.started, 3),
        }

    def connection(self, port: int) -> tuple[http.client.HTTPConnection, bool]:
        """A kept-alive connection to a variant for this thread; True if it was reused."""
        pool: dict[int, http.client.HTTPConnection] = self.local.__dict__.setdefault("pool", {})
        if port in pool:
            return pool[port], True
        pool[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
        return pool[port], False

    def discard(self, port: int) -> None:
        pool = self.local.__dict__.get("pool", {})
        connection = pool.pop(port, None)
        if connection is not None:
            connection.close()


def generated_tokens(header: str | None) -> int | None:
    """The count of an ``x-generated-tokens`` header; None without one or when it is not a
    count (a variant's bad header must not fail the client's request)."""
    if header is None:
        return None
    try:
        tokens = int(header)
    except ValueError:
        log.warning("%s: %r is not a token count; ignored", GENERATED_TOKENS_HEADER, header)
        return None
    return tokens if tokens >= 0 else None


class RefusedError(Exception):
    """The variant did not take the request (refused, or dropped it unanswered)."""


class RouterHandler(BaseHTTPRequestHandler):
    server: Router
    protocol_version = "HTTP/1.1"  # keep-alive: a client need not connect for every request
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall
    timeout = UPSTREAM_TIMEOUT_SECONDS  # a client that stalls mid-request is cut off

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug(format, *args)

    def handle_one_request(self) -> None:
        # From the first byte of the request line to the end of the body: one deadline (the
        # do_* methods end it once the request is read; the variant's answer has its own).
        self.server.reading(self.connection, True)
        try:
            super().handle_one_request()
        finally:
            self.server.reading(self.connection, False)

    def _reply(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, close: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:  # the request body was not read: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any], close: bool = False) -> None:
        self._reply(status, json.dumps(data).encode(), close=close)

    def do_GET(self) -> None:  # noqa: N802
        self.server.reading(self.connection, False)
        url = urlsplit(self.path)
        if url.path == "/ping":
            self.server.reload()
            live = [n for n, v in self.server.variants.items() if v.get("weight", 0) > 0]
            status = HTTPStatus.OK if live else HTTPStatus.SERVICE_UNAVAILABLE
            self._json(status, {"status": "healthy" if live else "no variant", "variants": live})
        elif url.path == "/admin/stats":
            try:
                query = parse_qs(url.query)
                window = float(query["window"][0]) if "window" in query else None
                since = int(query["since_generation"][0]) if "since_generation" in query else None
                wanted = query.get("percentiles", [""])[0]
                percentiles = [float(q) for q in wanted.split(",") if q] or DEFAULT_PERCENTILES
                if any(not 0 < q <= 100 for q in percentiles):
                    raise ValueError("percentiles are between 0 (exclusive) and 100")
            except ValueError as err:
                self._json(
                    HTTPStatus.BAD_REQUEST,
                    {"error": f"bad query {url.query!r} ({err}); e.g. {STATS_EXAMPLE}"},
                )
                return
            self._json(HTTPStatus.OK, self.server.snapshot(window, since, percentiles))
        else:
            self._json(
                HTTPStatus.NOT_FOUND,
                {"error": f"no route GET {url.path}; use /ping or /admin/stats"},
            )

    def _body(self) -> bytes | None:
        """The request body, or None after answering why it is refused."""
        refused = body_refusal(self.headers)
        if refused:
            self._json(refused[0], {"error": refused[1]}, close=True)
            return None
        return self.rfile.read(int(self.headers["Content-Length"]))

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path != "/invocations":
            self._json(
                HTTPStatus.NOT_FOUND,
                {"error": f"no route POST {self.path}; use /invocations"},
                close=True,
            )
            return
        body = self._body()
        self.server.reading(self.connection, False)
        if body is None:
            return
        target = self.headers.get(TARGET_HEADER) or None
        if target is not None and not self._admin():
            self._json(
                HTTPStatus.FORBIDDEN,
                {
                    "error": f"{TARGET_HEADER} is for the endpoint's deployment: it needs the "
                    f"endpoint's admin token in {TOKEN_HEADER} (send the request without it to "
                    "be routed by the weights)"
                },
            )
            return
        content_type = self.headers.get("Content-Type", "application/json")
        tried: set[str] = set()
        while (choice := self.server.choose(tried, target)) is not None:
            name, variant, generation, stats = choice
            tried.add(name)
            started = time.monotonic()
            record = None
            try:
                status, payload, tokens = self._forward(variant["port"], body, content_type)
                record = Record(
                    time.monotonic(),
                    generation,
                    status,
                    (time.monotonic() - started) * 1000,
                    generated_tokens=tokens,
                )
            except TimeoutError:
                record = Record(
                    time.monotonic(), generation, 504, (time.monotonic() - started) * 1000, True
                )
            except RefusedError as err:
                record = Record(
                    time.monotonic(), generation, 502, (time.monotonic() - started) * 1000
                )
                log.warning("variant %s did not take a request (%s); trying another", name, err)
                continue
            finally:
                # Counted before the client hears back: a client that reads /admin/stats
                # right after its answer sees its own request in them.
                self.server.release(stats, record)
            if record.timed_out:
                self._json(
                    HTTPStatus.GATEWAY_TIMEOUT,
                    {"error": f"variant {name} did not answer within {self.server.timeout:g} s"},
                )
                return
            headers = {VARIANT_HEADER: name, VERSION_HEADER: str(variant.get("version", ""))}
            self._reply(status, payload, headers)
            return
        if target is not None and target not in self.server.variants:
            self._json(
                HTTPStatus.BAD_REQUEST,
                {
                    "error": f"{TARGET_HEADER}: no variant {target!r}; the endpoint has "
                    f"{sorted(self.server.variants) or 'none'}"
                },
            )
        elif tried:
            self._json(
                HTTPStatus.BAD_GATEWAY, {"error": f"no variant took the request ({sorted(tried)})"}
            )
        else:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "no variant is serving traffic"})

    def _admin(self) -> bool:
        """Whether the request carries the endpoint's admin token."""
        self.server.reload()
        expected, given = self.server.admin_token, self.headers.get(TOKEN_HEADER)
        return bool(expected and given) and hmac.compare_digest(expected, given)

    def _forward(self, port: int, body: bytes, content_type: str) -> tuple[int, bytes, int | None]:
        """One request to a variant: (status, body, the tokens it says it generated). A pooled
        connection that the variant closed while idle is replaced once; ``RefusedError`` when the
        variant did not take the request."""
        for _ in range(2):
            connection, reused = self.server.connection(port)
            try:
                connection.request("POST", "/invocations", body, {"Content-Type": content_type})
                response = connection.getresponse()
                payload = response.read()
            except STALE_CONNECTION as err:
                self.server.discard(port)
                if reused:
                    continue
                raise RefusedError(str(err) or type(err).__name__) from err
            except TimeoutError:
                self.server.discard(port)
                raise
            except OSError as err:  # refused, unreachable
                self.server.discard(port)
                raise RefusedError(str(err)) from err
            if response.will_close:
                self.server.discard(port)
            return (
                response.status,
                payload,
                generated_tokens(response.getheader(GENERATED_TOKENS_HEADER)),
            )
        raise RefusedError("the connection was closed twice")


def record_identity(path: Path, port: int) -> None:
    """The router's own record of itself (pid, start time, port), written once it listens.
    Whoever started it records it too, but can be killed between starting it and saving that
    (a deploy task's worker SIGKILLed): the endpoint then finds its router here, not a stranger
    on its port (``LocalEndpoint._ensure_router``)."""
    from fmops.processes import start_time

    identity = {"pid": os.getpid(), "start": start_time(os.getpid()), "port": port}
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(identity))
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Route the local endpoint's traffic")
    parser.add_argument("--state", required=True, type=Path, help="the routing file")
    parser.add_argument("--port", required=True, type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    router = Router(args.port, args.state)
    record_identity(args.state.parent / IDENTITY_FILE, args.port)
    log.info("router listening on 127.0.0.1:%s", args.port)
    router.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
