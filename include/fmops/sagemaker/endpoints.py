"""SageMaker real-time endpoints: what fmops_deploy sends to serve a model version blue/green.

The requests are built offline (``plan_endpoint``, or ``plan_deployment`` from a pipeline config:
no AWS call, no credentials), each checked against botocore's service models (sagemaker,
cloudwatch, application-autoscaling) and against the rules below, so that ``fmops plan`` can show
them. The settings are the config's: ``sagemaker.endpoint`` (instance, count, scaling, waits),
``deployment.traffic`` (how a new version takes the traffic, shared with the local target) and
``deployment.alarms`` (what rolls it back); ``fmops.config`` defines them and the blue/green
bounds their validators check, and this module re-exports them.

A deployment is started, waited for, and concluded, given boto3-like clients (at run time from
the amazon provider's hooks, ``clients()``). ``deploy`` does the three in one blocking call; the
deploy task of fmops_deploy calls ``start_deployment`` (steps 1-4, it returns a JSON-able handle),
defers the wait to the triggerer (``fmops.airflow.operators.EndpointTrigger``, which judges each
DescribeEndpoint with the same ``DeploymentWatch``) and resumes with ``finish_deployment`` (step 6)
or ``fall_back`` (the next attempt, or the failure). The requests, in this order:

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
5. the wait (``DeploymentWatch`` over DescribeEndpoint): success only when the endpoint is
   ``InService`` on the NEW endpoint config. SageMaker's automatic rollback also ends
   ``InService``, on the old config; treating that as success is a known bug of other tools,
   here it is a ``DeploymentFailedError``;
6. Application Auto Scaling (``RegisterScalableTarget``, target tracking on
   ``SageMakerVariantInvocationsPerInstance``) once the endpoint is ``InService``. An update that
   changes the instance type of a variant registered for auto scaling fails, so the scaling
   policy and target are removed before such an update and registered again after it (SageMaker
   developer guide, "Update endpoints that use auto scaling").

Capacity fallback (``fmops.sagemaker.capacity``): when SageMaker has no capacity or no quota for
the instance type (CreateEndpoint or UpdateEndpoint refused with ``ResourceLimitExceeded`` for it;
a new endpoint ``Failed``, or an update rolled back, with "Unable to provision requested ML
compute capacity"), ``next_instance`` moves the plan to the next type of the catalog's ranking
that fits the model, within ``sagemaker.endpoint.allowed_instance_types`` and the price ceiling:
a new endpoint config (a new name), the same model. ``fall_back`` starts that attempt: a Failed
new endpoint is deleted (``DeleteEndpoint``; it never served) and, once gone, created again; a
rolled back update is followed by another blue/green ``UpdateEndpoint``. Each move is logged
("no capacity for ml.X in <region>: falling back to ml.Y (...)") and kept in the plan's
``instance.tried`` and ``capacity_fallback``, which reach the deployment's result. A pinned type
does not fall back, and a ranking tried to its end stops with ``NoCapacityError`` naming every
type tried.

Names are deterministic: the model and the endpoint config are ``<endpoint>-v<version>-<hash>``,
the hash taken over the request (tags left out), so the same version with the same settings maps
to the same resources and any change of image, artifacts, instance type, count or key gives new
ones. The variant name is kept across versions (default ``AllTraffic``): blue/green updates
replace the fleet behind it, and the alarms' dimensions and the auto scaling resource id stay
valid. Alarm and scaling-policy names are per endpoint and variant, stable across versions
(``PutMetricAlarm`` and ``PutScalingPolicy`` overwrite in place).

Serving code: the Hugging Face inference toolkit imports the handlers from ``code/`` inside the
model directory (``/opt/ml/model/code``, put on ``sys.path``), module name from
``SAGEMAKER_PROGRAM``; ``SAGEMAKER_SUBMIT_DIRECTORY`` is set to that folder as the SDK does for a
repacked or network-isolated model. So the training job's ``model.tar.gz`` must contain
``code/inference.py`` (no ``code/requirements.txt``: the toolkit would pip-install it at start-up,
which network isolation forbids). Without it the toolkit silently falls back to a default
pipeline inferred from ``config.json`` and serves embeddings instead of labels:
``check_model_archive`` refuses such an archive before anything is created.

Checks made before any call (each refusal names the field, the value, the allowed range and the
fix): the traffic-shifting bounds of the SageMaker API reference (canary at most 50%, linear
steps 10-50%, waits 0-3600 s, execution timeout 600-28800 s and longer than the waits it
contains), every ``min``/``max``/``enum``/``pattern`` of the service models (botocore's own
validator checks only minimums), and ``KmsKeyId`` never with an instance type that has local NVMe
storage (the same rule as ``VolumeKmsKeyId`` for jobs, from the catalog's ``nvme`` flag).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import ClientError

from fmops.catalog import Catalog, CatalogError, Choice, MemoryEstimate, hosting_memory

# The settings are the config's (sagemaker.endpoint, deployment.traffic, deployment.alarms), and
# so are the blue/green bounds that their validators check; this module re-exports them.
from fmops.config import (  # noqa: F401
    CANARY_PERCENT,
    DEFAULT_VARIANT,
    EXECUTION_TIMEOUT_SECONDS,
    LATENCY_STATISTIC,
    LINEAR_PERCENT,
    MAX_ALARM_WINDOW_SECONDS,
    MAX_SAGEMAKER_NAME,
    SAGEMAKER_NAME_PATTERN,
    SERVING_PRECISION,
    START_UP_ALLOWANCE_SECONDS,
    TERMINATION_WAIT_SECONDS,
    TRAFFIC_MODES,
    WAIT_SECONDS,
    AlarmSettings,
    EndpointSettings,
    ScalingSettings,
    TrafficLabels,
    TrafficSettings,
    baking_periods,
    execution_timeout,
    total_wait_seconds,
    traffic_problems,
)
from fmops.jobs.local import JOB_ENV
from fmops.jobs.specs import PlanError
from fmops.sagemaker import capacity, options

if TYPE_CHECKING:
    from fmops.config import PipelineConfig, SageMakerSettings

log = logging.getLogger(__name__)

# -- SageMaker's rules and fmops' constants -------------------------------------------------------

SAGEMAKER_NAME = re.compile(SAGEMAKER_NAME_PATTERN)  # endpoint, config, variant
MAX_NAME = MAX_SAGEMAKER_NAME
HASH_CHARS = 8
MAX_ENDPOINT_NAME = 40  # leaves at least 12 characters for the version in derived names

# The Hugging Face inference toolkit's contract for a custom inference.py inside the model.
INFERENCE_PROGRAM = "inference.py"
MODEL_CODE_DIR = "/opt/ml/model/code"
ARCHIVE_CODE = "code/inference.py"
SERVING_ENV = {
    "SAGEMAKER_PROGRAM": INFERENCE_PROGRAM,
    "SAGEMAKER_SUBMIT_DIRECTORY": MODEL_CODE_DIR,
    "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
}

# The blue/green bounds (CANARY_PERCENT, WAIT_SECONDS, ...) are fmops.config's: the config's
# validators check them. AutoRollbackConfig.Alarms: 1-10.
ALARMS = (1, 10)

NAMESPACE = "AWS/SageMaker"
SCALING_NAMESPACE = "sagemaker"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"

# EndpointStatus values (botocore's enum) and what they mean for a wait.
IN_PROGRESS = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})
BROKEN = frozenset({"Failed", "UpdateRollbackFailed", "OutOfService", "Deleting"})
# Right after UpdateEndpoint a read may still show the old config InService (DescribeEndpoint is
# eventually consistent); only after this many such reads, with no update seen, is it a failure.
SETTLE_POLLS = 3
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


class EndpointError(PlanError):
    """Endpoint settings or a request refused before anything is sent; says why and the fix."""


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


class EndpointBusyError(RuntimeError):
    """The endpoint is changing under another deployment; transient, try again once it settles."""


# -- settings --------------------------------------------------------------------------------------

_ROUTING = "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration"
REQUEST_LABELS = TrafficLabels(
    canary=f"{_ROUTING}.CanarySize.Value",
    linear=f"{_ROUTING}.LinearStepSize.Value",
    wait=f"{_ROUTING}.WaitIntervalInSeconds",
    termination="DeploymentConfig.BlueGreenUpdatePolicy.TerminationWaitInSeconds",
    timeout="DeploymentConfig.BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds",
)
NO_BAKE = (
    "deployment.traffic.wait_seconds is 0: no baking period, so the rollback alarms get no time "
    "to stop a bad version before the old fleet goes; set it (600, say) for automatic rollback"
)


# -- names -----------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", str(text).lower())).strip("-")


def check_endpoint_name(name: str) -> str:
    if not SAGEMAKER_NAME.match(name) or len(name) > MAX_ENDPOINT_NAME:
        raise EndpointError(
            f"endpoint name {name!r}: must be letters, digits and inner hyphens, at most "
            f"{MAX_ENDPOINT_NAME} characters (the model and config names add the version and a "
            "hash to it within SageMaker's 63): choose a shorter deployment.endpoint_name"
        )
    return name


def request_digest(request: dict[str, Any], name_field: str) -> str:
    """A short hash of what a request asks for: tags and its own name left out."""
    content = {k: v for k, v in request.items() if k not in ("Tags", name_field)}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def versioned_name(endpoint_name: str, model_version: str, digest: str) -> str:
    """``<endpoint>-v<version>-<hash>``, at most 63 characters of SageMaker's alphabet."""
    check_endpoint_name(endpoint_name)
    room = MAX_NAME - len(endpoint_name) - len("-v-") - len(digest)
    version = _slug(model_version)[:room].strip("-") or "0"
    name = f"{endpoint_name}-v{version}-{digest}"
    assert SAGEMAKER_NAME.match(name) and len(name) <= MAX_NAME, name
    return name


