"""fmops_deploy's deploy task on the sagemaker target, against a moto server on 127.0.0.1:
a registered version's model.tar.gz in S3 becomes a SageMaker endpoint with its rollback alarms
and auto scaling, and the model version records where it serves; an archive that is not the one
registered is refused before anything is created. (Updates of an existing endpoint are tested
with botocore's Stubber in test_sagemaker_endpoints.py: moto has no UpdateEndpoint; capacity
fallback in depth in test_endpoint_capacity.py.)"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from moto_server import aws_env_fixture, moto_server_fixture  # noqa: F401

from fmops.config import load_config
from fmops.deployment import flow
from fmops.paths import CONFIGS_DIR
from fmops.registry import digests, registration, tracking
from fmops.sagemaker import endpoint_deploy, endpoint_watch
from fmops.sagemaker.endpoint_resources import EndpointError

BUCKET = "fmops-deploy-test"
ARTIFACTS = f"s3://{BUCKET}/fmops/training/train-minilm-full-x/output/model.tar.gz"


def model_archive(with_handlers: bool, files: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        files = files or {"label_map.json": b'{"labels": ["a"]}'}
        if with_handlers:
            files = {**files, "code/inference.py": b"def model_fn(model_dir): ...\n"}
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class Registry:
    """The MLflow client a deploy talks to: one version, whose source run holds the digests
    manifest that registration logs (``register``)."""

    def __init__(self, tmp_path: Path, endpoint_url: str):
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
        self.scratch = tmp_path / "registration"
        self.tags = {"fmops.candidate": "minilm-full", "fmops.model_artifacts": ARTIFACTS}
        self.manifest: dict = {}

    def put(self, uri: str, body: bytes) -> dict:
        bucket, _, key = uri[len("s3://") :].partition("/")
        return self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    def register(self, uri: str = ARTIFACTS) -> dict:
        """What registration records of the archive now at ``uri``: its files' and its own
        digests (``registration.unpack_model``, as ``_log_model`` does), pinned by the tag."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        model_dir, archive = registration.unpack_model(uri, self.scratch / "model")
        self.manifest = {**digests.manifest(model_dir, []), digests.ARCHIVE: archive}
        self.tags["fmops.model_artifacts"] = uri
        self.tags[digests.TAG] = digests.manifest_sha256(self.manifest)
        return self.manifest

    def get_model_version(self, name: str, number: str) -> SimpleNamespace:
        return SimpleNamespace(tags=self.tags, run_id="winner-run")

    def download_artifacts(self, run_id: str, path: str, dst: str) -> str:
        assert (run_id, path) == ("winner-run", digests.MANIFEST)
        target = Path(dst) / path
        target.write_text(json.dumps(self.manifest))
        return str(target)

    def set_model_version_tag(self, name: str, number: str, key: str, value: str) -> None:
        self.tags[key] = value


@pytest.fixture
def registry(tmp_path, aws_env, monkeypatch) -> Registry:
    found = Registry(tmp_path, aws_env)
    found.s3.create_bucket(Bucket=BUCKET)
    found.put(ARTIFACTS, model_archive(with_handlers=True))
    found.register()
    monkeypatch.setattr(tracking, "client", lambda config: found)
    return found


@pytest.fixture
def config(tmp_path, registry):
    raw = yaml.safe_load((CONFIGS_DIR / "sagemaker.example.yaml").read_text())
    raw["sagemaker"]["bucket"] = BUCKET
    raw["sagemaker"]["endpoint"]["instance_type"] = "ml.g4dn.xlarge"  # a type moto accepts
    # An endpoint of this test alone: the moto server lives for the whole session.
    raw["deployment"]["endpoint_name"] = f"banking77-{time.time_ns() % 10**10}"
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path), registry.tags


def test_a_registered_version_becomes_a_sagemaker_endpoint(config, aws_env):
    config, tags = config
    result = flow.deploy(config, "3")
    assert result["action"] == "created"
    assert result["status"] == "InService"
    assert result["instance"].endswith("ml.g4dn.xlarge")
    assert result["instance_type"] == "ml.g4dn.xlarge" and result["capacity_fallback"] == []
    assert tags["fmops.endpoint.name"] == config.deployment.endpoint_name
    assert tags["fmops.endpoint.instance_type"] == "ml.g4dn.xlarge"
    assert tags["fmops.endpoint.capacity_fallback"] == flow.NO_FALLBACK

    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    endpoint = sagemaker.describe_endpoint(EndpointName=config.deployment.endpoint_name)
    assert endpoint["EndpointConfigName"] == result["endpoint_config"]
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=result["endpoint_config"]
    )
    model = sagemaker.describe_model(
        ModelName=endpoint_config["ProductionVariants"][0]["ModelName"]
    )
    assert model["PrimaryContainer"]["ModelDataUrl"] == ARTIFACTS
    alarms = boto3.client("cloudwatch", endpoint_url=aws_env, region_name="us-east-1")
    names = [a["AlarmName"] for a in alarms.describe_alarms()["MetricAlarms"]]
    assert any(n.endswith("invocation-5xx-errors") for n in names)
    assert any(n.endswith("model-latency") for n in names)

    # Deploying the same version again changes nothing.
    assert flow.deploy(config, "3")["action"] == "unchanged"


