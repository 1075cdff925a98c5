"""The ``local`` target: jobs run on this machine under the local executor, and the endpoint is a
router with blue and green variant servers on 127.0.0.1.

Jobs are the same CreateTrainingJob / CreateProcessingJob requests the sagemaker target sends
(``fmops.jobs.specs``), with ``file://`` URIs under the state folder; ``fmops.jobs.local`` runs
them. Training and evaluation jobs are cached (``fmops.jobs.cache``). The deployer downloads the
registered version from MLflow and rolls it out behind the router (``fmops.deployment.rollout``).
Nothing here costs money, so plans carry a zero cost.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.jobs import records
from fmops.jobs.naming import BASELINE, job_name, job_tags
from fmops.jobs.specs import (
    evaluation_request,
    hub_on_local_target,
    resolve_base_model,
    training_request,
    validate_request,
)
from fmops.kinds import kind_of
from fmops.paths import state_dir
from fmops.plan_text import (
    DAG_ID,
    PLACEHOLDER_NOTE,
    PLAN_RUN_ID,
    STAGED_DIGEST_PLACEHOLDER,
    traffic_line,
)
from fmops.targets.base import Deployer, ServingEndpoint, Target

if TYPE_CHECKING:
    from fmops.config import PipelineConfig

log = logging.getLogger(__name__)

NAME = "local"


class LocalTarget(Target):
    name = NAME
    auto_approval_override = True  # nothing leaves this machine: the trigger form may auto-approve
    unbilled_note = "not billed (the local executor ran it on this machine)"
    # A describe reads two small files: polling every second ends a phase within a second of
    # its last job, which is what a short local job notices.
    job_poll_seconds = 1.0
    caps_jobs = True  # the local executor holds jobs beyond max_concurrent_jobs itself

    def config_problems(self, config: PipelineConfig) -> list[str]:
        if config.target != NAME:
            return []
        problems = [hub_on_local_target(c.base_model) for c in config.candidates if c.hub]
        jumpstart = [c.name for c in config.candidates if c.jumpstart]
        if jumpstart:
            problems.append(
                f"candidates {jumpstart} use JumpStart base models, which train on the sagemaker "
                f"target only (target is {config.target!r}): set target: sagemaker, or use a "
                "packaged model or a model folder"
            )
        return problems

    def backend_settings(self, config: PipelineConfig) -> dict[str, Any]:
        return {"max_concurrent_jobs": config.training.max_concurrent_jobs}

    def plan_training(
        self,
        config: PipelineConfig,
        staged: dict[str, Any],
        dag_id: str,
        run_id: str,
        *,
        force: bool = False,
    ) -> list[dict[str, Any]]:
        plans = []
        for candidate in config.candidates:
            base_name = job_name(dag_id, run_id, candidate.name, "training")
            request = training_request(
                config,
                candidate,
                staged,
                job_tags(config.pipeline, dag_id, run_id, candidate.name),
                checkpoints=f"file://{state_dir() / 'checkpoints' / base_name}",
            )
            plans.append(
                records.training_plan(
                    config,
                    candidate,
                    target=NAME,
                    base_name=base_name,
                    settings=self.backend_settings(config),
                    request=request,
                    staged_digest=staged["digest"],
                    force=force,
                )
            )
            log.info(
                "planned training job for %s: %s, %s, instance %s",
                candidate.name,
                candidate.method,
                candidate.hyperparameters.model_dump(),
                config.training.instance_type,
            )
        return plans

    def plan_evaluation(
        self,
        config: PipelineConfig,
        staged: dict[str, Any],
        trained: list[dict[str, Any]],
        dag_id: str,
        run_id: str,
        *,
        force: bool = False,
        champion: list[tuple[str, str, bool]] = (),
    ) -> list[dict[str, Any]]:
        entries = [(t["candidate"], t["model_artifacts"], False) for t in trained if t]
        if config.evaluation.baseline:
            base = resolve_base_model(config.candidates[0].base_model)
            entries.append((BASELINE, f"file://{base}", True))
        entries += champion
        plans = []
        for candidate, model_uri, zero_shot in entries:
            base_name = job_name(dag_id, run_id, candidate, "processing")
            output = f"file://{state_dir() / 'artifacts' / 'evaluation' / base_name}"
            request = evaluation_request(
                config,
                model_uri,
                staged,
                job_tags(config.pipeline, dag_id, run_id, candidate),
                zero_shot=zero_shot,
                output_uri=output,
            )
            plans.append(
                records.evaluation_plan(
                    config,
                    candidate,
                    target=NAME,
                    base_name=base_name,
                    settings=self.backend_settings(config),
                    request=request,
                    zero_shot=zero_shot,
                    force=force,
                    staged_digest=staged["digest"],
                )
            )
        return plans

    def plan_run(
        self,
        config: PipelineConfig,
        dag_id: str = DAG_ID,
        run_id: str = PLAN_RUN_ID,
        *,
        with_connection: bool = False,
    ) -> dict[str, Any]:
        """The requests of a run on this machine, planned as a run plans them (the champion
        included, when the registry has one), each checked against botocore's service model."""
        from fmops.registry.review import champion_entry

        root = state_dir() / "datasets" / STAGED_DIGEST_PLACEHOLDER
        staged = {"digest": STAGED_DIGEST_PLACEHOLDER} | {
            f"{c}_uri": f"file://{root / c}" for c in ("train", "validation", "evaluation")
        }
        training = self.plan_training(config, staged, dag_id, run_id)
        trained = []
        for plan in training:
            validate_request(
                "CreateTrainingJob", {**plan["request"], "TrainingJobName": plan["base_name"]}
            )
            output = plan["request"]["OutputDataConfig"]["S3OutputPath"]
            trained.append(
                {
                    "candidate": plan["candidate"],
                    "model_artifacts": f"{output}/{plan['base_name']}/output/model.tar.gz",
                }
            )
        evaluation = self.plan_evaluation(
            config, staged, trained, dag_id, run_id, champion=champion_entry(config)
        )
        for plan in evaluation:
            validate_request(
                "CreateProcessingJob", {**plan["request"], "ProcessingJobName": plan["base_name"]}
            )
        for plan in training + evaluation:
            plan["cost"] = {"upper_bound_usd": 0.0, "explain": "runs on this machine: no AWS cost"}
            plan["instance"] = {
                "instance_type": "local process",
                "explain": "the local executor runs the job script on this machine's CPUs",
            }
        return {
            "pipeline": config.pipeline,
            "target": NAME,
            "dag_id": dag_id,
            "run_id": run_id,
            "placeholders": {
                "staged_digest": STAGED_DIGEST_PLACEHOLDER,
                "note": PLACEHOLDER_NOTE.format(run_id=run_id),
            },
            "training": training,
            "evaluation": evaluation,
            "cost": {"upper_bound_usd": 0.0, "explain": "the local target runs on this machine"},
            "endpoint": self.endpoint_plan(config),
        }

    def endpoint_plan(self, config: PipelineConfig) -> dict[str, Any]:
        """What fmops_deploy does here: no request to plan, the settings it takes."""
        deployment = config.deployment
        return {
            "target": NAME,
            "endpoint_name": deployment.endpoint_name,
            "url": f"http://127.0.0.1:{deployment.port}",
            "traffic": deployment.traffic.model_dump(),
            "cost": {"usd_per_hour_all_instances": 0.0, "explain": "runs on this machine: no cost"},
            "explain": (
                "fmops_deploy serves the winner on this machine (fmops.deployment.local), "
                f"blue/green behind a router on 127.0.0.1:{deployment.port}: no AWS request and "
                "no cost (deployment.alarms are CloudWatch alarms, the sagemaker target's)"
            ),
        }

    def endpoint_lines(self, endpoint: dict[str, Any]) -> list[str]:
        return [
            f"endpoint {endpoint['endpoint_name']} (fmops_deploy, local): {endpoint['url']}",
            f"  {endpoint['explain']}",
            f"  {traffic_line(endpoint['traffic'])}",
        ]

    def hosting_note(self, config: PipelineConfig) -> str:
        return (
            f"The local target serves on 127.0.0.1:{config.deployment.port} "
            f"(endpoint `{config.deployment.endpoint_name}`); the recommendation is for SageMaker."
        )

    def deployer(self, config: PipelineConfig) -> LocalDeployer:
        return LocalDeployer(config)


