"""Hugging Face Hub base models (``base_model: hf:<owner>/<name>[@<revision>]``) on the sagemaker
target: the real ``huggingface_hub`` client downloads from a Hub served on 127.0.0.1
(``tests/hf_hub_server.py``), as ``fmops.hub_models`` does on an Airflow worker.

What is checked: the metadata snapshot has no weights (the plan's depth), the weights snapshot
has the top-level safetensors only, the parameter count comes from header range reads, a gated
model needs a token (and the token is never logged), a missing model or revision and a repo
without safetensors are errors with a fix, a pinned commit is read from the cache without the
Hub, an unreachable Hub is a transient error, the staged S3 name and the training cache key name
the commit, and the local target refuses ``hf:``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import boto3
import pytest
import yaml
from hf_hub_server import HubServer
from moto_server import REGION, aws_env_fixture, moto_server_fixture  # noqa: F401
from sagemaker_offline import offline  # noqa: F401 - an autouse fixture: no AWS, no SDK lookups
from tiny_models import TINY_CHAT_TEMPLATE, save_tiny_causal_lm

from fmops import hub_models
from fmops.base_models import HubId, parse_hub
from fmops.catalog import count_parameters
from fmops.config import ConfigError, parse_config
from fmops.jobs.specs import PlanError, base_model_parameters, resolve_base_model
from fmops.paths import CONFIGS_DIR
from fmops.sagemaker import staging
from fmops.sagemaker.plan import Planner, plan_training

TINY = "fmops-tests/tiny-lm"
GATED = "fmops-tests/gated-lm"
BIN_ONLY = "fmops-tests/bin-only"
SHARDED = "fmops-tests/sharded-lm"
BUCKET = "fmops-test-hub-models"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny chat LM, plus what the weights snapshot must leave out: pickled weights and a
    sub-folder with another format of the weights."""
    folder = save_tiny_causal_lm(
        tmp_path_factory.mktemp("hub") / "tiny-lm", chat_template=TINY_CHAT_TEMPLATE
    )
    (folder / "pytorch_model.bin").write_bytes(b"pickled weights, never downloaded")
    (folder / "original").mkdir()
    (folder / "original" / "consolidated.safetensors").write_bytes(b"not for transformers")
    return folder


@pytest.fixture(scope="module")
def hub(tiny_folder, tmp_path_factory):
    with HubServer() as server:
        server.add_repo(TINY, tiny_folder)
        server.add_repo(GATED, tiny_folder, gated=True)
        bin_only = tmp_path_factory.mktemp("hub") / "bin-only"
        bin_only.mkdir()
        (bin_only / "config.json").write_text((tiny_folder / "config.json").read_text())
        (bin_only / "pytorch_model.bin").write_bytes(b"pickled weights")
        server.add_repo(BIN_ONLY, bin_only)
        sharded = tmp_path_factory.mktemp("hub") / "sharded"
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(tiny_folder).save_pretrained(
            sharded, max_shard_size="200KB"
        )
        AutoTokenizer.from_pretrained(tiny_folder).save_pretrained(sharded)
        assert (sharded / "model.safetensors.index.json").exists()
        server.add_repo(SHARDED, sharded)
        yield server


