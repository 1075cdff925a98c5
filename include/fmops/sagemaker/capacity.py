"""Capacity fallback: when SageMaker has no capacity for the chosen instance type, train on the
next type of the catalog's ranking that fits the model.

The plan's instance choice carries its fallbacks: the other types that fit, cheapest first,
already within ``sagemaker.allowed_instance_types`` and ``max_price_per_hour``. Two signals move a
training job to the next one:

- CreateTrainingJob refused with ``ResourceLimitExceeded`` (the account's quota for that type);
- the job ended ``Failed`` with a ``FailureReason`` starting ``CapacityError`` (SageMaker could
  not provision the instances), which a new attempt (``-aN``) on the next type answers.

Each move is logged and recorded in the job's handle (``instance.tried``), so the outcome, and
with it the model card, says which types were tried and why.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from botocore.exceptions import ClientError

log = logging.getLogger(__name__)

QUOTA_CODES = {"ResourceLimitExceeded"}
CAPACITY_REASON = "CapacityError"


def is_quota_error(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in QUOTA_CODES


def is_capacity_failure(description: dict[str, Any]) -> bool:
    reason = description.get("FailureReason") or ""
    return reason.startswith(CAPACITY_REASON) or "InsufficientInstanceCapacity" in reason


def next_type(plan: dict[str, Any], why: str) -> dict[str, Any] | None:
    """The plan moved to its next fallback instance type, or None when none is left."""
    from fmops.catalog import load_catalog
    from fmops.sagemaker import options

    instance = plan.get("instance") or {}
    fallbacks = list(instance.get("fallbacks") or [])
    if plan.get("kind") != "training" or not fallbacks:
        return None
    current, following = instance["instance_type"], fallbacks[0]
    moved = copy.deepcopy(plan)
    resources = moved["request"]["ResourceConfig"]
    resources["InstanceType"] = following
    region = (plan.get("settings") or {}).get("region_name") or "us-east-1"
    catalog = load_catalog(region)
    if options.has_nvme(following, catalog):
        resources.pop("VolumeKmsKeyId", None)  # the API refuses it on local-NVMe types
    chosen = catalog.get(following)
    moved["instance"] = {
        **instance,
        "instance_type": following,
        "fallbacks": fallbacks[1:],
        "tried": [*instance.get("tried", []), {"instance_type": current, "why": why}],
    }
    if moved.get("cost"):
        moved["cost"] = {
            **moved["cost"],
            "instance_type": following,
            "usd_per_hour": chosen.price_per_hour,
            "price_source": chosen.price_source,
        }
    log.warning(
        "%s: no capacity for %s (%s): falling back to %s, the next type that fits (%s left)",
        plan["candidate"],
        current,
        why,
        following,
        len(fallbacks) - 1,
    )
    return moved
