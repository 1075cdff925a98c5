"""Capacity fallback of SageMaker endpoints: when SageMaker has no capacity (or no quota) for the
chosen instance type, the deployment moves to the next type of the catalog's ranking that fits the
model, says so, and stops with every type named once the ranking is exhausted.

SageMaker is moto's (``tests/moto_server.py``) for models, endpoint configs and a created
endpoint, with ``CapacityLimited`` in front of it: the instance types it is told have no capacity
end ``Failed`` (a new endpoint) or are rolled back (an update) with SageMaker's FailureReason,
those without quota are refused with ``ResourceLimitExceeded``, and UpdateEndpoint (which moto
lacks) is played. Every SageMaker request is checked with ``service_model.validate``. CloudWatch and
Application Auto Scaling are moto's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto_server import aws_env_fixture, moto_server_fixture  # noqa: F401

from fmops.airflow.operators import DeployEndpointOperator, EndpointTrigger
from fmops.catalog import load_catalog
from fmops.deployment import flow
from fmops.registry import tracking
from fmops.sagemaker import capacity, endpoint_watch
from fmops.sagemaker.endpoint_deploy import deploy, start_deployment
from fmops.sagemaker.endpoint_plan import next_instance, plan_endpoint
from fmops.sagemaker.endpoint_resources import EndpointSettings
from fmops.sagemaker.endpoint_watch import DeploymentFailedError, NoCapacityError, Verdict, clients
from fmops.sagemaker.service_model import validate
from fmops.sagemaker.settings import KmsSettings, SageMakerSettings, ScalingSettings

ACCOUNT = "123456789012"
SETTINGS = SageMakerSettings(
    region="us-east-1",
    role_arn=f"arn:aws:iam::{ACCOUNT}:role/fmops-sagemaker-execution",
    bucket="fmops-endpoint-tests",
)
MINILM = 22_713_728
ARTIFACTS = "s3://fmops-endpoint-tests/fmops/training/train-minilm-0123456789/output/model.tar.gz"
# What SageMaker says when it cannot start the instances of an endpoint.
CAPACITY = (
    "Unable to provision requested ML compute capacity. Please retry using a different ML "
    "instance type."
)
# The types moto accepts in CreateEndpointConfig (its enum lacks ml.g5), cheapest first.
G4DN = ["ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g4dn.4xlarge"]
FALLBACK_NOTE = (
    "no capacity for ml.g4dn.xlarge in us-east-1: falling back to ml.g4dn.2xlarge (next in the "
    "catalog ranking that fits 0.1 GiB, $0.94/h)"
)


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("us-east-1")


def unique(prefix: str = "cap") -> str:
    """An endpoint name of this test alone: the moto server lives for the whole session."""
    return f"{prefix}-{time.time_ns() % 10**10}"


def plan_of(catalog, endpoint: EndpointSettings | None = None, **kwargs: Any) -> dict[str, Any]:
    endpoint = endpoint or EndpointSettings(
        instance_count=1, allowed_instance_types=G4DN, poll_seconds=1
    )
    return plan_endpoint(
        kwargs.pop("settings", SETTINGS),
        endpoint,
        endpoint_name=kwargs.pop("name", None) or unique(),
        model_version=kwargs.pop("version", "3"),
        model_data_url=ARTIFACTS,
        parameters=MINILM,
        catalog=catalog,
        **kwargs,
    )


def error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def quota_message(instance_type: str) -> str:
    return (
        f"The account-level service limit '{instance_type} for endpoint usage' is 0 Instances, "
        "with current utilization of 0 Instances and a request delta of 1 Instances. Please use "
        "AWS Service Quotas to request an increase for this quota."
    )


class CapacityLimited:
    """moto's SageMaker, where ``failing`` instance types (type -> FailureReason) cannot be
    provisioned and ``no_quota`` ones are refused; ``reads`` in-progress DescribeEndpoint answers
    before a create, update or delete ends. Records every operation in ``calls`` and each request
    in ``requests``, after checking it with ``service_model.validate``."""

    GONE = object()

    def __init__(
        self,
        client: Any,
        calls: list[str],
        *,
        failing: dict[str, str] | None = None,
        no_quota: set[str] | None = None,
        reads: int = 1,
    ):
        self.client = client
        self.calls = calls
        self.failing = dict(failing or {})
        self.no_quota = set(no_quota or ())
        self.reads = reads
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.scripted: dict[str, list[Any]] = {}  # endpoint -> answers, the last one stays

    def _record(self, method: str, request: dict[str, Any]) -> None:
        operation = self.client.meta.method_to_api_mapping[method]
        validate("sagemaker", operation, request)
        self.calls.append(operation)
        self.requests.append((operation, request))

    def __getattr__(self, method: str) -> Any:
        def call(**request: Any) -> Any:
            self._record(method, request)
            return getattr(self.client, method)(**request)

        return call

    def _type_of(self, config_name: str) -> str:
        config = self.client.describe_endpoint_config(EndpointConfigName=config_name)
        return config["ProductionVariants"][0]["InstanceType"]

    def _current(self, name: str) -> Any:
        answers = self.scripted.get(name)
        if not answers:
            return self.client.describe_endpoint(EndpointName=name)
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer is self.GONE:
            arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/{name}"
            raise error("ValidationException", f'Could not find endpoint "{arn}".', "Describe")
        return answer

    def describe_endpoint(self, **request: Any) -> dict[str, Any]:
        self._record("describe_endpoint", request)
        return self._current(request["EndpointName"])

    def create_endpoint(self, **request: Any) -> dict[str, Any]:
        self._record("create_endpoint", request)
        name, config = request["EndpointName"], request["EndpointConfigName"]
        kind = self._type_of(config)
        if kind in self.no_quota:
            raise error("ResourceLimitExceeded", quota_message(kind), "CreateEndpoint")
        if kind not in self.failing:
            self.scripted.pop(name, None)
            return self.client.create_endpoint(**request)  # moto: InService at once
        base = {
            "EndpointName": name,
            "EndpointArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/{name}",
            "EndpointConfigName": config,
            "CreationTime": time.time(),
            "LastModifiedTime": time.time(),
        }
        failed = {**base, "EndpointStatus": "Failed", "FailureReason": self.failing[kind]}
        self.scripted[name] = [{**base, "EndpointStatus": "Creating"}] * self.reads + [failed]
        return {"EndpointArn": base["EndpointArn"]}

    def delete_endpoint(self, **request: Any) -> dict[str, Any]:
        self._record("delete_endpoint", request)
        name = request["EndpointName"]
        if name not in self.scripted:
            return self.client.delete_endpoint(**request)
        failed = self.scripted[name][-1]
        self.scripted[name] = [{**failed, "EndpointStatus": "Deleting"}] * self.reads + [self.GONE]
        return {}

    def update_endpoint(self, **request: Any) -> dict[str, Any]:
        self._record("update_endpoint", request)
        name, new = request["EndpointName"], request["EndpointConfigName"]
        kind = self._type_of(new)
        if kind in self.no_quota:
            raise error("ResourceLimitExceeded", quota_message(kind), "UpdateEndpoint")
        left_out = ("FailureReason", "PendingDeploymentSummary", "ResponseMetadata")
        current = {k: v for k, v in self._current(name).items() if k not in left_out}
        updating = {
            **current,
            "EndpointStatus": "Updating",
            "PendingDeploymentSummary": {"EndpointConfigName": new},
        }
        if kind in self.failing:  # SageMaker rolls the update back: the old fleet serves
            final = {
                **current,
                "EndpointStatus": "InService",
                "FailureReason": self.failing[kind],
                "LastDeploymentConfig": request["DeploymentConfig"],
            }
        else:
            final = {**current, "EndpointStatus": "InService", "EndpointConfigName": new}
        self.scripted[name] = [updating] * self.reads + [final]
        return {"EndpointArn": current["EndpointArn"]}

    def sent(self, operation: str) -> list[dict[str, Any]]:
        return [request for name, request in self.requests if name == operation]


@pytest.fixture
def aws(aws_env):
    """moto's three clients and one call log; ``sagemaker(**limits)`` puts CapacityLimited in
    front of moto's SageMaker."""
    made = clients()
    calls: list[str] = []
    for client in (made.cloudwatch, made.autoscaling):
        client.meta.events.register(
            "before-parameter-build", lambda model, **_: calls.append(model.name)
        )
    return SimpleNamespace(
        sagemaker=lambda **limits: CapacityLimited(made.sagemaker, calls, **limits),
        moto=made.sagemaker,
        cloudwatch=made.cloudwatch,
        autoscaling=made.autoscaling,
        calls=calls,
    )


