"""Blue/green rollouts on the local endpoint, with SageMaker's deployment-guardrail semantics.

``rollout`` serves a new model version on a ``LocalEndpoint``:

- The first deployment of an endpoint creates it: the version starts as ``blue``, must pass
  ``/ping``, and takes all the traffic (CreateEndpoint: no shifting, no bake).
- Later ones are blue/green. The new version starts as the other color (``green``) beside the
  serving one, with no traffic, and must pass ``/ping`` within the health timeout; a green that
  never does is removed and blue keeps 100%. Then the traffic moves by ``plan_shifts``:
  ALL_AT_ONCE (one shift to 100%), CANARY (the canary share, then the rest) or LINEAR (equal
  steps), each followed by a baking period of ``wait_seconds``. During each bake, smoke traffic
  (requests from the evaluation set, ``smoke_requests`` of them spread over the bake) runs through
  the router to green (``X-Fmops-Target-Variant``), and the alarms read green's counters from
  the router (``/admin/stats``: the requests since the shift, at most the alarm window old):
  its 5xx rate (502/504 and timeouts count), its 4xx rate when ``max_4xx_error_rate`` is set,
  and its latency statistic (``latency_statistic``: Average, Maximum or pNN, against
  ``max_latency_ms``), and, when ``latency_per_token_ms`` is set, the same statistic of its
  latency per generated token (over the answers that say how many tokens they generated, a
  generative model's: a long answer is slow without the model being slow). A breach rolls the
  traffic back to blue at once, drains and removes green, and ``rollout`` raises
  ``RolloutFailedError`` with the alarm's reason.
- After the last bake, blue stays (with no traffic) for ``termination_wait_seconds``, then is
  drained and retired; green becomes the only variant and the new stable routing.
- The whole deployment must finish within ``traffic.timeout_seconds``
  (MaximumExecutionTimeoutInSeconds); past it, it is rolled back.
- Traffic bounds are checked (``fmops.deployment.settings.traffic_problems``) before anything
  starts.

Every step is persisted in the endpoint's state before it takes effect (the ``deployment`` in
progress with its owner process, the ``stable`` routing), so ``rollback_to_stable`` can undo a
deployment whose process was killed: it restores the last stable routing, removes the variants
that are not part of it, and does nothing when there is nothing to undo. A router that dies
during a bake is started again with the persisted routing and the bake goes on.

Alarms, locally: CloudWatch's ``period_seconds``, ``evaluation_periods`` and
``datapoints_to_alarm`` shape the sagemaker target's alarms. Here the alarms are evaluated every
``poll_seconds`` over the window since the shift (at most ``period_seconds x
evaluation_periods``), and the first breach counts: a local bake is seconds to minutes long. The
rollout logs this once.

``deploy_local`` is ``rollout`` with a config's ``deployment`` settings and smoke texts from its
evaluation set in the model kind's request shape (``fmops.kinds``): fmops_deploy's local
path. The endpoint's mechanics
(processes, routing, router statistics) are ``fmops.deployment.local``'s, which this module
drives.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from fmops import processes
from fmops.deployment.local import COLORS, EndpointError, LocalEndpoint, now_iso
from fmops.deployment.settings import AlarmSettings, TrafficSettings, traffic_problems
from fmops.kinds import kind_of

if TYPE_CHECKING:
    from fmops.config import PipelineConfig

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
HISTORY = 10  # deployments kept in the endpoint's state for `fmops endpoint status`
LOCAL_ALARMS_NOTE = (
    "local endpoint %s: alarms are evaluated every %.1f s over green's requests since each "
    "shift (at most %s s back); period_seconds, evaluation_periods and datapoints_to_alarm "
    "shape CloudWatch alarms on the sagemaker target and are not used here: the first breach "
    "rolls back"
)


class Clock(Protocol):
    """Time as the rollout sees it (tests may pass one that runs faster)."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Shift(NamedTuple):
    green_weight: int  # percent of the traffic on green after the shift
    bake_seconds: int  # the baking period that follows it


class RolloutFailedError(EndpointError):
    """The new version does not serve: it was rolled back (``outcome`` ``rolled_back``) or the
    endpoint could not be created (``failed``). ``reason`` says why; ``result`` has the
    timeline."""

    def __init__(self, reason: str, result: RolloutResult):
        super().__init__(reason)
        self.reason = reason
        self.result = result


