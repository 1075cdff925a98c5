"""The ``sagemaker`` target: training and processing jobs on SageMaker, and a real-time endpoint
updated blue/green with deployment guardrails.

The work is done by the ``fmops.sagemaker`` package (settings and option policy, requests, the
offline plan, staging to S3, endpoints); this module offers it through the ``Target`` contract.
Jobs go through the job backend of the same name (``fmops.jobs.sagemaker``), with the Airflow
AWS connection of ``sagemaker.aws_conn_id``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fmops.plan_text import DAG_ID, PLAN_RUN_ID
from fmops.targets.base import Deployer, ServingEndpoint, Target

if TYPE_CHECKING:
    from fmops.config import PipelineConfig

log = logging.getLogger(__name__)

NAME = "sagemaker"
CONSOLE_PATHS = {"training": "jobs", "processing": "processing-jobs", "endpoint": "endpoints"}


def console_url(kind: str, name: str, region: str | None = None) -> str:
    """The SageMaker console page of a training or processing job or an endpoint. Without a
    region, the console opens the account's last region (the console's own default)."""
    if kind not in CONSOLE_PATHS:
        raise ValueError(f"kind {kind!r}; one of {sorted(CONSOLE_PATHS)}")
    host = (
        f"https://{region}.console.aws.amazon.com" if region else "https://console.aws.amazon.com"
    )
    query = f"?region={region}" if region else ""
    return f"{host}/sagemaker/home{query}#/{CONSOLE_PATHS[kind]}/{quote(name, safe='')}"


# A kept artifact must be what the endpoint serves; TGI cannot load fmops' int8 weights.
INT8_LLM_PROBLEM = (
    "evaluation.optimize.generative: int8 weights are served by fmops' own handlers (the local "
    "endpoint, the MLflow model), not by TGI, which a SageMaker endpoint runs: a kept int8 "
    "artifact would be registered but the eager model served. Set evaluation.optimize.generative: "
    "[] on the sagemaker target"
)


class SageMakerTarget(Target):
    name = NAME
    unbilled_note = "no billed time reported"
    # Training jobs run for minutes to hours; one DescribeTrainingJob per job every 30 s keeps
    # 256 concurrent waits near 8.5 requests a second (a throttled describe is retried by
    # botocore's retry mode, and the trigger's next poll asks again).
    job_poll_seconds = 30.0
    eager_only_note = (
        "On SageMaker the endpoint serves the training job's archive, eager weights: the "
        "Hugging Face inference image has no ONNX Runtime, and TGI does not load fmops' int8 "
        "weights. The optimized artifact is registered, not served there; the local endpoint "
        "and the MLflow model serve it."
    )

    def config_problems(self, config: PipelineConfig) -> list[str]:
        from fmops.sagemaker import hosting, images, options

        if config.sagemaker is None:
            return [f"sagemaker: {options.NO_SAGEMAKER_BLOCK}"] if config.target == NAME else []
        # the option policy, the images the installed SDK knows, what the model kind's serving
        # container can do
        problems = (
            options.policy_problems(config)
            + images.image_problems(config.sagemaker)
            + hosting.config_problems(config)
        )
        if config.target == NAME and config.evaluation.optimize.generative:
            problems.append(INT8_LLM_PROBLEM)
        return problems

    def backend_settings(self, config: PipelineConfig) -> dict[str, Any]:
        from fmops.sagemaker import options, plan

        return plan.backend_settings(options.settings_of(config))

    def stage_inputs(self, config: PipelineConfig, staged: dict[str, Any]) -> dict[str, Any]:
        from fmops.sagemaker import run

        return run.upload_inputs(config, staged)

    def plan_training(
        self,
        config: PipelineConfig,
        staged: dict[str, Any],
        dag_id: str,
        run_id: str,
        *,
        force: bool = False,
    ) -> list[dict[str, Any]]:
        from fmops.sagemaker import plan, run

        run.read_jumpstart_with_connection(config)
        return plan.plan_training(config, staged, dag_id, run_id, force=force)

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
        from fmops.sagemaker import plan

        return plan.plan_evaluation(
            config, staged, trained, dag_id, run_id, force=force, champion=champion
        )

    def plan_run(
        self,
        config: PipelineConfig,
        dag_id: str = DAG_ID,
        run_id: str = PLAN_RUN_ID,
        *,
        with_connection: bool = False,
    ) -> dict[str, Any]:
        """Everything a run would send, offline; ``with_connection``: JumpStart's model specs
        are read through the config's Airflow AWS connection (in a task), else the SDK's own
        credentials (the CLI)."""
        from fmops.sagemaker import plan, run

        if with_connection:
            run.read_jumpstart_with_connection(config)
        return plan.plan_run(config, dag_id, run_id)

    def endpoint_lines(self, endpoint: dict[str, Any]) -> list[str]:
        from fmops.sagemaker import plan

        return plan.endpoint_lines(endpoint)

    def next_instance_after_quota(
        self, plan: dict[str, Any], error: Exception
    ) -> dict[str, Any] | None:
        from fmops.sagemaker import capacity

        return capacity.next_type(plan, str(error)) if capacity.is_quota_error(error) else None

    def next_instance_after_failure(
        self, handle: dict[str, Any], description: dict[str, Any]
    ) -> dict[str, Any] | None:
        from fmops.sagemaker import capacity

        if "plan" not in handle or not capacity.is_capacity_failure(description):
            return None
        return capacity.next_type(handle["plan"], description.get("FailureReason", "")[:200])

    def artifact_problem(self, uri: str) -> str | None:
        if uri.startswith("s3://"):
            return None
        return "a SageMaker processing job cannot read it"

    def hosting_note(self, config: PipelineConfig) -> str:
        return f"The sagemaker target serves on endpoint `{config.deployment.endpoint_name}`."

    def job_console_url(self, handle: dict[str, Any]) -> str | None:
        kind, name = handle.get("kind"), handle.get("name")
        if kind not in ("training", "processing") or not name:
            return None
        return console_url(kind, name, (handle.get("settings") or {}).get("region_name"))

    def endpoint_console_url(self, config: PipelineConfig) -> str | None:
        if config.sagemaker is None:
            return None
        return console_url("endpoint", config.deployment.endpoint_name, config.sagemaker.region)

    def deployer(self, config: PipelineConfig) -> SageMakerDeployer:
        return SageMakerDeployer(config)


class SageMakerDeployer(Deployer):
    """CreateEndpoint, or UpdateEndpoint blue/green with the rollback alarms; the wait runs in
    the triggerer (``start`` / ``finish``), or in the call (``deploy``). Before anything is
    created, the version's ``model.tar.gz`` is read from S3 and must be the archive it was
    registered with (``ArtifactDigestError`` naming the files that differ: never retried)."""

    waits = True

    def start(self, version: str) -> dict[str, Any]:
        """Start the deployment; ``{"wait": ...}`` carries the handle
        (``start_deployment``'s), the version, the config (to record the outcome on the model
        version) and the AWS connection and region to watch it with. An endpoint that already
        serves the version is left as it is: ``{"result": ...}``."""
        from fmops.sagemaker import endpoint_deploy

        plan, settings, aws, registered = _deployment(self.config, version)
        handle = endpoint_deploy.start_deployment(plan, registered=registered, **aws)
        wait = {
            "target": NAME,
            "version": str(version),
            "config": self.config.model_dump(mode="json"),
            "aws_conn_id": settings.aws_conn_id,
            "region_name": settings.region,
        }
        return _started(wait, handle, aws["autoscaling"])

    def finish(
        self, wait: dict[str, Any], verdict: dict[str, Any], description: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Conclude a wait that ``start`` (or an earlier ``finish``) began, given how it ended
        (``endpoint_watch.Verdict`` as a dict, and the last DescribeEndpoint, None once a deleted
        endpoint is gone). Returns ``{"result": ...}`` or ``{"wait": ...}``: the next attempt of a
        capacity fallback, to wait for in turn. Raises ``DeploymentFailedError`` for a deployment
        that failed otherwise, was rolled back or timed out, ``NoCapacityError`` when no instance
        type had capacity."""
        from fmops.sagemaker import endpoint_deploy, endpoint_watch

        handle = wait["deployment"]
        made = endpoint_watch.clients(wait["aws_conn_id"], wait["region_name"])
        aws = {
            "sagemaker": made.sagemaker,
            "cloudwatch": made.cloudwatch,
            "autoscaling": made.autoscaling,
        }
        ended = endpoint_watch.Verdict.from_dict(verdict)
        if handle["action"] == "deleting":  # a failed endpoint, deleted to create it again
            if ended.state != "succeeded":
                raise ended.error(handle["endpoint_name"])
            log.info("%s", ended.message)
            return _started(
                wait, endpoint_deploy.start_deployment(handle["plan"], **aws), made.autoscaling
            )
        if ended.state != "succeeded":  # the next instance type where SageMaker had no capacity
            following = endpoint_deploy.fall_back(handle, ended, description, **aws)
            return _started(wait, following, made.autoscaling)
        log.info("%s", ended.message)
        result = endpoint_deploy.finish_deployment(
            handle, description, autoscaling=made.autoscaling
        )
        return {"result": _concluded(wait, result)}

    def deploy(self, version: str) -> dict[str, Any]:
        """Create the endpoint, or update it blue/green to this version, and wait until it
        serves the new config (a rollback is a failure: ``DeploymentFailedError``), falling back
        to the next instance type where SageMaker has no capacity; records where it serves on
        the model version."""
        from fmops.deployment.flow import record_endpoint
        from fmops.sagemaker import endpoint_deploy

        plan, _, aws, registered = _deployment(self.config, version)
        deployed = _deployed(endpoint_deploy.deploy(plan, registered=registered, **aws), version)
        record_endpoint(self.config, deployed)
        return deployed

    def rollback(self) -> dict[str, Any]:
        return {"action": "none", "why": "SageMaker rolls a failed blue/green update back"}

    def endpoint(self) -> ServingEndpoint:
        from fmops.sagemaker import options
        from fmops.sagemaker.runtime import SageMakerEndpoint

        settings = options.settings_of(self.config)
        return SageMakerEndpoint(
            self.config.deployment.endpoint_name, settings.aws_conn_id, settings.region
        )


