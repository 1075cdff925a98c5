"""fmops' Airflow listener: a DAG run that ends leaves no MLflow run RUNNING and no job running.

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

log = logging.getLogger(__name__)

# The DAGs whose runs have MLflow runs, and the task whose XCom says where they are.
OPENED_BY = {"fmops_finetune": "load_config", "fmops_deploy": "resolve_candidate"}


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _start(dag_run, "failed", msg)


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


def _xcom(dag_id: str, run_id: str, task_id: str, key: str) -> Any:
    """The XCom ``key`` of the DAG run's task ``task_id``; None when it has none. Read from the
    metadata database (listeners run in Airflow's own processes, which have it) in a session of
    the calling thread's own (``_end``'s thread: never the scheduler's)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = XComModel.get_many(
            run_id=run_id, key=key, task_ids=task_id, dag_ids=dag_id, map_indexes=-1, limit=1
        )
        row = session.scalars(query).first()
        return XComModel.deserialize_value(row) if row is not None else None