def version_prefix(endpoint_name: str, model_version: str) -> str:
    return versioned_name(endpoint_name, model_version, "x")[:-1]


def alarm_names(endpoint_name: str, variant: str, alarms: AlarmSettings) -> dict[str, str]:
    """Metric name -> alarm name; stable across versions of the endpoint."""
    base = f"fmops-{endpoint_name}-{variant}"
    names = {
        "Invocation5XXErrors": f"{base}-invocation-5xx-errors",
        "ModelLatency": f"{base}-model-latency",
    }
    if alarms.max_4xx_error_rate is not None:
        names["Invocation4XXErrors"] = f"{base}-invocation-4xx-errors"
    return names


def resource_id(endpoint_name: str, variant: str) -> str:
    """The Application Auto Scaling resource id of an endpoint variant."""
    return f"endpoint/{endpoint_name}/variant/{variant}"


def scaling_policy_name(endpoint_name: str, variant: str) -> str:
    return f"fmops-{endpoint_name}-{variant}-invocations-per-instance"


# -- validation against the service models ---------------------------------------------------------


@lru_cache(maxsize=4)
def _service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # Java/ECMAScript-only syntax (\p{...}, surrogate ranges): not checked here
        return None


def model_problems(shape: Any, value: Any, path: str) -> list[str]:
    """What botocore's ``ParamValidator`` leaves out: ``max``, ``enum`` and ``pattern``.

    ``ParamValidator`` checks types, required members and minimums only; the service checks the
    rest and answers ValidationException. Patterns are matched in full, as SageMaker does for its
    names (its errors quote them anchored); those Python's ``re`` cannot compile are skipped.
    """
    problems: list[str] = []
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                problems += model_problems(shape.members[key], item, f"{path}.{key}")
    elif kind == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} items, at most {meta['max']}")
        for index, item in enumerate(value):
            problems += model_problems(shape.member, item, f"{path}[{index}]")
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} entries, at most {meta['max']}")
        for key, item in value.items():
            problems += model_problems(shape.key, key, f"{path} key {key!r}")
            problems += model_problems(shape.value, item, f"{path}[{key!r}]")
    elif kind == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} characters, at most {meta['max']}")
        if "enum" in meta and value not in meta["enum"]:
            problems.append(f"{path}: {value!r} is not one of the API's values")
        compiled = _pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None and not compiled.fullmatch(value):
            problems.append(f"{path}: {value!r} does not match the pattern {meta['pattern']}")
    elif (
        kind in ("integer", "long", "double", "float")
        and isinstance(value, int | float)
        and "max" in meta
        and value > meta["max"]
    ):
        problems.append(f"{path}: {value} is above the API's maximum {meta['max']}")
    return problems


