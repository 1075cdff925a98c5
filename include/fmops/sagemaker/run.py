"""What the sagemaker target does at run time besides submitting jobs: upload the job inputs.

After ``validate_data`` has staged the channels locally, ``upload_inputs`` puts into the bucket
what the planned requests point at (``fmops.sagemaker.staging.Layout``): the job scripts as a
content-addressed ``sourcedir.tar.gz`` (and unpacked, for processing jobs), the train,
validation and evaluation channels under the staged dataset's digest, and each candidate's base
model (network isolation keeps the containers from downloading one; a Hub model is downloaded
here first, ``fmops.hub_models``). Objects whose stored sha256
matches are not uploaded again, so a retried task or a re-run costs no transfer.
"""

from __future__ import annotations

import logging
from typing import Any

from fmops import hub_models
from fmops.base_models import is_hub
from fmops.config import PipelineConfig
from fmops.sagemaker import options, staging
from fmops.sagemaker.plan import Planner

log = logging.getLogger(__name__)


def s3_client(config: PipelineConfig) -> Any:
    """The S3 client of the config's Airflow AWS connection (the amazon provider's S3Hook)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    settings = options.settings_of(config)
    return S3Hook(aws_conn_id=settings.aws_conn_id, region_name=settings.region).get_conn()


def upload_inputs(config: PipelineConfig, staged: dict[str, Any], s3: Any = None) -> dict[str, Any]:
    """Upload code, datasets and base models; returns the S3 URIs of what is now there."""
    planner = Planner.of(config, staged)
    s3 = s3 or s3_client(config)
    kms = planner.settings.kms.output_key_id
    layout, bundle = planner.layout, planner.bundle
    staging.upload_code(s3, layout, bundle, kms)
    datasets = staging.stage_dataset(s3, layout, staged, kms)
    models = {}
    for name in sorted({c.base_model for c in config.candidates if not c.jumpstart}):
        folder, uri = planner.base_model(name)
        if is_hub(name):  # the plan read its JSON files; the jobs need the weights too
            folder = hub_models.weights_folder(name)
        staging.upload_folder(s3, folder, uri, kms)
        models[name] = uri
    uploaded = {
        "code": layout.sourcedir_uri(bundle),
        **{k: v for k, v in datasets.items() if k.endswith("_uri")},
        "base_models": models,
    }
    log.info("uploaded the job inputs to s3://%s/%s: %s", layout.bucket, layout.prefix, uploaded)
    return uploaded


def read_jumpstart_with_connection(config: PipelineConfig) -> None:
    """Point the SDK's JumpStart lookups at the Airflow connection's S3 client, when a candidate
    is a JumpStart model: the same credentials and endpoint as the rest of the run."""
    if any(c.jumpstart for c in config.candidates):
        from fmops.sagemaker import jumpstart

        jumpstart.use_s3_client(s3_client(config), options.settings_of(config).region)
