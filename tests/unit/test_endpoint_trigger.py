"""fmops_deploy's deploy task on the sagemaker target waits in the triggerer: ``EndpointTrigger``
over recorded DescribeEndpoint answers, and ``DeployEndpointOperator`` deferring to it and
resuming. (The whole path against a moto server is in test_sagemaker_deploy.py; the deferred
capacity fallback in test_endpoint_capacity.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from airflow.sdk.module_loading import import_string
from botocore.exceptions import ClientError

from fmops.airflow.operators import DeployEndpointOperator, EndpointTrigger
from fmops.config import load_config
from fmops.deployment import flow
from fmops.paths import CONFIGS_DIR
from fmops.registry import tracking
from fmops.sagemaker import endpoint_watch

OLD, NEW = "banking77-v2-0badc0de", "banking77-v3-3a4e2b70"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ALARMS = ["fmops-banking77-AllTraffic-invocation-5xx-errors"]


def described(status: str, config: str = NEW, **extra: Any) -> dict[str, Any]:
    return {
        "EndpointName": "banking77",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        "ResponseMetadata": {"HTTPStatusCode": 200},
        **extra,
    }


def updating() -> dict[str, Any]:
    return described("Updating", OLD, PendingDeploymentSummary={"EndpointConfigName": NEW})


GONE = ClientError(
    {"Error": {"Code": "ValidationException", "Message": 'Could not find endpoint "banking77".'}},
    "DescribeEndpoint",
)


class FakeSageMaker:
    """DescribeEndpoint answering from a recorded sequence (an exception in it is raised)."""

    def __init__(self, answers: list[dict[str, Any] | Exception]):
        self.answers = list(answers)
        self.asked: list[str] = []

    def describe_endpoint(self, *, EndpointName: str) -> dict[str, Any]:  # noqa: N803
        self.asked.append(EndpointName)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def sagemaker(monkeypatch):
    """Install a FakeSageMaker as the trigger's client; records the connection it was made from."""
    made: dict[str, Any] = {}

    def install(answers: list[dict[str, Any]]) -> FakeSageMaker:
        fake = FakeSageMaker(answers)

        def client(service: str, aws_conn_id: str, region_name: str | None) -> FakeSageMaker:
            made.update(service=service, aws_conn_id=aws_conn_id, region_name=region_name)
            return fake

        monkeypatch.setattr(endpoint_watch, "client", client)
        return fake

    install.made = made
    return install


def trigger(**overrides: Any) -> EndpointTrigger:
    kwargs = {
        "endpoint_name": "banking77",
        "endpoint_config_name": NEW,
        "previous_endpoint_config_name": OLD,
        "started_at": time.time(),
        "timeout_seconds": 3600,
        "poll_interval": 0,
        "aws_conn_id": "aws_fmops",
        "region_name": "eu-west-1",
    }
    return EndpointTrigger(**{**kwargs, **overrides})


def events(trigger: EndpointTrigger) -> list[dict[str, Any]]:
    """Every event the trigger yields, as the triggerer would collect them."""

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    return asyncio.run(collect())


# -- the trigger -----------------------------------------------------------------------------------


def test_fires_once_in_service_on_the_new_config(sagemaker):
    fake = sagemaker([updating(), updating(), described("InService", NEW)])
    (event,) = events(trigger())
    assert event["verdict"]["state"] == "succeeded"
    assert event["verdict"]["config_name"] == NEW
    assert fake.asked == ["banking77"] * 3
    assert sagemaker.made == {
        "service": "sagemaker",
        "aws_conn_id": "aws_fmops",
        "region_name": "eu-west-1",
    }
    description = event["description"]
    assert description["EndpointConfigName"] == NEW
    assert description["LastModifiedTime"] == NOW.isoformat()
    assert "ResponseMetadata" not in description
    assert json.loads(json.dumps(event)) == event  # the triggerer stores it as JSON


def test_in_service_on_the_old_config_fires_a_rollback_with_its_reason(sagemaker):
    rollback = {"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": ALARMS[0]}]}}
    sagemaker(
        [
            updating(),
            described("RollingBack", OLD),
            described("InService", OLD, LastDeploymentConfig=rollback),
        ]
    )
    (event,) = events(trigger())
    verdict = event["verdict"]
    assert verdict["state"] == "failed" and verdict["rolled_back"]
    assert verdict["status"] == "InService" and verdict["config_name"] == OLD
    assert f"InService on the previous config {OLD}, not on the new {NEW}" in verdict["message"]
    assert f"its rollback alarms: {ALARMS[0]}" in verdict["message"]