def validate(service: str, operation: str, request: dict[str, Any]) -> None:
    """Refuse a request its service would refuse as malformed: botocore's validator (types,
    required members, minimums) plus ``model_problems`` (maximums, enums, patterns)."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    shape = _service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    problems += model_problems(shape, request, operation)
    if problems:
        raise EndpointError(
            f"{service} {operation}: the service model refuses the request: " + "; ".join(problems)
        )
    if service == "sagemaker":
        from fmops.jobs.local import validate_request  # the check every fmops request meets

        try:
            validate_request(operation, request)
        except ParamValidationError as err:  # pragma: no cover - the check above is a superset
            raise EndpointError(f"{operation}: {err}") from None


# -- request builders ------------------------------------------------------------------------------


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def check_model_data_url(uri: str) -> str:
    if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+\.tar\.gz", uri):
        raise EndpointError(
            f"model data {uri!r}: SageMaker hosting takes the training job's model archive, an "
            "s3://<bucket>/<key>.tar.gz URI (DescribeTrainingJob's "
            "ModelArtifacts.S3ModelArtifacts)"
        )
    return uri


def model_request(
    settings: SageMakerSettings,
    *,
    image: str,
    model_data_url: str,
    tags: dict[str, str],
) -> dict[str, Any]:
    """CreateModel (without ``ModelName``): the Hugging Face inference image serving the
    archive's ``code/inference.py``, as the execution role, isolated, in the VPC if configured."""
    return {
        "PrimaryContainer": {
            "Image": image,
            "Mode": "SingleModel",
            "ModelDataUrl": check_model_data_url(model_data_url),
            "Environment": {**SERVING_ENV, "SAGEMAKER_REGION": settings.region, **JOB_ENV},
        },
        "ExecutionRoleArn": settings.role_arn,
        "EnableNetworkIsolation": settings.network_isolation,
        **options.vpc_config(settings),
        "Tags": _tag_list(tags),
    }


def endpoint_config_request(
    settings: SageMakerSettings,
    endpoint: EndpointSettings,
    *,
    model_name: str,
    instance_type: str,
    instance_count: int,
    tags: dict[str, str],
    catalog: Catalog | None,
    notes: list[str],
) -> dict[str, Any]:
    """CreateEndpointConfig (without ``EndpointConfigName``): one variant, its name kept across
    versions; the endpoint key where the instance type allows it."""
    request: dict[str, Any] = {
        "ProductionVariants": [
            {
                "VariantName": endpoint.variant_name,
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": instance_count,
                "InitialVariantWeight": 1.0,
            }
        ],
        "Tags": _tag_list(tags),
    }
    _set_endpoint_key(request, settings.kms.endpoint_key_id, instance_type, catalog, notes)
    return request


def _set_endpoint_key(
    request: dict[str, Any],
    key: str | None,
    instance_type: str,
    catalog: Catalog | None,
    notes: list[str],
) -> None:
    """``KmsKeyId`` in a CreateEndpointConfig request, unless the instance type has local NVMe."""
    request.pop("KmsKeyId", None)
    if key and options.has_nvme(instance_type, catalog):
        notes.append(
            f"KmsKeyId left out on {instance_type}: it has local NVMe instance storage, which "
            "SageMaker encrypts with a hardware key; CreateEndpointConfig fails when KmsKeyId is "
            "given for such a type"
        )
    elif key:
        request["KmsKeyId"] = key


