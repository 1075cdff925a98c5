"""The stages of ``fmops_deploy`` as plain functions (no Airflow imports).

resolve_candidate -> await_approval -> deploy -> smoke_test -> promote. await_approval reads the
version's review (``review``; ``approval: auto`` approves here), records that it waits
(``request_review``) and waits in the triggerer (``fmops.airflow.approval``); a rejection or a
timeout ends the run without deploying, recorded on the version (``record_deploy``).

Deploying is the config's target's (``fmops.targets``: its ``Deployer``). The deploy task runs
``start_deploy``: a deployer that waits (SageMaker's) returns a wait that the triggerer watches
before ``finish_deploy`` (again after each capacity fallback); one that does not (the local
router) deploys within the call. ``deploy`` is the same stage in one blocking call. A deployment
that waits records on the model version where it serves: the tags ``fmops.endpoint.name``,
``fmops.endpoint.instance_type`` and ``fmops.endpoint.capacity_fallback`` (``record_endpoint``).
``promote`` moves ``champion`` after a good rollout.
"""

from __future__ import annotations

import logging
from typing import Any

from fmops.config import PipelineConfig
from fmops.targets import LEGACY_WAIT_TARGET, get_target
from fmops.targets.base import Deployer, ServingEndpoint

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
    from fmops.registry import tracking

    name = config.registry.model_name
    if not version:
        version = tracking.latest_alias(config, tracking.CHALLENGER)
        if version is None:
            raise LookupError(
                f"{name} has no version with alias {tracking.CHALLENGER}; run fmops_finetune "
                "first or trigger with a version"
            )
    mlflow_client = tracking.client(config)
    mlflow_version = mlflow_client.get_model_version(name, str(version))
    url = tracking.version_url(name, version, config)
    log.info("candidate: %s version %s (%s)", name, version, url)
    run_url = None
    if mlflow_version.run_id:
        experiment = mlflow_client.get_run(mlflow_version.run_id).info.experiment_id
        run_url = tracking.run_url(experiment, mlflow_version.run_id, config)
    return {
        "model_name": name,
        "version": str(version),
        "candidate": mlflow_version.tags.get("fmops.candidate"),
        "url": url,
        "run_url": run_url,
    }


AUTO_REVIEWER = "fmops pipeline (deployment.approval: auto)"


def review(config: PipelineConfig, version: str, config_file: str | None = None) -> dict[str, str]:
    """The version's review (``review_of``: decision, reviewer, comment, when).

    With ``deployment.approval: auto`` a pending version is approved here, by the pipeline, and
    the version says so: the reviewer is ``AUTO_REVIEWER`` and the comment names the config
    setting and the gate's decision. A version a person rejected stays rejected."""
    from fmops.registry import tracking
    from fmops.registry.review import APPROVED, PENDING, review_of, set_review

    name = config.registry.model_name
    mlflow_client = tracking.client(config)
    tags = mlflow_client.get_model_version(name, str(version)).tags
    found = review_of(tags)
    if found["decision"] == PENDING and config.deployment.approval == "auto":
        why = (
            f"approved without a human review: deployment.approval is auto in "
            f"{config_file or 'the pipeline config'}"
        )
        if tags.get("fmops.gate"):
            why += f"; the gate: {tags['fmops.gate']}"
        written = set_review(mlflow_client, name, str(version), APPROVED, AUTO_REVIEWER, why)
        found = review_of({**tags, **written})
    log.info(
        "%s version %s: %s%s",
        name,
        version,
        found["decision"],
        f" by {found['reviewer']}: {found['comment']}" if found["reviewer"] else "",
    )
    return found


