"""Batched generation and scoring with a causal LM, for the evaluation job and the serving handler.

:class:`CausalLM` loads a model folder: a causal LM that ``train.py task=instruction`` tuned
(``prompt_format.json`` says how its training chats were rendered) or an untuned base model
(rendered with ``instruction.choose_template``: its chat template, else the plain template). It

- renders a chat without its answer as the model's prompt (:meth:`CausalLM.prompt`), ending
  where the answer starts, exactly as training rendered it;
- answers a batch of prompts in one ``generate`` call (:meth:`CausalLM.generate`): left padding,
  KV cache, greedy at temperature 0, stop strings, and per answer the number of tokens, why it
  ended and the log-probability of its tokens, the answer's sequence probability;
- scores given continuations by teacher forcing (:meth:`CausalLM.continuation_logprobs`), for
  multiple choice and perplexity;
- answers with int8 weights when the folder's ``serving.json`` names them: the optimize step
  (``optimize.py``) quantizes the linear layers (:func:`quantize_int8`), saves their int8 weights
  (:func:`save_int8`), and the served model loads exactly those (:func:`load_int8`), on the CPU.

Only ``input_ids`` and ``attention_mask`` reach the model: a WordPiece tokenizer's
``token_type_ids`` mean nothing to a causal LM (and ``generate`` refuses them). Decoding uses the
settings given here, not the model folder's ``generation_config.json`` sampling defaults (a
repetition penalty there would change answers and log-probabilities), so every model is
decoded alike; only its stop tokens are read from there.

Standalone like the other job scripts: torch, transformers, the standard library and the
sibling ``instruction.py``; never ``fmops``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import instruction  # noqa: E402 - beside this file

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512
SERVING_FILE = "serving.json"
INT8_RUNTIME = "pytorch-int8"
INT8_WEIGHTS = "int8/model.safetensors"
# The int8 scheme: PyTorch's dynamic quantization of every nn.Linear but the output head, one
# scale per output channel (per_channel_dynamic_qconfig); the embeddings and the head stay fp32,
# as int8 LLM recipes keep them. benchmarks/generation_int8.py measured every layer per tensor
# (the head included) at -8.7 points of token F1 on SmolLM2, this scheme at -4.5.
INT8_SCHEME = "torch.ao dynamic int8, per output channel, nn.Linear except the output head"
FINISH_REASONS = ("eos_token", "stop_sequence", "length")


@dataclass
class Generation:
    """One generated answer."""

    text: str  # the answer, cut before the first stop string, stripped
    tokens: int  # generated tokens counted (up to and including EOS/stop)
    prompt_tokens: int
    finish_reason: str  # "eos_token" | "stop_sequence" | "length"
    # The sum of the log-probabilities (under the model, before temperature and top-p) of the
    # generated tokens that make the answer: EOS and the tokens of a stop string are not part of
    # it. The answer's sequence probability is exp(logprob).
    logprob: float


def is_causal_lm(model_dir: Path) -> bool:
    """A causal LM folder: ``config.json`` names a ``*ForCausalLM`` architecture, or train.py
    wrote ``prompt_format.json`` into it."""
    model_dir = Path(model_dir)
    if (model_dir / "prompt_format.json").exists():
        return True
    config = model_dir / "config.json"
    if not config.exists():
        return False
    architectures = json.loads(config.read_text()).get("architectures") or []
    return any(str(name).endswith("ForCausalLM") for name in architectures)


class _FirstTokenClock(LogitsProcessor):
    """Times the first token and keeps the log-probability of every token that generate picks.

    ``generate`` calls its logits processors once per step, after the forward pass and before the
    next token is chosen: the first call marks the time to first token, and each call's log-softmax
    is gathered at the token chosen (seen at the next call, or in the output for the last step).
    It runs before temperature and top-p, so the log-probabilities are the model's own; keeping
    one step's (batch, vocab) table at a time, rather than every step's scores, keeps memory flat.
    """

    def __init__(self) -> None:
        self.first: float | None = None
        self.previous: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = time.perf_counter()
        if self.previous is not None:
            self.picked.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def logprobs(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, generated steps) log-probabilities of the tokens at the end of ``sequences``."""
        picked = list(self.picked)
        if self.previous is not None:
            picked.append(self.previous.gather(1, sequences[:, -1:]).squeeze(1))
        if not picked:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(picked, dim=1).cpu()


