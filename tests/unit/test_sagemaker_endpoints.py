"""The sagemaker target's endpoints: requests checked against botocore's service models, the
blue/green bounds, the NVMe/KMS rule, rollback detection, and whole deployments.

Deployments run against a moto server on 127.0.0.1 (``tests/moto_server.py``) for what moto
5.2.5 serves: CreateModel, CreateEndpointConfig (not for ml.g5: its enum is old), CreateEndpoint
(InService at once), DescribeEndpoint, CloudWatch alarms, Application Auto Scaling and S3. moto
has no UpdateEndpoint (HTTP 500), so updates and everything SageMaker says during one are played
with botocore's ``Stubber``, which checks each request and response against the service model.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, get_args

import boto3
import pytest
from botocore.stub import Stubber
from botocore.validate import ParamValidator
from endpoint_waits import await_deployment
from moto_server import aws_env_fixture, moto_server_fixture  # noqa: F401
from pydantic import ValidationError

from fmops.catalog import HOSTING_PRECISIONS, load_catalog
from fmops.deployment.settings import (
    CANARY_PERCENT,
    EXECUTION_TIMEOUT_SECONDS,
    LINEAR_PERCENT,
    TERMINATION_WAIT_SECONDS,
    WAIT_SECONDS,
    total_wait_seconds,
)
from fmops.sagemaker import endpoint_deploy, endpoint_plan, endpoint_resources, endpoint_watch
from fmops.sagemaker.endpoint_deploy import (
    EndpointBusyError,
    deploy,
    finish_deployment,
    start_deployment,
)
from fmops.sagemaker.endpoint_plan import plan_endpoint, with_instance_count
from fmops.sagemaker.endpoint_resources import (
    AlarmSettings,
    EndpointError,
    EndpointSettings,
    ScalingSettings,
    TrafficSettings,
    deployment_config,
    deployment_config_problems,
    endpoint_config_problems,
    version_prefix,
)
from fmops.sagemaker.endpoint_watch import (
    DeploymentFailedError,
    DeploymentWatch,
    clients,
    deployment_outcome,
)
from fmops.sagemaker.service_model import validate
from fmops.sagemaker.settings import KmsSettings, SageMakerSettings, VpcSettings

ACCOUNT = "123456789012"
SETTINGS = SageMakerSettings(
    region="us-east-1",
    role_arn=f"arn:aws:iam::{ACCOUNT}:role/fmops-sagemaker-execution",
    bucket="fmops-endpoint-tests",
)
MINILM = 22_713_728  # parameters of the packaged all-MiniLM-L6-v2
ARTIFACTS = "s3://fmops-endpoint-tests/fmops/training/train-minilm-0123456789/output/model.tar.gz"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SERVICES = ("sagemaker", "cloudwatch", "application-autoscaling")


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("us-east-1")


def plan_of(
    catalog,
    endpoint: EndpointSettings | None = None,
    *,
    name: str = "banking77",
    version: str = "3",
    settings: SageMakerSettings = SETTINGS,
    **kwargs: Any,
) -> dict[str, Any]:
    return plan_endpoint(
        settings,
        endpoint,
        endpoint_name=name,
        model_version=version,
        model_data_url=kwargs.pop("model_data_url", ARTIFACTS),
        parameters=kwargs.pop("parameters", MINILM),
        tags=kwargs.pop("tags", {"fmops:pipeline": "banking77-intents"}),
        catalog=catalog,
        **kwargs,
    )


def unique(prefix: str) -> str:
    """An endpoint name of this test alone: the moto server lives for the whole session."""
    return f"{prefix}-{time.time_ns() % 10**10}"


def botocore_accepts(service: str, operation: str, request: dict[str, Any]) -> bool:
    shape = boto3.session.Session().client(service, region_name="us-east-1").meta.service_model
    report = ParamValidator().validate(request, shape.operation_model(operation).input_shape)
    return not report.has_errors()


# -- requests against the service models -----------------------------------------------------------


def test_every_request_validates_against_its_service_model(catalog):
    endpoint = EndpointSettings(instance_count=2)
    alarms = AlarmSettings(max_4xx_error_rate=0.2, latency_statistic="p99")
    settings = SETTINGS.model_copy(
        update={
            "vpc": VpcSettings(subnets=["subnet-0a1b2c3d"], security_group_ids=["sg-0a1b2c3d"]),
            "kms": KmsSettings(endpoint_key_id="alias/fmops-endpoints"),
        }
    )
    plan = plan_of(catalog, endpoint, settings=settings, alarms=alarms)
    requests = plan["requests"]
    checked = [
        ("sagemaker", "CreateModel", requests["CreateModel"]),
        ("sagemaker", "CreateEndpointConfig", requests["CreateEndpointConfig"]),
        ("sagemaker", "CreateEndpoint", requests["CreateEndpoint"]),
        ("sagemaker", "UpdateEndpoint", requests["UpdateEndpoint"]),
        *(("cloudwatch", "PutMetricAlarm", alarm) for alarm in requests["PutMetricAlarm"]),
        ("application-autoscaling", "RegisterScalableTarget", requests["RegisterScalableTarget"]),
        ("application-autoscaling", "PutScalingPolicy", requests["PutScalingPolicy"]),
    ]
    for service, operation, request in checked:
        assert botocore_accepts(service, operation, request), (operation, request)
        validate(service, operation, request)  # maximums, enums and patterns too
    assert len(requests["PutMetricAlarm"]) == 3
    assert plan["alarm_names"] == [
        "fmops-banking77-AllTraffic-invocation-5xx-errors",
        "fmops-banking77-AllTraffic-model-latency",
        "fmops-banking77-AllTraffic-invocation-4xx-errors",
    ]


def test_model_serves_inference_py_from_the_archive_in_the_inference_image(catalog):
    settings = SETTINGS.model_copy(
        update={"vpc": VpcSettings(subnets=["subnet-0a1b2c3d"], security_group_ids=["sg-0a1b2c3d"])}
    )
    request = plan_of(catalog, settings=settings)["requests"]["CreateModel"]
    container = request["PrimaryContainer"]
    assert container["ModelDataUrl"] == ARTIFACTS
    assert "huggingface-pytorch-inference" in container["Image"]
    assert "-gpu-" in container["Image"]  # the catalog chose a GPU type
    environment = container["Environment"]
    assert environment["SAGEMAKER_PROGRAM"] == "inference.py"
    assert environment["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    assert environment["SAGEMAKER_REGION"] == "us-east-1"
    assert environment["HF_HUB_OFFLINE"] == "1"
    assert request["ExecutionRoleArn"] == SETTINGS.role_arn
    assert request["EnableNetworkIsolation"] is True
    assert request["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0a1b2c3d"],
        "Subnets": ["subnet-0a1b2c3d"],
    }
    assert {"Key": "fmops:model-version", "Value": "3"} in request["Tags"]

    with pytest.raises(EndpointError, match=r"s3://<bucket>/<key>\.tar\.gz"):
        plan_of(catalog, model_data_url="s3://fmops-endpoint-tests/fmops/training/model/")


def test_the_catalog_sizes_the_endpoint_and_pins_are_checked(catalog):
    plan = plan_of(catalog)
    assert plan["instance"]["instance_type"] == "ml.g4dn.xlarge"  # cheapest GPU that fits
    assert "hosting 22.7M parameters at fp32" in plan["instance"]["explain"]
    variant = plan["requests"]["CreateEndpointConfig"]["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 1

    pinned = plan_of(catalog, EndpointSettings(instance_type="ml.g5.xlarge"))
    assert pinned["instance"]["pinned"] is True

    with pytest.raises(EndpointError, match="cannot hold .* Pin a type that fits"):
        plan_of(catalog, EndpointSettings(instance_type="ml.g4dn.xlarge"), parameters=20 * 10**9)
    with pytest.raises(EndpointError, match="training jobs only, not for endpoints"):
        plan_of(catalog, EndpointSettings(instance_type="ml.p3dn.24xlarge"))
    with pytest.raises(EndpointError, match=r"above sagemaker.endpoint.max_price_per_hour \(1.0\)"):
        plan_of(catalog, EndpointSettings(instance_type="ml.g5.xlarge", max_price_per_hour=1.0))
    with pytest.raises(ValidationError, match="not in allowed_instance_types"):
        EndpointSettings(instance_type="ml.g5.xlarge", allowed_instance_types=["ml.g4dn.xlarge"])
    # bf16 serving rules out the T4 (no bf16): the cheapest A10G instead.
    assert (
        plan_of(catalog, EndpointSettings(serving_precision="bf16"))["instance"]["instance_type"]
        == "ml.g5.xlarge"
    )


# -- names -----------------------------------------------------------------------------------------


def test_names_are_deterministic_versioned_and_within_limits(catalog):
    first, again = plan_of(catalog), plan_of(catalog, tags={"fmops:run_id": "manual__other"})
    assert first["model_name"] == again["model_name"]  # tags do not name resources
    assert first["endpoint_config_name"] == again["endpoint_config_name"]
    assert first["model_name"].startswith("banking77-v3-")
    assert first["endpoint_config_name"].startswith(version_prefix("banking77", "3"))

    other_version = plan_of(catalog, version="4")
    assert other_version["endpoint_config_name"].startswith("banking77-v4-")
    moved = plan_of(catalog, model_data_url=ARTIFACTS.replace("0123456789", "9876543210"))
    assert moved["model_name"] != first["model_name"]
    assert moved["endpoint_config_name"] != first["endpoint_config_name"]  # it names the model
    bigger = plan_of(catalog, EndpointSettings(instance_count=2))
    assert bigger["model_name"] == first["model_name"]
    assert bigger["endpoint_config_name"] != first["endpoint_config_name"]
    # the variant name is kept across versions: blue/green updates replace the fleet behind it
    for plan in (first, other_version, bigger):
        assert plan["requests"]["CreateEndpointConfig"]["ProductionVariants"][0]["VariantName"] == (
            "AllTraffic"
        )

    long = plan_of(
        catalog,
        name="a-rather-long-endpoint-name-of-32c",
        version="2026-11-25T10:00:00+00:00 with a very long label",
    )
    for name in (long["model_name"], long["endpoint_config_name"]):
        assert len(name) <= 63 and endpoint_resources.SAGEMAKER_NAME.match(name), name
    with pytest.raises(EndpointError, match="at most 40 characters"):
        plan_of(catalog, name="x" * 41)
    with pytest.raises(EndpointError, match="letters, digits and inner hyphens"):
        plan_of(catalog, name="bad_name")


# -- blue/green bounds -----------------------------------------------------------------------------

VALID_TRAFFIC = [
    {"mode": "canary", "canary_percent": 1},
    {"mode": "canary", "canary_percent": 50},
    {"mode": "linear", "linear_step_percent": 10, "wait_seconds": 600},
    {"mode": "linear", "linear_step_percent": 50},
    {"mode": "all_at_once", "wait_seconds": 0, "termination_wait_seconds": 0},
    {"mode": "all_at_once", "wait_seconds": 3600, "termination_wait_seconds": 3600},
    {"mode": "all_at_once", "wait_seconds": 0, "max_execution_timeout_seconds": 600},
    {"mode": "canary", "wait_seconds": 3600, "max_execution_timeout_seconds": 28800},
]


def field_error(field: str, text: str) -> str:
    """How pydantic shows a field's error: its name, then the message on the next line."""
    return rf"{field}\s+Value error, {text}"