def test_a_stale_first_read_is_not_taken_for_a_rollback(sagemaker):
    # DescribeEndpoint right after UpdateEndpoint may still show the old config InService.
    sagemaker([described("InService", OLD), updating(), described("InService", NEW)])
    (event,) = events(trigger())
    assert event["verdict"]["state"] == "succeeded"


def test_a_failed_creation_fires_with_the_failure_reason(sagemaker):
    reason = "the model container did not pass the ping health check"
    sagemaker([described("Creating"), described("Failed", FailureReason=reason)])
    (event,) = events(trigger(previous_endpoint_config_name=None))
    assert event["verdict"]["state"] == "failed"
    assert f"banking77 is Failed: {reason}" in event["verdict"]["message"]


def test_the_deadline_counts_from_the_start_of_the_deployment(sagemaker):
    # A triggerer restarted two hours into a deployment with a one-hour wait gives up at once.
    fake = sagemaker([updating()] * 3)
    (event,) = events(trigger(started_at=time.time() - 7200))
    verdict = event["verdict"]
    assert verdict["state"] == "timed_out" and verdict["status"] == "Updating"
    assert "longer than the wait of 3600 s" in verdict["message"]
    assert "may still be running" in verdict["message"]
    assert len(fake.asked) == 1


def test_serialized_kwargs_round_trip():
    for original in (
        trigger(previous_endpoint_config_name=None),
        trigger(awaiting="deletion"),
    ):
        path, kwargs = original.serialize()
        assert path == "fmops.airflow.operators.EndpointTrigger"
        assert json.loads(json.dumps(kwargs)) == kwargs
        assert import_string(path)(**kwargs).serialize() == (path, kwargs)
    with pytest.raises(ValueError, match="'deployment' or 'deletion'"):
        trigger(awaiting="creation")


# -- the trigger, waiting for a failed endpoint to be deleted (capacity fallback) ------------------

NO_CAPACITY = "Unable to provision requested ML compute capacity. Please retry using a different"


def test_a_deleted_endpoint_fires_once_it_is_gone(sagemaker):
    failed = described("Failed", NEW, FailureReason=NO_CAPACITY)
    fake = sagemaker([failed, described("Deleting", NEW, FailureReason=NO_CAPACITY), GONE])
    (event,) = events(trigger(awaiting="deletion", previous_endpoint_config_name=None))
    assert event == {
        "verdict": {
            "state": "succeeded",
            "message": "banking77 is deleted",
            "status": "Deleted",
            "config_name": None,
            "rolled_back": False,
        },
        "description": None,
        "wait": None,
    }
    assert fake.asked == ["banking77"] * 3  # Failed still, as DescribeEndpoint lags: waited


def test_a_deletion_that_lasts_or_is_overtaken_fires_its_failure(sagemaker):
    sagemaker([described("Deleting", NEW)])
    (event,) = events(trigger(awaiting="deletion", started_at=time.time() - 7200))
    assert event["verdict"]["state"] == "timed_out"
    assert "still Deleting after" in event["verdict"]["message"]
    assert event["description"]["EndpointStatus"] == "Deleting"

    sagemaker([described("Creating", "banking77-v9-ffffffff")])
    (event,) = events(trigger(awaiting="deletion"))
    assert event["verdict"]["state"] == "failed"
    assert "another deployment created it again" in event["verdict"]["message"]


# -- the operator ----------------------------------------------------------------------------------


def candidate(example: str, version: str = "7") -> dict[str, Any]:
    config = load_config(CONFIGS_DIR / example)
    return {"resolved": {"config": config.model_dump(mode="json")}, "version": version}


def test_the_local_target_deploys_within_the_task(monkeypatch):
    seen = []
    result = {"endpoint": "banking77", "url": "http://127.0.0.1:8080", "version": "7"}

    def deploy(config, version):
        seen.append((config.target, version))
        return result

    monkeypatch.setattr(flow, "deploy", deploy)
    task = DeployEndpointOperator(task_id="deploy", candidate=candidate("local.yaml"))
    assert task.execute({}) == result
    assert seen == [("local", "7")]


