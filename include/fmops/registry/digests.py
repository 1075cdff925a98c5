"""The files a registered version serves, pinned by their digests: what was reviewed is what runs.

At registration (``fmops.registry.registration``) fmops lists the sha256 of every file it logs
for serving: the model folder (weights, tokenizer, label map or prompt format, LoRA adapter) and
the serving handlers' code. The list (``MANIFEST``) goes on the version's source run, and its
own sha256 on the version (tag ``TAG``), which a reviewer approves with it. Before a deployment
serves a downloaded version, ``verify`` recomputes every digest: a file changed, added or
removed in the artifact store since (by whoever can write there) is refused, by name, and so is
a list changed to match.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST = "fmops-artifact-digests.json"  # on the version's source run
TAG = "fmops.artifacts_sha256"  # on the version: the sha256 of the manifest


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


def verify(
    found: dict[str, Any], pinned: str | None, model_dir: Path, code_dir: Path, what: str
) -> None:
    """Refuse (``ArtifactDigestError``) a download whose files differ from the manifest
    ``found``, or a manifest whose sha256 is not ``pinned`` (the version's tag)."""
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
    problems = _compare("model_dir", found.get("model_dir", {}), folder_digests(model_dir))
    code = found.get("code", {})
    served = {name: file_sha256(code_dir / name) for name in code if (code_dir / name).is_file()}
    problems += _compare("code", code, served)
    if problems:
        raise ArtifactDigestError(
            f"{what}: its files are not the ones registered and reviewed: "
            + "; ".join(problems[:10])
            + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            + ". Nothing is deployed: register the model again, or restore the artifact store"
        )


def _compare(part: str, expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    problems = [
        f"{part}/{name} changed (sha256 {actual[name][:12]}..., registered {digest[:12]}...)"
        for name, digest in sorted(expected.items())
        if name in actual and actual[name] != digest
    ]
    problems += [f"{part}/{name} is missing" for name in sorted(set(expected) - set(actual))]
    problems += [f"{part}/{name} was added" for name in sorted(set(actual) - set(expected))]
    return problems
