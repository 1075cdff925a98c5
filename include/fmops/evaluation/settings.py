"""The evaluation gate's settings, and the vocabulary of metric paths that they name.

A metric is named by its path in a model's ``metrics.json``: ``<scenario>.<family>.<name>``
(``banking77.accuracy.accuracy``, ``banking77.calibration.ece``, and deeper leaves such as
``banking77.robustness.typos.drop``), or ``efficiency.<name>`` / ``cost.<name>`` for the
model-wide sections (``efficiency.latency_p95_ms``). Whether a larger value is better is read
from the metric's name (``direction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from fmops.schema import Strict

FAMILIES = ("accuracy", "calibration", "robustness", "fairness")
SECTIONS = ("efficiency", "cost")
PATH_RULE = (
    "<scenario>.<family>.<name> with family one of "
    + ", ".join(FAMILIES)
    + " (e.g. banking77.accuracy.accuracy), or efficiency.<name> / cost.<name> "
    "(e.g. efficiency.latency_p95_ms)"
)

_SECTION_EXAMPLES = {"efficiency": "latency_p95_ms", "cost": "usd_per_1k_requests"}

Direction = Literal["higher", "lower"]
HIGHER, LOWER = "higher", "lower"

_HIGHER_NAMES = {
    "accuracy",
    "exact_match",
    "f1",
    "precision",
    "recall",
    "score",
    "throughput_per_s",
    "tokens_per_second",
}
_LOWER_NAMES = {
    "drop",
    "nll_per_token",
    "time_to_first_token_ms_p50",
    "perplexity",
    "ece",
    "gap",
    "max_gap",
    "mce",
    "parameters",
    "price_per_hour",
    "worst_drop",
}


def direction(name: str) -> Direction | None:
    """Whether a larger value of the metric ``name`` (a path's last part) is better.

    Higher is better for accuracy, F1, exact match, ROUGE, robustness scores and throughput;
    lower is better for calibration error, perplexity, robustness drops, fairness gaps, latency,
    size and cost. None for a count or an unknown name: such a column is shown but never ranked.
    """
    if name in _HIGHER_NAMES or name.endswith("_f1") or name.startswith("rouge"):
        return HIGHER
    if (
        name in _LOWER_NAMES
        or name.startswith(("latency", "usd_", "cost"))
        or name.endswith(("_drop", "_gap", "_mb", "_gb", "_ms"))
        or "size" in name
    ):
        return LOWER
    return None


@dataclass(frozen=True)
class MetricPath:
    """A parsed metric path: ``section`` is the scenario, or ``efficiency`` / ``cost``."""

    text: str
    section: str
    family: str
    keys: tuple[str, ...]

    @property
    def scenario(self) -> str | None:
        return None if self.section in SECTIONS else self.section

    @property
    def name(self) -> str:
        return self.keys[-1]

    @property
    def location(self) -> tuple[str, ...]:
        """The keys to follow from the top of ``metrics.json`` to the value."""
        if self.scenario is None:
            return (self.section, *self.keys)
        return ("scenarios", self.section, self.family, *self.keys)


def parse_metric_path(text: str) -> MetricPath:
    """Parse ``text``; a ValueError names what is wrong and the accepted shapes."""
    parts = text.split(".")
    if any(not p.strip() for p in parts):
        raise ValueError(f"metric {text!r} has an empty part; write {PATH_RULE}")
    if parts[0] in SECTIONS:
        if len(parts) != 2:
            raise ValueError(
                f"metric {text!r}: {parts[0]} metrics are {parts[0]}.<name> "
                f"(e.g. {parts[0]}.{_SECTION_EXAMPLES[parts[0]]})"
            )
        return MetricPath(text, parts[0], parts[0], (parts[1],))
    if len(parts) < 3:
        raise ValueError(f"metric {text!r} is too short; write {PATH_RULE}")
    if parts[1] not in FAMILIES:
        raise ValueError(
            f"metric {text!r}: unknown family {parts[1]!r}; the family is one of "
            f"{', '.join(FAMILIES)}, or the section one of {', '.join(SECTIONS)}: "
            f"write {PATH_RULE}"
        )
    return MetricPath(text, parts[0], parts[1], tuple(parts[2:]))


def _ranked_path(text: str, role: str) -> MetricPath:
    path = parse_metric_path(text)
    if direction(path.name) is None:
        raise ValueError(
            f"{role} metric {text!r}: fmops does not know whether a larger {path.name!r} is "
            "better, so it cannot rank by it; name an accuracy, F1, exact-match or ROUGE metric"
        )
    return path


class MetricBound(Strict):
    """A bound on one metric; a model whose value is missing fails the check."""

    metric: str = Field(description=f"the metric's path: {PATH_RULE}")
    min: float | None = Field(None, allow_inf_nan=False, description="the value must be >= min")
    max: float | None = Field(None, allow_inf_nan=False, description="the value must be <= max")

    @field_validator("metric")
    @classmethod
    def _known_path(cls, value: str) -> str:
        parse_metric_path(value)
        return value

    @model_validator(mode="after")
    def _some_bound(self) -> MetricBound:
        if self.min is None and self.max is None:
            raise ValueError(
                f"bound on {self.metric!r} sets neither min nor max; set min (the value must be "
                "at least it), max (at most it), or both"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"bound on {self.metric!r}: min ({self.min}) exceeds max ({self.max}), so no "
                "value passes; make min <= max"
            )
        return self

    @property
    def path(self) -> MetricPath:
        return parse_metric_path(self.metric)

    def describe(self) -> str:
        """The bound as text: ``>= 0.8``, ``<= 0.1`` or ``in [0.1, 0.5]``."""
        if self.min is not None and self.max is not None:
            return f"in [{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f">= {self.min:g}"
        return f"<= {self.max:g}"


class ChampionSettings(Strict):
    """The challenger test: a paired bootstrap of (candidate - champion) on per-example scores.

    The winner is promoted over a registered champion only when the lower end of the
    ``confidence`` interval of the mean difference is above ``margin``.
    """

    metric: str | None = Field(
        None,
        description=(
            "<scenario>.accuracy.<name>: the scenario whose per-example scores are compared; "
            "default: the primary metric"
        ),
    )
    margin: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="the improvement the CI must clear"
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="the confidence interval's level")
    resamples: int = Field(2000, ge=1000, description="bootstrap replicates")
    seed: int = Field(13, description="the bootstrap's random seed: same seed, same interval")

    @field_validator("metric")
    @classmethod
    def _accuracy_metric(cls, value: str | None) -> str | None:
        if value is None:
            return value
        path = _ranked_path(value, "champion")
        if path.family != "accuracy":
            raise ValueError(
                f"champion metric {value!r} is not an accuracy metric; the per-example scores "
                "compared with the champion are accuracy scores: write "
                "<scenario>.accuracy.<name> (e.g. banking77.accuracy.accuracy)"
            )
        return value


class GateSettings(Strict):
    """Which candidate wins, and whether it replaces the champion."""

    primary: str | None = Field(
        None,
        description=(
            "the metric that ranks the candidates; default: the first scenario's "
            "accuracy.accuracy (its first accuracy metric where it has no accuracy)"
        ),
    )
    bounds: list[MetricBound] = Field(
        default_factory=list, description="every bound the winner must pass"
    )
    champion: ChampionSettings = ChampionSettings()

    @field_validator("primary")
    @classmethod
    def _rankable(cls, value: str | None) -> str | None:
        if value is not None:
            _ranked_path(value, "primary")
        return value

    @model_validator(mode="after")
    def _champion_metric(self) -> GateSettings:
        if self.champion.metric is None and self.primary is not None:
            family = parse_metric_path(self.primary).family
            if family != "accuracy":
                raise ValueError(
                    f"champion.metric defaults to primary ({self.primary!r}), which is not an "
                    "accuracy metric; set champion.metric to <scenario>.accuracy.<name>"
                )
        return self


OptimizedRuntime = Literal["int8", "fp32"]


class OptimizeSettings(Strict):
    """The optimized serving artifact of a fine-tuned model: its evaluation job exports it (a
    classifier's ONNX Runtime graphs, a causal LM's int8 weights) and evaluates each on the
    eager model's scenarios and examples; select keeps the first whose primary metric is not
    worse than the eager model's by more than ``margin`` (a paired bootstrap), and the
    registered version serves it."""

    runtimes: list[OptimizedRuntime] = Field(
        default_factory=lambda: ["int8", "fp32"],
        description=(
            "a classifier's ONNX Runtime graphs to export and evaluate, in order of preference "
            "(int8: dynamic quantization of the fp32 graph's weights); the first one the test "
            "keeps is served; []: no optimize step for classifiers"
        ),
    )
    generative: list[Literal["int8"]] = Field(
        default_factory=list,
        description=(
            "a causal LM's optimized artifacts to evaluate: int8 is PyTorch's dynamic "
            "quantization of its linear layers but the output head, one scale per output "
            "channel, served on the CPU. Off by default: it costs a second pass of every "
            "generation scenario, and the packaged SmolLM2 lost 4.5 points of token F1 in int8 "
            "untuned, 19.7 tuned (BENCHMARKS.md), which the test refuses"
        ),
    )
    margin: float = Field(
        0.005,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description=(
            "how much lower the graph's primary metric may be than the eager model's: the lower "
            "end of the interval of (graph - eager) must be above -margin (0.005: half a point "
            "of accuracy)"
        ),
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="the confidence interval's level")
    resamples: int = Field(2000, ge=1000, description="bootstrap replicates")
    seed: int = Field(13, description="the bootstrap's random seed: same seed, same interval")

    def preferred(self, generative: bool) -> list[str]:
        """The runtimes to export and test, in order, for a causal LM or a classifier."""
        return list(self.generative if generative else self.runtimes)

    @field_validator("runtimes", "generative")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) < len(value):
            raise ValueError(f"runtimes {value} names a runtime twice; list each once")
        return value