def run(plan: dict[str, Any], aws: SimpleNamespace, sagemaker: CapacityLimited) -> dict[str, Any]:
    slept: list[float] = []
    return deploy(
        plan,
        sagemaker=sagemaker,
        cloudwatch=aws.cloudwatch,
        autoscaling=aws.autoscaling,
        sleep=slept.append,
    )


def config_type(aws: SimpleNamespace, config_name: str) -> str:
    config = aws.moto.describe_endpoint_config(EndpointConfigName=config_name)
    return config["ProductionVariants"][0]["InstanceType"]


# -- recognising the signals -----------------------------------------------------------------------


def test_capacity_and_quota_signals_are_told_from_other_failures():
    assert capacity.is_hosting_capacity_failure(CAPACITY)
    assert capacity.is_hosting_capacity_failure("InsufficientInstanceCapacity: ml.g5.xlarge")
    assert capacity.is_hosting_capacity_failure("CapacityError: Unable to provision")
    for other in (
        None,
        "",
        "The primary container for production variant AllTraffic did not "
        "pass the ping health check",
        "ClientError: no such image",
    ):
        assert not capacity.is_hosting_capacity_failure(other)
    quota = error("ResourceLimitExceeded", quota_message("ml.g5.xlarge"), "CreateEndpoint")
    assert capacity.is_type_quota_error(quota, "ml.g5.xlarge")
    assert not capacity.is_type_quota_error(quota, "ml.g4dn.xlarge")
    endpoints_limit = error(
        "ResourceLimitExceeded",
        "The account-level service limit 'Number of endpoints' is 100, with current use 100",
        "CreateEndpoint",
    )
    assert not capacity.is_type_quota_error(endpoints_limit, "ml.g5.xlarge")


