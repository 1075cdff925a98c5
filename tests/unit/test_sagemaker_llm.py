"""Generative LMs on the sagemaker target, planned offline: train.py's training jobs, the
evaluation of the untuned baseline, and the endpoint served by the Hugging Face LLM image (TGI):
its image from the SDK's offline table, the container's environment, the variant's start-up
timeouts, the instance the catalog sizes for the model, the capacity fallback, the archive check,
and JumpStart text-generation models served as their spec says.

The 7B base model is a stand-in folder: Mistral-7B-Instruct-v0.3's config.json and a tokenizer
config with a chat template, no weights (the config gives ``parameters``, which is all a plan
needs); the shipped example names it on the Hub, served from 127.0.0.1 (``hf_hub_server``).
The JumpStart spec is served from a moto bucket, as in test_sagemaker_jumpstart.py: the installed
SDK ships no JumpStart specs (it reads them from JumpStart's S3 bucket), so its values are made
up in the shape of JumpStart's huggingface-llm specs. Requests are checked against
botocore's service model (``fmops.sagemaker.service_model.validate``). Nothing reaches AWS.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from hf_hub_server import HubServer
from moto_server import REGION, aws_env_fixture, moto_server_fixture  # noqa: F401
from sagemaker_offline import offline, publish_specs  # noqa: F401 - offline: an autouse fixture

from fmops.catalog import hosting_memory, load_catalog, training_memory
from fmops.config import ConfigError, PipelineConfig, load_config, parse_config
from fmops.jobs.specs import PlanError, validate_request
from fmops.paths import CONFIGS_DIR, PROJECT_ROOT
from fmops.sagemaker import endpoint_deploy, endpoint_plan, hosting, images, jumpstart
from fmops.sagemaker.endpoint_resources import EndpointError
from fmops.sagemaker.plan import Planner, plan_evaluation, plan_run, plan_training
from fmops.sagemaker.service_model import validate
from fmops.sagemaker.settings import EndpointSettings, LlmServingSettings

EXAMPLE = CONFIGS_DIR / "sagemaker-llm.example.yaml"
CLASSIFIER_EXAMPLE = CONFIGS_DIR / "sagemaker.example.yaml"
FMOPS = Path(sys.executable).parent / "fmops"
MISTRAL_REPO = "mistralai/Mistral-7B-Instruct-v0.3"
MISTRAL_7B = 7_248_023_552  # Mistral-7B-Instruct-v0.3 (its model card; estimate_parameters agrees)
TGI_IMAGE = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:"
    "2.7.0-tgi3.3.6-gpu-py311-cu124-ubuntu22.04"
)
ARTIFACTS = "s3://fmops-example-bucket/fmops/training/train-x-0123456789/output/model.tar.gz"
MISTRAL_CONFIG = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 32768,
    "vocab_size": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}
CHAT_TEMPLATE = "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"


def model_folder(folder: Path, config: dict[str, Any], tokenizer: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    return folder


@pytest.fixture(scope="module")
def mistral(tmp_path_factory) -> Path:
    """Mistral-7B-Instruct-v0.3's JSON files, without weights."""
    return model_folder(
        tmp_path_factory.mktemp("models") / "Mistral-7B-Instruct-v0.3",
        MISTRAL_CONFIG,
        {"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"},
    )


@pytest.fixture(scope="module")
def catalog():
    return load_catalog("us-east-1")


def example_raw(mistral: Path) -> dict[str, Any]:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["candidates"][0]["base_model"] = str(mistral)
    return raw


def config_of(mistral: Path, mutate=None) -> PipelineConfig:
    raw = copy.deepcopy(example_raw(mistral))
    if mutate:
        mutate(raw)
    return parse_config(raw, "test.yaml")


def endpoint_of(config: PipelineConfig, catalog, **kwargs: Any) -> dict[str, Any]:
    return endpoint_plan.plan_deployment(
        config,
        model_version="3",
        model_data_url=kwargs.pop("model_data_url", ARTIFACTS),
        parameters=kwargs.pop("parameters", MISTRAL_7B),
        catalog=catalog,
        **kwargs,
    )


def fp32(raw):
    """The example's candidate trained at fp32: twice the bytes of its bf16 weights."""
    raw["candidates"][0]["hyperparameters"]["precision"] = "fp32"


def set_endpoint(**values):
    def mutate(raw):
        raw["sagemaker"]["endpoint"].update(values)

    return mutate


# -- the image ------------------------------------------------------------------------------------


def test_tgi_image_from_the_sdks_offline_table():
    assert images.llm_image_uri("3.3.6", "us-east-1", "ml.g5.xlarge") == TGI_IMAGE
    assert images.llm_image_uri("3.3", "us-east-1", "ml.g5.12xlarge") == TGI_IMAGE  # the alias
    assert images.llm_versions()[0] == "3.3.6" == LlmServingSettings().tgi_version
    eu = images.llm_image_uri("3.3.6", "eu-west-1", "ml.g5.xlarge")
    assert eu.startswith("763104351884.dkr.ecr.eu-west-1.amazonaws.com/")
    with pytest.raises(PlanError, match="TGI images are GPU only, and ml.m5.xlarge"):
        images.llm_image_uri("3.3.6", "us-east-1", "ml.m5.xlarge")
    (problem,) = images.llm_image_problems("9.9.9", "us-east-1")
    assert "TGI 9.9.9 is not a Hugging Face LLM image" in problem and "3.3.6, 3.3.4" in problem
    (problem,) = images.llm_image_problems("3.3.6", "xx-north-9")
    assert "not published in region xx-north-9" in problem