class _StopStrings(StoppingCriteria):
    """Ends a row once its generated text contains one of ``stop`` (decoded text, so a stop string
    that spans tokens, or that a tokenizer splits oddly, is still found)."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.prompt_width = prompt_width
        self.done: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in (~self.done).nonzero().flatten().tolist():
            text = self.tokenizer.decode(
                input_ids[row, self.prompt_width :], skip_special_tokens=True
            )
            if any(s in text for s in self.stop):
                self.done[row] = True
        return self.done.clone()


class CausalLM:
    """A causal LM with the prompt format it was tuned with (or its base model's), on the GPU
    when there is one."""

    def __init__(
        self,
        model_dir: str | Path,
        prompt_template: str = "auto",
        max_length: int | None = None,
        device: str | None = None,
        serving: bool = True,
    ) -> None:
        """``serving``: honour the folder's ``serving.json`` (False: the eager weights)."""
        model_dir = Path(model_dir)
        if prompt_template not in instruction.TEMPLATES:
            raise ValueError(
                f"prompt_template must be one of {list(instruction.TEMPLATES)}, "
                f"got {prompt_template!r}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        # A prompt longer than max_length loses its start, never the end it is answered after.
        self.tokenizer.truncation_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.sep_token
        format_file = model_dir / "prompt_format.json"
        self.format: dict[str, Any] = (
            json.loads(format_file.read_text()) if format_file.exists() else {}
        )
        if self.format:
            self.template = self.format["template"]
            if prompt_template not in ("auto", self.template):
                log.warning(
                    "prompt_template=%s is ignored: %s was tuned with the %s template "
                    "(prompt_format.json), and is prompted with it",
                    prompt_template,
                    model_dir,
                    self.template,
                )
        else:
            self.template = instruction.choose_template(self.tokenizer, prompt_template)
        self.max_length = int(max_length or self.format.get("max_length") or DEFAULT_MAX_LENGTH)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
        self.model.to(self.device).eval()
        # What answers: "pytorch", or "pytorch-int8" for a folder whose serving.json names the
        # int8 weights the optimize step evaluated (optimize.py), which are then loaded.
        self.runtime = "pytorch"
        serving_file = model_dir / SERVING_FILE
        if serving and serving_file.exists():
            serving_spec = json.loads(serving_file.read_text())
            if serving_spec.get("runtime") != INT8_RUNTIME or not serving_spec.get("weights"):
                raise ValueError(
                    f"{serving_file} must name runtime {INT8_RUNTIME!r} and its weights, got "
                    f"{serving_spec}; register the model again"
                )
            self.use_int8(within(model_dir, serving_spec["weights"]))
        self.eos_token_ids = self._stop_tokens()
        self.last_timing: dict[str, float | int] = {}

    def use_int8(self, weights: Path) -> None:
        """Answer with the int8 weights the optimize step saved (``load_int8``), on the CPU:
        PyTorch's int8 dynamic kernels are CPU ones."""
        load_int8(self.model, weights)
        self.runtime = INT8_RUNTIME
        self.device = torch.device("cpu")

    def _stop_tokens(self) -> list[int]:
        """The tokens that end an answer: the model's EOS tokens, the prompt format's
        end_of_answer, and the token that closes an assistant turn in the template."""
        ids: list[int] = []
        configured = self.model.generation_config.eos_token_id
        ids += configured if isinstance(configured, list) else [configured]
        ids.append(self.tokenizer.eos_token_id)
        end = self.format.get("end_of_answer")
        if not self.format and self.template == "plain":
            end = self.tokenizer.eos_token or self.tokenizer.sep_token
        if end:
            ids.append(self.tokenizer.convert_tokens_to_ids(end))
        if self.template == "chat":
            ids.append(self._end_of_turn())
        return sorted({int(i) for i in ids if i is not None and i >= 0})

    def _end_of_turn(self) -> int | None:
        """The first special token that the chat template writes after an assistant's answer
        (``<|im_end|>``, ``<|eot_id|>``, ``</s>``...), or None."""
        chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "\x00"}]
        text = "".join(p for p, _ in instruction.segments(chat, self.tokenizer, self.template))
        after = self.tokenizer(text[text.rindex("\x00") + 1 :], add_special_tokens=False)
        special = set(self.tokenizer.all_special_ids)
        return next((i for i in after["input_ids"] if i in special), None)

    # -- prompts ----------------------------------------------------------------------------

    def prompt(self, chat: list[dict[str, str]]) -> str:
        """The chat without its answer, rendered as train.py rendered training chats, ending where
        the answer starts."""
        return instruction.render_prompt(chat, self.tokenizer, self.template)

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=False,  # the rendered prompt has its BOS already
        )
        # Only these two: token_type_ids (WordPiece tokenizers) mean nothing to a causal LM.
        return {k: encoded[k].to(self.device) for k in ("input_ids", "attention_mask")}

    # -- generation -------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[Generation]:
        """Answers to ``prompts`` (rendered, see :meth:`prompt`), from one batched ``generate``
        call: greedy when ``temperature`` is 0, else sampled (seeded by ``seed``). An answer ends
        at an EOS token, at the first of ``stop`` (cut off), or after ``max_new_tokens``.

        Sets ``last_timing``: the seconds to the first token and in all, and the tokens generated.
        """
        if not prompts:
            self.last_timing = {"first_token_seconds": 0.0, "seconds": 0.0, "generated_tokens": 0}
            return []
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        started = time.perf_counter()
        inputs = self._encode(prompts)
        width = inputs["input_ids"].shape[1]
        clock = _FirstTokenClock()
        stopping = StoppingCriteriaList()
        if stop:
            stopping.append(_StopStrings(self.tokenizer, stop, width))
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if seed is not None:
                torch.manual_seed(seed)
        output = self.model.generate(
            **inputs,
            **sampling,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            num_beams=1,
            eos_token_id=self.eos_token_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([clock]),
            stopping_criteria=stopping,
            return_dict_in_generate=True,
            use_cache=True,
        )
        sequences = output.sequences
        logprobs = clock.logprobs(sequences)
        generated = sequences[:, width:].cpu()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        answers = [
            self._answer(generated[i].tolist(), logprobs[i].tolist(), int(prompt_tokens[i]), stop)
            for i in range(len(prompts))
        ]
        finished = time.perf_counter()
        self.last_timing = {
            "first_token_seconds": (clock.first or finished) - started,
            "seconds": finished - started,
            "generated_tokens": sum(a.tokens for a in answers),
        }
        return answers

    def _answer(
        self, ids: list[int], logprobs: list[float], prompt_tokens: int, stop: Sequence[str]
    ) -> Generation:
        """One row of generate's output as a :class:`Generation`."""
        eos = set(self.eos_token_ids)
        end = next((k for k, token in enumerate(ids) if token in eos), None)
        body = ids if end is None else ids[:end]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s and s in text]
        if cuts:
            cut = min(cuts)
            answer = text[:cut]
            # The tokens up to the one that completes the stop string count as generated; the
            # answer is made of the tokens that its text needs.
            tokens = next(
                k
                for k in range(1, len(body) + 1)
                if any(s in self._decode(body[:k]) for s in stop if s)
            )
            kept = len(answer.rstrip())
            used = next(
                (k for k in range(tokens + 1) if len(self._decode(body[:k]).rstrip()) >= kept),
                tokens,
            )
            return Generation(
                answer.strip(), tokens, prompt_tokens, "stop_sequence", float(sum(logprobs[:used]))
            )
        if end is not None:
            return Generation(
                text.strip(), end + 1, prompt_tokens, "eos_token", float(sum(logprobs[:end]))
            )
        return Generation(text.strip(), len(ids), prompt_tokens, "length", float(sum(logprobs)))

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- scoring ----------------------------------------------------------------------------

    @torch.inference_mode()
    def continuation_logprobs(
        self, prompts: list[str], continuations: list[str]
    ) -> list[tuple[float, int]]:
        """Per pair, the summed log-probability of the continuation's tokens given the prompt,
        and how many tokens it has: one teacher-forced forward pass for the batch.

        Prompt and continuation are tokenized apart and joined, as train.py joins a rendered
        prompt and its answer. A pair longer than ``max_length`` loses the start of its prompt;
        a continuation longer than ``max_length - 1`` tokens keeps its first ones (and its token
        count says how many were scored)."""
        if len(prompts) != len(continuations):
            raise ValueError(
                f"prompts and continuations differ in length: {len(prompts)} != "
                f"{len(continuations)}; pass one continuation per prompt"
            )
        if not prompts:
            return []
        rows: list[tuple[list[int], int]] = []
        for prompt, continuation in zip(prompts, continuations, strict=True):
            context = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            if not context:
                raise ValueError(
                    f"prompt {prompt!r:.60} has no tokens: a continuation needs a prompt to be "
                    "scored after (render it with CausalLM.prompt)"
                )
            target = target[: self.max_length - 1]
            context = context[-(self.max_length - len(target)) :]
            rows.append((context + target, len(target)))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows])
        # Left padding shifts every row's tokens right: positions count real tokens only, as
        # generate() counts them.
        positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
        longest = max(n for _, n in rows)
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention.to(self.device),
            position_ids=positions.to(self.device),
            **self._keep_logits(longest + 1),
        ).logits[:, -(longest + 1) : -1]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        targets = input_ids[:, -longest:].to(self.device) if longest else input_ids[:, :0]
        picked = logprobs.gather(2, targets.unsqueeze(-1)).squeeze(-1).cpu()
        results = []
        for row, (_, count) in enumerate(rows):
            total = float(picked[row, longest - count :].sum()) if count else 0.0
            results.append((total, count))
        return results

    def _keep_logits(self, count: int) -> dict[str, int]:
        """Ask for the last ``count`` positions' logits only, where the model supports it: the
        full (batch, length, vocabulary) table is what fills memory."""
        import inspect

        accepted = inspect.signature(self.model.forward).parameters
        return {"logits_to_keep": count} if "logits_to_keep" in accepted else {}

    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def within(folder: Path, relative: str) -> Path:
    """``folder/relative``, refused unless it is a file inside ``folder``."""
    path = (folder / relative).resolve()
    if folder.resolve() not in path.parents or not path.is_file():
        raise ValueError(f"{folder / SERVING_FILE}: {relative!r} is not a file of {folder}")
    return path


