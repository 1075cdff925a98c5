"""The sagemaker target's options as one policy: which combinations are refused, and which
request fields each setting becomes.

Rules (SageMaker's own, checked before anything is sent; each refusal says why and the fix):

- managed spot training needs a ``CheckpointConfig`` (a reclaimed instance resumes from it) and
  ``MaxWaitTimeInSeconds`` >= ``MaxRuntimeInSeconds`` (the wait includes the run);
  ``MaxWaitTimeInSeconds`` without spot is refused by the API;
- warm pools (``ResourceConfig.KeepAlivePeriodInSeconds``, at most 3600 s) never with spot;
- ``RetryStrategy.MaximumRetryAttempts`` from 1 to 30 (retries on internal errors; the
  ``StoppingCondition`` bounds the whole job, retries included);
- network isolation on by default: the containers reach nothing, the code and the base model
  arrive as input channels;
- a ``VpcConfig`` needs both subnets and security groups;
- a job on more than one instance encrypts the traffic between its containers;
- the output KMS key on every output, the volume key on the jobs' EBS volumes except on instance
  types with local NVMe storage (the catalog's ``nvme`` flag): SageMaker rejects
  ``VolumeKmsKeyId`` there, and the instance store is encrypted by the hardware.

``policy_problems`` checks a config (``fmops.targets.sagemaker`` runs it, with the image check of
``fmops.sagemaker.images``, whenever a config loads);
``request_problems`` checks a built request, so a request edited or built elsewhere meets the
same rules. Both are pure functions.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from fmops.jobs.specs import PlanError

if TYPE_CHECKING:
    from fmops.catalog import Catalog
    from fmops.config import PipelineConfig
    from fmops.sagemaker.settings import SageMakerSettings

MAX_KEEP_ALIVE_SECONDS = 3600
MAX_RETRY_ATTEMPTS = 30
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
NO_SAGEMAKER_BLOCK = (
    "target sagemaker needs a `sagemaker:` block in the config: add at least "
    "sagemaker: {region: <aws region>, role_arn: arn:aws:iam::<account>:role/<execution role>, "
    "bucket: <s3 bucket>}; credentials come from the Airflow connection aws_default. "
    "include/configs/sagemaker.example.yaml documents every key"
)
NVME_NOTE = (
    "VolumeKmsKeyId left out on {instance}: it has local NVMe instance storage, which SageMaker "
    "encrypts with a hardware key and on which it rejects VolumeKmsKeyId"
)
# CPU families with local NVMe storage end in "d" (m5d, c5d, r5d, m6id); GPU types come from the
# catalog's nvme flag.
_NVME_FAMILY = re.compile(r"^[a-z]+\d+[a-z]*d[a-z]*$")


class PolicyError(PlanError):
    """The sagemaker options contradict each other or SageMaker's rules; says why and the fix."""


def settings_of(config: PipelineConfig) -> SageMakerSettings:
    """The config's sagemaker block; a config without one cannot target SageMaker."""
    if config.sagemaker is None:
        raise PolicyError(NO_SAGEMAKER_BLOCK)
    return config.sagemaker


def max_wait_seconds(settings: SageMakerSettings, max_runtime_seconds: int) -> int:
    """The spot wait: as configured, else twice the runtime (capacity may take a while)."""
    return settings.max_wait_seconds or 2 * max_runtime_seconds