@dataclass
class RolloutResult:
    endpoint: str
    version: str
    mode: str
    outcome: str = "in_progress"  # created | deployed | unchanged | rolled_back | failed
    previous_version: str | None = None
    reason: str | None = None
    url: str | None = None
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    seconds: float | None = None
    shifts: list[dict[str, int]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _AbortError(Exception):
    """A bake's alarm or the execution timeout: roll back with this reason."""


def plan_shifts(traffic: TrafficSettings) -> list[Shift]:
    """The traffic shifts of a blue/green deployment, each with its baking period. Raises
    ``EndpointError`` naming every bound the settings break (SageMaker's, whatever the target)."""
    problems = traffic_problems(
        traffic.routing_type,
        canary_percent=traffic.canary_percent,
        linear_step_percent=traffic.linear_step_percent,
        wait=traffic.wait_seconds,
        termination=traffic.termination_wait_seconds,
        timeout=traffic.max_execution_timeout_seconds,
    )
    if problems:
        raise EndpointError("deployment.traffic: " + "; ".join(problems))
    wait = traffic.wait_seconds
    if traffic.mode == "canary":
        return [Shift(traffic.canary_percent, wait), Shift(100, wait)]
    if traffic.mode == "linear":
        step = traffic.linear_step_percent
        return [Shift(min(100, step * i), wait) for i in range(1, math.ceil(100 / step) + 1)]
    return [Shift(100, wait)]


def latency_value(latency: dict[str, float | None], statistic: str) -> float | None:
    """The alarm's latency statistic (``Average``, ``Maximum``, ``pNN``) from router stats."""
    if statistic == "Average":
        return latency.get("average")
    if statistic == "Maximum":
        return latency.get("maximum")
    return latency.get(f"p{float(statistic[1:]):g}")


def alarm_percentiles(alarms: AlarmSettings) -> list[float]:
    wanted = [50.0, 95.0, 99.0]
    if alarms.latency_statistic.startswith("p"):
        wanted.append(float(alarms.latency_statistic[1:]))
    return sorted(set(wanted))


def breached(snapshot: dict[str, Any] | None, alarms: AlarmSettings, label: str) -> str | None:
    """Why ``snapshot`` (a variant's router stats) breaches an alarm, or None."""
    if not snapshot or not snapshot.get("requests"):
        return None  # no data: an alarm stays OK (CloudWatch: INSUFFICIENT_DATA)
    count = snapshot["requests"]
    rate = snapshot["errors_5xx"] / count
    if rate > alarms.max_5xx_error_rate:
        return (
            f"5xx error rate alarm: {label} answered {snapshot['errors_5xx']} of {count} "
            f"requests with 5xx ({snapshot['timeouts']} timeouts), {rate:.1%} > "
            f"max_5xx_error_rate {alarms.max_5xx_error_rate:.1%}"
        )
    if alarms.max_4xx_error_rate is not None:
        rate = snapshot["errors_4xx"] / count
        if rate > alarms.max_4xx_error_rate:
            return (
                f"4xx error rate alarm: {label} answered {snapshot['errors_4xx']} of {count} "
                f"requests with 4xx, {rate:.1%} > max_4xx_error_rate "
                f"{alarms.max_4xx_error_rate:.1%}"
            )
    value = latency_value(snapshot["latency_ms"], alarms.latency_statistic)
    if value is not None and value > alarms.max_latency_ms:
        return (
            f"latency alarm: {label}'s {alarms.latency_statistic} latency over {count} requests "
            f"is {value:.0f} ms > max_latency_ms {alarms.max_latency_ms:.0f} ms"
        )
    if alarms.latency_per_token_ms is not None:
        per_token = snapshot.get("latency_per_token_ms") or {}
        value = latency_value(per_token, alarms.latency_statistic)
        if value is not None and value > alarms.latency_per_token_ms:
            return (
                f"latency per token alarm: {label}'s {alarms.latency_statistic} latency per "
                f"generated token over {snapshot.get('token_requests')} requests is "
                f"{value:.1f} ms > latency_per_token_ms {alarms.latency_per_token_ms:g} ms"
            )
    return None


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "start": processes.start_time(os.getpid())}


