"""fmops' Airflow plugin: the MLflow UI in Airflow's navigation, and the task instances' links.

- "MLflow" in the navigation: the MLflow UI (runs, registry, review). The address comes from
  ``FMOPS_MLFLOW_UI`` (the local stack sets it to http://127.0.0.1:5000; docker-compose sets
  the address that the browser reaches).
- Operator links (declared by the operators, registered here): "Validation report" on
  validate_data and "Evaluation report" on select.
- Global links, shown on any task instance that has something to link
  (``fmops.airflow.links``): "MLflow run", "MLflow model version" (register and fmops_deploy's
  tasks), "SageMaker job" (the submit and await tasks of jobs on the sagemaker target) and
  "SageMaker endpoint" (fmops_deploy on the sagemaker target).
- A listener (``fmops.airflow.listener``): a DAG run that ends without its ``close_run`` (marked
  failed or success by hand, timed out) gets its MLflow runs still running ended ``KILLED``.
"""

from __future__ import annotations

import os

from airflow.plugins_manager import AirflowPlugin

from fmops.airflow import listener
from fmops.airflow.evaluation import EvaluationReportLink
from fmops.airflow.links import GLOBAL_LINKS
from fmops.airflow.operators import ValidationReportLink


class FmopsPlugin(AirflowPlugin):
    name = "fmops"
    operator_extra_links = [ValidationReportLink(), EvaluationReportLink()]
    global_operator_extra_links = GLOBAL_LINKS
    listeners = [listener]
    external_views = [
        {
            "name": "MLflow",
            "href": os.environ.get("FMOPS_MLFLOW_UI", "http://127.0.0.1:5000"),
            "destination": "nav",
            "url_route": "fmops-mlflow",
        }
    ]
