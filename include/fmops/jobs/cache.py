"""Job cache: never run again a training or evaluation job whose inputs did not change.

A training job's cache key hashes what determines its result: the staged dataset's digest (the
content digests of the training and evaluation data and the sampling recipe), the base model,
the hyperparameters (method and LoRA settings included), the digest of the job scripts and the
training image. A completed job with the same key is reused instead of run; a job with the same
key that is still running is waited on, so two DAG runs never pay twice for one job. On a miss
the log names the fields that differ from the candidate's last cached job.

The index lives under ``.fmops/cache/training/``: one file per key, and one per (pipeline,
candidate) remembering the last key's fields for the "what changed" message.

Evaluation jobs of the local target are cached the same way (``evaluation_components``): a
re-run with unchanged inputs reuses the candidates', the baseline's and the champion's
evaluations. The sagemaker target caches training only (its evaluation jobs always run).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from fmops.jobs.runner import write_json
from fmops.paths import SCRIPTS_DIR, state_dir

log = logging.getLogger(__name__)
REUSABLE = ("Completed", "InProgress")


def scripts_digest(folder: Path = SCRIPTS_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def components(request: dict[str, Any], staged_digest: str, base_model: str) -> dict[str, Any]:
    """The fields a training job's result depends on, from its CreateTrainingJob request."""
    hyperparameters = {
        k: v
        for k, v in request.get("HyperParameters", {}).items()
        if not k.startswith("sagemaker_")
    }
    return {
        "dataset": staged_digest,
        "base_model": base_model,
        "method": hyperparameters.get("method"),
        "hyperparameters": hyperparameters,
        "scripts": scripts_digest(),
        "image": request["AlgorithmSpecification"].get("TrainingImage"),
        "instance_type": request.get("ResourceConfig", {}).get("InstanceType"),
    }


def local_fingerprint(uri: str) -> Any:
    """What identifies a model on this machine: a file:// path's files with their sizes and
    modification times (cheap, and any rewrite changes it); any other URI is the URI itself (a
    SageMaker job's output is immutable under its job name)."""
    if not uri.startswith("file://"):
        return uri
    path = Path(uri.removeprefix("file://"))
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [uri] + [
        [str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns]
        for f in files
    ]


def evaluation_components(request: dict[str, Any], staged_digest: str) -> dict[str, Any]:
    """The fields an evaluation job's result depends on, from its CreateProcessingJob request:
    the model (by fingerprint: a candidate, the baseline and the champion share one when they
    are the same model), the staged data (scenarios included), the evaluation arguments, the
    scripts, the image and the instance type."""
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in request["ProcessingInputs"]}
    app = request["AppSpecification"]
    return {
        "kind": "evaluation",
        "dataset": staged_digest,
        "model": local_fingerprint(inputs["model"]),
        "arguments": app.get("ContainerArguments", []),
        "environment": request.get("Environment", {}),
        "scripts": scripts_digest(),
        "image": app.get("ImageUri"),
        "instance_type": request["ProcessingResources"]["ClusterConfig"]["InstanceType"],
    }


def key_of(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _root() -> Path:
    return state_dir() / "cache" / "training"


def lookup(key: str) -> dict[str, Any] | None:
    path = _root() / f"{key}.json"
    return json.loads(path.read_text()) if path.exists() else None


def record(key: str, fields: dict[str, Any], job_name: str, pipeline: str, candidate: str) -> None:
    _root().mkdir(parents=True, exist_ok=True)
    entry = {"key": key, "job_name": job_name, "fields": fields}
    write_json(_root() / f"{key}.json", entry)
    write_json(_root() / f"last-{pipeline}-{candidate}.json", entry)


def differences(pipeline: str, candidate: str, fields: dict[str, Any]) -> list[str]:
    """The fields that differ from the candidate's last cached job ([] if there is none)."""
    path = _root() / f"last-{pipeline}-{candidate}.json"
    if not path.exists():
        return []
    previous = json.loads(path.read_text())["fields"]
    changed = [k for k in sorted(set(fields) | set(previous)) if fields.get(k) != previous.get(k)]
    if "hyperparameters" in changed:
        before, after = previous.get("hyperparameters", {}), fields.get("hyperparameters", {})
        changed.remove("hyperparameters")
        changed += [
            f"hyperparameters.{k} ({before.get(k)} -> {after.get(k)})"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)
        ]
    return changed
