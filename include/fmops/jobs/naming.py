"""Deterministic job names, the reserved evaluation entries and the tags of a run's jobs.

A job's name is a pure function of (dag_id, run_id, candidate, kind): a retried or re-run task
computes the same name, finds the job it started before, and never launches a second billed job.
SageMaker job names are at most 63 characters of ``[a-zA-Z0-9-]`` (no leading or trailing
hyphen) and unique per account and region, so the readable part is shortened and a hash of the
full identity keeps names of different runs apart.
"""

from __future__ import annotations

import hashlib
import re

MAX_LENGTH = 63
JOB_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
KINDS = {"training": "train", "processing": "eval"}


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", text.lower())).strip("-")


def job_name(dag_id: str, run_id: str, candidate: str, kind: str = "training") -> str:
    """The base name of the job for one candidate of one DAG run (attempt 1)."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; kinds: {sorted(KINDS)}")
    digest = hashlib.sha256(f"{dag_id}\0{run_id}\0{candidate}\0{kind}".encode()).hexdigest()[:10]
    readable = _slug(candidate)[:40].strip("-") or "job"
    name = f"{KINDS[kind]}-{readable}-{digest}"
    assert JOB_NAME_RE.match(name) and len(name) <= MAX_LENGTH - 4, name
    return name


def attempt_name(base: str, attempt: int) -> str:
    """The name of a later attempt after a Failed or Stopped one: ``base``, ``base-a2``, ..."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    return base if attempt == 1 else f"{base}-a{attempt}"


# The evaluation entries beside the candidates: the untuned base model, and the registry's
# champion. Candidates may not take these names (the config refuses them).
BASELINE = "baseline"
CHAMPION = "champion"
RESERVED_NAMES = (BASELINE, CHAMPION)


def job_tags(pipeline: str, dag_id: str, run_id: str, candidate: str) -> dict[str, str]:
    """The tags every job of a DAG run carries, on both targets."""
    return {
        "fmops:pipeline": pipeline,
        "fmops:dag_id": dag_id,
        "fmops:run_id": run_id[:256],
        "fmops:candidate": candidate,
    }