def deployment_config(traffic: TrafficSettings, alarms: list[str]) -> dict[str, Any]:
    """UpdateEndpoint's DeploymentConfig: blue/green with traffic shifting and auto-rollback."""
    routing: dict[str, Any] = {
        "Type": traffic.routing_type,
        "WaitIntervalInSeconds": traffic.wait_seconds,
    }
    if traffic.mode == "canary":
        routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": traffic.canary_percent}
    elif traffic.mode == "linear":
        routing["LinearStepSize"] = {
            "Type": "CAPACITY_PERCENT",
            "Value": traffic.linear_step_percent,
        }
    return {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": traffic.termination_wait_seconds,
            "MaximumExecutionTimeoutInSeconds": traffic.timeout_seconds,
        },
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": name} for name in alarms]},
    }


def _percent_of(size: dict[str, Any] | None, instance_count: int | None) -> Any:
    """A CapacitySize as a percentage of the variant (None when it cannot be known)."""
    if not size:
        return None
    if size.get("Type") == "CAPACITY_PERCENT":
        return size.get("Value")
    if size.get("Type") == "INSTANCE_COUNT" and instance_count:
        value = size.get("Value")
        return math.ceil(100 * value / instance_count) if isinstance(value, int) else value
    return None


def deployment_config_problems(
    config: dict[str, Any], instance_count: int | None = None
) -> list[str]:
    """Where a DeploymentConfig (built here or elsewhere) breaks the blue/green bounds."""
    if "RollingUpdatePolicy" in config:
        return ["DeploymentConfig.RollingUpdatePolicy: fmops deploys blue/green only"]
    policy = config.get("BlueGreenUpdatePolicy")
    if not policy:
        return ["DeploymentConfig.BlueGreenUpdatePolicy is missing: fmops deploys blue/green"]
    routing = policy.get("TrafficRoutingConfiguration", {})
    mode = routing.get("Type")
    problems = traffic_problems(
        mode,
        canary_percent=_percent_of(routing.get("CanarySize"), instance_count),
        linear_step_percent=_percent_of(routing.get("LinearStepSize"), instance_count),
        wait=routing.get("WaitIntervalInSeconds"),
        termination=policy.get("TerminationWaitInSeconds", 0),
        timeout=policy.get("MaximumExecutionTimeoutInSeconds"),
        labels=REQUEST_LABELS,
    )
    if mode == "CANARY" and "CanarySize" not in routing:
        problems.append(f"{_ROUTING}.CanarySize is required for CANARY")
    if mode == "LINEAR" and "LinearStepSize" not in routing:
        problems.append(f"{_ROUTING}.LinearStepSize is required for LINEAR")
    alarms = config.get("AutoRollbackConfiguration", {}).get("Alarms", [])
    low, high = ALARMS
    if not low <= len(alarms) <= high:
        problems.append(
            f"DeploymentConfig.AutoRollbackConfiguration.Alarms: {len(alarms)} alarms; "
            f"{low} to {high}: without one, nothing rolls a bad model back"
        )
    return problems


def endpoint_config_problems(request: dict[str, Any], catalog: Catalog | None = None) -> list[str]:
    """Where a CreateEndpointConfig request breaks fmops' rules (the NVMe/KMS rule)."""
    problems = []
    if request.get("KmsKeyId"):
        for variant in request.get("ProductionVariants", []):
            instance = variant.get("InstanceType", "")
            if options.has_nvme(instance, catalog):
                problems.append(
                    f"KmsKeyId with {instance} (variant {variant.get('VariantName')}): it has "
                    "local NVMe instance storage and CreateEndpointConfig fails for it with a "
                    "KmsKeyId; leave KmsKeyId out (the instance store is encrypted by hardware)"
                )
    return problems


def alarm_requests(
    endpoint_name: str, variant: str, alarms: AlarmSettings, tags: dict[str, str]
) -> list[dict[str, Any]]:
    """PutMetricAlarm for each metric that rolls a deployment back.

    ``Invocation5XXErrors`` (and ``4XX``) is 1 for each failed invocation and 0 otherwise, so its
    Average is the error rate. ``ModelLatency`` is in MICROSECONDS: the threshold is
    ``max_latency_ms x 1000``. Missing data (no traffic, e.g. during a canary's first minute) is
    not breaching: an idle endpoint is not a failing one.
    """
    names = alarm_names(endpoint_name, variant, alarms)
    dimensions = [
        {"Name": "EndpointName", "Value": endpoint_name},
        {"Name": "VariantName", "Value": variant},
    ]
    common = {
        "Namespace": NAMESPACE,
        "Dimensions": dimensions,
        "Period": alarms.period_seconds,
        "EvaluationPeriods": alarms.evaluation_periods,
        "DatapointsToAlarm": alarms.datapoints_to_alarm,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "Tags": _tag_list(tags),
    }
    rates = {"Invocation5XXErrors": alarms.max_5xx_error_rate}
    if alarms.max_4xx_error_rate is not None:
        rates["Invocation4XXErrors"] = alarms.max_4xx_error_rate
    requests = []
    for metric, rate in rates.items():
        requests.append(
            {
                "AlarmName": names[metric],
                "AlarmDescription": (
                    f"fmops: rolls a deployment of {endpoint_name}/{variant} back when more than "
                    f"{rate:.2%} of invocations answer {metric[10:13]}"
                ),
                "MetricName": metric,
                "Statistic": "Average",
                "Threshold": rate,
                **common,
            }
        )
    statistic = alarms.latency_statistic
    microseconds = alarms.max_latency_ms * 1000
    requests.append(
        {
            "AlarmName": names["ModelLatency"],
            "AlarmDescription": (
                f"fmops: rolls a deployment of {endpoint_name}/{variant} back when the "
                f"{statistic} ModelLatency exceeds {alarms.max_latency_ms:g} ms "
                f"({microseconds:g} microseconds, the metric's unit)"
            ),
            "MetricName": "ModelLatency",
            **(
                {"ExtendedStatistic": statistic}
                if statistic.startswith("p")
                else {"Statistic": statistic}
            ),
            "Threshold": microseconds,
            **common,
        }
    )
    return requests


