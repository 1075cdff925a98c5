"""The evaluation-job cache (local target): a re-run with unchanged inputs reuses every
evaluation, the champion's included when it is the same model as a candidate."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from test_local_executor import describe_processing, processing_request, wait_for

from fmops.jobs import cache
from fmops.jobs.naming import job_name
from fmops.pipeline import submit


def with_model(request: dict, model: Path) -> dict:
    source = {
        "InputName": "model",
        "S3Input": {
            "S3Uri": f"file://{model}",
            "LocalPath": "/opt/ml/processing/input/model",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
        },
    }
    return {**request, "ProcessingInputs": [*request["ProcessingInputs"], source]}


def model_file(workspace, name: str = "model.tar.gz", content: bytes = b"weights") -> Path:
    path = workspace["root"] / "models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def eval_plan(workspace, run_id: str, model: Path, candidate: str = "cand", **more) -> dict:
    destination = workspace["root"] / "evaluations" / run_id / candidate
    request = with_model(processing_request(workspace, "set-by-submit", destination), model)
    fields = cache.evaluation_components(request, "digest-1")
    return {
        "kind": "processing",
        "candidate": candidate,
        "pipeline": "pipe",
        "cache_name": f"evaluation-{candidate}",
        "base_name": job_name("fmops_finetune", run_id, candidate, "processing"),
        "target": "local",
        "settings": {"max_concurrent_jobs": 2},
        "request": request,
        "cache_key": cache.key_of(fields),
        "cache_fields": fields,
        "force": False,
        **more,
    }


def wait_processing_done(backend, name: str) -> dict:
    return wait_for(
        describe_processing(backend, name),
        lambda d: d["ProcessingJobStatus"] in ("Completed", "Failed", "Stopped"),
        f"processing job {name} to end",
    )


def test_the_same_model_data_and_settings_reuse_the_evaluation(backend, workspace, caplog):
    model = model_file(workspace)
    first = submit(eval_plan(workspace, "run-1", model))
    assert first["action"] == "created"
    assert wait_processing_done(backend, first["name"])["ProcessingJobStatus"] == "Completed"

    with caplog.at_level(logging.INFO, logger="fmops.pipeline"):
        again = submit(eval_plan(workspace, "run-2", model))
        # The champion is the same model under another role: its evaluation is the same job.
        champion = submit(eval_plan(workspace, "run-2", model, candidate="champion"))
    assert (again["action"], again["name"]) == ("cached", first["name"])
    assert (champion["action"], champion["name"]) == ("cached", first["name"])
    assert champion["candidate"] == "champion", "the outcome keeps the role it was planned for"
    assert f"reusing processing job {first['name']} (Completed" in caplog.text


def test_a_rewritten_model_or_other_settings_evaluate_again(backend, workspace, caplog):
    model = model_file(workspace)
    first = submit(eval_plan(workspace, "run-1", model))
    wait_processing_done(backend, first["name"])

    time.sleep(0.01)  # a rewrite changes the size here, and the modification time anyway
    model.write_bytes(b"other weights")
    with caplog.at_level(logging.INFO, logger="fmops.pipeline"):
        rewritten = submit(eval_plan(workspace, "run-2", model))
    assert rewritten["action"] == "created"
    assert "evaluating again, changed since its last cached job: model" in caplog.text
    wait_processing_done(backend, rewritten["name"])

    plan = eval_plan(workspace, "run-3", model)
    plan["request"]["AppSpecification"]["ContainerArguments"].append("--batch-size=8")
    fields = cache.evaluation_components(plan["request"], "digest-1")
    assert cache.key_of(fields) != plan["cache_key"]
    other_data = cache.evaluation_components(plan["request"], "digest-2")
    assert cache.key_of(other_data) != cache.key_of(fields)


def test_force_rerun_evaluates_again(backend, workspace, caplog):
    model = model_file(workspace)
    first = submit(eval_plan(workspace, "run-1", model))
    wait_processing_done(backend, first["name"])
    with caplog.at_level(logging.INFO, logger="fmops.pipeline"):
        forced = submit(eval_plan(workspace, "run-2", model, force=True))
    assert forced["action"] == "created" and forced["name"] != first["name"]
    assert "running the processing job regardless of the cache" in caplog.text
    wait_processing_done(backend, forced["name"])


def test_evaluation_entries_do_not_replace_the_training_ones(workspace):
    """The "what changed" record of a candidate's evaluation is kept apart from its training's."""
    cache.record("k-train", {"dataset": "a"}, "train-job", "pipe", "cand")
    cache.record("k-eval", {"dataset": "b"}, "eval-job", "pipe", "evaluation-cand")
    assert cache.differences("pipe", "cand", {"dataset": "a"}) == []
    assert cache.differences("pipe", "evaluation-cand", {"dataset": "b"}) == []


def test_a_directory_model_is_fingerprinted_by_its_files(workspace):
    folder = workspace["root"] / "base-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    before = cache.local_fingerprint(f"file://{folder}")
    assert before[1][0] == "config.json"
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert cache.local_fingerprint(f"file://{folder}") != before
    assert cache.local_fingerprint("s3://bucket/job/output/model.tar.gz") == (
        "s3://bucket/job/output/model.tar.gz"
    )


def test_plan_evaluation_gives_every_entry_a_key_and_the_champion_shares_its_candidates(
    monkeypatch, tmp_path
):
    from fmops import pipeline
    from fmops.registry import review

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    resolved = pipeline.resolve(str(tiny), force_rerun=True)
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"weights")
    monkeypatch.setattr(
        review, "champion_entry", lambda config: [("champion", f"file://{model}", False)]
    )
    staged = {"digest": "d1", "evaluation_uri": f"file://{tmp_path}"}
    trained = [{"candidate": "tiny-full", "model_artifacts": f"file://{model}"}]
    plans = pipeline.plan_evaluation(resolved, staged, trained, "fmops_finetune", "run-1")
    keys = {p["candidate"]: p["cache_key"] for p in plans}
    assert set(keys) == {"tiny-full", "baseline", "champion"}
    assert keys["champion"] == keys["tiny-full"]
    assert keys["baseline"] != keys["tiny-full"], "the baseline is another model (zero-shot)"
    assert all(p["force"] for p in plans), "force_rerun applies to the evaluations too"
    assert {p["cache_name"] for p in plans} == {
        "evaluation-tiny-full",
        "evaluation-baseline",
        "evaluation-champion",
    }
