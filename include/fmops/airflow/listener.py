"""fmops' Airflow listener: a DAG run that ends leaves no MLflow run RUNNING and no job running,
and a job task that a person marks failed stops its job.

Each DAG's last task (``close_run``, trigger rule all done) ends the DAG run's MLflow run with
its outcome. A DAG run can end without it: marked failed or success by hand (the UI's "Mark
as", ``PATCH .../dagRuns/{run_id}``), or timed out (``dagrun_timeout``); its unfinished tasks
are then failed or skipped, ``close_run`` included, and a wait that was deferred is dropped
while its job goes on. Airflow calls this listener when a DAG run ends, in the api-server for a
run marked by hand and in the scheduler otherwise. It stops the jobs the DAG run started that
still run, then ends ``KILLED`` every run of the DAG run still ``RUNNING``, its own and its
jobs', with Airflow's reason (``fmops.pipeline.end_dag_run``). Runs that ``close_run`` or a
job's wait ended are left as they are.

Where the runs are comes from the XCom ``mlflow_run`` of the task that opened them
(``fmops_finetune.load_config``, ``fmops_deploy.resolve_candidate``; a DAG run that got that far
has one), where the jobs run from ``load_config``'s config. The work runs on a thread of its
own: a listener runs inside the scheduler's loop and the api-server's request, and MLflow's
client retries an unreachable server for about two minutes. What that thread cannot do (MLflow
down longer, the process stopping first) is logged with the DAG run's ids, and those runs stay
RUNNING.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from airflow.listeners import hookimpl

from fmops.airflow.links import MLFLOW_RUN_KEY
from fmops.airflow.operators import JOB_KEY

log = logging.getLogger(__name__)

# The DAGs whose runs have MLflow runs, and the task whose XCom says where they are.
OPENED_BY = {"fmops_finetune": "load_config", "fmops_deploy": "resolve_candidate"}


# fmops_finetune's tasks that stand for jobs, and the task whose XCom (the phase's list of job
# handles) names them: a wait's mapped instance stands for the handle at its map index, the
# submit task (not mapped) for all of its phase's.
JOB_OF = {
    "submit_training": "submit_training",
    "await_training": "submit_training",
    "submit_evaluation": "submit_evaluation",
    "await_evaluation": "submit_evaluation",
}


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _start(dag_run, "failed", msg)


# A DAG run set failed (or success) by hand fails its unfinished task instances first and calls
# on_task_instance_failed for each, then on_dag_run_failed, in the same request. Those task
# instances are the DAG run's to handle (one pass, its reason): a task instance's hook waits this
# long for its DAG run's hook before it acts alone.
DAG_RUN_GRACE_SECONDS = 5.0
_ending: dict[tuple[str, str], threading.Event] = {}  # DAG runs whose task hooks are waiting
_ending_lock = threading.Lock()


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    """A person set a task instance failed (the UI's "Mark as", ``PATCH .../taskInstances/...``):
    the api-server calls this with no previous state. A job task's job is stopped and its run
    ended KILLED, as a DAG run marked failed does for all of them; the DAG run goes on with its
    other tasks and ends failed. A task that fails by itself (previous state RUNNING) is left to
    its own handling: a failed wait has ended its job's run already. When the whole DAG run was
    set failed, its own hook does it (:data:`DAG_RUN_GRACE_SECONDS`)."""
    try:
        if previous_state is not None or task_instance.dag_id != "fmops_finetune":
            return
        submit = JOB_OF.get(task_instance.task_id)
        if submit is None:
            return
        dag_id, run_id = task_instance.dag_id, task_instance.run_id
        with _ending_lock:
            ending = _ending.setdefault((dag_id, run_id), threading.Event())
        label = f"{task_instance.task_id}[{task_instance.map_index}]"
        thread = threading.Thread(
            target=_end_job,
            args=(dag_id, run_id, submit, task_instance.map_index, task_instance.task_id),
            kwargs={"reason": f"{label} was set failed by hand: {error}", "ending": ending},
            name=f"fmops-end-job-{run_id}-{label}",
            daemon=True,
        )
        thread.start()
    except Exception:
        log.exception("fmops: could not start stopping the job of a task marked failed")


def _end_job(
    dag_id: str,
    run_id: str,
    submit: str,
    map_index: int,
    task_id: str | None = None,
    reason: str = "",
    ending: threading.Event | None = None,
) -> None:
    """Stop the job(s) the task instance at ``map_index`` stands for (``_job_names`` of
    ``submit``'s handles) and end their runs, on this thread;
    nothing when ``ending`` is set within the grace period (the DAG run ends: its hook does it)."""
    from fmops.pipeline import config_of, end_dag_run

    if ending is not None:
        taken = ending.wait(DAG_RUN_GRACE_SECONDS)
        with _ending_lock:
            if _ending.get((dag_id, run_id)) is ending:
                del _ending[(dag_id, run_id)]
        if taken:
            return
    try:
        names = _job_names(_xcom(dag_id, run_id, submit, "return_value"), map_index)
        if task_id and task_id != submit:
            # a wait keeps the job it stands for when that is another (quota, capacity fallback)
            moved = _xcom(dag_id, run_id, task_id, JOB_KEY, map_index)
            if isinstance(moved, dict) and moved.get("name"):
                names.add(moved["name"])
        where = _xcom(dag_id, run_id, OPENED_BY[dag_id], MLFLOW_RUN_KEY)
        resolved = _xcom(dag_id, run_id, "load_config", "return_value")
        if not (names and where and resolved):  # no job was started for it
            return
        ended = end_dag_run(where, config_of(resolved), dag_id, run_id, reason, jobs=names)
    except Exception:
        log.exception("fmops: could not stop the job of %s %s %s", dag_id, run_id, submit)
        return
    log.info("fmops: %s %s: %s (%s)", dag_id, run_id, ended, reason)


def _job_names(handles: Any, map_index: int) -> set[str]:
    """The jobs of a submit task's handles that the task instance at ``map_index`` stands for:
    the one at that index for a wait, all of them for the submit task itself (-1)."""
    if not isinstance(handles, list):
        return set()
    chosen = handles if map_index < 0 else handles[map_index : map_index + 1]
    return {h["name"] for h in chosen if isinstance(h, dict) and h.get("name")}


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _start(dag_run, "success", msg)


def _start(dag_run: Any, state: str, msg: str) -> threading.Thread | None:
    """Hand the DAG run over to a thread of its own (None: not one of fmops' DAGs). Nothing
    here touches the database: the caller's session (the scheduler's, the api-server
    request's) is the thread's scoped session, and closing it would detach the caller's
    objects. Never raises: a listener's error must not disturb Airflow."""
    try:
        dag_id, run_id = dag_run.dag_id, dag_run.run_id
        if dag_id not in OPENED_BY:
            return None
        with _ending_lock:
            waiting = _ending.get((dag_id, run_id))
        if waiting is not None:  # its task instances' hooks leave their jobs to this one
            waiting.set()
        reason = f"the DAG run ended {state} before close_run ended this run: {msg}"
        thread = threading.Thread(
            target=_end,
            args=(dag_id, run_id, reason),
            name=f"fmops-end-runs-{run_id}",
            daemon=True,
        )
        thread.start()
        return thread
    except Exception:
        log.exception("fmops: could not start ending a DAG run's MLflow runs")
        return None


def _end(dag_id: str, run_id: str, reason: str) -> None:
    """Stop the DAG run's jobs still running and end its runs still RUNNING, on this thread."""
    from fmops.pipeline import config_of, end_dag_run

    try:
        where = _xcom(dag_id, run_id, OPENED_BY[dag_id], MLFLOW_RUN_KEY)
        if not where:  # it ended before its MLflow run was opened (or plan only)
            return
        # fmops_finetune's config says where its jobs run (fmops_deploy starts none)
        resolved = _xcom(dag_id, run_id, "load_config", "return_value")
        config = config_of(resolved) if resolved else None
        ended = end_dag_run(where, config, dag_id, run_id, reason)
    except Exception:
        log.exception("fmops: could not end the MLflow runs of %s %s", dag_id, run_id)
        return
    if any(ended.values()):
        log.info("fmops: %s %s: %s (%s)", dag_id, run_id, ended, reason)


def _xcom(dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
    """The XCom ``key`` of the DAG run's task ``task_id``; None when it has none. Read from the
    metadata database (listeners run in Airflow's own processes, which have it) in a session of
    the calling thread's own (``_end``'s thread: never the scheduler's)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=run_id,
            key=key,
            task_ids=task_id,
            dag_ids=dag_id,
            map_indexes=map_index,
            limit=1,
        )
        row = session.scalars(query).first()
        return XComModel.deserialize_value(row) if row is not None else None
