"""fmops' Airflow plugin: a link to the MLflow UI (runs, registry, review) in Airflow's navigation.

The MLflow address comes from ``FMOPS_MLFLOW_UI`` (the local stack sets it to
http://127.0.0.1:5000; docker-compose sets the address that the browser reaches).
"""

from __future__ import annotations

import os

from airflow.plugins_manager import AirflowPlugin

from fmops.airflow.evaluation import EvaluationReportLink
from fmops.airflow.operators import ValidationReportLink


class FmopsPlugin(AirflowPlugin):
    name = "fmops"
    operator_extra_links = [ValidationReportLink(), EvaluationReportLink()]
    external_views = [
        {
            "name": "MLflow",
            "href": os.environ.get("FMOPS_MLFLOW_UI", "http://127.0.0.1:5000"),
            "destination": "nav",
            "url_route": "fmops-mlflow",
        }
    ]