INVALID_TRAFFIC = [
    ({"mode": "canary", "canary_percent": 51},
     field_error("canary_percent", r"51 is outside 1-50 \(CanarySize, CAPACITY_PERCENT: .*set it")),
    ({"mode": "canary", "canary_percent": 0}, field_error("canary_percent", "0 is outside 1-50")),
    ({"mode": "linear", "linear_step_percent": 5},
     field_error("linear_step_percent", "5 is outside 10-50")),
    ({"mode": "linear", "linear_step_percent": 55},
     field_error("linear_step_percent", "55 is outside")),
    ({"wait_seconds": 3601},
     field_error("wait_seconds", r"3601 is outside 0-3600 \(WaitIntervalInSeconds")),
    ({"wait_seconds": -1}, field_error("wait_seconds", "-1 is outside 0-3600")),
    ({"termination_wait_seconds": 3601},
     field_error("termination_wait_seconds", "3601 is outside 0-3600")),
    ({"max_execution_timeout_seconds": 599},
     field_error("max_execution_timeout_seconds", "599 is outside 600-28800")),
    ({"max_execution_timeout_seconds": 28801},
     field_error("max_execution_timeout_seconds", "28801 is outside 600-28800")),
    (
        # canary: two bakes (canary, then the final one) + the termination wait = 1500 s
        {"mode": "canary", "wait_seconds": 600, "termination_wait_seconds": 300,
         "max_execution_timeout_seconds": 1500},
        r"max_execution_timeout_seconds \(MaximumExecutionTimeoutInSeconds\): 1500 s is not "
        r"longer than the waits it contains, 2 baking period\(s\) of 600 s \+ "
        r"termination wait 300 s = 1500 s .* raise it to more than 1500",
    ),
    (
        # linear 20%: five steps, each followed by a bake
        {"mode": "linear", "linear_step_percent": 20, "wait_seconds": 600,
         "termination_wait_seconds": 0, "max_execution_timeout_seconds": 2999},
        r"5 baking period\(s\) of 600 s \+ termination wait 0 s = 3000 s",
    ),
    (
        {"mode": "linear", "linear_step_percent": 10, "wait_seconds": 3600},
        r"linear waits 10 baking period\(s\) .* at most 28800 s: shorten wait_seconds .* "
        r"larger steps \(linear_step_percent",
    ),
]  # fmt: skip