def review_request(config: PipelineConfig, version: str, candidate: dict[str, Any]) -> dict:
    """What await_approval asks its reviewer in Airflow (subject and body, with the links to
    what they review in MLflow and the digest that pins those files), for how long, and who may
    answer (``deployment.reviewers``)."""
    from fmops.registry import digests, tracking

    name = config.registry.model_name
    tags = tracking.client(config).get_model_version(name, str(version)).tags
    where = f"endpoint {config.deployment.endpoint_name} ({config.target} target)"
    lines = [
        f"**{name} version {version}** (candidate {candidate.get('candidate') or '?'}) is to "
        f"serve on {where}.",
        "",
        f"- [The model version in MLflow]({candidate['url']}): its card, metrics and files",
    ]
    if candidate.get("run_url"):
        lines.append(f"- [The training run]({candidate['run_url']})")
    if tags.get("fmops.gate"):
        lines.append(f"- The gate: {tags['fmops.gate']}")
    if tags.get(digests.TAG):
        lines.append(
            f"- The files it serves are pinned by `{digests.TAG}` = `{tags[digests.TAG]}`; a "
            "deployment refuses any that differ"
        )
    lines += [
        "",
        "**Approve** deploys it blue/green; **Reject** ends the run without deploying. Your "
        "Airflow user and comment are recorded on the version.",
    ]
    return {
        "model_name": name,
        "version": str(version),
        "url": candidate["url"],
        "subject": f"Deploy {name} version {version} to {where}?",
        "body": "\n".join(lines),
        "timeout_seconds": config.deployment.approval_timeout_seconds,
        "assigned_users": [{"id": r, "name": r} for r in config.deployment.reviewers],
    }


def record_review(
    config: PipelineConfig,
    version: str,
    decision: str,
    reviewer: dict[str, str],
    comment: str,
    source: str,
) -> dict[str, str]:
    """Write a person's decision (taken in Airflow, by the authenticated ``reviewer``: ``{"id",
    "name"}``) to the version's tags, the record a reader of the MLflow registry sees."""
    from fmops.registry import tracking
    from fmops.registry.review import review_of, set_review

    written = set_review(
        tracking.client(config),
        config.registry.model_name,
        str(version),
        decision,
        reviewer["name"] or reviewer["id"],
        comment,
        reviewer_id=reviewer["id"],
        source=source,
    )
    return review_of(written)


def request_review(
    config: PipelineConfig, version: str, deploy_run: str, now: float | None = None
) -> float:
    """Record on the version that ``deploy_run`` waits for its review, and until when; returns
    that deadline (epoch seconds). A retried task of the same run keeps the deadline it set."""
    import time
    from datetime import UTC, datetime

    from fmops.registry import tracking
    from fmops.registry.review import (
        DEADLINE_TAG,
        DEPLOY_NOTE_TAG,
        DEPLOY_OUTCOME_TAG,
        DEPLOY_RUN_TAG,
        REQUESTED_AT_TAG,
    )

    now = time.time() if now is None else now
    tags = tracking.client(config).get_model_version(config.registry.model_name, version).tags
    if tags.get(DEPLOY_RUN_TAG) == deploy_run and tags.get(DEADLINE_TAG):
        try:
            return datetime.fromisoformat(tags[DEADLINE_TAG]).timestamp()
        except ValueError:
            log.warning("unreadable %s tag: a new deadline", DEADLINE_TAG)
    deadline = now + config.deployment.approval_timeout_seconds
    until = datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds")
    tracking.tag_version(
        config,
        version,
        {
            REQUESTED_AT_TAG: datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            DEADLINE_TAG: until,
            DEPLOY_RUN_TAG: deploy_run,
            DEPLOY_OUTCOME_TAG: "awaiting_approval",
            DEPLOY_NOTE_TAG: f"{deploy_run} waits for a review until {until}",
        },
    )
    return deadline