def _quantizable(model: Any) -> dict[str, Any]:
    """The layers the int8 scheme quantizes, by name: every nn.Linear (exactly: not a
    subclass) but the output head."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    head = model.get_output_embeddings()
    return {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and module is not head
    }


def quantize_int8(model: Any) -> int:
    """Quantize ``model`` in place (INT8_SCHEME, on the CPU); returns how many layers were.
    Deterministic: the same weights give the same int8 weights."""
    from torch.ao.quantization import quantize_dynamic

    layers = _quantizable(model)
    if not layers:
        return 0
    with warnings.catch_warnings():  # torch 2.13 deprecates the quantized tensor API
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(model.cpu(), layers, dtype=torch.qint8, inplace=True)
    return len(layers)


def _int8_layers(model: Any) -> dict[str, Any]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, DynamicLinear)}


def save_int8(model: Any, path: Path) -> int:
    """The quantized layers' int8 weights, scales and zero points, as safetensors (plain
    tensors, no pickle); returns the file's size."""
    from safetensors.torch import save_file

    tensors = {}
    for name, layer in _int8_layers(model).items():
        weight = layer.weight()
        tensors[f"{name}.int8"] = weight.int_repr().contiguous()
        tensors[f"{name}.scales"] = weight.q_per_channel_scales().contiguous()
        tensors[f"{name}.zero_points"] = weight.q_per_channel_zero_points().contiguous()
    if not tensors:
        raise ValueError("the model has no int8 layer to save: call quantize_int8 first")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"scheme": INT8_SCHEME})
    return path.stat().st_size