def test_which_failed_waits_are_capacity_failures():
    new = {"previous_endpoint_config_name": None}
    update = {"previous_endpoint_config_name": "ep-v2-0badc0de"}
    failed = Verdict("failed", "ep is Failed", "Failed", "ep-v3-1", rolled_back=False)
    rolled_back = Verdict("failed", "rolled back", "InService", "ep-v2-0badc0de", rolled_back=True)
    timed_out = Verdict("timed_out", "too long", "Creating", "ep-v3-1")
    short = {"FailureReason": CAPACITY}
    assert endpoint_watch.capacity_failure(new, failed, short) == CAPACITY
    assert endpoint_watch.capacity_failure(update, rolled_back, short) == CAPACITY
    assert endpoint_watch.capacity_failure(new, timed_out, short) is None
    assert (
        endpoint_watch.capacity_failure(new, failed, {"FailureReason": "ping check failed"}) is None
    )
    assert (
        endpoint_watch.capacity_failure(update, rolled_back, {}) is None
    )  # an alarm rolled it back


# -- the next plan ---------------------------------------------------------------------------------


def test_the_next_plan_is_the_next_type_of_the_ranking_with_a_new_config(catalog, caplog):
    key = KmsSettings(endpoint_key_id="alias/fmops-endpoints")
    settings = SETTINGS.model_copy(update={"kms": key})
    endpoint = EndpointSettings(
        instance_count=1, allowed_instance_types=["ml.g4dn.xlarge", "ml.p3.2xlarge"]
    )
    plan = plan_of(catalog, endpoint, settings=settings, name="banking77")
    assert plan["instance"]["fallbacks"] == ["ml.p3.2xlarge"]
    config = plan["requests"]["CreateEndpointConfig"]
    assert "KmsKeyId" not in config  # g4dn has local NVMe

    with caplog.at_level(logging.WARNING, logger="fmops.sagemaker.endpoint_plan"):
        moved = next_instance(plan, CAPACITY, catalog=catalog)
    note = (
        "no capacity for ml.g4dn.xlarge in us-east-1: falling back to ml.p3.2xlarge (next in the "
        "catalog ranking that fits 0.1 GiB, $4.00/h)"
    )
    assert note in caplog.text and CAPACITY in caplog.text
    assert moved["capacity_fallback"] == [note] and note in moved["notes"]
    assert not any(n.startswith("KmsKeyId left out on ml.g4dn.xlarge") for n in moved["notes"])
    new_config = moved["requests"]["CreateEndpointConfig"]
    assert new_config["ProductionVariants"][0]["InstanceType"] == "ml.p3.2xlarge"
    assert new_config["KmsKeyId"] == "alias/fmops-endpoints"  # EBS only: the key goes in
    name = moved["endpoint_config_name"]
    assert name != plan["endpoint_config_name"] and name.startswith("banking77-v3-")
    assert new_config["EndpointConfigName"] == name
    assert moved["requests"]["CreateEndpoint"]["EndpointConfigName"] == name
    assert moved["requests"]["UpdateEndpoint"]["EndpointConfigName"] == name
    assert moved["requests"]["CreateModel"] == plan["requests"]["CreateModel"]  # same model
    for operation in ("CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint"):
        validate("sagemaker", operation, moved["requests"][operation])
    assert moved["instance"]["instance_type"] == "ml.p3.2xlarge"
    assert moved["instance"]["price_per_hour"] == 4.0
    assert moved["instance"]["fallbacks"] == []
    assert moved["instance"]["tried"] == [{"instance_type": "ml.g4dn.xlarge", "why": CAPACITY}]
    assert "after ml.g4dn.xlarge had no capacity" in moved["instance"]["explain"]
    assert plan["instance"]["instance_type"] == "ml.g4dn.xlarge"  # the plan itself is unchanged
    assert next_instance(moved, CAPACITY, catalog=catalog) is None  # the ranking is exhausted
    pinned = plan_of(catalog, EndpointSettings(instance_type="ml.g4dn.xlarge"))
    assert pinned["instance"]["pinned"] and next_instance(pinned, CAPACITY) is None


