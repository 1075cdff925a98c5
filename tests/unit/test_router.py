"""The local endpoint's router and variant servers in this process: weights, routing reloads,
per-variant windowed stats, retries, timeouts, request hygiene; and the rollout's pure parts
(the shift plan, the bounds, the alarms).

The variants serve a test double of the model code (``FAKE_HANDLERS``): ``input_fn``,
``output_fn`` and ``BadRequestError`` are the real ones from include/scripts/inference.py (so
the request validation under test is the served one), while ``model_fn``/``predict_fn`` are a
stand-in without torch that labels every text with the variant's name, fails on ``boom`` and
sleeps on ``sleep:<seconds>``. ``GENERATIVE_HANDLERS`` stand in for a generative model's
handlers, with the variant's optional hooks (``warm_up``, ``headers_fn``: TGI's
``x-generated-tokens``). The router and variant servers are the real classes.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
from pathlib import Path

import pytest

from fmops.deployment import router as router_module
from fmops.deployment.local import (
    EndpointError,
    LocalEndpoint,
    _write_json,
    free_port,
)
from fmops.deployment.rollout import (
    Shift,
    breached,
    latency_value,
    plan_shifts,
    rollout,
)
from fmops.deployment.router import Record, Router, VariantStats, generated_tokens, percentile
from fmops.deployment.settings import AlarmSettings, TrafficSettings
from fmops.deployment.variant import VariantServer, load_handlers
from fmops.paths import SCRIPTS_DIR

ADMIN_TOKEN = "the-endpoints-admin-token"  # what LocalEndpoint keeps in its state file
ADMIN = {"X-Fmops-Admin-Token": ADMIN_TOKEN}


def aimed(color: str) -> dict[str, str]:
    """The headers that aim a request at a variant, as the deployment sends them."""
    return {"X-Fmops-Target-Variant": color, **ADMIN}


FAKE_HANDLERS = f"""
import sys
import time

sys.path.insert(0, {str(SCRIPTS_DIR)!r})
from inference import BadRequestError, input_fn, output_fn  # noqa: F401  (the real validation)


def model_fn(model_dir):
    return {{"name": model_dir}}


def predict_fn(texts, model):
    for text in texts:
        if text == "boom":
            raise RuntimeError("the model broke on purpose")
        if text.startswith("sleep:"):
            time.sleep(float(text.split(":", 1)[1]))
    return [{{"label": model["name"], "score": 1.0}} for _ in texts]
"""

# One prompt per request ("tokens:<count>:<seconds>"): answers with that many tokens after
# sleeping that long. The warm-up must come through the hook: predict_fn refuses a list.
GENERATIVE_HANDLERS = """
import json
import time

warmed = []


class BadRequestError(ValueError):
    pass


def model_fn(model_dir):
    return {"name": model_dir}


def warm_up(model):
    warmed.append(model["name"])


def input_fn(body, content_type):
    return json.loads(body)["inputs"]


def predict_fn(prompt, model):
    if not isinstance(prompt, str):
        raise TypeError(f"one prompt per request, got {prompt!r}")
    _, count, seconds = prompt.split(":")
    time.sleep(float(seconds))
    return int(count)


def output_fn(tokens, accept):
    return json.dumps([{"generated_text": "x" * tokens}])


def headers_fn(tokens):
    return {"x-generated-tokens": str(tokens)}
