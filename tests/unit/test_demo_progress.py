"""What ``make demo`` prints while a run goes on: the stage in words, derived from the task
instances as Airflow's REST API lists them, and each job's progress, read from a real train.py
job run by the local executor (and a real evaluate.py run), the way the demo reads it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from test_local_executor import cleanup, wait_training_done

from fmops import demo
from fmops.demo import JobProgress, JobWatcher, current_stage, job_line
from fmops.jobs import cache
from fmops.jobs.local import LocalJobBackend
from fmops.jobs.naming import job_name
from fmops.paths import PROJECT_ROOT, SCRIPTS_DIR
from fmops.pipeline import submit

LABELS = [f"intent_{c}" for c in "abcdef"]
EPOCHS = 2
STEP_LINE = re.compile(
    r"^step=(\d+)/(\d+) epoch=(\d+) train_loss=(\S+) .* eta_s=(\d+) time=[0-9.]+$"
)


# -- stages ----------------------------------------------------------------------------------


def ti(task_id: str, state: str | None, map_index: int = -1) -> dict[str, Any]:
    """A task instance as GET /api/v2/dags/{dag}/dagRuns/{run}/taskInstances lists it."""
    started = state not in (None, "scheduled", "queued")
    return {
        "id": f"0190-{task_id}-{map_index}",
        "task_id": task_id,
        "dag_id": "fmops_finetune",
        "dag_run_id": "manual__2026-11-25T10:00:00+00:00",
        "map_index": map_index,
        "logical_date": None,
        "start_date": "2026-11-25T10:00:01.5+00:00" if started else None,
        "end_date": None,
        "duration": None,
        "state": state,
        "try_number": 1 if started else 0,
        "max_tries": 2,
        "task_display_name": task_id,
        "operator": "_PythonDecoratedOperator",
        "queue": "default",
        "pool": "default_pool",
        "rendered_map_index": None,
    }


def finetune(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every task of fmops_finetune; a list of states stands for a mapped task's instances."""
    tasks = [t for stage in demo.STAGES["fmops_finetune"] for t in stage.task_ids]
    rows = []
    for task in tasks:
        state = states.get(task)
        if isinstance(state, list):
            rows += [ti(task, s, i) for i, s in enumerate(state)]
        else:
            rows.append(ti(task, state))
    return rows


def deploy(states: dict[str, str | None]) -> list[dict[str, Any]]:
    tasks = [t for stage in demo.STAGES["fmops_deploy"] for t in stage.task_ids]
    return [ti(t, states.get(t)) for t in tasks]


DONE_BEFORE_TRAINING = {
    "load_config": "success",
    "validate_data": "success",
    "plan_jobs": "success",
}

# A run the gate declined, up to its last task (with register queued: one it promoted).
DECLINED = {
    **DONE_BEFORE_TRAINING,
    "submit_training": "success",
    "await_training": ["success"],
    "plan_evaluation": "success",
    "submit_evaluation": "success",
    "await_evaluation": ["success"] * 2,
    "select": "success",
    "register": "skipped",
}


@pytest.mark.parametrize(
    ("states", "stage"),
    [
        ({}, "loading the pipeline config"),
        (
            {"load_config": "success", "validate_data": "running"},
            "validating data (Great Expectations)",
        ),
        (
            {
                **DONE_BEFORE_TRAINING,
                "submit_training": "success",
                "await_training": ["deferred", "running", "queued"],
            },
            "training 3 candidates",
        ),
        (
            {
                **DONE_BEFORE_TRAINING,
                "submit_training": "success",
                "await_training": ["up_for_retry"],
            },
            "training 1 candidate",
        ),
        (
            # Between two tasks nothing is active: the stage is the next one to run.
            {
                **DONE_BEFORE_TRAINING,
                "submit_training": "success",
                "await_training": ["success", "failed", "success"],
            },
            "planning the evaluation",
        ),
        (
            {
                **DONE_BEFORE_TRAINING,
                "submit_training": "success",
                "await_training": ["success"] * 3,
                "plan_evaluation": "success",
                "submit_evaluation": "success",
                "await_evaluation": ["deferred", "deferred", None, None],
            },
            "evaluating 4 models",
        ),
        (
            {
                **DONE_BEFORE_TRAINING,
                "submit_training": "success",
                "await_training": ["success"] * 2,
                "plan_evaluation": "success",
                "submit_evaluation": "success",
                "await_evaluation": ["success"] * 3,
                "select": "running",
            },
            "gate / selecting the winner",
        ),
        ({**DECLINED, "register": "queued"}, "registering the winner in MLflow"),
        ({**DECLINED, "close_run": "running"}, "closing the run's MLflow run"),
        ({**DECLINED, "close_run": "success"}, None),
    ],
)
def test_finetune_stage_from_task_instances(states, stage):
    assert current_stage("fmops_finetune", finetune(states)) == stage