def scaling_requests(
    endpoint_name: str, variant: str, scaling: ScalingSettings
) -> tuple[dict[str, Any], dict[str, Any]]:
    """RegisterScalableTarget and PutScalingPolicy (target tracking on invocations/instance)."""
    target = {
        "ServiceNamespace": SCALING_NAMESPACE,
        "ResourceId": resource_id(endpoint_name, variant),
        "ScalableDimension": SCALABLE_DIMENSION,
    }
    register = {
        **target,
        "MinCapacity": scaling.min_instances,
        "MaxCapacity": scaling.max_instances,
    }
    policy = {
        "PolicyName": scaling_policy_name(endpoint_name, variant),
        **target,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": scaling.target_invocations_per_instance,
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
            "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
        },
    }
    return register, policy


# -- the plan --------------------------------------------------------------------------------------


def hosting_instance(
    catalog: Catalog, endpoint: EndpointSettings, parameters: int, model: str
) -> Choice:
    """The instance type for the endpoint: the pinned one if it holds the model, else the
    catalog's cheapest type that is offered for endpoints and fits."""
    label = f"endpoint of {model}"
    try:
        need = hosting_memory(parameters, endpoint.serving_precision)
        if endpoint.pinned_instance_type:
            choice = catalog.check_pinned(endpoint.pinned_instance_type, need, model=label)
            price, ceiling = choice.instance.price_per_hour, endpoint.max_price_per_hour
            if ceiling is not None and price is not None and price > ceiling:
                raise EndpointError(
                    f"sagemaker.endpoint.instance_type: the pinned {choice.name} costs "
                    f"{choice.instance.price}, above sagemaker.endpoint.max_price_per_hour "
                    f"({ceiling}): raise the ceiling, pin a cheaper type, or set instance_type: "
                    "auto"
                )
            return choice
        return catalog.choose(
            need,
            allowed=endpoint.allowed_instance_types or None,
            max_price=endpoint.max_price_per_hour,
            model=label,
        )
    except CatalogError as err:
        raise EndpointError(f"sagemaker.endpoint.instance_type for {model}: {err}") from None


def _check(requests: dict[str, Any], instance_count: int, catalog: Catalog | None) -> None:
    validate("sagemaker", "CreateModel", requests["CreateModel"])
    validate("sagemaker", "CreateEndpointConfig", requests["CreateEndpointConfig"])
    validate("sagemaker", "CreateEndpoint", requests["CreateEndpoint"])
    validate("sagemaker", "UpdateEndpoint", requests["UpdateEndpoint"])
    for alarm in requests["PutMetricAlarm"]:
        validate("cloudwatch", "PutMetricAlarm", alarm)
    if requests.get("RegisterScalableTarget"):
        validate(
            "application-autoscaling", "RegisterScalableTarget", requests["RegisterScalableTarget"]
        )
        validate("application-autoscaling", "PutScalingPolicy", requests["PutScalingPolicy"])
    problems = endpoint_config_problems(requests["CreateEndpointConfig"], catalog)
    problems += deployment_config_problems(
        requests["UpdateEndpoint"]["DeploymentConfig"], instance_count
    )
    if problems:
        raise EndpointError("endpoint requests refused: " + "; ".join(problems))


def _named(
    endpoint_name: str,
    model_version: str,
    model: dict[str, Any],
    config: dict[str, Any],
    deployment: dict[str, Any],
) -> dict[str, Any]:
    """The named requests: the config names the model, the endpoint requests name the config."""
    model_name = versioned_name(endpoint_name, model_version, request_digest(model, "ModelName"))
    model = {"ModelName": model_name, **model}
    config = copy.deepcopy(config)
    for variant in config["ProductionVariants"]:
        variant["ModelName"] = model_name
    config_name = versioned_name(
        endpoint_name, model_version, request_digest(config, "EndpointConfigName")
    )
    tags = config.get("Tags", [])
    return {
        "CreateModel": model,
        "CreateEndpointConfig": {"EndpointConfigName": config_name, **config},
        "CreateEndpoint": {
            "EndpointName": endpoint_name,
            "EndpointConfigName": config_name,
            "Tags": tags,
        },
        "UpdateEndpoint": {
            "EndpointName": endpoint_name,
            "EndpointConfigName": config_name,
            "DeploymentConfig": deployment,
            # the new config's instance count and weight, not the old fleet's
            "RetainAllVariantProperties": False,
        },
    }