def _verified_download(config: PipelineConfig, version: str, folder: Path) -> Path:
    """The version's files in ``folder`` once every digest matches the registered one
    (``fmops.registry.digests``); returns its model folder. They are downloaded beside it and
    checked first, so that files refused never take the place a variant loads from (a variant
    restarted later by ``fmops endpoint start`` reads ``folder``)."""
    import os
    import shutil

    from fmops.registry import registration

    staging = folder.with_name(f".{folder.name}.{os.getpid()}.download")
    previous = folder.with_name(f".{folder.name}.{os.getpid()}.previous")
    for leftover in (staging, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        model_dir = registration.download_model(config, version, staging)
        registration.verify_download(config, version, model_dir, staging / "code")
        if folder.exists():
            folder.rename(previous)  # a variant of this version serves from it: keep its files
        staging.rename(folder)
    finally:
        for leftover in (staging, previous):
            shutil.rmtree(leftover, ignore_errors=True)
    return folder / model_dir.relative_to(staging)


class LocalDeployer(Deployer):
    """The router on 127.0.0.1 with blue and green variant servers; a deployment finishes within
    the call (the new variant is healthy, or refused, within deployment.health_timeout_seconds)."""

    def deploy(self, version: str) -> dict[str, Any]:
        """Serve the registered version (downloaded from the registry): the first deployment
        creates the endpoint, later ones go blue/green as ``deployment.traffic`` says, with
        bakes, smoke traffic and the alarms. A rolled back version is tagged
        ``fmops.deployment=rolled_back`` with the reason, and the error goes on."""
        from fmops.deployment.rollout import RolloutFailedError, deploy_local
        from fmops.registry import tracking

        config = self.config
        folder = state_dir() / "models" / config.registry.model_name / str(version)
        model_dir = _verified_download(config, str(version), folder)
        # The handlers registered with the model (the model kind's serving handlers).
        handlers = folder / "code" / kind_of(config).handlers
        try:
            return deploy_local(config, str(version), model_dir, handlers)
        except RolloutFailedError as err:
            if err.result.outcome == "rolled_back":
                tracking.tag_version(
                    config,
                    version,
                    {"fmops.deployment": "rolled_back", "fmops.deployment_reason": err.reason},
                )
            raise

    def rollback(self) -> dict[str, Any]:
        """Restore the endpoint's last stable routing if a deploy left it half-shifted."""
        from fmops.deployment.local import LocalEndpoint
        from fmops.deployment.rollout import rollback_to_stable
        from fmops.registry import tracking

        endpoint = LocalEndpoint(self.config.deployment.endpoint_name)
        if not endpoint.exists():
            return {"action": "none", "why": f"no endpoint {endpoint.name}"}
        result = rollback_to_stable(endpoint, note="the deploy run ended without a stable rollout")
        if result.get("action") == "restored" and result.get("version"):
            tracking.tag_version(
                self.config,
                result["version"],
                {
                    "fmops.deployment": "rolled_back",
                    "fmops.deployment_reason": "the deploy run ended mid-rollout; the rollback "
                    "task restored the stable routing",
                },
            )
        return result

    def endpoint(self) -> ServingEndpoint:
        from fmops.deployment.local import LocalEndpoint

        return LocalEndpoint(self.config.deployment.endpoint_name)
