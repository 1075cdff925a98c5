"""The few Airflow adapters that fmops' DAGs need: waiting on jobs and endpoint deployments
without holding a worker slot, and validate_data with its report link.

``AwaitJobOperator`` defers at once to ``JobTrigger``, which polls the submitted job from the
triggerer (and streams the job's new log lines into the task log) until the job ends. A job
that succeeded ends its wait in the triggerer (Airflow's ``TaskSuccessEvent``, with the outcome
as the task's return value); a failed one resumes the task on a worker, which records the
reason or starts a capacity fallback. Submission is one task per phase
(``tasks.submit_jobs``), so that every job of a run is started before the first wait begins,
within seconds of each other, under the real scheduler and under ``airflow dags test`` alike
(the latter runs mapped task instances one after another, and concludes a job that already
ended without a trigger).

``DeployEndpointOperator`` is fmops_deploy's deploy task: it starts a SageMaker deployment and
defers to ``EndpointTrigger``, which polls DescribeEndpoint from the triggerer through minutes to
hours of traffic shifting and baking, then resumes to conclude it (auto scaling, or the failure).
When SageMaker had no capacity for the instance type, it starts the next attempt on the next type
of the catalog's ranking and defers again, with the new handle (as ``AwaitJobOperator`` does for
a training job).

``ValidateDataOperator`` is validate_data as an operator, so that the task carries the
"Validation report" link (``ValidationReportLink``, which reads the address validate_data pushed
under ``fmops.airflow.links.REPORT_URL_KEY``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

# fmops' own modules are imported inside the methods: this module is imported when a DAG file
# is parsed, and parsing must stay fast (no pydantic, botocore or pandas at import time).
MAX_LOG_CHARS = 20_000
# The XCom in which a wait keeps the job it stands for when that is not the one its submit task
# returned (started after a quota refusal, or moved by a capacity fallback).
JOB_KEY = "job"
WAITING_FOR_QUOTA = "waiting_for_quota"  # fmops.pipeline.WAITING_FOR_QUOTA, without importing it
QUEUED = "queued"  # fmops.pipeline.QUEUED


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
        from fmops.pipeline import backend_for
        from fmops.storage import jsonable

        backend = backend_for(self.handle)
        kind, name = self.handle["kind"], self.handle["name"]
        offset = self.log_offset
        live = LiveMetrics(self.handle.get("mlflow"), self.log)
        while True:
            description = await asyncio.to_thread(describe, backend, kind, name)
            text, offset = await asyncio.to_thread(backend.read_log, kind, name, offset)
            log_lines(self.log, name, text)
            await live.send(text)
            status = status_of(kind, description)
            if status in TERMINAL:
                description = jsonable(description)
                ended = await self._end_here(description)
                if ended is not None:
                    yield ended
                    return
                # The handle travels in the event: a resumed task is not always given the
                # defer() kwargs (dag.test() drops them), and a capacity fallback moves it.
                yield TriggerEvent(
                    {
                        "status": status,
                        "description": description,
                        "log_offset": offset,
                        "handle": self.handle,
                    }
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def _end_here(self, description: dict[str, Any]) -> TaskSuccessEvent | None:
        """A job that succeeded ends its wait here, in the triggerer: its outcome is read and
        its MLflow run closed as ``AwaitJobOperator._outcome`` does, and the task instance ends
        ``success`` with the outcome as its return value, without a worker process to resume it
        (one task process fewer per candidate: BENCHMARKS.md, "Fan-out"). None: the task
        resumes on a worker (``execute_complete``), as it does for a failed job (its reason, a
        capacity fallback) and when MLflow did not take the run's end (the task's retries).

        ``airflow dags test`` runs the trigger inline, with no task instance, and resumes the
        task with whatever event it gets (it does not apply task-end events): there the task
        resumes as before."""
        if self.task_instance is None:
            return None
        from fmops.pipeline import JobFailedError

        try:
            outcome = await asyncio.to_thread(completed, self.handle, description)
        except JobFailedError:
            return None
        except Exception as err:  # noqa: BLE001 - whatever it is, the worker's retries handle it
            self.log.warning(
                "the job's outcome was not recorded here (%s): the task resumes on a worker to "
                "record it",
                err,
            )
            return None
        self.log.info("outcome: %s", outcome)
        return TaskSuccessEvent(xcoms={"return_value": outcome})


class LiveMetrics:
    """The job run's metrics while the job runs: the points of each poll's new log lines go to
    MLflow (``fmops.registry.job_runs.log_points``). Points MLflow did not take (it is down) are
    kept for the next poll; the await task's closing pass logs the whole log again anyway."""

    def __init__(self, where: dict[str, str] | None, logger: Any):
        self.where = where
        self.log = logger
        self.pending: list[Any] = []
        self.last_step = 0
        self.warned = False

    async def send(self, text: str) -> None:
        if not self.where:
            return
        from mlflow.exceptions import MlflowException

        from fmops.jobs.progress import metric_points
        from fmops.registry.job_runs import log_points

        points, self.last_step = metric_points(text, None, self.last_step)
        self.pending += points
        if not self.pending:
            return
        try:
            await asyncio.to_thread(
                log_points, self.where["tracking_uri"], self.where["run_id"], self.pending
            )
        except (MlflowException, OSError) as err:  # requests' errors are OSErrors
            if not self.warned:
                self.log.warning(
                    "MLflow did not take %d metric points (%s); they are sent again at the "
                    "next poll",
                    len(self.pending),
                    err,
                )
                self.warned = True
            return
        self.pending, self.warned = [], False


