"""SageMaker real-time endpoints, the wait: the clients, DescribeEndpoint, and the judgement of
each answer while a deployment (or the deletion of a failed endpoint) runs.

``DeploymentWatch`` judges one DescribeEndpoint answer at a time and calls and sleeps nothing, so
that the blocking wait (``watch_deployment``) and the deferred one (the triggerer's
``fmops.airflow.operators.EndpointTrigger``) decide alike. Success only when the endpoint is
``InService`` on the NEW endpoint config: SageMaker's automatic rollback also ends ``InService``,
on the old config; treating that as success is a known bug of other tools, here it is a failure
(``Verdict.error``: a ``DeploymentFailedError``). ``capacity_failure`` tells a failure for want of
instances of the type (``fmops.sagemaker.capacity``: the deployment falls back to the next type)
from the deployment's own; ``deletion_verdict`` and ``watch_deletion`` wait until a failed
endpoint is gone.

The clients come from the Airflow AWS connection (``client``, ``clients``: the amazon provider's
hook, botocore's adaptive retries); ``find_endpoint`` is DescribeEndpoint, None once the
endpoint is gone.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from botocore.exceptions import ClientError

from fmops.sagemaker import capacity

log = logging.getLogger(__name__)

# -- constants and errors --------------------------------------------------------------------------


# EndpointStatus values (botocore's enum) and what they mean for a wait.
IN_PROGRESS = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})
BROKEN = frozenset({"Failed", "UpdateRollbackFailed", "OutOfService", "Deleting"})
# Right after UpdateEndpoint a read may still show the old config InService (DescribeEndpoint is
# eventually consistent); only after this many such reads, with no update seen, is it a failure.
SETTLE_POLLS = 3


class DeploymentFailedError(RuntimeError):
    """A deployment ran and did not end InService on the new endpoint config: it failed, was
    rolled back, or timed out. Deterministic: retrying the same deployment repeats it."""

    def __init__(
        self,
        message: str,
        *,
        endpoint_name: str,
        status: str | None,
        config_name: str | None,
        rolled_back: bool = False,
    ):
        super().__init__(message)
        self.endpoint_name = endpoint_name
        self.status = status
        self.config_name = config_name
        self.rolled_back = rolled_back


class NoCapacityError(DeploymentFailedError):
    """SageMaker had no capacity (or no quota) for the endpoint's instance type, and there is no
    type left to fall back to: the type is pinned, or every type of the ranking was tried."""


# -- clients ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointClients:
    sagemaker: Any
    cloudwatch: Any
    autoscaling: Any


def client(
    service: str,
    aws_conn_id: str = "aws_default",
    region_name: str | None = None,
    max_attempts: int = 10,
) -> Any:
    """A boto3 client from the Airflow AWS connection, with botocore's adaptive retries
    (throttling and transient errors only), as ``fmops.jobs.sagemaker`` makes its clients."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from botocore.config import Config

    hook = AwsBaseHook(aws_conn_id=aws_conn_id, region_name=region_name, client_type=service)
    retries = Config(retries={"mode": "adaptive", "total_max_attempts": max_attempts})
    return hook.get_client_type(region_name=hook.region_name, config=retries.merge(hook.config))


def clients(
    aws_conn_id: str = "aws_default", region_name: str | None = None, max_attempts: int = 10
) -> EndpointClients:
    """The three clients a deployment uses (``client`` for each)."""
    made = [
        client(service, aws_conn_id, region_name, max_attempts)
        for service in ("sagemaker", "cloudwatch", "application-autoscaling")
    ]
    return EndpointClients(*made)


def _missing(err: ClientError) -> bool:
    """SageMaker's (and moto's) answer for an unknown model, config or endpoint."""
    error = err.response.get("Error", {})
    message = error.get("Message", "").lower()
    return error.get("Code") in ("ValidationException", "ResourceNotFound") and (
        "could not find" in message or "not found" in message
    )


def describe_or_none(call: Callable[..., dict[str, Any]], **name: str) -> dict[str, Any] | None:
    try:
        return call(**name)
    except ClientError as err:
        if _missing(err):
            return None
        raise


def find_endpoint(sagemaker: Any, endpoint_name: str) -> dict[str, Any] | None:
    """DescribeEndpoint, or None when there is no such endpoint (any more)."""
    return describe_or_none(sagemaker.describe_endpoint, EndpointName=endpoint_name)


# -- the wait --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one DescribeEndpoint says about a deployment of ``expected`` config."""

    state: Literal["succeeded", "waiting", "failed"]
    status: str
    config_name: str | None
    reason: str
    rolled_back: bool = False


