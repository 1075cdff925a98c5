"""The instance catalog: which SageMaker instance a model needs, and the cheapest that fits.

Facts per instance type: GPU count and total GPU memory from the sagemaker SDK's
``sagemaker/core/image_uri_config/instance_gpu_info.json`` (read as a file: importing ``sagemaker``
creates AWS clients and needs a region), and from ``catalog_data.yaml`` next to this module the GPU
model, bf16 support and memory bandwidth, the NVMe flag (SageMaker rejects ``VolumeKmsKeyId`` on
types with local NVMe storage), whether endpoints may use the type, and an on-demand price with its
source. The same file lists CPU types (vCPUs, memory) for endpoints: ``fit`` holds them to host
memory, they never train, and ``rank``/``choose`` consider them only when asked
(``processors=("cpu", "gpu")``: ``fmops.sizing``, which ranks by cost at a latency goal).

Choosing: ``training_memory()`` or ``hosting_memory()`` estimates the GPU memory a model needs;
``Catalog.rank()`` lists every type that fits, cheapest first, each with the arithmetic as its
reason (the order capacity fallback walks, within an allowed list and a price ceiling);
``Catalog.choose()`` takes the first and logs why; ``Catalog.check_pinned()`` refuses a pinned
type that cannot hold the model, with the arithmetic in the message.

Memory arithmetic (GiB = 2**30 bytes; N parameters, T of them trainable):

- Hosting: weights N x bytes at the serving precision (fp32 4, fp16/bf16 2, int8 1), plus 20% of
  the weights for activations and the KV cache (the common "x 1.2" serving rule; for GPT-J at
  fp16 that is about 5,000 tokens in flight at 448 KiB each).
- Full fine-tuning with AdamW: fp32 (what fmops' ``train.py`` does) holds weights 4 + gradients 4
  + AdamW moments 8 = 16 B per parameter; mixed precision (bf16/fp16, as the Hugging Face Trainer
  does it) holds fp32 weights and a half-precision copy 6 + fp32 gradients 4 + moments 8 = 18 B
  (Hugging Face's "model training anatomy").
- LoRA: the frozen base at the training precision (4 B fp32, 2 B bf16/fp16) + T x 16 or 18 B for
  the adapters' weights, gradients and moments; T defaults to 1% of N, which covers rank <= 16 on
  the attention and MLP projections of common transformers (pass peft's count when known).
- Training activations: 50% of the weights at the compute precision. Activations depend on batch
  size and sequence length, which the catalog does not know; half the weights covers moderate
  batches with gradient checkpointing, or small ones without. Same allowance for full and LoRA:
  the frozen layers' activations are kept for the backward pass either way.
- Plus a runtime reserve of 2 GiB per GPU: the CUDA context and kernels (about 0.5 GiB) and the
  gap between the nominal memory the SDK lists and what the driver exposes (an A10G is listed at
  24 GiB and exposes about 22.5).

Layout: unsharded (the default) means every GPU holds the whole estimate: one device, or data-
parallel replicas (DDP), as fmops' ``train.py`` and ``inference.py`` run. Sharded means the
estimate is spread over all GPUs of one instance: tensor parallel for hosting (SageMaker's
large-model-inference containers), FSDP or DeepSpeed ZeRO-3 for training. Either way a model must
fit on one instance; multi-node jobs are out of scope. bf16 needs an Ampere or newer GPU (A10G,
A100, H100), which rules out T4 (g4dn) and V100 (p3, p3dn).

CPU types (hosting only): the weights at the serving precision with the same 20% headroom, plus a
1 GiB reserve for the OS and the inference server, in the instance's memory; fp16 is refused (CPUs
do not compute in it: serve at fp32, bf16 or int8).

Memory and price alone rank the GPU types (``fmops.catalog_guidance`` compares those picks with
the seed guidance, and says where and why fmops picks differently). Which type serves a model at
its latency goal for the least is ``fmops.sizing``'s.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import logging
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

log = logging.getLogger(__name__)

GIB = 2**30
MIB = 2**20
DEFAULT_REGION = "us-east-1"
PRICE_REGION = "us-east-1"  # the region every shipped price is for

BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")
HOSTING_PRECISIONS = tuple(BYTES_PER_PARAM)
HOSTING_HEADROOM = 0.20  # of the weights: activations and KV cache
TRAINING_ACTIVATIONS = 0.50  # of the weights at the compute precision
RUNTIME_RESERVE_GIB = 2.0  # per GPU: CUDA context, nominal-vs-usable memory
CPU_RESERVE_GIB = 1.0  # per CPU instance: the OS and the inference server
GPU_ONLY = ("gpu",)
ADAMW_BYTES = 8  # two fp32 moments per trainable parameter
LORA_DEFAULT_TRAINABLE_FRACTION = 0.01

SDK_GPU_INFO = ("core", "image_uri_config", "instance_gpu_info.json")
DATA_FILE = "catalog_data.yaml"
OVERRIDE_SOURCE = "given to load_catalog(prices=...)"
SDK_MISSING = (
    "the sagemaker SDK's instance_gpu_info.json was not found; install the locked requirements "
    "(pip install -r requirements.txt), which include the sagemaker SDK"
)
SHARD_HINT = (
    "shard it over an instance's GPUs (sharded=True: tensor parallel for hosting, FSDP or "
    "DeepSpeed ZeRO-3 for training)"
)

Purpose = Literal["training", "hosting"]
Method = Literal["full", "lora"]


class CatalogError(ValueError):
    """An unknown instance type, a model that fits nowhere, or a pinned type that is too small."""


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    gpus: int
    gpu_memory_gib: float  # all GPUs together
    gpu: str
    bf16: bool
    nvme: bool  # local NVMe instance store: no VolumeKmsKeyId
    hosting: bool  # offered for real-time endpoints
    price_per_hour: float | None  # on-demand USD
    price_source: str | None
    gpu_info_source: str
    vcpus: int | None = None  # CPU types: vCPUs (two per physical core)
    memory_gib: float | None = None  # CPU types: host memory
    bandwidth_gbs: float | None = None  # GPU types: one GPU's memory bandwidth, GB/s

    @property
    def processor(self) -> str:
        return "gpu" if self.gpus else "cpu"

    @property
    def gib_per_gpu(self) -> float:
        return self.gpu_memory_gib / self.gpus if self.gpus else 0.0

    @property
    def price(self) -> str:
        return "no known price" if self.price_per_hour is None else f"${self.price_per_hour:.2f}/h"

    def describe(self) -> str:
        if not self.gpus:
            return f"{self.name} ({self.vcpus} vCPUs, {self.memory_gib:g} GiB, {self.price})"
        return f"{self.name} ({self.gpus} x {self.gpu}, {self.gpu_memory_gib:g} GiB, {self.price})"


@dataclass(frozen=True)
class MemoryEstimate:
    """The GPU memory a model needs, as labelled parts in GiB, before the per-GPU reserve."""

    purpose: Purpose
    params: int
    precision: str
    sharded: bool
    parts: tuple[tuple[str, float], ...]
    method: Method | None = None
    trainable_params: int | None = None

    @property
    def gib(self) -> float:
        return sum(gib for _, gib in self.parts)

    def per_gpu_gib(self, gpus: int) -> float:
        """What each GPU of an instance with ``gpus`` GPUs must hold, runtime reserve included."""
        share = self.gib / gpus if self.sharded else self.gib
        return share + RUNTIME_RESERVE_GIB

    def summary(self) -> str:
        size = _count(self.params)
        if self.purpose == "hosting":
            return f"hosting {size} parameters at {self.precision}"
        if self.method == "lora":
            trainable = _count(self.trainable_params or 0)
            return f"LoRA fine-tuning {size} parameters ({trainable} trainable) at {self.precision}"
        return f"full fine-tuning {size} parameters at {self.precision}"

    def explain(self, processor: str = "gpu") -> str:
        parts = " + ".join(f"{label} {_gib(gib)} GiB" for label, gib in self.parts)
        if processor == "cpu":
            return (
                f"{self.summary()}: {parts} = {_gib(self.gib)} GiB in the instance's memory, "
                f"plus a {CPU_RESERVE_GIB:g} GiB reserve"
            )
        if self.sharded:
            how = "tensor parallel" if self.purpose == "hosting" else "FSDP or DeepSpeed ZeRO-3"
            layout = f"sharded over the instance's GPUs ({how})"
        else:
            layout = "held whole by every GPU"
        return (
            f"{self.summary()}: {parts} = {_gib(self.gib)} GiB, {layout}, "
            f"plus a {RUNTIME_RESERVE_GIB:g} GiB runtime reserve per GPU"
        )


@dataclass(frozen=True)
class Choice:
    """An instance type that fits, why, and (from ``choose``) the fallbacks in order."""

    instance: InstanceType
    need: MemoryEstimate
    reason: str
    fallbacks: tuple[str, ...] = ()
    pinned: bool = False

    @property
    def name(self) -> str:
        return self.instance.name

    def explain(self) -> str:
        how = "pinned" if self.pinned else "the cheapest that fits"
        text = f"{self.name}, {how}: {self.reason}. Need: {self.need.explain()}"
        if self.fallbacks:
            text += f". Fallbacks if it has no capacity: {', '.join(self.fallbacks)}"
        return text

    def as_record(self) -> dict[str, Any]:
        """Plain values for the model card and run tags."""
        return {
            "instance_type": self.name,
            "pinned": self.pinned,
            "processor": self.instance.processor,
            "vcpus": self.instance.vcpus,
            "gpus": self.instance.gpus,
            "gpu": self.instance.gpu,
            "gpu_memory_gib": self.instance.gpu_memory_gib,
            "price_per_hour": self.instance.price_per_hour,
            "price_source": self.instance.price_source,
            "nvme": self.instance.nvme,
            "memory_needed_gib": round(self.need.gib, 2),
            "memory_needed_per_gpu_gib": round(self.need.per_gpu_gib(self.instance.gpus), 2),
            "reason": self.reason,
            "estimate": self.need.explain(),
            "fallbacks": list(self.fallbacks),
        }


def _gib(x: float) -> str:
    return f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def _count(n: int) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _check_params(params: int, name: str = "params") -> None:
    if isinstance(params, bool) or not isinstance(params, int) or params <= 0:
        raise CatalogError(
            f"{name} must be a positive whole number of parameters, got {params!r}; "
            "count them with count_parameters() or estimate_parameters()"
        )


def _check_precision(precision: str, allowed: Sequence[str], purpose: str) -> None:
    if precision not in allowed:
        raise CatalogError(
            f"precision {precision!r} is not a {purpose} precision; allowed: {', '.join(allowed)}"
        )


def hosting_memory(
    params: int, precision: str = "fp16", *, sharded: bool = False
) -> MemoryEstimate:
    """The GPU memory to serve a model of ``params`` parameters at ``precision``."""
    _check_params(params)
    _check_precision(precision, HOSTING_PRECISIONS, "hosting")
    size = BYTES_PER_PARAM[precision]
    weights = params * size / GIB
    parts = (
        (f"weights ({_count(params)} x {size} B)", weights),
        (
            f"activations and KV cache ({HOSTING_HEADROOM:.0%} of the weights)",
            weights * HOSTING_HEADROOM,
        ),
    )
    return MemoryEstimate("hosting", params, precision, sharded, parts)


def training_memory(
    params: int,
    method: Method = "full",
    *,
    precision: str = "fp32",
    trainable_params: int | None = None,
    sharded: bool = False,
) -> MemoryEstimate:
    """The GPU memory to fine-tune a model with AdamW; the defaults are what ``train.py`` does.

    ``precision`` fp32 trains in full precision; bf16 and fp16 mean mixed precision (fp32 master
    weights). ``trainable_params`` applies to LoRA only (default: 1% of ``params``).
    """
    _check_params(params)
    _check_precision(precision, TRAINING_PRECISIONS, "training")
    if method not in ("full", "lora"):
        raise CatalogError(f"method {method!r} is unknown; allowed: full, lora")
    mixed = precision != "fp32"
    compute = BYTES_PER_PARAM[precision]
    state = 18 if mixed else 16  # per trainable parameter: weights, gradients, AdamW moments
    n = _count(params)
    if method == "full":
        if trainable_params is not None and trainable_params != params:
            raise CatalogError(
                f"trainable_params ({trainable_params}) applies to method lora; full "
                f"fine-tuning trains all {params} parameters: drop trainable_params"
            )
        trainable_params = params
        weights = (
            ((f"weights, fp32 and {precision} copies ({n} x 6 B)", params * 6 / GIB),)
            if mixed
            else ((f"weights ({n} x 4 B)", params * 4 / GIB),)
        )
        parts = (
            *weights,
            (f"gradients ({n} x 4 B)", params * 4 / GIB),
            (f"AdamW moments ({n} x {ADAMW_BYTES} B)", params * ADAMW_BYTES / GIB),
        )
    else:
        if trainable_params is None:
            trainable_params = max(1, round(params * LORA_DEFAULT_TRAINABLE_FRACTION))
        _check_params(trainable_params, "trainable_params")
        if trainable_params > params:
            raise CatalogError(
                f"trainable_params ({trainable_params}) exceeds params ({params}); "
                "LoRA adapters are a small fraction of the model"
            )
        t = _count(trainable_params)
        parts = (
            (f"frozen weights ({n} x {compute} B)", params * compute / GIB),
            (
                f"adapters with gradients and moments ({t} x {state} B)",
                trainable_params * state / GIB,
            ),
        )
    activations = params * compute * TRAINING_ACTIVATIONS / GIB
    parts = (
        *parts,
        (f"activations ({TRAINING_ACTIVATIONS:.0%} of {n} x {compute} B)", activations),
    )
    return MemoryEstimate("training", params, precision, sharded, parts, method, trainable_params)


class Catalog:
    """The instance types fmops may use in one region, with their GPUs, flags and prices."""

    def __init__(
        self,
        instances: Mapping[str, InstanceType],
        region: str = DEFAULT_REGION,
        excluded: Mapping[str, str] | None = None,
    ):
        self.instances = dict(instances)
        self.region = region
        self.excluded = dict(excluded or {})  # instance type -> why fmops never offers it

    def __iter__(self) -> Iterator[InstanceType]:
        return iter(self.instances.values())

    def __len__(self) -> int:
        return len(self.instances)

    def __contains__(self, name: object) -> bool:
        return name in self.instances

    def names(self) -> list[str]:
        return sorted(self.instances)

    def get(self, name: str) -> InstanceType:
        if name in self.instances:
            return self.instances[name]
        if name in self.excluded:
            raise CatalogError(f"instance type {name!r} is not offered: {self.excluded[name]}")
        raise CatalogError(_unknown(name, self.names(), self.region))

    def fit(self, instance: InstanceType | str, need: MemoryEstimate) -> tuple[bool, str]:
        """Whether ``need`` fits ``instance``, and the arithmetic that says so."""
        inst = self.get(instance) if isinstance(instance, str) else instance
        unable = _unable(inst, need)
        if unable:
            return False, unable
        if not inst.gpus:
            held = need.gib + CPU_RESERVE_GIB
            arithmetic = (
                f"{_gib(need.gib)} GiB + {CPU_RESERVE_GIB:g} GiB reserve = {_gib(held)} GiB in "
                f"{inst.memory_gib:g} GiB of memory ({inst.vcpus} vCPUs)"
            )
            if held > (inst.memory_gib or 0):
                return False, f"{inst.name} is too small: {arithmetic}"
            return True, f"{arithmetic}, {_gib(inst.memory_gib - held)} GiB to spare; {inst.price}"
        per_gpu, have = need.per_gpu_gib(inst.gpus), inst.gib_per_gpu
        if need.sharded and inst.gpus > 1:
            sums = (
                f"{_gib(need.gib)} GiB over {inst.gpus} GPUs + {RUNTIME_RESERVE_GIB:g} GiB "
                f"reserve = {_gib(per_gpu)} GiB per GPU"
            )
        else:
            sums = (
                f"{_gib(need.gib)} GiB + {RUNTIME_RESERVE_GIB:g} GiB reserve = {_gib(per_gpu)} GiB"
            )
        where = "one" if inst.gpus == 1 else f"each of {inst.gpus} x"
        arithmetic = f"{sums} on {where} {inst.gpu} of {have:.3g} GiB"
        if per_gpu > have:
            return False, f"{inst.name} is too small: {arithmetic}"
        return True, f"{arithmetic}, {_gib(have - per_gpu)} GiB to spare; {inst.price}"

    def rank(
        self,
        need: MemoryEstimate,
        *,
        allowed: Sequence[str] | None = None,
        max_price: float | None = None,
        processors: Sequence[str] = GPU_ONLY,
    ) -> list[Choice]:
        """Every priced type that fits, cheapest first (then fewer GPUs, then more memory), of
        the ``processors`` asked for (GPU types unless told)."""
        candidates = [i for i in self._filtered(allowed, max_price) if i.processor in processors]
        choices = []
        for inst in candidates:
            fits, reason = self.fit(inst, need)
            if fits and inst.price_per_hour is not None:
                choices.append(Choice(inst, need, reason))
        choices.sort(
            key=lambda c: (
                c.instance.price_per_hour,
                c.instance.gpus,
                -c.instance.gpu_memory_gib,
                c.name,
            )
        )
        return choices

    def choose(
        self,
        need: MemoryEstimate,
        *,
        allowed: Sequence[str] | None = None,
        max_price: float | None = None,
        model: str = "the model",
        processors: Sequence[str] = GPU_ONLY,
    ) -> Choice:
        """The cheapest type that fits, with the rest of the ranking as fallbacks; logs why."""
        ranked = self.rank(need, allowed=allowed, max_price=max_price, processors=processors)
        if not ranked:
            raise CatalogError(self._nothing_fits(need, allowed, max_price))
        first = ranked[0]
        choice = Choice(first.instance, need, first.reason, tuple(c.name for c in ranked[1:]))
        log.info("instance type for %s: %s", model, choice.explain())
        return choice

    def check_pinned(self, name: str, need: MemoryEstimate, *, model: str = "the model") -> Choice:
        """Accept a type the config pins if ``need`` fits it; refuse it with the arithmetic."""
        inst = self.get(name)
        fits, reason = self.fit(inst, need)
        if not fits:
            ranked = self.rank(need)
            hint = (
                f"the cheapest type that fits is {ranked[0].instance.describe()}"
                if ranked
                else "no type in the catalog fits it"
            )
            raise CatalogError(
                f"pinned instance type {name} cannot hold {model}: {reason}. "
                f"Need: {need.explain()}. Pin a type that fits, or remove the pin ({hint})"
            )
        choice = Choice(inst, need, reason, pinned=True)
        log.info("instance type for %s: %s", model, choice.explain())
        return choice

    def _filtered(
        self, allowed: Sequence[str] | None, max_price: float | None
    ) -> list[InstanceType]:
        if max_price is not None and not max_price > 0:
            raise CatalogError(f"max_price must be a positive USD per hour, got {max_price!r}")
        if allowed is not None:
            if isinstance(allowed, str):
                raise CatalogError(f"allowed must be a list of instance types, got {allowed!r}")
            for name in allowed:
                self.get(name)  # an unknown or excluded name is an error, not an empty list
        return [
            inst
            for inst in self.instances.values()
            if (allowed is None or inst.name in allowed)
            and (max_price is None or (inst.price_per_hour or math.inf) <= max_price)
        ]

    def _nothing_fits(
        self, need: MemoryEstimate, allowed: Sequence[str] | None, max_price: float | None
    ) -> str:
        lines = [f"no instance type fits {need.explain()}"]
        usable = [
            inst
            for inst in self.instances.values()
            if inst.price_per_hour is not None and self.fit(inst, need)[0]
        ]
        if usable and (allowed is not None or max_price is not None):
            names = ", ".join(f"{i.name} ({i.price})" for i in sorted(usable, key=_by_price)[:3])
            lines.append(
                f"The filters allowed={list(allowed) if allowed is not None else 'any'} and "
                f"max_price={max_price} leave out every type that fits, such as {names}; widen them"
            )
        else:

            def room(inst: InstanceType) -> float:
                return inst.gpu_memory_gib if need.sharded else inst.gib_per_gpu

            # the largest of the GPU types that could run it at all (bf16, endpoints)
            gpus = [i for i in self.instances.values() if i.gpus]
            able = [i for i in gpus if not _unable(i, need)]
            biggest = max(able or gpus, key=room)
            lines.append(f"The largest: {self.fit(biggest, need)[1]}")
            hints = []
            if not need.sharded:
                hints.append(SHARD_HINT)
            if need.purpose == "training" and need.method == "full":
                hints.append("fine-tune with method lora")
            if need.precision == "fp32":
                hints.append("use bf16 or fp16")
            if hints:
                lines.append("To fit: " + "; or ".join(hints))
        return ". ".join(lines)


def _unable(inst: InstanceType, need: MemoryEstimate) -> str | None:
    """Why ``inst`` cannot run ``need`` whatever its memory, or None."""
    if not inst.gpus:
        if need.purpose == "training":
            return f"{inst.name} is a CPU type: fmops trains on GPU types only"
        if need.precision == "fp16":
            return (
                f"{inst.name} is a CPU type, and CPUs do not compute in fp16: serve at fp32, bf16 "
                "or int8, or use a GPU type"
            )
        return None
    if need.purpose == "hosting" and not inst.hosting:
        return f"{inst.name} is offered for training jobs only, not for endpoints"
    if need.precision == "bf16" and not inst.bf16:
        return (
            f"{inst.name}'s {inst.gpu} has no bf16 support: serve or train at fp16, or use "
            "an Ampere or newer GPU (g5, p4d, p4de, p5)"
        )
    return None


def _by_price(inst: InstanceType) -> tuple[float, str]:
    return (inst.price_per_hour or math.inf, inst.name)


def _unknown(name: str, names: list[str], region: str) -> str:
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if not near and not name.startswith("ml."):
        near = difflib.get_close_matches(f"ml.{name}", names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(near)}?" if near else f"known types: {', '.join(names)}"
    return f"unknown instance type {name!r} in the catalog for {region}; {hint}"


def sdk_gpu_info_path() -> Path:
    """The SDK's instance_gpu_info.json, found without importing ``sagemaker``."""
    # find_spec on a top-level name does not import it; on "sagemaker.core" it would run
    # sagemaker/__init__.py first.
    spec = importlib.util.find_spec("sagemaker")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location).joinpath(*SDK_GPU_INFO)
        if path.is_file():
            return path
    raise CatalogError(SDK_MISSING)


