"""JumpStart base models: a candidate's ``base_model: jumpstart:<model id>[@<version>]``.

Such a candidate trains with JumpStart's own transfer-learning script and weights, not with
fmops' train.py: the plan resolves, with the sagemaker SDK's JumpStart lookups (the same ones
``JumpStartEstimator`` makes), the training image for the region and instance type, the script
and pretrained-weights archives in JumpStart's S3 bucket, the default hyperparameters (the
algorithm's and the container's ``sagemaker_program`` / ``sagemaker_submit_directory``), the
metric definitions and the instance types the model supports.

The lookups read JumpStart's model specs from its content bucket in S3 (``jumpstart-cache-prod-
<region>``), so planning a JumpStart candidate is the one part of ``fmops plan`` that reads
from AWS; nothing is written. The SDK honours ``AWS_JUMPSTART_CONTENT_BUCKET_OVERRIDE``, which is
how the tests serve a spec from a moto bucket. The S3 client comes from the Airflow AWS
connection when one is given, so the lookups use the same credentials and endpoint as the rest
of the run.

Serving a fine-tuned JumpStart generative model (``resolve_hosting``): the inference image,
environment and instance types its spec names per instance type, and its deploy timeouts, the
lookups ``JumpStartModel.deploy`` makes; the model data is the training job's ``model.tar.gz``.

What fmops does not do for a JumpStart model: count its parameters offline (the config may give
``parameters`` for the memory check; otherwise the model's own list of supported training types
is the check), check the token lengths of the data with its tokenizer, or evaluate its untuned
weights as the zero-shot baseline. Its training channels are ``training`` and ``validation``
with fmops' staged CSV files; each JumpStart script documents the data format it expects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fmops.base_models import ANY_VERSION, JUMPSTART_PREFIX, parse_jumpstart
from fmops.jobs.specs import PlanError

log = logging.getLogger(__name__)

# JumpStart's channel names (JumpStartEstimator.fit): the data, and with network isolation the
# pretrained weights and the script archive.
TRAINING_CHANNEL = "training"
VALIDATION_CHANNEL = "validation"
MODEL_CHANNEL = "model"
CODE_CHANNEL = "code"


@dataclass(frozen=True)
class JumpStartModel:
    """What the SDK's JumpStart lookups say about one model version, for training."""

    base_model: str
    model_id: str
    version: str
    requested_version: str
    training_types: tuple[str, ...]
    default_training_type: str | None
    hyperparameters: dict[str, str]
    algorithm_hyperparameters: tuple[str, ...]
    metric_definitions: list[dict[str, str]]
    script_uri: str
    model_uri: str
    network_isolation: bool
    images: dict[str, str] = field(default_factory=dict)

    def image(self, instance_type: str) -> str:
        if instance_type not in self.images:
            raise PlanError(
                f"JumpStart model {self.model_id} {self.version} has no training image for "
                f"{instance_type}: use one of {', '.join(self.training_types)}"
            )
        return self.images[instance_type]

    def notes(self) -> list[str]:
        notes = [
            f"JumpStart model {self.model_id} {self.version} trains with JumpStart's script "
            f"{self.hyperparameters.get('sagemaker_program', '?')} ({self.script_uri}) on the "
            f"weights {self.model_uri}; its data channels get fmops' staged CSV files: check the "
            "format its script expects"
        ]
        if self.requested_version == ANY_VERSION:
            notes.append(
                f"version * resolved to {self.version}: pin it (base_model: "
                f"{JUMPSTART_PREFIX}{self.model_id}@{self.version}) so a new JumpStart release "
                "cannot change the run"
            )
        return notes

    def as_record(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "version": self.version,
            "script_uri": self.script_uri,
            "model_uri": self.model_uri,
            "training_types": list(self.training_types),
            "default_training_type": self.default_training_type,
        }