def test_the_mapped_count_is_unknown_before_expansion():
    # Before submit_training returns, the waits have one unexpanded instance, map_index -1.
    rows = finetune({**DONE_BEFORE_TRAINING, "submit_training": "running"})
    assert current_stage("fmops_finetune", rows) == "training candidates"


@pytest.mark.parametrize(
    ("states", "stage"),
    [
        ({"resolve_candidate": "running"}, "resolving the model version"),
        (
            {"resolve_candidate": "success", "await_approval": "awaiting_input"},
            "awaiting approval",
        ),
        (
            {"resolve_candidate": "success", "await_approval": "success", "deploy": "deferred"},
            "deploying (blue/green)",
        ),
        (
            {
                "resolve_candidate": "success",
                "await_approval": "success",
                "deploy": "success",
                "smoke_test": "running",
            },
            "smoke test",
        ),
        (
            # promote and rollback may run side by side: the earlier stage is the one named.
            {
                "resolve_candidate": "success",
                "await_approval": "success",
                "deploy": "success",
                "smoke_test": "success",
                "promote": "running",
                "rollback": "running",
            },
            "promoting to champion",
        ),
        (
            {
                "resolve_candidate": "success",
                "await_approval": "success",
                "deploy": "failed",
                "smoke_test": "upstream_failed",
                "promote": "upstream_failed",
                "rollback": "running",
            },
            "checking the endpoint is left on a stable routing (rollback task)",
        ),
        (
            {
                "resolve_candidate": "success",
                "await_approval": "success",
                "deploy": "success",
                "smoke_test": "success",
                "promote": "success",
                "rollback": "success",
                "close_run": "running",
            },
            "closing the run's MLflow run",
        ),
    ],
)
def test_deploy_stage_from_task_instances(states, stage):
    assert current_stage("fmops_deploy", deploy(states)) == stage


def test_a_dag_without_a_stage_table_has_no_stage():
    assert current_stage("some_other_dag", [ti("load_config", "running")]) is None


@pytest.mark.parametrize("dag_id", ["fmops_finetune", "fmops_deploy"])
def test_every_task_of_the_dag_is_in_exactly_one_stage_in_dag_order(dag_id):
    spec = importlib.util.spec_from_file_location(dag_id, PROJECT_ROOT / "dags" / f"{dag_id}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = getattr(module, dag_id)()
    staged = [t for stage in demo.STAGES[dag_id] for t in stage.task_ids]
    assert sorted(staged) == sorted(dag.task_ids), f"demo.STAGES[{dag_id!r}] drifted from the DAG"
    position = {t: i for i, t in enumerate(staged)}
    for task in dag.tasks:
        for downstream in task.downstream_task_ids:
            assert position[task.task_id] < position[downstream], (task.task_id, downstream)


# -- a real training job: train.py under the local executor -----------------------------------


@pytest.fixture(scope="module")
def tiny_base_model(tmp_path_factory) -> Path:
    """A 2-layer BERT built from a config (no download), with the packaged model's tokenizer."""
    from tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("channels")
    for name, per_label in (("train", 10), ("validation", 3)):
        folder = root / name
        folder.mkdir()
        rows = ["text,label"] + [
            f"please help with {label} case {i},{label}"
            for label in LABELS
            for i in range(per_label)
        ]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
        (folder / "labels.json").write_text(json.dumps(LABELS))
    return {"train": root / "train", "validation": root / "validation"}


def channel(name: str, path: Path) -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"file://{path}"}},
    }


