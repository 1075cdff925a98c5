"""fmops_deploy's deploy task on the sagemaker target, against a moto server on 127.0.0.1:
a registered version's model.tar.gz in S3 becomes a SageMaker endpoint with its rollback alarms
and auto scaling, and the model version records where it serves. (Updates of an existing endpoint
are tested with botocore's Stubber in test_sagemaker_endpoints.py: moto has no UpdateEndpoint;
capacity fallback in depth in test_endpoint_capacity.py.)"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from types import SimpleNamespace

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from moto_server import aws_env_fixture, moto_server_fixture  # noqa: F401

from fmops.config import load_config
from fmops.deployment import flow
from fmops.paths import CONFIGS_DIR
from fmops.registry import tracking
from fmops.sagemaker import endpoint_watch

BUCKET = "fmops-deploy-test"
ARTIFACTS = f"s3://{BUCKET}/fmops/training/train-minilm-full-x/output/model.tar.gz"


def model_archive(with_handlers: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        files = {"label_map.json": b'{"labels": ["a"]}'}
        if with_handlers:
            files["code/inference.py"] = b"def model_fn(model_dir): ...\n"
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def config(tmp_path, aws_env, monkeypatch):
    raw = yaml.safe_load((CONFIGS_DIR / "sagemaker.example.yaml").read_text())
    raw["sagemaker"]["bucket"] = BUCKET
    raw["sagemaker"]["endpoint"]["instance_type"] = "ml.g4dn.xlarge"  # a type moto accepts
    # An endpoint of this test alone: the moto server lives for the whole session.
    raw["deployment"]["endpoint_name"] = f"banking77-{time.time_ns() % 10**10}"
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw))
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    key = ARTIFACTS[len(f"s3://{BUCKET}/") :]
    s3.put_object(Bucket=BUCKET, Key=key, Body=model_archive(with_handlers=True))
    tags = {"fmops.candidate": "minilm-full", "fmops.model_artifacts": ARTIFACTS}
    version = SimpleNamespace(tags=tags)
    mlflow = SimpleNamespace(
        get_model_version=lambda name, number: version,
        set_model_version_tag=lambda name, number, key, value: tags.update({key: value}),
    )
    monkeypatch.setattr(tracking, "client", lambda config: mlflow)
    return load_config(path), tags


def test_a_registered_version_becomes_a_sagemaker_endpoint(config, aws_env):
    config, tags = config
    result = flow.deploy(config, "3")
    assert result["action"] == "created"
    assert result["status"] == "InService"
    assert result["instance"].endswith("ml.g4dn.xlarge")
    assert result["instance_type"] == "ml.g4dn.xlarge" and result["capacity_fallback"] == []
    assert tags["fmops.endpoint.name"] == config.deployment.endpoint_name
    assert tags["fmops.endpoint.instance_type"] == "ml.g4dn.xlarge"
    assert tags["fmops.endpoint.capacity_fallback"] == flow.NO_FALLBACK

    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    endpoint = sagemaker.describe_endpoint(EndpointName=config.deployment.endpoint_name)
    assert endpoint["EndpointConfigName"] == result["endpoint_config"]
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=result["endpoint_config"]
    )
    model = sagemaker.describe_model(
        ModelName=endpoint_config["ProductionVariants"][0]["ModelName"]
    )
    assert model["PrimaryContainer"]["ModelDataUrl"] == ARTIFACTS
    alarms = boto3.client("cloudwatch", endpoint_url=aws_env, region_name="us-east-1")
    names = [a["AlarmName"] for a in alarms.describe_alarms()["MetricAlarms"]]
    assert any(n.endswith("invocation-5xx-errors") for n in names)
    assert any(n.endswith("model-latency") for n in names)

    # Deploying the same version again changes nothing.
    assert flow.deploy(config, "3")["action"] == "unchanged"


def test_the_deploy_task_waits_for_the_endpoint_in_the_triggerer(config, aws_env):
    from airflow.sdk.exceptions import TaskDeferred

    from fmops.airflow.operators import DeployEndpointOperator, EndpointTrigger

    config, _ = config
    candidate = {"resolved": {"config": config.model_dump(mode="json")}, "version": "3"}
    task = DeployEndpointOperator(task_id="deploy", candidate=candidate)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, EndpointTrigger)
    assert trigger.endpoint_name == config.deployment.endpoint_name

    async def fired() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    (event,) = asyncio.run(fired())  # from the aws_default connection, at moto
    assert event["verdict"]["state"] == "succeeded"
    result = task.execute_complete({}, event=event, **deferred.value.kwargs)
    assert result["action"] == "created" and result["status"] == "InService"
    assert result["endpoint_config"] == trigger.endpoint_config_name
    assert result["instance"].endswith("x ml.g4dn.xlarge")
    autoscaling = boto3.client(
        "application-autoscaling", endpoint_url=aws_env, region_name="us-east-1"
    )
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[f"endpoint/{trigger.endpoint_name}/variant/AllTraffic"],
    )["ScalableTargets"]
    assert len(targets) == 1  # registered once the endpoint was InService

    # The same version again: nothing to wait for, no deferral.
    assert task.execute({})["action"] == "unchanged"


def test_a_version_trained_elsewhere_or_without_handlers_is_refused(config, aws_env):
    from fmops.sagemaker.endpoint_resources import EndpointError

    config, tags = config
    tags["fmops.model_artifacts"] = "file:///tmp/model.tar.gz"
    with pytest.raises(LookupError, match="only versions that fmops_finetune trained on the"):
        flow.deploy(config, "4")
    tags["fmops.model_artifacts"] = ARTIFACTS
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    key = ARTIFACTS[len(f"s3://{BUCKET}/") :]
    s3.put_object(Bucket=BUCKET, Key=key, Body=model_archive(with_handlers=False))
    with pytest.raises(EndpointError, match="code/inference.py"):
        flow.deploy(config, "5")


def test_without_quota_for_the_first_type_the_version_serves_on_the_next(
    config, aws_env, monkeypatch
):
    config, tags = config
    endpoint = config.sagemaker.endpoint.model_copy(
        update={
            "instance_type": "auto",
            "allowed_instance_types": ["ml.g4dn.xlarge", "ml.g4dn.2xlarge"],
            "max_price_per_hour": None,
        }
    )
    config = config.model_copy(
        update={"sagemaker": config.sagemaker.model_copy(update={"endpoint": endpoint})}
    )
    made_clients = endpoint_watch.clients
    refused: list[str] = []

    def clients(*args, **kwargs):
        made = made_clients(*args, **kwargs)

        def no_quota(params, **_):  # SageMaker's answer where the account has no ml.g4dn.xlarge
            config_name = json.loads(params["body"])["EndpointConfigName"]  # the request sent
            variant = made.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
            kind = variant["ProductionVariants"][0]["InstanceType"]
            if kind != "ml.g4dn.xlarge":
                return None
            refused.append(config_name)
            message = f"The account-level service limit '{kind} for endpoint usage' is 0 Instances"
            error = {"Error": {"Code": "ResourceLimitExceeded", "Message": message}}
            return AWSResponse(None, 400, {}, None), error

        made.sagemaker.meta.events.register("before-call.sagemaker.CreateEndpoint", no_quota)
        return made

    monkeypatch.setattr(endpoint_watch, "clients", clients)
    result = flow.deploy(config, "6")

    assert len(refused) == 1
    assert result["status"] == "InService" and result["instance_type"] == "ml.g4dn.2xlarge"
    (note,) = result["capacity_fallback"]
    assert note.startswith(
        "no capacity for ml.g4dn.xlarge in us-east-1: falling back to ml.g4dn.2xlarge (next in "
        "the catalog ranking that fits"
    )
    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    live = sagemaker.describe_endpoint(EndpointName=config.deployment.endpoint_name)
    assert live["EndpointConfigName"] == result["endpoint_config"] != refused[0]
    serving = sagemaker.describe_endpoint_config(EndpointConfigName=result["endpoint_config"])
    assert serving["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.2xlarge"
    assert tags["fmops.endpoint.instance_type"] == "ml.g4dn.2xlarge"
    assert tags["fmops.endpoint.capacity_fallback"] == note