def a_wait(**deployment: Any) -> dict[str, Any]:
    """What flow.start_deploy returns for an update that is under way."""
    handle = {
        "endpoint_name": "banking77",
        "action": "updated",
        "endpoint_config_name": NEW,
        "previous_endpoint_config_name": OLD,
        "status": "InService",
        "model_name": "banking77-v3-0f1e2d3c",
        "instance_type": "ml.g4dn.xlarge",
        "instance_count": 2,
        "alarm_names": ALARMS,
        "notes": [],
        "scaling": {"enabled": True, "min_instances": 1, "max_instances": 4},
        "requests": {
            "RegisterScalableTarget": {
                "ServiceNamespace": "sagemaker",
                "ResourceId": "endpoint/banking77/variant/AllTraffic",
                "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
                "MinCapacity": 1,
                "MaxCapacity": 4,
            },
            "PutScalingPolicy": {
                "PolicyName": "fmops-banking77-AllTraffic-invocations-per-instance",
                "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 250},
            },
        },
        "deregistered": False,
        "started_at": 1_800_000_000.0,
        "timeout_seconds": 4200,
        "poll_seconds": 30,
        **deployment,
    }
    return {
        "deployment": handle,
        "version": "3",
        "config": load_config(CONFIGS_DIR / "sagemaker.example.yaml").model_dump(mode="json"),
        "aws_conn_id": "aws_fmops",
        "region_name": "eu-west-1",
    }


class FakeAws:
    """CloudWatch and Application Auto Scaling, recording the calls; alarms in ALARM given."""

    def __init__(self, firing: list[str] | None = None):
        self.firing = firing or []
        self.calls: list[str] = []
        self.cloudwatch = SimpleNamespace(describe_alarms=self.describe_alarms)
        self.autoscaling = SimpleNamespace(
            register_scalable_target=lambda **_: self.calls.append("RegisterScalableTarget"),
            put_scaling_policy=lambda **_: self.calls.append("PutScalingPolicy"),
        )

    def describe_alarms(self, *, AlarmNames: list[str]) -> dict[str, Any]:  # noqa: N803
        self.calls.append("DescribeAlarms")
        return {
            "MetricAlarms": [
                {"AlarmName": n, "StateValue": "ALARM" if n in self.firing else "OK"}
                for n in AlarmNames
            ]
        }


@pytest.fixture
def aws(monkeypatch):
    fake = FakeAws()
    made = []

    def clients(aws_conn_id: str, region_name: str | None) -> SimpleNamespace:
        made.append((aws_conn_id, region_name))
        return SimpleNamespace(
            sagemaker=None, cloudwatch=fake.cloudwatch, autoscaling=fake.autoscaling
        )

    monkeypatch.setattr(endpoint_watch, "clients", clients)
    fake.made = made
    return fake


def resumed(wait: dict[str, Any], verdict: endpoint_watch.Verdict, description: dict[str, Any]):
    task = DeployEndpointOperator(task_id="deploy", candidate=candidate("sagemaker.example.yaml"))
    event = {
        "verdict": verdict.as_dict(),
        "description": endpoint_watch.jsonable_description(description),
    }
    return task.execute_complete({}, event=event, wait=wait)


def test_the_sagemaker_target_defers_to_the_trigger(monkeypatch):
    wait = a_wait()
    monkeypatch.setattr(flow, "start_deploy", lambda config, version: {"wait": wait})
    task = DeployEndpointOperator(task_id="deploy", candidate=candidate("sagemaker.example.yaml"))
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.kwargs == {"wait": wait}
    assert json.loads(json.dumps(deferred.value.kwargs)) == {"wait": wait}
    path, kwargs = deferred.value.trigger.serialize()
    assert import_string(path)(**kwargs).serialize() == (path, kwargs)
    assert kwargs == {
        "endpoint_name": "banking77",
        "endpoint_config_name": NEW,
        "previous_endpoint_config_name": OLD,
        "started_at": 1_800_000_000.0,
        "timeout_seconds": 4200,
        "poll_interval": 30,
        "aws_conn_id": "aws_fmops",
        "region_name": "eu-west-1",
        "awaiting": "deployment",
        "wait": wait,  # also in the event: a resumed task is not always given the kwargs
    }

    # Already serving the version: the result at once, no deferral.
    done = {"endpoint": "banking77", "action": "unchanged"}
    monkeypatch.setattr(flow, "start_deploy", lambda config, version: {"result": done})
    assert task.execute({}) == done


