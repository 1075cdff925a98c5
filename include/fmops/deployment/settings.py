"""fmops_deploy's settings (the ``deployment`` block) and the bounds of a blue/green rollout.

Both targets shift traffic the same way, so the bounds are SageMaker's deployment guardrails
whatever the target: ``fmops.deployment.rollout`` checks the local router against them and the
sagemaker target's endpoint requests carry them. Checked here once, with the fix in each error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fmops.schema import NAME_PATTERN, NAME_RULE, Strict

# -- blue/green bounds --------------------------------------------------------------------------
# The bounds of SageMaker's API reference (TrafficRoutingConfig, BlueGreenUpdatePolicy). botocore's
# model has only some of them: CapacitySize.Value min 1 (the 50% and 10-50% rules are
# documentation only), WaitIntervalInSeconds and TerminationWaitInSeconds 0-3600,
# MaximumExecutionTimeoutInSeconds 600-28800. Both targets' rollouts take the same settings, so
# they are checked as SageMaker would check them whatever the target.

CANARY_PERCENT = (1, 50)
LINEAR_PERCENT = (10, 50)
WAIT_SECONDS = (0, 3600)
TERMINATION_WAIT_SECONDS = (0, 3600)
EXECUTION_TIMEOUT_SECONDS = (600, 28800)
# Without a configured execution timeout: the waits plus this much for provisioning the new fleet
# and loading the model (GPU capacity and a model download take minutes).
START_UP_ALLOWANCE_SECONDS = 1800
TRAFFIC_MODES = ("ALL_AT_ONCE", "CANARY", "LINEAR")  # TrafficRoutingConfig.Type
MAX_ALARM_WINDOW_SECONDS = 86_400  # CloudWatch: Period x EvaluationPeriods at most one day
LATENCY_STATISTIC = r"^(Average|Maximum|p\d{1,2}(\.\d{1,2})?)$"


@dataclass(frozen=True)
class Bound:
    """The range of one traffic-shifting value, the request field it becomes, and the fix."""

    low: int
    high: int
    api: str
    what: str
    fix: str

    def holds(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def problem(self, label: str, value: Any) -> str:
        """The refusal of a request's value, ``label`` its path in the request."""
        return f"{label}: {value!r} is outside {self.low}-{self.high} ({self.what}): {self.fix}"

    def setting_problem(self, value: Any) -> str:
        """The refusal of a config value (the error's location names the key)."""
        return f"{value!r} is outside {self.low}-{self.high} ({self.api}: {self.what}): {self.fix}"


TRAFFIC_BOUNDS = {
    "canary_percent": Bound(
        *CANARY_PERCENT,
        "CanarySize, CAPACITY_PERCENT",
        "the canary is at most 50% of the new fleet's capacity",
        f"set it between {CANARY_PERCENT[0]} and {CANARY_PERCENT[1]}",
    ),
    "linear_step_percent": Bound(
        *LINEAR_PERCENT,
        "LinearStepSize, CAPACITY_PERCENT",
        "each linear step is 10-50% of the new fleet's capacity",
        f"set it between {LINEAR_PERCENT[0]} and {LINEAR_PERCENT[1]} (20: five steps)",
    ),
    "wait_seconds": Bound(
        *WAIT_SECONDS,
        "WaitIntervalInSeconds",
        "the baking period after each traffic shift",
        f"set it between {WAIT_SECONDS[0]} and {WAIT_SECONDS[1]} seconds",
    ),
    "termination_wait_seconds": Bound(
        *TERMINATION_WAIT_SECONDS,
        "TerminationWaitInSeconds",
        "how long the old fleet is kept after the shift",
        f"set it between {TERMINATION_WAIT_SECONDS[0]} and {TERMINATION_WAIT_SECONDS[1]} seconds",
    ),
    "max_execution_timeout_seconds": Bound(
        *EXECUTION_TIMEOUT_SECONDS,
        "MaximumExecutionTimeoutInSeconds",
        "the longest a deployment may run before SageMaker rolls it back",
        f"set it between {EXECUTION_TIMEOUT_SECONDS[0]} and {EXECUTION_TIMEOUT_SECONDS[1]} "
        f"seconds, or leave it out for the waits plus {START_UP_ALLOWANCE_SECONDS} s",
    ),
}


@dataclass(frozen=True)
class TrafficLabels:
    """How a problem names the traffic fields: by config key, or by request path."""

    canary: str
    linear: str
    wait: str
    termination: str
    timeout: str


SETTINGS_LABELS = TrafficLabels(
    **{
        short: f"{key} ({TRAFFIC_BOUNDS[key].api})"
        for short, key in (
            ("canary", "canary_percent"),
            ("linear", "linear_step_percent"),
            ("wait", "wait_seconds"),
            ("termination", "termination_wait_seconds"),
            ("timeout", "max_execution_timeout_seconds"),
        )
    }
)


