"""The ``select`` task as an operator, so that it carries the 'Evaluation report' link to the
report it logged to MLflow."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, BaseOperatorLink


class EvaluationReportLink(BaseOperatorLink):
    """'Evaluation report': the leaderboard, the gate's decision and the plots, in MLflow."""

    name = "Evaluation report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        from fmops.airflow.links import EVALUATION_REPORT_KEY

        return XCom.get_value(key=EVALUATION_REPORT_KEY, ti_key=ti_key) or ""


class SelectOperator(BaseOperator):
    """select: the gate over every evaluation (``fmops.evaluation.selection``)."""

    template_fields = ("resolved", "evaluations")
    operator_extra_links = (EvaluationReportLink(),)
    ui_color = "#eef0fb"

    def __init__(self, *, resolved: Any, evaluations: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.resolved = resolved
        self.evaluations = evaluations

    def execute(self, context: Any) -> dict[str, Any]:
        from fmops.airflow.tasks import select

        return select(self.resolved, list(self.evaluations))
