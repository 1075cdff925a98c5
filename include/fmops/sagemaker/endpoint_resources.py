"""SageMaker real-time endpoints, the resources: their names and the requests that create them,
what fmops_deploy sends to serve a model version blue/green, built offline (no AWS call, no
credentials).

Here are SageMaker's rules and fmops' constants, ``EndpointError``, the deterministic names and
the request builders: CreateModel, CreateEndpointConfig, UpdateEndpoint's blue/green
``DeploymentConfig``, PutMetricAlarm, RegisterScalableTarget and PutScalingPolicy, with the
checks of fmops' rules on them. ``fmops.sagemaker.endpoint_plan`` puts them together into the
plan of one deployment and validates each against botocore's service models
(``fmops.sagemaker.service_model``).

The settings are the config's: ``sagemaker.endpoint`` (instance, count, scaling, waits),
``deployment.traffic`` (how a new version takes the traffic, shared with the local target) and
``deployment.alarms`` (what rolls it back); ``fmops.config`` defines them and the blue/green
bounds their validators check, and this module re-exports them.

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
repacked or network-isolated model. So a classifier's ``model.tar.gz`` must contain
``code/inference.py`` (no ``code/requirements.txt``: the toolkit would pip-install it at start-up,
which network isolation forbids); ``fmops.sagemaker.endpoint_deploy.check_model_archive`` refuses
an archive without it before anything is created. A generative model is served by the Hugging
Face LLM (TGI) image, which reads the model folder itself: its container and the variant's
start-up timeouts are ``fmops.sagemaker.hosting``'s, given to the builders here.

Checks (each refusal names the field, the value, the allowed range and the fix): the
traffic-shifting bounds of the SageMaker API reference (canary at most 50%, linear steps 10-50%,
waits 0-3600 s, execution timeout 600-28800 s and longer than the waits it contains), 1 to 10
rollback alarms, and ``KmsKeyId`` never with an instance type that has local NVMe storage (the
same rule as ``VolumeKmsKeyId`` for jobs, from the catalog's ``nvme`` flag).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import TYPE_CHECKING, Any

from fmops.catalog import Catalog
from fmops.deployment.settings import (
    AlarmSettings,
    TrafficLabels,
    TrafficSettings,
    traffic_problems,
)
from fmops.jobs.specs import JOB_ENV, PlanError
from fmops.sagemaker import options
from fmops.sagemaker.settings import (
    MAX_SAGEMAKER_NAME,
    SAGEMAKER_NAME_PATTERN,
    EndpointSettings,
    ScalingSettings,
)

if TYPE_CHECKING:
    from fmops.sagemaker.settings import SageMakerSettings

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

# The blue/green bounds (CANARY_PERCENT, WAIT_SECONDS, ...) are fmops.deployment.settings': the
# config's validators check them. AutoRollbackConfig.Alarms: 1-10.
ALARMS = (1, 10)

NAMESPACE = "AWS/SageMaker"
SCALING_NAMESPACE = "sagemaker"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
SCALING_METRIC = "SageMakerVariantInvocationsPerInstance"


class EndpointError(PlanError):
    """Endpoint settings or a request refused before anything is sent; says why and the fix."""


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


def toolkit_environment(region: str) -> dict[str, str]:
    """The Hugging Face inference toolkit's environment: serve ``code/inference.py``."""
    return {**SERVING_ENV, "SAGEMAKER_REGION": region, **JOB_ENV}


def model_request(
    settings: SageMakerSettings,
    *,
    image: str,
    model_data_url: str,
    tags: dict[str, str],
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """CreateModel (without ``ModelName``): the serving image and its ``environment`` (default:
    the Hugging Face inference toolkit serving the archive's ``code/inference.py``), as the
    execution role, isolated, in the VPC if configured."""
    if environment is None:
        environment = toolkit_environment(settings.region)
    return {
        "PrimaryContainer": {
            "Image": image,
            "Mode": "SingleModel",
            "ModelDataUrl": check_model_data_url(model_data_url),
            "Environment": environment,
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
    variant_fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CreateEndpointConfig (without ``EndpointConfigName``): one variant, its name kept across
    versions, with ``variant_fields`` (a generative model's start-up timeouts); the endpoint key
    where the instance type allows it."""
    request: dict[str, Any] = {
        "ProductionVariants": [
            {
                "VariantName": endpoint.variant_name,
                "ModelName": model_name,
                "InstanceType": instance_type,
                "InitialInstanceCount": instance_count,
                "InitialVariantWeight": 1.0,
                **(variant_fields or {}),
            }
        ],
        "Tags": _tag_list(tags),
    }
    set_endpoint_key(request, settings.kms.endpoint_key_id, instance_type, catalog, notes)
    return request


def set_endpoint_key(
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
    endpoint_name: str, variant: str, scaling: ScalingSettings, target_value: float | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """RegisterScalableTarget and PutScalingPolicy (target tracking on invocations/instance):
    ``target_value``, else the settings' ``target_invocations_per_instance``."""
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
            "TargetValue": target_value or scaling.target_invocations_per_instance or 100.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": SCALING_METRIC},
            "ScaleInCooldown": scaling.scale_in_cooldown_seconds,
            "ScaleOutCooldown": scaling.scale_out_cooldown_seconds,
        },
    }
    return register, policy
