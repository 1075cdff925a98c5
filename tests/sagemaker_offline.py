"""What the offline SageMaker tests share: no network, and JumpStart specs served from moto."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Fake credentials, a region, and no network: a connection attempt fails the test."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
            raise AssertionError(f"a test tried to reach {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)


def publish_specs(s3: Any, bucket: str, specs: list[dict[str, Any]]) -> None:
    """JumpStart model specs and their manifest in ``bucket``, laid out as JumpStart's own."""
    manifest = []
    for item in specs:
        key = f"community_models/{item['model_id']}/specs_v{item['version']}.json"
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(item))
        manifest.append(
            {
                "model_id": item["model_id"],
                "version": item["version"],
                "min_version": item["min_sdk_version"],
                "spec_key": key,
            }
        )
    s3.put_object(Bucket=bucket, Key="models_manifest.json", Body=json.dumps(manifest))