def _rollback_alarms(description: dict[str, Any]) -> list[str]:
    last = description.get("LastDeploymentConfig") or {}
    alarms = (last.get("AutoRollbackConfiguration") or {}).get("Alarms") or []
    return [a["AlarmName"] for a in alarms if a.get("AlarmName")]


def deployment_outcome(
    description: dict[str, Any],
    expected_config_name: str,
    *,
    previous_config_name: str | None = None,
) -> Outcome:
    """Success only when ``InService`` on the expected (new) config; ``InService`` on another
    config after an update is SageMaker's automatic rollback: a failure, with the reason."""
    status = description.get("EndpointStatus", "")
    config = description.get("EndpointConfigName")
    name = description.get("EndpointName", "the endpoint")
    failure = description.get("FailureReason")
    because = f": {failure}" if failure else ""
    if status == "InService":
        if config == expected_config_name:
            return Outcome("succeeded", status, config, f"{name} is InService on {config}")
        target = "the previous config " if config == previous_config_name else ""
        alarms = _rollback_alarms(description)
        watched = f"; its rollback alarms: {', '.join(alarms)}" if alarms else ""
        why = because or " (an alarm went off, or the new fleet did not start)"
        return Outcome(
            "failed",
            status,
            config,
            f"{name} is InService on {target}{config}, not on the new {expected_config_name}: "
            f"SageMaker rolled the deployment back{why}{watched}",
            rolled_back=True,
        )
    if status in BROKEN:
        return Outcome(
            "failed",
            status,
            config,
            f"{name} is {status}{because or ' (no FailureReason given)'}",
            rolled_back=status == "UpdateRollbackFailed",
        )
    if status in IN_PROGRESS:
        pending = (description.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        if status == "Updating" and pending and pending != expected_config_name:
            return Outcome(
                "failed",
                status,
                config,
                f"{name} is Updating to {pending}, not to {expected_config_name}: another "
                "deployment runs on this endpoint",
            )
        return Outcome("waiting", status, config, f"{name} is {status}")
    return Outcome("failed", status, config, f"{name} has an unexpected status {status!r}")


def _progress(description: dict[str, Any]) -> str:
    pending = description.get("PendingDeploymentSummary") or {}
    parts = [
        f"{v.get('VariantName')}: weight {v.get('CurrentWeight')} -> {v.get('DesiredWeight')}, "
        f"instances {v.get('CurrentInstanceCount')} -> {v.get('DesiredInstanceCount')}"
        for v in pending.get("ProductionVariants") or []
    ]
    return "; ".join(parts)


@dataclass(frozen=True)
class Verdict:
    """Where a deployment stands after one more DescribeEndpoint: still ``waiting``, or done
    (``succeeded``, ``failed``, ``timed_out``). JSON-able (``as_dict``/``from_dict``), so that
    the triggerer can hand it to the task that resumes."""

    state: Literal["succeeded", "waiting", "failed", "timed_out"]
    message: str
    status: str
    config_name: str | None
    rolled_back: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def error(self, endpoint_name: str, explain: str = "") -> DeploymentFailedError:
        """The ``DeploymentFailedError`` of a deployment that failed or timed out."""
        return DeploymentFailedError(
            self.message + (f"; {explain}" if explain else ""),
            endpoint_name=endpoint_name,
            status=self.status,
            config_name=self.config_name,
            rolled_back=self.rolled_back,
        )


class DeploymentWatch:
    """The judgement of a wait, one DescribeEndpoint answer at a time. It calls and sleeps
    nothing, so that the blocking wait (``watch_deployment``) and the deferred one (the
    triggerer's ``fmops.airflow.operators.EndpointTrigger``) decide alike.

    ``elapsed`` is the time since the deployment was started (or reattached to); past
    ``timeout_seconds`` a deployment still under way is ``timed_out``.
    """

    def __init__(
        self,
        expected_config_name: str,
        *,
        previous_config_name: str | None = None,
        timeout_seconds: float,
    ):
        self.expected_config_name = expected_config_name
        self.previous_config_name = previous_config_name
        self.timeout_seconds = timeout_seconds
        self.polls = 0
        self.seen_update = False

    def see(self, description: dict[str, Any], elapsed: float) -> Verdict:
        self.polls += 1
        outcome = deployment_outcome(
            description, self.expected_config_name, previous_config_name=self.previous_config_name
        )
        self.seen_update |= outcome.status in IN_PROGRESS
        if outcome.state == "succeeded":
            return Verdict("succeeded", outcome.reason, outcome.status, outcome.config_name)
        stale = (
            outcome.rolled_back
            and outcome.status == "InService"
            and not self.seen_update
            and not description.get("FailureReason")
            and self.polls < SETTLE_POLLS
        )
        if outcome.state == "failed" and not stale:
            return Verdict(
                "failed", outcome.reason, outcome.status, outcome.config_name, outcome.rolled_back
            )
        if elapsed >= self.timeout_seconds:
            return Verdict(
                "timed_out",
                f"{outcome.reason} after {elapsed:.0f} s, longer than the wait of "
                f"{self.timeout_seconds:.0f} s; the deployment may still be running: SageMaker "
                "rolls it back itself at MaximumExecutionTimeoutInSeconds",
                outcome.status,
                outcome.config_name,
            )
        progress = _progress(description)
        shown = f" ({progress})" if progress else ""
        return Verdict("waiting", outcome.reason + shown, outcome.status, outcome.config_name)


def watch_deployment(
    describe: Callable[[], dict[str, Any]],
    expected_config_name: str,
    *,
    previous_config_name: str | None = None,
    timeout_seconds: float,
    poll_seconds: float = 30,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Verdict, dict[str, Any]]:
    """Poll ``describe`` until the deployment is done; the final verdict and description."""
    watch = DeploymentWatch(
        expected_config_name,
        previous_config_name=previous_config_name,
        timeout_seconds=timeout_seconds,
    )
    start = clock()
    while True:
        description = describe()
        verdict = watch.see(description, clock() - start)
        if verdict.state == "succeeded":
            log.info("%s", verdict.message)
        if verdict.state != "waiting":
            return verdict, description
        log.info("%s; next look in %s s", verdict.message, poll_seconds)
        sleep(poll_seconds)


def capacity_failure(
    handle: dict[str, Any], verdict: Verdict, description: dict[str, Any] | None
) -> str | None:
    """SageMaker's reason when a deployment failed for want of instances of its type, else None:
    a new endpoint ``Failed``, or an update rolled back (``InService`` on the old config), with a
    ``FailureReason`` saying it could not provision the capacity. Any other failure (a container
    that does not start, an alarm, a timeout) is the deployment's own and is not retried."""
    if verdict.state != "failed" or not description:
        return None
    reason = description.get("FailureReason") or ""
    if not capacity.is_hosting_capacity_failure(reason):
        return None
    new = handle.get("previous_endpoint_config_name") is None
    if verdict.status == "Failed" and new:
        return reason
    if verdict.status == "InService" and verdict.rolled_back and not new:
        return reason
    return None


def deletion_verdict(
    description: dict[str, Any] | None, endpoint_name: str, elapsed: float, timeout_seconds: float
) -> Verdict:
    """Where the deletion of a failed endpoint stands: ``succeeded`` once DescribeEndpoint no
    longer finds it (``description`` None), ``waiting`` while it is Deleting (or still reads
    Failed, DescribeEndpoint being eventually consistent), ``timed_out`` past the wait, and
    ``failed`` if it is anything else: another deployment created it again."""
    if description is None:
        return Verdict("succeeded", f"{endpoint_name} is deleted", "Deleted", None)
    status = description.get("EndpointStatus", "")
    config = description.get("EndpointConfigName")
    if status in ("Deleting", "Failed"):
        if elapsed >= timeout_seconds:
            return Verdict(
                "timed_out",
                f"{endpoint_name} is still {status} after {elapsed:.0f} s, longer than the wait "
                f"of {timeout_seconds:.0f} s for its deletion; delete it, then run again",
                status,
                config,
            )
        waiting = f"{endpoint_name} is {status}: waiting until it is gone"
        return Verdict("waiting", waiting, status, config)
    return Verdict(
        "failed",
        f"{endpoint_name} is {status} on {config} while fmops waited for its deletion: another "
        "deployment created it again; run again once it is InService",
        status,
        config,
    )


def watch_deletion(
    describe: Callable[[], dict[str, Any] | None],
    endpoint_name: str,
    *,
    timeout_seconds: float,
    poll_seconds: float = 30,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Verdict:
    """Poll ``describe`` (None once the endpoint is gone) until the deletion is done."""
    start = clock()
    while True:
        verdict = deletion_verdict(describe(), endpoint_name, clock() - start, timeout_seconds)
        if verdict.state != "waiting":
            log.info("%s", verdict.message)
            return verdict
        log.info("%s; next look in %s s", verdict.message, poll_seconds)
        sleep(poll_seconds)


def jsonable_description(description: dict[str, Any]) -> dict[str, Any]:
    """A DescribeEndpoint answer as JSON (times in ISO 8601, without ResponseMetadata)."""
    kept = {k: v for k, v in description.items() if k != "ResponseMetadata"}
    return json.loads(
        json.dumps(kept, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )
