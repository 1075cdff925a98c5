"""The stages of ``fmops_deploy`` as plain functions (no Airflow imports).

resolve_candidate -> await_approval -> deploy -> smoke_test -> promote. await_approval reads the
version's review (``review``; ``approval: auto`` approves here), records that it waits
(``request_review``) and waits in the triggerer (``fmops.airflow.approval``); a rejection or a
timeout ends the run without deploying, recorded on the version (``record_deploy``). The deploy
task runs ``start_deploy`` and, for a SageMaker deployment, waits in the triggerer before
``finish_deploy`` (again after each capacity fallback); ``deploy`` is the same stage in one
blocking call. A SageMaker deployment records on the model version where it serves: the tags
``fmops.endpoint.name``, ``fmops.endpoint.instance_type`` and ``fmops.endpoint.capacity_fallback``
(``record_endpoint``). ``promote`` moves ``champion`` after a good rollout.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from fmops.config import PipelineConfig
from fmops.paths import state_dir

log = logging.getLogger(__name__)

ENDPOINT_TAGS = {
    "endpoint": "fmops.endpoint.name",
    "instance_type": "fmops.endpoint.instance_type",
    "capacity_fallback": "fmops.endpoint.capacity_fallback",
}
NO_FALLBACK = "none: the first instance type of the catalog ranking serves"
MAX_TAG_VALUE = 5000  # MLflow's limit for a model version tag's value


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
    mlflow_client = registry.client(config)
    mlflow_version = mlflow_client.get_model_version(name, str(version))
    url = registry.version_url(name, version, config)
    log.info("candidate: %s version %s (%s)", name, version, url)
    run_url = None
    if mlflow_version.run_id:
        experiment = mlflow_client.get_run(mlflow_version.run_id).info.experiment_id
        run_url = registry.run_url(experiment, mlflow_version.run_id, config)
    return {
        "model_name": name,
        "version": str(version),
        "candidate": mlflow_version.tags.get("fmops.candidate"),
        "url": url,
        "run_url": run_url,
    }


AUTO_REVIEWER = "fmops pipeline (deployment.approval: auto)"


def review(config: PipelineConfig, version: str, config_file: str | None = None) -> dict[str, str]:
    """The version's review (``registry.review_of``: decision, reviewer, comment, when).

    With ``deployment.approval: auto`` a pending version is approved here, by the pipeline, and
    the version says so: the reviewer is ``AUTO_REVIEWER`` and the comment names the config
    setting and the gate's decision. A version a person rejected stays rejected."""
    from fmops import registry

    name = config.registry.model_name
    mlflow_client = registry.client(config)
    tags = mlflow_client.get_model_version(name, str(version)).tags
    found = registry.review_of(tags)
    if found["decision"] == registry.PENDING and config.deployment.approval == "auto":
        why = (
            f"approved without a human review: deployment.approval is auto in "
            f"{config_file or 'the pipeline config'}"
        )
        if tags.get("fmops.gate"):
            why += f"; the gate: {tags['fmops.gate']}"
        written = registry.set_review(
            mlflow_client, name, str(version), registry.APPROVED, AUTO_REVIEWER, why
        )
        found = registry.review_of({**tags, **written})
    log.info(
        "%s version %s: %s%s",
        name,
        version,
        found["decision"],
        f" by {found['reviewer']}: {found['comment']}" if found["reviewer"] else "",
    )
    return found


def request_review(
    config: PipelineConfig, version: str, deploy_run: str, now: float | None = None
) -> float:
    """Record on the version that ``deploy_run`` waits for its review, and until when; returns
    that deadline (epoch seconds). A retried task of the same run keeps the deadline it set."""
    import time
    from datetime import UTC, datetime

    from fmops import registry

    now = time.time() if now is None else now
    tags = registry.client(config).get_model_version(config.registry.model_name, version).tags
    if tags.get(registry.DEPLOY_RUN_TAG) == deploy_run and tags.get(registry.DEADLINE_TAG):
        try:
            return datetime.fromisoformat(tags[registry.DEADLINE_TAG]).timestamp()
        except ValueError:
            log.warning("unreadable %s tag: a new deadline", registry.DEADLINE_TAG)
    deadline = now + config.deployment.approval_timeout_seconds
    until = datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds")
    registry.tag_version(
        config,
        version,
        {
            registry.REQUESTED_AT_TAG: datetime.fromtimestamp(now, UTC).isoformat(
                timespec="seconds"
            ),
            registry.DEADLINE_TAG: until,
            registry.DEPLOY_RUN_TAG: deploy_run,
            registry.DEPLOY_OUTCOME_TAG: "awaiting_approval",
            registry.DEPLOY_NOTE_TAG: f"{deploy_run} waits for a review until {until}",
        },
    )
    return deadline