# -- the blocking deployment -----------------------------------------------------------------------


def test_a_new_endpoint_without_capacity_is_deleted_and_created_on_the_next_type(
    aws, catalog, caplog
):
    plan = plan_of(catalog)
    name = plan["endpoint_name"]
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": CAPACITY})
    with caplog.at_level(logging.WARNING):
        result = run(plan, aws, sagemaker)
    assert FALLBACK_NOTE in caplog.text

    assert result["action"] == "created" and result["status"] == "InService"
    assert result["instance_type"] == "ml.g4dn.2xlarge"
    assert result["capacity_fallback"] == [FALLBACK_NOTE]
    assert result["instances_tried"] == [{"instance_type": "ml.g4dn.xlarge", "why": CAPACITY}]
    assert result["endpoint_config_name"] != plan["endpoint_config_name"]
    assert config_type(aws, result["endpoint_config_name"]) == "ml.g4dn.2xlarge"
    live = aws.moto.describe_endpoint(EndpointName=name)
    assert live["EndpointConfigName"] == result["endpoint_config_name"]

    sequence = [c for c in aws.calls if c not in ("PutMetricAlarm", "DescribeModel")]
    first = sequence.index("DeleteEndpoint")
    assert sequence[: first + 1] == [
        "DescribeEndpoint",
        "CreateModel",
        "DescribeEndpointConfig",
        "CreateEndpointConfig",
        "CreateEndpoint",
        "DescribeEndpoint",  # Creating
        "DescribeEndpoint",  # Failed: no capacity
        "DeleteEndpoint",
    ]
    assert sequence[first + 1 :] == [
        "DescribeEndpoint",  # Deleting
        "DescribeEndpoint",  # gone: describe before create, as ever
        "DescribeEndpoint",
        "DescribeEndpointConfig",
        "CreateEndpointConfig",  # the next type's config, under a new name
        "CreateEndpoint",
        "DescribeEndpoint",  # InService
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    assert sagemaker.sent("DeleteEndpoint") == [{"EndpointName": name}]
    validate("sagemaker", "DeleteEndpoint", {"EndpointName": name})
    created = [r["EndpointConfigName"] for r in sagemaker.sent("CreateEndpoint")]
    assert created == [plan["endpoint_config_name"], result["endpoint_config_name"]]
    assert sagemaker.sent("CreateModel") == [plan["requests"]["CreateModel"]]  # one model


def test_no_quota_for_the_type_creates_the_endpoint_on_the_next_at_once(aws, catalog):
    plan = plan_of(catalog)
    sagemaker = aws.sagemaker(no_quota={"ml.g4dn.xlarge"})
    result = run(plan, aws, sagemaker)
    assert result["instance_type"] == "ml.g4dn.2xlarge" and result["status"] == "InService"
    (tried,) = result["instances_tried"]
    assert tried["instance_type"] == "ml.g4dn.xlarge"
    assert "ResourceLimitExceeded" in tried["why"] and "for endpoint usage" in tried["why"]
    assert result["capacity_fallback"] == [FALLBACK_NOTE]
    assert "DeleteEndpoint" not in aws.calls  # nothing was created on the refused type
    types = [config_type(aws, r["EndpointConfigName"]) for r in sagemaker.sent("CreateEndpoint")]
    assert types == ["ml.g4dn.xlarge", "ml.g4dn.2xlarge"]


def test_a_limit_that_is_not_the_types_is_not_a_fallback(aws, catalog):
    plan = plan_of(catalog)
    sagemaker = aws.sagemaker()

    def refuse(**request: Any) -> None:
        sagemaker._record("create_endpoint", request)
        raise error(
            "ResourceLimitExceeded",
            "The account-level service limit 'Number of endpoints' is 2, with current use 2",
            "CreateEndpoint",
        )

    sagemaker.create_endpoint = refuse
    with pytest.raises(ClientError, match="Number of endpoints"):
        run(plan, aws, sagemaker)
    assert aws.calls.count("CreateEndpoint") == 1


def existing_endpoint(
    aws: SimpleNamespace, name: str, instance_type: str = "ml.g4dn.xlarge"
) -> str:
    """Version 2 serving on ``instance_type`` (in moto)."""
    old = f"{name}-v2-0badc0de"
    aws.moto.create_model(
        ModelName=f"{name}-v2-model",
        PrimaryContainer={"Image": "123.dkr.ecr.us-east-1.amazonaws.com/x:1"},
        ExecutionRoleArn=SETTINGS.role_arn,
    )
    aws.moto.create_endpoint_config(
        EndpointConfigName=old,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"{name}-v2-model",
                "InstanceType": instance_type,
                "InitialInstanceCount": 1,
            }
        ],
    )
    aws.moto.create_endpoint(EndpointName=name, EndpointConfigName=old)
    return old


