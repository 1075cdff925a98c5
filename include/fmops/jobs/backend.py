"""The job backend contract, the backend registry, and idempotent submission.

A backend offers the SageMaker client's own call surface for the calls fmops makes, with the same
method names, request and response field names, statuses and ``botocore`` ``ClientError`` codes:

- ``create_training_job(**request)`` / ``create_processing_job(**request)``: start the job and
  return at once (never block until it finishes); a name already used raises ``ClientError``
  with code ``ResourceInUse``;
- ``describe_training_job(TrainingJobName=...)`` / ``describe_processing_job(...)``: the job's
  current state; an unknown name raises ``ClientError`` ``ValidationException`` whose message
  contains "not found" (as SageMaker does);
- ``stop_training_job(...)`` / ``stop_processing_job(...)``: ask the job to stop and return at
  once; stopping a finished job is a no-op;
- ``read_log(kind, name, offset)``: new log text of the job since ``offset`` (``0``: from the
  start), and the offset to continue from. The int means what the backend needs: a byte offset in
  the job's log file locally, read positions in the job's CloudWatch streams on SageMaker.

Backends are looked up by target name and imported only when used.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

from botocore.exceptions import ClientError

from fmops.jobs.naming import attempt_name

log = logging.getLogger(__name__)

BACKENDS = {
    "local": "fmops.jobs.local:LocalJobBackend",
    "sagemaker": "fmops.jobs.sagemaker:SageMakerJobBackend",
}
UNAVAILABLE: dict[str, str] = {}
TERMINAL = {"Completed", "Failed", "Stopped"}
# Attempts of one job in one run (``base``, ``base-a2``, ...): ensure_job's default.
MAX_ATTEMPTS = 5
ACTIVE = {"InProgress", "Stopping"}
KIND_FIELDS = {
    "training": ("TrainingJobName", "TrainingJobStatus"),
    "processing": ("ProcessingJobName", "ProcessingJobStatus"),
}


class JobBackend(Protocol):
    def create_training_job(self, **request: Any) -> dict[str, Any]: ...
    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]: ...  # noqa: N803
    def stop_training_job(self, *, TrainingJobName: str) -> None: ...  # noqa: N803
    def create_processing_job(self, **request: Any) -> dict[str, Any]: ...
    def describe_processing_job(self, *, ProcessingJobName: str) -> dict[str, Any]: ...  # noqa: N803
    def stop_processing_job(self, *, ProcessingJobName: str) -> None: ...  # noqa: N803
    def read_log(self, kind: str, name: str, offset: int = 0) -> tuple[str, int]: ...


def get_backend(target: str, **settings: Any) -> JobBackend:
    if target in UNAVAILABLE:
        raise ValueError(UNAVAILABLE[target])
    if target not in BACKENDS:
        raise ValueError(f"unknown job backend {target!r}; available: {sorted(BACKENDS)}")
    module_name, _, class_name = BACKENDS[target].partition(":")
    return getattr(importlib.import_module(module_name), class_name)(**settings)


def is_not_found(err: ClientError) -> bool:
    error = err.response.get("Error", {})
    return error.get("Code") in ("ValidationException", "ResourceNotFound") and (
        "not found" in error.get("Message", "").lower()
    )


def describe(backend: JobBackend, kind: str, name: str) -> dict[str, Any]:
    name_field, _ = KIND_FIELDS[kind]
    return getattr(backend, f"describe_{kind}_job")(**{name_field: name})


def status_of(kind: str, description: dict[str, Any]) -> str:
    return description[KIND_FIELDS[kind][1]]


def ensure_job(
    backend: JobBackend,
    kind: str,
    base_name: str,
    request: dict[str, Any],
    max_attempts: int = MAX_ATTEMPTS,
) -> tuple[str, str]:
    """Start the job unless this run already has it: describe before create.

    Returns ``(job_name, action)``; action is ``created``, ``reattached`` (still running) or
    ``reused`` (already Completed). A Failed or Stopped attempt is kept for the record and a new
    attempt gets the suffix ``-aN``.
    """
    name_field, _ = KIND_FIELDS[kind]
    for attempt in range(1, max_attempts + 1):
        name = attempt_name(base_name, attempt)
        try:
            status = status_of(kind, describe(backend, kind, name))
        except ClientError as err:
            if not is_not_found(err):
                raise
            getattr(backend, f"create_{kind}_job")(**{**request, name_field: name})
            log.info("%s job %s created", kind, name)
            return name, "created"
        if status in ACTIVE:
            log.info("%s job %s is %s: reattaching instead of starting another", kind, name, status)
            return name, "reattached"
        if status == "Completed":
            log.info("%s job %s already Completed in this run: reusing it", kind, name)
            return name, "reused"
        log.warning("%s job %s ended %s: starting a new attempt", kind, name, status)
    raise RuntimeError(
        f"{kind} job {base_name} failed {max_attempts} attempts in this run; read the jobs' "
        "FailureReason and logs, fix the cause, then trigger a new run"
    )