@pytest.mark.parametrize("values", VALID_TRAFFIC)
def test_traffic_bounds_accept_their_edges(values):
    traffic = TrafficSettings(**values)
    config = deployment_config(traffic, ["alarm"])
    assert deployment_config_problems(config) == []
    assert validate("sagemaker", "UpdateEndpoint", {
        "EndpointName": "e", "EndpointConfigName": "c", "DeploymentConfig": config
    }) is None  # fmt: skip
    assert traffic.timeout_seconds > total_wait_seconds(
        traffic.mode, traffic.wait_seconds, traffic.termination_wait_seconds, traffic.step_percent
    )


@pytest.mark.parametrize(("values", "message"), INVALID_TRAFFIC)
def test_traffic_bounds_refuse_with_field_value_range_and_fix(values, message):
    with pytest.raises(ValidationError, match=message):
        TrafficSettings(**values)


@pytest.mark.parametrize(("values", "message"), INVALID_TRAFFIC)
def test_built_or_edited_requests_meet_the_same_bounds(values, message):
    # A DeploymentConfig edited after planning (or built elsewhere) is refused before the call.
    base = TrafficSettings(mode=values.get("mode", "all_at_once"))
    config = deployment_config(base, ["alarm"])
    policy = config["BlueGreenUpdatePolicy"]
    routing = policy["TrafficRoutingConfiguration"]
    keys = {
        "canary_percent": (routing, "CanarySize"),
        "linear_step_percent": (routing, "LinearStepSize"),
        "wait_seconds": (routing, "WaitIntervalInSeconds"),
        "termination_wait_seconds": (policy, "TerminationWaitInSeconds"),
        "max_execution_timeout_seconds": (policy, "MaximumExecutionTimeoutInSeconds"),
    }
    for key, value in values.items():
        if key == "mode":
            continue
        where, field = keys[key]
        where[field] = {"Type": "CAPACITY_PERCENT", "Value": value} if "Size" in field else value
    if "max_execution_timeout_seconds" not in values:
        policy["MaximumExecutionTimeoutInSeconds"] = 28800
    problems = deployment_config_problems(config)
    assert problems, values
    assert any("DeploymentConfig.BlueGreenUpdatePolicy" in p for p in problems)


def test_our_bounds_are_at_least_as_strict_as_the_service_model():
    model = boto3.session.Session().client("sagemaker", region_name="us-east-1").meta.service_model
    policy = model.shape_for("BlueGreenUpdatePolicy").members
    routing = model.shape_for("TrafficRoutingConfig").members
    capacity = model.shape_for("CapacitySize").members["Value"].metadata
    alarms = model.shape_for("AutoRollbackConfig").members["Alarms"].metadata

    def within(ours: tuple[int, int], metadata: dict[str, int]) -> bool:
        return metadata.get("min", ours[0]) <= ours[0] and ours[1] <= metadata.get("max", ours[1])

    assert within(WAIT_SECONDS, routing["WaitIntervalInSeconds"].metadata)
    assert within(TERMINATION_WAIT_SECONDS, policy["TerminationWaitInSeconds"].metadata)
    assert within(
        EXECUTION_TIMEOUT_SECONDS,
        policy["MaximumExecutionTimeoutInSeconds"].metadata,
    )
    assert within(CANARY_PERCENT, capacity)  # the model: min 1, no max; docs: <= 50%
    assert within(LINEAR_PERCENT, capacity)  # docs: 10-50%
    assert within(endpoint_resources.ALARMS, alarms)
    # The model's numbers are what the API reference says: a change in botocore shows up here.
    assert routing["WaitIntervalInSeconds"].metadata == {"min": 0, "max": 3600}
    assert policy["MaximumExecutionTimeoutInSeconds"].metadata == {"min": 600, "max": 28800}