@dataclass(frozen=True)
class JumpStartHosting:
    """What the SDK's JumpStart lookups say about serving one model version."""

    model_id: str
    version: str
    instance_types: tuple[str, ...]  # supported for inference, with an image in the region
    default_instance_type: str | None
    images: dict[str, str]  # instance type -> inference image
    environments: dict[str, dict[str, str]]  # instance type -> the container's environment
    network_isolation: bool
    uses_script: bool  # hosting_use_script_uri: it serves with JumpStart's inference script
    download_timeout_seconds: int | None  # the spec's deploy_kwargs
    startup_timeout_seconds: int | None


def _sdk_error(base_model: str, region: str, err: Exception) -> PlanError:
    return PlanError(
        f"base_model {base_model}: the JumpStart lookup in {region} failed: {err}. Check the "
        "model id and version in JumpStart's model list for the region"
    )


_SESSION: dict[str, Any] = {}  # region -> the SDK session whose S3 client the lookups use


def use_s3_client(s3: Any, region: str) -> None:
    """Make the SDK's JumpStart lookups in ``region`` read with ``s3`` (e.g. the Airflow
    connection's client) instead of the default credential chain's."""
    import boto3
    from sagemaker.core.helper.session_helper import Session

    session = Session(boto_session=boto3.Session(region_name=region))
    session.s3_client = s3  # what the SDK's JumpStart cache reads specs with
    _SESSION[region] = session


def _session_kwargs(region: str) -> dict[str, Any]:
    session = _SESSION.get(region)
    return {"sagemaker_session": session} if session else {}


def resolve(base_model: str, region: str) -> JumpStartModel:
    """Look the model up with the sagemaker SDK; a model JumpStart lacks is a PlanError."""
    from sagemaker.core import (
        hyperparameters,
        image_uris,
        instance_types,
        metric_definitions,
        model_uris,
        script_uris,
    )
    from sagemaker.core.jumpstart import accessors

    model_id, requested = parse_jumpstart(base_model)
    session = _session_kwargs(region)
    where = {"region": region, "model_id": model_id, "model_version": requested, **session}
    try:
        s3 = {"s3_client": session["sagemaker_session"].s3_client} if session else {}
        specs = accessors.JumpStartModelsAccessor.get_model_specs(
            region=region, model_id=model_id, version=requested, **s3
        )
        if not specs.training_supported:
            raise PlanError(
                f"base_model {base_model}: JumpStart model {model_id} {specs.version} cannot be "
                "fine-tuned (training_supported is false): choose another model"
            )
        types = tuple(instance_types.retrieve(scope="training", **where))
        defaults = hyperparameters.retrieve_default(include_container_hyperparameters=True, **where)
        algorithm = hyperparameters.retrieve_default(**where)
        images = {}
        for instance_type in types:
            try:
                images[instance_type] = image_uris.retrieve(
                    framework=None, image_scope="training", instance_type=instance_type, **where
                )
            except ValueError:
                continue  # no image for that type in this region: not offered
        resolved = JumpStartModel(
            base_model=base_model,
            model_id=model_id,
            version=specs.version,
            requested_version=requested,
            training_types=tuple(t for t in types if t in images),
            default_training_type=specs.default_training_instance_type,
            hyperparameters={k: str(v) for k, v in defaults.items()},
            algorithm_hyperparameters=tuple(algorithm),
            metric_definitions=list(metric_definitions.retrieve_default(**where) or []),
            script_uri=script_uris.retrieve(script_scope="training", **where),
            model_uri=model_uris.retrieve(model_scope="training", **where),
            network_isolation=bool(getattr(specs, "training_enable_network_isolation", False)),
            images=images,
        )
    except PlanError:
        raise
    except (KeyError, ValueError) as err:
        raise _sdk_error(base_model, region, err) from None
    except Exception as err:  # botocore's errors for a missing spec object or bucket
        if type(err).__module__.startswith("botocore"):
            raise _sdk_error(base_model, region, err) from None
        raise
    log.info(
        "JumpStart %s: version %s, training types %s, script %s",
        model_id,
        resolved.version,
        ", ".join(resolved.training_types),
        resolved.script_uri,
    )
    return resolved


