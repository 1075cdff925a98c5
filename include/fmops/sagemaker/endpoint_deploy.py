"""SageMaker real-time endpoints, running a deployment: what fmops_deploy does to serve a model
version blue/green, given the plan (``fmops.sagemaker.endpoint_plan``) and boto3-like clients
(at run time from the amazon provider's hooks, ``fmops.sagemaker.endpoint_watch.clients``).

A deployment is started, waited for, and concluded. ``deploy`` does the three in one blocking
call; the deploy task of fmops_deploy calls ``start_deployment`` (steps 1-4, it returns a
JSON-able handle), defers the wait to the triggerer (``fmops.airflow.operators.EndpointTrigger``,
which judges each DescribeEndpoint with the same ``DeploymentWatch``) and resumes with
``finish_deployment`` (step 6) or ``fall_back`` (the next attempt, or the failure). The requests,
in this order:

1. ``DescribeEndpoint``: a new endpoint, an update, or a retry of this very deployment (then it
   reattaches to it, or finds it done);
2. ``CreateModel`` and ``CreateEndpointConfig``, each after a describe: a model or config with
   the same deterministic name is reused, so a retried task creates nothing twice;
3. ``PutMetricAlarm`` for the variant's ``Invocation5XXErrors`` and ``ModelLatency`` (optionally
   ``Invocation4XXErrors``): they must exist before ``UpdateEndpoint`` names them in
   ``AutoRollbackConfiguration``;
4. ``CreateEndpoint``, or ``UpdateEndpoint`` with a ``DeploymentConfig`` (``BlueGreenUpdatePolicy``:
   ALL_AT_ONCE, CANARY or LINEAR traffic shifting, a baking period after each shift, a termination
   wait; ``AutoRollbackConfiguration`` with the alarms);
5. the wait (``fmops.sagemaker.endpoint_watch``): success only when the endpoint is ``InService``
   on the NEW endpoint config; SageMaker's automatic rollback, ``InService`` on the old config,
   is a ``DeploymentFailedError``;
6. Application Auto Scaling (``RegisterScalableTarget``, target tracking on
   ``SageMakerVariantInvocationsPerInstance``) once the endpoint is ``InService``. An update that
   changes the instance type of a variant registered for auto scaling fails, so the scaling
   policy and target are removed before such an update and registered again after it (SageMaker
   developer guide, "Update endpoints that use auto scaling").

Capacity fallback (``fmops.sagemaker.capacity``): when SageMaker has no capacity or no quota for
the instance type (CreateEndpoint or UpdateEndpoint refused with ``ResourceLimitExceeded`` for it;
a new endpoint ``Failed``, or an update rolled back, with "Unable to provision requested ML
compute capacity"), the plan moves to the next type of its ranking
(``fmops.sagemaker.endpoint_plan.next_instance``) and ``fall_back`` starts that attempt: a Failed
new endpoint is deleted (``DeleteEndpoint``; it never served) and, once gone, created again; a
rolled back update is followed by another blue/green ``UpdateEndpoint``. A pinned type does not
fall back, and a ranking tried to its end stops with ``NoCapacityError`` naming every type tried.

The model archive must be the one registered and hold what its serving container reads:
``check_model_archive`` reads it from S3 as a stream before anything is created and refuses an
archive whose bytes are not those the version's manifest records (``fmops.registry.digests``:
whoever can write the object could otherwise change what serves after the review), naming each
file that changed, was added or is missing; a classifier's archive without ``code/inference.py``
(without it the Hugging Face inference toolkit silently serves a default pipeline inferred from
``config.json``: embeddings instead of labels); and a generative model's (TGI reads the folder
itself) without ``config.json`` and ``*.safetensors`` at its root. SageMaker reads the object
again when it starts the fleet, and CreateModel's ``ModelDataUrl`` names no object version: the
check leaves that window open (an S3 Object Lock or a bucket policy that lets no one overwrite
``training/`` closes it).
"""

from __future__ import annotations

import functools
import json
import logging
import tarfile
import time
import zlib
from collections.abc import Callable
from typing import Any, Literal

from botocore.exceptions import ClientError