"""


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Harness:
    """A router and two variants (blue, green) on free 127.0.0.1 ports, all in threads."""

    def __init__(self, tmp_path: Path):
        handlers_file = tmp_path / "fake_inference.py"
        handlers_file.write_text(FAKE_HANDLERS)
        self.variants = {}
        for color in ("blue", "green"):
            server = VariantServer(free_port(), load_handlers(handlers_file), color, color)
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            self.variants[color] = server
        wait_until(lambda: all(v.model is not None for v in self.variants.values()), what="models")
        self.routing_file = tmp_path / "routing.json"
        self.generation = 0
        self.route({"blue": 100, "green": 0})
        self.port = free_port()
        self.router = Router(self.port, self.routing_file)
        threading.Thread(target=self.router.serve_forever, args=(0.05,), daemon=True).start()

    def route(self, weights: dict[str, int], ports: dict[str, int] | None = None, **extra) -> int:
        self.generation += 1
        ports = ports or {}
        _write_json(
            self.routing_file,
            {
                "generation": self.generation,
                "variants": {
                    color: {
                        "port": ports.get(color, self.variants[color].server_address[1]),
                        "weight": weight,
                        "version": {"blue": "1", "green": "2"}[color],
                    }
                    for color, weight in weights.items()
                },
                "admin_token": ADMIN_TOKEN,
                **extra,
            },
        )
        return self.generation

    def post(
        self, payload, headers: dict[str, str] | None = None, port: int | None = None
    ) -> tuple[int, dict, dict]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        connection = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=10)
        try:
            connection.request(
                "POST",
                "/invocations",
                body,
                {"Content-Type": "application/json", **(headers or {})},
            )
            response = connection.getresponse()
            return response.status, json.loads(response.read()), dict(response.getheaders())
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def stats(self, query: str = "") -> dict:
        status, body = self.get(f"/admin/stats{query}")
        assert status == 200, body
        return body

    def close(self) -> None:
        for server in (self.router, *self.variants.values()):
            server.shutdown()
            server.server_close()


@pytest.fixture
def harness(tmp_path):
    made = Harness(tmp_path)
    yield made
    made.close()


def raw_request(port: int, data: bytes) -> tuple[int, dict]:
    """Bytes on a socket (for requests http.client will not send), the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# -- routing ------------------------------------------------------------------------------------


def test_weights_split_the_traffic(harness):
    random.seed(7)
    harness.route({"blue": 75, "green": 25})
    served = [harness.post({"inputs": ["hello"]})[2]["X-Fmops-Variant"] for _ in range(400)]
    share = served.count("green") / len(served)
    assert 0.18 < share < 0.32, share
    stats = harness.stats()
    assert stats["stats"]["green"]["requests"] == served.count("green")
    assert stats["stats"]["blue"]["requests"] == served.count("blue")


def test_a_variant_without_weight_gets_nothing_unless_targeted(harness):
    for _ in range(30):
        status, body, headers = harness.post({"inputs": ["x"]})
        assert (status, headers["X-Fmops-Variant"], headers["X-Fmops-Version"]) == (
            200,
            "blue",
            "1",
        )
        assert body == {"predictions": [{"label": "blue", "score": 1.0}]}
    status, body, headers = harness.post({"inputs": ["x"]}, aimed("green"))
    assert status == 200 and headers["X-Fmops-Variant"] == "green"
    status, body, _ = harness.post({"inputs": ["x"]}, aimed("purple"))
    assert status == 400
    assert "no variant 'purple'" in body["error"] and "blue" in body["error"]


def test_a_new_routing_applies_with_its_generation(harness):
    assert harness.stats()["generation"] == 1
    generation = harness.route({"blue": 0, "green": 100})
    stats = harness.stats()
    assert stats["generation"] == generation == 2
    assert stats["variants"]["green"]["weight"] == 100
    assert all(harness.post({"inputs": ["x"]})[2]["X-Fmops-Variant"] == "green" for _ in range(10))


def test_ping_answers_503_without_traffic(harness):
    assert harness.get("/ping")[0] == 200
    harness.route({"blue": 0, "green": 0})
    status, body = harness.get("/ping")
    assert status == 503 and body["status"] == "no variant"
    status, body, _ = harness.post({"inputs": ["x"]})
    assert status == 503 and "no variant is serving" in body["error"]