def record_deploy(
    config: PipelineConfig, version: str, deploy_run: str, outcome: str, note: str
) -> None:
    """Record on the version how ``deploy_run`` ended for it (``rejected``,
    ``approval_timed_out``; ``promote`` records ``deployed``)."""
    from fmops import registry

    registry.tag_version(
        config,
        version,
        {
            registry.DEPLOY_RUN_TAG: deploy_run,
            registry.DEPLOY_OUTCOME_TAG: outcome,
            registry.DEPLOY_NOTE_TAG: note,
        },
    )
    log.warning("%s version %s: %s", config.registry.model_name, version, note)


def rejected_note(deploy_run: str, found: dict[str, str]) -> str:
    comment = f": {found['comment']}" if found.get("comment") else ""
    return (
        f"{deploy_run} ended without deploying: rejected by {found.get('reviewer') or 'a reviewer'}"
        f"{comment}"
    )


def timed_out_note(deploy_run: str, timeout_seconds: float) -> str:
    return (
        f"{deploy_run} ended without deploying: no review within {timeout_seconds:.0f} s "
        "(deployment.approval_timeout_seconds); the version is still pending: approve it and "
        "trigger fmops_deploy by hand with this version"
    )


def deploy(config: PipelineConfig, version: str) -> dict[str, Any]:
    """Serve the registered version (downloaded from the registry) on the local endpoint: the
    first deployment creates it, later ones go blue/green as ``deployment.traffic`` says, with
    bakes, smoke traffic and the alarms (``fmops.deployment.rollout``). A rolled back version is
    tagged ``fmops.deployment=rolled_back`` with the reason, and the error goes on."""
    from fmops import registry
    from fmops.deployment.rollout import RolloutFailedError, deploy_local

    if config.target == "sagemaker":
        return deploy_to_sagemaker(config, version)
    target = state_dir() / "models" / config.registry.model_name / str(version)
    model_dir = registry.download_model(config, version, target)
    handlers = target / "code" / "inference.py"  # the handlers registered with the model
    try:
        return deploy_local(config, str(version), model_dir, handlers)
    except RolloutFailedError as err:
        if err.result.outcome == "rolled_back":
            registry.tag_version(
                config,
                version,
                {"fmops.deployment": "rolled_back", "fmops.deployment_reason": err.reason},
            )
        raise


def rollback(config: PipelineConfig) -> dict[str, Any]:
    """Make sure the endpoint is not left half-shifted by a failed or killed deploy: restore its
    last stable routing (idempotent; nothing to do after a success). The sagemaker target's
    endpoint rolls back by itself (its blue/green update and the alarms)."""
    from fmops import registry
    from fmops.deployment.local import LocalEndpoint
    from fmops.deployment.rollout import rollback_to_stable

    if config.target == "sagemaker":
        return {"action": "none", "why": "SageMaker rolls a failed blue/green update back"}
    endpoint = LocalEndpoint(config.deployment.endpoint_name)
    if not endpoint.exists():
        return {"action": "none", "why": f"no endpoint {endpoint.name}"}
    result = rollback_to_stable(endpoint, note="the deploy run ended without a stable rollout")
    if result.get("action") == "restored" and result.get("version"):
        registry.tag_version(
            config,
            result["version"],
            {
                "fmops.deployment": "rolled_back",
                "fmops.deployment_reason": "the deploy run ended mid-rollout; the rollback "
                "task restored the stable routing",
            },
        )
    return result


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