def test_resuming_after_success_registers_auto_scaling(aws, monkeypatch):
    tags: dict[str, str] = {}
    mlflow = SimpleNamespace(
        set_model_version_tag=lambda name, version, key, value: tags.update({key: value})
    )
    monkeypatch.setattr(tracking, "client", lambda config: mlflow)
    verdict = endpoint_watch.Verdict(
        "succeeded", f"banking77 is InService on {NEW}", "InService", NEW
    )
    result = resumed(a_wait(), verdict, described("InService", NEW))
    assert result == {
        "endpoint": "banking77",
        "version": "3",
        "status": "InService",
        "action": "updated",
        "endpoint_config": NEW,
        "previous_endpoint_config": OLD,
        "instance": "2 x ml.g4dn.xlarge",
        "instance_type": "ml.g4dn.xlarge",
        "capacity_fallback": [],
    }
    assert aws.calls == ["RegisterScalableTarget", "PutScalingPolicy"]
    assert aws.made == [("aws_fmops", "eu-west-1")]
    assert tags == {  # the model card's record of where the version serves
        "fmops.endpoint.name": "banking77",
        "fmops.endpoint.instance_type": "ml.g4dn.xlarge",
        "fmops.endpoint.capacity_fallback": flow.NO_FALLBACK,
    }


def test_a_rollback_fails_the_task_without_retries_and_names_the_alarm(aws):
    aws.firing = ALARMS
    message = f"banking77 is InService on {OLD}: SageMaker rolled the deployment back"
    verdict = endpoint_watch.Verdict("failed", message, "InService", OLD, rolled_back=True)
    with pytest.raises(AirflowFailException) as info:
        resumed(a_wait(), verdict, described("InService", OLD))
    assert f"DeploymentFailedError: {message}" in str(info.value)
    assert f"CloudWatch alarms in ALARM: {ALARMS[0]}" in str(info.value)
    assert aws.calls == ["DescribeAlarms"]  # no auto scaling for the new fleet

    # Auto scaling removed for an update that changed the instance type: back for the old fleet.
    aws.calls.clear()
    with pytest.raises(AirflowFailException):
        resumed(a_wait(deregistered=True), verdict, described("InService", OLD))
    assert aws.calls == ["DescribeAlarms", "RegisterScalableTarget", "PutScalingPolicy"]


def test_a_timed_out_wait_fails_the_task(aws):
    message = "banking77 is Updating after 4300 s, longer than the wait of 4200 s"
    verdict = endpoint_watch.Verdict("timed_out", message, "Updating", OLD)
    with pytest.raises(AirflowFailException, match="is Updating after 4300 s"):
        resumed(a_wait(deregistered=True), verdict, updating())
    assert aws.calls == []  # still under way: nothing to explain, nothing to restore yet


def test_the_deploy_dag_defers_its_deploy_task(dagbag):
    dag = dagbag.get_dag("fmops_deploy")
    deploy = dag.get_task("deploy")
    assert isinstance(deploy, DeployEndpointOperator)
    assert deploy.upstream_task_ids == {"resolve_candidate", "await_approval"}
    assert deploy.downstream_task_ids == {"smoke_test", "rollback"}


def test_resuming_with_the_wait_in_the_event_only(aws, monkeypatch):
    """dag.test() resumes a deferred task with the trigger's event and no defer() kwargs."""
    mlflow = SimpleNamespace(set_model_version_tag=lambda name, version, key, value: None)
    monkeypatch.setattr(tracking, "client", lambda config: mlflow)
    verdict = endpoint_watch.Verdict(
        "succeeded", f"banking77 is InService on {NEW}", "InService", NEW
    )
    task = DeployEndpointOperator(task_id="deploy", candidate=candidate("sagemaker.example.yaml"))
    event = {
        "verdict": verdict.as_dict(),
        "description": endpoint_watch.jsonable_description(described("InService", NEW)),
        "wait": a_wait(),
    }
    assert task.execute_complete({}, event=event) == resumed(
        a_wait(), verdict, described("InService", NEW)
    )
