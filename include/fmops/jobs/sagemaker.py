"""The SageMaker job backend: fmops' training and processing jobs on Amazon SageMaker.

It implements :class:`fmops.jobs.backend.JobBackend` by sending the requests, which are already in
SageMaker's shape, unchanged to the SageMaker API, and answers with botocore's own responses and
``ClientError`` codes. Job logs are read from CloudWatch Logs.

Connection: the clients come from the Apache Airflow amazon provider's ``SageMakerHook`` and
``AwsLogsHook``, so credentials, role assumption and ``endpoint_url`` come from an Airflow AWS
connection (``aws_default`` unless ``aws_conn_id`` says otherwise). The region is the
``region_name`` setting, else the connection's ``region_name`` extra, else boto3's default
(``AWS_DEFAULT_REGION``). The clients are made on first use and kept by the instance, so building
a backend is cheap (a triggerer builds one per job it polls).

Retries: botocore's ``adaptive`` mode, ``max_attempts`` attempts in all (the first included), with
client-side rate limiting once SageMaker or CloudWatch throttle. botocore retries only throttling
and transient errors (5xx, connection errors); deterministic ones such as ``ValidationException``
are raised at once. The connection's own ``config_kwargs`` still apply, and ``retries`` set there
win over these.

Semantics kept equal to the local executor (see ``JobBackend``):

- an unknown job raises ``ValidationException`` with "not found" in its message. SageMaker says
  "Requested resource not found."; moto says "Could not find training job '<arn>'.", which is
  rewritten to SageMaker's words (the original message kept in brackets);
- stopping a job that has already finished (or is stopping) is a no-op: SageMaker answers
  ``ValidationException`` ("The request was rejected because the training job is in status
  Completed."), and exactly that case, confirmed by describing the job, is swallowed.

Logs: a job writes to the group ``/aws/sagemaker/TrainingJobs`` or
``/aws/sagemaker/ProcessingJobs``, one stream per instance (and per restart), named
``<job name>/algo-<n>-<epoch>``. Streams are flushed independently (the awslogs driver batches
every few seconds), so an event of one stream can become visible after later events of another:
one cursor for the whole job would lose it. The read position is therefore kept per stream, as
``(timestamp, skip)`` (the last timestamp returned, and how many events with exactly that
timestamp were returned), the scheme of the amazon provider's
``SageMakerHook.describe_training_job_with_log`` and of the SageMaker SDK. A stream is read with
``GetLogEvents(startTime=timestamp, startFromHead=True)``, its first ``skip`` events dropped, so
events sharing a millisecond are neither lost nor repeated, given that one stream's events become
visible in their order (the assumption those readers make too). The protocol's offset is one
``int``; it packs the positions, see :func:`encode_offset`. Each call returns at most
``max_log_events`` events (default 1000), oldest first across the streams, one line each, with no
prefix; what is left comes with the next call. A job whose log group or streams do not exist yet
has an empty log.

Tests (``tests/unit/test_sagemaker_backend.py``) run against a moto server on 127.0.0.1 reached
through an Airflow connection (``tests/moto_server.py``), with every request checked against
botocore's service model first; what moto lacks (StopTrainingJob, InProgress jobs, SageMaker's
refusal to stop a finished job) is played with botocore's ``Stubber``, and retries against a
throttling HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
import zlib
from typing import Any

from botocore.exceptions import ClientError

from fmops.jobs.backend import KIND_FIELDS, TERMINAL

log = logging.getLogger(__name__)

LOG_GROUPS = {
    "training": "/aws/sagemaker/TrainingJobs",
    "processing": "/aws/sagemaker/ProcessingJobs",
}
NOT_FOUND = "Requested resource not found."
# moto's answer for an unknown job; SageMaker's is NOT_FOUND.
_MOTO_NOT_FOUND = re.compile(r"^Could not find (training|processing) job ")
# Stop*Job on a job in one of these states is refused by SageMaker; for fmops it is a no-op.
_NOT_STOPPABLE = TERMINAL | {"Stopping"}
MAX_LOG_EVENTS = 1000
# GetLogEvents may answer empty pages before the end of a stream; give up after this many.
_EMPTY_PAGES = 3

# One read position per stream in the log offset: (stream key, timestamp, skip) in 96 bits.
_KEY_BITS, _TIME_BITS, _SKIP_BITS = 32, 44, 20
_RECORD_BITS = _KEY_BITS + _TIME_BITS + _SKIP_BITS


def stream_key(stream_name: str) -> int:
    """The 32-bit key of a log stream in the offset (CRC-32 of its full name)."""
    return zlib.crc32(stream_name.encode())


def encode_offset(positions: dict[int, tuple[int, int]]) -> int:
    """Pack per-stream read positions ``{stream key: (timestamp ms, skip)}`` into one int.

    Each stream takes 96 bits, ``key << 64 | timestamp << 20 | skip``, the streams ordered by key
    from the low bits up; no streams is ``0``, the offset of a log not read yet. Stored positions
    always have ``skip >= 1``, so no record is all zeros and the packing is one-to-one. The int
    grows by 96 bits per stream (29 digits for a single-instance job); Python and JSON keep it
    exact.
    """
    offset = 0
    for index, key in enumerate(sorted(positions)):
        timestamp, skip = positions[key]
        if not (
            0 <= key < 1 << _KEY_BITS
            and 0 <= timestamp < 1 << _TIME_BITS
            and 0 < skip < 1 << _SKIP_BITS
        ):
            raise ValueError(
                f"log position out of range: stream key {key}, timestamp {timestamp}, skip {skip}"
            )
        record = key << (_TIME_BITS + _SKIP_BITS) | timestamp << _SKIP_BITS | skip
        offset |= record << (index * _RECORD_BITS)
    return offset


def decode_offset(offset: int) -> dict[int, tuple[int, int]]:
    """The inverse of :func:`encode_offset`."""
    if offset < 0:
        raise ValueError(f"a SageMaker log offset is never negative, got {offset}")
    positions = {}
    while offset:
        record = offset & ((1 << _RECORD_BITS) - 1)
        offset >>= _RECORD_BITS
        key = record >> (_TIME_BITS + _SKIP_BITS)
        positions[key] = (
            (record >> _SKIP_BITS) & ((1 << _TIME_BITS) - 1),
            record & ((1 << _SKIP_BITS) - 1),
        )
    return positions


def as_sagemaker_error(err: ClientError) -> ClientError:
    """``err``, with moto's wording for an unknown job replaced by SageMaker's."""
    error = err.response.get("Error", {})
    message = error.get("Message", "")
    if error.get("Code") != "ValidationException" or not _MOTO_NOT_FOUND.match(message):
        return err
    response = {**err.response, "Error": {**error, "Message": f"{NOT_FOUND} ({message})"}}
    return ClientError(response, err.operation_name)


def _error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


class SageMakerJobBackend:
    """Runs jobs on SageMaker; see the module docstring and ``JobBackend``.

    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region; default: the connection's, else boto3's default.
    :param max_attempts: attempts per API call in all, retries of throttling and transient
        errors included (botocore's adaptive retry mode).
    :param max_log_events: the most log events one ``read_log`` call returns.
    """

    def __init__(
        self,
        aws_conn_id: str = "aws_default",
        region_name: str | None = None,
        max_attempts: int = 10,
        max_log_events: int = MAX_LOG_EVENTS,
    ):
        if max_attempts < 1 or max_log_events < 1:
            raise ValueError(
                f"max_attempts ({max_attempts}) and max_log_events ({max_log_events}) must be "
                "at least 1"
            )
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.max_attempts = max_attempts
        self.max_log_events = max_log_events
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    # -- clients ------------------------------------------------------------------------------

    @property
    def sagemaker_client(self) -> Any:
        """The boto3 SageMaker client (made on first use)."""
        return self._client("sagemaker")

    @property
    def logs_client(self) -> Any:
        """The boto3 CloudWatch Logs client (made on first use)."""
        return self._client("logs")

    def _client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._make_client(service)
            return self._clients[service]

    def _make_client(self, service: str) -> Any:
        from botocore.config import Config

        if service == "sagemaker":
            from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook as Hook
        else:
            from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook as Hook
        hook = Hook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        # Not Hook(config=...): that would replace the connection's config_kwargs, not add to them.
        retries = Config(retries={"mode": "adaptive", "total_max_attempts": self.max_attempts})
        return hook.get_client_type(region_name=hook.region_name, config=retries.merge(hook.config))

    def _call(self, method: str, **request: Any) -> dict[str, Any]:
        try:
            return getattr(self.sagemaker_client, method)(**request)
        except ClientError as err:
            normalised = as_sagemaker_error(err)
            if normalised is err:
                raise
            raise normalised from err

    # -- training jobs ------------------------------------------------------------------------

    def create_training_job(self, **request: Any) -> dict[str, Any]:
        return self._call("create_training_job", **request)

    def describe_training_job(self, *, TrainingJobName: str) -> dict[str, Any]:  # noqa: N803
        return self._call("describe_training_job", TrainingJobName=TrainingJobName)

    def stop_training_job(self, *, TrainingJobName: str) -> None:  # noqa: N803
        self._stop("training", TrainingJobName)

    def list_training_jobs(self, **request: Any) -> dict[str, Any]:
        return self._call("list_training_jobs", **request)

    # -- processing jobs ----------------------------------------------------------------------

    def create_processing_job(self, **request: Any) -> dict[str, Any]:
        return self._call("create_processing_job", **request)

    def describe_processing_job(self, *, ProcessingJobName: str) -> dict[str, Any]:  # noqa: N803
        return self._call("describe_processing_job", ProcessingJobName=ProcessingJobName)

    def stop_processing_job(self, *, ProcessingJobName: str) -> None:  # noqa: N803
        self._stop("processing", ProcessingJobName)

    def list_processing_jobs(self, **request: Any) -> dict[str, Any]:
        return self._call("list_processing_jobs", **request)

    def _stop(self, kind: str, name: str) -> None:
        name_field, status_field = KIND_FIELDS[kind]
        try:
            self._call(f"stop_{kind}_job", **{name_field: name})
        except ClientError as err:
            if _error_code(err) != "ValidationException":
                raise
            # SageMaker refuses to stop a job that is not running; find out whether that is why.
            try:
                status = self._call(f"describe_{kind}_job", **{name_field: name})[status_field]
            except ClientError:
                raise err from None
            if status not in _NOT_STOPPABLE:
                raise
            log.info("%s job %s is already %s: nothing to stop", kind, name, status)
            return
        log.info("asked %s job %s to stop", kind, name)

    # -- logs ---------------------------------------------------------------------------------

    def read_log(self, kind: str, name: str, offset: int = 0) -> tuple[str, int]:
        """New log lines of a job since ``offset``, and the offset to continue from.

        At most ``max_log_events`` lines, oldest first across the job's streams; ``("", offset)``
        while the job has no log yet. See the module docstring for the offset.
        """
        if kind not in LOG_GROUPS:
            raise ValueError(f"unknown job kind {kind!r}; one of {sorted(LOG_GROUPS)}")
        group = LOG_GROUPS[kind]
        positions = decode_offset(offset)
        try:
            streams = self._log_streams(group, name)
        except ClientError as err:
            if _error_code(err) == "ResourceNotFoundException":
                return "", offset  # no job of this kind has logged in this region yet
            raise
        candidates = []
        for stream in streams:
            timestamp, skip = positions.get(stream_key(stream), (0, 0))
            for index, event in enumerate(self._stream_events(group, stream, timestamp, skip)):
                candidates.append((event["timestamp"], stream, index, event["message"]))
        # Sorting by (timestamp, stream, order in stream) keeps each stream's chosen events a
        # prefix of what was read from it, so its new position covers exactly those.
        chosen = heapq.nsmallest(self.max_log_events, candidates)
        lines = []
        for timestamp, stream, _, message in chosen:
            key = stream_key(stream)
            last, skip = positions.get(key, (0, 0))
            positions[key] = (timestamp, skip + 1) if timestamp == last else (timestamp, 1)
            lines.append(message if message.endswith("\n") else message + "\n")
        return "".join(lines), encode_offset(positions)

    def _log_streams(self, group: str, name: str) -> list[str]:
        streams, token = [], None
        while True:
            page = self.logs_client.describe_log_streams(
                logGroupName=group,
                logStreamNamePrefix=f"{name}/",
                **({"nextToken": token} if token else {}),
            )
            streams += [s["logStreamName"] for s in page.get("logStreams", [])]
            token = page.get("nextToken")
            if not token:
                return streams

    def _stream_events(
        self, group: str, stream: str, start_time: int, skip: int
    ) -> list[dict[str, Any]]:
        """Up to ``max_log_events`` events of a stream from a position, in the stream's order."""
        events: list[dict[str, Any]] = []
        token, empty_pages = None, 0
        while len(events) < self.max_log_events:
            limit = min(10_000, self.max_log_events - len(events) + skip)
            try:
                page = self.logs_client.get_log_events(
                    logGroupName=group,
                    logStreamName=stream,
                    startTime=start_time,
                    startFromHead=True,
                    limit=limit,
                    **({"nextToken": token} if token else {}),
                )
            except ClientError as err:
                if _error_code(err) == "ResourceNotFoundException":
                    return events  # listed a moment ago, gone now (retention): nothing to read
                raise
            page_events = page.get("events", [])
            dropped = min(skip, len(page_events))
            skip -= dropped
            events += page_events[dropped:]
            empty_pages = 0 if page_events else empty_pages + 1
            if (
                0 < len(page_events) < limit  # the end for now (or a 1 MB page: next call)
                or page.get("nextForwardToken") in (None, token)  # the end of the stream
                or empty_pages >= _EMPTY_PAGES
            ):
                break
            token = page["nextForwardToken"]
        return events[: self.max_log_events]
