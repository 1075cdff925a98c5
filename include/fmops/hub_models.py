"""Base models named by their Hugging Face Hub id: ``base_model: hf:<owner>/<name>[@<revision>]``.

The sagemaker target only. Its jobs run network-isolated, so they never reach the Hub: fmops
downloads the model on the machine that runs it (the Airflow worker, or ``fmops plan``'s
machine) with ``huggingface_hub``, and ``fmops.sagemaker.run.upload_inputs`` stages the files in
S3 under ``models/<owner>-<name>-<commit, 12 hex>/``, where the jobs read them as any model
folder. The local target never downloads weights: it refuses ``hf:`` and names the fix.

Two depths of the same snapshot (``snapshots/<commit>/`` in the cache):

- ``metadata_folder``: the JSON files, the tokenizer and the chat template (kilobytes). The plan
  and ``validate_data`` need no more: the instance sizing, the TGI checks and the token lengths
  read them. The parameter count comes from ``parameters:`` in the config, else from the
  safetensors headers on the Hub (HTTP range requests, a few KB per shard);
- ``weights_folder``: the same plus ``*.safetensors`` (pickled ``.bin`` weights are never
  downloaded: the job scripts load safetensors only), for the upload.

Where from and as whom, as ``huggingface_hub`` reads them: ``HF_ENDPOINT`` (a mirror, e.g. an
Artifactory Hugging Face remote; read at each call here, not at import), and ``HF_TOKEN`` or the
token that ``hf auth login`` stored, for gated and private models. The token never goes into a
config, a request or a log. The cache is ``<base models dir>/hub`` (``fmops.paths``), shared by
every run on the machine; a revision that is a commit is read from the cache without the Hub.

A revision that is a branch or tag (``main`` by default) is resolved to its commit when the run
reads it: the staged folder, the training cache key and the plan name the commit, and a warning
suggests pinning it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fmops.base_models import HubId, parse_hub
from fmops.paths import base_models_dir

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
# What a plan reads: configs, the tokenizer, the chat template, the safetensors index, licences.
METADATA_PATTERNS = [
    "*.json",
    "*.jinja",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
    "LICENSE*",
    "README.md",
]
# Sub-folders of some repos hold other formats of the same weights (Mistral's consolidated
# original/, onnx/, ...): the top-level safetensors are the transformers model.
IGNORE_PATTERNS = ["*/*"]
WEIGHT_PATTERNS = ["*.safetensors"]
SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TOKEN_FIX = (
    "accept the model's terms on its Hub page with your account, and give fmops a token with "
    "access: HF_TOKEN in the environment of the Airflow workers and of `fmops plan` (never in the "
    "config), or `hf auth login` on that machine"
)


class HubModelError(ValueError):
    """A Hub model cannot be used as named (missing, gated, no safetensors); the message says why
    and how to fix it. Retrying does not help."""


class HubUnreachableError(ConnectionError):
    """The Hub (or ``HF_ENDPOINT``) cannot be reached and the files are not cached: transient,
    worth a retry."""


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    return base_models_dir() / "hub"


def metadata_folder(base_model: str) -> Path:
    """The snapshot folder with the model's JSON files and tokenizer (no weights)."""
    return _snapshot(parse_hub(base_model), METADATA_PATTERNS)


def weights_folder(base_model: str) -> Path:
    """The snapshot folder with the safetensors weights too (gigabytes for a 7B model: once per
    commit on this machine)."""
    hub = parse_hub(base_model)
    folder = _snapshot(hub, METADATA_PATTERNS + WEIGHT_PATTERNS)
    if not any(folder.glob("*.safetensors")):
        raise HubModelError(
            f"base_model {base_model}: {hub.repo_id} at {hub.revision} has no .safetensors "
            "weights at its top level (fmops does not load pickled .bin weights): choose a "
            "revision or a repository with safetensors weights"
        )
    return folder


def commit(folder: Path) -> str:
    """The commit of a snapshot folder (``snapshots/<commit>``)."""
    return folder.name


