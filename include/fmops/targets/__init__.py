"""Where jobs and endpoints run: the ``Target`` registry.

A target is everything that differs between running on this machine (``local``) and on AWS
(``sagemaker``): planning a training or evaluation job, staging its inputs, the job backend,
where a model artifact lives, and the deployer of an endpoint. The contract is written once, in
``fmops.targets.base.Target``; each implementation is a module of this package, registered here
by name and imported only when it is first asked for (as ``fmops.jobs.backend.BACKENDS`` does
for the job backends). A target's own settings block in the pipeline config (``sagemaker:``) is
defined beside its code and named here, so that ``fmops.config`` need not know it.

Nothing outside this package branches on a target's name: code asks ``get_target(name)``.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fmops.config import PipelineConfig
    from fmops.targets.base import Target

TARGETS = {
    "local": "fmops.targets.local:LocalTarget",
    "sagemaker": "fmops.targets.sagemaker:SageMakerTarget",
}
NAMES = tuple(TARGETS)
# A deployment's wait names its target; one deferred by an fmops that did not is SageMaker's, the
# only deployer that waits in the triggerer.
LEGACY_WAIT_TARGET = "sagemaker"
# Settings blocks of the pipeline config that belong to a target: block -> its pydantic model.
SETTINGS_MODELS = {"sagemaker": "fmops.sagemaker.settings:SageMakerSettings"}


def _load(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


@cache
def get_target(name: str) -> Target:
    """The target called ``name``; an unknown name lists the known ones."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; targets: {', '.join(NAMES)}")
    return _load(TARGETS[name])()


def settings_model(block: str) -> Any:
    """The pydantic model of a target's settings block in the pipeline config."""
    return _load(SETTINGS_MODELS[block])


def config_problems(config: PipelineConfig) -> list[str]:
    """What the targets find wrong with a config whose shapes are valid, one line each: each
    target checks its own settings block, and the chosen target what it needs to run."""
    return [problem for name in NAMES for problem in get_target(name).config_problems(config)]