def test_a_refusing_variant_counts_errors_and_the_request_goes_elsewhere(harness):
    dead = free_port()  # nothing listens there: a crashed variant
    harness.route({"blue": 50, "green": 50}, ports={"green": dead})
    answers = [harness.post({"inputs": ["x"]}) for _ in range(40)]
    assert all(status == 200 and h["X-Fmops-Variant"] == "blue" for status, _, h in answers)
    green = harness.stats()["stats"]["green"]
    assert green["errors_5xx"] > 0 and green["ok"] == 0
    assert green["in_flight"] == 0
    harness.route({"blue": 0, "green": 100}, ports={"green": dead})
    status, body, _ = harness.post({"inputs": ["x"]})
    assert status == 502 and "no variant took the request" in body["error"]


def test_a_slow_variant_times_out_with_504(harness):
    harness.route({"blue": 100, "green": 0}, timeout_seconds=0.3)
    status, body, _ = harness.post({"inputs": ["sleep:1"]})
    assert status == 504 and "did not answer within 0.3 s" in body["error"]
    blue = harness.stats()["stats"]["blue"]
    assert (blue["timeouts"], blue["errors_5xx"], blue["in_flight"]) == (1, 1, 0)
    time.sleep(0.8)  # the variant finishes its sleep, then serves again
    assert harness.post({"inputs": ["fine"]})[0] == 200


def test_requests_in_flight_are_counted_until_they_finish(harness):
    slow = threading.Thread(target=harness.post, args=({"inputs": ["sleep:0.6"]},))
    slow.start()
    wait_until(lambda: harness.stats()["stats"]["blue"]["in_flight"] == 1, what="in flight")
    slow.join()
    assert harness.stats()["stats"]["blue"]["in_flight"] == 0


def test_keep_alive_connection_serves_many_requests(harness):
    connection = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=10)
    body = json.dumps({"inputs": ["again"]}).encode()
    try:
        for _ in range(25):
            connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 200
            response.read()
    finally:
        connection.close()


def test_stats_start_afresh_when_a_color_is_a_new_process(harness):
    for _ in range(3):
        harness.post({"inputs": ["x"]})
    assert harness.stats()["stats"]["blue"]["total_requests"] == 3
    other = VariantServer(free_port(), harness.variants["blue"].handlers, "blue", "blue")
    threading.Thread(target=other.serve_forever, args=(0.05,), daemon=True).start()
    try:
        wait_until(lambda: other.model is not None, what="model")
        harness.route({"blue": 100}, ports={"blue": other.server_address[1]})
        stats = harness.stats()
        assert stats["stats"]["blue"]["total_requests"] == 0
        assert "green" not in stats["stats"]  # removed from the routing: forgotten
    finally:
        other.shutdown()
        other.server_close()


def test_a_generative_variant_warms_up_and_reports_tokens_through_its_hooks(harness, tmp_path):
    path = tmp_path / "generative_handlers.py"
    path.write_text(GENERATIVE_HANDLERS)
    handlers = load_handlers(path)
    server = VariantServer(free_port(), handlers, "tiny-llm", "green")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        wait_until(lambda: server.model is not None, what="model")
        assert handlers.warmed == ["tiny-llm"]  # the hook, not predict_fn([WARM_UP_TEXT])
        port = server.server_address[1]
        status, body, headers = harness.post({"inputs": "tokens:3:0"}, port=port)
        assert (status, body, headers["x-generated-tokens"]) == (
            200,
            [{"generated_text": "xxx"}],
            "3",
        )
        status, body, headers = harness.post({"inputs": "boom"}, port=port)  # no prediction
        assert status == 500 and "x-generated-tokens" not in headers
        harness.route({"blue": 50, "green": 50}, ports={"green": port})
        for text in ("tokens:4:0.2", "tokens:8:0.2", "tokens:0:0"):
            assert harness.post({"inputs": text}, aimed("green"))[0] == 200
        assert harness.post({"inputs": ["a text"]}, aimed("blue"))[0] == 200
        stats = harness.stats("?percentiles=50")["stats"]
    finally:
        server.shutdown()
        server.server_close()
    green = stats["green"]
    assert (green["requests"], green["token_requests"]) == (3, 2)  # 0 tokens: no per-token value
    per_token = green["latency_per_token_ms"]
    assert set(per_token) == {"average", "maximum", "p50"}
    # The slowest request per token is at most the slowest request over 4 tokens (each value is
    # rounded to 0.01 ms on its own).
    slowest = green["latency_ms"]["maximum"] / 4 + 0.01
    assert 200 / 8 <= per_token["p50"] <= per_token["maximum"] <= slowest
    blue = stats["blue"]  # a classifier's answers say nothing of tokens
    assert blue["token_requests"] == 0 and blue["latency_per_token_ms"]["average"] is None