def scaled_plan(aws, catalog, name: str) -> tuple[dict, dict]:
    """A plan with auto scaling (1-2 instances) whose scalable target is already registered."""
    endpoint = EndpointSettings(
        instance_count=1,
        allowed_instance_types=G4DN,
        poll_seconds=1,
        scaling=ScalingSettings(min_instances=1, max_instances=2),
    )
    plan = plan_of(catalog, endpoint, name=name)
    register = plan["requests"]["RegisterScalableTarget"]
    aws.autoscaling.register_scalable_target(**register)
    aws.autoscaling.put_scaling_policy(**plan["requests"]["PutScalingPolicy"])
    return plan, register


def test_an_update_rolled_back_for_capacity_goes_blue_green_to_the_next_type(aws, catalog):
    name = unique()
    old = existing_endpoint(aws, name)
    plan, register = scaled_plan(aws, catalog, name)
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": CAPACITY})
    aws.calls.clear()

    result = run(plan, aws, sagemaker)

    assert result["action"] == "updated" and result["previous_endpoint_config_name"] == old
    assert result["instance_type"] == "ml.g4dn.2xlarge"
    assert result["capacity_fallback"] == [FALLBACK_NOTE]
    first, second = sagemaker.sent("UpdateEndpoint")
    assert first["EndpointConfigName"] == plan["endpoint_config_name"]
    assert config_type(aws, second["EndpointConfigName"]) == "ml.g4dn.2xlarge"
    assert second["EndpointConfigName"] == result["endpoint_config_name"]
    assert second["DeploymentConfig"] == first["DeploymentConfig"]  # blue/green again
    assert second["RetainAllVariantProperties"] is False
    assert "DeleteEndpoint" not in aws.calls and "CreateEndpoint" not in aws.calls
    # Auto scaling is out of the way while the instance type changes, and back after.
    order = [
        c
        for c in aws.calls
        if c in ("UpdateEndpoint", "DeregisterScalableTarget", "RegisterScalableTarget")
    ]
    assert order == [
        "UpdateEndpoint",
        "DeregisterScalableTarget",
        "UpdateEndpoint",
        "RegisterScalableTarget",
    ]
    (target,) = aws.autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[register["ResourceId"]]
    )["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)


def test_an_update_refused_for_quota_goes_to_the_next_type_and_keeps_the_old_scaling(aws, catalog):
    name = unique()
    old = existing_endpoint(aws, name, "ml.g4dn.4xlarge")
    plan, register = scaled_plan(aws, catalog, name)
    sagemaker = aws.sagemaker(no_quota={"ml.g4dn.xlarge"})
    aws.calls.clear()

    result = run(plan, aws, sagemaker)

    assert result["action"] == "updated" and result["previous_endpoint_config_name"] == old
    assert result["instance_type"] == "ml.g4dn.2xlarge"
    assert result["capacity_fallback"] == [FALLBACK_NOTE]
    refused, accepted = sagemaker.sent("UpdateEndpoint")
    assert config_type(aws, refused["EndpointConfigName"]) == "ml.g4dn.xlarge"
    assert config_type(aws, accepted["EndpointConfigName"]) == "ml.g4dn.2xlarge"
    # The refused update leaves the old fleet serving: its auto scaling is registered again
    # before the next update takes it away once more.
    order = [
        c
        for c in aws.calls
        if c in ("UpdateEndpoint", "DeregisterScalableTarget", "RegisterScalableTarget")
    ]
    assert order == [
        "DeregisterScalableTarget",
        "UpdateEndpoint",  # ResourceLimitExceeded
        "RegisterScalableTarget",
        "DeregisterScalableTarget",
        "UpdateEndpoint",
        "RegisterScalableTarget",
    ]


def test_the_fallback_update_is_the_exact_request_sagemaker_takes(aws, catalog):
    """The update path against botocore's Stubber: the rollback as SageMaker describes it, and the
    UpdateEndpoint that follows, each checked against the service model."""
    name = unique()
    old = f"{name}-v2-0badc0de"
    endpoint = EndpointSettings(
        instance_count=1,
        allowed_instance_types=["ml.g5.xlarge", "ml.g5.2xlarge"],
        scaling=ScalingSettings(enabled=False),
        poll_seconds=1,
    )
    plan = plan_of(catalog, endpoint, name=name)
    moved = next_instance(plan, CAPACITY, catalog=catalog)
    arn = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}"
    sagemaker = clients().sagemaker
    described = {
        "EndpointName": name,
        "EndpointArn": f"{arn}:endpoint/{name}",
        "EndpointConfigName": old,
        "EndpointStatus": "InService",
        "CreationTime": 0,
        "LastModifiedTime": 0,
    }
    model = {"ModelName": plan["model_name"], "ModelArn": f"{arn}:model/m", "CreationTime": 0}

    def config(name_: str) -> dict[str, Any]:
        return {
            "EndpointConfigName": name_,
            "EndpointConfigArn": f"{arn}:endpoint-config/{name_}",
            "ProductionVariants": [{"VariantName": "AllTraffic"}],
            "CreationTime": 0,
        }

    with Stubber(sagemaker) as stub:
        for attempt in (plan, moved):
            stub.add_response("describe_endpoint", described, {"EndpointName": name})
            stub.add_response("describe_model", model, {"ModelName": plan["model_name"]})
            config_name = attempt["endpoint_config_name"]
            stub.add_response(
                "describe_endpoint_config", config(config_name), {"EndpointConfigName": config_name}
            )
            stub.add_response(
                "update_endpoint",
                {"EndpointArn": described["EndpointArn"]},
                attempt["requests"]["UpdateEndpoint"],
            )
            if attempt is plan:
                stub.add_response(
                    "describe_endpoint",
                    {
                        **described,
                        "EndpointStatus": "Updating",
                        "PendingDeploymentSummary": {"EndpointConfigName": config_name},
                    },
                )
                stub.add_response(
                    "describe_endpoint",
                    {
                        **described,
                        "FailureReason": CAPACITY,
                        "LastDeploymentConfig": plan["requests"]["UpdateEndpoint"][
                            "DeploymentConfig"
                        ],
                    },
                )
        stub.add_response(
            "describe_endpoint", {**described, "EndpointConfigName": moved["endpoint_config_name"]}
        )
        result = deploy(
            plan,
            sagemaker=sagemaker,
            cloudwatch=aws.cloudwatch,
            autoscaling=aws.autoscaling,
            sleep=lambda seconds: None,
        )
        stub.assert_no_pending_responses()
    update = moved["requests"]["UpdateEndpoint"]
    assert update["EndpointConfigName"] == moved["endpoint_config_name"]
    validate("sagemaker", "UpdateEndpoint", update)
    assert result["instance_type"] == "ml.g5.2xlarge"
    assert result["endpoint_config_name"] == moved["endpoint_config_name"]
    assert result["capacity_fallback"] == moved["capacity_fallback"]