def start_deploy(config: PipelineConfig, version: str) -> dict[str, Any]:
    """The deploy stage up to its wait, for a task that must not hold a worker while it waits.

    Returns ``{"result": ...}`` (what ``deploy`` returns) when nothing is left to wait for: the
    local target deploys within the call (its variant is healthy or refused within
    ``deployment.health_timeout_seconds``), and a SageMaker endpoint that already serves the
    version is left as it is. Otherwise ``{"wait": ...}``: the started SageMaker deployment
    (``endpoints.start_deployment``'s handle, ``deployment``), the version, the config (to
    record the outcome on the model version) and the AWS connection and region to watch it
    with; after the wait, ``finish_deploy`` concludes it.
    """
    if config.target != "sagemaker":
        return {"result": deploy(config, version)}
    from fmops.sagemaker import endpoints

    plan, settings, aws = _sagemaker_deployment(config, version)
    handle = endpoints.start_deployment(plan, **aws)
    wait = {
        "version": str(version),
        "config": config.model_dump(mode="json"),
        "aws_conn_id": settings.aws_conn_id,
        "region_name": settings.region,
    }
    return _started(wait, handle, aws["autoscaling"])


def finish_deploy(
    wait: dict[str, Any], verdict: dict[str, Any], description: dict[str, Any] | None
) -> dict[str, Any]:
    """Conclude a wait that ``start_deploy`` (or an earlier ``finish_deploy``) began, given how
    it ended (``endpoints.Verdict`` as a dict, and the last DescribeEndpoint, None once a
    deleted endpoint is gone). Returns, as ``start_deploy`` does, ``{"result": ...}`` (what
    ``deploy`` returns) or ``{"wait": ...}``: the next attempt of a capacity fallback, to wait
    for in turn. Raises ``DeploymentFailedError`` for a deployment that failed otherwise, was
    rolled back or timed out, ``NoCapacityError`` when no instance type had capacity."""
    from fmops.sagemaker import endpoints

    handle = wait["deployment"]
    made = endpoints.clients(wait["aws_conn_id"], wait["region_name"])
    aws = {
        "sagemaker": made.sagemaker,
        "cloudwatch": made.cloudwatch,
        "autoscaling": made.autoscaling,
    }
    ended = endpoints.Verdict.from_dict(verdict)
    if handle["action"] == "deleting":  # a failed endpoint, deleted to create it again
        if ended.state != "succeeded":
            raise ended.error(handle["endpoint_name"])
        log.info("%s", ended.message)
        return _started(wait, endpoints.start_deployment(handle["plan"], **aws), made.autoscaling)
    if ended.state != "succeeded":  # the next instance type where SageMaker had no capacity
        following = endpoints.fall_back(handle, ended, description, **aws)
        return _started(wait, following, made.autoscaling)
    log.info("%s", ended.message)
    result = endpoints.finish_deployment(handle, description, autoscaling=made.autoscaling)
    return {"result": _concluded(wait, result)}


def _started(wait: dict[str, Any], handle: dict[str, Any], autoscaling: Any) -> dict[str, Any]:
    """``{"wait": ...}`` for a started deployment, ``{"result": ...}`` for one with nothing to
    wait for (the endpoint serves the version already)."""
    from fmops.sagemaker import endpoints

    if handle["action"] != "unchanged":
        return {"wait": {**wait, "deployment": handle}}
    result = endpoints.finish_deployment(handle, None, autoscaling=autoscaling)
    return {"result": _concluded(wait, result)}