def policy_problems(config: PipelineConfig) -> list[str]:
    """Every way the config's sagemaker options contradict each other, one line each."""
    settings = config.sagemaker
    if settings is None:  # whether the target needs one is the target's (fmops.targets.sagemaker)
        return []
    problems = []
    runtime = config.training.max_runtime_seconds
    if settings.spot:
        wait = max_wait_seconds(settings, runtime)
        if wait < runtime:
            problems.append(
                f"sagemaker.max_wait_seconds: {wait} is below training.max_runtime_seconds "
                f"({runtime}); managed spot training needs MaxWaitTimeInSeconds >= "
                f"MaxRuntimeInSeconds (the wait includes the run): set max_wait_seconds to at "
                f"least {runtime}, or leave it out for twice the runtime"
            )
        if settings.keep_alive_seconds:
            problems.append(
                f"sagemaker.keep_alive_seconds: warm pools ({settings.keep_alive_seconds} s) "
                "cannot be combined with managed spot training (sagemaker.spot: true), SageMaker "
                "refuses KeepAlivePeriodInSeconds on spot jobs: set keep_alive_seconds: 0 or "
                "spot: false"
            )
    elif settings.max_wait_seconds is not None:
        problems.append(
            f"sagemaker.max_wait_seconds: {settings.max_wait_seconds} applies to managed spot "
            "training only (SageMaker refuses MaxWaitTimeInSeconds without it): set spot: true "
            "or remove max_wait_seconds"
        )
    vpc = settings.vpc
    if bool(vpc.subnets) != bool(vpc.security_group_ids):
        given, missing = (
            ("subnets", "security_group_ids") if vpc.subnets else ("security_group_ids", "subnets")
        )
        problems.append(
            f"sagemaker.vpc: {given} without {missing}; a VpcConfig needs both: add {missing}, "
            f"or remove {given} to run outside a VPC"
        )
    pinned = config.training.pinned_instance_type
    allowed = settings.allowed_instance_types
    if pinned and allowed and pinned not in allowed:
        problems.append(
            f"training.instance_type: {pinned} is pinned but not in "
            f"sagemaker.allowed_instance_types {allowed}: pin one of those, add {pinned} to the "
            "list, or set instance_type: auto"
        )
    return problems


def check_policy(config: PipelineConfig) -> SageMakerSettings:
    """The sagemaker block, if it is there and consistent; else PolicyError with every reason."""
    settings = settings_of(config)
    problems = policy_problems(config)
    if problems:
        raise PolicyError("; ".join(problems))
    return settings


def has_nvme(instance_type: str, catalog: Catalog | None = None) -> bool:
    """Whether the type has local NVMe instance storage (no VolumeKmsKeyId there)."""
    if catalog is not None and instance_type in catalog:
        return catalog.get(instance_type).nvme
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    return bool(_NVME_FAMILY.match(family))


def volume_key(
    settings: SageMakerSettings, instance_type: str, catalog: Catalog | None, notes: list[str]
) -> dict[str, str]:
    """``{"VolumeKmsKeyId": key}`` where the instance type allows it, else a note why not."""
    key = settings.kms.volume_key_id
    if not key:
        return {}
    if has_nvme(instance_type, catalog):
        notes.append(NVME_NOTE.format(instance=instance_type))
        return {}
    return {"VolumeKmsKeyId": key}


def vpc_config(settings: SageMakerSettings) -> dict[str, Any]:
    vpc = settings.vpc
    if not vpc.subnets:
        return {}
    return {
        "VpcConfig": {
            "SecurityGroupIds": list(vpc.security_group_ids),
            "Subnets": list(vpc.subnets),
        }
    }