def test_an_exhausted_ranking_stops_naming_every_type_tried(aws, catalog):
    endpoint = EndpointSettings(instance_count=1, allowed_instance_types=G4DN[:2], poll_seconds=1)
    plan = plan_of(catalog, endpoint)
    sagemaker = aws.sagemaker(no_quota={"ml.g4dn.xlarge"}, failing={"ml.g4dn.2xlarge": CAPACITY})
    with pytest.raises(NoCapacityError) as info:
        run(plan, aws, sagemaker)
    message = str(info.value)
    assert f"no capacity in us-east-1 for endpoint {plan['endpoint_name']}" in message
    assert "tried 2: ml.g4dn.xlarge (An error occurred (ResourceLimitExceeded)" in message
    assert f"; ml.g4dn.2xlarge ({CAPACITY})" in message
    assert "widen sagemaker.endpoint.allowed_instance_types or max_price_per_hour" in message
    assert "is being deleted (it never served)" in message
    assert isinstance(info.value, DeploymentFailedError) and info.value.status == "Failed"
    # The failed endpoint is deleted so that a later run can create it; nothing more is tried.
    assert aws.calls.count("DeleteEndpoint") == 1
    assert aws.calls.count("CreateEndpoint") == 2


def test_a_pinned_type_does_not_fall_back(aws, catalog):
    pinned = EndpointSettings(instance_type="ml.g4dn.xlarge", instance_count=1, poll_seconds=1)
    plan = plan_of(catalog, pinned)
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": CAPACITY})
    with pytest.raises(NoCapacityError) as info:
        run(plan, aws, sagemaker)
    message = str(info.value)
    assert (
        f"no capacity for ml.g4dn.xlarge in us-east-1 for endpoint {plan['endpoint_name']}: "
        in (message)
    )
    assert CAPACITY in message
    assert "pins ml.g4dn.xlarge, so fmops does not fall back" in message
    assert "set sagemaker.endpoint.instance_type: auto" in message
    assert aws.calls.count("CreateEndpoint") == 1 and aws.calls.count("DeleteEndpoint") == 1

    quota = aws.sagemaker(no_quota={"ml.g4dn.xlarge"})
    with pytest.raises(NoCapacityError, match="pins ml.g4dn.xlarge") as info:
        run(plan_of(catalog, pinned), aws, quota)
    assert "ResourceLimitExceeded" in str(info.value)
    assert "being deleted" not in str(info.value)