def test_validation_adds_the_maximums_botocore_leaves_to_the_service():
    request = {
        "EndpointName": "banking77",
        "EndpointConfigName": "banking77-v3-abc",
        "DeploymentConfig": {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {
                    "Type": "ALL_AT_ONCE",
                    "WaitIntervalInSeconds": 4000,
                }
            }
        },
    }
    assert botocore_accepts("sagemaker", "UpdateEndpoint", request)  # it checks minimums only
    with pytest.raises(EndpointError, match="WaitIntervalInSeconds: 4000 is above .* 3600"):
        validate("sagemaker", "UpdateEndpoint", request)
    with pytest.raises(EndpointError, match="does not match the pattern"):
        validate(
            "sagemaker", "CreateEndpoint", {"EndpointName": "bad_name", "EndpointConfigName": "c"}
        )
    with pytest.raises(EndpointError, match="is not one of the API's values"):
        validate(
            "cloudwatch",
            "PutMetricAlarm",
            {"AlarmName": "a", "ComparisonOperator": "Above", "EvaluationPeriods": 1},
        )


def test_settings_that_contradict_each_other_are_refused():
    with pytest.raises(ValidationError, match=r"instance_count: 3 is outside .*\(1-2\)"):
        EndpointSettings(instance_count=3)
    assert EndpointSettings(instance_count=3, scaling=ScalingSettings(enabled=False))
    with pytest.raises(ValidationError, match="max_instances \\(1\\) is below min_instances"):
        ScalingSettings(min_instances=2, max_instances=1)
    with pytest.raises(ValidationError, match="datapoints_to_alarm: 4 exceeds evaluation_periods"):
        AlarmSettings(datapoints_to_alarm=4, evaluation_periods=3)
    with pytest.raises(
        ValidationError, match=field_error("period_seconds", "90 is not a multiple")
    ):
        AlarmSettings(period_seconds=90)
    with pytest.raises(ValidationError, match="latency_statistic"):
        AlarmSettings(latency_statistic="median")
    precision = EndpointSettings.model_fields["serving_precision"].annotation
    assert set(get_args(precision)) == set(HOSTING_PRECISIONS)  # what hosting_memory takes


