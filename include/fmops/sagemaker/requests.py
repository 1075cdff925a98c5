"""CreateTrainingJob and CreateProcessingJob requests for the sagemaker target.

Each starts from the local target's request (``fmops.jobs.specs``: the same hyperparameters,
channels, metric definitions, evaluation arguments and tags) and puts in what only SageMaker
needs: the image, the execution role, S3 URIs, and the fields the options decide
(``fmops.sagemaker.options``). So both targets run the same job; only where it runs differs.

The code reaches the training container as the SDK's script mode does it: the hyperparameters
``sagemaker_program`` and ``sagemaker_submit_directory``. With network isolation the container
cannot download from S3, so (as the SDK does) the archive arrives as the input channel ``code``
and ``sagemaker_submit_directory`` names its path in the container; without it,
``sagemaker_submit_directory`` is the archive's S3 URI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fmops.jobs import specs
from fmops.jobs.local import JOB_ENV
from fmops.sagemaker import options
from fmops.sagemaker.images import image_uri
from fmops.sagemaker.staging import SOURCEDIR, Layout, SourceBundle

if TYPE_CHECKING:
    from fmops.catalog import Catalog
    from fmops.config import Candidate, PipelineConfig

CODE_CHANNEL = "code"
CODE_CHANNEL_PATH = f"/opt/ml/input/data/{CODE_CHANNEL}/{SOURCEDIR}"
ENTRY_POINT = "train.py"


def _output_key(config: PipelineConfig) -> dict[str, str]:
    key = options.settings_of(config).kms.output_key_id
    return {"KmsKeyId": key} if key else {}


def training_request(
    config: PipelineConfig,
    candidate: Candidate,
    *,
    instance_type: str,
    layout: Layout,
    bundle: SourceBundle,
    staged: dict[str, Any],
    base_model_uri: str,
    tags: dict[str, str],
    job_name: str,
    catalog: Catalog | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The CreateTrainingJob request (without ``TrainingJobName``) and notes on its options.

    ``staged`` holds the S3 URIs of the train and validation channels; ``job_name`` is the base
    name of the job, which keys its checkpoints.
    """
    settings = options.settings_of(config)
    local = specs.training_request(config, candidate, staged, tags)
    isolated = settings.network_isolation
    hyperparameters = {
        **local["HyperParameters"],
        "sagemaker_program": ENTRY_POINT,
        "sagemaker_submit_directory": (
            CODE_CHANNEL_PATH if isolated else layout.sourcedir_uri(bundle)
        ),
        "sagemaker_region": settings.region,
    }
    if settings.instance_count > 1:
        # The framework container then starts train.py under torchrun on every instance.
        hyperparameters["sagemaker_torch_distributed_enabled"] = "true"
    channels = [
        specs.channel(c["ChannelName"], base_model_uri) if c["ChannelName"] == "base_model" else c
        for c in local["InputDataConfig"]
    ]
    if isolated:
        channels.append(specs.channel(CODE_CHANNEL, layout.sourcedir_uri(bundle)))
    decided, notes = options.training_options(
        settings,
        instance_type=instance_type,
        max_runtime_seconds=config.training.max_runtime_seconds,
        checkpoint_uri=layout.checkpoint_uri(job_name),
        catalog=catalog,
    )
    request = {
        "AlgorithmSpecification": {
            **local["AlgorithmSpecification"],
            "TrainingImage": image_uri("training", settings, instance_type),
        },
        "RoleArn": settings.role_arn,
        "HyperParameters": hyperparameters,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": layout.training_output(), **_output_key(config)},
        "Environment": dict(JOB_ENV),
        "Tags": local["Tags"],
        **decided,
    }
    return request, notes


def evaluation_request(
    config: PipelineConfig,
    *,
    instance_type: str,
    layout: Layout,
    bundle: SourceBundle,
    staged: dict[str, Any],
    model_uri: str,
    zero_shot: bool,
    output_uri: str,
    tags: dict[str, str],
    catalog: Catalog | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The CreateProcessingJob request (without ``ProcessingJobName``) that runs evaluate.py."""
    settings = options.settings_of(config)
    local = specs.evaluation_request(
        config, model_uri, staged, tags, zero_shot=zero_shot, output_uri=output_uri
    )
    inputs = []
    for item in local["ProcessingInputs"]:
        if item["InputName"] == "code":
            item = {**item, "S3Input": {**item["S3Input"], "S3Uri": layout.source_uri(bundle)}}
        inputs.append(item)
    decided, notes = options.processing_options(
        settings, instance_type=instance_type, catalog=catalog
    )
    request = {
        "ProcessingInputs": inputs,
        "ProcessingOutputConfig": {**local["ProcessingOutputConfig"], **_output_key(config)},
        "StoppingCondition": local["StoppingCondition"],
        "AppSpecification": {
            **local["AppSpecification"],
            "ImageUri": image_uri("inference", settings, instance_type),
        },
        "Environment": dict(JOB_ENV),
        "RoleArn": settings.role_arn,
        "Tags": local["Tags"],
        **decided,
    }
    return request, notes