@lru_cache(maxsize=1)
def _sdk_gpu_info() -> dict[str, dict[str, dict[str, int]]]:
    return json.loads(sdk_gpu_info_path().read_text())


@lru_cache(maxsize=1)
def _catalog_data() -> dict[str, Any]:
    return yaml.safe_load(resources.files("fmops").joinpath(DATA_FILE).read_text())


def load_catalog(
    region: str = DEFAULT_REGION, prices: Mapping[str, float] | None = None
) -> Catalog:
    """The catalog for ``region``; ``prices`` (USD per hour by type) override the shipped ones."""
    sdk, data = _sdk_gpu_info(), _catalog_data()
    if region not in sdk:
        raise CatalogError(
            f"region {region!r} is not in the SDK's instance_gpu_info.json; "
            f"regions: {', '.join(sorted(sdk))}"
        )
    sources, families = data["sources"], data["families"]
    gpu_info = {
        name: (
            info["Count"],
            info["TotalGpuMemoryInMiB"],
            f"sagemaker SDK instance_gpu_info.json ({region})",
        )
        for name, info in sdk[region].items()
    }
    for name, extra in data["gpu_info"].items():
        gpu_info.setdefault(name, (extra["gpus"], extra["gpu_memory_mib"], extra["source"]))
    shipped = {
        name: (p["usd_per_hour"], sources[p["source"]]) for name, p in data["prices"].items()
    }
    if region != PRICE_REGION:
        log.warning(
            "the shipped prices are %s figures; %s prices differ: pass prices=... to rank by them",
            PRICE_REGION,
            region,
        )
        shipped = {
            name: (usd, f"{source} (a {PRICE_REGION} figure; {region} differs)")
            for name, (usd, source) in shipped.items()
        }

    instances, excluded, skipped = {}, {}, []
    for name, (gpus, mib, gpu_source) in sorted(gpu_info.items()):
        family = name.split(".")[1]
        if family in data["excluded_families"]:
            excluded[name] = data["excluded_families"][family]
            continue
        if family not in families:
            skipped.append(name)
            continue
        facts = families[family]
        usd, source = shipped.get(name, (None, None))
        instances[name] = InstanceType(
            name=name,
            family=family,
            gpus=gpus,
            gpu_memory_gib=mib * MIB / GIB,
            gpu=facts["gpu"],
            bf16=facts["bf16"],
            nvme=facts["nvme"],
            hosting=name not in data["training_only"],
            price_per_hour=usd,
            price_source=source,
            gpu_info_source=gpu_source,
            bandwidth_gbs=facts["bandwidth_gbs"],
        )
    for name, facts in data["cpu_types"].items():
        usd, source = shipped.get(name, (None, None))
        instances[name] = InstanceType(
            name=name,
            family=name.split(".")[1],
            gpus=0,
            gpu_memory_gib=0.0,
            gpu="none",
            bf16=True,  # PyTorch computes bf16 on any x86 CPU (fast with AMX: c7i)
            nvme=False,
            hosting=True,
            price_per_hour=usd,
            price_source=source,
            gpu_info_source=f"{DATA_FILE} (a CPU type)",
            vcpus=facts["vcpus"],
            memory_gib=float(facts["memory_gib"]),
        )
    if skipped:
        # A newer SDK may list families catalog_data.yaml does not describe yet; their bf16 and
        # NVMe facts are unknown, so they are left out rather than guessed.
        log.warning(
            "instance types without family facts in %s are left out: %s", DATA_FILE, skipped
        )
    catalog = Catalog(instances, region, excluded)
    for name, usd in (prices or {}).items():
        inst = catalog.get(name)
        if isinstance(usd, bool) or not isinstance(usd, int | float) or not 0 < usd < math.inf:
            raise CatalogError(f"prices[{name!r}] must be a positive USD per hour, got {usd!r}")
        catalog.instances[name] = replace(
            inst, price_per_hour=float(usd), price_source=OVERRIDE_SOURCE
        )
    return catalog