def _concluded(wait: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The deploy task's result, recorded on the model version of the wait's config."""
    deployed = _deployed(result, wait["version"])
    if "config" in wait:
        record_endpoint(PipelineConfig.model_validate(wait["config"]), deployed)
    else:  # a wait deferred by an fmops without the config in it
        log.warning(
            "the deployment's wait carries no config: where %s serves is not recorded on the "
            "model version (tags %s)",
            deployed["endpoint"],
            ", ".join(ENDPOINT_TAGS.values()),
        )
    return deployed


def record_endpoint(config: PipelineConfig, deployed: dict[str, Any]) -> dict[str, str]:
    """Tag the deployed model version with where it serves, for its model card: the endpoint,
    the instance type serving it, and the capacity fallback on the way ("none" when the first
    choice serves, so that a redeployment does not keep an earlier note). Returns the tags."""
    from fmops import registry

    notes = deployed.get("capacity_fallback") or []
    tags = {
        ENDPOINT_TAGS["endpoint"]: deployed["endpoint"],
        ENDPOINT_TAGS["instance_type"]: deployed["instance_type"],
        ENDPOINT_TAGS["capacity_fallback"]: "; ".join(notes)[:MAX_TAG_VALUE] or NO_FALLBACK,
    }
    mlflow_client = registry.client(config)
    name = config.registry.model_name
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, deployed["version"], key, value)
    if notes:
        log.warning("%s version %s: %s", name, deployed["version"], "; ".join(notes))
    return tags


def _sagemaker_deployment(
    config: PipelineConfig, version: str
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """The endpoint plan of a registered version, the config's SageMaker settings, and the
    clients a deployment calls (keyword arguments of ``endpoints.start_deployment``/``deploy``)."""
    from fmops import registry
    from fmops.catalog import count_parameters
    from fmops.jobs.specs import resolve_base_model
    from fmops.sagemaker import endpoints, options
    from fmops.sagemaker.run import s3_client

    settings = options.settings_of(config)
    name = config.registry.model_name
    tags = registry.client(config).get_model_version(name, str(version)).tags
    artifacts = tags.get("fmops.model_artifacts", "")
    if not artifacts.startswith("s3://"):
        raise LookupError(
            f"{name} version {version} has no model.tar.gz in S3 (fmops.model_artifacts="
            f"{artifacts!r}): only versions that fmops_finetune trained on the sagemaker target "
            "can be served by SageMaker"
        )
    candidate = config.candidate(tags["fmops.candidate"])
    plan = endpoints.plan_deployment(
        config,
        model_version=str(version),
        model_data_url=artifacts,
        parameters=count_parameters(resolve_base_model(candidate.base_model)),
        tags={"fmops:pipeline": config.pipeline, "fmops:model_version": str(version)},
    )
    for note in plan["notes"]:
        log.warning("%s", note)
    log.info("deploying %s version %s: %s", name, version, plan["instance"]["explain"])
    made = endpoints.clients(settings.aws_conn_id, settings.region)
    aws = {
        "sagemaker": made.sagemaker,
        "cloudwatch": made.cloudwatch,
        "autoscaling": made.autoscaling,
        "s3": s3_client(config),
    }
    return plan, settings, aws


def _deployed(result: dict[str, Any], version: str) -> dict[str, Any]:
    """The deploy task's result (its XCom) from ``endpoints.finish_deployment``'s."""
    log.info("endpoint %s: %s", result["endpoint_name"], result)
    return {
        "endpoint": result["endpoint_name"],
        "version": str(version),
        "status": result["status"],
        "action": result["action"],
        "endpoint_config": result["endpoint_config_name"],
        "previous_endpoint_config": result["previous_endpoint_config_name"],
        "instance": f"{result['instance_count']} x {result['instance_type']}",
        "instance_type": result["instance_type"],
        # why it is not the first choice: "no capacity for ml.X in <region>: falling back ..."
        "capacity_fallback": list(result.get("capacity_fallback", [])),
    }


def deploy_to_sagemaker(config: PipelineConfig, version: str) -> dict[str, Any]:
    """Create the SageMaker endpoint, or update it blue/green to this version, and wait until it
    serves the new config (a rollback is a failure: ``DeploymentFailedError``), falling back to
    the next instance type where SageMaker has no capacity; records where it serves on the
    model version. Blocking: the deploy task uses ``start_deploy`` and ``finish_deploy`` around
    a deferred wait instead."""
    from fmops.sagemaker import endpoints

    plan, _, aws = _sagemaker_deployment(config, version)
    deployed = _deployed(endpoints.deploy(plan, **aws), version)
    record_endpoint(config, deployed)
    return deployed


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


def promote(config: PipelineConfig, version: str, deploy_run: str | None = None) -> dict[str, Any]:
    """After a good rollout: ``champion`` moves to the version (``registry.promote``)."""
    from fmops import registry

    previous = registry.promote(config, version, deploy_run)
    log.info(
        "%s version %s is now %s (replaced: %s)",
        config.registry.model_name,
        version,
        registry.CHAMPION,
        previous,
    )
    return {"champion": str(version), "replaced": previous}
