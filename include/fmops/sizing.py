"""Hosting by cost at the latency goal: which instance type, and how many of it, serve a model's
peak traffic within its latency goal for the least per 1,000 requests.

Every figure here is an estimate, and each result carries its inputs and its arithmetic.

**What one request costs** (``Profile``):

- a classifier: ``request_ms_p50``/``p95``, one single-text request on one CPU core, as the
  evaluation job measures it (``evaluate.py``'s ``single_requests``: the inference toolkit answers
  each request alone), and the evaluation machine's batched ``throughput_per_s``. Before any
  evaluation (``fmops plan``) both come from the parameter count: 2 x parameters x tokens floating
  point operations at ``CPU_GFLOPS_PER_CORE`` plus ``REQUEST_OVERHEAD_MS`` (calibrated on
  all-MiniLM-L6-v2, see the constants), and the batched pass at ``BATCHED_GAIN`` times that;
- a generative model (TGI): nothing measured on a CPU says how a GPU decodes, so its figures come
  from the GPU's memory bandwidth, which bounds decoding: every generated token reads every
  weight once, so a token takes weight bytes / (GPUs x bandwidth x ``BANDWIDTH_EFFICIENCY``),
  times ``SHARDING_EFFICIENCY`` when tensor parallel over several GPUs; an answer of
  ``answer_tokens`` takes that many tokens (the prompt's prefill is left out).

**Per instance type** (``estimate``):

- a CPU type (classifiers only): one worker per physical core (vCPUs / 2), each answering one
  request at a time: ``capacity = cores x 1000 / request_ms_p50 x cpu_speedup``; latency
  ``request_ms_p95 / cpu_speedup`` (``cpu_speedup``: a hosting core against the evaluation
  machine's, 1 unless told);
- a GPU type, a classifier: ``capacity = GPUs x throughput_per_s x gpu_speedup`` and latency
  ``request_ms_p95 / gpu_speedup``: the evaluation's stated assumption
  (``evaluation.cost.gpu_speedup``), as the cost estimate always used it;
- a GPU type, a generative model: latency per token as above; TGI decodes ``concurrency``
  sequences together in about the time of one while decoding is bandwidth-bound, so
  ``capacity = concurrency x 1000 / answer_ms``.

**The fleet**: ``count = max(instance_count, ceil(peak / (capacity x target_utilization)))``; a
type is eligible when its latency meets the goal (a classifier's p95 per request, a generative
model's per token) and the model fits its memory (``fmops.catalog``). Its cost: ``count x price
per hour / (peak x 3600) x 1000`` USD per 1,000 requests at the peak. The cheapest eligible type
wins (then fewer instances, then the lower latency); the rest, in order, are the capacity
fallbacks. The auto scaling target follows: ``capacity x target_utilization x 60`` invocations per
instance per minute; a fleet larger than ``scaling.max_instances`` raises the scalable target's
maximum to it (the endpoint plan says so).

The peak, when the config leaves it out: 10 requests/s for a classifier, 0.2 for a generative
model (12 answers a minute: a 7B model's answer takes seconds on any GPU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fmops.catalog import (
    BYTES_PER_PARAM,
    Catalog,
    CatalogError,
    InstanceType,
    MemoryEstimate,
)

# Before any evaluation (fmops plan) a classifier's request cost is estimated from its size:
# REQUEST_OVERHEAD_MS + 2 x parameters x tokens at CPU_GFLOPS_PER_CORE. Measured on this
# project's 2-core AMD EPYC machine (2026-12-07, quiet): all-MiniLM-L6-v2's forward pass on one
# thread, padded to 16, 64 and 128 tokens, took 12.7, 26 and 44 ms, which fits 8 ms + about 150
# GFLOP/s (every parameter counted, the embeddings too). The constants are set on the slow side
# on purpose: 14, 50 and 99 ms for those lengths, about 2x the measurement at 64-128 tokens. This
# estimate stands in until the evaluation measures the model, and should not promise a latency
# that the measurement then misses.
REQUEST_OVERHEAD_MS = 2.0
CPU_GFLOPS_PER_CORE = 60.0
BATCHED_GAIN = 4.0  # the batched pass against single requests on all cores (measured 3-6x)
BANDWIDTH_EFFICIENCY = 0.5  # of a GPU's peak memory bandwidth that small-batch decoding attains
SHARDING_EFFICIENCY = 0.8  # tensor parallel over several GPUs: the all-reduce of every layer

if TYPE_CHECKING:
    from fmops.deployment.settings import AlarmSettings
    from fmops.sagemaker.settings import EndpointSettings

Kind = Literal["classifier", "generative"]
DEFAULT_TOKEN_GOAL_MS = 50.0  # 20 tokens/s, faster than anyone reads
DEFAULT_PEAK_RPS = {"classifier": 10.0, "generative": 0.2}
# The evaluation's efficiency figures Profile.measured reads: select keeps them on the cost record
# and registration on the version, so that the deploy sizes the endpoint from the same ones.
MEASURED_KEYS = ("parameters", "throughput_per_s", "threads", "request_ms_p50", "request_ms_p95")
FALLBACKS_SHOWN = 5


class SizingError(ValueError):
    """No instance type serves the model at its goal, within the filters; the message says which
    came closest and what to change."""


@dataclass(frozen=True)
class Demand:
    """What the endpoint must serve."""

    peak_rps: float
    latency_goal_ms: float  # a classifier: p95 per request; a generative model: per token
    target_utilization: float
    min_count: int = 1
    max_count: int | None = None  # scaling.max_instances when auto scaling is on

    def explain(self) -> str:
        bound = f", scaling up to {self.max_count}" if self.max_count else ""
        return (
            f"peak {self.peak_rps:g} requests/s, instances at {self.target_utilization:.0%} of "
            f"their estimated capacity, at least {self.min_count}{bound}"
        )


@dataclass(frozen=True)
class Profile:
    """What one request of the model costs, and where the figures come from."""

    kind: Kind
    parameters: int
    precision: str
    source: str
    request_ms_p50: float | None = None  # classifier: one request on one CPU core
    request_ms_p95: float | None = None
    throughput_per_s: float | None = None  # classifier: batched, the evaluation machine
    gpu_speedup: float = 10.0
    cpu_speedup: float = 1.0
    answer_tokens: int = 256  # generative
    concurrency: int = 8  # generative: sequences TGI decodes together

    @classmethod
    def measured(
        cls,
        efficiency: Mapping[str, Any],
        *,
        precision: str = "fp32",
        gpu_speedup: float = 10.0,
        cpu_speedup: float = 1.0,
    ) -> Profile | None:
        """A classifier's profile from the evaluation job's efficiency figures; None when they
        lack the parameters or a throughput. Without the single-request figures (an evaluation
        from before they were measured) one request is taken as one example of the batched pass
        on one of the machine's threads, and said so."""
        parameters, throughput = efficiency.get("parameters"), efficiency.get("throughput_per_s")
        if not parameters or not throughput:
            return None
        p50, p95 = efficiency.get("request_ms_p50"), efficiency.get("request_ms_p95")
        if p50 and p95:
            source = (
                f"measured by the evaluation job: {p50:g} ms p50 and {p95:g} ms p95 for one "
                f"request on one CPU thread, {float(throughput):g} examples/s batched"
            )
        else:
            threads = int(efficiency.get("threads") or 1)
            p50 = p95 = threads * 1000 / float(throughput) * BATCHED_GAIN
            source = (
                f"from the evaluation's batched throughput ({float(throughput):g} examples/s on "
                f"{threads} thread(s)), one request taken as {BATCHED_GAIN:g} x a batched "
                "example's core time: it measured no single requests"
            )
        return cls(
            "classifier",
            int(parameters),
            precision,
            source,
            request_ms_p50=float(p50),
            request_ms_p95=float(p95),
            throughput_per_s=float(throughput),
            gpu_speedup=gpu_speedup,
            cpu_speedup=cpu_speedup,
        )

    @classmethod
    def from_parameters(
        cls,
        parameters: int,
        tokens: int,
        *,
        precision: str = "fp32",
        gpu_speedup: float = 10.0,
        cpu_speedup: float = 1.0,
        cores: int = 2,
    ) -> Profile:
        """A classifier's profile before any evaluation: from its size and request length."""
        ms = REQUEST_OVERHEAD_MS + 2 * parameters * tokens / (CPU_GFLOPS_PER_CORE * 1e6)
        throughput = cores * 1000 / ms * BATCHED_GAIN
        source = (
            f"estimated before any evaluation: {REQUEST_OVERHEAD_MS:g} ms + 2 x {parameters:,} "
            f"parameters x {tokens} tokens at {CPU_GFLOPS_PER_CORE:g} GFLOP/s per core = "
            f"{ms:.1f} ms per request on one core; batched {BATCHED_GAIN:g}x that on {cores} "
            "cores; the evaluation measures both"
        )
        return cls(
            "classifier",
            parameters,
            precision,
            source,
            request_ms_p50=ms,
            request_ms_p95=ms,
            throughput_per_s=throughput,
            gpu_speedup=gpu_speedup,
            cpu_speedup=cpu_speedup,
        )

    @classmethod
    def generative(
        cls, parameters: int, precision: str, *, answer_tokens: int, concurrency: int
    ) -> Profile:
        return cls(
            "generative",
            parameters,
            precision,
            f"estimated from the weights ({parameters:,} parameters at {precision}) and each GPU "
            f"type's memory bandwidth; answers of {answer_tokens} tokens, {concurrency} decoded "
            "together",
            answer_tokens=answer_tokens,
            concurrency=concurrency,
        )

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "parameters": self.parameters,
            "precision": self.precision,
            "source": self.source,
            "request_ms_p50": self.request_ms_p50,
            "request_ms_p95": self.request_ms_p95,
            "throughput_per_s": self.throughput_per_s,
            "gpu_speedup": self.gpu_speedup,
            "cpu_speedup": self.cpu_speedup,
            "answer_tokens": self.answer_tokens,
            "concurrency": self.concurrency,
        }


