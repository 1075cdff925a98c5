"""A Hugging Face Hub on 127.0.0.1 for tests: the model-repository API that ``huggingface_hub``
reads, served over real HTTP, as moto's server stands in for AWS (``tests/moto_server.py``).

It is written here by hand because no PyPI package serves the Hub's API locally. The real
``huggingface_hub`` client runs against it, unchanged: point it at ``HubServer.url`` by passing
``endpoint=server.url`` to ``HfApi``, ``snapshot_download`` or ``hf_hub_download``
(``huggingface_hub.constants.ENDPOINT`` is read once, when the package is imported, so setting
``HF_ENDPOINT`` in a test is too late). ``tests/`` is on ``sys.path``, so a test imports it as
``from hf_hub_server import HubServer``::

    with HubServer() as hub:
        commit = hub.add_repo("mistralai/Mistral-7B-Instruct-v0.3", folder)
        path = snapshot_download(
            "mistralai/Mistral-7B-Instruct-v0.3", endpoint=hub.url, cache_dir=tmp_path
        )

What is served, as huggingface.co answers for a model repository:

- ``GET /api/models/{repo_id}`` and ``GET /api/models/{repo_id}/revision/{revision}``: the repo's
  info (``HfApi.model_info`` / ``repo_info``): ``id``, ``sha``, ``siblings`` (with ``size``,
  ``blobId`` and ``lfs`` when asked with ``?blobs=true``), ``gated``, ``safetensors`` (parameters
  per dtype, read from the weights' headers), ``config`` (``architectures``, ``model_type``).
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}]?recursive=&cursor=``: the tree listing
  (``HfApi.list_repo_tree``, which ``snapshot_download`` uses), paginated with a ``Link: <...>;
  rel="next"`` header as the Hub does (``tree_page_size`` entries a page).
- ``HEAD`` and ``GET /{repo_id}/resolve/{revision}/{path}``: a file, with ``ETag``,
  ``X-Repo-Commit`` and, for LFS files, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``;
  a ``Range: bytes=...`` request gets ``206`` and ``Content-Range`` (how
  ``parse_safetensors_file_metadata`` reads only a weights file's header).

A revision is a branch, a tag (``add_tag``) or a full commit sha. Errors carry the Hub's
``X-Error-Code`` header, which is what ``huggingface_hub`` turns into its exceptions: an unknown
repo is ``401 RepoNotFound`` (the Hub's answer without a token), an unknown revision ``404
RevisionNotFound``, a missing file ``404 EntryNotFound`` (with ``X-Repo-Commit``). A gated repo's
info and tree are public, as on the Hub, but its files answer ``401 GatedRepo`` without a token
and ``403 GatedRepo`` with a token other than the server's ``token``.

Not emulated: Xet storage (no ``X-Xet-*`` headers and no ``xetHash``, so the client downloads
over plain HTTP even where ``hf_xet`` is installed); the Hub's redirect of LFS files to its CDN
(they are served in place, with the same ``X-Linked-*`` headers); uploads, private repos,
datasets and spaces.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import prod
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

DEFAULT_TOKEN = "hf_test_token_for_the_local_hub"
# Stored with Git LFS, as the Hub's default .gitattributes does for weights.
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
SAFETENSORS_SINGLE_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class HubRequest(NamedTuple):
    """One request the server answered: ``path`` is percent-decoded, without the query."""

    method: str
    path: str
    range: str | None


# --- repositories: files, git objects, commits ----------------------------------------------------


def _git_oid(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


@dataclass(frozen=True)
class _File:
    path: str
    content: bytes
    oid: str  # the git blob's sha1: of the content, or of the LFS pointer
    sha256: str | None = None  # LFS files only
    pointer_size: int | None = None

    @classmethod
    def read(cls, path: str, content: bytes) -> _File:
        if not path.endswith(LFS_SUFFIXES):
            return cls(path, content, _git_oid("blob", content))
        sha256 = hashlib.sha256(content).hexdigest()
        pointer = (
            "version https://git-lfs.github.com/spec/v1\n"
            f"oid sha256:{sha256}\nsize {len(content)}\n"
        ).encode()
        return cls(path, content, _git_oid("blob", pointer), sha256, len(pointer))

    @property
    def etag(self) -> str:
        return self.sha256 or self.oid

    def tree_entry(self) -> dict:
        size = len(self.content)
        entry: dict = {"type": "file", "oid": self.oid, "size": size, "path": self.path}
        if self.sha256 is not None:
            entry["lfs"] = {"oid": self.sha256, "size": size, "pointerSize": self.pointer_size}
        return entry

    def sibling(self, blobs: bool) -> dict:
        sibling: dict = {"rfilename": self.path}
        if blobs:
            sibling.update(size=len(self.content), blobId=self.oid)
            if self.sha256 is not None:
                sibling["lfs"] = {
                    "sha256": self.sha256,
                    "size": len(self.content),
                    "pointerSize": self.pointer_size,
                }
        return sibling


def _tree_oids(files: dict[str, _File]) -> tuple[str, dict[str, str]]:
    """The git tree oid of the root and of every folder (by path) holding ``files``."""
    folders: dict[str, str] = {}

    def tree(prefix: str) -> str:
        names: dict[str, tuple[str, str]] = {}  # name -> (mode, oid)
        for path in files:
            if not path.startswith(prefix):
                continue
            name, _, rest = path[len(prefix) :].partition("/")
            if rest:
                if name not in names:
                    names[name] = ("40000", tree(f"{prefix}{name}/"))
            else:
                names[name] = ("100644", files[path].oid)
        # git orders a tree's entries by name, a folder's name as if it ended with "/"
        ordered = sorted(names.items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else ""))
        body = b"".join(
            f"{mode} {name}\0".encode() + bytes.fromhex(oid) for name, (mode, oid) in ordered
        )
        oid = _git_oid("tree", body)
        if prefix:
            folders[prefix.rstrip("/")] = oid
        return oid

    return tree(""), folders


@dataclass
class _Commit:
    sha: str
    files: dict[str, _File]
    folders: dict[str, str]  # folder path -> git tree oid
    date: str

    def entries(self, folder: str, recursive: bool) -> list[dict] | None:
        """The tree entries under ``folder`` ("" for the root), None if it is not a folder."""
        if folder and folder not in self.folders:
            return None
        prefix = f"{folder}/" if folder else ""
        entries = [
            {"type": "directory", "oid": oid, "size": 0, "path": path}
            for path, oid in self.folders.items()
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
        ]
        entries += [
            file.tree_entry()
            for path, file in self.files.items()
            if path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])
        ]
        return sorted(entries, key=lambda entry: entry["path"])

    def safetensors_parameters(self) -> dict[str, int] | None:
        """Parameters per dtype of the model's weights, as the Hub reports them in model info."""
        if SAFETENSORS_INDEX_FILE in self.files:
            try:
                index = json.loads(self.files[SAFETENSORS_INDEX_FILE].content)
                shards = sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, AttributeError):
                return None
        elif SAFETENSORS_SINGLE_FILE in self.files:
            shards = [SAFETENSORS_SINGLE_FILE]
        else:
            return None
        counts: dict[str, int] = {}
        for shard in shards:
            if shard not in self.files:
                return None
            content = self.files[shard].content
            try:
                (length,) = struct.unpack("<Q", content[:8])
                header = json.loads(content[8 : 8 + length])
            except (struct.error, ValueError):
                return None
            for name, tensor in header.items():
                if name != "__metadata__":
                    counts[tensor["dtype"]] = counts.get(tensor["dtype"], 0) + prod(tensor["shape"])
        return counts

    def config(self) -> dict | None:
        if "config.json" not in self.files:
            return None
        try:
            config = json.loads(self.files["config.json"].content)
        except ValueError:
            return None
        if not isinstance(config, dict):
            return None
        return {key: config[key] for key in ("architectures", "model_type") if key in config}


