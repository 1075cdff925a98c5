"""sagemaker-mlflow's request-header provider is kept to SageMaker ARN tracking URIs: against an
http:// server it failed on every request and MLflow logged a warning each time (task logs on
the team stack were full of them)."""

from __future__ import annotations

import logging

import mlflow
import pytest
from mlflow.tracking.request_header.registry import resolve_request_headers

from fmops.registry import tracking

ARN = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/team"


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    logger = logging.getLogger("mlflow.tracking.request_header.registry")
    handler = Records()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        mlflow.set_tracking_uri(None)


def test_an_http_server_gets_no_sagemaker_header_and_no_warning(warnings_logged):
    mlflow.set_tracking_uri("http://127.0.0.1:5000")
    tracking.client_for("http://127.0.0.1:5000")
    headers = resolve_request_headers()
    assert not any(name.startswith("x-mlflow-sm-") for name in headers), headers
    assert warnings_logged == []


def test_a_sagemaker_arn_still_gets_its_header(warnings_logged):
    tracking.client_for("http://127.0.0.1:5000")
    mlflow.set_tracking_uri(ARN)
    assert resolve_request_headers()["x-mlflow-sm-tracking-server-arn"] == ARN
    assert warnings_logged == []
