"""SageMaker's job containers and endpoint containers, emulated behind a moto server.

moto records CreateTrainingJob and CreateProcessingJob and answers ``Completed`` at once, with no
outputs; its InvokeEndpoint answers canned bodies. ``SageMakerContainers.install`` patches the
moto server that runs in this process (``ThreadedMotoServer``, tests/moto_server.py) so that:

- a new training or processing job is ``InProgress`` and a background thread runs it, then
  records ``Completed`` or ``Failed`` (with SageMaker's ``FailureReason``), the secondary status
  and its transitions, ``TrainingTimeInSeconds``, ``BillableTimeInSeconds``, the final metrics of
  the request's ``MetricDefinitions``, and ``ModelArtifacts`` once there is a model;
- running a job means what the SageMaker container contract says and nothing else: every S3
  input (training channels, the ``code`` channel or the S3 ``sagemaker_submit_directory`` with
  the ``sourcedir.tar.gz``, processing inputs) is downloaded from moto S3 as File mode does
  (``S3Prefix``: every object under the prefix, named relative to the prefix's last ``/``), the
  request is pointed at those folders with ``file://`` URIs and run by fmops' own local executor
  (``fmops.jobs.local.LocalJobBackend``, which lays out ``/opt/ml``, the ``SM_*`` environment,
  the toolkit's split of the ``sagemaker_*`` hyperparameters and the channels), and the outputs
  are uploaded where SageMaker puts them: training
  ``<S3OutputPath>/<job>/output/model.tar.gz`` (and ``output.tar.gz`` of
  ``/opt/ml/output/data``), the checkpoints to ``CheckpointConfig.S3Uri``, each processing
  output folder to its ``S3Uri``;
- the container's log lines go to moto CloudWatch Logs as SageMaker writes them: group
  ``/aws/sagemaker/TrainingJobs`` or ``/aws/sagemaker/ProcessingJobs``, stream
  ``<job>/algo-1-<epoch seconds>``, while the job runs;
- InvokeEndpoint is answered by the model the endpoint serves (DescribeEndpoint -> its endpoint
  config's first variant -> DescribeModel -> ``ModelDataUrl``), downloaded from S3, unpacked and
  served with the archive's ``code/<SAGEMAKER_PROGRAM>`` handlers (``model_fn`` / ``input_fn`` /
  ``predict_fn`` / ``output_fn``, the Hugging Face inference toolkit's contract). A handler's
  exception is the toolkit's HTTP 400, which SageMaker returns as a ``ModelError`` with the
  container's status and body (``OriginalStatusCode``, ``OriginalMessage``);
- a model whose image is the Hugging Face LLM image (TGI: ``huggingface-pytorch-tgi-inference``)
  is served as TGI serves ``HF_MODEL_ID``: the unpacked folder itself (``config.json`` and
  ``*.safetensors`` at its root, no ``code/``), by fmops' local stand-in for TGI's contract,
  ``include/scripts/serve_generation.py``, imported and loaded with the container's
  ``Environment`` as its process environment (``MAX_INPUT_TOKENS``, ``MAX_TOTAL_TOKENS``). Its
  answers carry TGI's statuses: 400 for a body that is not JSON, 422 and ``{"error",
  "error_type": "validation"}`` for a request TGI validates away (``BadRequestError``), 500 for a
  failed generation.

What it does NOT do: the request's image is never run (there is no Docker here); the job script
runs with this virtualenv's Python, as the local target runs it. The image, instance type and
count, volume, VPC, KMS keys, spot, warm pools and retries are recorded by moto and otherwise
ignored (the local executor logs which). Network isolation is not enforced. Checkpoints are
synced to S3 once, when the job ends (SageMaker syncs them while it runs). Processing outputs are
uploaded at the end of the job whatever their ``S3UploadMode``. Only File input mode and
``S3Prefix`` data are emulated: anything else fails the job with a reason saying so. A job cannot
be stopped (moto's StopTrainingJob answers HTTP 500). Endpoints have no instances: every variant
is served in this process by the first variant's model, with no latency metrics. TGI's own
server (batching, sharding over ``SM_NUM_GPUS``, ``DTYPE``, streaming) is not run: the stand-in
answers one request at a time on the CPU at the folder's precision.

moto changes fixed on the way: a second CreateTrainingJob or CreateProcessingJob with a name in
use is refused with ``ResourceInUse`` (moto accepts it silently), moto's canned
``MetricDefinitions`` and ``FinalMetricDataList`` are replaced by the request's, and the
request's ``Environment`` (and a processing job's ``ProcessingResources``), which moto's
response layer drops, are kept for DescribeTrainingJob / DescribeProcessingJob. That is also why
the job calls are patched in moto's response layer rather than in its backend: the backend never
sees those fields, and the local executor needs them. InvokeEndpoint is patched there too, since
its backend call never sees the request's ``Content-Type``, which ``input_fn`` is given.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import sys
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest

log = logging.getLogger(__name__)

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
PROJECT_ROOT = Path(__file__).resolve().parents[1]
TGI_REPOSITORY = "huggingface-pytorch-tgi-inference"  # the Hugging Face LLM image's
TGI_HANDLERS = PROJECT_ROOT / "include" / "scripts" / "serve_generation.py"
TGI_STATUS = {"json": 400, "validation": 422, "generation": 500}
LOG_GROUPS = {
    "training": "/aws/sagemaker/TrainingJobs",
    "processing": "/aws/sagemaker/ProcessingJobs",
}
TERMINAL = {"Completed", "Failed", "Stopped"}
POLL_SECONDS = 0.5
CHANNELS_PATH = "/opt/ml/input/data/"
TOOLKIT_ERROR_STATUS = 400  # the Hugging Face inference toolkit's answer to a handler's exception


def _naive_utc(value: datetime | None) -> datetime | None:
    """moto keeps naive UTC datetimes; the local executor reports aware ones."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class JobFailedError(Exception):
    """A job cannot run as requested; the message is its FailureReason."""


