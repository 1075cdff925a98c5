"""The review of a registered version, what fmops_deploy records on it, and the champion.

A reviewer decides in Airflow (fmops_deploy's await_approval, see ``fmops.airflow.approval``);
fmops then records the decision on the version (``set_review``: ``fmops.approval``, the
authenticated ``fmops.reviewer`` and the comment) and how the run ended
(``fmops.deploy_outcome``). The tags are the record, never the decision: they can be written by
anyone who reaches MLflow. After a good rollout ``promote`` moves ``champion``, and the version
it replaces keeps ``fmops.replaced_at``; ``champion_artifacts`` is the champion the evaluation
compares new candidates with.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig
from fmops.jobs.naming import CHAMPION
from fmops.registry import tracking
from fmops.targets import get_target

log = logging.getLogger(__name__)

APPROVAL_TAG = "fmops.approval"
APPROVAL_VALUES = ("pending", "approved", "rejected")
PENDING, APPROVED, REJECTED = APPROVAL_VALUES
REVIEWER_TAG, COMMENT_TAG, REVIEWED_AT_TAG = (
    "fmops.reviewer",
    "fmops.review_comment",
    "fmops.reviewed_at",
)
# Who decided as Airflow authenticated them, and where (the HITL task); see fmops.airflow.approval
REVIEWER_ID_TAG, REVIEW_SOURCE_TAG = "fmops.reviewer_id", "fmops.review_source"
# What fmops_deploy records on a version: the run that handled it last and how that run ended.
DEPLOY_RUN_TAG, DEPLOY_OUTCOME_TAG, DEPLOY_NOTE_TAG = (
    "fmops.deploy_run",
    "fmops.deploy_outcome",
    "fmops.deploy_note",
)
REQUESTED_AT_TAG, DEADLINE_TAG = "fmops.approval_requested_at", "fmops.approval_deadline"


class ApprovalError(ValueError):
    """A review decision is malformed or the version does not exist."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def review_of(tags: dict[str, str]) -> dict[str, str]:
    """The review recorded in a version's tags: decision (pending when unset or not one of the
    allowed values, which the log says), reviewer, comment, when."""
    decision = (tags.get(APPROVAL_TAG) or PENDING).strip().lower()
    if decision not in APPROVAL_VALUES:
        log.warning(
            "%s=%r is not one of %s: treated as pending", APPROVAL_TAG, decision, APPROVAL_VALUES
        )
        decision = PENDING
    return {
        "decision": decision,
        "reviewer": tags.get(REVIEWER_TAG, ""),
        "reviewer_id": tags.get(REVIEWER_ID_TAG, ""),
        "comment": tags.get(COMMENT_TAG, ""),
        "reviewed_at": tags.get(REVIEWED_AT_TAG, ""),
        "source": tags.get(REVIEW_SOURCE_TAG, ""),
    }