def test_a_failure_of_the_deployment_itself_is_not_retried_elsewhere(aws, catalog):
    plan = plan_of(catalog)
    reason = "The primary container for production variant AllTraffic did not pass the ping check"
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": reason})
    with pytest.raises(DeploymentFailedError) as info:
        run(plan, aws, sagemaker)
    assert not isinstance(info.value, NoCapacityError)
    assert f"is Failed: {reason}" in str(info.value)
    assert aws.calls.count("CreateEndpoint") == 1
    assert "DeleteEndpoint" not in aws.calls and "UpdateEndpoint" not in aws.calls


def test_a_retry_that_finds_its_endpoint_failed_for_capacity_goes_on(aws, catalog):
    plan = plan_of(catalog)
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": CAPACITY}, reads=0)
    handle = start_deployment(
        plan, sagemaker=sagemaker, cloudwatch=aws.cloudwatch, autoscaling=aws.autoscaling
    )
    assert handle["action"] == "created"  # ... and the task died before it saw the failure
    aws.calls.clear()
    result = run(plan, aws, sagemaker)  # the retry, from the same first plan
    assert result["instance_type"] == "ml.g4dn.2xlarge"
    assert result["capacity_fallback"] == [FALLBACK_NOTE]
    assert aws.calls[:3] == ["DescribeEndpoint", "DescribeEndpointConfig", "DeleteEndpoint"]
    assert aws.calls.count("CreateEndpoint") == 1

    # Run again: it serves this version on the fallback type, which is no change.
    aws.calls.clear()
    again = run(plan, aws, sagemaker)
    assert again["action"] == "unchanged" and again["instance_type"] == "ml.g4dn.2xlarge"
    assert "CreateEndpoint" not in aws.calls and "UpdateEndpoint" not in aws.calls


# -- the deferred deployment -----------------------------------------------------------------------


class Registry:
    """The MLflow client's model version tags."""

    def __init__(self):
        self.tags: dict[tuple[str, str], dict[str, str]] = {}

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault((name, str(version)), {})[key] = value


