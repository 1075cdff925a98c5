"""A training request that the account's quota refuses on every instance type it may use: its
candidate waits (backing off) instead of failing, and starts once the quota frees up.

SageMaker's answers are played with botocore's ``Stubber`` on the real SageMaker job backend,
which checks every request against botocore's service model: describe before create, then
``ResourceLimitExceeded`` from CreateTrainingJob while the quota is used up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from fmops import pipeline
from fmops.airflow import operators
from fmops.airflow.operators import AwaitJobOperator, JobTrigger, QuotaTrigger
from fmops.jobs.sagemaker import NOT_FOUND, SageMakerJobBackend
from fmops.paths import CONFIGS_DIR

ARN = "arn:aws:sagemaker:us-east-1:123456789012:training-job/"
QUOTA = "The account-level service limit 'ml.g5.xlarge for training job usage' is 4 Instances"


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # never sent: the Stubber answers
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def plan(aws) -> dict[str, Any]:
    """The shipped SageMaker config's first training plan, on its chosen type only (a pinned
    type has no fallbacks: the quota refusal is final for every type the plan may use)."""
    resolved = pipeline.resolve(str(CONFIGS_DIR / "sagemaker.example.yaml"))
    first = pipeline.plan_training(resolved, {"digest": "d1"}, "fmops_finetune", "manual__q")[0]
    return {**first, "force": True, "instance": {**first["instance"], "fallbacks": []}}


@pytest.fixture
def stub(monkeypatch, aws):
    """The real backend with a stubbed SageMaker client, for every handle and plan."""
    backend = SageMakerJobBackend()
    client = boto3.client("sagemaker", region_name="us-east-1")
    backend._clients["sagemaker"] = client
    monkeypatch.setattr(pipeline, "backend_for", lambda handle: backend)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def refuse(stub: Stubber, plan: dict[str, Any], code: str = "ResourceLimitExceeded") -> None:
    """One try: the job does not exist yet, and its creation is refused."""
    stub.add_client_error(
        "describe_training_job", "ValidationException", NOT_FOUND, 400, {"TrainingJobName": ANY}
    )
    stub.add_client_error("create_training_job", code, QUOTA, 400)


def accept(stub: Stubber, plan: dict[str, Any]) -> None:
    stub.add_client_error(
        "describe_training_job", "ValidationException", NOT_FOUND, 400, {"TrainingJobName": ANY}
    )
    stub.add_response(
        "create_training_job",
        {"TrainingJobArn": ARN + plan["base_name"]},
    )


def run_trigger(trigger: QuotaTrigger, monkeypatch) -> tuple[dict[str, Any], list[float]]:
    """The trigger's one event, and the pauses it took (recorded, not slept)."""
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(operators.asyncio, "sleep", pause)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger fired nothing")

    return asyncio.run(first()), pauses


def test_a_quota_refusal_waits_instead_of_failing_the_candidate(stub, plan, monkeypatch):
    refuse(stub, plan)

    (handle,) = pipeline.submit_phase([plan])

    assert handle["action"] == pipeline.WAITING_FOR_QUOTA
    assert handle["name"] is None and "error" not in handle
    assert "(ResourceLimitExceeded)" in handle["reason"] and QUOTA in handle["reason"]

    # Its wait defers to the quota trigger (no worker slot held while it waits).
    from airflow.sdk.exceptions import TaskDeferred

    wait = AwaitJobOperator(task_id="await_training", handle=handle)
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute({})
    assert isinstance(deferred.value.trigger, QuotaTrigger)
    assert deferred.value.method_name == "execute_started"
    assert deferred.value.trigger.plan == plan


def test_the_trigger_backs_off_until_the_quota_lets_the_job_start(stub, plan, monkeypatch):
    for _ in range(3):
        refuse(stub, plan)
    accept(stub, plan)
    trigger = QuotaTrigger(plan, started_at=time.time(), delay=60, max_delay=150)

    event, pauses = run_trigger(trigger, monkeypatch)

    assert pauses == [60, 120, 150]  # doubling, up to the ceiling
    assert event["status"] == "submitted"
    assert event["handle"]["name"] == plan["base_name"]
    assert event["handle"]["action"] == "created"