def test_settings_are_the_configs_and_default_to_all_at_once_without_a_bake(catalog):
    from fmops import deployment
    from fmops.sagemaker import settings

    for name in ("TrafficSettings", "AlarmSettings"):
        assert getattr(endpoint_resources, name) is getattr(deployment.settings, name)  # the same
    for name in ("ScalingSettings", "EndpointSettings"):
        assert getattr(endpoint_resources, name) is getattr(settings, name)
    assert SETTINGS.endpoint == EndpointSettings()

    plan = plan_of(catalog)  # settings.endpoint, default traffic and alarms
    policy = plan["requests"]["UpdateEndpoint"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy == {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
        "TerminationWaitInSeconds": 0,
        "MaximumExecutionTimeoutInSeconds": 1800,  # the waits (0) + the start-up allowance
    }
    assert plan["traffic"]["mode"] == "all_at_once"
    assert plan["wait"]["timeout_seconds"] == 1800 + 1800
    assert endpoint_resources.NO_BAKE in plan["notes"]

    canary = plan_of(catalog, traffic=TrafficSettings(mode="canary", wait_seconds=600))
    assert endpoint_resources.NO_BAKE not in canary["notes"]
    assert any("canary with one instance" in note for note in canary["notes"])
    assert (
        canary["traffic"] | {"total_wait_seconds": 1200, "baking_periods": 2} == canary["traffic"]
    )


def test_plan_deployment_takes_every_setting_from_the_config(catalog):
    from fmops.config import load_config

    config = load_config("include/configs/sagemaker.example.yaml")
    plan = endpoint_plan.plan_deployment(
        config,
        model_version="7",
        model_data_url=ARTIFACTS.replace("fmops-endpoint-tests", config.sagemaker.bucket),
        parameters=MINILM,
        catalog=catalog,
    )
    assert plan["endpoint_name"] == config.deployment.endpoint_name
    variant = plan["requests"]["CreateEndpointConfig"]["ProductionVariants"][0]
    # the fleet for the example's peak (fmops.sizing), never below the configured instance_count
    assert variant["InitialInstanceCount"] == plan["instance"]["sizing"]["count"]
    assert variant["InitialInstanceCount"] >= config.sagemaker.endpoint.instance_count
    assert plan["instance"]["sizing"]["peak_rps"] == (
        config.sagemaker.endpoint.sizing.peak_requests_per_second
    )
    routing = plan["requests"]["UpdateEndpoint"]["DeploymentConfig"]["BlueGreenUpdatePolicy"][
        "TrafficRoutingConfiguration"
    ]
    traffic = config.deployment.traffic
    assert routing == {
        "Type": traffic.mode.upper(),
        "WaitIntervalInSeconds": traffic.wait_seconds,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": traffic.canary_percent},
    }
    latency = plan["requests"]["PutMetricAlarm"][-1]
    assert latency["ExtendedStatistic"] == config.deployment.alarms.latency_statistic
    register = plan["requests"]["RegisterScalableTarget"]
    scaling = config.sagemaker.endpoint.scaling
    assert (register["MinCapacity"], register["MaxCapacity"]) == (
        scaling.min_instances,
        scaling.max_instances,
    )
    without = config.model_copy(update={"sagemaker": None})
    with pytest.raises(endpoint_plan.options.PolicyError, match="needs a `sagemaker:` block"):
        endpoint_plan.plan_deployment(
            without, model_version="7", model_data_url=ARTIFACTS, parameters=MINILM
        )


# -- NVMe and KMS ----------------------------------------------------------------------------------


def test_endpoint_key_is_left_out_on_nvme_types_and_kept_on_ebs_types(catalog):
    settings = SETTINGS.model_copy(
        update={"kms": KmsSettings(endpoint_key_id="alias/fmops-endpoints")}
    )
    nvme = plan_of(catalog, settings=settings)  # ml.g4dn.xlarge: local NVMe instance store
    assert catalog.get("ml.g4dn.xlarge").nvme
    assert "KmsKeyId" not in nvme["requests"]["CreateEndpointConfig"]
    assert any("KmsKeyId left out on ml.g4dn.xlarge" in note for note in nvme["notes"])

    ebs = plan_of(catalog, EndpointSettings(instance_type="ml.p3.2xlarge"), settings=settings)
    assert not catalog.get("ml.p3.2xlarge").nvme
    assert ebs["requests"]["CreateEndpointConfig"]["KmsKeyId"] == "alias/fmops-endpoints"
    assert not any("KmsKeyId" in note for note in ebs["notes"])

    edited = {**nvme["requests"]["CreateEndpointConfig"], "KmsKeyId": "alias/fmops-endpoints"}
    edited["ProductionVariants"] = [
        {**edited["ProductionVariants"][0], "InstanceType": "ml.g5.xlarge"}
    ]
    (problem,) = endpoint_config_problems(edited, catalog)
    assert "KmsKeyId with ml.g5.xlarge" in problem and "leave KmsKeyId out" in problem
    assert endpoint_config_problems(ebs["requests"]["CreateEndpointConfig"], catalog) == []


# -- alarms and auto scaling -----------------------------------------------------------------------


def test_alarms_watch_the_variant_and_latency_is_in_microseconds(catalog):
    alarms = AlarmSettings(max_latency_ms=250, max_5xx_error_rate=0.02)
    plan = plan_of(catalog, alarms=alarms)
    errors, latency = plan["requests"]["PutMetricAlarm"]
    for alarm in (errors, latency):
        assert alarm["Namespace"] == "AWS/SageMaker"
        assert alarm["Dimensions"] == [
            {"Name": "EndpointName", "Value": "banking77"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ]
        assert alarm["TreatMissingData"] == "notBreaching"
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
        assert {"Key": "fmops:model-version", "Value": "3"} not in alarm["Tags"]
    assert errors["MetricName"] == "Invocation5XXErrors" and errors["Statistic"] == "Average"
    assert errors["Threshold"] == 0.02
    assert latency["MetricName"] == "ModelLatency" and latency["Threshold"] == 250_000
    assert "microseconds" in latency["AlarmDescription"]
    rollback = plan["requests"]["UpdateEndpoint"]["DeploymentConfig"]["AutoRollbackConfiguration"]
    assert [a["AlarmName"] for a in rollback["Alarms"]] == [
        errors["AlarmName"],
        latency["AlarmName"],
    ]
    p99 = plan_of(catalog, alarms=AlarmSettings(latency_statistic="p99"))
    assert p99["requests"]["PutMetricAlarm"][1]["ExtendedStatistic"] == "p99"
    assert "Statistic" not in p99["requests"]["PutMetricAlarm"][1]


def test_auto_scaling_tracks_invocations_per_instance(catalog):
    endpoint = EndpointSettings(
        scaling=ScalingSettings(max_instances=4, target_invocations_per_instance=250)
    )
    requests = plan_of(catalog, endpoint)["requests"]
    assert requests["RegisterScalableTarget"] == {
        "ServiceNamespace": "sagemaker",
        "ResourceId": "endpoint/banking77/variant/AllTraffic",
        "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
        "MinCapacity": 1,
        "MaxCapacity": 4,
    }
    policy = requests["PutScalingPolicy"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 250
    assert tracking["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
    }
    off = plan_of(catalog, EndpointSettings(scaling=ScalingSettings(enabled=False)))["requests"]
    assert off["RegisterScalableTarget"] is None and off["PutScalingPolicy"] is None


# -- the wait: rollback detection ------------------------------------------------------------------

OLD, NEW = "banking77-v2-0badc0de", "banking77-v3-3a4e2b70"


def described(status: str, config: str = NEW, **extra: Any) -> dict[str, Any]:
    return {
        "EndpointName": "banking77",
        "EndpointArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/banking77",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        **extra,
    }


def updating(**extra: Any) -> dict[str, Any]:
    return described(
        "Updating",
        OLD,
        PendingDeploymentSummary={
            "EndpointConfigName": NEW,
            "ProductionVariants": [
                {"VariantName": "AllTraffic", "CurrentWeight": 0.1, "DesiredWeight": 1.0}
            ],
        },
        **extra,
    )


ROLLBACK_CONFIG = {
    "BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    },
    "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "fmops-banking77-5xx"}]},
}


def replay(sequence: list[dict[str, Any]], timeout: float = 3600, poll: float = 30):
    """Run ``await_deployment`` over recorded DescribeEndpoint answers, on a fake clock."""
    answers = iter(sequence)
    ticks = {"t": 0.0}
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        ticks["t"] += seconds

    result = await_deployment(
        lambda: next(answers),
        NEW,
        previous_config_name=OLD,
        timeout_seconds=timeout,
        poll_seconds=poll,
        sleep=sleep,
        clock=lambda: ticks["t"],
        explain=lambda: "CloudWatch alarms in ALARM: fmops-banking77-5xx",
    )
    return result, slept


def test_success_only_in_service_on_the_new_config():
    final, slept = replay([updating(), updating(), described("InService", NEW)])
    assert final["EndpointConfigName"] == NEW and slept == [30, 30]


def test_in_service_on_the_old_config_is_a_rollback_with_its_reason():
    sequence = [
        updating(),
        described("RollingBack", OLD),
        described("InService", OLD, LastDeploymentConfig=ROLLBACK_CONFIG),
    ]
    with pytest.raises(DeploymentFailedError) as info:
        replay(sequence)
    error = info.value
    assert error.rolled_back and error.status == "InService" and error.config_name == OLD
    message = str(error)
    assert f"InService on the previous config {OLD}, not on the new {NEW}" in message
    assert "SageMaker rolled the deployment back" in message
    assert "its rollback alarms: fmops-banking77-5xx" in message  # LastDeploymentConfig
    assert "CloudWatch alarms in ALARM: fmops-banking77-5xx" in message  # explain()


def test_rollback_failures_and_failed_creations_are_failures():
    with pytest.raises(DeploymentFailedError, match="UpdateRollbackFailed") as info:
        replay([updating(), described("UpdateRollbackFailed", OLD, FailureReason="rollback")])
    assert info.value.rolled_back
    with pytest.raises(DeploymentFailedError, match="Failed: the model container did not pass"):
        replay(
            [
                described("Creating"),
                described(
                    "Failed", FailureReason="the model container did not pass the ping check"
                ),
            ]
        )


def test_a_deployment_that_outlasts_the_wait_fails_with_its_last_status():
    with pytest.raises(DeploymentFailedError, match="is Updating after 120 s") as info:
        replay([updating()] * 10, timeout=100)
    assert info.value.status == "Updating" and not info.value.rolled_back


def test_a_stale_first_read_is_not_taken_for_a_rollback():
    # DescribeEndpoint right after UpdateEndpoint may still show the old config InService.
    final, _ = replay([described("InService", OLD), updating(), described("InService", NEW)])
    assert final["EndpointConfigName"] == NEW
    with pytest.raises(DeploymentFailedError, match="rolled the deployment back"):
        replay([described("InService", OLD)] * endpoint_watch.SETTLE_POLLS)


def test_outcome_of_single_descriptions():
    assert deployment_outcome(described("InService", NEW), NEW).state == "succeeded"
    assert deployment_outcome(described("SystemUpdating", NEW), NEW).state == "waiting"
    other = updating()
    other["PendingDeploymentSummary"]["EndpointConfigName"] = "banking77-v9-ffffffff"
    outcome = deployment_outcome(other, NEW)
    assert outcome.state == "failed" and "another deployment" in outcome.reason
    assert deployment_outcome(described("Deleting", NEW), NEW).state == "failed"


# -- whole deployments -----------------------------------------------------------------------------


@pytest.fixture
def aws(aws_env):
    """The three clients from the Airflow connection at the moto server, and a call log."""
    made = clients()
    calls: list[str] = []
    for client in (made.sagemaker, made.cloudwatch, made.autoscaling):
        client.meta.events.register(
            "before-parameter-build",
            lambda model, **_: calls.append(model.name),
        )
    return SimpleNamespace(
        sagemaker=made.sagemaker,
        cloudwatch=made.cloudwatch,
        autoscaling=made.autoscaling,
        calls=calls,
    )


def no_sleep(seconds: float) -> None:
    raise AssertionError(f"the deployment waited {seconds} s where it should not")


def test_clients_come_from_the_connection_with_adaptive_retries(aws_env):
    made = clients(max_attempts=4)
    for client, service in zip(
        (made.sagemaker, made.cloudwatch, made.autoscaling), SERVICES, strict=True
    ):
        assert client.meta.service_model.service_name == service
        assert client.meta.endpoint_url == aws_env
        assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 4}


def test_new_endpoint_on_moto_then_a_retry_changes_nothing(aws, catalog):
    name = unique("ep")
    plan = plan_of(catalog, EndpointSettings(instance_count=1), name=name)
    result = deploy(
        plan,
        sagemaker=aws.sagemaker,
        cloudwatch=aws.cloudwatch,
        autoscaling=aws.autoscaling,
        sleep=no_sleep,
    )
    assert result["action"] == "created" and result["status"] == "InService"
    assert result["endpoint_config_name"] == plan["endpoint_config_name"]
    assert aws.calls == [
        "DescribeEndpoint",
        "DescribeModel",
        "CreateModel",
        "DescribeEndpointConfig",
        "CreateEndpointConfig",
        "PutMetricAlarm",
        "PutMetricAlarm",  # before the endpoint: AutoRollbackConfiguration names them
        "CreateEndpoint",
        "DescribeEndpoint",
        "RegisterScalableTarget",  # after InService
        "PutScalingPolicy",
    ]
    model = aws.sagemaker.describe_model(ModelName=plan["model_name"])
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    config = aws.sagemaker.describe_endpoint_config(EndpointConfigName=plan["endpoint_config_name"])
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"
    alarms = aws.cloudwatch.describe_alarms(AlarmNames=plan["alarm_names"])["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == sorted(plan["alarm_names"])
    target = aws.autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[f"endpoint/{name}/variant/AllTraffic"]
    )["ScalableTargets"]
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in target] == [(1, 2)]

    aws.calls.clear()  # a retried task, or a second run of the same version
    again = deploy(
        plan,
        sagemaker=aws.sagemaker,
        cloudwatch=aws.cloudwatch,
        autoscaling=aws.autoscaling,
        sleep=no_sleep,
    )
    assert again["action"] == "unchanged"
    assert not {"CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint"} & set(
        aws.calls
    )

    # A model and config of the same name are reused, not created twice (moto would accept a
    # duplicate silently; SageMaker refuses it).
    aws.calls.clear()
    requests = plan["requests"]
    assert endpoint_deploy._ensure(
        aws.sagemaker, "model", requests["CreateModel"], "ModelName"
    ) == ("reused")
    assert "CreateModel" not in aws.calls


def test_a_started_deployment_returns_at_once_and_is_finished_later(aws, catalog):
    """The deferrable split: start (no wait), the wait elsewhere, then finish."""
    name = unique("ep")
    plan = plan_of(catalog, EndpointSettings(instance_count=1), name=name)
    handle = start_deployment(
        plan,
        sagemaker=aws.sagemaker,
        cloudwatch=aws.cloudwatch,
        autoscaling=aws.autoscaling,
        now=lambda: 1_800_000_000.0,
    )
    assert aws.calls[-1] == "CreateEndpoint"  # nothing waited for, no scaling yet
    assert json.loads(json.dumps(handle)) == handle  # it travels through the triggerer
    assert handle["action"] == "created"
    assert handle["endpoint_config_name"] == plan["endpoint_config_name"]
    assert handle["previous_endpoint_config_name"] is None
    assert handle["started_at"] == 1_800_000_000.0
    assert handle["timeout_seconds"] == plan["wait"]["timeout_seconds"]

    final = aws.sagemaker.describe_endpoint(EndpointName=name)
    watch = DeploymentWatch(handle["endpoint_config_name"], timeout_seconds=60)
    assert watch.see(final, elapsed=0).state == "succeeded"
    aws.calls.clear()
    result = finish_deployment(handle, final, autoscaling=aws.autoscaling)
    assert aws.calls == ["RegisterScalableTarget", "PutScalingPolicy"]
    assert result["action"] == "created" and result["status"] == "InService"
    assert result["scaling"]["resource_id"] == f"endpoint/{name}/variant/AllTraffic"


def test_update_is_blue_green_with_the_exact_deployment_config(aws, catalog):
    name = unique("ep")
    old = f"{name}-v2-0badc0de"
    endpoint = EndpointSettings(
        instance_type="ml.g5.xlarge",  # moto's enum lacks g5: the Stubber plays SageMaker
        instance_count=2,
        scaling=ScalingSettings(min_instances=1, max_instances=4),
    )
    traffic = TrafficSettings(
        mode="linear",
        linear_step_percent=25,
        wait_seconds=300,
        termination_wait_seconds=120,
        max_execution_timeout_seconds=3600,
    )
    plan = plan_of(catalog, endpoint, name=name, version="3", traffic=traffic)
    # Version 2 runs on ml.g4dn.xlarge with auto scaling, grown to 3 instances.
    register, policy = (plan["requests"][k] for k in ("RegisterScalableTarget", "PutScalingPolicy"))
    aws.autoscaling.register_scalable_target(**{**register, "MaxCapacity": 3})
    aws.autoscaling.put_scaling_policy(**policy)
    scaled = with_instance_count(plan, 3)  # the new fleet starts as large as the old one
    new = scaled["endpoint_config_name"]
    assert new != plan["endpoint_config_name"]
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
    live = [{"VariantName": "AllTraffic", "CurrentInstanceCount": 3, "DesiredInstanceCount": 3}]
    missing = {"service_error_code": "ValidationException"}

    with Stubber(aws.sagemaker) as stub:
        stub.add_response(
            "describe_endpoint",
            {**described("InService", old), "EndpointName": name, "ProductionVariants": live},
            {"EndpointName": name},
        )
        stub.add_client_error(
            "describe_model",
            service_message=f'Could not find model "{arn}:model/{plan["model_name"]}".',
            expected_params={"ModelName": plan["model_name"]},
            **missing,
        )
        stub.add_response(
            "create_model", {"ModelArn": f"{arn}:model/x"}, scaled["requests"]["CreateModel"]
        )
        stub.add_client_error(
            "describe_endpoint_config",
            service_message="Could not find endpoint configuration",
            expected_params={"EndpointConfigName": new},
            **missing,
        )
        config_request = scaled["requests"]["CreateEndpointConfig"]
        assert config_request["ProductionVariants"][0]["InitialInstanceCount"] == 3
        stub.add_response(
            "create_endpoint_config", {"EndpointConfigArn": f"{arn}:ec/x"}, config_request
        )
        stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": old,
                "EndpointConfigArn": f"{arn}:endpoint-config/{old}",
                "ProductionVariants": [
                    {"VariantName": "AllTraffic", "InstanceType": "ml.g4dn.xlarge"}
                ],
                "CreationTime": NOW,
            },
            {"EndpointConfigName": old},
        )
        stub.add_response(
            "update_endpoint",
            {"EndpointArn": f"{arn}:endpoint/{name}"},
            {
                "EndpointName": name,
                "EndpointConfigName": new,
                "RetainAllVariantProperties": False,
                "DeploymentConfig": {
                    "BlueGreenUpdatePolicy": {
                        "TrafficRoutingConfiguration": {
                            "Type": "LINEAR",
                            "WaitIntervalInSeconds": 300,
                            "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
                        },
                        "TerminationWaitInSeconds": 120,
                        "MaximumExecutionTimeoutInSeconds": 3600,
                    },
                    "AutoRollbackConfiguration": {
                        "Alarms": [
                            {"AlarmName": f"fmops-{name}-AllTraffic-invocation-5xx-errors"},
                            {"AlarmName": f"fmops-{name}-AllTraffic-model-latency"},
                        ]
                    },
                },
            },
        )
        pending = {"EndpointConfigName": new}
        stub.add_response(
            "describe_endpoint",
            {
                **described("Updating", old),
                "EndpointName": name,
                "PendingDeploymentSummary": pending,
            },
            {"EndpointName": name},
        )
        stub.add_response(
            "describe_endpoint",
            {**described("InService", new), "EndpointName": name},
            {"EndpointName": name},
        )
        slept: list[float] = []
        result = deploy(
            plan,
            sagemaker=aws.sagemaker,
            cloudwatch=aws.cloudwatch,
            autoscaling=aws.autoscaling,
            sleep=slept.append,
        )
        stub.assert_no_pending_responses()

    assert result["action"] == "updated"
    assert result["endpoint_config_name"] == new and result["previous_endpoint_config_name"] == old
    assert result["instance_count"] == 3 and slept == [30]
    # Auto scaling out of the way before an update that changes the instance type, back after.
    order = [c for c in aws.calls if c not in ("DescribeModel", "CreateModel", "PutMetricAlarm")]
    assert order[order.index("DeregisterScalableTarget") :] == [
        "DeregisterScalableTarget",
        "UpdateEndpoint",
        "DescribeEndpoint",
        "DescribeEndpoint",
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    assert order.index("DeleteScalingPolicy") < order.index("DeregisterScalableTarget")
    (target,) = aws.autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[register["ResourceId"]]
    )["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 4)


def test_a_rolled_back_update_fails_and_names_the_alarm(aws, catalog):
    name = unique("ep")
    old = f"{name}-v2-0badc0de"
    endpoint = EndpointSettings(scaling=ScalingSettings(enabled=False))
    plan = plan_of(catalog, endpoint, name=name, version="3")
    new = plan["endpoint_config_name"]
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
    latency_alarm = plan["alarm_names"][1]

    with Stubber(aws.sagemaker) as stub:
        stub.add_response(
            "describe_endpoint", {**described("InService", old), "EndpointName": name}
        )
        # A retry after a crash: model and config exist already and are reused.
        stub.add_response(
            "describe_model",
            {"ModelName": plan["model_name"], "ModelArn": f"{arn}:model/m", "CreationTime": NOW},
            {"ModelName": plan["model_name"]},
        )
        stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": new,
                "EndpointConfigArn": f"{arn}:endpoint-config/{new}",
                "ProductionVariants": [{"VariantName": "AllTraffic"}],
                "CreationTime": NOW,
            },
            {"EndpointConfigName": new},
        )
        stub.add_response("update_endpoint", {"EndpointArn": f"{arn}:endpoint/{name}"})
        pending = {"EndpointConfigName": new}
        for answer in (
            {**described("Updating", old), "PendingDeploymentSummary": pending},
            described("RollingBack", old),
            {
                **described("InService", old),
                "LastDeploymentConfig": plan["requests"]["UpdateEndpoint"]["DeploymentConfig"],
            },
        ):
            stub.add_response("describe_endpoint", {**answer, "EndpointName": name})

        def sleep(seconds: float) -> None:  # the canary's latency goes up while we wait
            aws.cloudwatch.set_alarm_state(
                AlarmName=latency_alarm, StateValue="ALARM", StateReason="p99 above threshold"
            )

        with pytest.raises(DeploymentFailedError) as info:
            deploy(
                plan,
                sagemaker=aws.sagemaker,
                cloudwatch=aws.cloudwatch,
                autoscaling=aws.autoscaling,
                sleep=sleep,
            )
        stub.assert_no_pending_responses()
    message = str(info.value)
    assert info.value.rolled_back and info.value.config_name == old
    assert "SageMaker rolled the deployment back" in message
    assert f"CloudWatch alarms in ALARM: {latency_alarm}" in message
    assert "CreateModel" not in aws.calls and "CreateEndpointConfig" not in aws.calls

    # While an alarm still fires, a new update would be rolled back at once: refused up front.
    # (CloudWatch keeps an alarm's state when PutMetricAlarm updates it; moto resets it to OK.)
    aws.cloudwatch.meta.events.register(
        "after-call.cloudwatch.PutMetricAlarm",
        lambda **_: aws.cloudwatch.set_alarm_state(
            AlarmName=latency_alarm, StateValue="ALARM", StateReason="still above threshold"
        ),
    )
    with Stubber(aws.sagemaker) as stub:
        stub.add_response(
            "describe_endpoint", {**described("InService", old), "EndpointName": name}
        )
        stub.add_response(
            "describe_model",
            {"ModelName": plan["model_name"], "ModelArn": f"{arn}:model/m", "CreationTime": NOW},
        )
        stub.add_response(
            "describe_endpoint_config",
            {
                "EndpointConfigName": new,
                "EndpointConfigArn": f"{arn}:endpoint-config/{new}",
                "ProductionVariants": [{"VariantName": "AllTraffic"}],
                "CreationTime": NOW,
            },
        )
        with pytest.raises(DeploymentFailedError, match=f"{latency_alarm} of {name} are in ALARM"):
            deploy(
                plan,
                sagemaker=aws.sagemaker,
                cloudwatch=aws.cloudwatch,
                autoscaling=aws.autoscaling,
                sleep=no_sleep,
            )


