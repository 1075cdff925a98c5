"""CheckpointConfig: a later attempt of a job sees the checkpoints of the earlier one, as
SageMaker syncs LocalPath with S3Uri."""

from __future__ import annotations

from test_local_executor import training_request, wait_training_done

SCRIPT = """\
import os, pathlib
ckpt = pathlib.Path(os.environ["SM_CHECKPOINT_DIR"])
previous = sorted(p.name for p in ckpt.iterdir())
print("saw=" + ",".join(previous), flush=True)
(ckpt / os.environ["SM_HP_MARK"]).write_text("x")
"""


def test_a_later_attempt_sees_the_earlier_checkpoints(backend, workspace, tmp_path):
    (workspace["code"] / "entry.py").write_text(SCRIPT)
    shared = tmp_path / "shared-checkpoints"
    for name, mark in (("ckpt-job", "first"), ("ckpt-job-a2", "second")):
        request = training_request(workspace, name, {"mark": mark})
        request["CheckpointConfig"] = {
            "S3Uri": f"file://{shared}",
            "LocalPath": "/opt/ml/checkpoints",
        }
        backend.create_training_job(**request)
        assert wait_training_done(backend, name)["TrainingJobStatus"] == "Completed"
    logs = [backend.read_log("training", n)[0] for n in ("ckpt-job", "ckpt-job-a2")]
    assert "saw=\n" in logs[0]
    assert "saw=first\n" in logs[1]
    assert sorted(p.name for p in shared.iterdir()) == ["first", "second"]