def training_options(
    settings: SageMakerSettings,
    *,
    instance_type: str,
    max_runtime_seconds: int,
    checkpoint_uri: str,
    catalog: Catalog | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The CreateTrainingJob fields the options decide, and notes on what they imply.

    Returns top-level fields; ``ResourceConfig`` and ``StoppingCondition`` are complete.
    """
    notes: list[str] = []
    count = settings.instance_count
    resources: dict[str, Any] = {
        "InstanceType": instance_type,
        "InstanceCount": count,
        "VolumeSizeInGB": settings.volume_size_gb,
        **volume_key(settings, instance_type, catalog, notes),
    }
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": max_runtime_seconds}
    fields: dict[str, Any] = {
        "EnableNetworkIsolation": settings.network_isolation,
        # Always: train.py resumes from it, after a spot interruption, a retry or a new attempt.
        "CheckpointConfig": {"S3Uri": checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH},
        **vpc_config(settings),
    }
    if settings.spot:
        fields["EnableManagedSpotTraining"] = True
        stopping["MaxWaitTimeInSeconds"] = max_wait_seconds(settings, max_runtime_seconds)
        notes.append(
            f"managed spot: waits up to {stopping['MaxWaitTimeInSeconds']} s for capacity and "
            "run together; an interrupted job resumes from its checkpoints"
        )
    if settings.keep_alive_seconds:
        resources["KeepAlivePeriodInSeconds"] = settings.keep_alive_seconds
        notes.append(
            f"warm pool: the instances stay up (and billed) {settings.keep_alive_seconds} s after "
            "the job, for the next job with the same configuration"
        )
    if settings.retry_attempts:
        fields["RetryStrategy"] = {"MaximumRetryAttempts": settings.retry_attempts}
    if count > 1:
        fields["EnableInterContainerTrafficEncryption"] = True
        notes.append(
            f"{count} instances: data-parallel replicas under torchrun, traffic between the "
            "containers encrypted"
        )
    if not settings.network_isolation:
        notes.append("network isolation is off: the job containers can reach the internet")
    return {"ResourceConfig": resources, "StoppingCondition": stopping, **fields}, notes


def processing_options(
    settings: SageMakerSettings, *, instance_type: str, catalog: Catalog | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The CreateProcessingJob fields the options decide: resources and network."""
    notes: list[str] = []
    cluster = {
        "InstanceCount": 1,
        "InstanceType": instance_type,
        "VolumeSizeInGB": settings.volume_size_gb,
        **volume_key(settings, instance_type, catalog, notes),
    }
    network: dict[str, Any] = {
        "EnableNetworkIsolation": settings.network_isolation,
        **vpc_config(settings),
    }
    return {
        "ProcessingResources": {"ClusterConfig": cluster},
        "NetworkConfig": network,
    }, notes


def request_problems(
    operation: str, request: dict[str, Any], catalog: Catalog | None = None
) -> list[str]:
    """Where a CreateTrainingJob or CreateProcessingJob request breaks the policy."""
    problems = []
    if operation == "CreateTrainingJob":
        resources = request.get("ResourceConfig", {})
        stopping = request.get("StoppingCondition", {})
        instance = resources.get("InstanceType", "")
        spot = bool(request.get("EnableManagedSpotTraining"))
        runtime, wait = stopping.get("MaxRuntimeInSeconds"), stopping.get("MaxWaitTimeInSeconds")
        if spot and not request.get("CheckpointConfig", {}).get("S3Uri"):
            problems.append(
                "EnableManagedSpotTraining needs CheckpointConfig.S3Uri: a reclaimed spot "
                "instance resumes from the checkpoints there"
            )
        if spot and (wait is None or runtime is None or wait < runtime):
            problems.append(
                f"EnableManagedSpotTraining needs StoppingCondition.MaxWaitTimeInSeconds ({wait}) "
                f">= MaxRuntimeInSeconds ({runtime})"
            )
        if not spot and wait is not None:
            problems.append(
                "StoppingCondition.MaxWaitTimeInSeconds is for managed spot training only: "
                "set EnableManagedSpotTraining or remove it"
            )
        keep_alive = resources.get("KeepAlivePeriodInSeconds")
        if keep_alive and spot:
            problems.append(
                "ResourceConfig.KeepAlivePeriodInSeconds (warm pools) cannot be combined with "
                "EnableManagedSpotTraining"
            )
        if keep_alive and keep_alive > MAX_KEEP_ALIVE_SECONDS:
            problems.append(
                f"ResourceConfig.KeepAlivePeriodInSeconds is {keep_alive}; at most "
                f"{MAX_KEEP_ALIVE_SECONDS}"
            )
        retries = request.get("RetryStrategy", {}).get("MaximumRetryAttempts")
        if retries is not None and not 1 <= retries <= MAX_RETRY_ATTEMPTS:
            problems.append(
                f"RetryStrategy.MaximumRetryAttempts is {retries}; allowed 1 to "
                f"{MAX_RETRY_ATTEMPTS} (leave RetryStrategy out for none)"
            )
        count = resources.get("InstanceCount", 1)
        encrypted = request.get("EnableInterContainerTrafficEncryption")
    elif operation == "CreateProcessingJob":
        resources = request.get("ProcessingResources", {}).get("ClusterConfig", {})
        instance = resources.get("InstanceType", "")
        count = resources.get("InstanceCount", 1)
        encrypted = request.get("NetworkConfig", {}).get("EnableInterContainerTrafficEncryption")
    else:
        raise ValueError(f"no policy for {operation}; CreateTrainingJob or CreateProcessingJob")
    if count > 1 and not encrypted:
        problems.append(
            f"InstanceCount {count}: a multi-instance job encrypts the traffic between its "
            "containers; set EnableInterContainerTrafficEncryption"
        )
    if resources.get("VolumeKmsKeyId") and has_nvme(instance, catalog):
        problems.append(
            f"VolumeKmsKeyId on {instance}: it has local NVMe instance storage, and SageMaker "
            "rejects VolumeKmsKeyId there; leave VolumeKmsKeyId out for this type"
        )
    return problems


def check_request(operation: str, request: dict[str, Any], catalog: Catalog | None = None) -> None:
    problems = request_problems(operation, request, catalog)
    if problems:
        raise PolicyError(f"{operation} request refused: " + "; ".join(problems))