def test_the_deploy_task_waits_for_the_endpoint_in_the_triggerer(config, aws_env):
    from airflow.sdk.exceptions import TaskDeferred

    from fmops.airflow.operators import DeployEndpointOperator, EndpointTrigger

    config, _ = config
    candidate = {"resolved": {"config": config.model_dump(mode="json")}, "version": "3"}
    task = DeployEndpointOperator(task_id="deploy", candidate=candidate)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    trigger = deferred.value.trigger
    assert isinstance(trigger, EndpointTrigger)
    assert trigger.endpoint_name == config.deployment.endpoint_name

    async def fired() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    (event,) = asyncio.run(fired())  # from the aws_default connection, at moto
    assert event["verdict"]["state"] == "succeeded"
    result = task.execute_complete({}, event=event, **deferred.value.kwargs)
    assert result["action"] == "created" and result["status"] == "InService"
    assert result["endpoint_config"] == trigger.endpoint_config_name
    assert result["instance"].endswith("x ml.g4dn.xlarge")
    autoscaling = boto3.client(
        "application-autoscaling", endpoint_url=aws_env, region_name="us-east-1"
    )
    targets = autoscaling.describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[f"endpoint/{trigger.endpoint_name}/variant/AllTraffic"],
    )["ScalableTargets"]
    assert len(targets) == 1  # registered once the endpoint was InService

    # The same version again: nothing to wait for, no deferral.
    assert task.execute({})["action"] == "unchanged"


def test_a_version_trained_elsewhere_or_without_handlers_is_refused(config, registry):
    config, tags = config
    tags["fmops.model_artifacts"] = "file:///tmp/model.tar.gz"
    with pytest.raises(LookupError, match="only versions that fmops_finetune trained on the"):
        flow.deploy(config, "4")
    registry.put(ARTIFACTS, model_archive(with_handlers=False))
    registry.register()  # registered so: the digests match, the serving code is missing
    with pytest.raises(EndpointError, match="code/inference.py"):
        flow.deploy(config, "5")