@dataclass
class Served:
    """A model an endpoint serves: its handlers, the loaded model, and whose contract (the
    inference toolkit's or TGI's) its answers follow."""

    handlers: Any
    model: Any
    tgi: bool


@dataclass
class Job:
    """One emulated job: its request as sent, and what became of it."""

    kind: str
    name: str
    request: dict[str, Any]
    fake: Any  # moto's FakeTrainingJob / FakeProcessingJob
    folder: Path
    thread: threading.Thread | None = None
    error: str | None = None  # an error of the emulation itself (a test bug), not of the job


class SageMakerContainers:
    """Runs the jobs a moto server records and serves its endpoints; see the module docstring.

    :param endpoint_url: the moto server.
    :param root: a folder for the jobs' downloads, the local executor's job folders and models.
    :param max_concurrent_jobs: the local executor's cap: jobs beyond it wait ``Pending``.
    """

    def __init__(self, endpoint_url: str, root: Path, max_concurrent_jobs: int = 2):
        self.endpoint_url = endpoint_url
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        )
        self.s3 = session.client("s3", endpoint_url=endpoint_url)
        self.logs = session.client("logs", endpoint_url=endpoint_url)
        self.sagemaker = session.client("sagemaker", endpoint_url=endpoint_url)
        from fmops.jobs.local import LocalJobBackend

        self.local = LocalJobBackend(max_concurrent_jobs, root=self.root / "local-jobs")
        self.jobs: dict[str, Job] = {}
        self._models: dict[str, Served] = {}
        self._model_lock = threading.Lock()
        self._predict_lock = threading.Lock()
        self.invocations: list[tuple[str, int]] = []  # (endpoint, HTTP status of the container)

    # -- installing ---------------------------------------------------------------------------

    def install(self, monkeypatch: pytest.MonkeyPatch) -> SageMakerContainers:
        from moto.sagemaker.responses import SageMakerResponse
        from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

        containers = self
        create_training = SageMakerResponse.create_training_job
        create_processing = SageMakerResponse.create_processing_job

        def create_training_job(response: Any) -> Any:
            request = json.loads(response.body)
            containers._refuse_duplicate(response, "training", request["TrainingJobName"])
            result = create_training(response)
            fake = response.sagemaker_backend.training_jobs[request["TrainingJobName"]]
            containers._start("training", fake, request)
            return result

        def create_processing_job(response: Any) -> Any:
            request = json.loads(response.body)
            containers._refuse_duplicate(response, "processing", request["ProcessingJobName"])
            result = create_processing(response)
            fake = response.sagemaker_backend.processing_jobs[request["ProcessingJobName"]]
            containers._start("processing", fake, request)
            return result

        def invoke_endpoint(response: Any) -> Any:
            return containers._invoke(response)

        monkeypatch.setattr(SageMakerResponse, "create_training_job", create_training_job)
        monkeypatch.setattr(SageMakerResponse, "create_processing_job", create_processing_job)
        monkeypatch.setattr(SageMakerRuntimeResponse, "invoke_endpoint", invoke_endpoint)
        return self

    def wait(self, timeout: float = 600) -> None:
        """Wait for every job to end; raise if the emulation itself failed on one."""
        deadline = time.monotonic() + timeout
        for job in list(self.jobs.values()):
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))
                if job.thread.is_alive():
                    raise TimeoutError(f"{job.kind} job {job.name} still runs after {timeout} s")
        errors = [f"{j.name}: {j.error}" for j in self.jobs.values() if j.error]
        if errors:
            raise AssertionError("the container emulation failed:\n" + "\n".join(errors))

    # -- jobs -----------------------------------------------------------------------------------

    @staticmethod
    def _refuse_duplicate(response: Any, kind: str, name: str) -> None:
        from moto.sagemaker.exceptions import ResourceInUseException

        jobs = getattr(response.sagemaker_backend, f"{kind}_jobs")
        if name in jobs:
            raise ResourceInUseException(
                f"{kind.capitalize()} job names must be unique within an AWS account and region, "
                f"and a {kind} job with this name already exists ({jobs[name].arn})"
            )

    def _start(self, kind: str, fake: Any, request: dict[str, Any]) -> None:
        name = request["TrainingJobName" if kind == "training" else "ProcessingJobName"]
        job = Job(kind, name, copy.deepcopy(request), fake, self.root / "jobs" / name)
        # Every attribute a describe reports is set here, before the thread starts: moto builds
        # its answers from the object's __dict__, which must not change size under a reader.
        now = _utcnow()
        fake.failure_reason = None
        fake.environment = request.get("Environment") or None
        if kind == "training":
            # moto replaces the request's MetricDefinitions with a canned one: put them back.
            fake.algorithm_specification = copy.deepcopy(request["AlgorithmSpecification"])
            fake.final_metric_data_list = []
            fake.model_artifacts = None
            fake.training_start_time = None
            fake.training_end_time = None
            fake.training_time_in_seconds = None
            fake.billable_time_in_seconds = None
            fake.secondary_status_transitions = [
                {"Status": "Starting", "StartTime": now, "StatusMessage": "Starting the job"}
            ]
            fake.secondary_status = "Starting"
            fake.training_job_status = "InProgress"
        else:
            fake.processing_resources = request.get("ProcessingResources")
            fake.exit_message = None
            fake.processing_start_time = None
            fake.processing_end_time = None
            fake.processing_job_status = "InProgress"
        fake.last_modified_time = now
        self.jobs[name] = job
        job.thread = threading.Thread(
            target=self._run, args=(job,), name=f"job-{name}", daemon=True
        )
        job.thread.start()

    def _run(self, job: Job) -> None:
        try:
            try:
                local_request = self._localise(job)
                description = self._execute(job, local_request)
            except JobFailedError as failure:
                self._record_failure(job, str(failure))
                return
            if description[self._status_field(job)] == "Completed":
                try:
                    self._upload_outputs(job, local_request)
                except Exception as err:  # noqa: BLE001 - becomes the job's reason, as on AWS
                    self._record_failure(job, f"ClientError: could not upload the outputs: {err}")
                    return
            elif job.kind == "training":
                self._sync_checkpoints(job, local_request)
            self._record_end(job, description)
        except Exception:  # noqa: BLE001 - a bug of the emulation: fail the job, tell the test
            job.error = traceback.format_exc()
            log.error("emulating %s job %s failed:\n%s", job.kind, job.name, job.error)
            self._record_failure(job, "InternalServerError: the container emulation failed")

    @staticmethod
    def _status_field(job: Job) -> str:
        return "TrainingJobStatus" if job.kind == "training" else "ProcessingJobStatus"

    # -- inputs ---------------------------------------------------------------------------------

    def _download(self, uri: str, folder: Path, what: str) -> Path:
        """Every object under the S3 prefix ``uri`` into ``folder``, named as File mode names
        them: relative to the prefix up to its last ``/``."""
        if not uri.startswith("s3://"):
            raise JobFailedError(f"ClientError: {what}: {uri!r} is not an s3:// URI")
        bucket, prefix = _split(uri)
        base = prefix[: prefix.rfind("/") + 1]
        folder.mkdir(parents=True, exist_ok=True)
        found = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue
                target = folder / key[len(base) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(bucket, key, str(target))
                found += 1
        if not found:
            raise JobFailedError(
                f'ClientError: Data download failed:No S3 objects found under S3 URL "{uri}" '
                f"given in {what}. Please ensure that the bucket exists in the selected region "
                "(us-east-1), that objects exist under that S3 prefix, and that the role has "
                "s3:ListBucket permissions on that bucket"
            )
        return folder

    @staticmethod
    def _emulated(what: str, data_type: str, mode: str) -> None:
        """Only what the emulation does: S3Prefix data in File mode."""
        if data_type != "S3Prefix":
            raise JobFailedError(
                f"ClientError: {what}: {data_type} data is not emulated (S3Prefix)"
            )
        if mode != "File":
            raise JobFailedError(f"ClientError: {what}: input mode {mode} is not emulated (File)")

    def _localise(self, job: Job) -> dict[str, Any]:
        """The job's request with every S3 location replaced by a local folder."""
        request = copy.deepcopy(job.request)
        if job.kind == "processing":
            for item in request.get("ProcessingInputs", []):
                source = item.get("S3Input")
                if source is None:
                    raise JobFailedError(
                        f"ClientError: input {item['InputName']}: only S3Input is emulated"
                    )
                self._emulated(
                    f"input {item['InputName']}",
                    source.get("S3DataType", "S3Prefix"),
                    source.get("S3InputMode", "File"),
                )
                folder = self._download(
                    source["S3Uri"],
                    job.folder / "inputs" / item["InputName"],
                    f"ProcessingInput {item['InputName']}",
                )
                source["S3Uri"] = f"file://{folder}"
            for item in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
                folder = job.folder / "outputs" / item["OutputName"]
                folder.mkdir(parents=True)
                item["S3Output"]["S3Uri"] = f"file://{folder}"
            return request

        channels: dict[str, Path] = {}
        for channel in request.get("InputDataConfig", []):
            name = channel["ChannelName"]
            source = channel["DataSource"].get("S3DataSource")
            if source is None:
                raise JobFailedError(f"ClientError: channel {name}: only S3DataSource is emulated")
            mode = channel.get("InputMode") or request["AlgorithmSpecification"].get(
                "TrainingInputMode", "File"
            )
            self._emulated(f"channel {name}", source.get("S3DataType", "S3Prefix"), mode)
            channels[name] = self._download(
                source["S3Uri"], job.folder / "input" / "data" / name, f"channel {name}"
            )
            source["S3Uri"] = f"file://{channels[name]}"
        hyperparameters = request.setdefault("HyperParameters", {})
        submit = hyperparameters.get("sagemaker_submit_directory")
        if submit:
            hyperparameters["sagemaker_submit_directory"] = self._sourcedir(job, submit, channels)
        output = job.folder / "output-path"
        output.mkdir(parents=True)
        request["OutputDataConfig"] = {"S3OutputPath": f"file://{output}"}
        checkpoints = request.get("CheckpointConfig", {})
        if checkpoints.get("S3Uri"):
            folder = job.folder / "checkpoints"
            with contextlib.suppress(JobFailedError):  # none yet: a first attempt
                self._download(checkpoints["S3Uri"], folder, "CheckpointConfig")
            folder.mkdir(parents=True, exist_ok=True)
            checkpoints["S3Uri"] = f"file://{folder}"
        return request

    def _sourcedir(self, job: Job, submit: str, channels: dict[str, Path]) -> str:
        """``sagemaker_submit_directory`` as the container resolves it (an archive in a channel,
        or in S3), unpacked to a local folder for the local executor."""
        if submit.startswith("s3://"):
            bucket, key = _split(submit)
            archive = job.folder / "sourcedir" / Path(key).name
            archive.parent.mkdir(parents=True)
            try:
                self.s3.download_file(bucket, key, str(archive))
            except Exception as err:  # noqa: BLE001 - botocore's error is the job's reason
                raise JobFailedError(f"ClientError: cannot download {submit}: {err}") from None
        elif submit.startswith(CHANNELS_PATH):
            channel, _, rest = submit[len(CHANNELS_PATH) :].partition("/")
            if channel not in channels:
                raise JobFailedError(
                    f"AlgorithmError: sagemaker_submit_directory {submit} names channel "
                    f"{channel!r}, which the request does not have"
                )
            archive = channels[channel] / rest
        else:
            raise JobFailedError(
                f"AlgorithmError: sagemaker_submit_directory {submit!r} is neither an s3:// URI "
                f"nor a path under {CHANNELS_PATH}"
            )
        if not archive.is_file() or not archive.name.endswith(".tar.gz"):
            raise JobFailedError(f"AlgorithmError: no sourcedir archive at {submit}")
        code = job.folder / "code"
        with tarfile.open(archive) as tar:
            tar.extractall(code, filter="data")
        return f"file://{code}"

    # -- running --------------------------------------------------------------------------------

    def _execute(self, job: Job, request: dict[str, Any]) -> dict[str, Any]:
        """Run the localised request with the local executor until it ends; its last describe."""
        from botocore.exceptions import ClientError

        name_field = "TrainingJobName" if job.kind == "training" else "ProcessingJobName"
        try:
            getattr(self.local, f"create_{job.kind}_job")(**request)
        except ClientError as err:
            error = err.response["Error"]
            raise JobFailedError(f"{error['Code']}: {error['Message']}") from None
        offset, stream = 0, None
        while True:
            description = getattr(self.local, f"describe_{job.kind}_job")(**{name_field: job.name})
            text, offset = self.local.read_log(job.kind, job.name, offset)
            if text:
                stream = self._forward_log(job, text.splitlines(), stream)
            if description[self._status_field(job)] in TERMINAL:
                text, offset = self.local.read_log(job.kind, job.name, offset)
                if text:
                    self._forward_log(job, text.splitlines(), stream)
                return description
            self._record_progress(job, description)
            time.sleep(POLL_SECONDS)

    def _forward_log(self, job: Job, lines: list[str], stream: str | None = None) -> str:
        """Put lines into the job's CloudWatch stream (made on first use); the stream's name."""
        group = LOG_GROUPS[job.kind]
        if stream is None:
            stream = f"{job.name}/algo-1-{int(time.time())}"
            with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
                self.logs.create_log_group(logGroupName=group)
            with contextlib.suppress(self.logs.exceptions.ResourceAlreadyExistsException):
                self.logs.create_log_stream(logGroupName=group, logStreamName=stream)
        stamp = int(time.time() * 1000)
        events = [{"timestamp": stamp, "message": line} for line in lines if line.strip()]
        for start in range(0, len(events), 1000):
            self.logs.put_log_events(
                logGroupName=group, logStreamName=stream, logEvents=events[start : start + 1000]
            )
        return stream

    def _record_progress(self, job: Job, description: dict[str, Any]) -> None:
        fake = job.fake
        if job.kind == "training":
            fake.training_start_time = _naive_utc(description.get("TrainingStartTime"))
            fake.secondary_status_transitions = self._transitions(description)
            fake.secondary_status = description["SecondaryStatus"]
        else:
            fake.processing_start_time = _naive_utc(description.get("ProcessingStartTime"))
        fake.last_modified_time = _utcnow()

    @staticmethod
    def _transitions(description: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {k: _naive_utc(v) if isinstance(v, datetime) else v for k, v in t.items()}
            for t in description.get("SecondaryStatusTransitions", [])
        ]

    # -- outputs --------------------------------------------------------------------------------

    def _upload_outputs(self, job: Job, request: dict[str, Any]) -> None:
        if job.kind == "processing":
            for local, sent in zip(
                request.get("ProcessingOutputConfig", {}).get("Outputs", []),
                job.request.get("ProcessingOutputConfig", {}).get("Outputs", []),
                strict=True,
            ):
                folder = Path(local["S3Output"]["S3Uri"].removeprefix("file://"))
                self._upload_folder(folder, sent["S3Output"]["S3Uri"])
            return
        output_path = job.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
        local_output = Path(request["OutputDataConfig"]["S3OutputPath"].removeprefix("file://"))
        bucket, key = _split(f"{output_path}/{job.name}/output/model.tar.gz")
        self.s3.upload_file(str(local_output / job.name / "output" / "model.tar.gz"), bucket, key)
        # SageMaker also packs /opt/ml/output/data beside the model.
        data = self.local.job_dir(job.name) / "output" / "data"
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w:gz") as tar:
            for item in sorted(data.iterdir()) if data.exists() else []:
                tar.add(item, arcname=item.name)
        self.s3.put_object(
            Bucket=bucket, Key=key.replace("model.tar.gz", "output.tar.gz"), Body=packed.getvalue()
        )
        self._sync_checkpoints(job, request)

    def _sync_checkpoints(self, job: Job, request: dict[str, Any]) -> None:
        sent = job.request.get("CheckpointConfig", {}).get("S3Uri")
        if sent:
            folder = Path(request["CheckpointConfig"]["S3Uri"].removeprefix("file://"))
            self._upload_folder(folder, sent)

    def _upload_folder(self, folder: Path, uri: str) -> None:
        bucket, prefix = _split(uri.rstrip("/") + "/")
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            self.s3.upload_file(str(path), bucket, prefix + path.relative_to(folder).as_posix())

    # -- the end --------------------------------------------------------------------------------

    def _record_end(self, job: Job, description: dict[str, Any]) -> None:
        fake = job.fake
        status = description[self._status_field(job)]
        fake.failure_reason = description.get("FailureReason")
        if job.kind == "training":
            fake.training_start_time = _naive_utc(description.get("TrainingStartTime"))
            fake.training_end_time = _naive_utc(description.get("TrainingEndTime"))
            fake.training_time_in_seconds = description.get("TrainingTimeInSeconds")
            fake.billable_time_in_seconds = description.get("BillableTimeInSeconds")
            fake.final_metric_data_list = [
                {**m, "Timestamp": _naive_utc(m["Timestamp"])}
                for m in description.get("FinalMetricDataList", [])
            ]
            fake.secondary_status_transitions = self._transitions(description)
            if status == "Completed":
                path = job.request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
                fake.model_artifacts = {
                    "S3ModelArtifacts": f"{path}/{job.name}/output/model.tar.gz"
                }
            fake.secondary_status = description["SecondaryStatus"]
            fake.training_job_status = status
        else:
            fake.exit_message = description.get("ExitMessage")
            fake.processing_start_time = _naive_utc(description.get("ProcessingStartTime"))
            fake.processing_end_time = _naive_utc(description.get("ProcessingEndTime"))
            fake.processing_job_status = status
        fake.last_modified_time = _utcnow()

    def _record_failure(self, job: Job, reason: str) -> None:
        fake, now = job.fake, _utcnow()
        fake.failure_reason = reason[:1024]
        if job.kind == "training":
            fake.training_end_time = now
            fake.secondary_status = "Failed"
            fake.training_job_status = "Failed"
        else:
            fake.processing_end_time = now
            fake.processing_job_status = "Failed"
        fake.last_modified_time = now

    # -- endpoints ------------------------------------------------------------------------------

    def _invoke(self, response: Any) -> Any:
        from botocore.exceptions import ClientError
        from moto.sagemaker.exceptions import ValidationError

        name = unquote(response.path.split("/")[2])  # /endpoints/<name>/invocations
        content_type = response.headers.get("Content-Type") or "application/octet-stream"
        accept = response.headers.get("Accept") or "application/json"
        try:
            endpoint = self.sagemaker.describe_endpoint(EndpointName=name)
        except ClientError:
            raise ValidationError(f"Endpoint {name} of account {ACCOUNT} not found.") from None
        if endpoint["EndpointStatus"] not in ("InService", "Updating"):
            raise ValidationError(
                f"Endpoint {name} is in status {endpoint['EndpointStatus']}; it must be InService"
            )
        config = self.sagemaker.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"]
        )
        variant = config["ProductionVariants"][0]
        served = self._model(variant["ModelName"])
        handlers = served.handlers
        try:
            with self._predict_lock:
                data = handlers.input_fn(response.body, content_type)
                prediction = handlers.predict_fn(data, served.model)
                body = handlers.output_fn(prediction, accept)
        except Exception as err:  # noqa: BLE001 - the container answers any handler error
            status, message = (
                self._tgi_error(err, response.body)
                if served.tgi
                else (
                    TOOLKIT_ERROR_STATUS,
                    json.dumps(
                        {
                            "code": TOOLKIT_ERROR_STATUS,
                            "type": "InternalServerException",
                            "message": str(err),
                        }
                    ),
                )
            )
            self.invocations.append((name, status))
            endpoint_group = f"/aws/sagemaker/Endpoints/{name}"
            kind = "client" if status < 500 else "server"
            # SageMaker's answer when the container answers 4xx/5xx: HTTP 424 ModelError.
            error = {
                "message": (
                    f"Received {kind} error ({status}) from primary with message "
                    f'"{message}". See https://us-east-1.console.aws.amazon.com/cloudwatch/home'
                    f"?region=us-east-1#logEventViewer:group={endpoint_group} in account "
                    f"{ACCOUNT} for more information."
                ),
                "OriginalStatusCode": status,
                "OriginalMessage": message,
                "LogStreamArn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{endpoint_group}",
            }
            headers = {
                "status": "424",  # moto takes the HTTP status from this header
                "x-amzn-ErrorType": "ModelError",
                "Content-Type": "application/json",
            }
            return 424, headers, json.dumps(error)
        self.invocations.append((name, 200))
        headers = {
            "Content-Type": accept,
            "x-Amzn-Invoked-Production-Variant": variant["VariantName"],
        }
        return 200, headers, body

    @staticmethod
    def _tgi_error(err: Exception, body: bytes) -> tuple[int, str]:
        """TGI's status and body for a request it refuses or fails: 400 when the body is not
        JSON (axum's JSON extractor), 422 for a request its validation refuses, else 500."""
        try:
            json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            kind = "json"
        else:
            kind = "validation" if type(err).__name__ == "BadRequestError" else "generation"
        return TGI_STATUS[kind], json.dumps({"error": str(err), "error_type": kind})

    def _model(self, model_name: str) -> Served:
        """The handlers and the loaded model of a SageMaker model, cached per ModelDataUrl."""
        container = self.sagemaker.describe_model(ModelName=model_name)["PrimaryContainer"]
        url = container["ModelDataUrl"]
        with self._model_lock:
            if url not in self._models:
                folder = self.root / "models" / f"m{len(self._models)}"
                folder.mkdir(parents=True, exist_ok=True)  # a failed load may have left it
                bucket, key = _split(url)
                archive = folder.with_suffix(".tar.gz")
                self.s3.download_file(bucket, key, str(archive))
                with tarfile.open(archive) as tar:
                    tar.extractall(folder, filter="data")
                environment = container.get("Environment", {})
                if TGI_REPOSITORY in container["Image"]:
                    self._models[url] = self._tgi(folder, environment)
                else:
                    program = environment.get("SAGEMAKER_PROGRAM", "inference.py")
                    handlers = self._load(folder / "code" / program, f"m_{folder.name}")
                    self._models[url] = Served(handlers, handlers.model_fn(str(folder)), tgi=False)
            return self._models[url]

    @staticmethod
    def _load(path: Path, name: str) -> Any:
        """The handlers module at ``path``, registered while it runs (its dataclasses look
        their module up in ``sys.modules``)."""
        name = f"sagemaker_container_{name}"
        spec = importlib.util.spec_from_file_location(name, path)
        handlers = importlib.util.module_from_spec(spec)
        sys.modules[name] = handlers
        try:
            spec.loader.exec_module(handlers)
        except BaseException:
            del sys.modules[name]
            raise
        return handlers

    def _tgi(self, folder: Path, environment: dict[str, str]) -> Served:
        """TGI serving the unpacked folder (``HF_MODEL_ID``): the folder must be a model folder,
        as TGI needs it; the stand-in handlers read their bounds from the container's
        environment, which is theirs while they load."""
        if environment.get("HF_MODEL_ID") != "/opt/ml/model":
            raise AssertionError(f"TGI is not pointed at /opt/ml/model: {environment}")
        names = {p.name for p in folder.iterdir() if p.is_file()}
        if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
            raise AssertionError(f"TGI would not start: no config.json and weights in {names}")
        with pytest.MonkeyPatch.context() as patch:
            for key, value in environment.items():
                patch.setenv(key, value)
            handlers = self._load(TGI_HANDLERS, f"tgi_{folder.name}")
            return Served(handlers, handlers.model_fn(str(folder)), tgi=True)
