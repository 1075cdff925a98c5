"""The few Airflow adapters that fmops' DAGs need: waiting on jobs without holding a worker slot.

``AwaitJobOperator`` describes a submitted job; if it is still running it defers to
``JobTrigger``, which polls the job from the triggerer (and streams the job's new log lines into
the task log) until the job ends. Submission is a separate task, so that every job of a run is
started before the first wait begins, under the real scheduler and under ``airflow dags test``
alike (the latter runs mapped task instances one after another).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

# fmops' own modules are imported inside the methods: this module is imported when a DAG file
# is parsed, and parsing must stay fast (no pydantic, botocore or pandas at import time).
MAX_LOG_CHARS = 20_000


class JobTrigger(BaseTrigger):
    """Polls one job until it ends; fires once with its final description."""

    def __init__(self, handle: dict[str, Any], poll_interval: float = 5.0, log_offset: int = 0):
        super().__init__()
        self.handle = handle
        self.poll_interval = poll_interval
        self.log_offset = log_offset

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "handle": self.handle,
                "poll_interval": self.poll_interval,
                "log_offset": self.log_offset,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from fmops.jobs.backend import TERMINAL, describe, status_of
        from fmops.pipeline import backend_for, jsonable

        backend = backend_for(self.handle)
        kind, name = self.handle["kind"], self.handle["name"]
        offset = self.log_offset
        while True:
            description = await asyncio.to_thread(describe, backend, kind, name)
            text, offset = await asyncio.to_thread(backend.read_log, kind, name, offset)
            for line in text[-MAX_LOG_CHARS:].splitlines():
                self.log.info("[%s] %s", name, line)
            status = status_of(kind, description)
            if status in TERMINAL:
                yield TriggerEvent(
                    {"status": status, "description": jsonable(description), "log_offset": offset}
                )
                return
            await asyncio.sleep(self.poll_interval)


class AwaitJobOperator(BaseOperator):
    """Wait for a job submitted by an earlier task; return its small outcome dict.

    :param handle: what the submit task returned (kind, name, target, candidate, ...).
    :param poll_interval: seconds between two describes in the triggerer.
    """

    ui_color = "#e8f1fb"

    def __init__(self, *, handle: dict[str, Any], poll_interval: float = 5.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.handle = handle
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        from fmops.jobs.backend import TERMINAL, describe, status_of
        from fmops.pipeline import backend_for, jsonable

        backend = backend_for(self.handle)
        description = describe(backend, self.handle["kind"], self.handle["name"])
        status = status_of(self.handle["kind"], description)
        self.log.info(
            "%s job %s (%s, %s): %s",
            self.handle["kind"],
            self.handle["name"],
            self.handle["candidate"],
            self.handle.get("action", "submitted"),
            status,
        )
        if status in TERMINAL:
            return self._outcome(jsonable(description))
        self.defer(
            trigger=JobTrigger(self.handle, self.poll_interval), method_name="execute_complete"
        )

    def execute_complete(
        self, context: Any, event: dict[str, Any], handle: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        if handle is not None:  # the job a capacity fallback started in place of the first
            self.handle = handle
        self.log.info(
            "%s job %s ended %s", self.handle["kind"], self.handle["name"], event["status"]
        )
        return self._outcome(event["description"])

    def _outcome(self, description: dict[str, Any]) -> dict[str, Any]:
        from fmops.pipeline import JobFailedError, capacity_fallback, job_outcome

        try:
            outcome = job_outcome(self.handle, description)
        except JobFailedError as err:
            moved = capacity_fallback(self.handle, description)
            if moved is None:
                # The job's own failure is deterministic: a retry of this wait cannot change it.
                raise AirflowFailException(str(err)) from err
            self.log.warning(
                "%s; started %s on %s instead (capacity fallback)",
                err,
                moved["name"],
                moved["instance"]["instance_type"],
            )
            self.defer(
                trigger=JobTrigger(moved, self.poll_interval),
                method_name="execute_complete",
                kwargs={"handle": moved},
            )
        self.log.info("outcome: %s", outcome)
        return outcome


class ValidationReportLink(BaseOperatorLink):
    """'Validation report': the GX Data Docs of this run, in the MLflow UI (parent run)."""

    name = "Validation report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from fmops.airflow.tasks import REPORT_URL_KEY

        return XCom.get_value(key=REPORT_URL_KEY, ti_key=ti_key) or ""


class ValidateDataOperator(BaseOperator):
    """validate_data as an operator, so that the task carries the 'Validation report' link."""

    template_fields = ("resolved",)
    operator_extra_links = (ValidationReportLink(),)
    ui_color = "#eef7ee"

    def __init__(self, *, resolved: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.resolved = resolved

    def execute(self, context: Any) -> dict[str, Any]:
        from fmops.airflow.tasks import validate_data

        return validate_data(self.resolved)
