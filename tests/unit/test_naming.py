"""Deterministic, SageMaker-valid job names."""

from __future__ import annotations

import pytest

from fmops.jobs.naming import JOB_NAME_RE, KINDS, MAX_LENGTH, attempt_name, job_name

ODD_NAMES = [
    "minilm-full",
    "x",
    "",
    "---",
    "UPPER_case.With Spaces",
    "ünïcødé-模型-🚀",
    "İstanbul-ß",
    "a" * 200,
    "-" * 100 + "z" * 100,
    "a-" * 100,
    "name/with/slashes:and:colons",
    "\0\n\t",
]
ODD_RUN_IDS = [
    "manual__2025-01-01T00:00:00+00:00",
    "scheduled__2025-06-30T12:34:56.789012+00:00",
    "r" * 200,
    "ümlaut run 🚀",
    "",
]


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("candidate", ODD_NAMES)
@pytest.mark.parametrize("run_id", ODD_RUN_IDS)
def test_name_is_valid_and_short(run_id, candidate, kind):
    name = job_name("fmops_pipeline" * 10, run_id, candidate, kind)
    assert len(name) <= MAX_LENGTH - 4 == 59
    assert JOB_NAME_RE.match(name), name
    assert name.startswith(KINDS[kind] + "-")
    # Later attempts stay valid as well, up to two-digit attempt numbers.
    for attempt in (2, 9, 10, 99):
        later = attempt_name(name, attempt)
        assert len(later) <= MAX_LENGTH
        assert JOB_NAME_RE.match(later), later


def test_deterministic():
    args = ("fmops_pipeline", "manual__2025-01-01T00:00:00+00:00", "minilm-full")
    assert job_name(*args) == job_name(*args)
    assert job_name(*args, kind="processing") == job_name(*args, kind="processing")
    assert job_name(*args) == job_name(*args, kind="training")  # the default kind


def test_readable_part():
    name = job_name("dag", "run", "MiniLM_Full v2")
    assert name.startswith("train-minilm-full-v2-")
    assert job_name("dag", "run", "minilm-full", "processing").startswith("eval-minilm-full-")
    assert job_name("dag", "run", "模型").startswith("train-job-")  # nothing readable left


@pytest.mark.parametrize(
    "other",
    [
        ("dag2", "run", "cand", "training"),
        ("dag", "run2", "cand", "training"),
        ("dag", "run", "cand2", "training"),
        ("dag", "run", "cand", "processing"),
    ],
)
def test_differs_when_any_part_differs(other):
    assert job_name("dag", "run", "cand", "training") != job_name(*other)


def test_candidates_with_same_slug_get_different_names():
    # "a.b" and "a-b" and "A_B" all slug to "a-b": the hash keeps them apart.
    names = {job_name("dag", "run", c) for c in ("a.b", "a-b", "A_B", "a b")}
    assert len(names) == 4


def test_long_names_differing_only_at_the_end_stay_distinct():
    base = "c" * 150
    first = job_name("dag", "run", base + "1")
    second = job_name("dag", "run", base + "2")
    assert first != second
    run_a = job_name("dag", "r" * 150 + "a", "cand")
    run_b = job_name("dag", "r" * 150 + "b", "cand")
    assert run_a != run_b


def test_many_runs_have_unique_names():
    names = {job_name("dag", f"manual__2025-01-01T00:00:{i:02d}", "cand") for i in range(60)}
    assert len(names) == 60


def test_attempt_name():
    assert attempt_name("train-x-0123456789", 1) == "train-x-0123456789"
    assert attempt_name("train-x-0123456789", 2) == "train-x-0123456789-a2"
    assert attempt_name("train-x-0123456789", 12) == "train-x-0123456789-a12"


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_below_one_raises(attempt):
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        attempt_name("base", attempt)


@pytest.mark.parametrize("kind", ["train", "inference", "", "Training"])
def test_unknown_kind_raises(kind):
    with pytest.raises(ValueError, match="unknown job kind") as info:
        job_name("dag", "run", "cand", kind)
    assert "processing" in str(info.value) and "training" in str(info.value)