def parameters(base_model: str) -> int:
    """The parameter count, from the safetensors headers: on disk when the weights are here,
    else over HTTP range requests to the Hub (the shards named by the index in the metadata)."""
    from fmops.catalog import count_parameters

    hub = parse_hub(base_model)
    folder = metadata_folder(base_model)
    if any(folder.glob("*.safetensors")):
        return count_parameters(folder)
    index = folder / SAFETENSORS_INDEX
    if index.is_file():
        shards = tuple(sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())))
    else:
        shards = (SAFETENSORS_SINGLE,)
    return _remote_parameters(HubId(hub.repo_id, commit(folder)), shards, endpoint())


@functools.lru_cache(maxsize=64)
def _remote_parameters(hub: HubId, shards: tuple[str, ...], hub_endpoint: str) -> int:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, SafetensorsParsingError

    api = HfApi(endpoint=hub_endpoint)
    total = 0
    for shard in shards:
        try:
            with _hub_errors(hub):
                found = api.parse_safetensors_file_metadata(
                    hub.repo_id, shard, revision=hub.revision
                )
        except (EntryNotFoundError, SafetensorsParsingError) as err:
            raise HubModelError(
                f"base_model {hub}: cannot count its parameters from the safetensors header of "
                f"{shard} ({type(err).__name__}); give the candidate's parameters: in the config, "
                "or choose a repository with safetensors weights"
            ) from None
        total += sum(found.parameter_count.values())
    return total


def _snapshot(hub: HubId, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # tqdm bars would flood the Airflow task log; one line says it all
    started = time.monotonic()
    with _hub_errors(hub):
        folder = Path(
            snapshot_download(
                hub.repo_id,
                revision=hub.revision,
                allow_patterns=patterns,
                ignore_patterns=IGNORE_PATTERNS,
                cache_dir=cache_dir(),
                endpoint=endpoint(),
            )
        )
    files = [p for p in folder.iterdir() if p.is_file()]
    log.info(
        "%s: %d files, %.1f MB, in %s (%.1f s)",
        hub,
        len(files),
        sum(p.stat().st_size for p in files) / 1e6,
        folder,
        time.monotonic() - started,
    )
    if not (folder / "config.json").is_file():
        raise HubModelError(
            f"base_model {hub}: {hub.repo_id} has no config.json at its top level, so it is not "
            "a transformers model folder: choose a transformers model repository"
        )
    if not hub.pinned:
        log.warning(
            "base_model %s is the commit %s today; pin it (base_model: hf:%s@%s) so that later "
            "runs train the same weights",
            hub,
            commit(folder),
            hub.repo_id,
            commit(folder),
        )
    return folder


@contextmanager
def _hub_errors(hub: HubId) -> Iterator[None]:
    """``huggingface_hub``'s errors as fmops' two kinds: what the user must fix (missing, gated,
    unknown revision) and what a retry may fix (no connection and no cached copy)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"base_model {hub}"
    try:
        yield
    except GatedRepoError:
        raise HubModelError(
            f"{where}: {hub.repo_id} is gated and this machine has no token with access to it "
            f"at {endpoint()}: {TOKEN_FIX}"
        ) from None
    except RepositoryNotFoundError:
        raise HubModelError(
            f"{where}: no model {hub.repo_id} at {endpoint()}, or it is private: check the id; "
            f"for a private model, {TOKEN_FIX}"
        ) from None
    except RevisionNotFoundError:
        raise HubModelError(
            f"{where}: {hub.repo_id} has no revision {hub.revision!r}: give a branch, a tag or "
            "a commit of the repository"
        ) from None
    except LocalEntryNotFoundError as err:
        raise HubUnreachableError(
            f"{where}: cannot reach the Hub at {endpoint()} and its files are not in the cache "
            f"{cache_dir()}: check the network (or set HF_ENDPOINT to a mirror); a commit once "
            "downloaded is read from the cache without the Hub"
        ) from err
