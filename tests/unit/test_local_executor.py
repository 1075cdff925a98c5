"""The local job executor, driven through the SageMaker call surface with a tiny fake job script.

Each job runs as a real detached supervisor process; the fake entry script prints metric lines and
then finishes, fails or sleeps, as its ``mode`` hyperparameter says. Every test stops whatever it
left running (see the ``make_backend`` fixture).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ParamValidationError

from fmops import processes
from fmops.jobs.backend import TERMINAL, ensure_job, is_not_found
from fmops.jobs.local import LocalJobBackend
from fmops.jobs.naming import job_name

DEADLINE_SECONDS = 60.0

ENTRY_SCRIPT = """\
import json, os, pathlib, sys, time

hps = json.loads(os.environ["SM_HPS"])
mode = hps.get("mode", "ok")
print("starting", flush=True)
print("train_loss=0.9", flush=True)
print("train_loss=0.25", flush=True)
print("val_accuracy=0.75", flush=True)
model_dir = pathlib.Path(os.environ["SM_MODEL_DIR"])
if mode == "ok":
    channel = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"])
    seen = {
        "hps": hps,
        "channels": json.loads(os.environ["SM_CHANNELS"]),
        "channel_dir": str(channel),
        "channel_files": sorted(p.name for p in channel.iterdir()),
        "channel_text": (channel / "data.csv").read_text(),
        "model_dir": str(model_dir),
        "sm_hp_mode": os.environ.get("SM_HP_MODE"),
        "config_hps": json.loads(
            pathlib.Path(os.environ["SM_INPUT_CONFIG_DIR"], "hyperparameters.json").read_text()
        ),
        "outside_sm": os.environ.get("SM_FROM_OUTSIDE"),
        "request_env": os.environ.get("JOB_ENV_VAR"),
        "secrets": sorted(k for k in os.environ if k.endswith(("_SECRET", "_TOKEN", "_KEY"))),
        "path": os.environ.get("PATH"),
    }
    (model_dir / "seen.json").write_text(json.dumps(seen))
    (model_dir / "weights.bin").write_bytes(b"\\x00\\x01\\x02")
elif mode == "fail":
    print("loading the data", flush=True)
    print("ERROR: something broke in step 2", file=sys.stderr, flush=True)
    sys.exit(int(hps.get("code", "3")))
elif mode == "failfile":
    pathlib.Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text(
        "DataError: the label column 'category' is missing"
    )
    sys.exit(1)
elif mode == "sleep":
    print("sleeping", flush=True)
    time.sleep(float(hps.get("seconds", "120")))
    print("woke up", flush=True)
"""

PROCESSING_SCRIPT = """\
import argparse, json, pathlib, sys

parser = argparse.ArgumentParser()
parser.add_argument("--input")
parser.add_argument("--output")
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()
print("args", sys.argv[1:], flush=True)
if args.fail:
    print("evaluation crashed", flush=True)
    sys.exit(5)