def _serving(state: dict[str, Any]) -> list[str]:
    return [color for color, v in state["variants"].items() if v["weight"] > 0]


def _refuse_if_running(endpoint: LocalEndpoint, running: dict[str, Any]) -> None:
    owner = running.get("owner") or {}
    if processes.alive(owner) and owner.get("pid") != os.getpid():
        raise EndpointError(
            f"endpoint {endpoint.name} is being deployed (version {running['version']}, process "
            f"{owner['pid']}, {running.get('phase')}); wait for it, or roll it back with "
            f"fmops endpoint rollback {endpoint.name}"
        )


def _stable_of(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "variants": {
            color: {"version": v["version"], "weight": v["weight"]}
            for color, v in state["variants"].items()
            if v["weight"] > 0
        },
        "since": now_iso(),
    }


class _Rollout:
    def __init__(
        self,
        endpoint: LocalEndpoint,
        version: str,
        traffic: TrafficSettings,
        alarms: AlarmSettings,
        smoke_payloads: Sequence[dict[str, Any]],
        smoke_requests: int,
        clock: Clock,
        poll_seconds: float,
    ):
        self.endpoint = endpoint
        self.traffic = traffic
        self.alarms = alarms
        self.smoke_payloads = list(smoke_payloads)
        self.smoke_requests = smoke_requests if self.smoke_payloads else 0
        self.clock = clock
        self.poll = poll_seconds
        self.began = clock.now()
        self.deadline = self.began + traffic.timeout_seconds
        self.result = RolloutResult(endpoint.name, str(version), traffic.routing_type)
        self.phase = "starting"
        self.smoke_index = 0

    # -- bookkeeping --------------------------------------------------------------------------

    def event(self, kind: str, detail: str = "", **extra: Any) -> None:
        entry = {
            "t": round(self.clock.now() - self.began, 3),
            "at": now_iso(),
            "event": kind,
            "weights": self.endpoint.weights(),
            **({"detail": detail} if detail else {}),
            **extra,
        }
        self.result.timeline.append(entry)
        log.info(
            "endpoint %s [%6.1f s] %s %s %s",
            self.endpoint.name,
            entry["t"],
            kind,
            entry["weights"],
            detail,
        )

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        with self.endpoint.transaction() as state:
            if state.get("deployment"):
                state["deployment"]["phase"] = phase

    def check_deadline(self) -> None:
        if self.clock.now() > self.deadline:
            raise _AbortError(
                f"max execution time: the deployment ran longer than "
                f"{self.traffic.timeout_seconds} s (max_execution_timeout_seconds) during "
                f"{self.phase}"
            )

    def between_looks(self) -> None:
        """While green starts: the execution timeout, and blue's router keeps running."""
        self.check_deadline()
        self.watch_router()

    def remaining(self) -> float:
        return max(0.0, self.deadline - self.clock.now())

    def conclude(self, outcome: str, reason: str | None = None) -> RolloutResult:
        result = self.result
        result.outcome, result.reason = outcome, reason
        result.finished = now_iso()
        result.seconds = round(self.clock.now() - self.began, 3)
        result.url = self.endpoint.url() if self.endpoint.port else None
        summary = {
            k: getattr(result, k)
            for k in ("version", "previous_version", "mode", "outcome", "reason", "started")
        }
        summary["finished"] = result.finished
        if self.endpoint.exists():
            with self.endpoint.transaction() as state:
                state["last_deployment"] = {**summary, "timeline": result.timeline}
                state["history"] = ([summary] + state.get("history", []))[:HISTORY]
        return result

    # -- the steps ----------------------------------------------------------------------------

    def claim(self, color: str, blue: str | None) -> None:
        """Record the deployment in progress (``rollout`` undid any unfinished one; a
        deployment that another process started meanwhile is refused)."""
        with self.endpoint.transaction() as state:
            if state.get("deployment"):
                _refuse_if_running(self.endpoint, state["deployment"])
            state["deployment"] = {
                "version": self.result.version,
                "color": color,
                "blue": blue,
                "mode": self.traffic.routing_type,
                "phase": self.phase,
                "owner": _me(),
                "started": self.result.started,
            }

    def smoke_once(self, color: str) -> int | None:
        payload = self.smoke_payloads[self.smoke_index % len(self.smoke_payloads)]
        self.smoke_index += 1
        try:
            return self.endpoint.invoke(payload, target_variant=color)[0]
        except OSError as err:
            log.warning("smoke request to %s not sent: %s", color, err)
            return None

    def watch_router(self) -> None:
        if not self.endpoint.router_alive():
            self.endpoint.ensure_router()
            self.event(
                "router_restarted", "the router had stopped; started with the persisted routing"
            )

    def bake(self, color: str, generation: int, seconds: int) -> dict[str, Any]:
        """Smoke traffic and alarms until the bake is over; ``_AbortError`` on a breach."""
        started = self.clock.now()
        end = started + seconds
        count = self.smoke_requests
        interval = seconds / count if count else 0.0
        label = f"{color} (version {self.result.version})"
        window = self.alarms.period_seconds * self.alarms.evaluation_periods
        percentiles = alarm_percentiles(self.alarms)
        sent, answers, last_check = 0, {}, None
        snapshot: dict[str, Any] | None = None
        while True:
            self.check_deadline()
            self.watch_router()
            now = self.clock.now()
            if sent < count and now >= started + sent * interval:
                status = self.smoke_once(color)
                answers[str(status)] = answers.get(str(status), 0) + 1
                sent += 1
            now = self.clock.now()
            if last_check is None or now - last_check >= self.poll or now >= end:
                last_check = now
                try:
                    stats = self.endpoint.stats(window, generation, percentiles)
                    snapshot = stats["stats"].get(color)
                except (OSError, EndpointError) as err:
                    log.warning("router stats unavailable (%s); the alarms wait", err)
                    stats = None
                reason = breached(snapshot, self.alarms, label)
                if reason:
                    raise _AbortError(reason)
                if now >= end and sent >= count and stats is not None:
                    return {"smoke": answers, "green": snapshot}
            wake = min(
                end, started + sent * interval if sent < count else end, last_check + self.poll
            )
            self.clock.sleep(max(0.0, min(self.poll, wake - self.clock.now())))

    def create(self, version: str, model_dir: Path, handlers: Path, port: int, health: float):
        color = COLORS[0]
        self.endpoint.ensure_router(port)
        self.claim(color, None)
        self.set_phase("health check")
        self.endpoint.start_variant(
            color, model_dir, handlers, version, min(health, self.remaining()), self.check_deadline
        )
        self.event("healthy", f"{color} (version {version}) passed /ping")
        self.endpoint.route({color: 100})
        self.event("created", f"{color} serves 100%")
        with self.endpoint.transaction() as state:
            state["stable"] = _stable_of(state)
            state["deployment"] = None
        self.result.shifts = [{"green_weight": 100, "bake_seconds": 0}]
        return self.conclude("created")

    def blue_green(
        self,
        version: str,
        model_dir: Path,
        handlers: Path,
        port: int,
        health: float,
        shifts: list[Shift],
    ) -> RolloutResult:
        state = self.endpoint.state()
        blue = _serving(state)[0]
        green = next(c for c in COLORS if c != blue)
        if not processes.alive(state["variants"][blue].get("process")):
            self.endpoint.restart_variant(blue, health)  # what a rollback would return to
        if self.endpoint.ensure_router(port):
            self.event("router_restarted", "the router was not running; started")
        state = self.endpoint.state()
        self.result.previous_version = state["variants"][blue]["version"]
        self.result.shifts = [s._asdict() for s in shifts]
        if state.get("stable") is None:
            with self.endpoint.transaction() as state:
                state["stable"] = _stable_of(state)
        self.claim(green, blue)
        self.event(
            "start",
            f"{green} (version {version}) beside {blue} (version "
            f"{self.result.previous_version}), {self.traffic.routing_type}: "
            + ", ".join(f"{s.green_weight}% then bake {s.bake_seconds} s" for s in shifts),
        )
        self.set_phase("health check")
        try:
            self.endpoint.start_variant(
                green,
                model_dir,
                handlers,
                version,
                min(health, self.remaining()),
                self.between_looks,
            )
        except EndpointError as err:
            raise _AbortError(f"health check: {err}") from err
        self.event("healthy", f"{green} passed /ping")
        for index, shift in enumerate(shifts, 1):
            self.set_phase(f"shift {index}/{len(shifts)} ({shift.green_weight}%)")
            generation = self.endpoint.route(
                {green: shift.green_weight, blue: 100 - shift.green_weight}
            )
            self.event("shift", f"{green} {shift.green_weight}%", generation=generation)
            self.set_phase(f"bake {index}/{len(shifts)} ({shift.bake_seconds} s)")
            baked = self.bake(green, generation, shift.bake_seconds)
            self.event("baked", f"{shift.bake_seconds} s, alarms OK", **baked)
        self.set_phase(f"termination wait ({self.traffic.termination_wait_seconds} s)")
        self.event("termination_wait", f"{blue} kept {self.traffic.termination_wait_seconds} s")
        end = self.clock.now() + self.traffic.termination_wait_seconds
        while self.clock.now() < end:
            self.check_deadline()
            self.watch_router()
            self.clock.sleep(min(self.poll, max(0.0, end - self.clock.now())))
        self.check_deadline()
        with self.endpoint.transaction() as state:  # from here on, green is what stays
            state["stable"] = _stable_of(state)
            state["deployment"]["phase"] = "retiring blue"
        self.endpoint.drain(blue)
        self.endpoint.remove_variant(blue)
        with self.endpoint.transaction() as state:
            state["deployment"] = None
        self.event("retired", f"{blue} (version {self.result.previous_version}) retired")
        return self.conclude("deployed")