def _started(wait: dict[str, Any], handle: dict[str, Any], autoscaling: Any) -> dict[str, Any]:
    """``{"wait": ...}`` for a started deployment, ``{"result": ...}`` for one with nothing to
    wait for (the endpoint serves the version already)."""
    from fmops.sagemaker import endpoint_deploy

    if handle["action"] != "unchanged":
        return {"wait": {**wait, "deployment": handle}}
    result = endpoint_deploy.finish_deployment(handle, None, autoscaling=autoscaling)
    return {"result": _concluded(wait, result)}


def _concluded(wait: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The deploy task's result, recorded on the model version of the wait's config."""
    from fmops.config import PipelineConfig
    from fmops.deployment.flow import ENDPOINT_TAGS, record_endpoint

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


def _deployment(
    config: PipelineConfig, version: str
) -> tuple[dict[str, Any], Any, dict[str, Any], dict[str, Any]]:
    """The endpoint plan of a registered version, the config's SageMaker settings, the clients
    a deployment calls (keyword arguments of ``endpoint_deploy.start_deployment`` and
    ``deploy``), and the version's registered digests, which its model archive must match
    before anything is created (``ArtifactDigestError`` here for a version without them)."""
    from fmops.jobs.specs import base_model_parameters
    from fmops.registry import registration, tracking
    from fmops.sagemaker import endpoint_plan, endpoint_watch, hosting, jumpstart, options, run

    settings = options.settings_of(config)
    name = config.registry.model_name
    tags = tracking.client(config).get_model_version(name, str(version)).tags
    artifacts = tags.get("fmops.model_artifacts", "")
    if not artifacts.startswith("s3://"):
        raise LookupError(
            f"{name} version {version} has no model.tar.gz in S3 (fmops.model_artifacts="
            f"{artifacts!r}): only versions that fmops_finetune trained on the sagemaker target "
            "can be served by SageMaker"
        )
    registered = registration.registered_manifest(config, str(version))
    candidate = config.candidate(tags["fmops.candidate"])
    served_by = None
    if hosting.family_of(config, candidate) == hosting.JUMPSTART:
        run.read_jumpstart_with_connection(config)  # JumpStart's specs, with the connection
        model = jumpstart.resolve(candidate.base_model, settings.region)
        served_by = jumpstart.resolve_hosting(model, settings.region)
    plan = endpoint_plan.plan_deployment(
        config,
        model_version=str(version),
        model_data_url=artifacts,
        parameters=base_model_parameters(candidate),
        tags={"fmops:pipeline": config.pipeline, "fmops:model_version": str(version)},
        candidate=candidate,
        jumpstart_hosting=served_by,
        efficiency=json.loads(tags.get(registration.PROFILE_TAG) or "{}"),
    )
    for note in plan["notes"]:
        log.warning("%s", note)
    log.info("deploying %s version %s: %s", name, version, plan["instance"]["explain"])
    made = endpoint_watch.clients(settings.aws_conn_id, settings.region)
    aws = {
        "sagemaker": made.sagemaker,
        "cloudwatch": made.cloudwatch,
        "autoscaling": made.autoscaling,
        "s3": run.s3_client(config),
    }
    return plan, settings, aws, registered


def _deployed(result: dict[str, Any], version: str) -> dict[str, Any]:
    """The deploy task's result (its XCom) from ``endpoint_deploy.finish_deployment``'s."""
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
