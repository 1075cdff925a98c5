"""``await_deployment``: the blocking wait of a SageMaker endpoint deployment that raises on a
failure, over ``fmops.sagemaker.endpoint_watch.watch_deployment``. Only the tests use it: the
deploy task waits in the triggerer and ``fmops.sagemaker.endpoint_deploy.deploy`` calls
``watch_deployment`` itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fmops.sagemaker.endpoint_watch import watch_deployment


def await_deployment(
    describe: Callable[[], dict[str, Any]],
    expected_config_name: str,
    *,
    previous_config_name: str | None = None,
    timeout_seconds: float,
    poll_seconds: float = 30,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    explain: Callable[[], str] | None = None,
) -> dict[str, Any]:
    """Poll ``describe`` until the deployment succeeds (returns the description) or fails
    (``DeploymentFailedError``, with ``explain()`` appended: the alarms in ALARM, say)."""
    verdict, description = watch_deployment(
        describe,
        expected_config_name,
        previous_config_name=previous_config_name,
        timeout_seconds=timeout_seconds,
        poll_seconds=poll_seconds,
        sleep=sleep,
        clock=clock,
    )
    if verdict.state == "succeeded":
        return description
    extra = explain() if explain and verdict.state == "failed" else ""
    raise verdict.error(description.get("EndpointName", ""), extra)