# -- stats --------------------------------------------------------------------------------------


def test_stats_over_a_window_and_since_a_generation(harness):
    harness.post({"inputs": ["ok"]})
    harness.post(b"{not json")
    generation = harness.route({"blue": 100, "green": 0})
    for text in ("ok", "ok", "ok", "boom"):
        harness.post({"inputs": [text]})
    everything = harness.stats()["stats"]["blue"]
    assert (everything["requests"], everything["errors_4xx"], everything["errors_5xx"]) == (6, 1, 1)
    recent = harness.stats(f"?since_generation={generation}&percentiles=50,90")["stats"]["blue"]
    assert (recent["requests"], recent["ok"], recent["errors_5xx"]) == (4, 3, 1)
    assert recent["error_rate_5xx"] == 0.25
    assert set(recent["latency_ms"]) == {"average", "maximum", "p50", "p90"}
    assert recent["latency_ms"]["maximum"] >= recent["latency_ms"]["p50"] > 0
    time.sleep(0.3)
    assert harness.stats("?window=0.2")["stats"]["blue"]["requests"] == 0


@pytest.mark.parametrize("query", ["?window=abc", "?percentiles=0", "?since_generation=x"])
def test_stats_refuse_a_bad_query(harness, query):
    status, body = harness.get(f"/admin/stats{query}")
    assert status == 400 and "/admin/stats?window=60" in body["error"]


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
    assert percentile(values, 99.5) == 100
    assert percentile([7.0], 99) == 7
    assert percentile([], 50) is None


def test_variant_stats_are_bounded_and_windowed():
    stats = VariantStats(max_records=5, window_seconds=10)
    for i in range(8):
        stats.add(Record(at=100.0 + i, generation=1, status=500 if i == 7 else 200, latency_ms=i))
    snapshot = stats.snapshot(now=107.0)
    assert snapshot["requests"] == 5  # the newest five
    assert snapshot["total_requests"] == 8 and snapshot["total_errors_5xx"] == 1
    assert snapshot["latency_ms"]["maximum"] == 7
    stats.add(Record(at=200.0, generation=2, status=200, latency_ms=1))  # the old ones expire
    assert stats.snapshot(now=200.0)["requests"] == 1
    assert stats.snapshot(now=200.0, since_generation=3)["requests"] == 0


def test_variant_stats_keep_the_latency_per_generated_token():
    stats = VariantStats()
    stats.add(Record(at=1.0, generation=1, status=200, latency_ms=100, generated_tokens=4))
    stats.add(Record(at=2.0, generation=1, status=200, latency_ms=90, generated_tokens=9))
    stats.add(Record(at=3.0, generation=1, status=200, latency_ms=50, generated_tokens=0))
    stats.add(Record(at=4.0, generation=1, status=200, latency_ms=70))  # no header
    snapshot = stats.snapshot(now=4.0, percentiles=(50,))
    assert snapshot["token_requests"] == 2
    assert snapshot["latency_per_token_ms"] == {"average": 17.5, "maximum": 25.0, "p50": 10.0}
    assert snapshot["latency_ms"]["average"] == 77.5  # every request, as before