@dataclass
class _Repo:
    repo_id: str
    gated: bool
    default_branch: str
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, _Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> _Commit | None:
        if revision in self.refs:
            return self.commits[self.refs[revision]]
        return self.commits.get(revision) if _COMMIT_SHA.fullmatch(revision) else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --- the server -----------------------------------------------------------------------------------


class HubServer:
    """The Hub's model-repo API on a free port of 127.0.0.1, served from a daemon thread.

    It starts when it is created; ``stop()`` (or leaving the ``with`` block) closes it.
    ``token`` is the one token that opens gated repos (``Authorization: Bearer <token>``);
    ``tree_page_size`` is how many entries a page of a tree listing holds (the Hub's is 1000).
    """

    def __init__(self, token: str = DEFAULT_TOKEN, *, tree_page_size: int = 1000) -> None:
        self.token = token
        self.tree_page_size = tree_page_size
        self._repos: dict[str, _Repo] = {}
        self._requests: list[HubRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits
            name="hf-hub-server",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and close the socket (again: nothing)."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def add_repo(
        self, repo_id: str, folder: Path, *, gated: bool = False, branch: str = "main"
    ) -> str:
        """Publish every file under ``folder`` as one commit of model repo ``repo_id`` (created
        if new) at the head of ``branch``, and return the commit's sha.

        The files are read now: later changes to ``folder`` are not served. The sha is a git
        commit's over the files' tree (and the branch's previous commit, if any), so the same
        files give the same sha. ``gated`` applies to the whole repo, from now on.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        files: dict[str, _File] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                files[name] = _File.read(name, path.read_bytes())
        tree, folders = _tree_oids(files)
        with self._lock:
            repo = self._repos.get(repo_id)
            if repo is None:
                repo = _Repo(repo_id, gated, default_branch=branch, created_at=_now())
                self._repos[repo_id] = repo
            repo.gated = gated
            parent = repo.refs.get(branch)
            body = (
                f"tree {tree}\n"
                + (f"parent {parent}\n" if parent else "")
                + "author HubServer <hub@127.0.0.1> 0 +0000\n"
                + "committer HubServer <hub@127.0.0.1> 0 +0000\n"
                + f"\nUpload {repo_id} to {branch}\n"
            ).encode()
            sha = _git_oid("commit", body)
            repo.commits.setdefault(sha, _Commit(sha, files, folders, _now()))
            repo.refs[branch] = sha
        return sha

    def add_tag(self, repo_id: str, tag: str, revision: str | None = None) -> str:
        """Tag ``revision`` (a branch or commit; the default branch if None) of ``repo_id``,
        and return the tagged commit's sha."""
        with self._lock:
            repo = self._repos[repo_id]
            commit = repo.resolve(revision or repo.default_branch)
            if commit is None:
                raise KeyError(f"{repo_id} has no revision {revision!r}")
            repo.refs[tag] = commit.sha
            return commit.sha

    @property
    def requests(self) -> list[HubRequest]:
        """A copy of the log of every request served so far, in order."""
        with self._lock:
            return list(self._requests)

    def full_downloads(self, suffix: str = ".safetensors") -> list[HubRequest]:
        """The GETs of whole files (no ``Range`` header) whose path ends with ``suffix``."""
        return [
            request
            for request in self.requests
            if request.method == "GET"
            and request.range is None
            and "/resolve/" in request.path
            and request.path.endswith(suffix)
        ]

    # --- used by the handler ---

    def _record(self, request: HubRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _repo_id(self, parts: list[str]) -> tuple[str, list[str]]:
        """Split ``parts`` into a repo id ("owner/name", or a bare "name") and what follows."""
        with self._lock:
            for n in (2, 1):
                if len(parts) >= n and "/".join(parts[:n]) in self._repos:
                    return "/".join(parts[:n]), parts[n:]
        n = 2 if len(parts) >= 2 and parts[1] not in ("revision", "tree", "resolve") else 1
        return "/".join(parts[:n]), parts[n:]


class _Error(Exception):
    """An error answer of the Hub: status, ``X-Error-Code`` and message."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _repo_not_found() -> _Error:
    return _Error(401, "Repository not found", "RepoNotFound")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a ``Range: bytes=`` header, None to serve the whole file.

    Raises the Hub's 416 when the range starts past the end."""
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None  # absent, several ranges, or malformed: the whole file, as RFC 9110 allows
    first, last = match.groups()
    if first == "":  # the last N bytes
        if int(last) == 0:
            raise _Error(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
        return max(size - int(last), 0), size - 1
    start, end = int(first), (int(last) if last else None)
    if end is not None and end < start:
        return None
    if start >= size:
        raise _Error(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, size - 1 if end is None else min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    server_version = "HubServer"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass  # tests read ``HubServer.requests`` instead

    def do_GET(self) -> None:  # noqa: N802
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        self.hub._record(HubRequest(self.command, unquote(url.path), self.headers.get("Range")))
        # Split before decoding: a revision or a tree path may hold an encoded "/" (%2F).
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        try:
            if parts[:2] == ["api", "models"] and len(parts) > 2:
                self._api(parts[2:], query)
            elif "resolve" in parts[1:]:
                at = parts.index("resolve", 1)
                if len(parts) < at + 3:
                    raise _Error(404, f"Not found: {url.path}")
                repo_id = "/".join(parts[:at])
                self._resolve(repo_id, parts[at + 1], "/".join(parts[at + 2 :]))
            else:
                raise _Error(404, f"HubServer does not emulate {self.command} {url.path}")
        except _Error as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    # --- answers ---

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, data: object, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        self._send(200, headers, body)

    def _send_error(self, error: _Error) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", **error.headers}
        if error.code is not None:
            headers["X-Error-Code"] = error.code
        headers["X-Error-Message"] = error.message
        self._send(error.status, headers, json.dumps({"error": error.message}).encode())

    # --- what the Hub checks first: the repo, access to its files, the revision ---

    def _find(self, repo_id: str, revision: str, files: bool) -> tuple[_Repo, _Commit]:
        repo = self.hub._repo(repo_id)
        if repo is None:
            raise _repo_not_found()
        if files and repo.gated:
            authorization = self.headers.get("Authorization")
            if authorization is None:
                raise _Error(
                    401,
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                    "GatedRepo",
                )
            if authorization != f"Bearer {self.hub.token}":
                raise _Error(
                    403,
                    f"Access to model {repo_id} is restricted and you are not in the authorized "
                    f"list. Visit {self.hub.url}/{repo_id} to ask for access.",
                    "GatedRepo",
                )
        commit = repo.resolve(revision)
        if commit is None:
            raise _Error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo, commit

    def _api(self, parts: list[str], query: dict[str, str]) -> None:
        repo_id, rest = self.hub._repo_id(parts)
        if not rest or (rest[0] == "revision" and len(rest) == 2):
            repo = self.hub._repo(repo_id)
            revision = rest[1] if rest else (repo.default_branch if repo else "main")
            self._send_json(self._info(*self._find(repo_id, revision, files=False), query))
        elif rest[0] == "tree" and len(rest) >= 2:
            self._tree(repo_id, rest[1], "/".join(rest[2:]), query)
        else:
            raise _Error(404, f"HubServer does not emulate {self.command} {self.path}")

    def _info(self, repo: _Repo, commit: _Commit, query: dict[str, str]) -> dict:
        blobs = query.get("blobs", "").lower() in ("true", "1")
        author, _, _ = repo.repo_id.rpartition("/")
        info: dict = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": author or None,
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": False,
            "disabled": False,
            "gated": "manual" if repo.gated else False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [file.sibling(blobs) for file in commit.files.values()],
            "usedStorage": sum(len(file.content) for file in commit.files.values()),
        }
        parameters = commit.safetensors_parameters()
        if parameters is not None:
            info["safetensors"] = {"parameters": parameters, "total": sum(parameters.values())}
        config = commit.config()
        if config is not None:
            info["config"] = config
        return info

    def _tree(self, repo_id: str, revision: str, folder: str, query: dict[str, str]) -> None:
        _, commit = self._find(repo_id, revision, files=False)
        recursive = query.get("recursive", "").lower() in ("true", "1")
        entries = commit.entries(folder.strip("/"), recursive)
        if entries is None:
            raise _Error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        start = int(query.get("cursor", "0") or 0)
        page = entries[start : start + self.hub.tree_page_size]
        headers = {}
        if start + self.hub.tree_page_size < len(entries):
            next_query = urlencode({**query, "cursor": str(start + self.hub.tree_page_size)})
            path = urlsplit(self.path).path
            headers["Link"] = f'<{self.hub.url}{path}?{next_query}>; rel="next"'
        self._send_json(page, headers)

    def _resolve(self, repo_id: str, revision: str, path: str) -> None:
        _, commit = self._find(repo_id, revision, files=True)
        file = commit.files.get(path)
        if file is None:
            raise _Error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        size = len(file.content)
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{file.etag}"',
            "X-Repo-Commit": commit.sha,
        }
        if file.sha256 is not None:
            headers["X-Linked-Etag"] = f'"{file.sha256}"'
            headers["X-Linked-Size"] = str(size)
        span = _byte_range(self.headers.get("Range"), size)
        if span is None:
            self._send(200, headers, file.content)
            return
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        self._send(206, headers, file.content[first : last + 1])