@dataclass(frozen=True)
class Estimate:
    """One instance type's fleet for the demand, and the arithmetic."""

    instance: InstanceType
    latency_ms: float  # a classifier: p95 per request; a generative model: per token
    capacity_rps: float  # one instance at 100%
    count: int
    meets_goal: bool
    why_not: str | None  # why it is not eligible (the goal, no capacity), None when it is
    arithmetic: str

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def usd_per_hour(self) -> float | None:
        price = self.instance.price_per_hour
        return None if price is None else price * self.count

    def usd_per_1k(self, demand: Demand) -> float | None:
        hourly = self.usd_per_hour
        return None if hourly is None else hourly / (demand.peak_rps * 3.6)

    def scaling_target(self, demand: Demand) -> float:
        """Invocations per instance per minute for target tracking."""
        return round(self.capacity_rps * demand.target_utilization * 60, 1)

    def record(self, demand: Demand) -> dict[str, Any]:
        per_1k = self.usd_per_1k(demand)
        return {
            "instance_type": self.name,
            "count": self.count,
            "latency_ms": round(self.latency_ms, 3),
            "capacity_rps_per_instance": round(self.capacity_rps, 3),
            "meets_goal": self.meets_goal,
            "usd_per_hour": None if self.usd_per_hour is None else round(self.usd_per_hour, 4),
            "usd_per_1k_requests": None if per_1k is None else round(per_1k, 6),
            "scaling_target_per_minute": self.scaling_target(demand),
            "arithmetic": self.arithmetic,
        }