def rollout(
    endpoint: LocalEndpoint,
    version: str,
    model_dir: Path,
    handlers: Path,
    *,
    port: int,
    traffic: TrafficSettings,
    alarms: AlarmSettings,
    smoke_payloads: Sequence[dict[str, Any]] = (),
    smoke_requests: int = 20,
    health_timeout: float = 120,
    clock: Clock | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> RolloutResult:
    """Serve ``version`` (``model_dir`` with the ``handlers`` inference.py) on ``endpoint``:
    create it, or update it blue/green by ``traffic`` with ``alarms`` (see the module).

    Returns the result (``outcome`` created, deployed or unchanged, the shifts and the
    timeline). Raises ``RolloutFailedError`` when the version was rolled back (an alarm, a
    green that failed its health check, the execution timeout) or the endpoint could not be
    created: the endpoint then serves what it served before. ``EndpointError`` before anything
    starts: traffic settings out of bounds, the port taken, another deployment running."""
    shifts = plan_shifts(traffic)
    run = _Rollout(
        endpoint,
        str(version),
        traffic,
        alarms,
        smoke_payloads,
        smoke_requests,
        clock or SystemClock(),
        poll_seconds,
    )
    state = endpoint.state()
    if state.get("deployment"):
        log.warning(
            "endpoint %s: a deployment of version %s did not finish; rolling it back first",
            endpoint.name,
            state["deployment"].get("version"),
        )
        _refuse_if_running(endpoint, state["deployment"])
        rollback_to_stable(endpoint)
        state = endpoint.state()
    serving = _serving(state)
    if len(serving) > 1:
        raise EndpointError(
            f"endpoint {endpoint.name} splits its traffic {endpoint.weights()} with no deployment "
            f"in progress; run fmops endpoint rollback {endpoint.name}"
        )
    if state.get("port") not in (None, port) and endpoint.router_alive():
        raise EndpointError(
            f"endpoint {endpoint.name} listens on port {state['port']}, not {port}; delete it "
            f"first (fmops endpoint delete {endpoint.name}) to move it"
        )
    if serving:
        current = state["variants"][serving[0]]
        if (
            current["version"] == str(version)
            and current.get("model_dir") == str(model_dir)
            and processes.alive(current.get("process"))
        ):
            endpoint.ensure_router(port)
            run.event("unchanged", f"{serving[0]} already serves version {version}")
            return run.conclude("unchanged")
    log.warning(
        LOCAL_ALARMS_NOTE,
        endpoint.name,
        poll_seconds,
        alarms.period_seconds * alarms.evaluation_periods,
    )
    try:
        if not serving:
            return run.create(str(version), model_dir, handlers, port, health_timeout)
        return run.blue_green(str(version), model_dir, handlers, port, health_timeout, shifts)
    except (_AbortError, EndpointError) as err:
        reason = str(err)
        creating = not serving
        run.event("rollback" if not creating else "failed", reason)
        restored = rollback_to_stable(endpoint, note=reason)
        run.event("restored", f"{restored['action']}: {restored.get('weights')}")
        result = run.conclude("failed" if creating else "rolled_back", reason)
        log.error("endpoint %s: version %s %s: %s", endpoint.name, version, result.outcome, reason)
        raise RolloutFailedError(reason, result) from err
    except BaseException:
        rollback_to_stable(endpoint, note="the deployment was interrupted")
        raise


def rollback_to_stable(endpoint: LocalEndpoint, note: str | None = None) -> dict[str, Any]:
    """Make ``endpoint`` serve its last stable routing: what the last finished deployment left.

    For a deployment that failed or whose process was killed: the stable variants get their
    weights back (started again if their process died), the router too, and every other variant
    is drained and removed. An endpoint whose creation never finished is deleted. Idempotent:
    an endpoint that already serves its stable routing is left alone (``action`` ``none``).
    Returns ``{"action": none|restored|deleted, "weights", "removed"}``, and for ``restored``
    the ``version`` whose unfinished deployment was undone (None if there was none)."""
    if not endpoint.exists():
        return {"action": "none", "weights": {}, "removed": [], "detail": "no such endpoint"}
    state = endpoint.state()
    running = state.get("deployment")
    stable = (state.get("stable") or {}).get("variants") or {}
    if not stable:
        if _serving(state) and not running:
            return {"action": "none", "weights": endpoint.weights(), "removed": []}
        endpoint.delete()
        log.warning("endpoint %s had no stable routing (never created): deleted", endpoint.name)
        return {"action": "deleted", "weights": {}, "removed": sorted(state["variants"])}
    missing = [c for c in stable if c not in state["variants"]]
    if missing:
        raise EndpointError(
            f"endpoint {endpoint.name}: the stable variant(s) {missing} are gone from its state; "
            f"delete the endpoint (fmops endpoint delete {endpoint.name}) and deploy again"
        )
    target = {c: v["weight"] for c, v in stable.items()}
    extra = [c for c in state["variants"] if c not in target]
    weights = {c: v["weight"] for c, v in state["variants"].items()}
    alive = all(processes.alive(state["variants"][c].get("process")) for c in target)
    if not running and not extra and weights == target and alive and endpoint.router_alive():
        return {"action": "none", "weights": target, "removed": []}
    for color in target:
        if not processes.alive(state["variants"][color].get("process")):
            endpoint.restart_variant(color)
    endpoint.route({**target, **{c: 0 for c in extra}})  # persisted first: a router started
    endpoint.ensure_router()  # below comes back with the stable routing
    for color in extra:
        endpoint.drain(color)
        endpoint.remove_variant(color)
    with endpoint.transaction() as state:
        if state.get("deployment"):
            state["last_deployment"] = {
                **{k: state["deployment"].get(k) for k in ("version", "mode", "started")},
                "outcome": "rolled_back",
                "reason": note or "the deployment did not finish (its process ended)",
                "finished": now_iso(),
            }
        state["deployment"] = None
    log.warning(
        "endpoint %s: restored the stable routing %s, removed %s", endpoint.name, target, extra
    )
    return {
        "action": "restored",
        "weights": target,
        "removed": extra,
        "version": running.get("version") if running else None,
    }


def deploy_local(
    config: PipelineConfig,
    version: str,
    model_dir: Path,
    handlers: Path,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """``rollout`` with the config's ``deployment`` settings (port, health timeout, traffic,
    alarms, ``smoke_requests`` requests from the evaluation set). Returns the deploy task's result:
    endpoint, url, version, status and the rollout (outcome, shifts, timeline). Raises
    ``RolloutFailedError`` for a rolled back version."""
    settings = config.deployment
    endpoint = LocalEndpoint(settings.endpoint_name)
    result = rollout(
        endpoint,
        str(version),
        model_dir,
        handlers,
        port=settings.port,
        traffic=settings.traffic,
        alarms=settings.alarms,
        smoke_payloads=[
            case["payload"] for case in kind_of(config).smoke_cases(config, settings.smoke_requests)
        ],
        smoke_requests=settings.smoke_requests,
        health_timeout=settings.health_timeout_seconds,
        clock=clock,
    )
    return {
        "endpoint": endpoint.name,
        "url": endpoint.url(),
        "version": str(version),
        "status": endpoint.status(),
        "rollout": result.to_dict(),
    }