def test_a_deployment_in_progress_is_reattached_or_refused(aws, catalog):
    name = unique("ep")
    old = f"{name}-v2-0badc0de"
    plan = plan_of(catalog, EndpointSettings(scaling=ScalingSettings(enabled=False)), name=name)
    new = plan["endpoint_config_name"]
    with Stubber(aws.sagemaker) as stub:
        for answer in (
            {**described("Updating", old), "PendingDeploymentSummary": {"EndpointConfigName": new}},
            described("InService", new),
        ):
            stub.add_response("describe_endpoint", {**answer, "EndpointName": name})
        result = deploy(
            plan,
            sagemaker=aws.sagemaker,
            cloudwatch=aws.cloudwatch,
            autoscaling=aws.autoscaling,
            sleep=lambda s: None,
        )
    assert result["action"] == "reattached" and "UpdateEndpoint" not in aws.calls

    other = f"{name}-v9-ffffffff"
    for status, busy in (
        ("Updating", {"PendingDeploymentSummary": {"EndpointConfigName": other}}),
        ("SystemUpdating", {}),
    ):
        with Stubber(aws.sagemaker) as stub:
            stub.add_response(
                "describe_endpoint", {**described(status, old), "EndpointName": name, **busy}
            )
            with pytest.raises(EndpointBusyError, match=f"{name} is {status}"):
                deploy(
                    plan,
                    sagemaker=aws.sagemaker,
                    cloudwatch=aws.cloudwatch,
                    autoscaling=aws.autoscaling,
                    sleep=no_sleep,
                )
    with Stubber(aws.sagemaker) as stub:
        stub.add_response(
            "describe_endpoint",
            {**described("Failed", old), "EndpointName": name, "FailureReason": "no capacity"},
        )
        with pytest.raises(DeploymentFailedError, match="Failed \\(no capacity\\).*delete it"):
            deploy(
                plan,
                sagemaker=aws.sagemaker,
                cloudwatch=aws.cloudwatch,
                autoscaling=aws.autoscaling,
                sleep=no_sleep,
            )


# -- the model archive -----------------------------------------------------------------------------


def model_archive(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


def test_the_archive_must_carry_code_inference_py(aws_env):
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    bucket = "fmops-endpoint-tests"
    s3.create_bucket(Bucket=bucket)
    weights = {"model.safetensors": b"\0" * 64, "config.json": b"{}", "label_map.json": b"{}"}
    good = f"s3://{bucket}/good/model.tar.gz"
    bad = f"s3://{bucket}/bad/model.tar.gz"
    s3.put_object(
        Bucket=bucket,
        Key="good/model.tar.gz",
        Body=model_archive({**weights, "./code/inference.py": b"def model_fn(d): ..."}),
    )
    s3.put_object(Bucket=bucket, Key="bad/model.tar.gz", Body=model_archive(weights))
    endpoint_deploy.check_model_archive(s3, good)
    with pytest.raises(EndpointError, match="has no code/inference.py: the Hugging Face"):
        endpoint_deploy.check_model_archive(s3, bad)
    s3.put_object(Bucket=bucket, Key="junk/model.tar.gz", Body=b"not an archive")
    with pytest.raises(EndpointError, match="not a gzipped tar archive"):
        endpoint_deploy.check_model_archive(s3, f"s3://{bucket}/junk/model.tar.gz")
