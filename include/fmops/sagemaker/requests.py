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

A JumpStart candidate's request (``jumpstart_training_request``) is built as the SDK's
``JumpStartEstimator`` builds it, from what ``fmops.sagemaker.jumpstart`` looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fmops.jobs import specs
from fmops.jobs.specs import JOB_ENV, PlanError
from fmops.sagemaker import jumpstart, options
from fmops.sagemaker.images import image_uri
from fmops.sagemaker.staging import SOURCEDIR, Layout, SourceBundle

if TYPE_CHECKING:
    from fmops.catalog import Catalog
    from fmops.config import Candidate, PipelineConfig
    from fmops.sagemaker.jumpstart import JumpStartModel

CODE_CHANNEL = "code"
CODE_CHANNEL_PATH = f"/opt/ml/input/data/{CODE_CHANNEL}/{SOURCEDIR}"
ENTRY_POINT = "train.py"


def _output_key(config: PipelineConfig) -> dict[str, str]:
    key = options.settings_of(config).kms.output_key_id
    return {"KmsKeyId": key} if key else {}


def _training_job(
    config: PipelineConfig,
    *,
    algorithm: dict[str, Any],
    hyperparameters: dict[str, str],
    channels: list[dict[str, Any]],
    instance_type: str,
    layout: Layout,
    job_name: str,
    tags: list[dict[str, str]],
    catalog: Catalog | None,
) -> tuple[dict[str, Any], list[str]]:
    """What every training request of the target shares: the region and distribution
    hyperparameters, the options of the policy, the role, outputs, environment and tags."""
    settings = options.settings_of(config)
    hyperparameters = {**hyperparameters, "sagemaker_region": settings.region}
    if settings.instance_count > 1:
        # The framework container then starts the entry point under torchrun on every instance.
        hyperparameters["sagemaker_torch_distributed_enabled"] = "true"
    decided, notes = options.training_options(
        settings,
        instance_type=instance_type,
        max_runtime_seconds=config.training.max_runtime_seconds,
        checkpoint_uri=layout.checkpoint_uri(job_name),
        catalog=catalog,
    )
    request = {
        "AlgorithmSpecification": algorithm,
        "RoleArn": settings.role_arn,
        "HyperParameters": hyperparameters,
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": layout.training_output(), **_output_key(config)},
        "Environment": dict(JOB_ENV),
        "Tags": tags,
        **decided,
    }
    return request, notes


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
    local = specs.training_request(config, candidate, staged, tags, base_model_uri=base_model_uri)
    isolated = settings.network_isolation
    hyperparameters = {
        **local["HyperParameters"],
        "sagemaker_program": ENTRY_POINT,
        "sagemaker_submit_directory": (
            CODE_CHANNEL_PATH if isolated else layout.sourcedir_uri(bundle)
        ),
    }
    channels = list(local["InputDataConfig"])
    if isolated:
        channels.append(specs.channel(CODE_CHANNEL, layout.sourcedir_uri(bundle)))
    return _training_job(
        config,
        algorithm={
            **local["AlgorithmSpecification"],
            "TrainingImage": image_uri("training", settings, instance_type),
        },
        hyperparameters=hyperparameters,
        channels=channels,
        instance_type=instance_type,
        layout=layout,
        job_name=job_name,
        tags=local["Tags"],
        catalog=catalog,
    )


def jumpstart_training_request(
    config: PipelineConfig,
    candidate: Candidate,
    model: JumpStartModel,
    *,
    instance_type: str,
    layout: Layout,
    staged: dict[str, Any],
    tags: dict[str, str],
    job_name: str,
    catalog: Catalog | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The CreateTrainingJob request of a JumpStart candidate, as ``JumpStartEstimator`` builds
    it: JumpStart's image, script and weights; its hyperparameters over their defaults; the
    data as its ``training`` and ``validation`` channels. The options are fmops' policy."""
    settings = options.settings_of(config)
    isolated = settings.network_isolation
    if model.network_isolation and not isolated:
        raise PlanError(
            f"JumpStart model {model.model_id} {model.version} trains with network isolation "
            "only: set sagemaker.network_isolation: true"
        )
    explicit = {
        name: str(getattr(candidate.hyperparameters, name))
        for name in candidate.hyperparameters.model_fields_set
    }
    hyperparameters = jumpstart.hyperparameters_for(
        model, explicit, {k: str(v) for k, v in candidate.jumpstart_hyperparameters.items()}
    )
    jumpstart.validate_hyperparameters(model, settings.region, hyperparameters)
    channels = [
        specs.channel(jumpstart.TRAINING_CHANNEL, staged["train_uri"]),
        specs.channel(jumpstart.VALIDATION_CHANNEL, staged["validation_uri"]),
    ]
    if isolated:
        # As the SDK does with network isolation: the weights and the script arrive as channels,
        # and sagemaker_submit_directory keeps JumpStart's default path inside the container.
        channels += [
            specs.channel(jumpstart.MODEL_CHANNEL, model.model_uri),
            specs.channel(jumpstart.CODE_CHANNEL, model.script_uri),
        ]
    else:
        hyperparameters["sagemaker_submit_directory"] = model.script_uri
        channels.append(specs.channel(jumpstart.MODEL_CHANNEL, model.model_uri))
    algorithm = {"TrainingImage": model.image(instance_type), "TrainingInputMode": "File"}
    if model.metric_definitions:
        algorithm["MetricDefinitions"] = model.metric_definitions
    request, notes = _training_job(
        config,
        algorithm=algorithm,
        hyperparameters=hyperparameters,
        channels=channels,
        instance_type=instance_type,
        layout=layout,
        job_name=job_name,
        tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        catalog=catalog,
    )
    return request, [*model.notes(), *notes]


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