@pytest.mark.parametrize(
    ("header", "tokens"), [(None, None), ("12", 12), ("0", 0), ("many", None), ("-3", None)]
)
def test_a_generated_tokens_header_is_read_or_ignored(header, tokens):
    assert generated_tokens(header) == tokens


# -- request hygiene ----------------------------------------------------------------------------

MALFORMED = [
    (b"{not json", {}, 400, "the body is not valid JSON"),
    (b"\xff\xfe", {}, 400, "the body is not valid JSON"),
    (b'["a list"]', {}, 400, "must be an object with an 'inputs' field"),
    (b'{"text": "hello"}', {}, 400, "must be an object with an 'inputs' field"),
    (b'{"inputs": []}', {}, 400, "'inputs' must be a non-empty string or a non-empty list"),
    (b'{"inputs": [42]}', {}, 400, "inputs[0] must be a non-empty string"),
    (b'{"inputs": ["  "]}', {}, 400, "inputs[0] must be a non-empty string"),
    (json.dumps({"inputs": ["x"] * 65}).encode(), {}, 400, "has 65 texts; at most 64"),
    (json.dumps({"inputs": ["y" * 2001]}).encode(), {}, 400, "2001 characters; at most 2000"),
    (b'{"inputs": "x"}', {"Content-Type": "text/plain"}, 400, "send application/json"),
    (b"x" * (256 * 1024 + 1), {}, 413, "at most 262144 per request"),
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400, "nests arrays or objects"),
    (b'{"inputs": [' + b"9" * 5000 + b"]}", {}, 400, "a number in the body is too large"),
    (b'{"inputs": ["x"]}', {"X-Fmops-Target-Variant": "green"}, 403, "admin token"),
    (
        b'{"inputs": ["x"]}',
        {"X-Fmops-Target-Variant": "green", "X-Fmops-Admin-Token": "guessed"},
        403,
        "admin token",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    MALFORMED,
    ids=[
        "bad-json",
        "not-utf8",
        "not-an-object",
        "no-inputs",
        "empty-inputs",
        "non-string",
        "blank-text",
        "batch-too-large",
        "text-too-long",
        "content-type",
        "body-too-large",
        "deep-nesting",
        "huge-number",
        "target-without-token",
        "target-with-a-wrong-token",
    ],
)
def test_malformed_requests_get_their_status_and_message(harness, body, headers, status, message):
    got, answer, _ = harness.post(body, headers)
    assert got == status, answer
    assert message in answer["error"]
    assert harness.post({"inputs": ["still serving"]})[0] == 200
    # the client's error is no server error: it cannot trip a rollback alarm
    stats = harness.stats()["stats"]
    assert all(s["errors_5xx"] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("target", ["router", "variant"])
@pytest.mark.parametrize(
    ("head", "status", "message"),
    [
        (b"Transfer-Encoding: chunked\r\n", 411, "Content-Length"),
        (b"", 411, "Content-Length"),
        (b"Content-Length: many\r\n", 400, "not a byte count"),
    ],
    ids=["chunked", "no-length", "bad-length"],
)
def test_bodies_without_a_usable_length_are_refused(harness, target, head, status, message):
    port = harness.port if target == "router" else harness.variants["blue"].server_address[1]
    request = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    got, answer = raw_request(port, request + head + b"\r\n")
    assert got == status and message in answer["error"]


def test_unknown_routes_are_404(harness):
    connection = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=10)
    try:
        connection.request("POST", "/predict", b"{}", {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 404 and "use /invocations" in json.loads(response.read())["error"]
    finally:
        connection.close()
    status, body = harness.get("/nothing")
    assert status == 404 and "/admin/stats" in body["error"]


def test_the_variant_survives_a_failing_model(harness):
    status, body, _ = harness.post({"inputs": ["boom"]})
    assert status == 500 and "prediction failed: the model broke on purpose" in body["error"]
    assert harness.post({"inputs": ["after the failure"]})[0] == 200


def test_the_variant_refuses_an_oversized_body_itself(harness):
    port = harness.variants["blue"].server_address[1]
    status, body, _ = harness.post(b"x" * (256 * 1024 + 1), port=port)
    assert status == 413 and "at most 262144" in body["error"]


# -- the rollout's pure parts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"mode": "all_at_once", "wait_seconds": 5}, [(100, 5)]),
        ({"mode": "canary", "canary_percent": 10, "wait_seconds": 3}, [(10, 3), (100, 3)]),
        ({"mode": "linear", "linear_step_percent": 50}, [(50, 0), (100, 0)]),
        (
            {"mode": "linear", "linear_step_percent": 30, "wait_seconds": 2},
            [(30, 2), (60, 2), (90, 2), (100, 2)],
        ),
    ],
)
def test_plan_shifts(settings, expected):
    shifts = plan_shifts(TrafficSettings(**settings))
    assert shifts == [Shift(*pair) for pair in expected]
    assert all(isinstance(shift, tuple) for shift in shifts)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"mode": "canary", "canary_percent": 60}, "canary_percent (CanarySize"),
        ({"mode": "linear", "linear_step_percent": 5}, "linear_step_percent (LinearStepSize"),
        ({"mode": "all_at_once", "wait_seconds": 4000}, "wait_seconds (WaitIntervalInSeconds"),
        ({"mode": "all_at_once", "max_execution_timeout_seconds": 60}, "600-28800"),
    ],
)
def test_bounds_are_checked_before_anything_starts(tmp_path, monkeypatch, settings, problem):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    traffic = TrafficSettings.model_construct(**{**TrafficSettings().model_dump(), **settings})
    with pytest.raises(EndpointError, match="deployment.traffic: ") as info:
        plan_shifts(traffic)
    assert problem in str(info.value)
    endpoint = LocalEndpoint("bounds")
    with pytest.raises(EndpointError):
        rollout(
            endpoint,
            "1",
            tmp_path,
            tmp_path / "inference.py",
            port=free_port(),
            traffic=traffic,
            alarms=AlarmSettings(),
        )
    assert not endpoint.exists() and not endpoint.dir.exists()


