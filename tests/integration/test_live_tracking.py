"""A job's MLflow run while the job runs, against a real `mlflow server` on 127.0.0.1: the wait's
trigger (``JobTrigger``, as the triggerer runs it) sends the job's metric points as the job prints
them, an MLflow outage in the middle of the job loses none of them, a restarted trigger (which
reads the log again from the start) doubles none, and the await task's closing pass ends the run
with the job's status.

The job is a real local job (``LocalJobBackend``: a detached supervisor and a child process)
whose script prints train.py's step lines, one a second, each with the ``time=`` it was measured.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow_server import MlflowServer

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STEPS = 24
SCRIPT = f"""\
import time
total = {STEPS}
print("event=start train_examples=10 total_steps=%d time=%.3f" % (total, time.time()), flush=True)
for step in range(1, total + 1):
    time.sleep(1.0)
    print(
        "step=%d/%d epoch=1 train_loss=%.4f learning_rate=0.001 samples_per_sec=8 eta_s=%d "
        "time=%.3f" % (step, total, 2.0 / step, total - step, time.time()),
        flush=True,
    )
print("epoch=1 validation_accuracy=0.5 validation_loss=0.7 time=%.3f" % time.time(), flush=True)
"""

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    (tmp_path / "mlflow").mkdir()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def setting(server, tmp_path, monkeypatch):
    """A config whose tracking server is ``server``, this test's state folder, and one attempt
    per MLflow call (an outage must show, not be waited out by the client's own retries)."""
    from fmops.config import parse_config

    monkeypatch.setenv("FMOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    raw = yaml.safe_load((PROJECT_ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    raw["pipeline"] = "fmops-live-tracking"
    raw["registry"] = {**raw["registry"], "tracking_uri": server.url}
    code = tmp_path / "code"
    code.mkdir()
    (code / "entry.py").write_text(SCRIPT)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\nhi,greet\n")
    yield parse_config(raw, "tiny.yaml"), code, data, tmp_path
    from fmops.jobs.local import LocalJobBackend

    backend = LocalJobBackend(root=tmp_path / "home" / "jobs")
    for job in backend.list_training_jobs()["TrainingJobSummaries"]:
        if job["TrainingJobStatus"] == "InProgress":
            backend.stop_training_job(TrainingJobName=job["TrainingJobName"])


def request(code: Path, data: Path, output: Path) -> dict:
    channel = {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"file://{data}"}}
    return {
        "AlgorithmSpecification": {
            "TrainingImage": "fmops-local-python",
            "TrainingInputMode": "File",
        },
        "RoleArn": "arn:aws:iam::000000000000:role/fmops-test",
        "HyperParameters": {
            "sagemaker_program": "entry.py",
            "sagemaker_submit_directory": f"file://{code}",
            "learning_rate": "0.001",
        },
        "InputDataConfig": [{"ChannelName": "train", "DataSource": channel}],
        "OutputDataConfig": {"S3OutputPath": f"file://{output}"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
    }


def submit(setting: tuple, candidate: str, dag_run_id: str) -> tuple[dict, dict]:
    """Start the local job of ``setting``'s script and open its MLflow run, as submit_job does;
    returns the job's handle and plan."""
    from fmops.jobs.backend import ensure_job
    from fmops.pipeline import backend_for
    from fmops.registry import job_runs

    config, code, data, folder = setting
    handle = {
        "kind": "training",
        "candidate": candidate,
        "target": "local",
        "settings": {"max_concurrent_jobs": 2},
        "action": "created",
    }
    plan = {"kind": "training", "request": request(code, data, folder / "artifacts")}
    handle["name"], _ = ensure_job(
        backend_for(handle), "training", f"{candidate}-job", plan["request"]
    )
    handle["mlflow"] = job_runs.open_job_run(config, "fmops_finetune", dag_run_id, plan, handle)
    return handle, plan


def run_trigger(handle: dict, events: list) -> threading.Thread:
    """The trigger in a thread of its own, as the triggerer's event loop runs it."""
    from fmops.airflow.operators import JobTrigger

    async def follow() -> None:
        async for event in JobTrigger(handle, poll_interval=1.0).run():
            events.append(event.payload)

    thread = threading.Thread(target=asyncio.run, args=(follow(),), daemon=True)
    thread.start()
    return thread


def test_metrics_reach_mlflow_while_the_job_runs_and_survive_an_outage(server, setting):
    from fmops.jobs.backend import describe, status_of
    from fmops.pipeline import backend_for, record_job_end
    from fmops.registry import tracking

    config, code, data, folder = setting
    handle, plan = submit(setting, "live", "manual__live")
    name, run_id = handle["name"], handle["mlflow"]["run_id"]
    mlflow_client = tracking.client_for(server.url)
    opened = mlflow_client.get_run(run_id)
    assert opened.info.status == "RUNNING" and opened.data.params["learning_rate"] == "0.001"
    assert (
        opened.data.tags["fmops.job_name"] == name and opened.data.tags["fmops.target"] == "local"
    )

    events: list = []
    thread = run_trigger(handle, events)
    backend = backend_for(handle)
    seen: dict[int, float] = {}  # step -> when this test first saw its point in MLflow
    outage_done = False
    while status_of("training", describe(backend, "training", name)) == "InProgress":
        if server.running:
            for point in mlflow_client.get_metric_history(run_id, "train_loss"):
                seen.setdefault(point.step, time.time())
        if len(seen) >= 4 and not outage_done:
            server.stop()  # MLflow goes away for a while in the middle of the job
            time.sleep(4)
            server.start()
            outage_done = True
        time.sleep(0.5)
    thread.join(timeout=60)
    assert events and events[0]["status"] == "Completed", events
    assert outage_done, "the job ended before the outage could be staged"
    description = describe(backend, "training", name)
    record_job_end(handle, description)

    history = mlflow_client.get_metric_history(run_id, "train_loss")
    # every step once, at the time train.py printed it, inside the job's lifetime
    assert sorted(p.step for p in history) == list(range(1, STEPS + 1))
    start = description["TrainingStartTime"].timestamp() * 1000
    end = description["TrainingEndTime"].timestamp() * 1000
    stamps = [p.timestamp for p in history]
    assert start <= min(stamps) and max(stamps) <= end
    assert max(stamps) - min(stamps) >= (STEPS - 2) * 1000  # spread over the job, a second apart
    # live: points showed up while the job ran, each within 30 s of being printed
    assert len(seen) >= 4
    by_step = {p.step: p.timestamp / 1000 for p in history}
    assert max(seen[s] - by_step[s] for s in seen) < 30
    validation = mlflow_client.get_metric_history(run_id, "validation_loss")
    assert [(p.value, p.step) for p in validation] == [(0.7, STEPS)]
    assert mlflow_client.get_run(run_id).info.status == "FINISHED"

    # a restarted triggerer reads the log from the start again: nothing is doubled
    again: list = []
    run_trigger(handle, again).join(timeout=60)
    assert again and len(mlflow_client.get_metric_history(run_id, "train_loss")) == STEPS


def test_a_failed_job_ends_its_run_failed_with_the_reason(server, setting):
    from fmops.jobs.backend import describe
    from fmops.pipeline import backend_for, record_job_end
    from fmops.registry import job_runs, tracking

    config, code, data, folder = setting
    (code / "entry.py").write_text("import sys\nprint('step=1/2 train_loss=1.0')\nsys.exit(3)\n")
    handle, plan = submit(setting, "broken", "manual__x")
    name = handle["name"]
    again = job_runs.open_job_run(config, "fmops_finetune", "manual__x", plan, handle)
    assert again == handle["mlflow"], "a retried submit finds the run it opened"
    events: list = []
    run_trigger(handle, events).join(timeout=60)
    assert events[0]["status"] == "Failed"
    record_job_end(handle, describe(backend_for(handle), "training", name), error="exit code 3")
    run = tracking.client_for(server.url).get_run(handle["mlflow"]["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["fmops.failure_reason"] == "exit code 3"
    # a line without time= is recorded at the job's end
    (point,) = tracking.client_for(server.url).get_metric_history(run.info.run_id, "train_loss")
    assert point.step == 1 and point.timestamp == run.info.end_time


def test_a_dag_run_ended_without_close_run_stops_its_jobs_and_leaves_no_run_running(
    server, setting
):
    """What fmops' listener does for a DAG run marked failed by hand
    (``fmops.pipeline.end_dag_run``): the job it started that still runs is stopped, and the
    runs still RUNNING, the DAG run's own and that job's, end KILLED with the reason; a job run
    that ended keeps its status, and another DAG run's runs are not touched. For a task instance
    marked failed by hand, only its own job and that job's run."""
    from fmops.jobs.backend import describe, status_of
    from fmops.pipeline import backend_for, end_dag_run
    from fmops.registry import job_runs, runs, tracking

    config, *_ = setting
    opened = {
        dag_run: runs.open_parent_run(config, "fmops_finetune", dag_run, {"n": 1}, None)
        for dag_run in ("manual__stopped", "manual__other")
    }
    where = opened["manual__stopped"]
    running, _ = submit(setting, "tiny-a", "manual__stopped")  # a real job, 24 s long

    def job_run(candidate: str, dag_run: str) -> dict:
        handle = {
            "kind": "training",
            "candidate": candidate,
            "name": f"{candidate}-{dag_run}-job",
            "target": "local",
            "action": "created",
        }
        parent = {**opened[dag_run], "parent_run_id": opened[dag_run]["run_id"]}
        return job_runs.open_attempt(parent, "fmops_finetune", dag_run, None, handle)

    done, other = job_run("tiny-b", "manual__stopped"), job_run("tiny-a", "manual__other")
    job_runs.close_job_run(done, "Completed", "", end_ms=int(time.time() * 1000))
    backend = backend_for(running)
    assert status_of("training", describe(backend, "training", running["name"])) == "InProgress"

    # A task instance marked failed by hand (the listener's on_task_instance_failed): only its
    # job, and only that job's run; another job's name stops nothing.
    by_hand = "await_training[0] was set failed by hand"
    untouched = end_dag_run(where, config, "fmops_finetune", "manual__stopped", by_hand, {"x"})
    assert untouched == {"stopped_jobs": [], "ended_runs": []}
    ended = end_dag_run(
        where, config, "fmops_finetune", "manual__stopped", by_hand, {running["name"]}
    )
    assert ended == {
        "stopped_jobs": [running["name"]],
        "ended_runs": [running["mlflow"]["run_id"]],
    }
    mlflow_client = tracking.client_for(server.url)
    assert mlflow_client.get_run(where["run_id"]).info.status == "RUNNING"
    assert mlflow_client.get_run(running["mlflow"]["run_id"]).info.status == "KILLED"

    reason = "the DAG run ended failed before close_run ended this run: marked failed"
    ended = end_dag_run(where, config, "fmops_finetune", "manual__stopped", reason)

    deadline = time.monotonic() + 30
    while (status := status_of("training", describe(backend, "training", running["name"]))) in (
        "InProgress",
        "Stopping",
    ):
        assert time.monotonic() < deadline, f"the job is still {status} 30 s after its stop"
        time.sleep(0.5)
    assert status == "Stopped"
    # The DAG run marked failed: what is still running (the DAG run's own run) ends.
    assert ended == {"stopped_jobs": [], "ended_runs": [where["run_id"]]}
    parent = mlflow_client.get_run(where["run_id"])
    assert parent.info.status == "KILLED" and parent.data.tags["fmops.outcome"] == reason
    killed = mlflow_client.get_run(running["mlflow"]["run_id"])
    assert killed.info.status == "KILLED"
    assert killed.data.tags["fmops.failure_reason"] == by_hand
    assert mlflow_client.get_run(done["run_id"]).info.status == "FINISHED"
    for untouched in (opened["manual__other"]["run_id"], other["run_id"]):
        assert mlflow_client.get_run(untouched).info.status == "RUNNING"
    # nothing is left to stop or end a second time
    again = end_dag_run(where, config, "fmops_finetune", "manual__stopped", reason)
    assert again == {"stopped_jobs": [], "ended_runs": []}


def test_a_job_that_succeeded_ends_its_wait_in_the_triggerer(server, setting):
    """Run by the triggerer (the trigger has its task instance), a Completed job's wait ends
    there: its MLflow run is closed with the outcome and the trigger fires Airflow's
    TaskSuccessEvent with the outcome as the task's return value, so no worker resumes the task.
    When MLflow does not take the run's end, the trigger fires the plain event instead and the
    task resumes on a worker to record it (AwaitJobOperator._outcome, with the task's retries)."""
    from airflow.triggers.base import TaskSuccessEvent

    from fmops.airflow.operators import JobTrigger
    from fmops.registry import tracking

    config, code, data, folder = setting
    (code / "entry.py").write_text(
        "print('step=1/1 epoch=1 train_loss=0.5 learning_rate=0.001 samples_per_sec=8 eta_s=0')\n"
    )

    def events_of(handle: dict) -> list:
        trigger = JobTrigger(handle, poll_interval=0.5)
        # the triggerer sets the deferred task instance (here only what BaseTrigger reads)
        trigger.task_instance = SimpleNamespace(task_id="await_training", map_index=0)

        async def follow() -> list:
            return [event async for event in trigger.run()]

        return asyncio.run(follow())

    handle, _ = submit(setting, "quick", "manual__quick")
    (event,) = events_of(handle)
    assert isinstance(event, TaskSuccessEvent), event
    outcome = event.xcoms["return_value"]
    assert outcome["candidate"] == "quick" and outcome["job_name"] == handle["name"], outcome
    assert json.loads(json.dumps(outcome)) == outcome  # an XCom Airflow stores as JSON
    run = tracking.client_for(server.url).get_run(handle["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["fmops.model_artifacts"] == outcome["model_artifacts"]
    assert run.data.metrics["train_loss"] == 0.5  # the whole log's points, at the run's end

    second, _ = submit(setting, "quick-2", "manual__quick")
    server.stop()  # MLflow is down when the job ends
    try:
        (event,) = events_of(second)
    finally:
        server.start()
    assert not isinstance(event, TaskSuccessEvent)
    assert event.payload["status"] == "Completed" and event.payload["handle"] == second
    assert tracking.client_for(server.url).get_run(second["mlflow"]["run_id"]).info.status == (
        "RUNNING"
    )  # left for the resumed task to close