def test_without_quota_for_the_first_type_the_version_serves_on_the_next(
    config, aws_env, monkeypatch
):
    config, tags = config
    endpoint = config.sagemaker.endpoint.model_copy(
        update={
            "instance_type": "auto",
            "allowed_instance_types": ["ml.g4dn.xlarge", "ml.g4dn.2xlarge"],
            "max_price_per_hour": None,
        }
    )
    config = config.model_copy(
        update={"sagemaker": config.sagemaker.model_copy(update={"endpoint": endpoint})}
    )
    made_clients = endpoint_watch.clients
    refused: list[str] = []

    def clients(*args, **kwargs):
        made = made_clients(*args, **kwargs)

        def no_quota(params, **_):  # SageMaker's answer where the account has no ml.g4dn.xlarge
            config_name = json.loads(params["body"])["EndpointConfigName"]  # the request sent
            variant = made.sagemaker.describe_endpoint_config(EndpointConfigName=config_name)
            kind = variant["ProductionVariants"][0]["InstanceType"]
            if kind != "ml.g4dn.xlarge":
                return None
            refused.append(config_name)
            message = f"The account-level service limit '{kind} for endpoint usage' is 0 Instances"
            error = {"Error": {"Code": "ResourceLimitExceeded", "Message": message}}
            return AWSResponse(None, 400, {}, None), error

        made.sagemaker.meta.events.register("before-call.sagemaker.CreateEndpoint", no_quota)
        return made

    monkeypatch.setattr(endpoint_watch, "clients", clients)
    result = flow.deploy(config, "6")

    assert len(refused) == 1
    assert result["status"] == "InService" and result["instance_type"] == "ml.g4dn.2xlarge"
    (note,) = result["capacity_fallback"]
    assert note.startswith(
        "no capacity for ml.g4dn.xlarge in us-east-1: falling back to ml.g4dn.2xlarge (next in "
        "the catalog ranking that fits"
    )
    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    live = sagemaker.describe_endpoint(EndpointName=config.deployment.endpoint_name)
    assert live["EndpointConfigName"] == result["endpoint_config"] != refused[0]
    serving = sagemaker.describe_endpoint_config(EndpointConfigName=result["endpoint_config"])
    assert serving["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.2xlarge"
    assert tags["fmops.endpoint.instance_type"] == "ml.g4dn.2xlarge"
    assert tags["fmops.endpoint.capacity_fallback"] == note


# -- the archive served is the one registered ------------------------------------------------------


def repacked(body: bytes) -> bytes:
    """The same tar, gzipped again (another level and timestamp): same files, other bytes."""
    return gzip.compress(gzip.decompress(body), compresslevel=1, mtime=1)


def sagemaker_calls(monkeypatch) -> list[str]:
    """The SageMaker operations the deployment's client sends from now on."""
    made_clients, calls = endpoint_watch.clients, []

    def clients(*args, **kwargs):
        made = made_clients(*args, **kwargs)
        made.sagemaker.meta.events.register(
            "before-call.sagemaker", lambda model, **_: calls.append(model.name)
        )
        return made

    monkeypatch.setattr(endpoint_watch, "clients", clients)
    return calls


def created(aws_env: str, endpoint_name: str) -> list[str]:
    """The SageMaker models, endpoint configs and endpoints named after ``endpoint_name``."""
    sagemaker = boto3.client("sagemaker", endpoint_url=aws_env, region_name="us-east-1")
    names = [m["ModelName"] for m in sagemaker.list_models()["Models"]]
    names += [c["EndpointConfigName"] for c in sagemaker.list_endpoint_configs()["EndpointConfigs"]]
    names += [e["EndpointName"] for e in sagemaker.list_endpoints()["Endpoints"]]
    return [name for name in names if name.startswith(endpoint_name)]


@pytest.mark.parametrize("how", ["deploy", "start_deploy"])
def test_an_archive_overwritten_after_registration_is_refused_before_anything_is_created(
    config, registry, aws_env, monkeypatch, how
):
    """Whoever can write the S3 object cannot change what serves: the archive is read and its
    digests compared before CreateModel, in the blocking deploy and in the deferred one."""
    config, _ = config
    calls = sagemaker_calls(monkeypatch)
    changed = {"label_map.json": b'{"labels": ["b"]}', "extra.bin": b"\0"}
    registry.put(ARTIFACTS, model_archive(with_handlers=True, files=changed))
    with pytest.raises(digests.ArtifactDigestError) as refused:
        getattr(flow, how)(config, "3")
    message = str(refused.value)
    assert message.startswith(
        f"model version 3: {ARTIFACTS} is not the model archive registered and reviewed: "
        "model.tar.gz/label_map.json changed (sha256 "
    )
    assert "; model.tar.gz/extra.bin was added" in message
    assert message.endswith("register the model again, or restore the archive")
    assert calls == []  # no CreateModel, no CreateEndpointConfig: not even a Describe
    assert created(aws_env, config.deployment.endpoint_name) == []
    # An archive that lost a file is named as well.
    registry.put(ARTIFACTS, model_archive(with_handlers=False))
    with pytest.raises(digests.ArtifactDigestError, match="model.tar.gz/code/inference.py is miss"):
        flow.deploy(config, "3")
    assert calls == [] and created(aws_env, config.deployment.endpoint_name) == []
    # Registered again (and so reviewed again), the archive serves.
    registry.put(ARTIFACTS, model_archive(with_handlers=True, files=changed))
    registry.register()
    assert flow.deploy(config, "3")["action"] == "created"
    assert "CreateModel" in calls and "CreateEndpointConfig" in calls


def test_a_versioned_bucket_names_the_registered_object_version_to_restore(
    config, registry, aws_env
):
    config, _ = config
    bucket, key = "fmops-deploy-versioned", "fmops/training/train-minilm-full-y/output/model.tar.gz"
    uri = f"s3://{bucket}/{key}"
    registry.s3.create_bucket(Bucket=bucket)
    registry.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    original = model_archive(with_handlers=True)
    first = registry.put(uri, original)["VersionId"]
    assert registry.register(uri)[digests.ARCHIVE]["version_id"] == first
    second = registry.put(uri, repacked(original))["VersionId"]
    with pytest.raises(digests.ArtifactDigestError) as refused:
        flow.deploy(config, "7")
    message = str(refused.value)
    assert f"{uri} is not the model archive registered and reviewed: its bytes differ" in message
    assert "though its files match: it was packed again" in message
    assert f"restore version {first} of {uri} (the registered one, not the current {second})" in (
        message
    )
    assert created(aws_env, config.deployment.endpoint_name) == []
    # Restored as the message says: the version deploys.
    source = {"Bucket": bucket, "Key": key, "VersionId": first}
    registry.s3.copy_object(Bucket=bucket, Key=key, CopySource=source)
    assert flow.deploy(config, "7")["action"] == "created"


def test_a_version_without_its_digests_or_with_a_changed_list_is_refused(config, registry):
    config, _ = config
    pinned = registry.tags.pop(digests.TAG)
    with pytest.raises(digests.ArtifactDigestError, match="has no tag fmops.artifacts_sha256"):
        flow.deploy(config, "8")
    registry.tags[digests.TAG] = pinned
    # The list changed to match an archive written since: its sha256 is not the tag's.
    registry.put(ARTIFACTS, repacked(model_archive(with_handlers=True)))
    with tempfile.TemporaryDirectory() as scratch:
        registry.s3.download_file(BUCKET, ARTIFACTS.split("/", 3)[3], f"{scratch}/model.tar.gz")
        registry.manifest[digests.ARCHIVE] = digests.archive_record(
            ARTIFACTS, Path(scratch) / "model.tar.gz"
        )
    with pytest.raises(digests.ArtifactDigestError, match="was changed after registration"):
        flow.deploy(config, "8")


# -- the archive's digests, offline ------------------------------------------------------------


class Reads(io.BytesIO):
    """A stream that remembers the largest read asked of it."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size if size is not None and size >= 0 else 1 << 62)
        return super().read(size)


def tar_gz(members: list[tarfile.TarInfo], data: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info in members:
            if info.isfile():
                info.size = len(data[info.name])
            tar.addfile(info, io.BytesIO(data[info.name]) if info.isfile() else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_archive_digests_stream_the_archive_and_count_links_as_their_targets():
    import hashlib
    import random

    weights = random.Random(0).randbytes(3 << 20)
    data = {"./model.safetensors": weights, "config.json": b"{}"}
    members = [
        member("./model.safetensors"),
        member("config.json"),
        member("code", tarfile.DIRTYPE),
        member("alias.safetensors", tarfile.SYMTYPE, "model.safetensors"),
        member("copy.json", tarfile.LNKTYPE, "config.json"),
        member("passwd", tarfile.SYMTYPE, "/etc/passwd"),
    ]
    body = tar_gz(members, data)
    stream = Reads(body)
    read = digests.archive_digests(stream)
    assert stream.largest <= 1 << 20  # chunks, never the whole object at once
    assert read.sha256 == hashlib.sha256(body).hexdigest() and read.bytes == len(body)
    sha = {name: hashlib.sha256(value).hexdigest() for name, value in data.items()}
    assert read.files == {
        "model.safetensors": sha["./model.safetensors"],
        "config.json": sha["config.json"],
        "alias.safetensors": sha["./model.safetensors"],
        "copy.json": sha["config.json"],
    }
    assert read.others == {"passwd": "a link to /etc/passwd, not to a file of the archive"}


def test_a_version_registered_before_the_archive_digest_is_checked_file_by_file():
    files = {"config.json": b"{}", "code/inference.py": b"def model_fn(d): ...\n"}
    original = tar_gz([member(n) for n in files], files)
    before = {"model_dir": digests.archive_digests(io.BytesIO(original)).files, "code": {}}
    uri = ARTIFACTS
    # Packed again, the same files: nothing to name, so it serves.
    digests.verify_archive(
        before, digests.archive_digests(io.BytesIO(repacked(original))), uri, "v"
    )
    changed = tar_gz(
        [member(n) for n in files] + [member("evil", tarfile.SYMTYPE, "/etc/shadow")],
        {**files, "code/inference.py": b"import os\n"},
    )
    with pytest.raises(digests.ArtifactDigestError) as refused:
        digests.verify_archive(before, digests.archive_digests(io.BytesIO(changed)), uri, "v")
    assert "model.tar.gz/code/inference.py changed" in str(refused.value)
    assert "model.tar.gz/evil is a link to /etc/shadow, not to a file of the archive" in str(
        refused.value
    )
    with pytest.raises(EndpointError, match="not a gzipped tar archive"):
        endpoint_deploy.check_model_archive(
            _S3Body(b"\x1f\x8b" + b"junk" * 10), uri, "code", before
        )


class _S3Body:
    """An S3 client whose one object is ``body`` (GetObject only)."""

    def __init__(self, body: bytes):
        self.body = body

    def get_object(self, Bucket: str, Key: str) -> dict:  # noqa: N803 (boto3's names)
        return {"Body": io.BytesIO(self.body)}