def load_int8(model: Any, path: Path) -> None:
    """Quantize ``model`` (its eager weights) as INT8_SCHEME does, then set every quantized
    layer's weights to those saved in ``path``: what answers is exactly what was evaluated. A
    file for another model (layers missing or extra, other shapes) is refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        scheme = (f.metadata() or {}).get("scheme")
    if scheme != INT8_SCHEME:
        raise ValueError(f"{path}: int8 scheme {scheme!r} is not {INT8_SCHEME!r}")
    quantize_int8(model)
    layers = _int8_layers(model)
    stored = load_file(str(path))
    names = {key.rsplit(".", 1)[0] for key in stored}
    if names != set(layers):
        raise ValueError(
            f"{path} holds int8 weights for {len(names)} layers, the model has {len(layers)} "
            f"quantized ones (differing: {sorted(names ^ set(layers))[:3]}): it is another "
            "model's file"
        )
    for name, layer in layers.items():
        int8 = stored[f"{name}.int8"]
        if tuple(int8.shape) != tuple(layer.weight().shape):
            raise ValueError(f"{path}: {name} is {tuple(int8.shape)}, the model's layer is not")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            weight = torch._make_per_channel_quantized_tensor(
                int8, stored[f"{name}.scales"], stored[f"{name}.zero_points"], 0
            )
        layer.set_weight_bias(weight, layer.bias())


def sequence_probability(generation: Generation) -> float:
    """exp(logprob): the probability the model gives its answer's tokens."""
    return math.exp(generation.logprob)