class QuotaTrigger(BaseTrigger):
    """Sends a request that the account's quota refused again, backing off, until a job starts;
    fires once with ``{"status": "submitted", "handle": ...}``, or with ``{"status": "refused",
    "error": ...}`` when it is refused otherwise or still refused ``give_up_seconds`` after
    ``started_at`` (epoch seconds, so that a restarted triggerer keeps the deadline).

    Each try is ``pipeline.submit`` (describe before create, every instance type the plan may
    use), so a try whose answer was lost never starts a second job. Throttling and connection
    errors back off too.

    With a ``queue`` (``{"ahead": job_queue.ahead_of(...), "cap": n, "poll": seconds}``: a job
    beyond ``training.max_concurrent_jobs`` on a target that does not cap jobs itself), the first
    try waits for a slot in the phase's order (``fmops.airflow.job_queue``), looking every
    ``poll`` seconds."""

    def __init__(
        self,
        plan: dict[str, Any],
        started_at: float,
        delay: float = 60.0,
        max_delay: float = 900.0,
        give_up_seconds: float = 24 * 3600.0,
        queue: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.plan = plan
        self.started_at = started_at
        self.delay = delay
        self.max_delay = max_delay
        self.give_up_seconds = give_up_seconds
        self.queue = queue

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "plan": self.plan,
                "started_at": self.started_at,
                "delay": self.delay,
                "max_delay": self.max_delay,
                "give_up_seconds": self.give_up_seconds,
                "queue": self.queue,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from fmops.pipeline import is_quota_refusal, is_transient, submit

        delay, name = self.delay, f"{self.plan['candidate']} {self.plan['kind']}"
        if self.queue:
            await self._slot(name)
        while True:
            try:
                handle = await asyncio.to_thread(submit, self.plan)
            except Exception as err:  # classified: back off, or the candidate's failure
                waited = time.time() - self.started_at
                if not (is_quota_refusal(err) or is_transient(err)):
                    yield TriggerEvent(
                        {"status": "refused", "error": f"{type(err).__name__}: {err}"}
                    )
                    return
                if waited + delay > self.give_up_seconds:
                    yield TriggerEvent(
                        {
                            "status": "refused",
                            "error": f"still refused after {waited / 3600:.1f} h of asking "
                            f"again: {type(err).__name__}: {err}",
                        }
                    )
                    return
                self.log.warning("%s: %s; asking again in %.0f s", name, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
                continue
            self.log.info("%s: job %s %s", name, handle["name"], handle["action"])
            yield TriggerEvent({"status": "submitted", "handle": handle})
            return

    async def _slot(self, name: str) -> None:
        """Until fewer than ``cap`` of the jobs ahead in the line are unfinished."""
        from fmops.airflow.job_queue import Slots, wait_states_of

        cap, poll = self.queue["cap"], self.queue["poll"]
        slots = Slots(self.queue["ahead"], cap, wait_states_of(self.task_instance), ttl=poll / 2)
        shown = None
        while len(holding := await asyncio.to_thread(slots.blocking)) >= cap:
            if holding != shown:
                self.log.info(
                    "%s: waiting for a slot (%d jobs at once); held by %s",
                    name,
                    cap,
                    ", ".join(holding),
                )
                shown = holding
            await asyncio.sleep(poll)
        self.log.info("%s: a slot is free (%d of %d held ahead)", name, len(holding), cap)
        self.started_at = time.time()  # the quota's deadline counts from here, not the line's


class AwaitJobOperator(BaseOperator):
    """Wait for a job submitted by an earlier task; return its small outcome dict.

    :param handle: one of the handles the submit task returned (kind, name, target, candidate,
        ...); a handle with an ``error`` is a request that was refused: the task fails with it.
    :param poll_interval: seconds between two describes in the triggerer; None: the target's
        (``Target.job_poll_seconds``: 1 s for local jobs, 30 s for SageMaker's).
    """

    ui_color = "#e8f1fb"

    def __init__(
        self, *, handle: dict[str, Any], poll_interval: float | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.handle = handle
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        """Defer to ``JobTrigger`` at once, without describing the job here: the trigger's
        first poll does, and a job that already succeeded ends its wait in the triggerer, so
        this task process neither imports MLflow nor records the outcome (at N = 256 most waits
        start after their job ended, and recording it here cost about 1.5 s of CPU per wait:
        BENCHMARKS.md, "Fan-out: where the CPU goes")."""
        if self.handle.get("error"):
            # Refused when it was submitted (a bad request, a quota with no other type left):
            # deterministic, so no retry; the other candidates go on.
            raise AirflowFailException(
                f"the {self.handle['kind']} request of {self.handle['candidate']} was refused: "
                f"{self.handle['error']}"
            )
        if self.handle.get("action") == WAITING_FOR_QUOTA:
            self.log.warning(
                "%s: the account's quota refused the %s job on every instance type it may use "
                "(%s); asking again with backoff",
                self.handle["candidate"],
                self.handle["kind"],
                self.handle.get("reason"),
            )
            self.defer(
                trigger=QuotaTrigger(self.handle["plan"], started_at=time.time()),
                method_name="execute_started",
            )
        if self.handle.get("action") == QUEUED:
            self._queue(context)
        self._push_links(context)
        if runs_inline():
            # airflow dags test: its triggers run inline with no task instance to end, and each
            # costs an in-process API client; a job that already ended is concluded here.
            from fmops.jobs.backend import TERMINAL, describe, status_of
            from fmops.pipeline import backend_for
            from fmops.storage import jsonable

            kind, name = self.handle["kind"], self.handle["name"]
            backend = backend_for(self.handle)
            description = describe(backend, kind, name)
            if status_of(kind, description) in TERMINAL:
                # the job's log, as the trigger would have streamed it
                log_lines(self.log, name, backend.read_log(kind, name, 0)[0])
                return self._outcome(jsonable(description), context)
        self.log.info(
            "%s job %s (%s, %s): waiting in the triggerer",
            self.handle["kind"],
            self.handle["name"],
            self.handle["candidate"],
            self.handle.get("action", "submitted"),
        )
        self.defer(
            trigger=JobTrigger(self.handle, self._poll_seconds()), method_name="execute_complete"
        )

    def execute_complete(
        self, context: Any, event: dict[str, Any], handle: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        handle = handle or event.get("handle")
        if handle is not None:  # the job a capacity fallback started in place of the first
            self.handle = handle
        self.log.info(
            "%s job %s ended %s", self.handle["kind"], self.handle["name"], event["status"]
        )
        return self._outcome(event["description"], context)

    def execute_started(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """The quota let the job start (or the candidate failed): open its MLflow run, as the
        submit task does for the jobs it started, and wait on it."""
        from fmops.pipeline import config_of
        from fmops.registry import job_runs

        if event["status"] != "submitted":
            raise AirflowFailException(
                f"the {self.handle['kind']} request of {self.handle['candidate']} was refused: "
                f"{event['error']}"
            )
        plan, self.handle = self.handle["plan"], event["handle"]
        resolved = context["ti"].xcom_pull(task_ids="load_config")
        if resolved:
            self.handle["mlflow"] = job_runs.open_job_run(
                config_of(resolved), context["dag"].dag_id, context["run_id"], plan, self.handle
            )
        # the job this wait stands for, for the listener when it is marked failed by hand
        context["ti"].xcom_push(key=JOB_KEY, value=self.handle)
        return self.execute(context)

    def _queue(self, context: Any) -> None:
        """A job beyond ``training.max_concurrent_jobs``: wait in the phase's order for a slot,
        then start it (``QuotaTrigger`` with a queue; ``fmops.airflow.job_queue``)."""
        from fmops.airflow.job_queue import ahead_of

        position, cap = self.handle["position"], self.handle["cap"]
        handles = context["ti"].xcom_pull(task_ids=self.handle["submitted_by"]) or []
        ahead = ahead_of(handles, position)
        self.log.info(
            "%s: %d jobs of this phase are ahead of this %s job; it starts when fewer than %d of "
            "them are unfinished (training.max_concurrent_jobs)",
            self.handle["candidate"],
            len(ahead),
            self.handle["kind"],
            cap,
        )
        queue = {"ahead": ahead, "cap": cap, "poll": self._poll_seconds()}
        self.defer(
            trigger=QuotaTrigger(self.handle["plan"], started_at=time.time(), queue=queue),
            method_name="execute_started",
        )

    def _push_links(self, context: Any) -> None:
        """This candidate's job links on its wait ("SageMaker job", "MLflow run")."""
        from fmops.airflow.links import MLFLOW_RUN, SAGEMAKER_JOB, job_console_url, push_links
        from fmops.registry.tracking import ui_url

        if context is None or "ti" not in context:
            return
        where = self.handle.get("mlflow") or {}
        run = None
        if where.get("run_id"):
            run = f"{ui_url(uri=where['tracking_uri'])}/#/experiments/{where['experiment_id']}"
            run += f"/runs/{where['run_id']}"
        push_links(context["ti"], {SAGEMAKER_JOB: job_console_url(self.handle), MLFLOW_RUN: run})

    def _poll_seconds(self) -> float:
        from fmops.targets import get_target

        if self.poll_interval is not None:
            return self.poll_interval
        return get_target(self.handle["target"]).job_poll_seconds

    def _outcome(self, description: dict[str, Any], context: Any = None) -> dict[str, Any]:
        from fmops.pipeline import JobFailedError, capacity_fallback, record_job_end
        from fmops.registry.job_runs import open_attempt

        try:
            outcome = completed(self.handle, description)
        except JobFailedError as err:
            record_job_end(self.handle, description, error=str(err))
            moved = capacity_fallback(self.handle, description)
            if moved is None:
                # The job's own failure is deterministic: a retry of this wait cannot change it.
                raise AirflowFailException(str(err)) from err
            where = self.handle.get("mlflow")
            if where and context is not None:
                moved["mlflow"] = open_attempt(
                    where, context["dag"].dag_id, context["run_id"], moved.get("plan"), moved
                )
            self.log.warning(
                "%s; started %s on %s instead (capacity fallback)",
                err,
                moved["name"],
                moved["instance"]["instance_type"],
            )
            if context is not None and "ti" in context:
                context["ti"].xcom_push(key=JOB_KEY, value=moved)
            self.defer(
                trigger=JobTrigger(moved, self._poll_seconds()),
                method_name="execute_complete",
                kwargs={"handle": moved},
            )
        self.log.info("outcome: %s", outcome)
        return outcome


def log_lines(log: Any, name: str, text: str) -> None:
    """A job's new log text into the task log, a line each, prefixed with the job's name."""
    for line in text[-MAX_LOG_CHARS:].splitlines():
        log.info("[%s] %s", name, line)


def runs_inline() -> bool:
    """Whether this task runs under ``airflow dags test`` (``dag.test()``), which runs the tasks
    and their triggers in its own process through the task SDK's in-process supervisor."""
    supervisor = sys.modules.get("airflow.sdk.execution_time.supervisor")
    task_runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    comms = getattr(task_runner, "SUPERVISOR_COMMS", None)
    return supervisor is not None and isinstance(comms, supervisor.InProcessSupervisorComms)


def completed(handle: dict[str, Any], description: dict[str, Any]) -> dict[str, Any]:
    """A Completed job's outcome, with its MLflow run closed on it; ``JobFailedError`` for a job
    that failed or was stopped (nothing recorded). Where a wait ends: on a worker
    (``AwaitJobOperator._outcome``) or in the triggerer (``JobTrigger._end_here``)."""
    from fmops.pipeline import job_outcome, record_job_end

    outcome = job_outcome(handle, description)
    record_job_end(handle, description, outcome)
    return outcome


class EndpointTrigger(BaseTrigger):
    """Polls a SageMaker endpoint under deployment until the deployment is done; fires once with
    ``{"verdict": endpoint_watch.Verdict as a dict, "description": the last DescribeEndpoint}``.

    Each answer is judged by ``endpoint_watch.DeploymentWatch``, as the blocking wait
    judges it: success only ``InService`` on ``endpoint_config_name``; ``InService`` on another
    config is a rollback (``failed``); past ``timeout_seconds`` after ``started_at`` (epoch
    seconds, so that a restarted triggerer keeps the deadline) the verdict is ``timed_out``.

    With ``awaiting="deletion"`` it waits instead for a failed endpoint to be gone (a capacity
    fallback deletes it to create it again on the next instance type): ``succeeded`` once
    DescribeEndpoint no longer finds it (``description`` None), judged by
    ``endpoint_watch.deletion_verdict``.
    """

    def __init__(
        self,
        *,
        endpoint_name: str,
        endpoint_config_name: str,
        previous_endpoint_config_name: str | None,
        started_at: float,
        timeout_seconds: float,
        poll_interval: float = 30.0,
        aws_conn_id: str = "aws_default",
        region_name: str | None = None,
        awaiting: str = "deployment",
        wait: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.wait = wait
        if awaiting not in ("deployment", "deletion"):
            raise ValueError(f"awaiting={awaiting!r}: 'deployment' or 'deletion'")
        self.awaiting = awaiting
        self.endpoint_name = endpoint_name
        self.endpoint_config_name = endpoint_config_name
        self.previous_endpoint_config_name = previous_endpoint_config_name
        self.started_at = started_at
        self.timeout_seconds = timeout_seconds
        self.poll_interval = poll_interval
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    @classmethod
    def waiting_for(cls, wait: dict[str, Any]) -> EndpointTrigger:
        """The trigger for ``fmops.deployment.flow.start_deploy``'s ``wait``."""
        handle = wait["deployment"]
        return cls(
            endpoint_name=handle["endpoint_name"],
            endpoint_config_name=handle["endpoint_config_name"],
            previous_endpoint_config_name=handle["previous_endpoint_config_name"],
            started_at=handle["started_at"],
            timeout_seconds=handle["timeout_seconds"],
            poll_interval=handle["poll_seconds"],
            aws_conn_id=wait["aws_conn_id"],
            region_name=wait["region_name"],
            awaiting="deletion" if handle["action"] == "deleting" else "deployment",
            wait=wait,
        )

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "endpoint_name": self.endpoint_name,
                "endpoint_config_name": self.endpoint_config_name,
                "previous_endpoint_config_name": self.previous_endpoint_config_name,
                "started_at": self.started_at,
                "timeout_seconds": self.timeout_seconds,
                "poll_interval": self.poll_interval,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "awaiting": self.awaiting,
                "wait": self.wait,
            },
        )

    def _watch(self) -> tuple[Any, Any, Any]:
        """The endpoint_watch module, a SageMaker client and a fresh watch; blocking (imports, and
        the connection lookup), so run in a thread."""
        from fmops.sagemaker import endpoint_watch

        client = endpoint_watch.client("sagemaker", self.aws_conn_id, self.region_name)
        watch = endpoint_watch.DeploymentWatch(
            self.endpoint_config_name,
            previous_config_name=self.previous_endpoint_config_name,
            timeout_seconds=self.timeout_seconds,
        )
        return endpoint_watch, client, watch

    async def run(self) -> AsyncIterator[TriggerEvent]:
        endpoint_watch, client, watch = await asyncio.to_thread(self._watch)

        def describe() -> dict[str, Any] | None:
            if self.awaiting == "deletion":
                return endpoint_watch.find_endpoint(client, self.endpoint_name)  # None once gone
            return client.describe_endpoint(EndpointName=self.endpoint_name)

        while True:
            description = await asyncio.to_thread(describe)
            elapsed = time.time() - self.started_at
            if self.awaiting == "deletion":
                verdict = endpoint_watch.deletion_verdict(
                    description, self.endpoint_name, elapsed, self.timeout_seconds
                )
            else:
                verdict = watch.see(description, elapsed)
            if verdict.state != "waiting":
                self.log.info("%s: %s", verdict.state, verdict.message)
                last = endpoint_watch.jsonable_description(description) if description else None
                # The wait travels in the event too: a resumed task is not always given the
                # defer() kwargs (dag.test() drops them).
                yield TriggerEvent(
                    {"verdict": verdict.as_dict(), "description": last, "wait": self.wait}
                )
                return
            self.log.info("%s; next look in %s s", verdict.message, self.poll_interval)
            await asyncio.sleep(self.poll_interval)


class DeployEndpointOperator(BaseOperator):
    """fmops_deploy's deploy task: serve the candidate version, without holding a worker slot
    while a SageMaker deployment shifts traffic and bakes.

    The local target deploys within ``execute`` (``fmops.deployment.flow.deploy``: the new variant
    is healthy or refused within ``deployment.health_timeout_seconds``), and so does a SageMaker
    endpoint that already serves the version. Otherwise ``execute`` starts the deployment
    (CreateEndpoint, or a blue/green UpdateEndpoint) and defers to ``EndpointTrigger``;
    ``execute_complete`` registers auto scaling and returns the same result as the blocking
    ``flow.deploy_to_sagemaker``. A failed, rolled back or timed out deployment fails the task
    without retries (``AirflowFailException``): retrying would repeat it. One that SageMaker had
    no capacity for is started again on the next instance type of the catalog's ranking (for a
    failed new endpoint, after waiting in the triggerer until it is deleted), and ``execute``
    defers again with the new handle, until it serves or no type is left.

    :param candidate: what resolve_candidate returned (the resolved config and the version).
    """

    template_fields = ("candidate",)
    ui_color = "#e8f1fb"

    def __init__(self, *, candidate: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.candidate = candidate

    def execute(self, context: Any) -> dict[str, Any]:
        from fmops.airflow.tasks import start_deploy

        started = start_deploy(self.candidate)
        if "result" in started:
            return started["result"]
        self._defer(started["wait"])

    def execute_complete(
        self, context: Any, event: dict[str, Any], wait: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        from fmops.airflow.tasks import finish_deploy

        wait = wait or event["wait"]
        finished = finish_deploy(wait, event)
        if "result" in finished:
            return finished["result"]
        self._defer(finished["wait"])  # the next attempt of a capacity fallback

    def _defer(self, wait: dict[str, Any]) -> None:
        handle = wait["deployment"]
        self.log.info(
            "%s endpoint %s with %s; waiting in the triggerer (at most %s s, a look every %s s)",
            handle["action"],
            handle["endpoint_name"],
            handle["endpoint_config_name"],
            handle["timeout_seconds"],
            handle["poll_seconds"],
        )
        self.defer(
            trigger=EndpointTrigger.waiting_for(wait),
            method_name="execute_complete",
            kwargs={"wait": wait},
        )


class ValidationReportLink(BaseOperatorLink):
    """'Validation report': the GX Data Docs of this run, in the MLflow UI (parent run)."""

    name = "Validation report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from fmops.airflow.links import REPORT_URL_KEY

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
