"""A moto server on 127.0.0.1 for the tests that talk to AWS APIs over HTTP, and an environment
that points boto3 and Airflow's ``aws_default`` connection at it.

Import the fixtures into a test module (``from moto_server import aws_env_fixture,
moto_server_fixture``) and ask for them as ``aws_env`` / ``moto_server`` (``aws_env_module``,
from ``aws_env_module_fixture``, is the same environment for a whole module); ``tests/`` is on
``sys.path`` because the top-level conftest lives there. The server is shared by the session, so
tests use names of their own rather than expecting an empty account.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

REGION = "us-east-1"


def aws_connection(endpoint_url: str, **extra: object) -> str:
    """An Airflow AWS connection, as ``AIRFLOW_CONN_<ID>`` JSON, to the API at ``endpoint_url``."""
    return json.dumps(
        {
            "conn_type": "aws",
            "extra": {"endpoint_url": endpoint_url, "region_name": REGION, **extra},
        }
    )


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture() -> Iterator[str]:
    """The endpoint URL of a moto server on a free port of 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _point_at(moto_server: str, monkeypatch: pytest.MonkeyPatch, folder: Path) -> str:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(folder / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "aws-credentials-absent"))
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(moto_server))
    return moto_server


@pytest.fixture(name="aws_env")
def aws_env_fixture(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake credentials, the region, and ``aws_default`` at the moto server, for one test.

    No profile or config file of the machine is read, so nothing can reach real AWS.
    """
    return _point_at(moto_server, monkeypatch, tmp_path)


@pytest.fixture(scope="module", name="aws_env_module")
def aws_env_module_fixture(
    moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``aws_env`` for all the tests of a module (for module-scoped fixtures such as a DAG run
    that several tests look at)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _point_at(moto_server, monkeypatch, tmp_path_factory.mktemp("aws"))
