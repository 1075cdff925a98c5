"""The smoke test's requests to a SageMaker endpoint answer as the local endpoint's do."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from fmops.sagemaker.runtime import SageMakerEndpoint


@pytest.fixture
def runtime(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("sagemaker-runtime", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber


def test_an_answer_is_status_200_and_the_parsed_body(runtime):
    client, stubber = runtime
    answer = json.dumps({"predictions": [{"label": "card_arrival", "score": 0.9}]}).encode()
    stubber.add_response(
        "invoke_endpoint",
        {"Body": StreamingBody(io.BytesIO(answer), len(answer)), "ContentType": "application/json"},
        {
            "EndpointName": "banking77",
            "Body": b'{"inputs": ["where is my card"]}',
            "ContentType": "application/json",
            "Accept": "application/json",
        },
    )
    endpoint = SageMakerEndpoint("banking77", client=client)
    status, body = endpoint.invoke({"inputs": ["where is my card"]})
    assert status == 200
    assert body["predictions"][0]["label"] == "card_arrival"


def test_the_handlers_own_error_keeps_its_status_and_message(runtime):
    client, stubber = runtime
    message = json.dumps({"error": "the body is not valid JSON"})
    stubber.add_client_error(
        "invoke_endpoint",
        service_error_code="ModelError",
        service_message="Received client error (400) from primary",
        http_status_code=424,
        modeled_fields={"OriginalStatusCode": 400, "OriginalMessage": message},
    )
    status, body = SageMakerEndpoint("banking77", client=client).invoke(b"{not json")
    assert status == 400
    assert body == {"error": "the body is not valid JSON"}


def test_other_errors_are_raised(runtime):
    from botocore.exceptions import ClientError

    client, stubber = runtime
    stubber.add_client_error(
        "invoke_endpoint", service_error_code="ValidationError", http_status_code=400
    )
    with pytest.raises(ClientError):
        SageMakerEndpoint("missing", client=client).invoke({"inputs": ["x"]})
