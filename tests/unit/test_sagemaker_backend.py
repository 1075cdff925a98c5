"""The SageMaker job backend against a moto server on 127.0.0.1, through an Airflow connection.

Every request is checked against botocore's SageMaker service model before it is sent. moto
(5.2.5) finishes jobs at once and has no StopTrainingJob; an InProgress job and SageMaker's answer
to stopping a finished job are played with botocore's ``Stubber`` (which checks requests against
the same model). Retries are checked against a small HTTP server that throttles.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto_server import aws_connection, aws_env_fixture, moto_server_fixture  # noqa: F401

from fmops.jobs.backend import ensure_job, get_backend, is_not_found
from fmops.jobs.local import validate_request
from fmops.jobs.sagemaker import (
    NOT_FOUND,
    SageMakerJobBackend,
    as_sagemaker_error,
    decode_offset,
    encode_offset,
    stream_key,
)

ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/fmops-sagemaker-execution"
BUCKET = "s3://fmops-artifacts-123456789012"
TRAINING_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
    "2.1.0-transformers4.36.0-gpu-py310-cu121-ubuntu20.04"
)
PROCESSING = "/opt/ml/processing"


def training_request(name: str) -> dict[str, Any]:
    """A CreateTrainingJob request as fmops builds one for the sagemaker target."""

    def channel(channel_name: str, uri: str) -> dict[str, Any]:
        return {
            "ChannelName": channel_name,
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": uri,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "InputMode": "File",
        }

    run = f"{BUCKET}/runs/fmops_finetune/manual__2026-11-25"
    request = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": TRAINING_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [
                {"Name": "train:loss", "Regex": r"train_loss=([0-9.eE+-]+)"},
                {"Name": "validation:accuracy", "Regex": r"validation_accuracy=([0-9.eE+-]+)"},
            ],
        },
        "RoleArn": ROLE_ARN,
        "HyperParameters": {
            "method": "lora",
            "text_column": "text",
            "label_column": "label",
            "epochs": "3",
            "learning_rate": "0.0002",
            "batch_size": "32",
            "lora_r": "8",
            "lora_target_modules": json.dumps(["query", "value"]),
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": f"{run}/code/sourcedir.tar.gz",
        },
        "InputDataConfig": [
            channel("train", f"{run}/data/train/"),
            channel("validation", f"{run}/data/validation/"),
            channel("base_model", f"{BUCKET}/models/all-MiniLM-L6-v2/"),
        ],
        "OutputDataConfig": {"S3OutputPath": f"{run}/training"},
        "ResourceConfig": {
            "InstanceType": "ml.g5.xlarge",
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "EnableNetworkIsolation": True,
        "CheckpointConfig": {
            "S3Uri": f"{run}/checkpoints/minilm-lora",
            "LocalPath": "/opt/ml/checkpoints",
        },
        "Tags": [{"Key": "fmops:dag_id", "Value": "fmops_finetune"}],
    }
    validate_request("CreateTrainingJob", request)
    return request


def processing_request(name: str) -> dict[str, Any]:
    """A CreateProcessingJob request as fmops builds one to evaluate a candidate."""

    def source(input_name: str, uri: str) -> dict[str, Any]:
        return {
            "InputName": input_name,
            "S3Input": {
                "S3Uri": uri,
                "LocalPath": f"{PROCESSING}/input/{input_name}",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
            },
        }

    run = f"{BUCKET}/runs/fmops_finetune/manual__2026-11-25"
    request = {
        "ProcessingJobName": name,
        "ProcessingInputs": [
            source("code", f"{run}/code/"),
            source("model", f"{run}/training/{name}/output/model.tar.gz"),
            source("data", f"{run}/data/evaluation/"),
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "evaluation",
                    "S3Output": {
                        "S3Uri": f"{run}/evaluation/{name}",
                        "LocalPath": f"{PROCESSING}/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.xlarge",
                "VolumeSizeInGB": 30,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": 1800},
        "AppSpecification": {
            "ImageUri": TRAINING_IMAGE,
            "ContainerEntrypoint": ["python3", f"{PROCESSING}/input/code/evaluate.py"],
            "ContainerArguments": ["--model", f"{PROCESSING}/input/model", "--batch-size", "64"],
        },
        "RoleArn": ROLE_ARN,
        "NetworkConfig": {"EnableNetworkIsolation": True},
        "Tags": [{"Key": "fmops:dag_id", "Value": "fmops_finetune"}],
    }
    validate_request("CreateProcessingJob", request)
    return request


@pytest.fixture
def sagemaker_backend(aws_env) -> SageMakerJobBackend:
    return get_backend("sagemaker")  # as the pipeline makes it: by target name


def unique(prefix: str) -> str:
    """A job name of this test alone: the moto server lives for the whole session."""
    return f"{prefix}-{time.time_ns() % 10**12}"


def error_of(info: pytest.ExceptionInfo[ClientError]) -> dict[str, str]:
    return info.value.response["Error"]


# -- registry, clients, retries ------------------------------------------------------------------


def test_registered_and_cheap_to_construct(aws_env):
    backend = get_backend("sagemaker", aws_conn_id="aws_default", region_name=None)
    assert isinstance(backend, SageMakerJobBackend)
    assert backend._clients == {}  # no connection lookup, no client, until the first call
    with pytest.raises(ValueError, match="at least 1"):
        SageMakerJobBackend(max_log_events=0)


def test_clients_come_from_the_connection_with_adaptive_retries(aws_env, monkeypatch):
    # config_kwargs of the connection still apply next to the backend's retry settings.
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT", aws_connection(aws_env, config_kwargs={"connect_timeout": 7})
    )
    backend = SageMakerJobBackend(max_attempts=4)
    for client in (backend.sagemaker_client, backend.logs_client):
        assert client.meta.endpoint_url == aws_env
        assert client.meta.region_name == "us-east-1"
        assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 4}
        assert client.meta.config.connect_timeout == 7
    assert backend.sagemaker_client is backend.sagemaker_client  # made once per instance
    assert backend.logs_client.meta.service_model.service_name == "logs"

    other = SageMakerJobBackend(region_name="eu-west-1")
    assert other.sagemaker_client.meta.region_name == "eu-west-1"


class _ScriptedSageMaker(BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's script."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.targets.append(self.headers["X-Amz-Target"])
        status, body = self.server.script.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted(aws_env, monkeypatch) -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedSageMaker)
    server.script, server.targets = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    monkeypatch.setenv("AIRFLOW_CONN_SCRIPTED", aws_connection(f"http://{host}:{port}"))
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()


THROTTLED = (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})


def test_throttling_is_retried_and_validation_errors_are_not(scripted):
    backend = SageMakerJobBackend(aws_conn_id="scripted", max_attempts=2)
    described = {"TrainingJobName": "j", "TrainingJobStatus": "InProgress"}
    scripted.script[:] = [THROTTLED, (200, described)]
    response = backend.describe_training_job(TrainingJobName="j")
    assert response["TrainingJobStatus"] == "InProgress"
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert scripted.targets == ["SageMaker.DescribeTrainingJob"] * 2

    scripted.script[:] = [(400, {"__type": "ValidationException", "message": NOT_FOUND})]
    scripted.targets.clear()
    with pytest.raises(ClientError) as info:
        backend.describe_training_job(TrainingJobName="j")
    assert is_not_found(info.value)
    assert len(scripted.targets) == 1  # a deterministic error is not retried

    scripted.script[:] = [THROTTLED, THROTTLED]
    scripted.targets.clear()
    with pytest.raises(ClientError) as info:
        backend.describe_training_job(TrainingJobName="j")
    assert error_of(info)["Code"] == "ThrottlingException"
    assert len(scripted.targets) == 2  # max_attempts in all


# -- training jobs -------------------------------------------------------------------------------


def test_create_and_describe_training_job(sagemaker_backend):
    name = unique("minilm-lora")
    request = training_request(name)
    created = sagemaker_backend.create_training_job(**request)
    assert created["TrainingJobArn"] == f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}"

    description = sagemaker_backend.describe_training_job(TrainingJobName=name)
    assert description["TrainingJobStatus"] == "Completed"  # moto finishes jobs at once
    for field in (
        "RoleArn",
        "HyperParameters",
        "InputDataConfig",
        "OutputDataConfig",
        "ResourceConfig",
        "StoppingCondition",
        "EnableNetworkIsolation",
        "CheckpointConfig",
    ):
        assert description[field] == request[field], field
    assert description["AlgorithmSpecification"]["TrainingImage"] == TRAINING_IMAGE
    assert description["ModelArtifacts"]["S3ModelArtifacts"] == (
        f"{request['OutputDataConfig']['S3OutputPath']}/{name}/output/model.tar.gz"
    )


def test_ensure_job_twice_starts_one_job(sagemaker_backend):
    base = unique("fmops-finetune-minilm")
    request = training_request(base)
    assert ensure_job(sagemaker_backend, "training", base, request) == (base, "created")
    assert ensure_job(sagemaker_backend, "training", base, request) == (base, "reused")
    jobs = sagemaker_backend.list_training_jobs(NameContains=base)["TrainingJobSummaries"]
    assert [j["TrainingJobName"] for j in jobs] == [base]
    assert jobs[0]["TrainingJobStatus"] == "Completed"


def test_ensure_job_reattaches_to_a_running_job(sagemaker_backend):
    name = unique("running")
    with Stubber(sagemaker_backend.sagemaker_client) as stub:
        stub.add_response(
            "describe_training_job",
            {
                "TrainingJobName": name,
                "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}",
                "TrainingJobStatus": "InProgress",
                "SecondaryStatus": "Training",
                "AlgorithmSpecification": {"TrainingInputMode": "File"},
                "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 30},
                "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
                "CreationTime": time.time(),
                "ModelArtifacts": {"S3ModelArtifacts": ""},
            },
            {"TrainingJobName": name},
        )
        # No create_training_job is stubbed: calling it would fail the test.
        assert ensure_job(sagemaker_backend, "training", name, training_request(name)) == (
            name,
            "reattached",
        )
        stub.assert_no_pending_responses()


@pytest.mark.parametrize("kind", ["training", "processing"])
def test_unknown_job_is_not_found(sagemaker_backend, kind):
    name = unique("never-created")
    describe = getattr(sagemaker_backend, f"describe_{kind}_job")
    field = "TrainingJobName" if kind == "training" else "ProcessingJobName"
    with pytest.raises(ClientError) as info:
        describe(**{field: name})
    assert is_not_found(info.value)
    assert error_of(info)["Code"] == "ValidationException"
    # moto's own wording, kept after SageMaker's.
    assert error_of(info)["Message"].startswith(f"{NOT_FOUND} (Could not find {kind} job ")
    assert info.value.operation_name == f"Describe{kind.capitalize()}Job"
    assert info.value.response["ResponseMetadata"]["RetryAttempts"] == 0


def test_only_moto_not_found_wording_is_rewritten():
    def error(code: str, message: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": message}}, "DescribeTrainingJob")

    for err in (
        error("ValidationException", NOT_FOUND),
        error("ValidationException", "1 validation error detected: Value 'x' at 'roleArn'"),
        error("ResourceNotFound", "Could not find training job 'x'."),
        error("ThrottlingException", "Rate exceeded"),
    ):
        assert as_sagemaker_error(err) is err
    rewritten = as_sagemaker_error(error("ValidationException", "Could not find training job 'x'."))
    assert rewritten.operation_name == "DescribeTrainingJob"
    assert is_not_found(rewritten)


def _stopped_training_description(name: str, status: str) -> dict[str, Any]:
    return {
        "TrainingJobName": name,
        "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}",
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "ResourceConfig": {"InstanceCount": 1, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "CreationTime": time.time(),
        "ModelArtifacts": {"S3ModelArtifacts": ""},
    }


def test_stop_training_job(sagemaker_backend):
    # moto has no StopTrainingJob: SageMaker's answers are played by the Stubber.
    name = unique("stop-me")
    stop = {"TrainingJobName": name}
    refused = "The request was rejected because the training job is in status {}."
    with Stubber(sagemaker_backend.sagemaker_client) as stub:
        stub.add_response("stop_training_job", {}, stop)
        assert sagemaker_backend.stop_training_job(TrainingJobName=name) is None

        # A finished job: SageMaker refuses, the backend confirms the status, nothing to do.
        for status in ("Completed", "Failed", "Stopped", "Stopping"):
            stub.add_client_error(
                "stop_training_job", "ValidationException", refused.format(status), 400, stop
            )
            stub.add_response("describe_training_job", _stopped_training_description(name, status))
            assert sagemaker_backend.stop_training_job(TrainingJobName=name) is None

        # Any other refusal stays an error: a ValidationException while the job runs...
        stub.add_client_error("stop_training_job", "ValidationException", "bad request", 400)
        stub.add_response(
            "describe_training_job", _stopped_training_description(name, "InProgress")
        )
        with pytest.raises(ClientError) as info:
            sagemaker_backend.stop_training_job(TrainingJobName=name)
        assert error_of(info)["Message"] == "bad request"

        # ... an unknown job (describe's own error is not what the caller sees) ...
        stub.add_client_error("stop_training_job", "ValidationException", NOT_FOUND, 400)
        stub.add_client_error("describe_training_job", "ValidationException", NOT_FOUND, 400)
        with pytest.raises(ClientError) as info:
            sagemaker_backend.stop_training_job(TrainingJobName=name)
        assert info.value.operation_name == "StopTrainingJob"
        assert is_not_found(info.value)

        # ... and any other code, without a describe.
        stub.add_client_error("stop_training_job", "AccessDeniedException", "no", 400)
        with pytest.raises(ClientError) as info:
            sagemaker_backend.stop_training_job(TrainingJobName=name)
        assert error_of(info)["Code"] == "AccessDeniedException"
        stub.assert_no_pending_responses()


# -- processing jobs -----------------------------------------------------------------------------


def test_processing_job_create_describe_stop(sagemaker_backend):
    name = unique("evaluate-minilm")
    request = processing_request(name)
    created = sagemaker_backend.create_processing_job(**request)
    assert created["ProcessingJobArn"].endswith(f":processing-job/{name}")

    description = sagemaker_backend.describe_processing_job(ProcessingJobName=name)
    assert description["ProcessingJobStatus"] == "Completed"
    for field in ("ProcessingInputs", "ProcessingOutputConfig", "AppSpecification", "RoleArn"):
        assert description[field] == request[field], field
    assert ensure_job(sagemaker_backend, "processing", name, request) == (name, "reused")
    jobs = sagemaker_backend.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    assert [j["ProcessingJobName"] for j in jobs] == [name]

    # moto accepts stopping a Completed job (and marks it Stopped); SageMaker would refuse,
    # which the backend treats as done (see test_stop_training_job).
    assert sagemaker_backend.stop_processing_job(ProcessingJobName=name) is None
    with pytest.raises(ClientError) as info:
        sagemaker_backend.stop_processing_job(ProcessingJobName=unique("never-created"))
    assert is_not_found(info.value)
    assert info.value.operation_name == "StopProcessingJob"


# -- logs ----------------------------------------------------------------------------------------


def test_offset_packs_per_stream_positions():
    assert decode_offset(0) == {}
    positions = {
        stream_key("job/algo-1-1764028800"): (1_764_028_800_123, 1),
        stream_key("job/algo-2-1764028800"): (1_764_028_800_125, 1000),
        0: (0, 1),
        2**32 - 1: (2**44 - 1, 2**20 - 1),
    }
    offset = encode_offset(positions)
    assert decode_offset(offset) == positions
    assert json.loads(json.dumps(offset)) == offset  # survives XCom and trigger kwargs
    assert encode_offset({}) == 0
    single = encode_offset({stream_key("job/algo-1-1764028800"): (1_764_028_800_123, 3)})
    assert single < 2**96
    for bad in ({1: (2**44, 1)}, {1: (5, 0)}, {1: (5, 2**20)}, {2**32: (5, 1)}):
        with pytest.raises(ValueError, match="out of range"):
            encode_offset(bad)
    with pytest.raises(ValueError, match="never negative"):
        decode_offset(-1)


def _put(logs: Any, group: str, stream: str, events: list[tuple[int, str]]) -> None:
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        logEvents=[{"timestamp": t, "message": m} for t, m in events],
    )


def _streams(logs: Any, group: str, *names: str) -> None:
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    for name in names:
        logs.create_log_stream(logGroupName=group, logStreamName=name)


def test_read_log_returns_each_event_once_in_order(sagemaker_backend):
    name = unique("minilm-lora")
    group = "/aws/sagemaker/TrainingJobs"
    logs = sagemaker_backend.logs_client
    assert sagemaker_backend.read_log("training", name, 0) == ("", 0)  # no stream yet

    host1, host2 = f"{name}/algo-1-1764028800", f"{name}/algo-2-1764028800"
    other_job = f"{name}-b/algo-1-1764028800"  # shares the prefix, but not "<name>/"
    _streams(logs, group, host1, host2, other_job)
    assert sagemaker_backend.read_log("training", name, 0) == ("", 0)  # streams without events

    t = int(time.time() * 1000) - 60_000
    _put(logs, group, host1, [(t, "a1"), (t, "a2"), (t + 1, "a3")])
    _put(logs, group, host2, [(t, "b1")])
    _put(logs, group, other_job, [(t, "not this job")])
    text, offset = sagemaker_backend.read_log("training", name, 0)
    assert text == "a1\na2\nb1\na3\n"
    assert decode_offset(offset) == {stream_key(host1): (t + 1, 1), stream_key(host2): (t, 1)}

    # host2 flushes late: an event older than host1's last one, another at a millisecond already
    # read from; host1 adds one at its last millisecond. Each new event comes exactly once.
    _put(logs, group, host2, [(t, "b2"), (t + 1, "b3")])
    _put(logs, group, host1, [(t + 1, "a4"), (t + 5, "a5: a line that ends in a newline\n")])
    text, offset = sagemaker_backend.read_log("training", name, offset)
    assert text == "b2\na4\nb3\na5: a line that ends in a newline\n"

    assert sagemaker_backend.read_log("training", name, offset) == ("", offset)


def test_read_log_is_bounded_per_call(aws_env):
    backend = SageMakerJobBackend(max_log_events=3)
    name = unique("evaluate")
    group = "/aws/sagemaker/ProcessingJobs"
    stream = f"{name}/algo-1-1764028800"
    _streams(backend.logs_client, group, stream)
    t = int(time.time() * 1000) - 60_000
    # e2..e5 share a millisecond, so calls resume in the middle of it.
    stamps = [t, t + 1, t + 2, t + 2, t + 2, t + 2, t + 3]
    _put(backend.logs_client, group, stream, [(s, f"e{i}") for i, s in enumerate(stamps)])

    texts, offset = [], 0
    for _ in range(4):
        text, offset = backend.read_log("processing", name, offset)
        texts.append(text)
    assert texts == ["e0\ne1\ne2\n", "e3\ne4\ne5\n", "e6\n", ""]
    assert decode_offset(offset) == {stream_key(stream): (t + 3, 1)}


def test_read_log_without_a_log_group(aws_env):
    # A region where no SageMaker job has logged: the log group itself does not exist.
    backend = SageMakerJobBackend(region_name="ap-southeast-2")
    with pytest.raises(backend.logs_client.exceptions.ResourceNotFoundException):
        backend.logs_client.describe_log_streams(logGroupName="/aws/sagemaker/TrainingJobs")
    assert backend.read_log("training", "minilm-lora", 0) == ("", 0)
    offset = encode_offset({stream_key("minilm-lora/algo-1-1764028800"): (1_764_028_800_000, 2)})
    assert backend.read_log("processing", "minilm-lora", offset) == ("", offset)
    with pytest.raises(ValueError, match="unknown job kind 'transform'"):
        backend.read_log("transform", "minilm-lora", 0)


def test_read_log_follows_empty_pages(sagemaker_backend):
    # CloudWatch may answer an empty page before the end of a stream (moto never does).
    stream = "minilm-lora/algo-1-1764028800"
    group = "/aws/sagemaker/TrainingJobs"
    page = {"logGroupName": group, "logStreamName": stream, "startTime": 0, "startFromHead": True}
    with Stubber(sagemaker_backend.logs_client) as stub:
        stub.add_response(
            "describe_log_streams",
            {"logStreams": [{"logStreamName": stream}]},
            {"logGroupName": group, "logStreamNamePrefix": "minilm-lora/"},
        )
        stub.add_response(
            "get_log_events", {"events": [], "nextForwardToken": "f/1"}, {**page, "limit": 1000}
        )
        stub.add_response(
            "get_log_events",
            {"events": [{"timestamp": 5, "message": "hello"}], "nextForwardToken": "f/2"},
            {**page, "limit": 1000, "nextToken": "f/1"},
        )
        text, offset = sagemaker_backend.read_log("training", "minilm-lora", 0)
        stub.assert_no_pending_responses()
    assert text == "hello\n"
    assert decode_offset(offset) == {stream_key(stream): (5, 1)}


def test_jobs_cli_lists_past_the_first_page_on_sagemaker(sagemaker_backend, capsys):
    """SageMaker answers List* 10 at a time; `fmops jobs list` follows NextToken."""
    from fmops.cli import main

    names = [f"train-page-{i:02d}" for i in range(12)]
    for name in names:
        sagemaker_backend.create_training_job(**training_request(name))
    assert main(["jobs", "list", "--target", "sagemaker", "--limit", "11"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    training = [row[0] for row in rows if row[1] == "training"]
    assert len(training) == 11  # past SageMaker's first page of 10, and no further
    assert main(["jobs", "list", "--target", "sagemaker"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert set(names) <= set(listed)
