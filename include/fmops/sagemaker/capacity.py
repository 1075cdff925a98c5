"""Capacity fallback: when SageMaker has no capacity for the chosen instance type, train or
serve on the next type of the catalog's ranking that fits the model.

The plan's instance choice carries its fallbacks: the other types that fit, cheapest first,
already within ``sagemaker.allowed_instance_types`` (``sagemaker.endpoint.allowed_instance_types``
for endpoints) and the price ceiling. A pinned type has none: no fallback, the failure stands.

Training jobs move to the next type on two signals:

- CreateTrainingJob refused with ``ResourceLimitExceeded`` (the account's quota for that type);
- the job ended ``Failed`` with a ``FailureReason`` starting ``CapacityError`` (SageMaker could
  not provision the instances), which a new attempt (``-aN``) on the next type answers.

Endpoints (``endpoint_plan.next_instance``, ``endpoint_deploy.fall_back``) on these:

- CreateEndpoint or UpdateEndpoint refused with ``ResourceLimitExceeded`` naming the instance
  type (``is_type_quota_error``; a limit on something else, such as the number of endpoints, is
  not the type's and stays an error);
- a new endpoint ``Failed``, or a blue/green update rolled back to the old fleet, with a
  ``FailureReason`` that says SageMaker could not provision the instances
  (``is_hosting_capacity_failure``: "Unable to provision requested ML compute capacity. Please
  retry using a different ML instance type.").

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
# How SageMaker words a lack of instances in a FailureReason (endpoints say the first; EC2's
# error code shows through in some).
HOSTING_CAPACITY_MARKERS = (
    "unable to provision requested ml compute capacity",
    "insufficientinstancecapacity",
    "insufficient capacity",
)


def is_quota_error(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in QUOTA_CODES


def is_capacity_failure(description: dict[str, Any]) -> bool:
    reason = description.get("FailureReason") or ""
    return reason.startswith(CAPACITY_REASON) or "InsufficientInstanceCapacity" in reason


def is_type_quota_error(err: ClientError, instance_type: str) -> bool:
    """``ResourceLimitExceeded`` for ``instance_type`` itself: the message names the type (as in
    "The account-level service limit 'ml.g5.xlarge for endpoint usage' is 0 Instances")."""
    message = err.response.get("Error", {}).get("Message") or ""
    return is_quota_error(err) and instance_type in message


def is_hosting_capacity_failure(reason: str | None) -> bool:
    """Whether an endpoint's ``FailureReason`` says SageMaker had no instances of the type."""
    text = (reason or "").lower()
    return text.startswith(CAPACITY_REASON.lower()) or any(
        marker in text for marker in HOSTING_CAPACITY_MARKERS
    )


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