def test_the_started_job_is_waited_on_like_any_other(stub, plan, monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    waiting = pipeline.waiting_handle(plan, RuntimeError(QUOTA))
    started = {**waiting, "name": plan["base_name"], "action": "created"}
    del started["reason"]
    pushed: dict[str, Any] = {}

    class Ti:
        def xcom_pull(self, task_ids: str) -> None:
            return None  # no load_config: no MLflow run to open here

        def xcom_push(self, key: str, value: Any) -> None:
            pushed[key] = value

    wait = AwaitJobOperator(task_id="await_training", handle=waiting)
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute_started({"ti": Ti()}, {"status": "submitted", "handle": started})

    assert isinstance(deferred.value.trigger, JobTrigger)
    assert deferred.value.trigger.handle["name"] == plan["base_name"]
    assert deferred.value.trigger.poll_interval == 30.0  # SageMaker's jobs: every 30 s
    # the listener stops this job, not the submit task's (nameless) handle, if it is marked failed
    assert pushed[operators.JOB_KEY]["name"] == plan["base_name"]


def test_another_refusal_fails_the_candidate_with_its_reason(stub, plan, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    refuse(stub, plan, code="ValidationException")
    event, pauses = run_trigger(QuotaTrigger(plan, started_at=time.time()), monkeypatch)
    assert (event["status"], pauses) == ("refused", [])
    assert "ValidationException" in event["error"]

    wait = AwaitJobOperator(
        task_id="await_training", handle=pipeline.waiting_handle(plan, RuntimeError(QUOTA))
    )
    with pytest.raises(AirflowFailException, match="ValidationException"):
        wait.execute_started({}, event)


def test_it_gives_up_after_its_deadline_with_the_last_refusal(stub, plan, monkeypatch):
    refuse(stub, plan)
    long_ago = time.time() - 24 * 3600 + 30  # 30 s left: the next pause would pass the deadline
    event, pauses = run_trigger(QuotaTrigger(plan, started_at=long_ago, delay=60), monkeypatch)
    assert event["status"] == "refused"
    assert event["error"].startswith("still refused after 24.0 h of asking again")
    assert "ResourceLimitExceeded" in event["error"]
    assert pauses == []


def test_the_trigger_survives_a_triggerer_restart():
    trigger = QuotaTrigger({"candidate": "a", "kind": "training"}, started_at=1.5, delay=5)
    path, kwargs = trigger.serialize()
    assert path == "fmops.airflow.operators.QuotaTrigger"
    again = QuotaTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs["started_at"] == 1.5  # the deadline is kept across restarts


def description(name: str, status: str) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "TrainingJobArn": ARN + name,
        "TrainingJobStatus": status,
        "SecondaryStatus": "Training" if status == "InProgress" else status,
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": time.time(),
        "ModelArtifacts": {"S3ModelArtifacts": ""},
    }


def test_a_job_beyond_the_cap_waits_for_a_slot_then_starts(stub, plan, monkeypatch):
    from fmops.airflow import job_queue

    ahead_name = "train-ahead-0123456789"
    ahead = [
        {
            "kind": "training",
            "name": ahead_name,
            "base": ahead_name,
            "map_index": 0,
            "target": plan["target"],
            "settings": plan["settings"],
        }
    ]
    for status in ("InProgress", "Completed"):
        stub.add_response(
            "describe_training_job",
            description(ahead_name, status),
            {"TrainingJobName": ahead_name},
        )
    accept(stub, plan)
    queue = {"ahead": ahead, "cap": 1, "poll": 30.0}
    trigger = QuotaTrigger(plan, started_at=time.time() - 7200, queue=queue)
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        job_queue._described.clear()  # the describes' lifetime (15 s) passes in the pause

    monkeypatch.setattr(operators.asyncio, "sleep", pause)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return event.payload
        raise AssertionError("the trigger fired nothing")

    event = asyncio.run(first())

    assert pauses == [30.0]  # one look while the job ahead ran, then its slot was free
    assert event["status"] == "submitted"
    assert (event["handle"]["name"], event["handle"]["action"]) == (plan["base_name"], "created")
    assert trigger.started_at > time.time() - 60  # the quota's deadline counts from the slot
    job_queue._described.clear()


def test_a_queued_wait_defers_with_the_jobs_ahead_of_it_from_the_submit_task():
    from airflow.sdk.exceptions import TaskDeferred

    plans = [
        {
            "kind": "training",
            "candidate": f"c{i}",
            "target": "sagemaker",
            "settings": {"region_name": "us-east-1"},
            "base_name": f"train-c{i}-012345678{i}",
        }
        for i in range(4)
    ]
    handles = [
        {**pipeline.queued_handle(plans[0], 0, 2), "name": plans[0]["base_name"]}
        | {"action": "created", "base_name": plans[0]["base_name"]},
        pipeline.refused_handle(plans[1], RuntimeError("bad request")),
        *[
            {**pipeline.queued_handle(p, i, 2), "submitted_by": "submit_training"}
            for i, p in enumerate(plans[2:], 2)
        ],
    ]
    pulled: list[str] = []

    class Ti:
        def xcom_pull(self, task_ids: str) -> list[dict]:
            pulled.append(task_ids)
            return handles

    wait = AwaitJobOperator(task_id="await_training", handle=handles[3])
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute({"ti": Ti()})

    trigger = deferred.value.trigger
    assert isinstance(trigger, QuotaTrigger) and deferred.value.method_name == "execute_started"
    assert pulled == ["submit_training"]
    assert trigger.plan == plans[3]
    assert [e["name"] for e in trigger.queue["ahead"]] == [
        plans[0]["base_name"],  # started by the submit task
        plans[2]["base_name"],  # queued ahead of it; the refused request is not in the line
    ]
    assert (trigger.queue["cap"], trigger.queue["poll"]) == (2, 30.0)
    path, kwargs = trigger.serialize()
    assert QuotaTrigger(**kwargs).queue == trigger.queue  # kept across a triggerer restart


def test_a_wait_tells_airflow_dags_test_from_a_task_process(monkeypatch):
    """Under dags test (the task SDK's in-process supervisor) a wait concludes a job that already
    ended itself; in a task process it defers at once (its trigger ends it in the triggerer)."""
    from airflow.sdk.execution_time import supervisor, task_runner

    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", object(), raising=False)
    assert operators.runs_inline() is False
    inline = supervisor.InProcessSupervisorComms(supervisor=None)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", inline, raising=False)
    assert operators.runs_inline() is True


def test_a_wait_defers_without_describing_its_job(monkeypatch):
    from airflow.sdk.exceptions import TaskDeferred

    monkeypatch.setattr(operators, "runs_inline", lambda: False)
    monkeypatch.setattr(pipeline, "backend_for", lambda handle: pytest.fail("described"))
    handle = {"kind": "training", "candidate": "a", "target": "local", "settings": {}}
    handle |= {"name": "train-a-0123456789", "action": "created"}
    with pytest.raises(TaskDeferred) as deferred:
        AwaitJobOperator(task_id="await_training", handle=handle).execute({})
    assert isinstance(deferred.value.trigger, JobTrigger)
    assert deferred.value.trigger.poll_interval == 1.0  # local jobs: every second