rows = pathlib.Path(args.input, "data.csv").read_text().splitlines()
out = pathlib.Path(args.output)
(out / "result.json").write_text(json.dumps({"rows": len(rows), "input": args.input}))
(out / "nested").mkdir()
(out / "nested" / "note.txt").write_text("done")
"""


# -- helpers ------------------------------------------------------------------------------------


def wait_for(
    describe: Callable[[], dict[str, Any]],
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = DEADLINE_SECONDS,
) -> dict[str, Any]:
    """Poll ``describe`` until ``predicate`` holds; fail with the last description on timeout."""
    deadline = time.monotonic() + timeout
    description: dict[str, Any] = {}
    while time.monotonic() < deadline:
        description = describe()
        if predicate(description):
            return description
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {description}")


def describe_training(backend: LocalJobBackend, name: str) -> Callable[[], dict[str, Any]]:
    return lambda: backend.describe_training_job(TrainingJobName=name)


def describe_processing(backend: LocalJobBackend, name: str) -> Callable[[], dict[str, Any]]:
    return lambda: backend.describe_processing_job(ProcessingJobName=name)


def wait_training_done(backend: LocalJobBackend, name: str) -> dict[str, Any]:
    return wait_for(
        describe_training(backend, name),
        lambda d: d["TrainingJobStatus"] in TERMINAL,
        f"training job {name} to end",
    )


def wait_training_secondary(backend: LocalJobBackend, name: str, secondary: str) -> dict[str, Any]:
    return wait_for(
        describe_training(backend, name),
        lambda d: d["SecondaryStatus"] == secondary or d["TrainingJobStatus"] in TERMINAL,
        f"training job {name} to reach {secondary}",
    )


def record_of(backend: LocalJobBackend, name: str) -> dict[str, Any]:
    return json.loads((backend.job_dir(name) / "record.json").read_text())


def supervisor_of(backend: LocalJobBackend, name: str) -> dict[str, Any]:
    path = backend.job_dir(name) / "supervisor.json"
    return json.loads(path.read_text()) if path.exists() else {}


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # It may be a zombie waiting for its parent; a zombie has state Z in /proc/<pid>/stat.
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def cleanup(backend: LocalJobBackend) -> None:
    """Stop every job of this backend that still runs, and wait until its supervisor is gone."""
    if not backend.root.exists():
        return
    jobs = [d for d in backend.root.iterdir() if (d / "record.json").exists()]
    for job_dir in jobs:
        kind = json.loads((job_dir / "record.json").read_text()).get("kind")
        identity = supervisor_of(backend, job_dir.name)
        if not processes.alive(identity):
            continue
        with contextlib.suppress(Exception):
            if kind == "processing":
                backend.stop_processing_job(ProcessingJobName=job_dir.name)
            else:
                backend.stop_training_job(TrainingJobName=job_dir.name)
    deadline = time.monotonic() + 20
    for job_dir in jobs:
        identity = supervisor_of(backend, job_dir.name)
        while processes.alive(identity) and time.monotonic() < deadline:
            time.sleep(0.1)
        if processes.alive(identity):  # last resort: never leave a process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(identity["pid"]), signal.SIGKILL)
        child = json.loads((job_dir / "record.json").read_text()).get("child_pid")
        if child:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(child), signal.SIGKILL)


@pytest.fixture
def make_backend(tmp_path, monkeypatch) -> Callable[..., LocalJobBackend]:
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    made: list[LocalJobBackend] = []

    def make(max_concurrent_jobs: int = 2) -> LocalJobBackend:
        backend = LocalJobBackend(
            max_concurrent_jobs=max_concurrent_jobs, root=tmp_path / "jobs", stop_grace_seconds=1
        )
        made.append(backend)
        return backend

    yield make
    for backend in made:
        cleanup(backend)


@pytest.fixture
def backend(make_backend) -> LocalJobBackend:
    return make_backend(2)


@pytest.fixture
def workspace(tmp_path) -> dict[str, Path]:
    code = tmp_path / "code"
    code.mkdir()
    (code / "entry.py").write_text(ENTRY_SCRIPT)
    (code / "script.py").write_text(PROCESSING_SCRIPT)
    data = tmp_path / "data"
    data.mkdir()
    (data / "data.csv").write_text("text,label\nhello,greet\nbye,leave\n")
    output = tmp_path / "artifacts"
    return {"code": code, "data": data, "output": output, "root": tmp_path}


def training_request(
    workspace: dict[str, Path],
    name: str,
    hps: dict[str, str] | None = None,
    max_runtime: int = 60,
) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.3",
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "train_loss", "Regex": r"train_loss=([0-9.]+)"},
                {"Name": "val_accuracy", "Regex": r"val_accuracy=([0-9.]+)"},
                {"Name": "never_printed", "Regex": r"never_printed=([0-9.]+)"},
            ],
        },
        "RoleArn": "arn:aws:iam::000000000000:role/fmops-test",
        "HyperParameters": {
            "sagemaker_program": "entry.py",
            "sagemaker_submit_directory": f"file://{workspace['code']}",
            **(hps or {}),
        },
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": f"file://{workspace['data']}",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"file://{workspace['output']}"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 5},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
    }


def processing_request(
    workspace: dict[str, Path], name: str, destination: Path, fail: bool = False
) -> dict[str, Any]:
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": f"file://{workspace['code']}",
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            },
            {
                "InputName": "data",
                "S3Input": {
                    "S3Uri": f"file://{workspace['data']}",
                    "LocalPath": "/opt/ml/processing/input/data",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            },
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "evaluation",
                    "S3Output": {
                        "S3Uri": f"file://{destination}",
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.large",
                "VolumeSizeInGB": 5,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
        "AppSpecification": {
            "ImageUri": "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:2.3",
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
            "ContainerArguments": [
                "--input",
                "/opt/ml/processing/input/data",
                "--output",
                "/opt/ml/processing/output",
                *(["--fail"] if fail else []),
            ],
        },
        "RoleArn": "arn:aws:iam::000000000000:role/fmops-test",
    }


def client_error_code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return info.value.response["Error"]["Code"]


# -- training jobs: outcomes --------------------------------------------------------------------


def test_completed_job(backend, workspace, monkeypatch):
    monkeypatch.setenv("SM_FROM_OUTSIDE", "leaked")  # the job must not inherit SM_* variables
    # nor the credentials of the process that starts it (an Airflow worker, a shell)
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value-1234",
        "MLFLOW_TRACKING_TOKEN": "mlflow-token-value-5678",
        "HF_TOKEN": "hf_token_value_9012",
        "FMOPS_WEBHOOK_TOKEN": "webhook-token-value-3456",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    request = training_request(workspace, "job-ok", {"mode": "ok", "epochs": "2"})
    request["Environment"] = {"JOB_ENV_VAR": "from-request"}
    response = backend.create_training_job(**request)
    assert response["TrainingJobArn"].endswith(":training-job/job-ok")

    done = wait_training_done(backend, "job-ok")
    assert done["TrainingJobStatus"] == "Completed", done.get("FailureReason")
    assert done["SecondaryStatus"] == "Completed"
    assert "FailureReason" not in done
    metrics = {m["MetricName"]: m["Value"] for m in done["FinalMetricDataList"]}
    assert metrics == {"train_loss": 0.25, "val_accuracy": 0.75}  # last value; unmatched left out
    statuses = [t["Status"] for t in done["SecondaryStatusTransitions"]]
    assert statuses == ["Pending", "Starting", "Training", "Uploading", "Completed"]
    assert done["TrainingEndTime"] >= done["TrainingStartTime"] >= done["CreationTime"]
    assert isinstance(done["TrainingTimeInSeconds"], int)
    assert done["RoleArn"] == request["RoleArn"]
    assert done["HyperParameters"] == request["HyperParameters"]

    artifact_uri = done["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact_uri == f"file://{workspace['output']}/job-ok/output/model.tar.gz"
    artifact = Path(artifact_uri.removeprefix("file://"))
    assert artifact.is_file()
    with tarfile.open(artifact) as tar:
        assert sorted(tar.getnames()) == ["seen.json", "weights.bin"]
        assert tar.extractfile("weights.bin").read() == b"\x00\x01\x02"
        seen = json.loads(tar.extractfile("seen.json").read())

    # The container contract as the script saw it.
    assert seen["hps"] == {"mode": "ok", "epochs": "2"}  # no sagemaker_* keys
    assert seen["config_hps"] == request["HyperParameters"]  # hyperparameters.json: as sent
    assert seen["channels"] == ["train"]
    assert seen["channel_files"] == ["data.csv"]
    assert seen["channel_text"] == (workspace["data"] / "data.csv").read_text()
    assert Path(seen["channel_dir"]).is_relative_to(backend.job_dir("job-ok"))
    assert Path(seen["model_dir"]) == backend.job_dir("job-ok") / "model"
    assert seen["sm_hp_mode"] == "ok"
    assert seen["outside_sm"] is None
    assert seen["request_env"] == "from-request"
    assert seen["secrets"] == [] and seen["path"] == os.environ["PATH"]
    # nothing of them on disk either, and the job's folder is the user's alone
    job_dir = backend.job_dir("job-ok")
    for path in job_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            text = path.read_bytes()
            assert not any(v.encode() in text for v in secrets.values()), path
    assert job_dir.stat().st_mode & 0o777 == 0o700


def test_read_log_returns_whole_lines_from_an_offset(backend, workspace):
    backend.create_training_job(**training_request(workspace, "job-log", {"mode": "ok"}))
    wait_training_done(backend, "job-log")
    text, offset = backend.read_log("training", "job-log")
    assert "train_loss=0.9\n" in text
    assert text.endswith("\n")
    assert offset == len(text.encode())
    assert backend.read_log("training", "job-log", offset) == ("", offset)
    again, _ = backend.read_log("training", "job-log", len("starting\n"))
    assert again.startswith("train_loss=0.9")
    assert backend.read_log("training", "no-such-job", 7) == ("", 7)


def test_failing_script(backend, workspace):
    backend.create_training_job(**training_request(workspace, "job-fail", {"mode": "fail"}))
    done = wait_training_done(backend, "job-fail")
    assert done["TrainingJobStatus"] == "Failed"
    assert done["SecondaryStatus"] == "Failed"
    reason = done["FailureReason"]
    assert reason.startswith("AlgorithmError")
    assert "exited with code 3" in reason
    assert "ERROR: something broke in step 2" in reason
    assert "loading the data" in reason
    assert len(reason) <= 1024  # SageMaker's limit
    assert "ModelArtifacts" not in done
    metrics = {m["MetricName"]: m["Value"] for m in done["FinalMetricDataList"]}
    assert metrics["train_loss"] == 0.25
    assert not (workspace["output"] / "job-fail" / "output" / "model.tar.gz").exists()


def test_failing_script_with_long_log_keeps_reason_short(backend, workspace, tmp_path):
    code = tmp_path / "noisy"
    code.mkdir()
    (code / "entry.py").write_text(
        "import sys\nfor i in range(500):\n    print('x' * 300, i)\nprint('the last line')\n"
        "sys.exit(9)\n"
    )
    request = training_request(workspace, "job-noisy")
    request["HyperParameters"]["sagemaker_submit_directory"] = f"file://{code}"
    backend.create_training_job(**request)
    done = wait_training_done(backend, "job-noisy")
    assert done["TrainingJobStatus"] == "Failed"
    assert "exited with code 9" in done["FailureReason"]
    assert len(done["FailureReason"]) <= 1024


def test_failure_file_is_the_reason(backend, workspace):
    backend.create_training_job(**training_request(workspace, "job-failfile", {"mode": "failfile"}))
    done = wait_training_done(backend, "job-failfile")
    assert done["TrainingJobStatus"] == "Failed"
    assert done["FailureReason"] == (
        "AlgorithmError: DataError: the label column 'category' is missing"
    )


def test_max_runtime_exceeded(backend, workspace):
    request = training_request(workspace, "job-slow", {"mode": "sleep"}, max_runtime=1)
    started = time.monotonic()
    backend.create_training_job(**request)
    done = wait_training_done(backend, "job-slow")
    assert done["TrainingJobStatus"] == "Stopped"
    assert done["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert time.monotonic() - started < 15  # stopped after ~1 s, not after the 120 s sleep
    assert "ModelArtifacts" not in done
    log, _ = backend.read_log("training", "job-slow")
    assert "sleeping" in log and "woke up" not in log
    child = record_of(backend, "job-slow")["child_pid"]
    assert pid_gone(child)


def test_stop_running_job(backend, workspace):
    backend.create_training_job(**training_request(workspace, "job-stop", {"mode": "sleep"}))
    running = wait_training_secondary(backend, "job-stop", "Training")
    assert running["TrainingJobStatus"] == "InProgress"
    assert backend.stop_training_job(TrainingJobName="job-stop") is None
    seen = set()
    done = wait_for(
        describe_training(backend, "job-stop"),
        lambda d: seen.add(d["TrainingJobStatus"]) or d["TrainingJobStatus"] in TERMINAL,
        "job-stop to stop",
        timeout=20,
    )
    assert seen <= {"InProgress", "Stopping", "Stopped"}
    assert done["TrainingJobStatus"] == "Stopped"
    assert done["SecondaryStatus"] == "Stopped"
    assert "ModelArtifacts" not in done
    assert pid_gone(record_of(backend, "job-stop")["child_pid"])
    # Stopping a finished job is a no-op.
    backend.stop_training_job(TrainingJobName="job-stop")
    assert backend.describe_training_job(TrainingJobName="job-stop")["TrainingJobStatus"] == (
        "Stopped"
    )


def test_stop_immediately_after_create_ends_stopped(backend, workspace):
    """A stop right after create (a task killed as it submits) must end Stopped, not Failed."""
    backend.create_training_job(**training_request(workspace, "job-stop-early", {"mode": "sleep"}))
    backend.stop_training_job(TrainingJobName="job-stop-early")
    done = wait_training_done(backend, "job-stop-early")
    assert done["TrainingJobStatus"] == "Stopped", done.get("FailureReason")


# -- errors -------------------------------------------------------------------------------------


def test_describe_unknown_job(backend):
    with pytest.raises(ClientError) as info:
        backend.describe_training_job(TrainingJobName="never-created")
    assert client_error_code(info) == "ValidationException"
    assert is_not_found(info.value)
    with pytest.raises(ClientError) as info:
        backend.describe_processing_job(ProcessingJobName="never-created")
    assert client_error_code(info) == "ValidationException"
    assert is_not_found(info.value)
    with pytest.raises(ClientError) as info:
        backend.stop_training_job(TrainingJobName="never-created")
    assert is_not_found(info.value)


def test_other_client_errors_are_not_not_found():
    other = ClientError({"Error": {"Code": "ValidationException", "Message": "bad"}}, "X")
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "not found"}}, "X")
    assert not is_not_found(other)
    assert not is_not_found(throttled)


def test_duplicate_name(backend, workspace):
    request = training_request(workspace, "job-dup", {"mode": "ok"})
    backend.create_training_job(**request)
    with pytest.raises(ClientError) as info:
        backend.create_training_job(**request)
    assert client_error_code(info) == "ResourceInUse"
    assert not is_not_found(info.value)
    done = wait_training_done(backend, "job-dup")
    assert done["TrainingJobStatus"] == "Completed"  # the first job is unharmed
    with pytest.raises(ClientError) as info:
        backend.create_training_job(**request)
    assert client_error_code(info) == "ResourceInUse"


def without(request: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k != key}


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda r: without(r, "RoleArn"), id="no-RoleArn"),
        pytest.param(lambda r: without(r, "OutputDataConfig"), id="no-OutputDataConfig"),
        pytest.param(
            lambda r: {**r, "StoppingCondition": {"MaxRuntimeInSeconds": "60"}}, id="str-runtime"
        ),
        pytest.param(
            lambda r: {**r, "HyperParameters": {**r["HyperParameters"], "epochs": 2}},
            id="non-string-hyperparameter",
        ),
        pytest.param(lambda r: {**r, "NotAField": 1}, id="unknown-field"),
    ],
)
def test_malformed_request_is_refused_before_anything_is_created(backend, workspace, mutate):
    request = mutate(training_request(workspace, "job-bad", {"mode": "ok"}))
    with pytest.raises(ParamValidationError):
        backend.create_training_job(**request)
    assert not backend.job_dir("job-bad").exists()
    with pytest.raises(ClientError) as info:
        backend.describe_training_job(TrainingJobName="job-bad")
    assert is_not_found(info.value)


def test_missing_training_job_name_is_refused(backend, workspace):
    with pytest.raises(ParamValidationError):
        backend.create_training_job(**without(training_request(workspace, "x"), "TrainingJobName"))
    assert not backend.root.exists() or not any(backend.root.iterdir())


@pytest.mark.parametrize("name", ["bad_name", "-leading", "a" * 64, "dots.not.allowed"])
def test_invalid_job_name(backend, workspace, name):
    with pytest.raises(ClientError) as info:
        backend.create_training_job(**training_request(workspace, name))
    assert client_error_code(info) == "ValidationException"
    assert not backend.job_dir(name).exists()


def test_missing_entry_point_is_refused_and_cleaned_up(backend, workspace):
    request = training_request(workspace, "job-noentry")
    request["HyperParameters"]["sagemaker_program"] = "missing.py"
    with pytest.raises(ClientError) as info:
        backend.create_training_job(**request)
    assert client_error_code(info) == "ValidationException"
    assert "missing.py" in info.value.response["Error"]["Message"]
    assert not backend.job_dir("job-noentry").exists()


def test_non_local_uri_is_refused(backend, workspace):
    request = training_request(workspace, "job-s3")
    request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = "s3://bucket/train/"
    with pytest.raises(ClientError) as info:
        backend.create_training_job(**request)
    assert client_error_code(info) == "ValidationException"
    assert "file://" in info.value.response["Error"]["Message"]
    assert not backend.job_dir("job-s3").exists()


@pytest.mark.parametrize(
    "field", ["ResourceConfig", "StoppingCondition", "AlgorithmSpecification", "InputDataConfig"]
)
def test_request_without_optional_shape_is_refused_cleanly_or_runs(backend, workspace, field):
    """botocore's model marks these fields optional, so validation lets them through.

    Either the backend refuses the request with a botocore error and leaves nothing behind (so the
    fixed request can be sent under the same name), or it runs a job that describe can report.
    A bare KeyError, a half-made job folder or a describe that crashes is neither.
    """
    name = f"job-no-{field.lower()}"
    request = without(training_request(workspace, name, {"mode": "ok"}), field)
    try:
        backend.create_training_job(**request)
    except (ParamValidationError, ClientError):
        assert not backend.job_dir(name).exists()
        backend.create_training_job(**training_request(workspace, name, {"mode": "ok"}))
        assert wait_training_done(backend, name)["TrainingJobStatus"] == "Completed"
    else:
        done = wait_training_done(backend, name)
        assert done["TrainingJobStatus"] in TERMINAL


# -- concurrency --------------------------------------------------------------------------------


def test_concurrency_cap_keeps_second_job_pending(make_backend, workspace):
    backend = make_backend(max_concurrent_jobs=1)
    backend.create_training_job(**training_request(workspace, "job-first", {"mode": "sleep"}))
    first = wait_training_secondary(backend, "job-first", "Training")
    assert first["SecondaryStatus"] == "Training"
    backend.create_training_job(**training_request(workspace, "job-second", {"mode": "sleep"}))
    second = wait_training_secondary(backend, "job-second", "Pending")
    assert second["SecondaryStatus"] == "Pending"
    assert second["TrainingJobStatus"] == "InProgress"
    # It stays Pending while the first one runs.
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        assert backend.describe_training_job(TrainingJobName="job-second")["SecondaryStatus"] == (
            "Pending"
        )
        assert backend.describe_training_job(TrainingJobName="job-first")["SecondaryStatus"] == (
            "Training"
        )
        time.sleep(0.2)
    assert not (backend.job_dir("job-second") / "job.log").exists()  # never started
    # Once the first ends, the second gets the slot.
    backend.stop_training_job(TrainingJobName="job-first")
    assert wait_training_done(backend, "job-first")["TrainingJobStatus"] == "Stopped"
    second = wait_training_secondary(backend, "job-second", "Training")
    assert second["SecondaryStatus"] == "Training"


def test_stop_pending_job(make_backend, workspace):
    backend = make_backend(max_concurrent_jobs=1)
    backend.create_training_job(**training_request(workspace, "job-hog", {"mode": "sleep"}))
    wait_training_secondary(backend, "job-hog", "Training")
    backend.create_training_job(**training_request(workspace, "job-queued", {"mode": "sleep"}))
    wait_training_secondary(backend, "job-queued", "Pending")
    backend.stop_training_job(TrainingJobName="job-queued")
    done = wait_training_done(backend, "job-queued")
    assert done["TrainingJobStatus"] == "Stopped"
    assert "TrainingStartTime" not in done  # it never ran
    assert backend.describe_training_job(TrainingJobName="job-hog")["SecondaryStatus"] == (
        "Training"
    )


# -- idempotent submission ----------------------------------------------------------------------


def test_ensure_job_created_reattached_reused(backend, workspace):
    base = job_name("fmops_pipeline", "manual__2025-01-01T00:00:00+00:00", "cand-ok")
    request = training_request(workspace, "placeholder", {"mode": "sleep", "seconds": "1.5"})
    assert ensure_job(backend, "training", base, request) == (base, "created")
    assert ensure_job(backend, "training", base, request) == (base, "reattached")
    assert wait_training_done(backend, base)["TrainingJobStatus"] == "Completed"
    assert ensure_job(backend, "training", base, request) == (base, "reused")
    assert not backend.job_dir(f"{base}-a2").exists()
    assert not backend.job_dir("placeholder").exists()


def test_ensure_job_new_attempt_after_failure(backend, workspace):
    base = job_name("fmops_pipeline", "manual__2025-01-01T00:00:00+00:00", "cand-bad")
    request = training_request(workspace, "placeholder", {"mode": "fail"})
    assert ensure_job(backend, "training", base, request) == (base, "created")
    assert wait_training_done(backend, base)["TrainingJobStatus"] == "Failed"
    second = f"{base}-a2"
    assert ensure_job(backend, "training", base, request) == (second, "created")
    assert wait_training_done(backend, second)["TrainingJobStatus"] == "Failed"
    # The failed attempts are kept for the record.
    assert backend.describe_training_job(TrainingJobName=base)["TrainingJobStatus"] == "Failed"
    with pytest.raises(RuntimeError, match="failed 2 attempts"):
        ensure_job(backend, "training", base, request, max_attempts=2)


def test_ensure_job_new_attempt_after_stop(backend, workspace):
    base = job_name("fmops_pipeline", "run-stop", "cand")
    request = training_request(workspace, "placeholder", {"mode": "sleep"})
    assert ensure_job(backend, "training", base, request) == (base, "created")
    wait_training_secondary(backend, base, "Training")
    backend.stop_training_job(TrainingJobName=base)
    assert wait_training_done(backend, base)["TrainingJobStatus"] == "Stopped"
    ok_request = training_request(workspace, "placeholder", {"mode": "ok"})
    assert ensure_job(backend, "training", base, ok_request) == (f"{base}-a2", "created")
    assert wait_training_done(backend, f"{base}-a2")["TrainingJobStatus"] == "Completed"


# -- a dead supervisor --------------------------------------------------------------------------


def test_killed_job_process_is_reported_failed_with_the_signal(backend, workspace):
    """kill -9 of the job's own process (the supervisor lives on): Failed, and the reason says
    which signal ended it."""
    backend.create_training_job(**training_request(workspace, "job-killed", {"mode": "sleep"}))
    wait_training_secondary(backend, "job-killed", "Training")
    wait_for(
        lambda: {"log": backend.read_log("training", "job-killed")[0]},
        lambda d: "sleeping" in d["log"],
        "the job's script to run",
    )
    os.kill(int(record_of(backend, "job-killed")["child_pid"]), signal.SIGKILL)
    done = wait_training_done(backend, "job-killed")
    assert done["TrainingJobStatus"] == "Failed"
    assert "killed by SIGKILL" in done["FailureReason"]
    assert "sleeping" in done["FailureReason"]  # the last log lines come with it
    assert "ModelArtifacts" not in done


def test_killed_supervisor_is_reported_failed(backend, workspace):
    backend.create_training_job(**training_request(workspace, "job-orphan", {"mode": "sleep"}))
    wait_training_secondary(backend, "job-orphan", "Training")
    identity = supervisor_of(backend, "job-orphan")
    assert processes.alive(identity)
    record = record_of(backend, "job-orphan")
    os.kill(int(identity["pid"]), signal.SIGKILL)
    if record.get("child_pid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(record["child_pid"]), signal.SIGKILL)
    done = wait_training_done(backend, "job-orphan")
    assert done["TrainingJobStatus"] == "Failed"
    assert done["SecondaryStatus"] == "Failed"
    assert "supervisor" in done["FailureReason"]
    assert str(identity["pid"]) in done["FailureReason"]
    assert "TrainingEndTime" in done
    # The verdict is recorded, so it does not change on the next describe.
    assert backend.describe_training_job(TrainingJobName="job-orphan")["TrainingJobStatus"] == (
        "Failed"
    )


# -- processing jobs ----------------------------------------------------------------------------


def wait_processing_done(backend: LocalJobBackend, name: str) -> dict[str, Any]:
    return wait_for(
        describe_processing(backend, name),
        lambda d: d["ProcessingJobStatus"] in TERMINAL,
        f"processing job {name} to end",
    )


def test_processing_job_copies_outputs(backend, workspace):
    destination = workspace["root"] / "eval-results"
    request = processing_request(workspace, "eval-ok", destination)
    response = backend.create_processing_job(**request)
    assert response["ProcessingJobArn"].endswith(":processing-job/eval-ok")
    done = wait_processing_done(backend, "eval-ok")
    assert done["ProcessingJobStatus"] == "Completed", done.get("FailureReason")
    assert "FailureReason" not in done
    assert done["ProcessingEndTime"] >= done["ProcessingStartTime"]
    assert done["AppSpecification"] == request["AppSpecification"]  # as sent, /opt/ml paths
    result = json.loads((destination / "result.json").read_text())
    assert result["rows"] == 3
    # The script saw the /opt/ml path mapped into the job folder.
    assert Path(result["input"]) == backend.job_dir("eval-ok") / "processing/input/data"
    assert (destination / "nested" / "note.txt").read_text() == "done"
    log, _ = backend.read_log("processing", "eval-ok")
    assert "args" in log


def test_processing_job_failure(backend, workspace):
    destination = workspace["root"] / "eval-failed"
    backend.create_processing_job(
        **processing_request(workspace, "eval-fail", destination, fail=True)
    )
    done = wait_processing_done(backend, "eval-fail")
    assert done["ProcessingJobStatus"] == "Failed"
    assert "exited with code 5" in done["FailureReason"]
    assert "evaluation crashed" in done["FailureReason"]
    assert not (destination / "result.json").exists()


def test_processing_local_path_outside_opt_ml_is_refused(backend, workspace):
    request = processing_request(workspace, "eval-badpath", workspace["root"] / "out")
    request["ProcessingInputs"][1]["S3Input"]["LocalPath"] = "/data/input"
    with pytest.raises(ClientError) as info:
        backend.create_processing_job(**request)
    assert client_error_code(info) == "ValidationException"
    assert "/opt/ml/" in info.value.response["Error"]["Message"]
    assert not backend.job_dir("eval-badpath").exists()


def test_processing_malformed_request(backend, workspace):
    request = processing_request(workspace, "eval-noresources", workspace["root"] / "out")
    del request["ProcessingResources"]
    with pytest.raises(ParamValidationError):
        backend.create_processing_job(**request)
    assert not backend.job_dir("eval-noresources").exists()


def test_ensure_processing_job(backend, workspace):
    destination = workspace["root"] / "eval-ensure"
    base = job_name("fmops_pipeline", "run-1", "cand", "processing")
    request = processing_request(workspace, "placeholder", destination)
    assert ensure_job(backend, "processing", base, request) == (base, "created")
    assert wait_processing_done(backend, base)["ProcessingJobStatus"] == "Completed"
    assert ensure_job(backend, "processing", base, request) == (base, "reused")
