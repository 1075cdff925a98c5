"""The seed's instance guidance (``seed-instance-guidance.yaml``, an AWS talk) against the catalog's
memory ranking: ``GUIDANCE`` holds each model of the guidance with the seed's pick and, where fmops
picks differently, why; ``differences()`` prints the comparison for the README.

The picks here are the catalog's by memory and price among GPU types (``Catalog.choose``), as the
training plan makes them. An endpoint's type is chosen by cost per 1,000 requests at its latency
goal (``fmops.sizing``), which this table does not show.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

from fmops.catalog import (
    Catalog,
    MemoryEstimate,
    Method,
    _count,
    hosting_memory,
    load_catalog,
    training_memory,
)


@dataclass(frozen=True)
class GuidanceCase:
    """A model from the seed guidance, the seed's pick, and where fmops differs and why."""

    model: str
    params: int
    task: Literal["hosting", "full fine-tune", "LoRA fine-tune"]
    precision: str
    sharded: bool
    seed: str  # the seed's words
    seed_picks: tuple[str, ...]  # instance types (fnmatch patterns) the seed's guidance names
    why: str

    def need(self) -> MemoryEstimate:
        if self.task == "hosting":
            return hosting_memory(self.params, self.precision, sharded=self.sharded)
        method: Method = "lora" if self.task == "LoRA fine-tune" else "full"
        return training_memory(self.params, method, precision=self.precision, sharded=self.sharded)

    def agrees(self, instance_type: str) -> bool:
        return any(fnmatch.fnmatchcase(instance_type, p) for p in self.seed_picks)


_SPEED = "this ranking is by price among types that fit, not by speed"
GUIDANCE: tuple[GuidanceCase, ...] = (
    GuidanceCase(
        "all-MiniLM-L6-v2", 22_713_728, "hosting", "fp32", False,
        "no size class below 3B: the cheapest GPU", ("ml.g4dn.xlarge",),
        "by memory among GPU types; the endpoint itself is sized by cost at its latency goal "
        "(fmops.sizing) and goes to a CPU type at moderate traffic",
    ),
    GuidanceCase(
        "FLAN-T5 XL", 2_849_757_184, "hosting", "bf16", False,
        "ml.g5.2xlarge", ("ml.g5.2xlarge",),
        "the same A10G with half the vCPUs and host memory (16 GiB), for less; bf16 because T5 "
        "overflows in fp16, which rules out the cheaper T4",
    ),
    GuidanceCase(
        "GPT-J 6B", 6_053_381_344, "hosting", "fp16", True,
        "ml.g5.12xlarge (3B-10B class: at least ml.g5.2xlarge)", ("ml.g5.12xlarge",),
        "at fp16 the weights and 20% headroom fit one 16 GiB T4; the seed's four A10Gs buy "
        f"latency, batch size and context length; {_SPEED}: at a goal of 50 ms a token "
        "fmops.sizing serves it on an A10G (ml.g5.xlarge), as a T4 decodes at about 76",
    ),
    GuidanceCase(
        "FLAN-T5 XXL", 11_135_332_352, "hosting", "bf16", True,
        "ml.g5.12xlarge", ("ml.g5.12xlarge",),
        "too big for one A10G with headroom; tensor parallel over four",
    ),
    GuidanceCase(
        "GPT-NeoX-20B", 20_554_567_680, "hosting", "fp16", True,
        "ml.g5.24xlarge (11B-20B class: at least ml.g5.12xlarge)", ("ml.g5.24xlarge",),
        f"at fp16 it fits four T4s (64 GiB), which are slower and lack bf16; {_SPEED}",
    ),
    GuidanceCase(
        "falcon-40b-instruct (bf16)", 40_000_000_000, "hosting", "bf16", True,
        "between the 11B-20B and 100B+ classes: ml.p4d.24xlarge or ml.p4de.24xlarge",
        ("ml.p4d.24xlarge", "ml.p4de.24xlarge"),
        "with headroom and reserve it misses four A10Gs (96 GiB) and fits eight (179 GiB) for "
        "about half a p4d's price; A10Gs have no NVLink, so tensor-parallel decoding is slower",
    ),
    GuidanceCase(
        "all-MiniLM-L6-v2", 22_713_728, "full fine-tune", "fp32", False,
        "G4dn (< 100M parameters)", ("ml.g4dn.*",), "",
    ),
    GuidanceCase(
        "BERT-base", 109_482_240, "full fine-tune", "fp32", False,
        "P3 (100M-300M parameters)", ("ml.p3.*",),
        f"fits one T4 with room to spare; a V100 trains faster at five times the price; {_SPEED}",
    ),
    GuidanceCase(
        "BERT-large", 335_141_888, "full fine-tune", "fp32", False,
        "P3dn or P4d (> 300M parameters; multi-node)", ("ml.p3dn.24xlarge", "ml.p4d.24xlarge"),
        "fits one T4; the seed's families are for multi-node training, which fmops does not run",
    ),
    GuidanceCase(
        "GPT-J 6B", 6_053_381_344, "LoRA fine-tune", "bf16", False,
        "P3dn or P4d (> 300M parameters)", ("ml.p3dn.24xlarge", "ml.p4d.24xlarge"),
        "LoRA freezes the base: bf16 weights, 1% trainable and activations fit one A10G",
    ),
    GuidanceCase(
        "GPT-J 6B", 6_053_381_344, "full fine-tune", "bf16", True,
        "P3dn or P4d (> 300M parameters)", ("ml.p3dn.24xlarge", "ml.p4d.24xlarge"),
        "sharded over eight A10Gs it fits for about half a p4d's price, over PCIe (no NVLink), "
        "so steps are slower; P3dn's V100s lack bf16",
    ),
)  # fmt: skip


def differences(catalog: Catalog | None = None) -> str:
    """A markdown table: the seed guidance against fmops' pick for every ``GUIDANCE`` case."""
    catalog = catalog or load_catalog()
    rows = [
        "| model | parameters | task | precision | seed guidance | fmops | agrees | why |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in GUIDANCE:
        choice = catalog.choose(case.need(), model=case.model)
        agrees = "yes" if case.agrees(choice.name) else "no"
        layout = ", sharded" if case.sharded else ""
        rows.append(
            f"| {case.model} | {_count(case.params)} | {case.task} | {case.precision}{layout} | "
            f"{case.seed} | {choice.name} ({choice.instance.price}) | {agrees} | "
            f"{case.why or '-'} |"
        )
    return "\n".join(rows)
