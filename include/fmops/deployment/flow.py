"""The stages of ``fmops_deploy`` as plain functions (no Airflow imports).

resolve_candidate -> await_approval -> deploy -> smoke_test -> promote.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from fmops.config import PipelineConfig
from fmops.paths import state_dir

log = logging.getLogger(__name__)


class ApprovalRejectedError(RuntimeError):
    """The reviewer rejected the version: nothing is deployed."""


class SmokeTestError(RuntimeError):
    """The endpoint answered the smoke traffic wrongly."""


def resolve_candidate(config: PipelineConfig, version: str | None) -> dict[str, Any]:
    """The version to deploy: the one asked for, else the current ``challenger``."""
    from fmops import registry

    name = config.registry.model_name
    if not version:
        version = registry.latest_alias(config, registry.CHALLENGER)
        if version is None:
            raise LookupError(
                f"{name} has no version with alias {registry.CHALLENGER}; run fmops_finetune "
                "first or trigger with a version"
            )
    mlflow_version = registry.client(config).get_model_version(name, str(version))
    log.info("candidate: %s version %s (%s)", name, version, registry.version_url(name, version))
    return {
        "model_name": name,
        "version": str(version),
        "candidate": mlflow_version.tags.get("fmops.candidate"),
        "url": registry.version_url(name, version),
    }


def check_approval(config: PipelineConfig, version: str) -> str:
    """``approved`` / ``pending``; a rejection raises. ``approval: auto`` approves on the spot."""
    from fmops import registry

    decision = registry.approval(config, version)
    if decision == "pending" and config.deployment.approval == "auto":
        registry.set_approval(
            config,
            version,
            "approved",
            reviewer="fmops (approval: auto)",
            comment="approved automatically by the pipeline config",
        )
        decision = "approved"
    if decision == "rejected":
        raise ApprovalRejectedError(
            f"{config.registry.model_name} version {version} was rejected in review; "
            "nothing is deployed"
        )
    log.info("%s version %s: approval %s", config.registry.model_name, version, decision)
    return decision


def deploy(config: PipelineConfig, version: str) -> dict[str, Any]:
    """Serve the registered version (downloaded from the registry) on the local endpoint."""
    from fmops import registry
    from fmops.deployment.local import LocalEndpoint

    if config.target != "local":
        raise NotImplementedError(
            "deploying to a SageMaker endpoint is not part of this version yet; use target: local"
        )
    target = state_dir() / "models" / config.registry.model_name / str(version)
    model_dir = registry.download_model(config, version, target)
    handlers = target / "code" / "inference.py"  # the handlers registered with the model
    endpoint = LocalEndpoint(config.deployment.endpoint_name)
    status = endpoint.deploy(
        model_dir,
        handlers,
        str(version),
        config.deployment.port,
        config.deployment.health_timeout_seconds,
    )
    return {
        "endpoint": endpoint.name,
        "url": endpoint.url(),
        "version": str(version),
        "status": status,
    }


def serving_endpoint(config: PipelineConfig) -> Any:
    """The endpoint the config deploys to, with ``invoke(payload) -> (status, body)``."""
    if config.target == "sagemaker":
        from fmops.sagemaker import options
        from fmops.sagemaker.runtime import SageMakerEndpoint

        settings = options.settings_of(config)
        return SageMakerEndpoint(
            config.deployment.endpoint_name, settings.aws_conn_id, settings.region
        )
    from fmops.deployment.local import LocalEndpoint

    return LocalEndpoint(config.deployment.endpoint_name)


def smoke_test(config: PipelineConfig, version: str) -> dict[str, Any]:
    """Labelled examples from the evaluation set through the live endpoint: all must answer."""
    from fmops.data.loading import load_table

    data = config.data
    frame = load_table(data.evaluation)
    rows = random.Random(data.seed).sample(
        range(len(frame)), min(config.deployment.smoke_requests, len(frame))
    )
    labels = set(data.label_set())
    endpoint = serving_endpoint(config)
    correct, failures = 0, []
    for index in rows:
        text, truth = frame.iloc[index][data.text_column], frame.iloc[index][data.label_column]
        status, body = endpoint.invoke({"inputs": [text]})
        if status != 200:
            failures.append(f"HTTP {status}: {body}")
            continue
        predicted = body["predictions"][0]["label"]
        if predicted not in labels:
            failures.append(f"label {predicted!r} is not a declared label")
        correct += predicted == truth
    if failures:
        raise SmokeTestError(
            f"{len(failures)} of {len(rows)} smoke requests failed: {failures[:3]}"
        )
    bad = endpoint.invoke(b"{not json")
    if bad[0] != 400:
        raise SmokeTestError(f"a malformed request got HTTP {bad[0]} instead of 400: {bad[1]}")
    result = {
        "requests": len(rows),
        "errors": 0,
        "accuracy": round(correct / len(rows), 4),
        "version": str(version),
    }
    log.info("smoke test of %s: %s", endpoint.name, result)
    return result


def promote(config: PipelineConfig, version: str) -> dict[str, Any]:
    from fmops import registry

    previous = registry.promote(config, version)
    log.info(
        "%s version %s is now %s (replaced: %s)",
        config.registry.model_name,
        version,
        registry.CHAMPION,
        previous,
    )
    return {"champion": str(version), "replaced": previous}