def snapshot(requests=100, e5=0, e4=0, timeouts=0, average=10.0, maximum=20.0, p95=15.0):
    return {
        "requests": requests,
        "errors_5xx": e5,
        "errors_4xx": e4,
        "timeouts": timeouts,
        "latency_ms": {"average": average, "maximum": maximum, "p95": p95, "p99.9": maximum},
    }


def test_alarms():
    alarms = AlarmSettings(max_5xx_error_rate=0.05, max_latency_ms=500)
    assert breached(None, alarms, "green") is None
    assert breached(snapshot(requests=0), alarms, "green") is None  # no data: OK
    assert breached(snapshot(e5=5), alarms, "green") is None  # 5% is not above 5%
    reason = breached(snapshot(e5=6, timeouts=2), alarms, "green (version 3)")
    assert reason.startswith("5xx error rate alarm: green (version 3) answered 6 of 100")
    assert "2 timeouts" in reason and "max_5xx_error_rate 5.0%" in reason
    assert breached(snapshot(e4=90), alarms, "green") is None  # the 4xx alarm is off by default
    four = AlarmSettings(max_4xx_error_rate=0.5)
    assert "4xx error rate alarm" in breached(snapshot(e4=90), four, "green")
    assert "Average latency over 100 requests is 600 ms > max_latency_ms 500 ms" in breached(
        snapshot(average=600), alarms, "green"
    )
    p95 = AlarmSettings(max_latency_ms=500, latency_statistic="p95")
    assert breached(snapshot(average=600), p95, "green") is None
    assert "p95 latency" in breached(snapshot(p95=501), p95, "green")