def baking_periods(mode: str, step_percent: int | None) -> int:
    """How many baking periods a blue/green deployment has (see ``total_wait_seconds``)."""
    mode = mode.upper()
    if mode == "CANARY":
        return 2
    if mode == "LINEAR":
        return math.ceil(100 / step_percent) if step_percent else 1
    return 1


def total_wait_seconds(mode: str, wait: int, termination: int, step_percent: int | None) -> int:
    """The waits a blue/green deployment contains, as SageMaker's developer guide describes them.

    Each traffic shift is followed by a baking period of ``WaitIntervalInSeconds`` during which
    the alarms are watched, and the old fleet is kept ``TerminationWaitInSeconds`` after the last
    one: ALL_AT_ONCE shifts once (one bake); CANARY shifts the canary, bakes, shifts the rest and
    bakes again ("a final baking period"): two bakes; LINEAR shifts ``ceil(100 / step)`` times,
    each followed by a bake. ``MaximumExecutionTimeoutInSeconds`` "should be larger than the total
    waiting time": fmops requires it, and a new fleet must also start within the difference.
    """
    return baking_periods(mode, step_percent) * wait + termination


def execution_timeout(
    mode: str, wait: int, termination: int, step: int | None, given: int | None
) -> int:
    """The configured timeout, else the waits plus the start-up allowance, within the bounds."""
    if given is not None:
        return given
    total = total_wait_seconds(mode, wait, termination, step)
    low, high = EXECUTION_TIMEOUT_SECONDS
    return min(high, max(low, total + START_UP_ALLOWANCE_SECONDS))


def waits_problem(
    mode: str,
    *,
    wait: int,
    termination: int,
    step: int | None,
    timeout: int | None,
    labels: TrafficLabels = SETTINGS_LABELS,
) -> str | None:
    """Whether the waits fit in SageMaker's longest deployment and in the given timeout."""
    total = total_wait_seconds(mode, wait, termination, step)
    high = EXECUTION_TIMEOUT_SECONDS[1]
    arithmetic = (
        f"{baking_periods(mode, step)} baking period(s) of {wait} s + termination wait "
        f"{termination} s"
    )
    if total >= high:
        return (
            f"{labels.timeout}: {mode} waits {arithmetic} = {total} s, and SageMaker allows a "
            f"deployment at most {high} s: shorten {labels.wait} or {labels.termination}"
            + (f", or take larger steps ({labels.linear})" if mode.upper() == "LINEAR" else "")
        )
    if timeout is not None and timeout <= total:
        return (
            f"{labels.timeout}: {timeout} s is not longer than the waits it contains, "
            f"{arithmetic} = {total} s (the new fleet's start-up comes on top): raise it to more "
            f"than {total} (at most {high}), or shorten the waits"
        )
    return None


def traffic_problems(
    mode: str,
    *,
    canary_percent: Any,
    linear_step_percent: Any,
    wait: Any,
    termination: Any,
    timeout: Any,
    labels: TrafficLabels = SETTINGS_LABELS,
) -> list[str]:
    """Every way the traffic-shifting values break SageMaker's bounds, one line each.

    ``mode`` is the API's (``TRAFFIC_MODES``); ``timeout`` None means "derive it" (the waits
    plus ``START_UP_ALLOWANCE_SECONDS``).
    """
    if mode not in TRAFFIC_MODES:
        return [f"traffic mode {mode!r} is unknown; one of {', '.join(TRAFFIC_MODES)}"]
    step = {"CANARY": canary_percent, "LINEAR": linear_step_percent}.get(mode)
    checked = [
        ("wait_seconds", labels.wait, wait),
        ("termination_wait_seconds", labels.termination, termination),
    ]
    if mode == "CANARY":
        checked.insert(0, ("canary_percent", labels.canary, canary_percent))
    elif mode == "LINEAR":
        checked.insert(0, ("linear_step_percent", labels.linear, linear_step_percent))
    if timeout is not None:
        checked.append(("max_execution_timeout_seconds", labels.timeout, timeout))
    problems = [
        TRAFFIC_BOUNDS[key].problem(label, value)
        for key, label, value in checked
        if not TRAFFIC_BOUNDS[key].holds(value)
    ]
    if problems:
        return problems
    waits = waits_problem(
        mode, wait=wait, termination=termination, step=step, timeout=timeout, labels=labels
    )
    return [waits] if waits else []