def test_the_deferred_wait_defers_again_with_the_next_plan(aws, catalog, monkeypatch):
    from fmops.config import load_config
    from fmops.paths import CONFIGS_DIR

    config = load_config(CONFIGS_DIR / "sagemaker.example.yaml")
    plan = plan_of(catalog)
    name = plan["endpoint_name"]
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": CAPACITY}, reads=0)
    made = SimpleNamespace(
        sagemaker=sagemaker, cloudwatch=aws.cloudwatch, autoscaling=aws.autoscaling
    )
    monkeypatch.setattr(endpoint_watch, "clients", lambda *args, **kwargs: made)
    monkeypatch.setattr(endpoint_watch, "client", lambda *args, **kwargs: sagemaker)
    mlflow = Registry()
    monkeypatch.setattr(tracking, "client", lambda config: mlflow)
    handle = start_deployment(
        plan, sagemaker=sagemaker, cloudwatch=aws.cloudwatch, autoscaling=aws.autoscaling
    )
    wait = {
        "deployment": handle,
        "version": "3",
        "config": config.model_dump(mode="json"),
        "aws_conn_id": "aws_default",
        "region_name": "us-east-1",
    }
    task = DeployEndpointOperator(task_id="deploy", candidate={})

    def fired(trigger: EndpointTrigger) -> dict[str, Any]:
        async def collect() -> list[dict[str, Any]]:
            return [event.payload async for event in trigger.run()]

        (event,) = asyncio.run(collect())
        return event

    def resume(wait: dict[str, Any]) -> TaskDeferred:
        with pytest.raises(TaskDeferred) as deferred:
            task.execute_complete({}, event=fired(EndpointTrigger.waiting_for(wait)), wait=wait)
        assert deferred.value.method_name == "execute_complete"
        return deferred.value

    # The endpoint Failed for want of capacity: it is deleted, and the task waits for that.
    deleting = resume(wait)
    following = deleting.kwargs["wait"]
    assert following["deployment"]["action"] == "deleting"
    assert following["deployment"]["plan"]["instance"]["instance_type"] == "ml.g4dn.2xlarge"
    assert {k: following[k] for k in ("version", "config", "aws_conn_id")} == {
        k: wait[k] for k in ("version", "config", "aws_conn_id")
    }
    assert deleting.trigger.serialize()[1]["awaiting"] == "deletion"
    assert sagemaker.sent("DeleteEndpoint") == [{"EndpointName": name}]

    # Gone: created on the next type, and the task waits for that deployment.
    created = resume(following)
    again = created.kwargs["wait"]["deployment"]
    assert again["action"] == "created" and again["instance_type"] == "ml.g4dn.2xlarge"
    path, kwargs = created.trigger.serialize()
    assert kwargs["awaiting"] == "deployment"
    assert kwargs["endpoint_config_name"] == again["endpoint_config_name"]
    assert config_type(aws, again["endpoint_config_name"]) == "ml.g4dn.2xlarge"

    # InService: the result says where it serves and why, and so does the model version.
    trigger = EndpointTrigger.waiting_for(created.kwargs["wait"])
    result = task.execute_complete({}, event=fired(trigger), wait=created.kwargs["wait"])
    assert result["instance_type"] == "ml.g4dn.2xlarge"
    assert result["instance"] == "1 x ml.g4dn.2xlarge"
    assert result["capacity_fallback"] == [FALLBACK_NOTE]
    assert mlflow.tags[(config.registry.model_name, "3")] == {
        "fmops.endpoint.name": name,
        "fmops.endpoint.instance_type": "ml.g4dn.2xlarge",
        "fmops.endpoint.capacity_fallback": FALLBACK_NOTE,
    }


def test_the_deferred_wait_fails_without_retries_once_no_type_is_left(aws, catalog, monkeypatch):
    plan = plan_of(catalog, EndpointSettings(instance_type="ml.g4dn.xlarge", poll_seconds=1))
    sagemaker = aws.sagemaker(failing={"ml.g4dn.xlarge": CAPACITY}, reads=0)
    made = SimpleNamespace(
        sagemaker=sagemaker, cloudwatch=aws.cloudwatch, autoscaling=aws.autoscaling
    )
    monkeypatch.setattr(endpoint_watch, "clients", lambda *args, **kwargs: made)
    handle = start_deployment(
        plan, sagemaker=sagemaker, cloudwatch=aws.cloudwatch, autoscaling=aws.autoscaling
    )
    assert "plan" not in handle  # pinned: nothing to fall back to
    failed = sagemaker.describe_endpoint(EndpointName=plan["endpoint_name"])
    verdict = endpoint_watch.DeploymentWatch(
        handle["endpoint_config_name"], timeout_seconds=60
    ).see(failed, 0)
    event = {
        "verdict": verdict.as_dict(),
        "description": endpoint_watch.jsonable_description(failed),
    }
    wait = {"deployment": handle, "version": "3", "aws_conn_id": "a", "region_name": "us-east-1"}
    task = DeployEndpointOperator(task_id="deploy", candidate={})
    with pytest.raises(AirflowFailException, match="NoCapacityError: no capacity for ml.g4dn"):
        task.execute_complete({}, event=event, wait=wait)
    assert sagemaker.sent("DeleteEndpoint") == [{"EndpointName": plan["endpoint_name"]}]


def test_flow_records_where_the_version_serves(monkeypatch):
    from fmops.config import load_config
    from fmops.paths import CONFIGS_DIR

    config = load_config(CONFIGS_DIR / "sagemaker.example.yaml")
    mlflow = Registry()
    monkeypatch.setattr(tracking, "client", lambda config: mlflow)
    deployed = {"endpoint": "banking77", "version": "4", "instance_type": "ml.g5.xlarge"}
    tags = flow.record_endpoint(config, {**deployed, "capacity_fallback": []})
    assert tags["fmops.endpoint.capacity_fallback"] == flow.NO_FALLBACK
    notes = ["no capacity for ml.g4dn.xlarge ...", "no capacity for ml.g4dn.2xlarge ..."]
    flow.record_endpoint(config, {**deployed, "capacity_fallback": notes})
    assert mlflow.tags[(config.registry.model_name, "4")] == {
        "fmops.endpoint.name": "banking77",
        "fmops.endpoint.instance_type": "ml.g5.xlarge",
        "fmops.endpoint.capacity_fallback": "; ".join(notes),
    }