def set_review(
    mlflow_client: Any,
    name: str,
    version: str,
    decision: str,
    reviewer: str,
    comment: str = "",
    reviewer_id: str = "",
    source: str = "",
) -> dict[str, str]:
    """Record a review decision on a version: ``fmops.approval``, ``fmops.reviewer``,
    ``fmops.review_comment`` and ``fmops.reviewed_at``, with ``fmops.reviewer_id`` and
    ``fmops.review_source`` (who Airflow authenticated, which task). Returns the tags it set.

    Raises ApprovalError for a decision other than approved/rejected, an empty reviewer, or a
    version that does not exist."""
    from mlflow.exceptions import MlflowException

    if decision not in (APPROVED, REJECTED):
        raise ApprovalError(f"decision {decision!r}; allowed: {APPROVED}, {REJECTED}")
    if not reviewer.strip():
        raise ApprovalError("a review needs a reviewer: the Airflow user who decided")
    try:
        previous = review_of(mlflow_client.get_model_version(name, str(version)).tags)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ApprovalError(
                f"{name} has no version {version} (or no such registered model); the MLflow "
                "UI's Models page lists the versions"
            ) from err
        raise
    tags = {
        APPROVAL_TAG: decision,
        REVIEWER_TAG: reviewer.strip(),
        COMMENT_TAG: comment,
        REVIEWED_AT_TAG: now_iso(),
        REVIEWER_ID_TAG: reviewer_id,
        REVIEW_SOURCE_TAG: source,
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(
            name, str(version), key, value[: tracking.MAX_TAG_VALUE]
        )
    if previous["decision"] not in (PENDING, decision):
        log.warning(
            "%s version %s: %s replaces the earlier %s by %s",
            name,
            version,
            decision,
            previous["decision"],
            previous["reviewer"] or "someone",
        )
    log.info("%s version %s: %s by %s", name, version, decision, reviewer)
    return tags


def champion_artifacts(config: PipelineConfig) -> tuple[str, str] | None:
    """The champion version and its model artifacts (the training job's model.tar.gz), when a
    champion exists and its artifacts are where the version says; else None, with the reason
    in the log. The evaluation compares the new candidates with it on the same examples."""
    name = config.registry.model_name
    version = tracking.alias_version(tracking.client(config), name, tracking.CHAMPION)
    if version is None:
        log.info("no champion of %s is registered: the gate has no champion to beat", name)
        return None
    uri = version.tags.get("fmops.model_artifacts")
    if not uri:
        log.warning(
            "champion %s v%s has no fmops.model_artifacts tag: not evaluated", name, version.version
        )
        return None
    if uri.startswith("file://") and not Path(uri.removeprefix("file://")).exists():
        log.warning(
            "the champion %s v%s's artifacts %s are gone (state folder cleaned?): not evaluated",
            name,
            version.version,
            uri,
        )
        return None
    problem = get_target(config.target).artifact_problem(uri)
    if problem:
        log.warning(
            "the champion %s v%s was trained on another target (%s): %s; not evaluated",
            name,
            version.version,
            uri,
            problem,
        )
        return None
    return str(version.version), uri


def champion_entry(config: PipelineConfig) -> list[tuple[str, str, bool]]:
    """The registry's champion as an evaluation entry (name, model URI, zero-shot), when the
    config asks for it and one exists: it is evaluated on the same examples as the candidates,
    for the gate's test."""
    if not config.evaluation.champion:
        return []
    found = champion_artifacts(config)
    if found is None:
        return []
    version, uri = found
    log.info("evaluating the champion, version %s (%s), beside the candidates", version, uri)
    return [(CHAMPION, uri, False)]


def promote(config: PipelineConfig, version: str, deploy_run: str | None = None) -> str | None:
    """Give ``version`` the alias champion after a good rollout; the version it replaces keeps
    ``fmops.replaced_at`` / ``fmops.replaced_by``. Returns the replaced version (None if none,
    or if ``version`` was the champion already). Safe to repeat: a retry after the alias moved
    finds nothing left to replace and only refreshes the deployment tags."""
    mlflow_client = tracking.client(config)
    name = config.registry.model_name
    previous = tracking.latest_alias(config, tracking.CHAMPION)
    now = now_iso()
    replaced = None
    if previous is not None and previous != str(version):
        tracking.tag_version(
            config, previous, {"fmops.replaced_at": now, "fmops.replaced_by": str(version)}
        )
        replaced = previous
    if previous != str(version):
        mlflow_client.set_registered_model_alias(name, tracking.CHAMPION, str(version))
    tags = {
        "fmops.deployed_at": now,
        DEPLOY_OUTCOME_TAG: "deployed",
        DEPLOY_NOTE_TAG: f"{tracking.CHAMPION} since {now}"
        + (f", replacing version {replaced}" if replaced else ""),
    }
    if deploy_run:
        tags[DEPLOY_RUN_TAG] = deploy_run
    tracking.tag_version(config, version, tags)
    return replaced
