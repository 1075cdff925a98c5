"""`fmops jobs list|describe|logs|stop` on real local jobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_local_executor import (
    training_request,
    wait_for,
    wait_training_done,
    wait_training_secondary,
)

FMOPS = str(Path(sys.executable).parent / "fmops")


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FMOPS_HOME": str(tmp_path)}
    return subprocess.run(
        [FMOPS, "jobs", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_list_describe_logs_and_stop(backend, workspace, tmp_path):
    backend.create_training_job(**training_request(workspace, "cli-done"))
    wait_training_done(backend, "cli-done")
    backend.create_training_job(**training_request(workspace, "cli-sleep", {"mode": "sleep"}))
    wait_training_secondary(backend, "cli-sleep", "Training")

    listed = run_cli(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line.split()[1:4] for line in listed.stdout.splitlines()[1:]}
    assert lines["cli-done"] == ["training", "Completed", "Completed"]
    assert lines["cli-sleep"] == ["training", "InProgress", "Training"]
    only_running = run_cli(tmp_path, "list", "--status", "InProgress").stdout
    assert "cli-sleep" in only_running
    assert "cli-done" not in only_running

    described = run_cli(tmp_path, "describe", "cli-done")
    assert described.returncode == 0, described.stderr
    description = json.loads(described.stdout)
    assert description["TrainingJobStatus"] == "Completed"
    assert description["ModelArtifacts"]["S3ModelArtifacts"].endswith("model.tar.gz")

    logs = run_cli(tmp_path, "logs", "cli-done", "--follow")
    assert logs.returncode == 0
    assert "train_loss=0.25" in logs.stdout

    stopped = run_cli(tmp_path, "stop", "cli-sleep")
    assert stopped.returncode == 0
    assert "was InProgress" in stopped.stdout
    wait_for(
        lambda: backend.describe_training_job(TrainingJobName="cli-sleep"),
        lambda d: d["TrainingJobStatus"] == "Stopped",
        "cli-sleep to stop",
    )


def test_unknown_job_and_missing_name(tmp_path):
    unknown = run_cli(tmp_path, "describe", "no-such-job")
    assert unknown.returncode == 2
    assert "no job 'no-such-job'" in unknown.stderr
    missing = run_cli(tmp_path, "logs")
    assert missing.returncode == 2
    assert "needs a job name" in missing.stderr