from fmops.sagemaker import capacity
from fmops.sagemaker.endpoint_plan import (
    first_line,
    next_instance,
    no_capacity_error,
    with_instance_count,
)
from fmops.sagemaker.endpoint_resources import (
    ARCHIVE_CODE,
    EndpointError,
    check_model_data_url,
    version_prefix,
)
from fmops.sagemaker.endpoint_watch import (
    BROKEN,
    IN_PROGRESS,
    DeploymentFailedError,
    Verdict,
    capacity_failure,
    describe_or_none,
    find_endpoint,
    watch_deletion,
    watch_deployment,
)

log = logging.getLogger(__name__)

# How long a failed endpoint may take to go after DeleteEndpoint before fmops gives up on it
# (one that never served has no instances to drain: usually a minute or two).
DELETION_WAIT_SECONDS = 1200

MISSING_CODE = (
    "{uri} has no {code}: the Hugging Face inference toolkit loads the handlers from "
    "/opt/ml/model/code/ and, without them, serves a default pipeline guessed from config.json "
    "(embeddings, not labels). Put include/scripts/inference.py into the model folder as "
    "code/inference.py before the job packs it (train.py can copy its sibling inference.py into "
    "SM_MODEL_DIR/code/), or repack the archive with code/inference.py"
)


class EndpointBusyError(RuntimeError):
    """The endpoint is changing under another deployment; transient, try again once it settles."""


# -- the calls, one resource at a time -------------------------------------------------------------


MISSING_WEIGHTS = (
    "{uri} has no {missing} at its root: the Hugging Face LLM (TGI) container loads the model "
    "folder /opt/ml/model itself (HF_MODEL_ID), config.json and the *.safetensors weights beside "
    "it; train.py task=instruction writes them there (a LoRA run merges its adapters into them)"
)


def _weights_complete(names: set[str]) -> bool:
    return "config.json" in names and any(n.endswith(".safetensors") for n in names)


def check_model_archive(
    s3: Any,
    model_data_url: str,
    archive: str = "code",
    registered: dict[str, Any] | None = None,
    what: str = "the model version",
) -> None:
    """Refuse a model archive that is not the one registered or that its container cannot
    serve, reading it once, streamed to its end (never whole in memory).

    ``registered``: the version's manifest (``fmops.registry.registration.registered_manifest``):
    ``ArtifactDigestError`` unless the archive's bytes are the registered ones (or, for a
    version registered before fmops recorded them, its files are), naming each file that
    differs. Then ``archive`` "code" (a classifier) needs ``code/inference.py``; "weights" (a
    generative model, served by TGI) ``config.json`` and ``*.safetensors`` at the root."""
    from fmops.registry import digests
    from fmops.sagemaker.staging import split_uri

    bucket, key = split_uri(check_model_data_url(model_data_url))
    found = s3.get_object(Bucket=bucket, Key=key)
    body = found["Body"]
    try:
        read = digests.archive_digests(body)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise EndpointError(f"{model_data_url} is not a gzipped tar archive: {err}") from None
    finally:
        body.close()
    if registered is not None:
        digests.verify_archive(registered, read, model_data_url, what, found.get("VersionId"))
        log.info("%s: %s (sha256 %s) is the archive registered", what, model_data_url, read.sha256)
    names = set(read.files)
    if archive == "code":
        if ARCHIVE_CODE not in names:
            raise EndpointError(MISSING_CODE.format(uri=model_data_url, code=ARCHIVE_CODE))
        return
    at_root = {name for name in names if "/" not in name}
    if _weights_complete(at_root):
        return
    missing = [
        label
        for label, present in (
            ("config.json", "config.json" in at_root),
            ("*.safetensors", any(n.endswith(".safetensors") for n in at_root)),
        )
        if not present
    ]
    raise EndpointError(MISSING_WEIGHTS.format(uri=model_data_url, missing=" or ".join(missing)))


def _ensure(
    sagemaker: Any, kind: str, request: dict[str, Any], name_field: str
) -> Literal["created", "reused"]:
    name = request[name_field]
    if describe_or_none(getattr(sagemaker, f"describe_{kind}"), **{name_field: name}) is not None:
        log.info("%s %s exists (same request, same name): reused", kind, name)
        return "reused"
    getattr(sagemaker, f"create_{kind}")(**request)
    log.info("created %s %s", kind, name)
    return "created"


def alarms_in_alarm(cloudwatch: Any, names: list[str]) -> list[str]:
    found = cloudwatch.describe_alarms(AlarmNames=names).get("MetricAlarms", [])
    return [a["AlarmName"] for a in found if a.get("StateValue") == "ALARM"]


