"""The files a registered version serves, pinned by their digests: what was reviewed is what runs.

At registration (``fmops.registry.registration``) fmops lists the sha256 of every file it logs
for serving: the model folder (weights, tokenizer, label map or prompt format, LoRA adapter) and
the serving handlers' code. The list (``MANIFEST``) goes on the version's source run, and its
own sha256 on the version (tag ``TAG``), which a reviewer approves with it. Before a deployment
serves a downloaded version, ``verify`` recomputes every digest: a file changed, added or
removed in the artifact store since (by whoever can write there) is refused, by name, and so is
a list changed to match.

The list also records the archive the model folder was unpacked from (``ARCHIVE``: the training
job's ``model.tar.gz``, its sha256 and size, and the S3 object version read when the bucket is
versioned), since a SageMaker endpoint serves that archive itself, not MLflow's copy of its files.
Before a SageMaker model is created from it, ``archive_digests`` reads the archive once, as a
stream, and ``verify_archive`` refuses one whose bytes are not the registered ones, naming each
member file that changed, was added or is missing (the members map onto the list's model folder).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MANIFEST = "fmops-artifact-digests.json"  # on the version's source run
TAG = "fmops.artifacts_sha256"  # on the version: the sha256 of the manifest
ARCHIVE = "archive"  # in the manifest: the archive the model folder was unpacked from
_CHUNK = 1 << 20


class ArtifactDigestError(LookupError):
    """A version's files are not the ones registered (a deterministic error: never retried)."""


def file_sha256(path: Path) -> str:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (links followed, as a loader would), by its relative path."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def manifest(model_dir: Path, code: list[Path]) -> dict[str, dict[str, str]]:
    """What a version serves: the model folder's files and the handlers' code files."""
    return {
        "model_dir": folder_digests(model_dir),
        "code": {p.name: file_sha256(p) for p in sorted(code)},
    }


