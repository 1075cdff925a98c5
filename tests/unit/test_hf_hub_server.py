"""The local Hugging Face Hub (``tests/hf_hub_server.py``) answers the real ``huggingface_hub``
client as huggingface.co does: snapshots (filtered, pinned, offline), safetensors metadata read
with Range requests, gated, missing and unknown repos, revisions and files, paginated trees.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hf_hub_server import HubServer
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder
from safetensors.torch import save_file

REPO = "mistralai/Mistral-7B-Instruct-v0.3"
CONFIG = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 64}
# model.safetensors below: 512*64 + 64*64 + 64 F32 and 128*64 BF16 parameters, 164 KB (more
# than the 100 kB the client reads first, so that reading the header is not reading the file).
F32_PARAMS = 512 * 64 + 64 * 64 + 64
BF16_PARAMS = 128 * 64


def _weights() -> dict[str, torch.Tensor]:
    return {
        "model.embed_tokens.weight": torch.randn(512, 64),
        "model.layers.0.mlp.weight": torch.randn(64, 64),
        "model.layers.0.mlp.bias": torch.randn(64),
        "lm_head.weight": torch.randn(128, 64).to(torch.bfloat16),
    }


def _write_model(folder: Path, config: dict = CONFIG) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 8}))
    (folder / "tokenizer").mkdir(exist_ok=True)
    (folder / "tokenizer" / "vocab.txt").write_text("hello\n")
    save_file(_weights(), folder / "model.safetensors")
    return folder


@pytest.fixture(autouse=True)
def _no_machine_hub_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No developer's offline switch or default cache: HfApi.hf_hub_download (which
    get_safetensors_metadata calls on a sharded repo) writes to the default cache."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return _write_model(tmp_path / "model")


def _served(hub: HubServer, name: str) -> list[tuple[str, str | None]]:
    """(method, range) of the requests for file ``name`` of any repo and revision."""
    return [
        (r.method, r.range)
        for r in hub.requests
        if "/resolve/" in r.path and r.path.split("/resolve/")[1].partition("/")[2] == name
    ]


def test_a_json_only_snapshot_is_the_commit_folder_without_the_weights(
    hub: HubServer, model: Path, tmp_path: Path
) -> None:
    commit = hub.add_repo(REPO, model)
    cache = tmp_path / "cache"

    path = snapshot_download(
        REPO, revision="main", endpoint=hub.url, cache_dir=cache, allow_patterns=["*.json"]
    )

    storage = cache / "models--mistralai--Mistral-7B-Instruct-v0.3"
    assert Path(path) == storage / "snapshots" / commit
    assert json.loads((Path(path) / "config.json").read_text()) == CONFIG
    assert sorted(p.name for p in Path(path).iterdir()) == [
        "config.json",
        "generation_config.json",
    ]
    assert (storage / "refs" / "main").read_text() == commit
    assert _served(hub, "model.safetensors") == []


def test_a_full_snapshot_has_every_file_byte_for_byte_in_the_hubs_cache_layout(
    hub: HubServer, model: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, model)
    cache = tmp_path / "cache"

    path = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=cache))

    for name in ("config.json", "generation_config.json", "tokenizer/vocab.txt"):
        assert (path / name).read_bytes() == (model / name).read_bytes()
    weights = (model / "model.safetensors").read_bytes()
    assert (path / "model.safetensors").read_bytes() == weights
    # Blobs are named by ETag: the sha256 of an LFS file, the git blob sha1 of any other
    # ("hello\n" is git's well-known ce01362...).
    blobs = cache / "models--mistralai--Mistral-7B-Instruct-v0.3" / "blobs"
    sha256 = (path / "model.safetensors").resolve().name
    assert (blobs / sha256).read_bytes() == weights
    assert len(sha256) == 64
    assert (path / "tokenizer" / "vocab.txt").resolve().name == (
        "ce013625030ba8dba906f756967f9e9ca394464a"
    )
    assert ("GET", None) in _served(hub, "model.safetensors")


def test_an_offline_snapshot_returns_the_cached_folder_without_a_request(
    hub: HubServer, model: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, model)
    cache = tmp_path / "cache"
    online = snapshot_download(REPO, endpoint=hub.url, cache_dir=cache)
    served = len(hub.requests)

    offline = snapshot_download(REPO, endpoint=hub.url, cache_dir=cache, local_files_only=True)

    assert offline == online
    assert (Path(offline) / "model.safetensors").read_bytes() == (
        model / "model.safetensors"
    ).read_bytes()
    assert len(hub.requests) == served


def test_a_pinned_commit_keeps_its_files_after_main_moves_on(
    hub: HubServer, model: Path, tmp_path: Path
) -> None:
    first = hub.add_repo(REPO, model)
    second = hub.add_repo(REPO, _write_model(tmp_path / "v2", {**CONFIG, "hidden_size": 128}))
    hub.add_tag(REPO, "v0.1", first)
    assert first != second
    api = HfApi(endpoint=hub.url)

    pinned = Path(snapshot_download(REPO, revision=first, endpoint=hub.url, cache_dir=tmp_path))
    tagged = Path(snapshot_download(REPO, revision="v0.1", endpoint=hub.url, cache_dir=tmp_path))
    latest = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path))

    assert pinned.name == tagged.name == first
    assert latest.name == second
    assert json.loads((pinned / "config.json").read_text())["hidden_size"] == 64
    assert json.loads((latest / "config.json").read_text())["hidden_size"] == 128
    # A commit needs no resolving: the client asks the tree of that commit straight away.
    assert not any(r.path.endswith(f"/revision/{first}") for r in hub.requests)
    assert api.model_info(REPO, revision=first).sha == first
    assert api.model_info(REPO).sha == second


def test_safetensors_metadata_counts_parameters_from_the_header_alone(
    hub: HubServer, model: Path
) -> None:
    hub.add_repo(REPO, model)
    api = HfApi(endpoint=hub.url)

    metadata = api.get_safetensors_metadata(REPO)

    assert not metadata.sharded
    assert metadata.parameter_count == {"F32": F32_PARAMS, "BF16": BF16_PARAMS}
    assert metadata.files_metadata["model.safetensors"].tensors["lm_head.weight"].shape == [128, 64]
    assert _served(hub, "model.safetensors") == [("HEAD", None), ("GET", "bytes=0-100000")]
    assert hub.full_downloads() == []
    # The Hub's own count, in model info, agrees.
    info = api.model_info(REPO)
    assert info.safetensors is not None
    assert info.safetensors.parameters == {"F32": F32_PARAMS, "BF16": BF16_PARAMS}
    assert info.safetensors.total == F32_PARAMS + BF16_PARAMS


def test_a_header_longer_than_the_first_range_is_read_with_a_second_range(
    hub: HubServer, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(_weights(), folder / "model.safetensors", metadata={"note": "x" * 150_000})
    hub.add_repo(REPO, folder)

    metadata = HfApi(endpoint=hub.url).get_safetensors_metadata(REPO)

    assert metadata.parameter_count == {"F32": F32_PARAMS, "BF16": BF16_PARAMS}
    assert metadata.files_metadata["model.safetensors"].metadata["note"] == "x" * 150_000
    gets = [r for m, r in _served(hub, "model.safetensors") if m == "GET"]
    assert gets[0] == "bytes=0-100000"
    assert len(gets) == 2 and gets[1] is not None and gets[1].startswith("bytes=8-")
    assert hub.full_downloads() == []


def test_sharded_weights_are_counted_through_the_index(hub: HubServer, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    weights = _weights()
    shards = {
        "model-00001-of-00002.safetensors": ["model.embed_tokens.weight", "lm_head.weight"],
        "model-00002-of-00002.safetensors": [
            "model.layers.0.mlp.weight",
            "model.layers.0.mlp.bias",
        ],
    }
    for shard, names in shards.items():
        save_file({name: weights[name] for name in names}, folder / shard)
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
        "weight_map": {name: shard for shard, names in shards.items() for name in names},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    hub.add_repo(REPO, folder)
    api = HfApi(endpoint=hub.url)

    metadata = api.get_safetensors_metadata(REPO)

    assert metadata.sharded
    assert metadata.parameter_count == {"F32": F32_PARAMS, "BF16": BF16_PARAMS}
    assert metadata.weight_map == index["weight_map"]
    assert metadata.metadata == index["metadata"]
    for shard in shards:
        assert ("GET", "bytes=0-100000") in _served(hub, shard)
    assert hub.full_downloads() == []
    info = api.model_info(REPO)
    assert info.safetensors is not None and info.safetensors.total == F32_PARAMS + BF16_PARAMS


def test_a_gated_repo_needs_the_servers_token(hub: HubServer, model: Path, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, model, gated=True)
    api = HfApi(endpoint=hub.url)

    # As on the Hub, a gated repo's info is public; its files are not.
    assert api.model_info(REPO, token=False).gated == "manual"
    with pytest.raises(GatedRepoError) as without_token:
        snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "no-token", token=False)
    assert without_token.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as wrong_token:
        hf_hub_download(
            REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path / "bad", token="hf_nope"
        )
    assert wrong_token.value.response.status_code == 403
    with pytest.raises(GatedRepoError):
        api.get_safetensors_metadata(REPO, token=False)

    path = snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "ok", token=hub.token)

    assert Path(path).name == commit
    assert (Path(path) / "model.safetensors").read_bytes() == (
        model / "model.safetensors"
    ).read_bytes()
    assert api.get_safetensors_metadata(REPO, token=hub.token).parameter_count == {
        "F32": F32_PARAMS,
        "BF16": BF16_PARAMS,
    }


def test_an_unknown_repo_is_not_found(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError) as error:
        snapshot_download("mistralai/no-such-model", endpoint=hub.url, cache_dir=tmp_path)

    assert not isinstance(error.value, GatedRepoError)
    assert error.value.response.status_code == 401
    assert error.value.response.headers["X-Error-Code"] == "RepoNotFound"
    assert not HfApi(endpoint=hub.url).repo_exists("mistralai/no-such-model")


def test_an_unknown_revision_or_commit_is_not_found(
    hub: HubServer, model: Path, tmp_path: Path
) -> None:
    hub.add_repo(REPO, model)

    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="no-such-branch", endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="0" * 40, endpoint=hub.url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9", endpoint=hub.url, cache_dir=tmp_path)


def test_a_missing_file_is_an_entry_not_found(hub: HubServer, model: Path, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, model)
    api = HfApi(endpoint=hub.url)

    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "tokenizer.json", endpoint=hub.url, cache_dir=tmp_path)

    # The client records the absence under the commit the Hub names.
    no_exist = tmp_path / "models--mistralai--Mistral-7B-Instruct-v0.3" / ".no_exist" / commit
    assert (no_exist / "tokenizer.json").exists()
    assert api.file_exists(REPO, "config.json")
    assert api.file_exists(REPO, "tokenizer/vocab.txt")
    assert not api.file_exists(REPO, "tokenizer.json")


def test_a_tree_listing_comes_in_pages(tmp_path: Path) -> None:
    model = _write_model(tmp_path / "model")
    with HubServer(tree_page_size=2) as hub:
        commit = hub.add_repo(REPO, model)
        api = HfApi(endpoint=hub.url)

        tree = list(api.list_repo_tree(REPO, recursive=True))
        top = list(api.list_repo_tree(REPO))
        path = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "cache"))
        tree_requests = [r for r in hub.requests if "/tree/" in r.path]

    files = sorted(f.path for f in tree if isinstance(f, RepoFile))
    assert files == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer/vocab.txt",
    ]
    assert [f.path for f in tree if isinstance(f, RepoFolder)] == ["tokenizer"]
    assert "tokenizer/vocab.txt" not in [f.path for f in top]
    weights = next(f for f in tree if f.path == "model.safetensors")
    assert isinstance(weights, RepoFile) and weights.lfs is not None
    assert weights.lfs.size == (model / "model.safetensors").stat().st_size
    assert path.name == commit and (path / "tokenizer" / "vocab.txt").read_text() == "hello\n"
    # 2 entries a page: 3 pages for the 5 entries of a recursive listing, 2 for the 4 at the top
    assert len(tree_requests) == 3 + 2 + 3


def test_byte_ranges_are_answered_as_http_says(hub: HubServer, model: Path) -> None:
    hub.add_repo(REPO, model)
    url = f"{hub.url}/{REPO}/resolve/main/model.safetensors"
    weights = (model / "model.safetensors").read_bytes()

    def get(byte_range: str) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, headers={"Range": byte_range})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    status, headers, body = get("bytes=-10")
    assert (status, body) == (206, weights[-10:])
    size = len(weights)
    assert headers["Content-Range"] == f"bytes {size - 10}-{size - 1}/{size}"
    status, _, body = get("bytes=8-15")
    assert (status, body) == (206, weights[8:16])
    status, headers, _ = get(f"bytes={len(weights)}-")
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(weights)}"
