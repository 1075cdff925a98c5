"""The model kinds fmops fine-tunes, evaluates, registers and serves, registered by name.

A kind is one implementation of :class:`fmops.kinds.base.ModelKind`; the pipeline asks
``kind_of(config)`` and never branches on ``data.task`` itself (DESIGN.md section 10). The
registry is keyed by the config's ``data.task``: ``classification`` (a sentence encoder with a
classification head) and ``instruction`` (a causal LM tuned on instructions, evaluated on its
generations and served with the TGI contract).
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fmops.config import PipelineConfig
    from fmops.kinds.base import ModelKind

# data.task -> (module, class): imported on first use, so that the registry costs nothing at parse.
KINDS = {
    "classification": ("fmops.kinds.classification", "ClassificationKind"),
    "instruction": ("fmops.kinds.generation", "GenerationKind"),
}


@cache
def get_kind(task: str) -> ModelKind:
    """The kind for a ``data.task`` value; an unknown one lists the known ones."""
    if task not in KINDS:
        raise ValueError(
            f"data.task {task!r} is not a model kind fmops knows; known: {list(KINDS)}"
        )
    module, name = KINDS[task]
    return getattr(importlib.import_module(module), name)()


def kind_of(config: PipelineConfig) -> ModelKind:
    return get_kind(config.data.task)
