"""Capacity fallback on the sagemaker target: no capacity or no quota for the chosen instance
type moves the training job to the next type of the catalog's ranking that fits the model."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from fmops import pipeline
from fmops.airflow.operators import AwaitJobOperator
from fmops.paths import CONFIGS_DIR

CAPACITY = "CapacityError: Unable to provision requested ML compute capacity. Please retry"


def error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


class FakeSageMaker:
    """CreateTrainingJob/DescribeTrainingJob in SageMaker's shapes, with a quota per type."""

    def __init__(self, refused: set[str]):
        self.refused = refused
        self.jobs: dict[str, dict[str, Any]] = {}

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        kind = request["ResourceConfig"]["InstanceType"]
        if kind in self.refused:
            raise error(
                "ResourceLimitExceeded",
                f"The account-level service limit 'training job usage' for {kind} is 0",
                "CreateTrainingJob",
            )
        self.jobs[request["TrainingJobName"]] = {**request, "TrainingJobStatus": "InProgress"}
        return {"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:0:training-job/{kind}"}

    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
        if TrainingJobName not in self.jobs:
            raise error("ValidationException", "Requested resource not found.", "Describe")
        return self.jobs[TrainingJobName]


@pytest.fixture
def plan(monkeypatch, aws_region) -> dict[str, Any]:
    resolved = pipeline.resolve(str(CONFIGS_DIR / "sagemaker.example.yaml"))
    plans = pipeline.plan_training(resolved, {"digest": "d1"}, "fmops_finetune", "manual__cap")
    return {**plans[0], "force": True}


@pytest.fixture
def aws_region(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def use(monkeypatch, fake: FakeSageMaker) -> None:
    monkeypatch.setattr(pipeline, "backend_for", lambda handle: fake)


def test_a_type_without_quota_falls_back_to_the_next_that_fits(monkeypatch, plan):
    chosen, following = plan["instance"]["instance_type"], plan["instance"]["fallbacks"][0]
    fake = FakeSageMaker(refused={chosen})
    use(monkeypatch, fake)
    handle = pipeline.submit(plan)
    assert handle["action"] == "created"
    assert list(fake.jobs) == [handle["name"]]
    assert fake.jobs[handle["name"]]["ResourceConfig"]["InstanceType"] == following
    assert handle["instance"]["instance_type"] == following
    assert handle["instance"]["tried"][0]["instance_type"] == chosen
    assert "ResourceLimitExceeded" in handle["instance"]["tried"][0]["why"]
    assert handle["price"]["instance_type"] == following


def test_no_capacity_starts_a_new_attempt_on_the_next_type(monkeypatch, plan):
    fake = FakeSageMaker(refused=set())
    use(monkeypatch, fake)
    handle = pipeline.submit(plan)
    failed = {**fake.jobs[handle["name"]], "TrainingJobStatus": "Failed", "FailureReason": CAPACITY}
    fake.jobs[handle["name"]] = failed
    moved = pipeline.capacity_fallback(handle, failed)
    assert moved["name"] == f"{handle['name']}-a2"
    assert moved["action"] == "created"
    following = plan["instance"]["fallbacks"][0]
    assert fake.jobs[moved["name"]]["ResourceConfig"]["InstanceType"] == following
    assert moved["instance"]["tried"] == [
        {"instance_type": plan["instance"]["instance_type"], "why": CAPACITY[:200]}
    ]
    # Any other failure is the job's own: no fallback.
    assert pipeline.capacity_fallback(handle, {**failed, "FailureReason": "AlgorithmError"}) is None
    # Without fallbacks left there is nothing to move to.
    last = {**handle, "plan": {**handle["plan"], "instance": {**plan["instance"], "fallbacks": []}}}
    assert pipeline.capacity_fallback(last, failed) is None


def test_the_wait_follows_the_job_started_in_its_place(monkeypatch, plan):
    from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

    fake = FakeSageMaker(refused=set())
    use(monkeypatch, fake)
    handle = pipeline.submit(plan)
    failed = {**fake.jobs[handle["name"]], "TrainingJobStatus": "Failed", "FailureReason": CAPACITY}
    fake.jobs[handle["name"]] = failed
    wait = AwaitJobOperator(task_id="await_training", handle=handle)
    with pytest.raises(TaskDeferred) as deferred:
        wait._outcome(failed)
    moved = deferred.value.kwargs["handle"]
    assert deferred.value.trigger.handle == moved
    assert moved["name"] == f"{handle['name']}-a2"
    # The job failing for its own reasons ends the task; no third job.
    broken = {**failed, "FailureReason": "AlgorithmError: exit 1"}
    with pytest.raises(AirflowFailException, match="AlgorithmError"):
        AwaitJobOperator(task_id="await_training", handle=moved)._outcome(broken)
    assert len(fake.jobs) == 2