def test_the_tgi_image_check_does_not_import_the_sdk():
    code = (
        "import sys; from fmops.sagemaker import images, hosting; "
        "assert images.llm_image_problems('3.3.6', 'us-east-1') == []; "
        "assert 'sagemaker' not in sys.modules, 'the sagemaker SDK was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


# -- the endpoint of a generative model -----------------------------------------------------------


def test_model_and_endpoint_config_requests_for_tgi(mistral, catalog):
    plan = endpoint_of(config_of(mistral), catalog)
    requests = plan["requests"]
    model, config = requests["CreateModel"], requests["CreateEndpointConfig"]
    # botocore's service model, maximums, enums and patterns included (raises if refused)
    validate("sagemaker", "CreateModel", model)
    validate("sagemaker", "CreateEndpointConfig", config)
    validate_request("CreateModel", model)
    container = model["PrimaryContainer"]
    assert container["Image"] == TGI_IMAGE
    assert container["ModelDataUrl"] == ARTIFACTS
    assert container["Environment"] == {
        "HF_MODEL_ID": "/opt/ml/model",
        "SM_NUM_GPUS": "1",
        "MAX_INPUT_TOKENS": "1024",
        "MAX_TOTAL_TOKENS": "2048",
        "DTYPE": "bfloat16",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TQDM_DISABLE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    # no inference toolkit: TGI reads the folder, there is no code/inference.py to run
    assert "SAGEMAKER_PROGRAM" not in container["Environment"]
    assert model["EnableNetworkIsolation"] is True
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["ModelName"] == model["ModelName"]
    # trained at bf16, 7.25B x 2 B = 13.5 GiB: 300 + 30 x 13.5 = 705 -> 720 s;
    # 300 + 15 x 13.5 = 502.5 -> 540 s
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 720
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 540
    # at fp32, 7.25B x 4 B = 27.0 GiB: 300 + 30 x 27.0 = 1110 -> 1140 s; 300 + 15 x 27 -> 720 s
    (at_fp32,) = endpoint_of(config_of(mistral, fp32), catalog)["requests"]["CreateEndpointConfig"][
        "ProductionVariants"
    ]
    assert at_fp32["ModelDataDownloadTimeoutInSeconds"] == 1140
    assert at_fp32["ContainerStartupHealthCheckTimeoutInSeconds"] == 720
    assert plan["serving"]["family"] == "huggingface-llm"
    sizing = plan["sizing"]
    assert {k: sizing[k] for k in ("parameters", "serving_precision", "sharded")} == {
        "parameters": MISTRAL_7B,
        "serving_precision": "bf16",
        "sharded": True,
    }
    # what a capacity fallback starts: every type of the ranking with its count and target
    assert set(sizing["fleet"]) == set(sizing["scaling_targets"])
    assert plan["instance"]["instance_type"] in sizing["fleet"]
    assert plan["instance_count"] == sizing["fleet"][plan["instance"]["instance_type"]]


def test_the_timeouts_formula_and_its_bounds():
    llm = LlmServingSettings()
    small, _ = hosting.timeouts(135_000_000, llm)  # SmolLM2: 0.5 GiB -> 315 and 308 s
    assert small == {
        "ModelDataDownloadTimeoutInSeconds": 360,
        "ContainerStartupHealthCheckTimeoutInSeconds": 360,
    }
    huge, explain = hosting.timeouts(70_000_000_000, llm)  # 261 GiB: capped at SageMaker's 3600
    assert set(huge.values()) == {3600}
    assert "download 300 s + 30 s/GiB" in explain and "60-3600 s" in explain
    pinned = LlmServingSettings(startup_timeout_seconds=1800, download_timeout_seconds=900)
    chosen, explain = hosting.timeouts(MISTRAL_7B, pinned, download=1200, startup=1200)
    assert chosen == {
        "ModelDataDownloadTimeoutInSeconds": 900,
        "ContainerStartupHealthCheckTimeoutInSeconds": 1800,
    }
    assert "sent: download 900 s, start-up 1800 s" in explain
    with pytest.raises(ValueError, match="greater than or equal to 60"):
        LlmServingSettings(startup_timeout_seconds=30)
    with pytest.raises(ValueError, match="must be below max_total_tokens"):
        LlmServingSettings(max_input_tokens=2048, max_total_tokens=2048)


def test_precision_defaults_to_fp16_and_sizes_the_instance(mistral, catalog):
    def unset(raw):
        raw["sagemaker"]["endpoint"].pop("serving_precision")

    plan = endpoint_of(config_of(mistral, unset), catalog)
    environment = plan["requests"]["CreateModel"]["PrimaryContainer"]["Environment"]
    assert environment["DTYPE"] == "float16"
    assert any("served at fp16" in note for note in plan["notes"])
    # fp16: 13.5 GiB + 20% = 16.2 GiB + 2 GiB reserve: over a T4's 16, within an A10G's 24
    need = hosting_memory(MISTRAL_7B, "fp16", sharded=True)
    assert plan["instance"]["instance_type"] == catalog.choose(need).name == "ml.g5.xlarge"


def test_the_cost_estimates_sizing_is_the_endpoints(mistral, catalog):
    config = config_of(mistral)
    plan = endpoint_of(config, catalog)
    need = hosting.serving_need(config, MISTRAL_7B)
    assert (need.precision, need.sharded) == ("bf16", True)
    assert catalog.choose(need, max_price=5.0).name == plan["instance"]["instance_type"]
    classifier = load_config(CLASSIFIER_EXAMPLE)
    need = hosting.serving_need(classifier, 22_713_728)
    assert (need.precision, need.sharded) == ("fp32", False)


def test_a_pinned_multi_gpu_type_shards_over_all_its_gpus(mistral, catalog):
    pinned = set_endpoint(instance_type="ml.g5.12xlarge", max_price_per_hour=10.0)
    plan = endpoint_of(config_of(mistral, pinned), catalog)
    environment = plan["requests"]["CreateModel"]["PrimaryContainer"]["Environment"]
    assert environment["SM_NUM_GPUS"] == "4"
    assert "sharded over the instance's GPUs (tensor parallel)" in plan["instance"]["explain"]
    assert "16.2 GiB over 4 GPUs" in plan["instance"]["reason"]


def test_tgi_refuses_fp32_and_int8(mistral):
    for precision in ("fp32", "int8"):
        with pytest.raises(ConfigError) as info:
            config_of(mistral, set_endpoint(serving_precision=precision))
        (problem,) = info.value.problems
        assert problem.startswith(f"sagemaker.endpoint.serving_precision: {precision} is not")
        assert "fp16 or bf16" in problem


def test_int8_weights_tgi_cannot_serve_are_refused_when_the_config_loads(mistral):
    def int8(raw):
        raw["evaluation"]["optimize"] = {"generative": ["int8"]}

    with pytest.raises(ConfigError) as info:
        config_of(mistral, int8)
    (problem,) = info.value.problems
    assert problem.startswith("evaluation.optimize.generative: int8 weights are served by")
    assert "Set evaluation.optimize.generative: [] on the sagemaker target" in problem


def test_an_unknown_tgi_version_is_refused_when_the_config_loads(mistral):
    def version(raw):
        raw["sagemaker"]["endpoint"]["llm"]["tgi_version"] = "9.9"

    with pytest.raises(ConfigError) as info:
        config_of(mistral, version)
    assert any("TGI 9.9 is not a Hugging Face LLM image" in p for p in info.value.problems)


def test_capacity_fallback_rebuilds_the_model_for_the_gpu_count(mistral, catalog):
    config = config_of(
        mistral,
        set_endpoint(
            allowed_instance_types=["ml.g5.xlarge", "ml.g5.12xlarge"], max_price_per_hour=10.0
        ),
    )
    plan = endpoint_of(config, catalog)
    assert plan["instance"]["fallbacks"] == ["ml.g5.12xlarge"]
    moved = endpoint_plan.next_instance(plan, "InsufficientCapacity", catalog=catalog)
    model = moved["requests"]["CreateModel"]
    assert model["PrimaryContainer"]["Environment"]["SM_NUM_GPUS"] == "4"
    assert model["PrimaryContainer"]["Image"] == TGI_IMAGE
    # a new container is a new model: named after its request, and named by the new config
    assert model["ModelName"] != plan["model_name"] == plan["requests"]["CreateModel"]["ModelName"]
    (variant,) = moved["requests"]["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["ModelName"] == model["ModelName"] == moved["model_name"]
    assert variant["InstanceType"] == "ml.g5.12xlarge"
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 540
    validate("sagemaker", "CreateModel", model)


# -- the catalog against the reference table ------------------------------------------------------

# The reference table (the seed's hosting guidance): (model, parameters, precision, its pick).
REFERENCE = [
    ("GPT-J 6B", 6_053_381_344, "fp16", "ml.g5.12xlarge"),
    ("FLAN-T5 XXL", 11_135_332_352, "bf16", "ml.g5.12xlarge"),
    ("FLAN-T5 XL", 2_849_757_184, "bf16", "ml.g5.2xlarge"),
]


@pytest.mark.parametrize(("model", "parameters", "precision", "reference"), REFERENCE)
def test_the_catalog_against_the_reference_table(catalog, model, parameters, precision, reference):
    """Where the catalog's pick (the cheapest type whose GPUs hold the model sharded, as TGI
    serves it) differs from the reference, the reference's type fits too but costs more: the
    catalog ranks by price, not by throughput or host memory."""
    serving = {"precision": precision, "sharded": True}
    choice, _ = endpoint_plan.hosting_instance(
        catalog, EndpointSettings(), parameters, model, serving
    )
    ranking = [choice.name, *choice.fallbacks]
    agrees = {"FLAN-T5 XXL": "ml.g5.12xlarge"}
    differs = {
        # 11.3 GiB of fp16 weights + 20% = 13.5 GiB (+2 GiB reserve) fit one 16 GiB T4 ($0.74/h);
        # the reference's four A10Gs ($9/h) buy throughput and context, not room
        "GPT-J 6B": "ml.g4dn.xlarge",
        # 5.3 GiB of bf16 weights fit one A10G either way; ml.g5.2xlarge is the same A10G with 8
        # vCPUs and 32 GiB of host memory instead of 4 and 16, which the catalog does not weigh
        "FLAN-T5 XL": "ml.g5.xlarge",
    }
    if model in agrees:
        assert choice.name == reference == agrees[model]
    else:
        assert choice.name == differs[model] != reference
        price = catalog.get(reference).price_per_hour
        assert reference in ranking and price > choice.instance.price_per_hour
    # TGI's environment on the reference's type: every GPU is used
    assert hosting.container(
        {"family": "huggingface-llm", "environment": {}, "gpus_variable": "SM_NUM_GPUS"},
        catalog.get(reference),
        TGI_IMAGE,
        "us-east-1",
    )["Environment"] == {"SM_NUM_GPUS": str(catalog.get(reference).gpus)}


def test_gpt_j_at_bf16_takes_an_a10g_not_a_t4(catalog):
    choice, _ = endpoint_plan.hosting_instance(
        catalog,
        EndpointSettings(),
        6_053_381_344,
        "GPT-J 6B",
        {"precision": "bf16", "sharded": True},
    )
    assert choice.name == "ml.g5.xlarge"  # T4s lack bf16


# -- training and evaluation ----------------------------------------------------------------------


def test_training_uses_train_py_with_the_kinds_hyperparameters(mistral, catalog):
    config = config_of(mistral)
    (plan,) = plan_training(config, planner=Planner.of(config, catalog=catalog))
    request = plan["request"]
    hps = request["HyperParameters"]
    assert hps["sagemaker_program"] == "train.py"
    assert hps["task"] == "instruction" and hps["messages_column"] == "messages"
    assert hps["prompt_template"] == "auto" and hps["method"] == "lora"
    assert "text_column" not in hps and "label_column" not in hps
    validate_request("CreateTrainingJob", {"TrainingJobName": plan["base_name"], **request})
    # the catalog sizes train.py's bf16 LoRA run: 23.5 GiB on one GPU with bf16, an A10G
    assert hps["precision"] == "bf16"
    need = training_memory(MISTRAL_7B, "lora", precision="bf16")
    assert plan["instance"]["instance_type"] == catalog.choose(need).name == "ml.g5.xlarge"
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    # at fp32: 43.6 GiB on one GPU, an 80 GB A100
    config = config_of(mistral, fp32)
    (plan,) = plan_training(config, planner=Planner.of(config, catalog=catalog))
    assert plan["request"]["HyperParameters"]["precision"] == "fp32"
    need = training_memory(MISTRAL_7B, "lora", precision="fp32")
    assert plan["instance"]["instance_type"] == catalog.choose(need).name == "ml.p4de.24xlarge"


def test_the_baseline_is_prompted_with_the_kinds_arguments(mistral, catalog):
    config = config_of(mistral)
    plans = plan_evaluation(config, trained=[], planner=Planner.of(config, catalog=catalog))
    (baseline,) = plans
    arguments = baseline["request"]["AppSpecification"]["ContainerArguments"]
    assert arguments[-2:] == ["--prompt-template", "auto"] and "--zero-shot" not in arguments
    validate_request("CreateProcessingJob", {"ProcessingJobName": "x", **baseline["request"]})


def test_an_evaluation_gpu_too_small_for_the_model_is_refused(mistral, catalog):
    def small(raw):
        raw["sagemaker"]["evaluation_instance_type"] = "ml.g4dn.xlarge"

    # bf16 weights: a T4 has no bf16
    config = config_of(mistral, small)
    with pytest.raises(
        PlanError, match=r"loads it in bf16 on one GPU: ml.g4dn.xlarge's NVIDIA T4 has no bf16"
    ):
        plan_evaluation(config, trained=[], planner=Planner.of(config, catalog=catalog))

    def small_fp32(raw):
        fp32(raw)
        raw["sagemaker"]["evaluation_instance_type"] = "ml.g5.12xlarge"

    config = config_of(mistral, small_fp32)
    with pytest.raises(PlanError, match=r"ml.g5.12xlarge cannot hold .* 34.4 GiB on each of 4"):
        plan_evaluation(config, trained=[], planner=Planner.of(config, catalog=catalog))

    def cpu(raw):
        raw["sagemaker"]["evaluation_instance_type"] = "ml.m5.4xlarge"

    config = config_of(mistral, cpu)
    (plan,) = plan_evaluation(config, trained=[], planner=Planner.of(config, catalog=catalog))
    assert any(
        "generates on the CPU of ml.m5.4xlarge, holding 16.2 GiB" in n for n in plan["notes"]
    )


def test_a_model_without_a_chat_template_is_refused_before_training(tmp_path, mistral):
    plain = model_folder(tmp_path / "plain-lm", MISTRAL_CONFIG, {"eos_token": "</s>"})

    def no_template(raw):
        raw["candidates"][0]["base_model"] = str(plain)

    with pytest.raises(PlanError, match="has no chat template, but TGI renders `messages`"):
        plan_training(config_of(mistral, no_template))

    def plain_template(raw):
        raw["data"]["prompt_template"] = "plain"

    with pytest.raises(PlanError, match="data.prompt_template is plain"):
        plan_training(config_of(mistral, plain_template))


def test_max_total_tokens_must_fit_the_models_context(tmp_path, mistral):
    short = model_folder(
        tmp_path / "short-lm",
        {**MISTRAL_CONFIG, "max_position_embeddings": 1024},
        {"chat_template": CHAT_TEMPLATE},
    )

    def use_short(raw):
        raw["candidates"][0]["base_model"] = str(short)

    with pytest.raises(PlanError, match=r"max_total_tokens: 2048 is above the context .* 1024"):
        plan_training(config_of(mistral, use_short))


# -- notes ----------------------------------------------------------------------------------------


def test_notes_on_latency_alarms_and_the_execution_timeout(mistral, catalog):
    def defaults(raw):
        fp32(raw)  # the larger archive: its start-up timeouts outgrow the default
        raw["deployment"]["traffic"]["max_execution_timeout_seconds"] = None
        raw["deployment"]["alarms"]["latency_per_token_ms"] = 50

    plan = endpoint_of(config_of(mistral, defaults), catalog)
    notes = "\n".join(plan["notes"])
    assert "ModelLatency times a whole answer" in notes and "14.7 ms per token" in notes
    assert "latency_per_token_ms is ignored on SageMaker" in notes
    # 900 s of waits + 1800 s < 900 + 1140 + 720
    assert "execution timeout (2700 s) is shorter than" in notes and "at least 2760" in notes
    example = endpoint_of(config_of(mistral), catalog)
    assert not any("execution timeout" in n for n in example["notes"])


def test_llm_settings_on_a_classifier_are_said_to_be_ignored(catalog):
    raw = yaml.safe_load(CLASSIFIER_EXAMPLE.read_text())
    raw["sagemaker"]["endpoint"]["llm"] = {"max_total_tokens": 4096}
    config = parse_config(raw, "test.yaml")
    plan = endpoint_of(config, catalog, parameters=22_713_728)
    assert "serving" not in plan
    assert any("sagemaker.endpoint.llm is ignored" in note for note in plan["notes"])
    raw["sagemaker"]["endpoint"]["llm"] = {"tgi_version": "3.3.6"}  # the defaults, written out
    plan = endpoint_of(parse_config(raw, "test.yaml"), catalog, parameters=22_713_728)
    assert not any("sagemaker.endpoint.llm" in note for note in plan["notes"])


# -- a classifier is served as before -------------------------------------------------------------


def test_a_classifiers_endpoint_is_unchanged(catalog):
    config = load_config(CLASSIFIER_EXAMPLE)
    plan = endpoint_of(config, catalog, parameters=22_713_728)
    assert "serving" not in plan and "sharded" not in plan["sizing"]
    container = plan["requests"]["CreateModel"]["PrimaryContainer"]
    assert container["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert "huggingface-pytorch-inference" in container["Image"]
    (variant,) = plan["requests"]["CreateEndpointConfig"]["ProductionVariants"]
    assert set(variant) == {
        "VariantName",
        "ModelName",
        "InstanceType",
        "InitialInstanceCount",
        "InitialVariantWeight",
    }
    # by cost per 1,000 requests at the goal (fmops.sizing): one CPU core answers the 22.7M-
    # parameter classifier within the goal, so a CPU type serves the example's peak for less
    assert plan["instance"]["instance_type"].startswith(("ml.c6i.", "ml.c7i.", "ml.m6i."))
    assert "-cpu-" in container["Image"]
    assert set(plan["images"]) == {"cpu", "gpu"} and "-gpu-" in plan["images"]["gpu"]


# -- the archive ----------------------------------------------------------------------------------


def archive_of(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def test_a_tgi_archive_needs_weights_at_its_root_not_code(aws_env):
    s3 = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")
    bucket = "fmops-llm-archives"
    s3.create_bucket(Bucket=bucket)
    folders = {
        "good": {"./config.json": b"{}", "./model.safetensors": b"\0" * 8, "adapter/x": b""},
        "sharded": {"model-00001-of-00002.safetensors": b"", "config.json": b"{}"},
        "no-weights": {"config.json": b"{}", "adapter/adapter_model.safetensors": b""},
        "no-config": {"model.safetensors": b""},
    }
    for name, files in folders.items():
        s3.put_object(Bucket=bucket, Key=f"{name}/model.tar.gz", Body=archive_of(files))
    uri = f"s3://{bucket}/{{}}/model.tar.gz"
    endpoint_deploy.check_model_archive(s3, uri.format("good"), "weights")
    endpoint_deploy.check_model_archive(s3, uri.format("sharded"), "weights")
    with pytest.raises(EndpointError, match=r"has no \*.safetensors at its root: the Hugging"):
        endpoint_deploy.check_model_archive(s3, uri.format("no-weights"), "weights")
    with pytest.raises(EndpointError, match="has no config.json at its root"):
        endpoint_deploy.check_model_archive(s3, uri.format("no-config"), "weights")
    # the classifier's check is unchanged: the same good archive lacks code/inference.py
    with pytest.raises(EndpointError, match="has no code/inference.py"):
        endpoint_deploy.check_model_archive(s3, uri.format("good"))


# -- the example config ---------------------------------------------------------------------------


def test_the_example_config_loads():
    config = load_config(EXAMPLE)
    assert config.data.task == "instruction" and config.target == "sagemaker"
    (candidate,) = config.candidates
    assert candidate.method == "lora" and candidate.parameters == MISTRAL_7B
    assert candidate.base_model == f"hf:{MISTRAL_REPO}" and candidate.hub
    endpoint = config.sagemaker.endpoint
    assert endpoint.serving_precision == "bf16" and endpoint.llm == LlmServingSettings()
    # every key of the llm block is written out in the example, so each one is documented
    written = yaml.safe_load(EXAMPLE.read_text())["sagemaker"]["endpoint"]["llm"]
    assert set(written) == set(LlmServingSettings.model_fields)


def test_the_example_plan_passes_botocore_and_prints_the_tgi_endpoint(mistral, tmp_path):
    path = tmp_path / "sagemaker-llm.yaml"
    path.write_text(yaml.safe_dump(example_raw(mistral)))
    env = {**os.environ, "FMOPS_HOME": str(tmp_path / "home"), "AWS_DEFAULT_REGION": "us-east-1"}

    def fmops_plan(*extra: str) -> str:
        args = [str(FMOPS), "plan", "--config", str(path), *extra]
        done = subprocess.run(args, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    plan = json.loads(fmops_plan("--json"))
    for item in plan["training"]:
        validate_request(
            "CreateTrainingJob", {"TrainingJobName": item["base_name"], **item["request"]}
        )
    for item in plan["evaluation"]:
        validate_request(
            "CreateProcessingJob", {"ProcessingJobName": item["base_name"], **item["request"]}
        )
    requests = plan["endpoint"]["requests"]
    for operation in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint"):
        validate("sagemaker", operation, requests[operation])
    for alarm in requests["PutMetricAlarm"]:
        validate("cloudwatch", "PutMetricAlarm", alarm)
    validate(
        "application-autoscaling", "RegisterScalableTarget", requests["RegisterScalableTarget"]
    )
    assert requests["CreateModel"]["PrimaryContainer"]["Image"] == TGI_IMAGE
    assert plan["endpoint"]["instance"]["instance_type"] == "ml.g5.xlarge"
    # ml.g5.xlarge 1 h + two ml.g5.2xlarge evaluations of 0.5 h
    assert plan["cost"]["upper_bound_usd"] == 3.41

    text = fmops_plan()
    assert "serving: Hugging Face LLM (TGI 3.3.6): " + TGI_IMAGE in text
    assert "HF_MODEL_ID=/opt/ml/model, SM_NUM_GPUS=1, MAX_INPUT_TOKENS=1024" in text
    assert "ModelDataDownloadTimeoutInSeconds 720 s, " in text
    assert "ContainerStartupHealthCheckTimeoutInSeconds 540 s" in text
    assert "hosting 7.25B parameters at bf16" in text


def test_the_example_as_shipped_plans_from_the_hub_with_a_token(mistral, tmp_path):
    """The shipped example names the gated hf:mistralai/Mistral-7B-Instruct-v0.3: served here by a
    local Hub (its JSON files, no weights), ``fmops plan`` reads them with HF_TOKEN, stages the
    commit, and downloads no weights; without the token it exits 2 with the fix, and with no Hub
    and an empty cache it exits 1 (transient)."""
    env = {
        **os.environ,
        "FMOPS_HOME": str(tmp_path / "home"),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    env.pop("HF_TOKEN", None)

    def fmops_plan(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(FMOPS), "plan", "--config", str(EXAMPLE), "--json"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            cwd=PROJECT_ROOT,
        )

    with HubServer() as hub:
        commit = hub.add_repo(MISTRAL_REPO, mistral, gated=True)
        denied = fmops_plan(HF_ENDPOINT=hub.url)
        assert denied.returncode == 2, denied.stderr[-2000:]
        assert f"{MISTRAL_REPO} is gated" in denied.stderr and "HF_TOKEN" in denied.stderr

        done = fmops_plan(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token)
        assert done.returncode == 0, done.stderr[-3000:]
        assert hub.token not in done.stdout + done.stderr
        assert not [r for r in hub.requests if r.path.endswith(".safetensors")]
        url = hub.url
    plan = json.loads(done.stdout)
    (training,) = plan["training"]
    validate_request(
        "CreateTrainingJob", {"TrainingJobName": training["base_name"], **training["request"]}
    )
    staged = (
        f"s3://fmops-example-bucket/fmops/models/mistralai-mistral-7b-instruct-v0.3-{commit[:12]}/"
    )
    channels = {c["ChannelName"]: c for c in training["request"]["InputDataConfig"]}
    assert channels["base_model"]["DataSource"]["S3DataSource"]["S3Uri"] == staged
    baseline = next(e for e in plan["evaluation"] if e["candidate"] == "baseline")
    inputs = {
        i["InputName"]: i["S3Input"]["S3Uri"] for i in baseline["request"]["ProcessingInputs"]
    }
    assert staged in inputs.values()
    assert plan["endpoint"]["instance"]["instance_type"] == "ml.g5.xlarge"

    # the Hub is gone and this FMOPS_HOME's cache is empty: transient, exit 1
    env["FMOPS_HOME"] = str(tmp_path / "other-home")
    gone = fmops_plan(HF_ENDPOINT=url, HF_TOKEN="hf_x")
    assert gone.returncode == 1, gone.stderr[-2000:]
    assert "cannot reach the Hub" in gone.stderr


# -- JumpStart text-generation models -------------------------------------------------------------

CONTENT_BUCKET = "fmops-test-jumpstart-llm"
LLM_ID = "huggingface-llm-mistral-7b-instruct"
LLM_VERSION = "3.0.0"
JUMPSTART_TGI = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:"
    "2.1.1-tgi2.0.0-gpu-py310-cu121-ubuntu22.04"
)
SCRIPTS = "source-directory-tarballs/huggingface"
JUMPSTART_TRAINING = (
    "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
    "2.0.0-transformers4.28.1-gpu-py310-cu118-ubuntu20.04"
)


def variable(name: str, default: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "text",
        "default": default,
        "scope": "container",
        "required_for_model_class": True,
    }


def llm_spec(**extra: Any) -> dict[str, Any]:
    """A JumpStart text-generation spec in the shape of JumpStart's huggingface-llm specs."""
    hyper = [
        {"name": "epoch", "type": "int", "default": 1, "scope": "algorithm", "min": 1, "max": 1000},
        {"name": "learning_rate", "type": "float", "default": 6e-6, "scope": "algorithm"},
        {
            "name": "instruction_tuned",
            "type": "text",
            "default": "False",
            "options": ["True", "False"],
            "scope": "algorithm",
        },
        {
            "name": "sagemaker_submit_directory",
            "type": "text",
            "default": "/opt/ml/input/data/code/sourcedir.tar.gz",
            "scope": "container",
        },
        {
            "name": "sagemaker_program",
            "type": "text",
            "default": "transfer_learning.py",
            "scope": "container",
        },
    ]

    def images_of(uri: str, families: tuple[str, ...]) -> dict[str, Any]:
        return {
            "regional_aliases": {REGION: {"gpu_ecr_uri_1": uri}},
            "variants": {
                f: {"regional_properties": {"image_uri": "$gpu_ecr_uri_1"}} for f in families
            },
        }

    hosting_variants = images_of(JUMPSTART_TGI, ("g5", "p4d"))
    for instance_type, gpus in (("ml.g5.12xlarge", "4"), ("ml.p4d.24xlarge", "8")):
        hosting_variants["variants"][instance_type] = {
            "properties": {"environment_variables": {"SM_NUM_GPUS": gpus}}
        }
    return {
        "model_id": LLM_ID,
        "url": "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.1",
        "version": LLM_VERSION,
        "min_sdk_version": "2.189.0",
        "training_supported": True,
        "incremental_training_supported": False,
        "hosting_ecr_specs": {
            "framework": "huggingface-llm",
            "framework_version": "2.0.0",
            "py_version": "py310",
        },
        "hosting_artifact_key": f"huggingface-llm/{LLM_ID}/artifacts/inference/v1.0.0/",
        "hosting_script_key": f"{SCRIPTS}/inference/textgeneration/v1.0.0/sourcedir.tar.gz",
        "hosting_use_script_uri": False,
        "training_ecr_specs": {
            "framework": "huggingface",
            "framework_version": "2.0.0",
            "py_version": "py310",
            "huggingface_transformers_version": "4.28.1",
        },
        "training_artifact_key": f"huggingface-training/train-{LLM_ID}.tar.gz",
        "training_script_key": f"{SCRIPTS}/training/llm-finetuning/v1.0.0/sourcedir.tar.gz",
        "hyperparameters": hyper,
        "inference_environment_variables": [
            variable("SAGEMAKER_PROGRAM", "inference.py"),
            variable("SAGEMAKER_SUBMIT_DIRECTORY", "/opt/ml/model/code"),
            variable("HF_MODEL_ID", "/opt/ml/model"),
            variable("MAX_INPUT_LENGTH", "4095"),
            variable("MAX_TOTAL_TOKENS", "4096"),
            variable("SM_NUM_GPUS", "1"),
        ],
        "inference_enable_network_isolation": True,
        "training_enable_network_isolation": True,
        "training_vulnerable": False,
        "inference_vulnerable": False,
        "deprecated": False,
        "default_inference_instance_type": "ml.g5.2xlarge",
        "supported_inference_instance_types": [
            "ml.g5.2xlarge",
            "ml.g5.12xlarge",
            "ml.p4d.24xlarge",
        ],
        "default_training_instance_type": "ml.g5.12xlarge",
        "supported_training_instance_types": [
            "ml.g5.12xlarge",
            "ml.g5.24xlarge",
            "ml.p4d.24xlarge",
        ],
        "metrics": [{"Name": "textgeneration:train-loss", "Regex": "train_epoch_loss=([0-9\\.]+)"}],
        "deploy_kwargs": {
            "model_data_download_timeout": 1200,
            "container_startup_health_check_timeout": 1200,
        },
        "hosting_instance_type_variants": hosting_variants,
        "training_instance_type_variants": images_of(JUMPSTART_TRAINING, ("g5", "p4d")),
        **extra,
    }


@pytest.fixture(name="jumpstart_llm")
def jumpstart_llm_fixture(aws_env: str, monkeypatch: pytest.MonkeyPatch):
    """A JumpStart content bucket in moto with two text-generation specs (one served with
    JumpStart's own script); the SDK reads it through a moto S3 client."""
    from sagemaker.core.jumpstart.accessors import JumpStartModelsAccessor

    s3 = boto3.client("s3", endpoint_url=aws_env, region_name=REGION)
    s3.create_bucket(Bucket=CONTENT_BUCKET)
    specs = [
        llm_spec(),
        llm_spec(model_id="huggingface-llm-scripted", hosting_use_script_uri=True),
    ]
    publish_specs(s3, CONTENT_BUCKET, specs)
    monkeypatch.setenv("AWS_JUMPSTART_CONTENT_BUCKET_OVERRIDE", CONTENT_BUCKET)
    monkeypatch.setattr(jumpstart, "_SESSION", {})
    jumpstart.use_s3_client(s3, REGION)
    yield s3
    JumpStartModelsAccessor.reset_cache()
    monkeypatch.setattr(jumpstart, "_SESSION", {})


def jumpstart_config(mistral: Path, model_id: str = LLM_ID, mutate=None) -> PipelineConfig:
    def candidate(raw):
        raw["candidates"] = [
            {
                "name": "mistral-jumpstart",
                "base_model": f"jumpstart:{model_id}@{LLM_VERSION}",
                "parameters": MISTRAL_7B,
                "hyperparameters": {"epochs": 2},
                "jumpstart_hyperparameters": {"instruction_tuned": "True"},
            }
        ]
        raw["sagemaker"]["endpoint"]["max_price_per_hour"] = 20.0
        # evaluate.py sizes a JumpStart model's weights at fp32 (fmops cannot know its script's)
        raw["sagemaker"]["evaluation_instance_type"] = "ml.p4d.24xlarge"
        if mutate:
            mutate(raw)

    return config_of(mistral, candidate)


def test_a_jumpstart_llm_trains_and_serves_as_its_spec_says(jumpstart_llm, mistral):
    config = jumpstart_config(mistral)
    plan = plan_run(config)
    (training,) = plan["training"]
    request = training["request"]
    assert request["AlgorithmSpecification"]["TrainingImage"] == JUMPSTART_TRAINING
    assert request["HyperParameters"]["sagemaker_program"] == "transfer_learning.py"
    assert request["HyperParameters"]["instruction_tuned"] == "True"
    assert training["instance"]["instance_type"] in llm_spec()["supported_training_instance_types"]
    assert not [p for p in plan["evaluation"] if p["zero_shot"]]  # no baseline of JumpStart weights

    endpoint = plan["endpoint"]
    model = endpoint["requests"]["CreateModel"]
    (variant,) = endpoint["requests"]["CreateEndpointConfig"]["ProductionVariants"]
    validate("sagemaker", "CreateModel", model)
    validate("sagemaker", "CreateEndpointConfig", endpoint["requests"]["CreateEndpointConfig"])
    # the cheapest catalog type among the spec's inference types that holds 7.25B at bf16
    assert variant["InstanceType"] == "ml.g5.2xlarge"
    assert endpoint["instance"]["fallbacks"] == ["ml.g5.12xlarge"]  # p4d is above the ceiling
    container = model["PrimaryContainer"]
    assert container["Image"] == JUMPSTART_TGI
    environment = container["Environment"]
    assert environment["HF_MODEL_ID"] == "/opt/ml/model" and environment["SM_NUM_GPUS"] == "1"
    assert environment["MAX_INPUT_LENGTH"] == "4095"  # JumpStart's, not sagemaker.endpoint.llm's
    assert "MAX_INPUT_TOKENS" not in environment
    # the spec's deploy_kwargs
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 1200
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1200
    assert any("the image, the environment" in note for note in endpoint["notes"])

    moved = endpoint_plan.next_instance(endpoint, "InsufficientCapacity")
    environment = moved["requests"]["CreateModel"]["PrimaryContainer"]["Environment"]
    assert environment["SM_NUM_GPUS"] == "4"  # the spec's variant for ml.g5.12xlarge


def test_a_jumpstart_llm_pinned_to_a_type_its_spec_lacks(jumpstart_llm, mistral):
    def pin(raw):
        raw["sagemaker"]["endpoint"]["instance_type"] = "ml.g5.xlarge"

    with pytest.raises(PlanError, match=r"does not serve on the pinned ml.g5.xlarge.*g5.2xlarge"):
        plan_run(jumpstart_config(mistral, mutate=pin))


def test_a_jumpstart_llm_served_with_its_own_script_is_refused(jumpstart_llm, mistral):
    with pytest.raises(PlanError, match="serves with JumpStart's own inference script"):
        plan_run(jumpstart_config(mistral, "huggingface-llm-scripted"))
