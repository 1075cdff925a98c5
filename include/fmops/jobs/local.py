"""The local job executor: runs SageMaker-shaped training and processing jobs on this machine.

It takes the same ``CreateTrainingJob`` / ``CreateProcessingJob`` requests that the SageMaker
backend sends (each checked against botocore's SageMaker service model first), emulates the
container contract under ``.fmops/jobs/<job-name>/`` and answers ``describe`` with SageMaker's
field names and statuses. Each job runs under a detached supervisor process
(:mod:`fmops.jobs.runner`), so jobs outlive the Airflow task that started them and a later task,
or a retry, finds them by name.

Container contract emulated here (the paths a job script sees):

- training: ``SM_MODEL_DIR``, ``SM_OUTPUT_DATA_DIR``, ``SM_CHANNEL_<NAME>`` / ``SM_CHANNELS``,
  ``SM_HPS`` / ``SM_HP_<NAME>``, ``SM_INPUT_CONFIG_DIR`` with ``hyperparameters.json``,
  ``resourceconfig.json`` and ``inputdataconfig.json``; the entry point is the
  ``sagemaker_program`` hyperparameter inside ``sagemaker_submit_directory``; the model folder is
  packed to ``<S3OutputPath>/<job>/output/model.tar.gz``;
- processing: every ``/opt/ml/...`` path in the request maps to the job folder; inputs are linked
  in before the job starts and outputs copied to their ``S3Uri`` when it ends (``EndOfJob``).

Only ``file://`` URIs (and plain paths) are reachable locally. Settings that only make sense on
AWS (spot, warm pools, VPC, KMS, several instances) are accepted and reported as ignored.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fmops import processes
from fmops.jobs import runner
from fmops.jobs.naming import JOB_NAME_RE
from fmops.jobs.runner import STOP_REQUEST, now, read_json, write_json
from fmops.jobs.specs import JOB_ENV, validate_request
from fmops.paths import state_dir

log = logging.getLogger(__name__)

# What a local job inherits from the environment that starts it. A SageMaker container gets
# none of it, and the environment of an Airflow worker or a shell holds credentials
# (AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN, HF_TOKEN, ...) that the job would not need and
# its plan.json would keep on disk: so an allow-list of what runs Python and its numeric
# libraries (threads, GPUs, locale, temp folder). A job's own variables go in the request's
# Environment, as on SageMaker.
INHERITED_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "VIRTUAL_ENV",
        "PYTHONPATH",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "XDG_CACHE_HOME",
    }
)
INHERITED_PREFIXES = ("LC_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_", "NVIDIA_", "NCCL_", "PYTORCH_")


def inherited_env(environ: Any = None) -> dict[str, str]:
    """The variables of ``environ`` (the process's) that a local job inherits."""
    environ = os.environ if environ is None else environ
    return {
        k: v for k, v in environ.items() if k in INHERITED_ENV or k.startswith(INHERITED_PREFIXES)
    }


ACCOUNT = "000000000000"
REGION = "local"
NOT_FOUND = "Requested resource not found."
STOP_GRACE_SECONDS = 20.0
# Settings that the local machine cannot honour; each is named in a warning, never dropped silently.
IGNORED_TRAINING_FIELDS = {
    "EnableManagedSpotTraining": "managed spot training",
    "VpcConfig": "VPC placement",
    "EnableInterContainerTrafficEncryption": "inter-container encryption",
    "RetryStrategy": "SageMaker's automatic retries",
}

# Optional in the API, but SageMaker cannot run a job without them (it answers with a
# ValidationException), and neither can the local executor.
TRAINING_NEEDS = ("AlgorithmSpecification", "ResourceConfig", "StoppingCondition")
PROCESSING_NEEDS = ("ProcessingResources",)


def _require(request: dict[str, Any], operation: str, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if not request.get(f)]
    if missing:
        raise _client_error(
            "ValidationException",
            f"{operation} request lacks {missing}; give them (see the SageMaker API reference)",
            operation,
        )


def _client_error(code: str, message: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" in uri:
        raise _client_error(
            "ValidationException",
            f"the local executor reads only file:// URIs and paths, not {uri!r}; stage the data "
            "locally or use the sagemaker target",
            "CreateJob",
        )
    return Path(uri)


def _link(source: Path, target: Path) -> None:
    """Put a data source at a container path: a folder is linked, a single file goes inside."""
    if not source.exists():
        raise _client_error("ValidationException", f"input {source} does not exist", "CreateJob")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        target.symlink_to(source, target_is_directory=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
        (target / source.name).symlink_to(source)


class LocalJobBackend:
    """Runs jobs as detached local processes; see the module docstring and ``JobBackend``."""

    def __init__(
        self,
        max_concurrent_jobs: int = 2,
        root: Path | None = None,
        stop_grace_seconds: float = STOP_GRACE_SECONDS,
    ):
        self.root = Path(root) if root else state_dir() / "jobs"
        self.max_concurrent_jobs = max_concurrent_jobs
        self.stop_grace_seconds = stop_grace_seconds

    # -- shared machinery ---------------------------------------------------------------------

    def _job_dir(self, name: str) -> Path:
        return self.root / name

    def _check_new_name(self, kind: str, name: str, operation: str) -> Path:
        if not JOB_NAME_RE.match(name or ""):
            raise _client_error(
                "ValidationException",
                f"job name {name!r} must match {JOB_NAME_RE.pattern} (at most 63 characters)",
                operation,
            )
        job_dir = self._job_dir(name)
        if (job_dir / "record.json").exists():
            raise _client_error(
                "ResourceInUse",
                f"{kind.capitalize()} job names must be unique within an AWS account and region, "
                f"and a {kind} job with this name already exists ({self._arn(kind, name)})",
                operation,
            )
        # Private to the user, as SageMaker's job records are to the account: the request, the
        # plan, the logs and the model.
        job_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return job_dir

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}-job/{name.lower()}"

    def _threads_per_job(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.max_concurrent_jobs)

    def _launch(
        self, kind: str, job_dir: Path, request: dict[str, Any], plan: dict[str, Any]
    ) -> None:
        plan.update(
            slots_dir=str(self.root / ".slots"),
            max_concurrent=self.max_concurrent_jobs,
            stop_grace_seconds=self.stop_grace_seconds,
            # the order jobs beyond the cap start in (runner.acquire_slot)
            submitted_ns=time.time_ns(),
        )
        write_json(job_dir / "request.json", request)
        write_json(job_dir / "plan.json", plan)
        write_json(
            job_dir / "record.json",
            {
                "kind": kind,
                "status": "InProgress",
                "secondary_status": "Starting",
                "transitions": [],
                "creation_time": now(),
                "last_modified": now(),
            },
        )
        # the supervisor, like the job, holds no credential
        env = inherited_env()
        identity = processes.spawn_detached(
            # by its path, without site: the supervisor is standard library only (its docstring)
            [sys.executable, "-S", runner.__file__, str(job_dir)],
            job_dir / "supervisor.log",
            env=env,
            cwd=job_dir,
        )
        # Its own file: the supervisor rewrites record.json from its first moment on.
        write_json(job_dir / "supervisor.json", identity)

    def _record(self, name: str, operation: str) -> dict[str, Any]:
        path = self._job_dir(name) / "record.json"
        if not path.exists():
            raise _client_error("ValidationException", NOT_FOUND, operation)
        record = read_json(path)
        supervisor = self._supervisor(name)
        if record["status"] in ("InProgress", "Stopping") and not self._supervisor_alive(
            supervisor
        ):
            # The supervisor died without recording an end (machine reboot, kill -9): say so.
            data = read_json(path)
            data.update(
                status="Failed",
                secondary_status="Failed",
                end_time=now(),
                failure_reason="InternalServerError: the local job supervisor "
                f"(pid {supervisor.get('pid')}) exited without recording a result",
            )
            write_json(path, data)
            record = data
        return record

    def _supervisor(self, name: str) -> dict[str, Any]:
        path = self._job_dir(name) / "supervisor.json"
        return read_json(path) if path.exists() else {}

    @staticmethod
    def _supervisor_alive(supervisor: dict[str, Any]) -> bool:
        return not supervisor or processes.alive(supervisor)  # no file yet: being launched

    def _stop(self, kind: str, name: str, operation: str) -> None:
        record = self._record(name, operation)
        if record["status"] != "InProgress":
            return
        # The request file is read by the supervisor from its first moment on; the signal only
        # wakes it sooner, and is sent once it has installed its handler (its first transition).
        (self._job_dir(name) / STOP_REQUEST).touch()
        if record.get("transitions"):
            with contextlib.suppress(ProcessLookupError, KeyError):
                os.kill(self._supervisor(name)["pid"], signal.SIGTERM)
        log.info("asked %s job %s to stop", kind, name)

    def _common(self, record: dict[str, Any]) -> dict[str, Any]:
        def stamp(key: str) -> datetime | None:
            value = record.get(key)
            return datetime.fromisoformat(value) if value else None

        return {
            k: v
            for k, v in {
                "CreationTime": stamp("creation_time"),
                "LastModifiedTime": stamp("last_modified"),
                "FailureReason": record.get("failure_reason"),
            }.items()
            if v is not None
        }

    def read_log(self, kind: str, name: str, offset: int = 0) -> tuple[str, int]:
        path = self._job_dir(name) / "job.log"
        if not path.exists():
            return "", offset
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        # Hand back whole lines only; a partial last line is read again next time.
        cut = data.rfind(b"\n") + 1
        return data[:cut].decode(errors="replace"), offset + cut

    def _summaries(self, kind: str) -> list[dict[str, Any]]:
        """SageMaker's List*Jobs summaries of every local job of ``kind``, newest first."""
        prefix = "Training" if kind == "training" else "Processing"
        rows = []
        for path in sorted(self.root.glob("*/record.json")) if self.root.exists() else []:
            record = read_json(path)
            if record.get("kind") != kind:
                continue
            name = path.parent.name
            record = self._record(name, f"List{prefix}Jobs")
            summary = {
                f"{prefix}JobName": name,
                f"{prefix}JobArn": self._arn(kind, name),
                f"{prefix}JobStatus": record["status"],
                **self._common(record),
            }
            if kind == "training":
                summary["SecondaryStatus"] = record["secondary_status"]
            if record.get("end_time"):
                summary[f"{prefix}EndTime"] = datetime.fromisoformat(record["end_time"])
            rows.append(summary)
        return sorted(rows, key=lambda r: r["CreationTime"], reverse=True)

    def list_training_jobs(self, **_: Any) -> dict[str, Any]:
        return {"TrainingJobSummaries": self._summaries("training")}

    def list_processing_jobs(self, **_: Any) -> dict[str, Any]:
        return {"ProcessingJobSummaries": self._summaries("processing")}

    def job_dir(self, name: str) -> Path:
        return self._job_dir(name)

    # -- training jobs ------------------------------------------------------------------------

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        operation = "CreateTrainingJob"
        validate_request(operation, request)
        name = request["TrainingJobName"]
        self._warn_ignored(name, request)
        _require(request, operation, TRAINING_NEEDS)
        job_dir = self._check_new_name("training", name, operation)
        try:
            plan = self._training_plan(job_dir, request)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)  # nothing half-made stays behind
            raise
        self._launch("training", job_dir, request, plan)
        return {"TrainingJobArn": self._arn("training", name)}

    def _warn_ignored(self, name: str, request: dict[str, Any]) -> None:
        for field, what in IGNORED_TRAINING_FIELDS.items():
            if request.get(field):
                log.warning("job %s: %s (%s) is ignored by the local executor", name, what, field)
        resources = request.get("ResourceConfig", {})
        if resources.get("InstanceCount", 1) > 1:
            log.warning(
                "job %s: InstanceCount=%s runs as one local process",
                name,
                resources["InstanceCount"],
            )
        if resources.get("KeepAlivePeriodInSeconds"):
            log.warning("job %s: warm pools (KeepAlivePeriodInSeconds) are ignored locally", name)
        if request.get("EnableNetworkIsolation"):
            log.info(
                "job %s: network isolation is not enforced by the local executor; the job "
                "scripts read only their input channels",
                name,
            )

    def _training_plan(self, job_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
        hps = dict(request.get("HyperParameters", {}))
        # As SageMaker's training toolkit does: the sagemaker_* hyperparameters are the
        # framework's (entry point, code, region, distribution), not the script's.
        framework = {k: hps.pop(k) for k in list(hps) if k.startswith("sagemaker_")}
        program = framework.pop("sagemaker_program", None)
        source = framework.pop("sagemaker_submit_directory", None)
        if not program or not source:
            raise _client_error(
                "ValidationException",
                "HyperParameters need sagemaker_program and sagemaker_submit_directory "
                "(the entry script and the folder that holds it)",
                "CreateTrainingJob",
            )
        code_dir = job_dir / "code"
        # A copy, so that editing the scripts never changes a job that is already running.
        shutil.copytree(_local_path(source), code_dir)
        if not (code_dir / program).exists():
            raise _client_error(
                "ValidationException",
                f"entry point {program} not found in {source}",
                "CreateTrainingJob",
            )
        input_dir, config_dir = job_dir / "input", job_dir / "input" / "config"
        config_dir.mkdir(parents=True)
        channels = []
        env = inherited_env()
        for channel in request.get("InputDataConfig", []):
            name = channel["ChannelName"]
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            target = input_dir / "data" / name
            _link(_local_path(uri), target)
            channels.append(name)
            env[f"SM_CHANNEL_{name.upper()}"] = str(target)
        model_dir, output_dir = job_dir / "model", job_dir / "output"
        (output_dir / "data").mkdir(parents=True)
        model_dir.mkdir()
        checkpoint_config = request.get("CheckpointConfig", {})
        checkpoints = checkpoint_config.get("LocalPath", "/opt/ml/checkpoints")
        checkpoint_dir = job_dir / checkpoints.removeprefix("/opt/ml/").lstrip("/")
        if checkpoint_config.get("S3Uri"):
            # As SageMaker syncs LocalPath with S3Uri, a later attempt sees the earlier one's
            # checkpoints and resumes: here the two are the same folder.
            shared = _local_path(checkpoint_config["S3Uri"])
            shared.mkdir(parents=True, exist_ok=True)
            checkpoint_dir.parent.mkdir(parents=True, exist_ok=True)
            checkpoint_dir.symlink_to(shared, target_is_directory=True)
        else:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
        resource = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"}
        write_json(config_dir / "hyperparameters.json", request.get("HyperParameters", {}))
        write_json(config_dir / "resourceconfig.json", resource)
        write_json(
            config_dir / "inputdataconfig.json",
            {
                c["ChannelName"]: {"TrainingInputMode": "File"}
                for c in request.get("InputDataConfig", [])
            },
        )
        env.update(request.get("Environment", {}))
        env.update(
            {
                "SM_MODEL_DIR": str(model_dir),
                "SM_OUTPUT_DIR": str(output_dir),
                "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
                "SM_INPUT_DIR": str(input_dir),
                "SM_INPUT_CONFIG_DIR": str(config_dir),
                "SM_CHECKPOINT_DIR": str(checkpoint_dir),
                "SM_CHANNELS": json.dumps(sorted(channels)),
                "SM_HPS": json.dumps(hps),
                "SM_FRAMEWORK_PARAMS": json.dumps(framework),
                "SM_USER_ENTRY_POINT": program,
                "SM_CURRENT_HOST": "algo-1",
                "SM_HOSTS": json.dumps(["algo-1"]),
                "SM_NUM_GPUS": "0",
                "SM_NUM_CPUS": str(self._threads_per_job()),
                "OMP_NUM_THREADS": str(self._threads_per_job()),
                "PYTHONUNBUFFERED": "1",
                **JOB_ENV,
            }
        )
        env.update({f"SM_HP_{k.upper()}": str(v) for k, v in hps.items()})
        output_path = _local_path(request["OutputDataConfig"]["S3OutputPath"])
        return {
            "command": [sys.executable, str(code_dir / program)],
            "cwd": str(code_dir),
            "env": env,
            "running_status": "Training",
            "max_runtime_seconds": request["StoppingCondition"]["MaxRuntimeInSeconds"],
            "metric_definitions": request["AlgorithmSpecification"].get("MetricDefinitions", []),
            "failure_file": str(output_dir / "failure"),
            "pack_model": {
                "source": str(model_dir),
                "target": str(output_path / request["TrainingJobName"] / "output" / "model.tar.gz"),
            },
        }

    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
        record = self._record(TrainingJobName, "DescribeTrainingJob")
        request = read_json(self._job_dir(TrainingJobName) / "request.json")
        plan = read_json(self._job_dir(TrainingJobName) / "plan.json")
        runtime = record.get("runtime_seconds")
        description = {
            "TrainingJobName": TrainingJobName,
            "TrainingJobArn": self._arn("training", TrainingJobName),
            "TrainingJobStatus": record["status"],
            "SecondaryStatus": record["secondary_status"],
            "SecondaryStatusTransitions": [
                {
                    **t,
                    "StartTime": datetime.fromisoformat(t["StartTime"]),
                    **({"EndTime": datetime.fromisoformat(t["EndTime"])} if "EndTime" in t else {}),
                }
                for t in record.get("transitions", [])
            ],
            "HyperParameters": request.get("HyperParameters", {}),
            "AlgorithmSpecification": request["AlgorithmSpecification"],
            "RoleArn": request["RoleArn"],
            "InputDataConfig": request.get("InputDataConfig", []),
            "OutputDataConfig": request["OutputDataConfig"],
            "ResourceConfig": request["ResourceConfig"],
            "StoppingCondition": request["StoppingCondition"],
            "FinalMetricDataList": [
                {
                    "MetricName": k,
                    "Value": v["value"],
                    "Timestamp": datetime.fromisoformat(v["timestamp"]),
                }
                for k, v in record.get("metrics", {}).items()
            ],
            **self._common(record),
        }
        if record.get("start_time"):
            description["TrainingStartTime"] = datetime.fromisoformat(record["start_time"])
        if record.get("end_time"):
            description["TrainingEndTime"] = datetime.fromisoformat(record["end_time"])
        if runtime is not None:
            description["TrainingTimeInSeconds"] = runtime
            description["BillableTimeInSeconds"] = runtime
        if record["status"] == "Completed":
            description["ModelArtifacts"] = {
                "S3ModelArtifacts": "file://" + plan["pack_model"]["target"]
            }
        return description

    def stop_training_job(self, *, TrainingJobName: str) -> None:  # noqa: N803
        self._stop("training", TrainingJobName, "StopTrainingJob")

    # -- processing jobs ----------------------------------------------------------------------

    def create_processing_job(self, **request: Any) -> dict[str, Any]:
        operation = "CreateProcessingJob"
        validate_request(operation, request)
        name = request["ProcessingJobName"]
        _require(request, operation, PROCESSING_NEEDS)
        job_dir = self._check_new_name("processing", name, operation)
        try:
            plan = self._processing_plan(job_dir, request)
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)  # nothing half-made stays behind
            raise
        self._launch("processing", job_dir, request, plan)
        return {"ProcessingJobArn": self._arn("processing", name)}

    def _processing_plan(self, job_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
        def container(path: str) -> Path:
            if not path.startswith("/opt/ml/"):
                raise _client_error(
                    "ValidationException",
                    f"LocalPath {path!r} must be under /opt/ml/",
                    "CreateProcessingJob",
                )
            return job_dir / path.removeprefix("/opt/ml/")

        def rewrite(arg: str) -> str:
            return str(container(arg)) if arg.startswith("/opt/ml/") else arg

        for item in request.get("ProcessingInputs", []):
            s3 = item["S3Input"]
            _link(_local_path(s3["S3Uri"]), container(s3["LocalPath"]))
        outputs = []
        for item in request.get("ProcessingOutputConfig", {}).get("Outputs", []):
            s3 = item["S3Output"]
            source = container(s3["LocalPath"])
            source.mkdir(parents=True, exist_ok=True)
            outputs.append({"source": str(source), "target": str(_local_path(s3["S3Uri"]))})
        app = request["AppSpecification"]
        entry = [rewrite(a) for a in app.get("ContainerEntrypoint", [])]
        if entry and entry[0] in ("python", "python3"):
            entry[0] = sys.executable  # the image's interpreter is the project's Python here
        env = inherited_env()
        env.update(request.get("Environment", {}))
        threads = str(self._threads_per_job())
        env.update(OMP_NUM_THREADS=threads, PYTHONUNBUFFERED="1", **JOB_ENV)
        (job_dir / "output").mkdir(exist_ok=True)
        return {
            "command": entry + [rewrite(a) for a in app.get("ContainerArguments", [])],
            "cwd": str(job_dir),
            "env": env,
            "running_status": "Training",
            "max_runtime_seconds": request.get("StoppingCondition", {}).get(
                "MaxRuntimeInSeconds", 24 * 3600
            ),
            "metric_definitions": [],
            "failure_file": str(job_dir / "output" / "failure"),
            "outputs": outputs,
        }

    def describe_processing_job(self, *, ProcessingJobName: str) -> dict[str, Any]:  # noqa: N803
        record = self._record(ProcessingJobName, "DescribeProcessingJob")
        request = read_json(self._job_dir(ProcessingJobName) / "request.json")
        description = {
            "ProcessingJobName": ProcessingJobName,
            "ProcessingJobArn": self._arn("processing", ProcessingJobName),
            "ProcessingJobStatus": record["status"],
            "ProcessingInputs": request.get("ProcessingInputs", []),
            "ProcessingOutputConfig": request.get("ProcessingOutputConfig", {}),
            "ProcessingResources": request["ProcessingResources"],
            "StoppingCondition": request.get("StoppingCondition", {}),
            "AppSpecification": request["AppSpecification"],
            "RoleArn": request["RoleArn"],
            **self._common(record),
        }
        if record.get("exit_message"):
            description["ExitMessage"] = record["exit_message"]
        if record.get("start_time"):
            description["ProcessingStartTime"] = datetime.fromisoformat(record["start_time"])
        if record.get("end_time"):
            description["ProcessingEndTime"] = datetime.fromisoformat(record["end_time"])
        return description

    def stop_processing_job(self, *, ProcessingJobName: str) -> None:  # noqa: N803
        self._stop("processing", ProcessingJobName, "StopProcessingJob")
