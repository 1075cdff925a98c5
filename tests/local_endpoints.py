"""A test helper for the local endpoint, built on its public API (``fmops.deployment``).

Import it into a test module (``from local_endpoints import deploy``), as ``tiny_models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fmops.deployment.local import LocalEndpoint
from fmops.deployment.rollout import rollout
from fmops.deployment.settings import AlarmSettings, TrafficSettings


def deploy(
    endpoint: LocalEndpoint,
    model_dir: Path,
    handlers: Path,
    version: str,
    port: int,
    health_timeout: float = 120,
) -> dict[str, Any]:
    """Serve ``version`` on ``endpoint``: it is created, or updated blue/green all at once
    (``rollout`` with ALL_AT_ONCE, no bake, no termination wait). Returns
    ``endpoint.status()``; raises ``EndpointError`` (``RolloutFailedError``) if it was
    refused."""
    rollout(
        endpoint,
        version,
        model_dir,
        handlers,
        port=port,
        traffic=TrafficSettings(),
        alarms=AlarmSettings(),
        health_timeout=health_timeout,
    )
    return endpoint.status()