def test_the_latency_per_token_alarm():
    per_token = {"average": 60.0, "maximum": 90.0, "p95": 80.0, "p99.9": 90.0}
    generative = {**snapshot(), "token_requests": 40, "latency_per_token_ms": per_token}
    assert breached(generative, AlarmSettings(), "green") is None  # off by default
    alarms = AlarmSettings(latency_per_token_ms=50)
    assert breached(generative, alarms, "green (version 3)") == (
        "latency per token alarm: green (version 3)'s Average latency per generated token over "
        "40 requests is 60.0 ms > latency_per_token_ms 50 ms"
    )
    p95 = AlarmSettings(latency_per_token_ms=80, latency_statistic="p95")
    assert breached(generative, p95, "green") is None  # 80 is not above 80
    tighter = AlarmSettings(latency_per_token_ms=79.5, latency_statistic="p95")
    assert "p95 latency per generated token over 40 requests is 80.0 ms" in breached(
        generative, tighter, "green"
    )
    # A classifier's answers carry no token counts: no per-token data, no alarm.
    none = {"average": None, "maximum": None, "p95": None, "p99.9": None}
    classifier = {**snapshot(), "token_requests": 0, "latency_per_token_ms": none}
    assert breached(classifier, alarms, "green") is None
    assert breached(snapshot(), alarms, "green") is None  # stats without the field
    with pytest.raises(ValueError, match="greater than 0"):
        AlarmSettings(latency_per_token_ms=0)


def test_latency_value_reads_the_statistic():
    latency = {"average": 1.0, "maximum": 9.0, "p95": 5.0, "p99.9": 8.0}
    assert latency_value(latency, "Average") == 1.0
    assert latency_value(latency, "Maximum") == 9.0
    assert latency_value(latency, "p95") == 5.0
    assert latency_value(latency, "p99.9") == 8.0


def test_router_module_constants_match_the_endpoint():
    from fmops.deployment import local

    assert local.TARGET_HEADER == router_module.TARGET_HEADER


# -- bounds on clients ----------------------------------------------------------------------------


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the router closed this connection (a read finds the end, or a reset)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_client_that_trickles_its_request_is_cut_off_while_others_are_served(harness):
    """The deadline covers the whole request, not each read: a byte every 0.2 s (each read well
    within the socket timeout) is cut off after the request's 1 s; a normal client is served
    all along."""
    harness.route({"blue": 100, "green": 0}, request_read_seconds=1)
    assert harness.post({"inputs": ["routing applied"]})[0] == 200
    slow = socket.create_connection(("127.0.0.1", harness.port), timeout=0.2)
    try:
        request = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        deadline = time.monotonic() + 20
        cut = False
        for byte in (request + b"x" * 100)[:200]:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if closed_by_server(slow):
                cut = True
                break
            assert harness.post({"inputs": ["a normal client"]})[0] == 200
            assert time.monotonic() < deadline, "the trickling client is still connected"
        assert cut, "the whole request trickled in: the test proved nothing"
    finally:
        slow.close()
    assert harness.post({"inputs": ["after"]})[0] == 200


def test_connections_past_the_bound_get_503_and_the_router_recovers(harness):
    harness.route({"blue": 100, "green": 0}, max_connections=3)
    assert harness.post({"inputs": ["routing applied"]})[0] == 200
    idle = [socket.create_connection(("127.0.0.1", harness.port), timeout=10) for _ in range(3)]
    try:
        status, body = raw_request(
            harness.port,
            b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n"
            b'Content-Type: application/json\r\n\r\n{"inputs":"x"}\n',
        )
        assert status == 503 and "3 connections at once" in body["error"], body
    finally:
        for sock in idle:
            sock.close()

    def served() -> bool:
        """One try: the router frees a slot once the handler of a closed connection has seen
        the close, so a try before that is refused. The refusal closes the connection at once,
        and a client still sending its body then gets a reset instead of the 503: both mean
        "not yet"."""
        try:
            return harness.post({"inputs": ["served again"]})[0] == 200
        except ConnectionError:
            return False

    wait_until(served, what="a free slot")