def record_deploy(
    config: PipelineConfig, version: str, deploy_run: str, outcome: str, note: str
) -> None:
    """Record on the version how ``deploy_run`` ended for it (``rejected``,
    ``approval_timed_out``; ``promote`` records ``deployed``)."""
    from fmops.registry import tracking
    from fmops.registry.review import DEPLOY_NOTE_TAG, DEPLOY_OUTCOME_TAG, DEPLOY_RUN_TAG

    tracking.tag_version(
        config,
        version,
        {
            DEPLOY_RUN_TAG: deploy_run,
            DEPLOY_OUTCOME_TAG: outcome,
            DEPLOY_NOTE_TAG: note,
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


def deployer(config: PipelineConfig) -> Deployer:
    """The config's target's deployer (``fmops.targets``)."""
    return get_target(config.target).deployer(config)


def deploy(config: PipelineConfig, version: str) -> dict[str, Any]:
    """Serve the registered version on the config's endpoint, blue/green as
    ``deployment.traffic`` says, in one blocking call (``Deployer.deploy``)."""
    return deployer(config).deploy(version)


def rollback(config: PipelineConfig) -> dict[str, Any]:
    """Make sure the endpoint is not left half-shifted by a failed or killed deploy: restore its
    last stable routing (idempotent; nothing to do after a success)."""
    return deployer(config).rollback()


def serving_endpoint(config: PipelineConfig) -> ServingEndpoint:
    """The endpoint the config deploys to, with ``invoke(payload) -> (status, body)``."""
    return deployer(config).endpoint()


def start_deploy(config: PipelineConfig, version: str) -> dict[str, Any]:
    """The deploy stage up to its wait, for a task that must not hold a worker while it waits.

    Returns ``{"result": ...}`` (what ``deploy`` returns) when nothing is left to wait for: a
    deployer that does not wait deploys within the call (``deploy``). Otherwise ``{"wait":
    ...}``, JSON that names its target, which a trigger watches and ``finish_deploy`` concludes
    (``Deployer.start``).
    """
    chosen = deployer(config)
    if not chosen.waits:
        return {"result": deploy(config, version)}
    return chosen.start(version)


def finish_deploy(
    wait: dict[str, Any], verdict: dict[str, Any], description: dict[str, Any] | None
) -> dict[str, Any]:
    """Conclude a wait that ``start_deploy`` (or an earlier ``finish_deploy``) began, given how
    it ended (the trigger's verdict, and the last description of the endpoint): ``{"result":
    ...}``, or the next ``{"wait": ...}`` (``Deployer.finish``)."""
    config = PipelineConfig.model_validate(wait["config"]) if "config" in wait else None
    name = wait.get("target") or (config.target if config else LEGACY_WAIT_TARGET)
    return get_target(name).deployer(config).finish(wait, verdict, description)


def record_endpoint(config: PipelineConfig, deployed: dict[str, Any]) -> dict[str, str]:
    """Tag the deployed model version with where it serves, for its model card: the endpoint,
    the instance type serving it, and the capacity fallback on the way ("none" when the first
    choice serves, so that a redeployment does not keep an earlier note). Returns the tags."""
    from fmops.registry import tracking

    notes = deployed.get("capacity_fallback") or []
    tags = {
        ENDPOINT_TAGS["endpoint"]: deployed["endpoint"],
        ENDPOINT_TAGS["instance_type"]: deployed["instance_type"],
        ENDPOINT_TAGS["capacity_fallback"]: "; ".join(notes)[:MAX_TAG_VALUE] or NO_FALLBACK,
    }
    mlflow_client = tracking.client(config)
    name = config.registry.model_name
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, deployed["version"], key, value)
    if notes:
        log.warning("%s version %s: %s", name, deployed["version"], "; ".join(notes))
    return tags


def smoke_test(config: PipelineConfig, version: str) -> dict[str, Any]:
    """Examples from the evaluation set through the live endpoint, in the model kind's request
    shape (``fmops.kinds``): every one must answer well-formed, and a malformed body must get 400.
    The share of answers that match the reference is reported, not enforced (the gate did that)."""
    from fmops.kinds import kind_of

    kind = kind_of(config)
    cases = kind.smoke_cases(config, config.deployment.smoke_requests)
    if not cases:
        raise SmokeTestError(
            f"no smoke request could be built from {config.data.evaluation}: it has no usable "
            "record"
        )
    endpoint = serving_endpoint(config)
    correct, failures = 0, []
    for case in cases:
        status, body = endpoint.invoke(case["payload"])
        if status != 200:
            failures.append(f"HTTP {status}: {body}")
            continue
        answer, problem = kind.smoke_answer(body, config)
        if problem:
            failures.append(problem)
        correct += answer is not None and kind.matches(answer, case["expected"])
    if failures:
        raise SmokeTestError(
            f"{len(failures)} of {len(cases)} smoke requests failed: {failures[:3]}"
        )
    bad = endpoint.invoke(b"{not json")
    if bad[0] != 400:
        raise SmokeTestError(f"a malformed request got HTTP {bad[0]} instead of 400: {bad[1]}")
    result = {
        "requests": len(cases),
        "errors": 0,
        "accuracy": round(correct / len(cases), 4),
        "version": str(version),
    }
    log.info("smoke test of %s: %s", endpoint.name, result)
    return result


def promote(config: PipelineConfig, version: str, deploy_run: str | None = None) -> dict[str, Any]:
    """After a good rollout: ``champion`` moves to the version (``review.promote``)."""
    from fmops.registry import review, tracking

    previous = review.promote(config, version, deploy_run)
    log.info(
        "%s version %s is now %s (replaced: %s)",
        config.registry.model_name,
        version,
        tracking.CHAMPION,
        previous,
    )
    return {"champion": str(version), "replaced": previous}