class TrafficSettings(Strict):
    """How a new version takes the traffic (SageMaker's blue/green deployment guardrails):
    all at once, a canary then the rest, or linear steps; a baking period after each shift
    while the rollback alarms are watched, then the old fleet is kept a while."""

    mode: Literal["all_at_once", "canary", "linear"] = "all_at_once"
    canary_percent: int = Field(10, description="canary: the share of the new fleet shifted first")
    linear_step_percent: int = Field(20, description="linear: the share shifted at each step")
    wait_seconds: int = Field(0, description="the baking period after each traffic shift")
    termination_wait_seconds: int = Field(0, description="the old fleet is kept this long")
    max_execution_timeout_seconds: int | None = Field(
        None, description="default: the waits plus 1800 s for the new fleet's start-up"
    )

    @field_validator(*TRAFFIC_BOUNDS)
    @classmethod
    def _within(cls, value: int | None, info: ValidationInfo) -> int | None:
        bound = TRAFFIC_BOUNDS[info.field_name]
        if value is not None and not bound.holds(value):
            raise ValueError(bound.setting_problem(value))
        return value

    @model_validator(mode="after")
    def _waits_fit(self) -> TrafficSettings:
        problem = waits_problem(
            self.mode,
            wait=self.wait_seconds,
            termination=self.termination_wait_seconds,
            step=self.step_percent,
            timeout=self.max_execution_timeout_seconds,
        )
        if problem:
            raise ValueError(problem)
        return self

    @property
    def routing_type(self) -> str:
        """The mode as TrafficRoutingConfig.Type spells it."""
        return self.mode.upper()

    @property
    def step_percent(self) -> int | None:
        return {"canary": self.canary_percent, "linear": self.linear_step_percent}.get(self.mode)

    @property
    def timeout_seconds(self) -> int:
        """MaximumExecutionTimeoutInSeconds: as configured, else the waits plus start-up."""
        return execution_timeout(
            self.mode,
            self.wait_seconds,
            self.termination_wait_seconds,
            self.step_percent,
            self.max_execution_timeout_seconds,
        )


class AlarmSettings(Strict):
    """The CloudWatch alarms that roll a deployment back (per endpoint variant)."""

    max_5xx_error_rate: float = Field(
        0.01, gt=0, le=1, description="share of invocations answered 5xx (Average of 0/1 each)"
    )
    max_4xx_error_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "off by default: 4xx includes clients' bad requests; but the Hugging Face toolkit "
            "answers 400 for every exception of the handlers, so a broken model shows here"
        ),
    )
    max_latency_ms: float = Field(
        1000.0, gt=0, description="ModelLatency threshold; CloudWatch gets it in microseconds"
    )
    latency_statistic: Annotated[str, Field(pattern=LATENCY_STATISTIC)] = "Average"
    latency_per_token_ms: float | None = Field(
        None,
        gt=0,
        description=(
            "off by default: for generative models, the latency per generated token (the "
            "variant's x-generated-tokens header), same statistic as latency_statistic; local "
            "target only: SageMaker publishes no per-token metric"
        ),
    )
    period_seconds: int = Field(60, ge=60, description="a multiple of 60 (1-minute metrics)")
    evaluation_periods: int = Field(3, ge=1)
    datapoints_to_alarm: int = Field(2, ge=1)

    @field_validator("period_seconds")
    @classmethod
    def _whole_minutes(cls, value: int) -> int:
        if value % 60:
            raise ValueError(
                f"{value} is not a multiple of 60; SageMaker publishes endpoint metrics every "
                "minute: use 60, 120, 300, ..."
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AlarmSettings:
        problems = []
        if self.datapoints_to_alarm > self.evaluation_periods:
            problems.append(
                f"datapoints_to_alarm: {self.datapoints_to_alarm} exceeds evaluation_periods "
                f"({self.evaluation_periods}): make it at most that"
            )
        window = self.period_seconds * self.evaluation_periods
        if window > MAX_ALARM_WINDOW_SECONDS:
            problems.append(
                f"period_seconds x evaluation_periods = {window} s exceeds CloudWatch's "
                f"{MAX_ALARM_WINDOW_SECONDS} s: fewer or shorter periods"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DeploymentConfig(Strict):
    """fmops_deploy: the endpoint, approval, smoke test, and how a new version takes over
    (``traffic``, both targets) and is rolled back (``alarms``, CloudWatch: the sagemaker
    target's). Where the sagemaker target serves is ``sagemaker.endpoint``."""

    endpoint_name: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    approval: Literal["auto", "manual"] = Field(
        "manual",
        description=(
            "manual: await_approval waits for a person to Approve or Reject in Airflow (Required "
            "actions, the REST API, or fmops approve and reject), who is recorded on the version; "
            "auto: the pipeline approves on the spot and says so on the version"
        ),
    )
    approval_timeout_seconds: int = Field(
        7 * 24 * 3600,
        ge=1,
        le=90 * 24 * 3600,
        description=(
            "how long await_approval waits for a review before the deploy run fails without "
            "deploying (decide, then trigger fmops_deploy by hand with the version)"
        ),
    )
    reviewers: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list,
        max_length=100,
        description=(
            "Airflow user ids who may approve or reject (Airflow answers 403 to anyone else); "
            "empty: any user Airflow lets respond to fmops_deploy's required actions"
        ),
    )
    port: int = Field(8090, ge=1024, le=65535)
    smoke_requests: int = Field(20, ge=1, le=10_000)
    health_timeout_seconds: int = Field(120, ge=1)
    traffic: TrafficSettings = TrafficSettings()
    alarms: AlarmSettings = AlarmSettings()
