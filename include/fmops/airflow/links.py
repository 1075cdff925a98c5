"""Operator extra links: from a task instance to what it recorded elsewhere.

The buttons: "MLflow run", "MLflow model version", "SageMaker job" and "SageMaker endpoint"
(the sagemaker target's console pages), beside the report links that validate_data and select
declare themselves ("Validation report", "Evaluation report", in ``operators.py`` and
``evaluation.py``).

Airflow 3 computes links in two places, which is why there are two kinds:

- links an operator declares (``operator_extra_links``) are computed by the task runner when the
  task ends and stored in XCom; the API server only reads them back;
- the plugin's global links (``GLOBAL_LINKS``, registered by ``plugins/fmops_plugin.py``) are
  computed by the API server, for every task instance the UI shows. They read the XCom
  ``LINKS_KEY`` (a ``{link name: url}`` dict) that fmops' tasks push as soon as they know the
  addresses, so a link is there while a task still waits (a deferred ``await_approval``), and
  for a job's wait its job's console page and MLflow run. A task with nothing to link returns
  no URL, and the UI shows no button.

The API server reads XComs from the metadata database (``read_xcom``): in that process there is
no task runner to ask.

The XCom keys that links read are defined here, and the tasks that push them import them from
here: ``LINKS_KEY``, and the report addresses that validate_data and select push
(``REPORT_URL_KEY``, ``EVALUATION_REPORT_KEY``), which their report links read and "MLflow run"
falls back on.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

LINKS_KEY = "fmops_links"
# The report addresses that validate_data and select push: their operator links read them, and
# "MLflow run" falls back to the run that holds the report.
REPORT_URL_KEY = "validation_report_url"
EVALUATION_REPORT_KEY = "evaluation_report_url"
# Where a DAG run's MLflow run is (tracking URI, experiment and run ids, its page): pushed by the
# task that opens it, read by fmops' listener (``fmops.airflow.listener``).
MLFLOW_RUN_KEY = "mlflow_run"
MLFLOW_RUN, MODEL_VERSION = "MLflow run", "MLflow model version"
SAGEMAKER_JOB, SAGEMAKER_ENDPOINT = "SageMaker job", "SageMaker endpoint"


def job_console_url(handle: Any) -> str | None:
    """The console page of a job handle (what submit_training/submit_evaluation return), where
    its target has one; None for anything else."""
    from fmops.targets import TARGETS, get_target

    if not isinstance(handle, dict) or handle.get("target") not in TARGETS:
        return None
    return get_target(handle["target"]).job_console_url(handle)


def read_xcom(
    ti_key: Any, key: str, task_id: str | None = None, map_index: int | None = None
) -> Any:
    """An XCom of the task instance ``ti_key`` (or of ``task_id`` in the same DAG run, at the
    same map index or ``map_index``), read from the metadata database, as the API server can.
    None when there is none."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(
        run_id=ti_key.run_id,
        key=key,
        task_ids=task_id or ti_key.task_id,
        dag_ids=ti_key.dag_id,
        map_indexes=ti_key.map_index if map_index is None else map_index,
        limit=1,
    )
    with create_session() as session:
        row = session.scalars(query).first()
        return None if row is None else XComModel.deserialize_value(row)


class FmopsLink(BaseOperatorLink):
    """A global link whose URL a task pushed in its ``LINKS_KEY`` XCom, under the link's name."""

    name = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        links = read_xcom(ti_key, LINKS_KEY)
        if isinstance(links, dict) and links.get(self.name):
            return str(links[self.name])
        return self.fallback(operator, ti_key) or ""

    def fallback(self, operator: Any, ti_key: Any) -> str | None:
        return None


class MlflowRunLink(FmopsLink):
    """'MLflow run': the run the task recorded into (register: the DAG run's parent run;
    fmops_deploy's tasks: the run the version was logged from). validate_data and select link
    the parent run that holds their report."""

    name = MLFLOW_RUN

    def fallback(self, operator: Any, ti_key: Any) -> str | None:
        for key in (REPORT_URL_KEY, EVALUATION_REPORT_KEY):
            report = read_xcom(ti_key, key)
            if isinstance(report, str) and "/artifacts/" in report:
                return report.split("/artifacts/", 1)[0]
        return None


class ModelVersionLink(FmopsLink):
    """'MLflow model version': the version page (card, tags, review) in the MLflow UI."""

    name = MODEL_VERSION


class SageMakerJobLink(FmopsLink):
    """'SageMaker job': the console page of the task's training or processing job. An await_*
    task pushes it when it starts; for one that has not (its request was refused, or it ran
    before this link existed) it comes from the handle its submit task returned at the wait's
    map index (the submit task returns a phase's handles as one list)."""

    name = SAGEMAKER_JOB

    def fallback(self, operator: Any, ti_key: Any) -> str | None:
        index = ti_key.map_index
        for upstream in sorted(getattr(operator, "upstream_task_ids", ()) or ()):
            handles = read_xcom(ti_key, "return_value", task_id=upstream, map_index=-1)
            if isinstance(handles, list) and 0 <= index < len(handles):
                url = job_console_url(handles[index])
                if url:
                    return url
        return None


class SageMakerEndpointLink(FmopsLink):
    """'SageMaker endpoint': the console page of the endpoint fmops_deploy serves on."""

    name = SAGEMAKER_ENDPOINT


GLOBAL_LINKS = [MlflowRunLink(), ModelVersionLink(), SageMakerJobLink(), SageMakerEndpointLink()]


def push_links(ti: Any, links: dict[str, str | None]) -> dict[str, str]:
    """Push the task's link addresses (those known; None and "" are left out) for the global
    links to read. Returns what it pushed."""
    known = {name: url for name, url in links.items() if url}
    if known:
        ti.xcom_push(key=LINKS_KEY, value=known)
    return known
