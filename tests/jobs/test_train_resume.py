"""train.py: a job killed mid-training and started again resumes from its checkpoint and ends
with the same weights as an uninterrupted run with the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "include" / "scripts" / "train.py"
LABELS = [f"intent_{c}" for c in "abcdefgh"]


@pytest.fixture(scope="module")
def tiny_base_model(tmp_path_factory) -> Path:
    """A 2-layer BERT built from a config (no download), with the packaged model's tokenizer."""
    from tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("channels")
    for name, per_label in (("train", 12), ("validation", 2)):
        folder = root / name
        folder.mkdir()
        rows = ["text,label"] + [
            f"please help with {label} case {i},{label}"
            for label in LABELS
            for i in range(per_label)
        ]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
    (root / "train" / "labels.json").write_text(json.dumps(LABELS))
    return {"train": root / "train", "validation": root / "validation"}


def job_env(job: Path, base: Path, channels: dict[str, Path]) -> dict[str, str]:
    hps = {
        "base_model": str(base),
        "method": "full",
        "text_column": "text",
        "label_column": "label",
        "epochs": "30",
        "batch_size": "8",
        "max_length": "32",
        "learning_rate": "0.001",
        "log_every_steps": "1",
        "checkpoint_every_steps": "7",
        "seed": "5",
    }
    return {
        **os.environ,
        "SM_HPS": json.dumps(hps),
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DATA_DIR": str(job / "output"),
        "SM_CHECKPOINT_DIR": str(job / "ckpt"),
        "SM_CHANNEL_TRAIN": str(channels["train"]),
        "SM_CHANNEL_VALIDATION": str(channels["validation"]),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {
        **load_file(model_dir / "model.safetensors"),
        **{f"head.{k}": v for k, v in load_file(model_dir / "classifier.safetensors").items()},
    }


def test_killed_job_resumes_to_the_same_weights(tmp_path, tiny_base_model, channels):
    import torch

    straight = tmp_path / "straight"
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        env=job_env(straight, tiny_base_model, channels),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    interrupted = tmp_path / "interrupted"
    env = job_env(interrupted, tiny_base_model, channels)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoints_seen = 0
    killed_after = 0
    for line in process.stdout:
        if line.startswith("event=checkpoint"):
            checkpoints_seen += 1
            killed_after = int(line.split("step=")[1].split()[0])
            if checkpoints_seen == 3:  # after a few saves, mid-run: kill -9, no clean-up
                process.send_signal(signal.SIGKILL)
                break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    assert not (interrupted / "model" / "model.safetensors").exists()

    resumed = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    resume_line = next(x for x in resumed.stdout.splitlines() if x.startswith("event=resumed"))
    resumed_at = int(resume_line.split("step=")[1].split()[0])
    # From the last checkpoint written before the kill (every 7 steps, and at each epoch's end).
    assert resumed_at >= killed_after >= 14, resume_line
    assert resumed_at % 7 == 0 or resumed_at % 12 == 0, resume_line
    assert resumed_at < 30 * 12

    expected, actual = weights(straight / "model"), weights(interrupted / "model")
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        assert torch.allclose(tensor, actual[name], atol=1e-6), f"{name} differs after resume"
    first = json.loads((straight / "output" / "metrics.json").read_text())
    second = json.loads((interrupted / "output" / "metrics.json").read_text())
    assert first["steps"] == second["steps"] == 30 * 12
    assert first["validation_accuracy"] == second["validation_accuracy"]


def test_loss_falls(tmp_path, tiny_base_model, channels):
    job = tmp_path / "job"
    env = job_env(job, tiny_base_model, channels)
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    history = json.loads((job / "output" / "metrics.json").read_text())["history"]
    # The serving handlers travel in the model folder (code/inference.py, as SageMaker's
    # Hugging Face inference toolkit loads them from model.tar.gz).
    handlers = (job / "model" / "code" / "inference.py").read_text()
    assert handlers == (SCRIPT.parent / "inference.py").read_text()
    first = sum(h["train_loss"] for h in history[:12]) / 12
    last = sum(h["train_loss"] for h in history[-12:]) / 12
    assert last < first * 0.5, (first, last)


def run_job(job: Path, base: Path, channels: dict[str, Path], **overrides: str):
    env = job_env(job, base, channels)
    hps = json.loads(env["SM_HPS"]) | overrides
    env["SM_HPS"] = json.dumps(hps)
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout, json.loads((job / "output" / "metrics.json").read_text())


def test_early_stopping_and_gradient_accumulation(tmp_path, tiny_base_model, channels):
    out, metrics = run_job(
        tmp_path / "stop",
        tiny_base_model,
        channels,
        early_stopping_patience="2",
        gradient_accumulation_steps="3",
    )
    # 12 batches of 8 per epoch, an optimizer step every 3: 4 steps per epoch.
    assert "total_steps=120" in out
    stop = next(line for line in out.splitlines() if line.startswith("event=early_stop"))
    stopped_epoch = int(stop.split("epoch=")[1].split()[0])
    assert stopped_epoch < 30
    assert metrics["steps"] == stopped_epoch * 4
    assert metrics["best_epoch"] == stopped_epoch - 2


def test_length_grouped_order_is_a_shuffled_permutation_with_less_padding():
    import random

    sys.path.insert(0, str(SCRIPT.parent))
    import train

    rng = random.Random(3)
    lengths = [rng.randint(5, 200) for _ in range(1000)]
    order = train.length_grouped_order(lengths, 16, random.Random(7))
    assert sorted(order) == list(range(1000))
    assert order == train.length_grouped_order(lengths, 16, random.Random(7))
    shuffled = list(range(1000))
    random.Random(7).shuffle(shuffled)

    def padded(o):
        return sum(
            max(lengths[i] for i in o[s : s + 16]) * len(o[s : s + 16])
            for s in range(0, len(o), 16)
        )

    assert padded(order) < 0.7 * padded(shuffled)
    # Random across batches, not one global sort by length.
    assert order != sorted(order, key=lambda i: -lengths[i])


def test_data_parallel_under_torchrun_with_two_processes(tmp_path, tiny_base_model, channels):
    """Two CPU processes on the gloo backend: each takes half of the batches, the gradients are
    all-reduced, the first process writes the model."""
    job = tmp_path / "ddp"
    env = job_env(job, tiny_base_model, channels)
    env["SM_HPS"] = json.dumps(json.loads(env["SM_HPS"]) | {"epochs": "4"})
    env.update(MASTER_ADDR="127.0.0.1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            "--master_port=29533",
            str(SCRIPT),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "event=distributed backend=gloo world_size=2" in result.stdout
    metrics = json.loads((job / "output" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["steps"] == 4 * (12 // 2)  # 12 batches an epoch, 6 for each process
    assert (job / "model" / "model.safetensors").exists()
    losses = [h["train_loss"] for h in metrics["history"]]
    assert sum(losses[-6:]) < sum(losses[:6]), losses
