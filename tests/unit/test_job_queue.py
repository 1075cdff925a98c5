"""Jobs beyond ``training.max_concurrent_jobs`` on SageMaker wait in their phase's order, and no
more than the cap run at once (``fmops.airflow.job_queue``), at N = 256.

SageMaker's training-job control plane is played inside botocore, on its ``before-call`` event
(where botocore's own ``Stubber`` answers): every request is first checked against botocore's
service model, then a small in-memory account answers it. A job runs for a set number of ticks;
the account refuses a job beyond its quota with ``ResourceLimitExceeded``, as SageMaker does.
Stubber itself cannot play this: it answers a fixed sequence, and 253 waits ask in no fixed
order. The requests are sent by fmops' real SageMaker job backend.
"""

from __future__ import annotations

import json
import random
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from fmops import pipeline
from fmops.airflow import job_queue
from fmops.airflow.job_queue import Slots, ahead_of
from fmops.jobs.naming import attempt_name, job_name
from fmops.jobs.sagemaker import NOT_FOUND, SageMakerJobBackend
from fmops.paths import CONFIGS_DIR

N, CAP = 256, 3
RUN = "manual__line"


class Account:
    """An AWS account's SageMaker training jobs: a job runs ``durations[name]`` ticks."""

    def __init__(self, client: Any, durations: dict[str, int], quota: int):
        self.durations, self.quota = durations, quota
        self.jobs: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.refusals = 0
        self.max_running = 0
        client.meta.events.register("before-call.sagemaker", self.answer)

    def running(self) -> int:
        return sum(job["status"] == "InProgress" for job in self.jobs.values())

    def tick(self) -> None:
        for job in self.jobs.values():
            if job["status"] == "InProgress":
                job["left"] -= 1
                if job["left"] <= 0:
                    job["status"] = job.get("ends", "Completed")

    def answer(self, model: Any, params: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict]:
        # ``params``: the request as botocore serialized it, after checking it against the model
        name = json.loads(params["body"]).get("TrainingJobName")
        if model.name == "CreateTrainingJob":
            if self.running() >= self.quota:
                self.refusals += 1
                return error("ResourceLimitExceeded", "The account-level service limit ...")
            self.jobs[name] = {"status": "InProgress", "left": self.durations.get(name, 1)}
            self.created.append(name)
            self.max_running = max(self.max_running, self.running())
            return ok({"TrainingJobArn": f"arn:aws:sagemaker:us-east-1:1:training-job/{name}"})
        if model.name == "DescribeTrainingJob":
            if name not in self.jobs:
                return error("ValidationException", NOT_FOUND)
            status = self.jobs[name]["status"]
            return ok({"TrainingJobName": name, "TrainingJobStatus": status})
        raise AssertionError(f"unexpected request {model.name}")

    def end(self, name: str, status: str) -> None:
        self.jobs[name] = {"status": status, "left": 0}


def ok(parsed: dict[str, Any]) -> tuple[AWSResponse, dict]:
    return AWSResponse(None, 200, {}, None), {**parsed, "ResponseMetadata": {}}


def error(code: str, message: str) -> tuple[AWSResponse, dict]:
    parsed = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {}}
    return AWSResponse(None, 400, {}, None), parsed


