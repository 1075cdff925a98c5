"""Requests to a SageMaker endpoint, answered as the local endpoint answers them.

``SageMakerEndpoint.invoke(payload)`` returns ``(HTTP status, parsed body)`` like
``fmops.deployment.local.LocalEndpoint.invoke``, so that ``fmops_deploy``'s smoke test is the same
on both targets. A handler's own error (the container answered 4xx/5xx) comes back from
InvokeEndpoint as a ``ModelError`` carrying the container's status and message; other errors
(throttling, the endpoint not InService) stay botocore errors.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError


class SageMakerEndpoint:
    def __init__(
        self,
        name: str,
        aws_conn_id: str = "aws_default",
        region_name: str | None = None,
        client: Any = None,
    ):
        self.name = name
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self._client = client

    @property
    def client(self) -> Any:
        """The ``sagemaker-runtime`` client of the Airflow connection (made on first use)."""
        if self._client is None:
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            # Not SageMakerHook.get_client_type("sagemaker-runtime"): its first argument is the
            # region, and the hook's client type stays "sagemaker" (no invoke_endpoint there).
            hook = AwsBaseHook(
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                client_type="sagemaker-runtime",
            )
            self._client = hook.get_client_type(region_name=hook.region_name)
        return self._client

    def invoke(self, payload: Any) -> tuple[int, Any]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            answer = self.client.invoke_endpoint(
                EndpointName=self.name,
                Body=body,
                ContentType="application/json",
                Accept="application/json",
            )
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") != "ModelError":
                raise
            status = int(err.response.get("OriginalStatusCode", 500))
            message = err.response.get("OriginalMessage") or err.response["Error"].get("Message")
            return status, _parsed(message or "")
        return 200, _parsed(answer["Body"].read())


def _parsed(text: bytes | str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return text.decode(errors="replace") if isinstance(text, bytes) else text
