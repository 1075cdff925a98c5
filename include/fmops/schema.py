"""The base of every config model (unknown keys are errors and a loaded config is immutable),
and the name and instance-type patterns that several settings blocks share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Shared by the pipeline config and the targets' settings blocks.
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
NAME_RULE = "lower-case letters, digits and inner hyphens, at most 32 characters"
AUTO = "auto"
INSTANCE_TYPE_PATTERN = r"^(auto|ml\.[a-z0-9]+\.[a-z0-9]+)$"