@pytest.fixture(autouse=True)
def hub_env(hub, monkeypatch, tmp_path):
    """This test's Hub endpoint and an empty cache; no token from the machine."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("FMOPS_BASE_MODELS_DIR", str(tmp_path / "base-models"))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    hub_models._remote_parameters.cache_clear()
    return hub


def served(hub: HubServer, repo: str, since: int = 0) -> list[str]:
    """The files of ``repo`` that were downloaded whole (no Range) since request ``since``."""
    prefix = f"/{repo}/resolve/"
    return [
        r.path.split("/", 5)[-1]
        for r in hub.requests[since:]
        if r.method == "GET" and r.path.startswith(prefix) and r.range is None
    ]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hub_ids_parse_and_a_malformed_one_is_a_config_error():
    assert parse_hub("hf:mistralai/Mistral-7B-Instruct-v0.3") == HubId(
        "mistralai/Mistral-7B-Instruct-v0.3", "main"
    )
    pinned = parse_hub("hf:org/model@" + "a" * 40)
    assert pinned.pinned and not parse_hub("hf:org/model@v1.0").pinned
    assert parse_hub("hf:org/model@").revision == "main"  # an empty revision is main
    raw = yaml.safe_load((CONFIGS_DIR / "sagemaker-llm.example.yaml").read_text())
    for bad in ("hf:model", "hf:org/../x", "hf:org/model@../main", "hf:/x", "hf:a/b/c"):
        raw["candidates"][0]["base_model"] = bad
        with pytest.raises(ConfigError, match="hf:<owner>/<name>@<revision>"):
            parse_config(raw, "test.yaml")


def test_the_local_target_refuses_hub_models_with_the_download_command():
    raw = yaml.safe_load((CONFIGS_DIR / "local-llm.yaml").read_text())
    raw["candidates"][0]["base_model"] = "hf:org/model@v2"
    with pytest.raises(ConfigError) as err:
        parse_config(raw, "test.yaml")
    assert "only the sagemaker target downloads" in str(err.value)
    assert "hf download org/model --revision v2 --local-dir models/model" in str(err.value)
    with pytest.raises(PlanError, match="local target never downloads weights"):
        resolve_base_model("hf:org/model")


def test_the_metadata_snapshot_has_no_weights_and_names_the_commit(hub, caplog):
    caplog.set_level(logging.WARNING, logger="fmops.hub_models")
    start = len(hub.requests)
    folder = hub_models.metadata_folder(f"hf:{TINY}")
    commit = hub_models.commit(folder)
    assert len(commit) == 40 and folder.parent.name == "snapshots"
    assert {"config.json", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.rglob("*.safetensors")) and not (folder / "pytorch_model.bin").exists()
    assert not any(f.endswith((".safetensors", ".bin")) for f in served(hub, TINY, start))
    # a branch is resolved to its commit, and the warning gives the pinned name
    assert f"base_model: hf:{TINY}@{commit}" in caplog.text


def test_the_weights_snapshot_has_the_top_level_safetensors_only(hub, tiny_folder):
    start = len(hub.requests)
    folder = hub_models.weights_folder(f"hf:{TINY}")
    assert sha(folder / "model.safetensors") == sha(tiny_folder / "model.safetensors")
    assert not (folder / "pytorch_model.bin").exists() and not (folder / "original").exists()
    assert sorted(f for f in served(hub, TINY, start) if "." in f and f.endswith("tensors")) == [
        "model.safetensors"
    ]


def test_a_repo_without_safetensors_is_refused(hub):
    with pytest.raises(hub_models.HubModelError, match="no .safetensors weights"):
        hub_models.weights_folder(f"hf:{BIN_ONLY}")
    with pytest.raises(hub_models.HubModelError, match="give the candidate's parameters"):
        hub_models.parameters(f"hf:{BIN_ONLY}")


def test_parameters_come_from_the_headers_over_range_requests(hub, tiny_folder):
    expected = count_parameters(tiny_folder / "model.safetensors")
    for repo in (TINY, SHARDED):
        start = len(hub.requests)
        assert hub_models.parameters(f"hf:{repo}") == expected, repo
        assert not any(f.endswith(".safetensors") for f in served(hub, repo, start)), repo
        ranged = [r for r in hub.requests[start:] if r.range and r.path.endswith(".safetensors")]
        assert ranged, f"{repo}: the headers were not read with Range requests"
    # with the weights on disk they are counted there, and the config's count wins over both
    hub_models.weights_folder(f"hf:{TINY}")
    start = len(hub.requests)
    assert hub_models.parameters(f"hf:{TINY}") == expected
    assert not [r for r in hub.requests[start:] if r.range]
    config = sagemaker_config(f"hf:{TINY}", parameters=123)
    assert base_model_parameters(config.candidates[0]) == 123


def test_a_gated_model_needs_a_token_which_is_never_logged(hub, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(hub_models.HubModelError) as err:
        hub_models.metadata_folder(f"hf:{GATED}")
    assert f"{GATED} is gated" in str(err.value) and "HF_TOKEN" in str(err.value)
    assert "never in the config" in str(err.value)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    folder = hub_models.weights_folder(f"hf:{GATED}")
    assert (folder / "model.safetensors").is_file()
    assert hub.token not in caplog.text


def test_a_missing_model_or_revision_names_the_problem(hub):
    with pytest.raises(hub_models.HubModelError, match="no model fmops-tests/nothing at http"):
        hub_models.metadata_folder("hf:fmops-tests/nothing")
    with pytest.raises(hub_models.HubModelError, match="has no revision 'v9'"):
        hub_models.metadata_folder(f"hf:{TINY}@v9")


def test_a_pinned_commit_needs_no_hub_and_an_unreachable_hub_is_transient(tiny_folder, monkeypatch):
    with HubServer() as own:
        commit = own.add_repo(TINY, tiny_folder)
        monkeypatch.setenv("HF_ENDPOINT", own.url)
        first = hub_models.weights_folder(f"hf:{TINY}@{commit}")
    # the server is gone: the commit is read from the cache
    assert hub_models.weights_folder(f"hf:{TINY}@{commit}") == first
    with pytest.raises(hub_models.HubUnreachableError, match="cannot reach the Hub") as err:
        hub_models.metadata_folder(f"hf:{GATED}")
    # not a HubModelError: Airflow retries it, fmops plan exits 1 rather than 2
    assert not isinstance(err.value, hub_models.HubModelError)
    assert isinstance(err.value, ConnectionError)


def sagemaker_config(base_model: str, parameters: int | None = None):
    """The shipped 7B example with the tiny model from the Hub in its place."""
    raw = yaml.safe_load((CONFIGS_DIR / "sagemaker-llm.example.yaml").read_text())
    raw["candidates"] = [
        {
            "name": "tiny-lora",
            "base_model": base_model,
            "method": "lora",
            "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            **({"parameters": parameters} if parameters else {}),
        }
    ]
    raw["sagemaker"]["bucket"] = BUCKET
    raw["sagemaker"]["endpoint"]["llm"]["max_total_tokens"] = 256  # the tiny model's context
    raw["sagemaker"]["endpoint"]["llm"]["max_input_tokens"] = 128
    return parse_config(raw, "test.yaml")


def test_the_plan_stages_the_commit_and_a_moved_branch_changes_the_cache_key(
    hub, tiny_folder, tmp_path
):
    repo = "fmops-tests/moving-lm"
    first = hub.add_repo(repo, tiny_folder)
    config = sagemaker_config(f"hf:{repo}")
    (plan,) = plan_training(config)
    channels = {c["ChannelName"]: c for c in plan["request"]["InputDataConfig"]}
    uri = channels["base_model"]["DataSource"]["S3DataSource"]["S3Uri"]
    assert uri == f"s3://{BUCKET}/fmops/models/fmops-tests-moving-lm-{first[:12]}/"
    assert plan["cache_fields"]["base_model"] == uri
    # sized from the parameters counted over the Hub: 1.97M for the tiny model
    params = count_parameters(tiny_folder / "model.safetensors")
    assert f"LoRA fine-tuning {params / 1e6:.2f}M parameters" in plan["instance"]["estimate"]

    moved = tmp_path / "moved"
    save_tiny_causal_lm(moved, chat_template=TINY_CHAT_TEMPLATE)
    (moved / "README.md").write_text("a second commit\n")
    second = hub.add_repo(repo, moved)
    (again,) = plan_training(config)
    assert second[:12] in again["cache_fields"]["base_model"]
    assert again["cache_key"] != plan["cache_key"]
    # pinned to the first commit, the key is the first plan's again
    (pinned,) = plan_training(sagemaker_config(f"hf:{repo}@{first}"))
    assert pinned["cache_fields"]["base_model"] == uri


def test_the_weights_upload_to_the_staged_name_once(hub, tiny_folder, aws_env):
    config = sagemaker_config(f"hf:{TINY}")
    folder, uri = Planner.of(config).base_model(f"hf:{TINY}")
    commit = hub_models.commit(folder)
    assert uri == f"s3://{BUCKET}/fmops/models/fmops-tests-tiny-lm-{commit[:12]}/"
    assert staging.model_name(f"hf:{TINY}", folder) == f"fmops-tests-tiny-lm-{commit[:12]}"
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=aws_env)
    s3.create_bucket(Bucket=BUCKET)
    weights = hub_models.weights_folder(f"hf:{TINY}")
    sent = staging.upload_folder(s3, weights, uri)
    key = f"fmops/models/fmops-tests-tiny-lm-{commit[:12]}/model.safetensors"
    assert key in sent and not any("pytorch_model" in k or "original/" in k for k in sent)
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha(tiny_folder / "model.safetensors")
    assert staging.upload_folder(s3, weights, uri) == []  # unchanged: nothing sent again