@pytest.fixture
def plans(monkeypatch) -> list[dict[str, Any]]:
    """N training plans of the shipped SageMaker config, one instance type each, no cache."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # never sent: the account answers
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    resolved = pipeline.resolve(str(CONFIGS_DIR / "sagemaker.example.yaml"))
    first = pipeline.plan_training(resolved, {"digest": "d1"}, "fmops_finetune", RUN)[0]
    first = {k: v for k, v in first.items() if k not in ("cache_key", "cache_fields")}
    first["instance"] = {**first["instance"], "fallbacks": []}
    return [
        {
            **first,
            "candidate": f"c{i:03d}",
            "base_name": job_name("fmops_finetune", RUN, f"c{i:03d}"),
            "force": True,
        }
        for i in range(N)
    ]


@pytest.fixture(autouse=True)
def fresh_answers():
    job_queue._described.clear()  # the triggerer's shared describes, per test
    yield
    job_queue._described.clear()


def account_for(monkeypatch, plans: list[dict], seed: int, quota: int = CAP) -> Account:
    rng = random.Random(seed)
    backend = SageMakerJobBackend()
    client = boto3.client("sagemaker", region_name="us-east-1")
    backend._clients["sagemaker"] = client
    monkeypatch.setattr(pipeline, "backend_for", lambda handle: backend)
    durations = {p["base_name"]: rng.randint(1, 12) for p in plans}
    return Account(client, durations, quota)


def drain(
    account: Account,
    handles: list[dict],
    states: dict[int, str],
    seed: int,
    skip: frozenset[int] = frozenset(),
) -> dict[int, int]:
    """Every queued wait checks its slot once per tick, in a shuffled order (the triggers of a
    triggerer run in no fixed order), and starts its job when it finds one; the tick each
    position started at. Asserts the cap at every step, and that no slot stays free while a job
    waits."""
    rng = random.Random(seed)
    waiting = {
        i: Slots(ahead_of(handles, i), CAP, lambda: states, ttl=0)
        for i, h in enumerate(handles)
        if h["action"] == "queued" and i not in skip
    }
    started: dict[int, int] = {}
    tick = 0
    while waiting:
        tick += 1
        assert tick < 10 * N, f"the line stopped moving: {sorted(waiting)[:5]} still wait"
        account.tick()
        for i in rng.sample(sorted(waiting), len(waiting)):
            if len(waiting[i].blocking()) < CAP:
                handle = pipeline.submit(handles[i]["plan"])
                assert handle["action"] == "created"
                started[i] = tick
                del waiting[i]
            assert account.running() <= CAP
        if waiting and account.running() < CAP:
            # a free slot is left only while the next job's wait is not live
            assert all(states.get(i) in job_queue.WAIT_ENDED for i in waiting), (tick, waiting)
    return started


def test_256_jobs_start_in_order_and_never_more_than_the_cap_run(plans, monkeypatch):
    account = account_for(monkeypatch, plans, seed=1)

    handles = pipeline.submit_phase(plans, cap=CAP)

    assert [h["action"] for h in handles[:CAP]] == ["created"] * CAP
    assert [(h["action"], h["position"], h["cap"]) for h in handles[CAP:]] == [
        ("queued", i, CAP) for i in range(CAP, N)
    ]
    assert [h["candidate"] for h in handles] == [p["candidate"] for p in plans]
    states = {i: "deferred" for i in range(N)}

    started = drain(account, handles, states, seed=2)

    assert len(account.created) == N and len(set(account.created)) == N  # one job each
    assert account.max_running == CAP
    assert account.refusals == 0  # the cap kept every request inside the quota
    ticks = [started[i] for i in sorted(started)]
    assert ticks == sorted(ticks)  # nobody overtakes a job ahead of it
    assert set(account.created[:CAP]) == {p["base_name"] for p in plans[:CAP]}


def test_a_request_refused_for_good_leaves_the_line(plans, monkeypatch):
    account = account_for(monkeypatch, plans[:20], seed=3)
    handles = pipeline.submit_phase(plans[:20], cap=CAP)
    states = {i: "deferred" for i in range(20)}
    states[5] = "failed"  # its wait failed with the refusal: it never starts

    started = drain(account, handles, states, seed=4, skip=frozenset({5}))

    assert 5 not in started and len(started) == 20 - CAP - 1
    assert plans[5]["base_name"] not in account.created
    assert account.max_running == CAP


def test_a_wait_that_will_run_again_keeps_its_place(plans, monkeypatch):
    # up_for_retry: its wait will ask again, so the jobs behind it keep counting it; a failed
    # one is out of the line
    account_for(monkeypatch, plans[:3], seed=8)  # neither job ahead has started
    handles = [pipeline.queued_handle(p, i, 1) for i, p in enumerate(plans[:3])]
    slots = Slots(ahead_of(handles, 2), 1, lambda: {0: "up_for_retry", 1: "failed"}, ttl=0)
    assert slots.blocking() == [f"{plans[0]['base_name']} (not started)"]
    slots = Slots(ahead_of(handles, 2), 1, lambda: {0: "success", 1: "failed"}, ttl=0)
    assert slots.blocking() == []


def test_under_dags_test_a_job_ahead_that_has_not_started_does_not_hold_a_slot(plans, monkeypatch):
    # airflow dags test runs the waits one at a time: one that has not started is not waiting
    account_for(monkeypatch, plans[:4], seed=5)
    handles = [pipeline.queued_handle(p, i, 1) for i, p in enumerate(plans[:4])]
    assert Slots(ahead_of(handles, 3), 1, None, ttl=0).blocking() == []
    assert len(Slots(ahead_of(handles, 3), 1, lambda: {}, ttl=0).blocking()) == 1


def test_a_failed_attempt_followed_by_another_still_holds_its_slot(plans, monkeypatch):
    account = account_for(monkeypatch, plans[:2], seed=6)
    base = plans[0]["base_name"]
    account.end(base, "Failed")  # no capacity: the fallback started attempt 2
    account.jobs[attempt_name(base, 2)] = {"status": "InProgress", "left": 5}
    handles = [pipeline.queued_handle(p, i, 1) for i, p in enumerate(plans[:2])]

    assert Slots(ahead_of(handles, 1), 1, lambda: {}, ttl=0).blocking() == [f"{base} (InProgress)"]
    account.end(attempt_name(base, 2), "Completed")
    job_queue._described.clear()
    assert Slots(ahead_of(handles, 1), 1, lambda: {}, ttl=0).blocking() == []


def test_the_waits_of_one_triggerer_share_their_describes(plans, monkeypatch):
    account = account_for(monkeypatch, plans[:40], seed=7)
    handles = pipeline.submit_phase(plans[:40], cap=CAP)
    described: list[str] = []
    account_answer = account.answer

    def counting(model: Any, params: dict, **kwargs: Any) -> Any:
        described.append(json.loads(params["body"])["TrainingJobName"])
        return account_answer(model, params, **kwargs)

    client = pipeline.backend_for({}).sagemaker_client
    client.meta.events.unregister("before-call.sagemaker", account_answer)
    client.meta.events.register("before-call.sagemaker", counting)

    for i in range(CAP, 40):  # 37 waits look once, within the answers' lifetime
        assert len(Slots(ahead_of(handles, i), CAP, lambda: {}, ttl=60).blocking()) == CAP
    assert sorted(described) == sorted(p["base_name"] for p in plans[:CAP])  # 3 describes


def test_ahead_of_names_each_job_and_leaves_out_refused_requests(plans):
    started = {**pipeline.queued_handle(plans[0], 0, 2), "action": "created"}
    started |= {"name": plans[0]["base_name"], "base_name": plans[0]["base_name"]}
    cached = {**started, "action": "cached", "name": "train-other-run-0123456789"}
    refused = pipeline.refused_handle(plans[2], RuntimeError("bad image"))
    queued = pipeline.queued_handle(plans[3], 3, 2)
    ahead = ahead_of([started, cached, refused, queued, {}], 4)
    assert [(e["name"], e["base"], e["map_index"]) for e in ahead] == [
        (plans[0]["base_name"], plans[0]["base_name"], 0),
        ("train-other-run-0123456789", None, 1),  # another run's job: no attempts follow it
        (plans[3]["base_name"], plans[3]["base_name"], 3),
    ]


def test_a_queued_job_that_started_and_failed_is_named_with_its_status(plans, monkeypatch):
    account = account_for(monkeypatch, plans[:3], seed=9)
    handles = [pipeline.queued_handle(p, i, 1) for i, p in enumerate(plans[:3])]
    account.end(plans[1]["base_name"], "Failed")  # its wait started it; it failed
    trained = [{"candidate": plans[0]["candidate"]}]

    failures = pipeline.training_failures(handles, trained)

    assert [(f["candidate"], f["job_name"], f["status"]) for f in failures] == [
        (plans[1]["candidate"], plans[1]["base_name"], "Failed"),
        (plans[2]["candidate"], None, "NotStarted"),  # never started: no job to name
    ]


def test_the_waits_states_are_read_from_airflow_for_the_triggers_own_task(monkeypatch):
    """In the triggerer a queued wait asks Airflow (the task SDK's GetTaskStates, which the
    triggerer serves) for the states of its task's mapped instances in its DAG run."""
    from types import SimpleNamespace

    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    asked = {}

    def get_task_states(**kwargs: Any) -> dict:
        asked.update(kwargs)
        # the Execution API's answer: "<task id>_<map index>" for a mapped instance
        return {
            RUN: {
                "await_training_0": "success",
                "await_training_7": "deferred",
                "await_training_12": None,
                "await_training": "failed",  # an unmapped task of the same id: not a sibling
            }
        }

    monkeypatch.setattr(RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    ti = SimpleNamespace(dag_id="fmops_finetune", run_id=RUN, task_id="await_training")

    assert job_queue.wait_states_of(ti)() == {0: "success", 7: "deferred", 12: None}
    assert asked == {"dag_id": "fmops_finetune", "task_ids": ["await_training"], "run_ids": [RUN]}
    assert job_queue.wait_states_of(None) is None  # airflow dags test: no task instance