def training_plan(run_id: str, base: Path, channels: dict[str, Path], output: Path) -> dict:
    """A plan as plan_jobs makes one: train.py from include/scripts, the job's own channels."""
    request = {
        "TrainingJobName": "set-by-submit",
        "AlgorithmSpecification": {
            "TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.3",
            "TrainingInputMode": "File",
        },
        "RoleArn": "arn:aws:iam::000000000000:role/fmops-test",
        "HyperParameters": {
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": f"file://{SCRIPTS_DIR}",
            "text_column": "text",
            "label_column": "label",
            "epochs": str(EPOCHS),
            "batch_size": "4",
            "max_length": "32",
            "learning_rate": "0.001",
            "log_every_steps": "1",
            "seed": "5",
        },
        "InputDataConfig": [
            channel("train", channels["train"]),
            channel("validation", channels["validation"]),
            channel("base_model", base),
        ],
        "OutputDataConfig": {"S3OutputPath": f"file://{output}"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
    }
    fields = cache.components(request, "digest-demo", "tiny-bert")
    return {
        "kind": "training",
        "candidate": "tiny-full",
        "pipeline": "demo-progress",
        "base_name": job_name("fmops_finetune", run_id, "tiny-full"),
        "target": "local",
        "settings": {"max_concurrent_jobs": 2},
        "request": request,
        "cache_key": cache.key_of(fields),
        "cache_fields": fields,
    }


@pytest.fixture(scope="module")
def trained(tiny_base_model, channels, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """A real train.py job, followed by the demo's watcher from submission to its end."""
    home = tmp_path_factory.mktemp("fmops-home")
    backend = LocalJobBackend(max_concurrent_jobs=2, root=home / "jobs", stop_grace_seconds=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FMOPS_HOME", str(home))
        try:
            handle = submit(training_plan("run-1", tiny_base_model, channels, home / "artifacts"))
            assert handle["action"] == "created"
            watcher = JobWatcher(interval=0)
            watcher.add(handle)
            lines = []
            deadline = time.monotonic() + 120
            while not watcher.jobs[handle["name"]].ended and time.monotonic() < deadline:
                lines += watcher.poll()
                time.sleep(0.1)
            description = wait_training_done(backend, handle["name"])
            job_dir = backend.job_dir(handle["name"])
            yield {
                "handle": handle,
                "lines": lines,
                "description": description,
                "log": (job_dir / "job.log").read_text(),
                "metrics": json.loads((job_dir / "output" / "data" / "metrics.json").read_text()),
                "backend": backend,
                "artifacts": home / "artifacts",
            }
        finally:
            cleanup(backend)


def test_the_watcher_follows_a_real_job_to_its_end(trained):
    assert trained["description"]["TrainingJobStatus"] == "Completed", trained["log"][-2000:]
    lines = trained["lines"]
    print("\n".join(f"{name}  {line}" for name, line in lines))  # shown when a check fails
    assert lines, "the watcher printed nothing for a whole training job"
    assert all(name == "tiny-full" for name, _ in lines)
    texts = [line.text for _, line in lines]
    assert len(texts) == len(set(texts)), f"an unchanged line was printed twice: {texts}"
    metrics = trained["metrics"]
    seconds = trained["description"]["TrainingTimeInSeconds"]
    last = lines[-1][1]
    assert last.ended
    assert str(last) == (
        f"done in {seconds:.0f} s; best epoch {metrics['best_epoch']}: "
        f"val_acc {metrics['validation_accuracy']:.3f}"
    )
    for _, line in lines[:-1]:  # whatever the polls caught of the job on its way
        assert not line.ended
        assert re.fullmatch(
            r"(pending|starting|uploading)(: .+)?|started, loading the model and data"
            r"|epoch \d/2  step \d+/\d+ \(\d+%\)(  loss \d+\.\d{3})?(  val_acc \S+ \(epoch \d\))?",
            line.text,
        ), line.text


def test_progress_mid_training_from_the_real_log(trained):
    """The log cut after a step of the first epoch reads as that step, with train.py's loss."""
    log_lines = trained["log"].splitlines()
    steps = [(i, STEP_LINE.match(line)) for i, line in enumerate(log_lines)]
    steps = [(i, m) for i, m in steps if m]
    total = int(steps[0][1][2])
    assert total == trained["metrics"]["steps"] and len(steps) == total
    index, match = next((i, m) for i, m in steps if int(m[1]) == total // 3)
    progress = JobProgress()
    # Fed in two pieces, as read_log hands the log over while it grows.
    progress.feed("\n".join(log_lines[: index // 2]) + "\n")
    progress.feed("\n".join(log_lines[index // 2 : index + 1]) + "\n")
    step = total // 3
    history_loss = trained["metrics"]["history"][step - 1]["train_loss"]
    assert float(match[4]) == pytest.approx(history_loss, rel=1e-5)
    assert progress.describe(EPOCHS) == (
        f"epoch 1/{EPOCHS}  step {step}/{total} ({100 * step / total:.0f}%)  "
        f"loss {history_loss:.3f}"
    )
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    running = {
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "TrainingStartTime": start,
        "HyperParameters": {"epochs": str(EPOCHS)},
    }
    line = job_line(trained["handle"], running, progress, now=start + timedelta(seconds=72))
    assert not line.ended
    eta = int(match[5])
    assert line.clock == "72 s" + (f", ~{eta} s left" if eta else "")
    assert str(line) == f"{progress.describe(EPOCHS)}  {line.clock}"


def test_after_the_first_epoch_the_validation_score_shows(trained):
    log_lines = trained["log"].splitlines()
    first_validation = next(
        i for i, line in enumerate(log_lines) if line.startswith("epoch=1 validation_accuracy=")
    )
    progress = JobProgress()
    progress.feed("\n".join(log_lines[: first_validation + 1]) + "\n")
    accuracy = float(re.search(r"validation_accuracy=(\S+)", log_lines[first_validation])[1])
    assert progress.describe(EPOCHS).endswith(f"val_acc {accuracy:.3f} (epoch 1)")


def test_a_job_reused_from_the_cache_says_so_instead_of_progress(
    trained, tiny_base_model, channels
):
    again = submit(training_plan("run-2", tiny_base_model, channels, trained["artifacts"]))
    assert again["action"] == "cached" and again["name"] == trained["handle"]["name"]
    watcher = JobWatcher(interval=0)
    watcher.add(again)
    lines = watcher.poll()
    assert [(name, str(line)) for name, line in lines] == [
        ("tiny-full", f"reused from cache (job {again['name']})")
    ]
    assert watcher.jobs[again["name"]].ended
    assert watcher.jobs[again["name"]].offset == 0, "a cached job's log is not read"
    assert watcher.poll(force=True) == []


# -- a real evaluation: evaluate.py's progress lines -----------------------------------------


def test_evaluation_progress_from_a_real_evaluate_run(trained, channels, tmp_path):
    from fmops.jobs.local import JOB_ENV

    model = trained["backend"].job_dir(trained["handle"]["name"]) / "model"
    output = tmp_path / "evaluation"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS_DIR / "evaluate.py"),
            "--model",
            str(model),
            "--data",
            str(channels["train"]),
            "--output",
            str(output),
            "--batch-size",
            "4",
            "--perturbation-sample-size",
            "10",
        ],
        env={**os.environ, **JOB_ENV, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log_lines = result.stdout.splitlines()
    examples = 10 * len(LABELS)
    first = next(i for i, line in enumerate(log_lines) if line.startswith("progress "))
    progress = JobProgress()
    progress.feed(log_lines[first] + "\n")
    assert progress.describe(None) == f"evaluation 4/{examples} ({100 * 4 / examples:.0f}%)"
    progress.feed("\n".join(log_lines[first + 1 :]) + "\n")
    accuracy = json.loads((output / "metrics.json").read_text())["scenarios"]["evaluation"][
        "accuracy"
    ]["accuracy"]
    assert progress.describe(None) == f"evaluation scored (accuracy {accuracy:.3f})"
    handle = {
        "kind": "processing",
        "candidate": "baseline",
        "name": "eval-job",
        "action": "created",
    }
    start = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    done = {
        "ProcessingJobStatus": "Completed",
        "ProcessingStartTime": start,
        "ProcessingEndTime": start + timedelta(seconds=41),
    }
    assert str(job_line(handle, done, progress)) == (
        f"done in 41 s; evaluation scored (accuracy {accuracy:.3f})"
    )


# -- the watcher's pace and failure handling, with a scripted backend -------------------------


class ScriptedBackend:
    """describe and read_log of one training job, as the test sets them between polls."""

    def __init__(self) -> None:
        self.description: dict[str, Any] = {}
        self.log = ""
        self.error: Exception | None = None
        self.reads = 0

    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
        if self.error:
            raise self.error
        return self.description

    def read_log(self, kind: str, name: str, offset: int = 0) -> tuple[str, int]:
        self.reads += 1
        return self.log[offset:], len(self.log)


def test_the_watcher_prints_at_most_every_interval_and_only_changes():
    backend = ScriptedBackend()
    start = datetime.now(UTC) - timedelta(seconds=30)
    backend.description = {
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "TrainingStartTime": start,
        "HyperParameters": {"epochs": "2"},
    }
    backend.log = "event=start train_examples=8 validation_examples=2 template=x total_steps=40\n"
    now = [100.0]
    watcher = JobWatcher(interval=20, clock=lambda: now[0], backends=lambda handle: backend)
    watcher.add({"kind": "training", "candidate": "c1", "name": "job-1", "target": "local"})

    first = watcher.poll()  # a new job is asked at once
    assert [line.text for _, line in first] == ["epoch 1/2  step 0/40 (0%)"]
    backend.log += (
        "step=10/40 epoch=1 train_loss=1.5 learning_rate=1e-4 samples_per_sec=9 eta_s=30\n"
    )
    now[0] += 5
    assert watcher.poll() == [], "asked again before the interval passed"
    now[0] += 15
    (name, line), *rest = watcher.poll()
    assert not rest and name == "c1"
    assert line.text == "epoch 1/2  step 10/40 (25%)  loss 1.500"
    assert line.clock.endswith(", ~30 s left")
    now[0] += 20
    assert watcher.poll() == [], "only the clock changed: nothing to print"

    backend.error = ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow"}}, "x")
    now[0] += 20
    assert watcher.poll() == [], "a backend that cannot answer now is asked again later"
    backend.error = None
    backend.description = {
        **backend.description,
        "TrainingJobStatus": "Failed",
        "FailureReason": "AlgorithmError: the job exited with code 1. Last log lines:\nboom",
    }
    now[0] += 20
    [(_, failed)] = watcher.poll()
    assert failed.ended
    assert str(failed) == (
        "failed: AlgorithmError: the job exited with code 1. Last log lines: ... boom"
    )
    reads = backend.reads
    now[0] += 20
    assert watcher.poll(force=True) == [] and backend.reads == reads, "an ended job is left alone"


def test_a_pending_job_says_what_it_waits_for():
    handle = {"kind": "training", "candidate": "c1", "name": "job-1", "action": "created"}
    pending = {
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Pending",
        "SecondaryStatusTransitions": [
            {"Status": "Pending", "StatusMessage": "Waiting for a free slot of the local executor"}
        ],
    }
    line = job_line(handle, pending, JobProgress())
    assert str(line) == "pending: Waiting for a free slot of the local executor"
    assert not line.ended


# -- follow(): what the demo prints for a run ------------------------------------------------


class ScriptedApi:
    """The REST API calls follow() makes, answering from a list of task-instance snapshots."""

    base = "http://127.0.0.1:8080"

    def __init__(self, snapshots: list[list[dict[str, Any]]], handles: dict[int, dict]):
        self.snapshots = snapshots
        self.handles = handles
        self.polls = 0
        self.xcom_calls: list[tuple[str, int]] = []

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        if path.endswith("/taskInstances"):
            snapshot = self.snapshots[min(self.polls, len(self.snapshots) - 1)]
            self.polls += 1
            return {"task_instances": snapshot, "total_entries": len(snapshot)}
        done = self.polls >= len(self.snapshots)
        return {"dag_run_id": "r1", "state": "success" if done else "running"}

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        self.xcom_calls.append((task_id, map_index))
        return self.handles[map_index]


def test_follow_prints_stages_task_changes_and_progress(monkeypatch, capsys):
    monkeypatch.setattr(demo, "POLL_SECONDS", 0)
    backend = ScriptedBackend()
    backend.description = {
        "TrainingJobStatus": "InProgress",
        "SecondaryStatus": "Training",
        "TrainingStartTime": datetime.now(UTC),
        "HyperParameters": {"epochs": "2"},
    }
    backend.log = "step=3/12 epoch=1 train_loss=2.25 learning_rate=1e-4 samples_per_sec=9 eta_s=8\n"
    monkeypatch.setattr(demo, "backend_for", lambda handle: backend)
    # submit_training (not mapped) returns the phase's handles as one list; a refused request
    # has no job to follow.
    handles = {
        -1: [
            {"kind": "training", "candidate": "cand-a", "name": "job-a", "target": "local"},
            {
                "kind": "training",
                "candidate": "cand-b",
                "name": "job-old",
                "target": "local",
                "action": "cached",
            },
            {
                "kind": "training",
                "candidate": "cand-c",
                "name": None,
                "target": "local",
                "action": "refused",
                "error": "ClientError: ValidationException",
            },
        ]
    }
    training = {
        **DONE_BEFORE_TRAINING,
        "submit_training": "success",
        "await_training": ["deferred", "deferred"],
    }
    snapshots = [
        finetune({"load_config": "queued"}),
        finetune({"load_config": "success", "validate_data": "running"}),
        finetune(training),
        finetune(training),
        finetune(
            {**training, "await_training": ["success", "success"], "plan_evaluation": "running"}
        ),
    ]
    api = ScriptedApi(snapshots, handles)

    run = demo.follow(api, "fmops_finetune", "r1", time.monotonic())

    assert run["state"] == "success"
    out = [re.sub(r"^\s+\d+\.\ds\s+", "", line) for line in capsys.readouterr().out.splitlines()]
    stages = [line.split("Stage: ")[1] for line in out if "Stage: " in line]
    assert stages == [
        "loading the pipeline config",
        "validating data (Great Expectations)",
        "training 2 candidates",
        "planning the evaluation",
    ]
    assert not any(line.endswith((" queued", " scheduled", " none")) for line in out), out
    assert any(re.fullmatch(r"fmops_finetune\s+validate_data\s+running", line) for line in out)
    progress = [line for line in out if "cand-" in line]
    assert any(
        re.search(r"cand-a\s+epoch 1/2  step 3/12 \(25%\)  loss 2\.250  \d+ s, ~8 s left", line)
        for line in progress
    ), progress
    assert sum("cand-a" in line for line in progress) == 1, (
        "the same progress printed more than once"
    )
    # The cached job's line, whatever the scripted describe says of its status, names the cache.
    assert any("cand-b" in line and "reused from cache (job job-old" in line for line in progress)
    assert not any("cand-c" in line for line in progress), progress
    assert api.xcom_calls == [("submit_training", -1)]
    assert out[-1].endswith("Run success")


def test_the_rest_client_retries_transient_errors_of_idempotent_calls_only():
    """SQLite's "Database error" (500) while the scheduler writes is retried for GET/PATCH; a
    POST (a trigger) is not, so that a run is never created twice."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fmops.demo import retrying_session

    seen: list[str] = []

    class Flaky(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(self.command)
            failing = self.command == "POST" or seen.count(self.command) <= 2
            self.send_response(500 if failing else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:  # noqa: N802 - http.server's method names
            self._answer()

        def do_PATCH(self) -> None:  # noqa: N802
            self._answer()

        def do_POST(self) -> None:  # noqa: N802
            self._answer()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/api/v2/dags/x"
        session = retrying_session()
        session.adapters["http://"].max_retries.backoff_factor = 0  # no sleeping in the test
        assert session.get(url, timeout=10).status_code == 200
        assert session.patch(url, json={}, timeout=10).status_code == 200
        assert session.post(url, json={}, timeout=10).status_code == 500
        assert seen == ["GET"] * 3 + ["PATCH"] * 3 + ["POST"]
    finally:
        server.shutdown()
        server.server_close()