def estimate(instance: InstanceType, profile: Profile, demand: Demand) -> Estimate:
    """``instance``'s latency, capacity and fleet for ``demand`` (the module docstring's rules)."""
    if profile.kind == "generative":
        latency, capacity, how = _generative(instance, profile)
        goal_text = f"{latency:.1f} ms per token against a goal of {demand.latency_goal_ms:g} ms"
    elif not instance.gpus:
        cores = max(1, (instance.vcpus or 2) // 2)
        p50, p95 = profile.request_ms_p50 or 0.0, profile.request_ms_p95 or 0.0
        latency = p95 / profile.cpu_speedup
        capacity = cores * 1000 / p50 * profile.cpu_speedup
        how = (
            f"{cores} core(s) x 1000 / {p50:.3g} ms x cpu_speedup {profile.cpu_speedup:g} = "
            f"{capacity:.1f} requests/s"
        )
        goal_text = f"p95 {latency:.3g} ms against a goal of {demand.latency_goal_ms:g} ms"
    else:
        latency = (profile.request_ms_p95 or 0.0) / profile.gpu_speedup
        capacity = instance.gpus * (profile.throughput_per_s or 0.0) * profile.gpu_speedup
        how = (
            f"{instance.gpus} GPU(s) x {profile.throughput_per_s:.4g} examples/s x gpu_speedup "
            f"{profile.gpu_speedup:g} = {capacity:.1f} requests/s"
        )
        goal_text = f"p95 {latency:.3g} ms against a goal of {demand.latency_goal_ms:g} ms"
    usable = capacity * demand.target_utilization
    count = max(demand.min_count, math.ceil(demand.peak_rps / usable)) if usable > 0 else 0
    meets = latency <= demand.latency_goal_ms
    why_not = None
    if not meets:
        why_not = f"misses the latency goal: {goal_text}"
    elif not count:
        why_not = "has no estimated capacity"
    price = instance.price_per_hour
    cost = (
        f"{count} x {instance.price} = ${price * count:.3f}/h, "
        f"${price * count / (demand.peak_rps * 3.6):.5f} per 1,000 requests at the peak"
        if price is not None and count
        else "no known cost"
    )
    arithmetic = (
        f"{how}; at {demand.target_utilization:.0%}: {usable:.1f} per instance, so "
        f"{demand.peak_rps:g}/s needs {count} (at least {demand.min_count}); {goal_text}; {cost}"
    )
    return Estimate(instance, latency, capacity, count, meets, why_not, arithmetic)


def _generative(instance: InstanceType, profile: Profile) -> tuple[float, float, str]:
    """(ms per token, requests/s at capacity, the arithmetic) of TGI on ``instance``'s GPUs."""
    weight_gb = profile.parameters * BYTES_PER_PARAM[profile.precision] / 1e9
    gpus = instance.gpus
    efficiency = SHARDING_EFFICIENCY if gpus > 1 else 1.0
    bandwidth = gpus * (instance.bandwidth_gbs or 0.0) * BANDWIDTH_EFFICIENCY * efficiency
    if bandwidth <= 0:
        return math.inf, 0.0, f"{instance.name}: no memory bandwidth known"
    per_token = weight_gb / bandwidth * 1000
    answer = per_token * profile.answer_tokens
    capacity = profile.concurrency * 1000 / answer
    shard = f" x {SHARDING_EFFICIENCY:g} (tensor parallel)" if gpus > 1 else ""
    how = (
        f"{weight_gb:.2f} GB of weights / ({gpus} x {instance.bandwidth_gbs:g} GB/s x "
        f"{BANDWIDTH_EFFICIENCY:g}{shard}) = {per_token:.1f} ms per token, "
        f"{profile.answer_tokens} tokens = {answer / 1000:.2f} s an answer, "
        f"{profile.concurrency} at once = {capacity:.2f} requests/s"
    )
    return per_token, capacity, how


@dataclass(frozen=True)
class Sizing:
    """The chosen fleet, the eligible rest in order (the capacity fallbacks), and the types left
    out with the reason."""

    chosen: Estimate
    fallbacks: tuple[Estimate, ...]
    left_out: tuple[tuple[str, str], ...]
    profile: Profile
    demand: Demand
    need: MemoryEstimate
    memory: str  # the chosen type's memory arithmetic (Catalog.fit)
    pinned: bool = False

    def explain(self) -> str:
        how = "pinned" if self.pinned else "the lowest cost per 1,000 requests at the goal"
        text = (
            f"{self.chosen.name} x {self.chosen.count}, {how}: {self.chosen.arithmetic}. "
            f"Demand: {self.demand.explain()}. Profile: {self.profile.source}. "
            f"Memory: {self.memory}. Need: {self.need.explain(self.chosen.instance.processor)}"
        )
        if self.chosen.why_not:
            text += f". WARNING: the pinned type {self.chosen.why_not}"
        if self.fallbacks:
            listed = ", ".join(f"{e.name} x {e.count}" for e in self.fallbacks[:FALLBACKS_SHOWN])
            more = len(self.fallbacks) - FALLBACKS_SHOWN
            text += f". Fallbacks if it has no capacity: {listed}"
            text += f" and {more} more" if more > 0 else ""
        return text

    def record(self) -> dict[str, Any]:
        return {
            **self.chosen.record(self.demand),
            "pinned": self.pinned,
            "peak_rps": self.demand.peak_rps,
            "latency_goal_ms": self.demand.latency_goal_ms,
            "latency_goal_per": "token" if self.profile.kind == "generative" else "request",
            "target_utilization": self.demand.target_utilization,
            "profile": self.profile.record(),
            "fleet": {e.name: e.count for e in (self.chosen, *self.fallbacks)},
            "left_out": [f"{name}: {why}" for name, why in self.left_out],
            "explain": self.explain(),
            "estimate": "an estimate: " + self.profile.source,
        }


def processors_for(profile: Profile) -> tuple[str, ...]:
    """Where the model can be served: a generative model on GPUs only (TGI's image is GPU only)."""
    return ("gpu",) if profile.kind == "generative" else ("cpu", "gpu")


def rank(
    catalog: Catalog,
    need: MemoryEstimate,
    profile: Profile,
    demand: Demand,
    *,
    allowed: Sequence[str] | None = None,
    max_price: float | None = None,
) -> tuple[list[Estimate], list[Estimate]]:
    """The eligible fleets, cheapest per 1,000 requests first, and the estimates of the types
    left out (that fit the filters and the memory), each with its ``why_not``."""
    fitting = catalog.rank(
        need, allowed=allowed, max_price=max_price, processors=processors_for(profile)
    )
    eligible, left_out = [], []
    for choice in fitting:
        found = estimate(choice.instance, profile, demand)
        (left_out if found.why_not else eligible).append(found)
    eligible.sort(key=lambda e: (e.usd_per_hour, e.count, e.latency_ms, e.name))
    return eligible, left_out


def choose(
    catalog: Catalog,
    need: MemoryEstimate,
    profile: Profile,
    demand: Demand,
    *,
    allowed: Sequence[str] | None = None,
    max_price: float | None = None,
    pinned: str | None = None,
    model: str = "the model",
) -> Sizing:
    """The fleet with the lowest cost per 1,000 requests that meets the goal (or the pinned type's
    fleet, warned when it misses the goal); ``SizingError`` when no type does, naming the one
    that came closest and what to change. A pinned type that cannot hold the model is the
    catalog's ``CatalogError``."""
    if pinned:
        choice = catalog.check_pinned(pinned, need, model=model)
        if profile.kind == "generative" and not choice.instance.gpus:
            raise CatalogError(
                f"pinned instance type {pinned} is a CPU type; {model} is a generative model, "
                "served by TGI, whose SageMaker image runs on GPUs only: pin a GPU type"
            )
        found = estimate(choice.instance, profile, demand)
        return Sizing(found, (), (), profile, demand, need, choice.reason, pinned=True)
    eligible, left_out = rank(catalog, need, profile, demand, allowed=allowed, max_price=max_price)
    reasons = tuple((e.name, e.why_not or "") for e in left_out)
    if eligible:
        memory = catalog.fit(eligible[0].instance, need)[1]
        return Sizing(eligible[0], tuple(eligible[1:]), reasons, profile, demand, need, memory)
    if not left_out:  # nothing fits the memory and the filters: the catalog says why
        catalog.choose(
            need, allowed=allowed, max_price=max_price, processors=processors_for(profile)
        )
    closest = min(left_out, key=lambda e: e.latency_ms)
    per = "token" if profile.kind == "generative" else "request"
    raise SizingError(
        f"no instance type serves {model} within a latency goal of "
        f"{demand.latency_goal_ms:g} ms per {per}: "
        + "; ".join(f"{name} {why}" for name, why in reasons)
        + f". The fastest is {closest.name} ({closest.latency_ms:.3g} ms). Raise "
        "sagemaker.endpoint.sizing's latency goal, allow more types "
        "(sagemaker.endpoint.allowed_instance_types, max_price_per_hour), or serve a smaller "
        "model"
    )


def demand_for(endpoint: EndpointSettings, alarms: AlarmSettings, generative: bool) -> Demand:
    """What the endpoint must serve, from ``sagemaker.endpoint.sizing`` and the alarms' bounds."""
    settings = endpoint.sizing
    if generative:
        goal = (
            settings.token_latency_goal_ms or alarms.latency_per_token_ms or DEFAULT_TOKEN_GOAL_MS
        )
    else:
        goal = settings.latency_goal_ms or alarms.max_latency_ms
    scaling = endpoint.scaling
    peak = settings.peak_requests_per_second
    return Demand(
        peak_rps=peak or DEFAULT_PEAK_RPS["generative" if generative else "classifier"],
        latency_goal_ms=goal,
        target_utilization=settings.target_utilization,
        min_count=max(endpoint.instance_count, scaling.min_instances if scaling.enabled else 1),
        max_count=scaling.max_instances if scaling.enabled else None,
    )


def profile_for(
    endpoint: EndpointSettings,
    gpu_speedup: float,
    parameters: int,
    *,
    generative_precision: str | None = None,
    efficiency: Mapping[str, Any] | None = None,
    tokens: int = 64,
) -> Profile:
    """What one request costs: a generative model's (served at ``generative_precision``) from its
    weights; a classifier's as the evaluation measured it (``efficiency``), else estimated from
    ``parameters`` and ``tokens`` per request."""
    if generative_precision is not None:
        return Profile.generative(
            parameters,
            generative_precision,
            answer_tokens=endpoint.sizing.answer_tokens,
            concurrency=endpoint.sizing.concurrency,
        )
    speedups = {
        "precision": endpoint.serving_precision,
        "gpu_speedup": gpu_speedup,
        "cpu_speedup": endpoint.sizing.cpu_speedup,
    }
    measured = Profile.measured(efficiency or {}, **speedups)
    if measured is not None:
        return measured
    return Profile.from_parameters(parameters, tokens, **speedups)