def resolve_hosting(model: JumpStartModel, region: str) -> JumpStartHosting:
    """How JumpStart serves ``model`` (already resolved for training): its inference image and
    environment per supported instance type, as ``JumpStartModel.deploy`` looks them up."""
    from sagemaker.core import environment_variables, image_uris, instance_types
    from sagemaker.core.jumpstart import accessors

    session = _session_kwargs(region)
    where = {"region": region, "model_id": model.model_id, "model_version": model.version}
    try:
        s3 = {"s3_client": session["sagemaker_session"].s3_client} if session else {}
        specs = accessors.JumpStartModelsAccessor.get_model_specs(
            region=region, model_id=model.model_id, version=model.version, **s3
        )
        types = tuple(instance_types.retrieve(scope="inference", **where, **session))
        images: dict[str, str] = {}
        environments: dict[str, dict[str, str]] = {}
        for instance_type in types:
            try:
                images[instance_type] = image_uris.retrieve(
                    framework=None,
                    image_scope="inference",
                    instance_type=instance_type,
                    **where,
                    **session,
                )
            except ValueError:
                continue  # no image for that type in this region: not offered
            found = environment_variables.retrieve_default(
                instance_type=instance_type, **where, **session
            )
            environments[instance_type] = {k: str(v) for k, v in found.items()}
    except (KeyError, ValueError) as err:
        raise _sdk_error(model.base_model, region, err) from None
    except Exception as err:  # botocore's errors for a missing spec object or bucket
        if type(err).__module__.startswith("botocore"):
            raise _sdk_error(model.base_model, region, err) from None
        raise
    deploy = getattr(specs, "deploy_kwargs", None) or {}
    hosting = JumpStartHosting(
        model_id=model.model_id,
        version=model.version,
        instance_types=tuple(t for t in types if t in images),
        default_instance_type=specs.default_inference_instance_type,
        images=images,
        environments=environments,
        network_isolation=bool(getattr(specs, "inference_enable_network_isolation", False)),
        uses_script=bool(getattr(specs, "hosting_use_script_uri", True)),
        download_timeout_seconds=deploy.get("model_data_download_timeout"),
        startup_timeout_seconds=deploy.get("container_startup_health_check_timeout"),
    )
    log.info(
        "JumpStart %s %s serves on %s",
        model.model_id,
        model.version,
        ", ".join(hosting.instance_types) or "no type in this region",
    )
    return hosting


def hyperparameters_for(
    model: JumpStartModel, explicit: dict[str, str], overrides: dict[str, str]
) -> dict[str, str]:
    """JumpStart's defaults, then the candidate's hyperparameters the model knows by name, then
    its ``jumpstart_hyperparameters`` (which must all be the model's)."""
    known = set(model.algorithm_hyperparameters)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise PlanError(
            f"jumpstart_hyperparameters {unknown} are not hyperparameters of JumpStart model "
            f"{model.model_id} {model.version}; it has {sorted(known)}"
        )
    values = dict(model.hyperparameters)
    values.update({k: v for k, v in explicit.items() if k in known})
    values.update({k: str(v) for k, v in overrides.items()})
    return values


def validate_hyperparameters(model: JumpStartModel, region: str, values: dict[str, str]) -> None:
    """The SDK's own checks of types and ranges; a bad value is a PlanError naming it."""
    from sagemaker.core import hyperparameters

    algorithm = {k: v for k, v in values.items() if k in model.algorithm_hyperparameters}
    try:
        hyperparameters.validate(
            region=region,
            model_id=model.model_id,
            model_version=model.version,
            hyperparameters=algorithm,
            **_session_kwargs(region),
        )
    except ValueError as err:
        raise PlanError(f"base_model {model.base_model}: {err}") from None