def manifest_sha256(found: dict[str, Any]) -> str:
    canonical = json.dumps(found, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def check_pinned(found: dict[str, Any], pinned: str | None, what: str) -> None:
    """Refuse (``ArtifactDigestError``) a manifest ``found`` whose sha256 is not ``pinned`` (the
    version's tag), and a version without the tag."""
    if not pinned:
        raise ArtifactDigestError(
            f"{what} has no tag {TAG}: it was registered without the digests of its files, so "
            "what it serves cannot be checked against what was reviewed; register it again "
            "(run fmops_finetune) to deploy it"
        )
    if manifest_sha256(found) != pinned:
        raise ArtifactDigestError(
            f"{what}: its list of file digests ({MANIFEST}) was changed after registration (its "
            f"sha256 is not the version's {TAG}); nothing of it is deployed"
        )


def verify(
    found: dict[str, Any], pinned: str | None, model_dir: Path, code_dir: Path, what: str
) -> None:
    """Refuse (``ArtifactDigestError``) a download whose files differ from the manifest
    ``found``, or a manifest whose sha256 is not ``pinned`` (the version's tag)."""
    check_pinned(found, pinned, what)
    problems = _compare("model_dir", found.get("model_dir", {}), folder_digests(model_dir))
    code = found.get("code", {})
    served = {name: file_sha256(code_dir / name) for name in code if (code_dir / name).is_file()}
    problems += _compare("code", code, served)
    if problems:
        raise ArtifactDigestError(
            f"{what}: its files are not the ones registered and reviewed: "
            + _listed(problems)
            + ". Nothing is deployed: register the model again, or restore the artifact store"
        )


def _listed(problems: list[str]) -> str:
    more = f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
    return "; ".join(problems[:10]) + more


def _compare(part: str, expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    problems = [
        f"{part}/{name} changed (sha256 {actual[name][:12]}..., registered {digest[:12]}...)"
        for name, digest in sorted(expected.items())
        if name in actual and actual[name] != digest
    ]
    problems += [f"{part}/{name} is missing" for name in sorted(set(expected) - set(actual))]
    problems += [f"{part}/{name} was added" for name in sorted(set(actual) - set(expected))]
    return problems


# -- the model archive -----------------------------------------------------------------------------


def archive_record(uri: str, path: Path, version_id: str | None = None) -> dict[str, Any]:
    """The manifest's ``ARCHIVE``: the archive at ``uri``, read into ``path``, and the S3 object
    version that was read (None: the bucket is not versioned)."""
    record: dict[str, Any] = {"uri": uri, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    if version_id:
        record["version_id"] = version_id
    return record


@dataclass(frozen=True)
class ArchiveDigests:
    """A gzipped tar as read: the sha256 and size of its bytes, the sha256 of each file that
    unpacking it leaves (by its path; a link to another member counts as that member's content,
    and a later member of the same name wins, as when unpacking), and its other members (links
    out of the archive, devices: what each is)."""

    sha256: str
    bytes: int
    files: dict[str, str]
    others: dict[str, str]


class _HashingReader:
    """A binary stream that hashes what is read from it."""

    def __init__(self, stream: BinaryIO):
        self.stream, self.digest, self.bytes = stream, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.bytes += len(data)
        return data


def archive_digests(stream: BinaryIO) -> ArchiveDigests:
    """Read the gzipped tar ``stream`` (a file, an S3 object's body) to its end, once, in chunks
    (never whole in memory). Raises ``tarfile.TarError`` (``EOFError``, ``zlib.error``) when it
    is not one."""
    reader = _HashingReader(stream)
    files: dict[str, str] = {}
    links: dict[str, tuple[str, str]] = {}  # name -> (resolved target, what it is)
    others: dict[str, str] = {}
    with tarfile.open(fileobj=reader, mode="r|gz", bufsize=_CHUNK) as tar:
        for member in tar:
            name = _member_path(member.name)
            if member.isdir() or not name:
                continue
            for table in (files, links, others):
                table.pop(name, None)
            if member.isfile():
                files[name] = hashlib.file_digest(tar.extractfile(member), "sha256").hexdigest()
            elif member.issym() or member.islnk():
                base = posixpath.dirname(name) if member.issym() else ""
                target = posixpath.normpath(posixpath.join(base, member.linkname))
                links[name] = (_member_path(target), f"a link to {member.linkname}")
            else:
                others[name] = "not a regular file"
    while reader.read(_CHUNK):  # the rest (the tar's padding, gzip's trailer): all bytes count
        pass
    for name, (target, what) in links.items():
        if member_digest := files.get(target):
            files[name] = member_digest
        else:
            others[name] = f"{what}, not to a file of the archive"
    return ArchiveDigests(reader.digest.hexdigest(), reader.bytes, files, others)


def _member_path(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def verify_archive(
    found: dict[str, Any], read: ArchiveDigests, uri: str, what: str, version_id: str | None = None
) -> None:
    """Refuse (``ArtifactDigestError``) the archive ``read`` from ``uri`` (S3 object version
    ``version_id``) unless it is the one the manifest ``found`` (``check_pinned`` first) was made
    from: the same bytes where it records them (``ARCHIVE``), else (a manifest from before) the
    same files as its model folder, each with its registered digest."""
    registered = found.get(ARCHIVE) or {}
    if registered.get("sha256") == read.sha256:
        return
    part = posixpath.basename(uri)
    problems = _compare(part, found.get("model_dir", {}), read.files)
    problems += [f"{part}/{name} is {kind}" for name, kind in sorted(read.others.items())]
    if not problems and not registered:
        return
    if not problems:
        problems = [
            f"its bytes differ (sha256 {read.sha256[:12]}..., registered "
            f"{registered['sha256'][:12]}...) though its files match: it was packed again"
        ]
    if registered.get("uri", uri) != uri:
        problems.append(f"the version was registered from {registered['uri']}")
    restore = "restore the archive"
    if registered.get("version_id"):
        now = f", not the current {version_id}" if version_id not in (None, "null") else ""
        restore = f"restore version {registered['version_id']} of {uri} (the registered one{now})"
    raise ArtifactDigestError(
        f"{what}: {uri} is not the model archive registered and reviewed: "
        + _listed(problems)
        + f". Nothing is created from it: register the model again, or {restore}"
    )