def count_parameters(path: str | Path) -> int:
    """The exact parameter count of safetensors weights, read from the file headers only."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise CatalogError(
            f"no .safetensors files at {path}; pass the parameter count, or estimate it from "
            "the model's config.json with estimate_parameters()"
        )
    total = 0
    for file in files:
        with file.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * MIB:
                raise CatalogError(f"{file} does not look like safetensors (header {size} bytes)")
            header = json.loads(f.read(size))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


_GATED_MLP_TYPES = {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"}


def _first(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise CatalogError(
            f"config.json has none of {', '.join(keys)}; pass the parameter count instead"
        )
    return default


def estimate_parameters(config: Mapping[str, Any]) -> int:
    """Approximate parameters from a Hugging Face config.json, without downloading weights.

    Counts embeddings, attention (grouped-query aware), MLP (gated or not) and an untied output
    head for encoders, decoders and T5-style encoder-decoders; biases and norms are left out
    (well under 1%). Mixture-of-experts and other exotic layouts are not handled: give the count.
    """
    if config.get("num_local_experts") or config.get("num_experts"):
        raise CatalogError("mixture-of-experts configs are not estimated; pass the parameter count")
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head", "num_heads")
    head_dim = _first(config, "d_kv", "head_dim", default=hidden // heads)
    kv_heads = 1 if config.get("multi_query") else heads
    kv_heads = _first(config, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=kv_heads)
    inner = _first(config, "intermediate_size", "n_inner", "d_ff", "ffn_dim", default=4 * hidden)
    vocab = _first(config, "vocab_size")
    gated = str(config.get("feed_forward_proj", "")).startswith("gated") or (
        config.get("model_type") in _GATED_MLP_TYPES
    )
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = (3 if gated else 2) * hidden * inner
    total = layers * (attention + mlp)
    if config.get("is_encoder_decoder"):
        decoder_layers = config.get("num_decoder_layers") or layers
        total += decoder_layers * (2 * attention + mlp)  # self- and cross-attention
    total += vocab * hidden
    if config.get("tie_word_embeddings") is False:
        total += vocab * hidden
    if config.get("position_embedding_type") == "absolute" or config.get("model_type") == "gpt2":
        total += _first(config, "max_position_embeddings", "n_positions", default=0) * hidden
    total += config.get("type_vocab_size", 0) * hidden
    return int(total)