def plan_endpoint(
    settings: SageMakerSettings,
    endpoint: EndpointSettings | None = None,
    *,
    traffic: TrafficSettings | None = None,
    alarms: AlarmSettings | None = None,
    endpoint_name: str,
    model_version: str,
    model_data_url: str,
    parameters: int,
    tags: dict[str, str] | None = None,
    catalog: Catalog | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Every request of one deployment, named and validated, offline; JSON-able.

    ``endpoint`` defaults to ``settings.endpoint`` (the config's ``sagemaker.endpoint``),
    ``traffic`` and ``alarms`` to their defaults (the config's are ``deployment.traffic`` and
    ``deployment.alarms``: ``plan_deployment`` takes all of them from a config).
    ``parameters`` is the model's parameter count (``fmops.catalog.count_parameters`` on the
    base model's safetensors), which sizes the instance with ``hosting_memory`` at
    ``endpoint.serving_precision``; ``model_data_url`` is the training job's ``model.tar.gz``.
    """
    from fmops.catalog import load_catalog
    from fmops.sagemaker.images import image_uri

    endpoint = endpoint or settings.endpoint
    traffic = traffic or TrafficSettings()
    alarms = alarms or AlarmSettings()
    check_endpoint_name(endpoint_name)
    if catalog is None:
        try:
            catalog = load_catalog(settings.region)
        except CatalogError as err:
            raise EndpointError(f"sagemaker.region: {err}") from None
    label = model or f"{endpoint_name} version {model_version}"
    choice = hosting_instance(catalog, endpoint, parameters, label)
    notes: list[str] = []
    resource_tags = {
        **(tags or {}),
        "fmops:endpoint": endpoint_name,
        "fmops:model-version": str(model_version),
    }
    variant = endpoint.variant_name
    names = alarm_names(endpoint_name, variant, alarms)
    model_part = model_request(
        settings,
        image=image_uri("inference", settings, choice.name),
        model_data_url=model_data_url,
        tags=resource_tags,
    )
    config_part = endpoint_config_request(
        settings,
        endpoint,
        model_name="",  # named by _named, from the model request's hash
        instance_type=choice.name,
        instance_count=endpoint.instance_count,
        tags=resource_tags,
        catalog=catalog,
        notes=notes,
    )
    requests = _named(
        endpoint_name,
        str(model_version),
        model_part,
        config_part,
        deployment_config(traffic, list(names.values())),
    )
    # The alarms outlive a version (CloudWatch also ignores Tags when it updates an alarm).
    alarm_tags = {k: v for k, v in resource_tags.items() if k != "fmops:model-version"}
    requests["PutMetricAlarm"] = alarm_requests(endpoint_name, variant, alarms, alarm_tags)
    if endpoint.scaling.enabled:
        register, policy = scaling_requests(endpoint_name, variant, endpoint.scaling)
        requests["RegisterScalableTarget"], requests["PutScalingPolicy"] = register, policy
    else:
        requests["RegisterScalableTarget"] = requests["PutScalingPolicy"] = None
    _check(requests, endpoint.instance_count, catalog)
    if traffic.mode != "all_at_once" and endpoint.instance_count == 1:
        notes.append(
            f"{traffic.mode} with one instance: a traffic step cannot be smaller than an "
            "instance, so the first step takes the whole new fleet; give "
            "sagemaker.endpoint.instance_count >= 2 for a real canary or linear shift"
        )
    if traffic.wait_seconds == 0:
        notes.append(NO_BAKE)
    if not settings.network_isolation:
        notes.append("network isolation is off: the serving container can reach the internet")
    log.info(
        "planned endpoint %s version %s: %s x %d, %s traffic shift; %s",
        endpoint_name,
        model_version,
        choice.name,
        endpoint.instance_count,
        traffic.mode,
        "; ".join(notes) or "no notes",
    )
    return {
        "endpoint_name": endpoint_name,
        "model_version": str(model_version),
        "variant_name": variant,
        "model_name": requests["CreateModel"]["ModelName"],
        "endpoint_config_name": requests["CreateEndpointConfig"]["EndpointConfigName"],
        "model_data_url": model_data_url,
        "region": settings.region,
        "instance": {**choice.as_record(), "explain": choice.explain(), "tried": []},
        "instance_count": endpoint.instance_count,
        "alarm_names": list(names.values()),
        "traffic": {
            **traffic.model_dump(),
            "baking_periods": baking_periods(traffic.mode, traffic.step_percent),
            "total_wait_seconds": total_wait_seconds(
                traffic.mode,
                traffic.wait_seconds,
                traffic.termination_wait_seconds,
                traffic.step_percent,
            ),
            "execution_timeout_seconds": traffic.timeout_seconds,
        },
        "requests": requests,
        "wait": {
            "timeout_seconds": endpoint.deployment_wait_seconds(traffic),
            "poll_seconds": endpoint.poll_seconds,
        },
        "scaling": endpoint.scaling.model_dump(),
        "notes": notes,
        # What a capacity fallback needs to size and key the next instance type (next_instance).
        "sizing": {"parameters": parameters, "serving_precision": endpoint.serving_precision},
        "kms_key_id": settings.kms.endpoint_key_id,
        "capacity_fallback": [],
    }


def plan_deployment(
    config: PipelineConfig,
    *,
    model_version: str,
    model_data_url: str,
    parameters: int,
    tags: dict[str, str] | None = None,
    catalog: Catalog | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """``plan_endpoint`` with everything the config says: ``sagemaker`` and its ``endpoint``,
    ``deployment.endpoint_name``, ``deployment.traffic`` and ``deployment.alarms``."""
    settings = options.settings_of(config)
    return plan_endpoint(
        settings,
        settings.endpoint,
        traffic=config.deployment.traffic,
        alarms=config.deployment.alarms,
        endpoint_name=config.deployment.endpoint_name,
        model_version=model_version,
        model_data_url=model_data_url,
        parameters=parameters,
        tags=tags,
        catalog=catalog,
        model=model,
    )


def with_instance_count(plan: dict[str, Any], count: int) -> dict[str, Any]:
    """The plan with the new fleet started at ``count`` instances (a new config name)."""
    plan = copy.deepcopy(plan)
    requests = plan["requests"]
    config = requests["CreateEndpointConfig"]
    for variant in config["ProductionVariants"]:
        variant["InitialInstanceCount"] = count
    _rename_config(plan)
    plan["instance_count"] = count
    return plan


# -- capacity fallback ---------------------------------------------------------------------------


def _gib(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _first_line(text: str, limit: int = 200) -> str:
    lines = (text or "").strip().splitlines()
    return (lines[0] if lines else "no reason given")[:limit]


def _rename_config(plan: dict[str, Any]) -> None:
    """Name the plan's endpoint config after its request (and the endpoint requests after it)."""
    requests = plan["requests"]
    config = requests["CreateEndpointConfig"]
    name = versioned_name(
        plan["endpoint_name"],
        plan["model_version"],
        request_digest(config, "EndpointConfigName"),
    )
    config["EndpointConfigName"] = name
    requests["CreateEndpoint"]["EndpointConfigName"] = name
    requests["UpdateEndpoint"]["EndpointConfigName"] = name
    plan["endpoint_config_name"] = name


def next_instance(
    plan: dict[str, Any], why: str, *, failed: str | None = None, catalog: Catalog | None = None
) -> dict[str, Any] | None:
    """The plan moved to the next instance type of its ranking, after SageMaker had no capacity
    (or no quota) for ``failed`` (default: the plan's type) because ``why``; None when the type
    is pinned or no type is left (``no_capacity_error`` says so).

    The ranking is the catalog's, made when the plan was (``hosting_instance``): the types that
    fit the model at its serving precision, cheapest first, within
    ``sagemaker.endpoint.allowed_instance_types`` and ``max_price_per_hour``. The new plan has a
    new endpoint config (the name is hashed over the request, so it differs), the endpoint key
    set by the NVMe rule for the new type, the old type in ``instance.tried`` and a note in
    ``capacity_fallback``; the model is the same (the inference image is the GPU one for every
    type of the catalog, which holds GPU types only).
    """
    from fmops.catalog import load_catalog

    instance = plan["instance"]
    current = instance["instance_type"]
    failed = failed or current
    fallbacks = list(instance.get("fallbacks") or [])
    if failed in fallbacks:  # a retry found a fallback's endpoint failed: go on after it
        fallbacks = fallbacks[fallbacks.index(failed) + 1 :]
    if instance.get("pinned") or not fallbacks:
        return None
    region = plan["region"]
    try:
        catalog = catalog or load_catalog(region)
    except CatalogError as err:
        raise EndpointError(f"sagemaker.region: {err}") from None
    sizing = plan["sizing"]
    need = hosting_memory(sizing["parameters"], sizing["serving_precision"])
    # The catalog may have changed since the plan was made: skip a type that no longer fits.
    fitting = [t for t in fallbacks if t in catalog and catalog.fit(t, need)[0]]
    if not fitting:
        return None
    following = fitting[0]
    _, reason = catalog.fit(following, need)
    choice = Choice(catalog.get(following), need, reason, tuple(fitting[1:]))
    note = (
        f"no capacity for {failed} in {region}: falling back to {following} (next in the "
        f"catalog ranking that fits {_gib(need.gib)} GiB, {choice.instance.price})"
    )
    moved = copy.deepcopy(plan)
    config = moved["requests"]["CreateEndpointConfig"]
    for variant in config["ProductionVariants"]:
        variant["InstanceType"] = following
    notes = [n for n in plan["notes"] if not n.startswith(f"KmsKeyId left out on {current}")]
    _set_endpoint_key(config, plan.get("kms_key_id"), following, catalog, notes)
    _rename_config(moved)
    validate("sagemaker", "CreateEndpointConfig", config)
    validate("sagemaker", "CreateEndpoint", moved["requests"]["CreateEndpoint"])
    validate("sagemaker", "UpdateEndpoint", moved["requests"]["UpdateEndpoint"])
    problems = endpoint_config_problems(config, catalog)
    if problems:
        raise EndpointError("endpoint requests refused: " + "; ".join(problems))
    moved["instance"] = {
        **choice.as_record(),
        "explain": _fallback_explain(choice, need, failed),
        "tried": [*instance.get("tried", []), {"instance_type": failed, "why": why}],
    }
    moved["capacity_fallback"] = [*plan.get("capacity_fallback", []), note]
    moved["notes"] = [*notes, note]
    log.warning("%s: %s; SageMaker said: %s", plan["endpoint_name"], note, _first_line(why))
    return moved


def _fallback_explain(choice: Choice, need: MemoryEstimate, failed: str) -> str:
    text = (
        f"{choice.name}, the next in the catalog ranking after {failed} had no capacity: "
        f"{choice.reason}. Need: {need.explain()}"
    )
    if choice.fallbacks:
        text += f". Fallbacks if it has no capacity: {', '.join(choice.fallbacks)}"
    return text


def no_capacity_error(
    instance: dict[str, Any],
    *,
    endpoint_name: str,
    region: str,
    failed: str,
    why: str,
    status: str | None,
    config_name: str | None,
    deleted: bool = False,
) -> NoCapacityError:
    """The error of a deployment SageMaker had no capacity for, with no type left to try:
    ``instance`` is the plan's (or handle's) instance record, ``failed`` the last type tried."""
    tried = [*instance.get("tried", []), {"instance_type": failed, "why": why}]
    gone = (
        f" The failed endpoint {endpoint_name} is being deleted (it never served), so that a "
        "later run can create it again."
        if deleted
        else ""
    )
    if instance.get("pinned"):
        message = (
            f"no capacity for {failed} in {region} for endpoint {endpoint_name}: "
            f"{_first_line(why)}. sagemaker.endpoint.instance_type pins {failed}, so fmops does "
            "not fall back to another type: retry later, ask AWS for capacity or a quota "
            f"increase for {failed}, or set sagemaker.endpoint.instance_type: auto to let fmops "
            "fall back along the catalog ranking."
        )
    else:
        listing = "; ".join(f"{t['instance_type']} ({_first_line(t['why'])})" for t in tried)
        message = (
            f"no capacity in {region} for endpoint {endpoint_name} on any instance type of the "
            "catalog ranking that fits the model within sagemaker.endpoint."
            f"allowed_instance_types and max_price_per_hour; tried {len(tried)}: {listing}. "
            "Retry later, ask AWS for a quota increase for one of them, or widen "
            "sagemaker.endpoint.allowed_instance_types or max_price_per_hour."
        )
    return NoCapacityError(
        message + gone, endpoint_name=endpoint_name, status=status, config_name=config_name
    )


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


def await_deployment(
    describe: Callable[[], dict[str, Any]],
    expected_config_name: str,
    *,
    previous_config_name: str | None = None,
    timeout_seconds: float,
    poll_seconds: float = 30,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    explain: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Poll ``describe`` until the deployment succeeds (returns the description) or fails
    (``DeploymentFailedError``, with ``explain()`` appended: the alarms in ALARM, say)."""
    verdict, description = watch_deployment(
        describe,
        expected_config_name,
        previous_config_name=previous_config_name,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        sleep=sleep,
        clock=clock,
    )
    if verdict.state == "succeeded":
        return description
    extra = explain() if explain and verdict.state == "failed" else ""
    raise verdict.error(description.get("EndpointName", ""), extra)


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


# -- running a deployment --------------------------------------------------------------------------


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


def _describe(call: Callable[..., dict[str, Any]], **name: str) -> dict[str, Any] | None:
    try:
        return call(**name)
    except ClientError as err:
        if _missing(err):
            return None
        raise


def check_model_archive(s3: Any, model_data_url: str) -> None:
    """Refuse a model archive without ``code/inference.py`` (streamed, stops once found)."""
    from fmops.sagemaker.staging import split_uri

    bucket, key = split_uri(check_model_data_url(model_data_url))
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        with tarfile.open(fileobj=body, mode="r|gz") as archive:
            for member in archive:
                if member.isfile() and member.name.removeprefix("./") == ARCHIVE_CODE:
                    return
    except tarfile.TarError as err:
        raise EndpointError(f"{model_data_url} is not a gzipped tar archive: {err}") from None
    finally:
        body.close()
    raise EndpointError(MISSING_CODE.format(uri=model_data_url, code=ARCHIVE_CODE))


def _ensure(
    sagemaker: Any, kind: str, request: dict[str, Any], name_field: str
) -> Literal["created", "reused"]:
    name = request[name_field]
    if _describe(getattr(sagemaker, f"describe_{kind}"), **{name_field: name}) is not None:
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
    config = _describe(sagemaker.describe_endpoint_config, EndpointConfigName=config_name) or {}
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


def find_endpoint(sagemaker: Any, endpoint_name: str) -> dict[str, Any] | None:
    """DescribeEndpoint, or None when there is no such endpoint (any more)."""
    return _describe(sagemaker.describe_endpoint, EndpointName=endpoint_name)


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
        _first_line(why),
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
    now: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """Start one deployment of ``plan_endpoint``'s plan, up to and including CreateEndpoint or
    UpdateEndpoint; does not wait. Idempotent on retry.

    Returns the deployment's handle (JSON-able): ``action`` is ``created``, ``updated``,
    ``reattached`` (a deployment of this version was already under way) or ``unchanged``
    (already serving it: nothing to wait for); ``endpoint_config_name`` is the config it must
    end ``InService`` on, ``started_at`` (``now()``, epoch seconds) and ``timeout_seconds`` bound
    the wait. Then wait (``watch_deployment``, or ``DeploymentWatch`` from the triggerer) and
    conclude with ``finish_deployment``, or with ``fall_back`` when it failed. Raises
    ``DeploymentFailedError`` when the endpoint cannot be updated (Failed, or a rollback alarm
    already in ALARM), ``EndpointBusyError`` when another deployment holds the endpoint,
    ``EndpointError`` when the model archive lacks its serving code (``s3`` given).

    Capacity: CreateEndpoint or UpdateEndpoint refused with ``ResourceLimitExceeded`` for the
    instance type moves the plan to the next type of its ranking (``next_instance``) and tries
    again, until none is left (``NoCapacityError``). A retry that finds this version's new
    endpoint ``Failed`` for want of capacity deletes it and returns ``action`` ``deleting`` (as
    ``fall_back`` does), with the plan of the next type; one that finds it ``Deleting`` waits
    for it the same way.
    """
    if s3 is not None:
        check_model_archive(s3, plan["model_data_url"])
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
    handle = start_deployment(plan, s3=s3, **aws)
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