def _registered(autoscaling: Any, target: dict[str, Any]) -> bool:
    found = autoscaling.describe_scalable_targets(
        ServiceNamespace=target["ServiceNamespace"],
        ResourceIds=[target["ResourceId"]],
        ScalableDimension=target["ScalableDimension"],
    )
    return bool(found.get("ScalableTargets"))


def _deregister(autoscaling: Any, plan: dict[str, Any]) -> None:
    register = plan["requests"]["RegisterScalableTarget"]
    policy = plan["requests"]["PutScalingPolicy"]
    target = {k: register[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")}
    try:
        autoscaling.delete_scaling_policy(PolicyName=policy["PolicyName"], **target)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code")
        if code not in ("ObjectNotFoundException", "ValidationException"):
            raise
    autoscaling.deregister_scalable_target(**target)
    log.info("auto scaling of %s removed for the update (the instance type changes)", target)


def _register(autoscaling: Any, plan: dict[str, Any]) -> dict[str, Any] | None:
    register = plan["requests"].get("RegisterScalableTarget")
    if not register:
        return None
    autoscaling.register_scalable_target(**register)
    autoscaling.put_scaling_policy(**plan["requests"]["PutScalingPolicy"])
    log.info(
        "auto scaling %s: %d-%d instances, target %s invocations per instance per minute",
        register["ResourceId"],
        register["MinCapacity"],
        register["MaxCapacity"],
        plan["requests"]["PutScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"][
            "TargetValue"
        ],
    )
    return {"resource_id": register["ResourceId"], **plan["scaling"]}


def _current_count(description: dict[str, Any], variant: str) -> int:
    for summary in description.get("ProductionVariants") or []:
        if summary.get("VariantName") == variant:
            return int(summary.get("CurrentInstanceCount") or 0)
    return 0


def _variant_of(sagemaker: Any, config_name: str, variant: str) -> dict[str, Any]:
    """The variant of an endpoint config (and its KmsKeyId), or {} if it is gone."""
    config = (
        describe_or_none(sagemaker.describe_endpoint_config, EndpointConfigName=config_name) or {}
    )
    for item in config.get("ProductionVariants", []):
        if item.get("VariantName") == variant:
            return {**item, "KmsKeyId": config.get("KmsKeyId")}
    return {}


def _serves_plan(live: dict[str, Any], plan: dict[str, Any]) -> bool:
    """Whether a live variant serves the plan's model the plan's way; the instance count is
    auto scaling's business and does not count."""
    config = plan["requests"]["CreateEndpointConfig"]
    wanted = config["ProductionVariants"][0]
    return bool(live) and all(
        live.get(key) == value
        for key, value in (
            ("ModelName", wanted["ModelName"]),
            ("InstanceType", wanted["InstanceType"]),
            ("KmsKeyId", config.get("KmsKeyId")),
        )
    )


def explain_alarms(cloudwatch: Any, names: list[str]) -> str:
    """Which rollback alarms are in ALARM now: the likely reason of a rollback."""
    firing = alarms_in_alarm(cloudwatch, names)
    return (
        f"CloudWatch alarms in ALARM: {', '.join(firing)}"
        if firing
        else f"none of the rollback alarms is in ALARM now ({', '.join(names)})"
    )


# -- running a deployment --------------------------------------------------------------------------


def _can_fall_back(plan: dict[str, Any]) -> bool:
    instance = plan["instance"]
    return not instance.get("pinned") and bool(instance.get("fallbacks"))


EARLIER_ATTEMPT = "an earlier attempt of this deployment fell back from it"


def _rebased(plan: dict[str, Any], instance_type: str | None) -> dict[str, Any] | None:
    """The plan on ``instance_type`` when that is a later type of its ranking, the one an earlier
    attempt of this deployment fell back to (a retry finds it serving or under way); the plan
    itself for its own type; None for any other type."""
    instance = plan["instance"]
    if not instance_type or instance_type == instance["instance_type"]:
        return plan
    fallbacks = list(instance.get("fallbacks") or [])
    if instance.get("pinned") or instance_type not in fallbacks:
        return None
    index = fallbacks.index(instance_type)
    before = fallbacks[index - 1] if index else instance["instance_type"]
    moved = next_instance(plan, EARLIER_ATTEMPT, failed=before)
    return moved if moved and moved["instance"]["instance_type"] == instance_type else None


def _handle(
    plan: dict[str, Any],
    action: str,
    expected: str,
    before: str | None,
    status: str | None,
    started_at: float,
    *,
    deregistered: bool = False,
) -> dict[str, Any]:
    """What ``finish_deployment`` and a wait need of a started deployment; JSON-able. It carries
    the plan while the plan has a type to fall back to (``fall_back``)."""
    requests = plan["requests"]
    return {
        "endpoint_name": plan["endpoint_name"],
        "action": action,
        "endpoint_config_name": expected,
        "previous_endpoint_config_name": before,
        "status": status,
        "region": plan.get("region"),
        "model_name": plan["model_name"],
        "instance_type": plan["instance"]["instance_type"],
        "instance": plan["instance"],
        "instance_count": plan["instance_count"],
        "capacity_fallback": list(plan.get("capacity_fallback", [])),
        "alarm_names": list(plan["alarm_names"]),
        "notes": list(plan["notes"]),
        "scaling": plan["scaling"],
        "requests": {
            key: requests.get(key) for key in ("RegisterScalableTarget", "PutScalingPolicy")
        },
        "deregistered": deregistered,
        "started_at": started_at,
        "timeout_seconds": plan["wait"]["timeout_seconds"],
        "poll_seconds": plan["wait"]["poll_seconds"],
        **({"plan": plan} if _can_fall_back(plan) else {}),
    }


def _deleting(plan: dict[str, Any], failed_config: str | None, started_at: float) -> dict[str, Any]:
    """The handle of a failed endpoint being deleted so that ``plan`` can create it again: wait
    until it is gone (``watch_deletion``, or the triggerer), then ``start_deployment(plan)``."""
    return {
        "endpoint_name": plan["endpoint_name"],
        "action": "deleting",
        "endpoint_config_name": failed_config,
        "previous_endpoint_config_name": None,
        "status": "Deleting",
        "region": plan.get("region"),
        "instance_type": plan["instance"]["instance_type"],
        "plan": plan,
        "started_at": started_at,
        "timeout_seconds": DELETION_WAIT_SECONDS,
        "poll_seconds": plan["wait"]["poll_seconds"],
    }


def _recreate(
    moved: dict[str, Any] | None,
    *,
    instance: dict[str, Any],
    endpoint_name: str,
    region: str,
    failed: str,
    config_name: str | None,
    why: str,
    sagemaker: Any,
    now: Callable[[], float],
) -> dict[str, Any]:
    """Delete a new endpoint that Failed for want of capacity (it never served, and its name is
    needed again): the ``deleting`` handle of ``moved``, or NoCapacityError when it is None."""
    sagemaker.delete_endpoint(EndpointName=endpoint_name)
    log.warning(
        "%s Failed on %s (%s): deleting it (it never served)",
        endpoint_name,
        failed,
        first_line(why),
    )
    if moved is None:
        raise no_capacity_error(
            instance,
            endpoint_name=endpoint_name,
            region=region,
            failed=failed,
            why=why,
            status="Failed",
            config_name=config_name,
            deleted=True,
        )
    return _deleting(moved, config_name, now())


def start_deployment(
    plan: dict[str, Any],
    *,
    sagemaker: Any,
    cloudwatch: Any,
    autoscaling: Any,
    s3: Any = None,
    registered: dict[str, Any] | None = None,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Start one deployment of ``plan_endpoint``'s plan, up to and including CreateEndpoint or
    UpdateEndpoint; does not wait. Idempotent on retry. With ``s3``, the model archive is
    checked first (``check_model_archive``), against the version's ``registered`` manifest.

    Returns the deployment's handle (JSON-able): ``action`` is ``created``, ``updated``,
    ``reattached`` (a deployment of this version was already under way) or ``unchanged``
    (already serving it: nothing to wait for); ``endpoint_config_name`` is the config it must
    end ``InService`` on, ``started_at`` (``now()``, epoch seconds) and ``timeout_seconds`` bound
    the wait. Then wait (``watch_deployment``, or ``DeploymentWatch`` from the triggerer) and
    conclude with ``finish_deployment``, or with ``fall_back`` when it failed. Raises
    ``DeploymentFailedError`` when the endpoint cannot be updated (Failed, or a rollback alarm
    already in ALARM), ``EndpointBusyError`` when another deployment holds the endpoint,
    ``EndpointError`` when the model archive lacks its serving code and ``ArtifactDigestError``
    when it is not the registered one (``s3`` given): then nothing is created.

    Capacity: CreateEndpoint or UpdateEndpoint refused with ``ResourceLimitExceeded`` for the
    instance type moves the plan to the next type of its ranking (``next_instance``) and tries
    again, until none is left (``NoCapacityError``). A retry that finds this version's new
    endpoint ``Failed`` for want of capacity deletes it and returns ``action`` ``deleting`` (as
    ``fall_back`` does), with the plan of the next type; one that finds it ``Deleting`` waits
    for it the same way.
    """
    if s3 is not None:
        archive = (plan.get("serving") or {}).get("archive", "code")
        what = f"model version {plan['model_version']}"
        check_model_archive(s3, plan["model_data_url"], archive, registered, what)
    while True:
        try:
            return _start(
                plan, sagemaker=sagemaker, cloudwatch=cloudwatch, autoscaling=autoscaling, now=now
            )
        except ClientError as err:
            failed = plan["instance"]["instance_type"]
            if not capacity.is_type_quota_error(err, failed):
                raise
            moved = next_instance(plan, str(err))
            if moved is None:
                raise no_capacity_error(
                    plan["instance"],
                    endpoint_name=plan["endpoint_name"],
                    region=plan["region"],
                    failed=failed,
                    why=str(err),
                    status=None,
                    config_name=plan["endpoint_config_name"],
                ) from err
            plan = moved


def _start(
    plan: dict[str, Any],
    *,
    sagemaker: Any,
    cloudwatch: Any,
    autoscaling: Any,
    now: Callable[[], float],
) -> dict[str, Any]:
    name = plan["endpoint_name"]
    variant = plan["variant_name"]
    requests = plan["requests"]
    alarms = plan["alarm_names"]
    current = find_endpoint(sagemaker, name)
    status = current["EndpointStatus"] if current else None
    previous = current.get("EndpointConfigName") if current else None
    prefix = version_prefix(name, plan["model_version"])
    own = bool(previous) and previous.startswith(prefix)

    if status in IN_PROGRESS:
        pending = (current.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
        target = pending or (previous if status == "Creating" else None)
        if target and (target == plan["endpoint_config_name"] or target.startswith(prefix)):
            log.info("%s is %s to %s, this version: waiting for it", name, status, target)
            before = None if status == "Creating" else previous
            serving = plan
            if target != plan["endpoint_config_name"]:  # an earlier attempt's, maybe a fallback
                live = _variant_of(sagemaker, target, variant).get("InstanceType")
                serving = _rebased(plan, live) or plan
            return _handle(serving, "reattached", target, before, status, now())
        raise EndpointBusyError(
            f"endpoint {name} is {status}"
            + (f" to {target}" if target else "")
            + ": another deployment or maintenance holds it; run again once it is InService"
        )
    if status in BROKEN:
        reason = current.get("FailureReason") or "no FailureReason given"
        if own and status == "Failed" and capacity.is_hosting_capacity_failure(reason):
            # This version's new endpoint, which SageMaker could not provision: a retry.
            failed = _variant_of(sagemaker, previous, variant).get("InstanceType")
            failed = failed or plan["instance"]["instance_type"]
            ranking = [plan["instance"]["instance_type"], *plan["instance"].get("fallbacks", [])]
            return _recreate(
                # a type outside this plan's ranking (the config changed): the plan's own first
                next_instance(plan, reason, failed=failed) if failed in ranking else plan,
                instance=plan["instance"],
                endpoint_name=name,
                region=plan["region"],
                failed=failed,
                config_name=previous,
                why=reason,
                sagemaker=sagemaker,
                now=now,
            )
        if own and status == "Deleting":
            log.info("%s (%s) is being deleted: creating it once it is gone", name, previous)
            return _deleting(plan, previous, now())
        raise DeploymentFailedError(
            f"endpoint {name} is {status} ({reason}): SageMaker cannot update it; an operator "
            f"must repair it (UpdateRollbackFailed) or delete it (Failed) before fmops deploys",
            endpoint_name=name,
            status=status,
            config_name=previous,
        )
    live: dict[str, Any] = {}
    serving = plan
    if current is not None and own:
        live = _variant_of(sagemaker, previous, variant)
        if live.get("ModelName") == plan["model_name"]:  # a fallback of an earlier run serves it?
            serving = _rebased(plan, live.get("InstanceType")) or plan
    if current is not None and (
        previous == plan["endpoint_config_name"] or _serves_plan(live, serving)
    ):
        log.info("%s already serves this model with %s: nothing to deploy", name, previous)
        for alarm in requests["PutMetricAlarm"]:
            cloudwatch.put_metric_alarm(**alarm)
        return _handle(serving, "unchanged", previous, None, status, now())
    if current is not None and plan["scaling"]["enabled"]:
        # A blue/green update starts the new fleet at the config's count; if auto scaling grew
        # the old one, start the new one as large (up to the maximum), so the shift holds load.
        count = _current_count(current, variant)
        wanted = min(count, plan["scaling"]["max_instances"])
        if wanted > plan["instance_count"]:
            log.info("%s serves on %d instances: the new fleet starts with %d", name, count, wanted)
            plan = with_instance_count(plan, wanted)
            requests = plan["requests"]

    _ensure(sagemaker, "model", requests["CreateModel"], "ModelName")
    _ensure(sagemaker, "endpoint_config", requests["CreateEndpointConfig"], "EndpointConfigName")
    for alarm in requests["PutMetricAlarm"]:
        cloudwatch.put_metric_alarm(**alarm)  # before UpdateEndpoint names them
    if current is None:
        sagemaker.create_endpoint(**requests["CreateEndpoint"])
        log.info("creating endpoint %s with %s", name, plan["endpoint_config_name"])
        return _handle(plan, "created", plan["endpoint_config_name"], None, status, now())

    firing = alarms_in_alarm(cloudwatch, alarms)
    if firing:
        raise DeploymentFailedError(
            f"rollback alarm(s) {', '.join(firing)} of {name} are in ALARM now: SageMaker would "
            "roll the update back at once. Find out why the live endpoint alarms, and deploy "
            "once they are OK",
            endpoint_name=name,
            status=status,
            config_name=previous,
        )
    register = requests.get("RegisterScalableTarget")
    deregistered = False
    if register and _registered(autoscaling, register):
        new_type = plan["instance"]["instance_type"]
        if _variant_of(sagemaker, previous, variant).get("InstanceType") != new_type:
            _deregister(autoscaling, plan)
            deregistered = True
    try:
        sagemaker.update_endpoint(**requests["UpdateEndpoint"])
    except ClientError:
        if deregistered:  # refused (a quota, say): the old fleet goes on serving, scaled
            _register(autoscaling, plan)
        raise
    log.info(
        "updating endpoint %s from %s to %s: %s",
        name,
        previous,
        plan["endpoint_config_name"],
        json.dumps(requests["UpdateEndpoint"]["DeploymentConfig"]),
    )
    return _handle(
        plan,
        "updated",
        plan["endpoint_config_name"],
        previous,
        status,
        now(),
        deregistered=deregistered,
    )


def finish_deployment(
    handle: dict[str, Any], description: dict[str, Any] | None, *, autoscaling: Any
) -> dict[str, Any]:
    """Conclude a deployment that succeeded (``description``: the last DescribeEndpoint, None
    for an ``unchanged`` one): auto scaling registered, what was done returned, with the
    instance type that serves and the capacity fallbacks on the way (``capacity_fallback``,
    ``instances_tried``)."""
    tried = (handle.get("instance") or {}).get("tried", [])
    return {
        "endpoint_name": handle["endpoint_name"],
        "action": handle["action"],
        "endpoint_config_name": handle["endpoint_config_name"],
        "previous_endpoint_config_name": handle["previous_endpoint_config_name"],
        "model_name": handle["model_name"],
        "instance_type": handle["instance_type"],
        "instance_count": handle["instance_count"],
        "status": (description or {}).get("EndpointStatus", handle["status"]),
        "alarms": handle["alarm_names"],
        "scaling": _register(autoscaling, handle),
        "notes": handle["notes"],
        "capacity_fallback": list(handle.get("capacity_fallback", [])),
        "instances_tried": [dict(t) for t in tried],
    }


def deployment_failed(
    handle: dict[str, Any], verdict: Verdict, *, cloudwatch: Any, autoscaling: Any
) -> DeploymentFailedError:
    """Conclude a deployment that failed, was rolled back or timed out; returns the error to
    raise, with the rollback alarms in ALARM for a failure. If the update removed auto scaling
    (the instance type changed) and the old fleet serves again, its scaling is registered again.
    """
    extra = explain_alarms(cloudwatch, handle["alarm_names"]) if verdict.state == "failed" else ""
    error = verdict.error(handle["endpoint_name"], extra)
    if handle["deregistered"] and verdict.status == "InService":
        _register(autoscaling, handle)  # the old fleet serves again: scale it as before
    return error


def fall_back(
    handle: dict[str, Any],
    verdict: Verdict,
    description: dict[str, Any] | None,
    *,
    sagemaker: Any,
    cloudwatch: Any,
    autoscaling: Any,
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """After a deployment's wait ended without success: the handle of its next attempt, on the
    next instance type of the ranking, when SageMaker had no capacity for this one
    (``capacity_failure``). Otherwise raises: ``deployment_failed``'s error for any other
    failure (deterministic, not retried), ``NoCapacityError`` when the type is pinned or no type
    is left (naming every type tried).

    A new endpoint that Failed is deleted (it never served, and the next attempt needs its
    name): the handle's ``action`` is ``deleting``; once the endpoint is gone, start
    ``handle["plan"]`` (``start_deployment``: describe, then create). An update SageMaker rolled
    back (the old fleet serves again, its auto scaling restored) is followed by a blue/green
    UpdateEndpoint to the next type's new endpoint config.
    """
    why = capacity_failure(handle, verdict, description)
    if why is None:
        raise deployment_failed(handle, verdict, cloudwatch=cloudwatch, autoscaling=autoscaling)
    name, failed = handle["endpoint_name"], handle["instance_type"]
    instance = handle.get("instance") or {"instance_type": failed}
    region = handle.get("region") or "its region"
    plan = handle.get("plan")
    moved = next_instance(plan, why) if plan else None
    if verdict.status == "Failed":
        return _recreate(
            moved,
            instance=instance,
            endpoint_name=name,
            region=region,
            failed=failed,
            config_name=handle["endpoint_config_name"],
            why=why,
            sagemaker=sagemaker,
            now=now,
        )
    if handle["deregistered"]:
        _register(autoscaling, handle)  # the old fleet serves again: scale it as before
    if moved is None:
        raise no_capacity_error(
            instance,
            endpoint_name=name,
            region=region,
            failed=failed,
            why=why,
            status=verdict.status,
            config_name=verdict.config_name,
        )
    return start_deployment(
        moved, sagemaker=sagemaker, cloudwatch=cloudwatch, autoscaling=autoscaling, now=now
    )


def deploy(
    plan: dict[str, Any],
    *,
    sagemaker: Any,
    cloudwatch: Any,
    autoscaling: Any,
    s3: Any = None,
    registered: dict[str, Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Run one deployment of ``plan_endpoint``'s plan; blocking, idempotent on retry:
    ``start_deployment``, the wait, then ``finish_deployment``; on a capacity failure,
    ``fall_back`` to the next instance type and wait again (for a failed new endpoint, first
    until it is deleted).

    Returns what was done (``action``: ``created``, ``updated``, ``reattached`` or
    ``unchanged``; ``instance_type`` and ``capacity_fallback``: where it serves and why). Raises
    what ``start_deployment`` raises, ``DeploymentFailedError`` when the deployment failed or was
    rolled back (the endpoint then serves the previous config), and ``NoCapacityError`` when no
    instance type of the ranking had capacity.
    """
    aws = {"sagemaker": sagemaker, "cloudwatch": cloudwatch, "autoscaling": autoscaling}
    handle = start_deployment(plan, s3=s3, registered=registered, **aws)
    while handle["action"] != "unchanged":
        name = handle["endpoint_name"]
        if handle["action"] == "deleting":
            gone = watch_deletion(
                functools.partial(find_endpoint, sagemaker, name),
                name,
                timeout_seconds=handle["timeout_seconds"],
                poll_seconds=handle["poll_seconds"],
                sleep=sleep,
                clock=clock,
            )
            if gone.state != "succeeded":
                raise gone.error(name)
            handle = start_deployment(handle["plan"], **aws)
            continue
        verdict, final = watch_deployment(
            functools.partial(sagemaker.describe_endpoint, EndpointName=name),
            handle["endpoint_config_name"],
            previous_config_name=handle["previous_endpoint_config_name"],
            timeout_seconds=handle["timeout_seconds"],
            poll_seconds=handle["poll_seconds"],
            sleep=sleep,
            clock=clock,
        )
        if verdict.state == "succeeded":
            return finish_deployment(handle, final, autoscaling=autoscaling)
        handle = fall_back(handle, verdict, final, **aws)
    return finish_deployment(handle, None, autoscaling=autoscaling)
