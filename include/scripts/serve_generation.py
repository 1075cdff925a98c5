"""The serving handlers of a generative model: a causal LM behind the TGI container's contract.

On SageMaker a causal LM is served by the Hugging Face LLM image (TGI), which reads the model
folder itself; on the local target, ``fmops.deployment.variant`` serves it with these handlers,
so that a client speaks to both alike. The model is a folder that ``train.py task=instruction``
tuned (``prompt_format.json`` says how its chats were rendered) or an untuned causal LM (its chat
template, else the plain template): ``generation.CausalLM`` loads it and renders its prompts.

``POST /invocations`` takes one of two JSON payloads, one prompt per request (TGI's contract):

- TGI's generate payload: ``{"inputs": "prompt text", "parameters": {...}}`` ->
  ``[{"generated_text": "..."}]``, with ``"details": {"finish_reason", "generated_tokens",
  "seed"}`` when ``parameters.details`` is true (finish_reason ``eos_token``, ``stop_sequence``
  or ``length``; seed null when decoding was greedy). Parameters: ``max_new_tokens``,
  ``temperature``, ``top_p``, ``do_sample``, ``stop``, ``seed``, ``details``,
  ``return_full_text`` (the prompt in front of the answer); any other name is refused.

  ``inputs`` is the raw prompt, sent as it is: it is NOT rendered with the model's prompt
  format. TGI passes ``inputs`` through untouched, so this is what the same request does on
  SageMaker, and a client tested locally must not change meaning in production (TGI ignores
  parameters it does not know, so an fmops-only "wrap it" flag would be silently dropped
  there). The text is tokenized as TGI tokenizes it: the tokenizer's BOS token goes in front
  when the tokenizer adds one (Llama's ``<s>``), unless the text starts with it already. A user
  message for a chat-tuned model is sent as ``messages`` (below), which both targets render
  with the model's prompt format.
- The OpenAI-style chat payload that TGI serves on ``/v1/chat/completions`` (and SageMaker
  forwards on ``/invocations``): ``{"messages": [{"role": "system"|"user"|"assistant",
  "content": "..."}], "max_tokens": N, "temperature": t, "top_p": p, "stop": [...], "seed": s}``
  (``model`` is accepted and ignored, ``stream`` only false) -> ``{"id", "object":
  "chat.completion", "created", "model": <the model folder's name>, "choices": [{"index": 0,
  "message": {"role": "assistant", "content": "..."}, "finish_reason": "stop"|"length"}],
  "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}``. The chat, which ends with
  the user's turn, is rendered as the model was trained (``CausalLM.prompt``); the usage counts
  are the rendered prompt's tokens and the generated ones (the end-of-answer token included).

Decoding follows TGI. Generate payload: greedy unless ``do_sample`` is true or a ``temperature``
or ``top_p`` is given, then sampled at ``temperature`` (default 1.0) and ``top_p``; a
``temperature`` of 0 means greedy (TGI refuses 0; OpenAI's meaning), and with ``do_sample`` true
it is refused. Chat payload: sampled (OpenAI's default temperature 1.0) unless ``temperature``
is 0. A sampled request without a ``seed`` gets a random one (reported in ``details``). Without
``max_new_tokens`` (``max_tokens``) an answer may use the rest of ``MAX_TOTAL_TOKENS``, at most
``FMOPS_MAX_NEW_TOKENS``.

Bounds, from environment variables (TGI's names where TGI has the setting): ``MAX_INPUT_TOKENS``
(1024) prompt tokens, ``MAX_TOTAL_TOKENS`` (2048) prompt tokens + ``max_new_tokens``,
``MAX_STOP_SEQUENCES`` (4) stop strings, ``FMOPS_MAX_NEW_TOKENS`` (256) tokens per answer and
``FMOPS_MAX_PROMPT_CHARS`` (8000) characters of prompt (all messages' together); ``temperature``
in [0, 2], ``top_p`` in (0, 1]. The token bounds are cut to the model's context
(``max_position_embeddings``) with a warning. Every bad payload raises :class:`BadRequestError`,
which the server answers with HTTP 400 and the message (what is wrong, and the fix).

``model_fn`` / ``input_fn`` / ``predict_fn`` / ``output_fn`` have the SageMaker inference
toolkit's shape; ``warm_up`` (a two-token answer) and ``headers_fn`` (TGI's ``x-generated-tokens``,
``x-prompt-tokens``, ``x-compute-time`` in seconds and ``x-time-per-token`` in milliseconds) are
the variant server's optional hooks. Standalone like the other job scripts: the standard library
here, torch and transformers through the sibling ``generation.py`` (imported by ``model_fn``, so
that parsing a request needs neither); never ``fmops``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENERATE_FIELDS = ("inputs", "parameters", "stream")
GENERATE_PARAMETERS = (
    "details",
    "do_sample",
    "max_new_tokens",
    "return_full_text",
    "seed",
    "stop",
    "temperature",
    "top_p",
)
CHAT_FIELDS = ("messages", "max_tokens", "model", "seed", "stop", "stream", "temperature", "top_p")
ROLES = ("system", "user", "assistant")
MAX_TEMPERATURE = 2.0
MAX_SEED = 2**64 - 1  # what torch.manual_seed takes
WARM_UP_MESSAGE = "warm-up request"
GENERATE_EXAMPLE = '{"inputs": "Where is my card?", "parameters": {"max_new_tokens": 32}}'
CHAT_EXAMPLE = '{"messages": [{"role": "user", "content": "Where is my card?"}], "max_tokens": 32}'
EXAMPLES = f"{GENERATE_EXAMPLE} (the raw prompt) or {CHAT_EXAMPLE} (a chat)"
CHAT_HINT = (
    "a user message to be rendered with the model's prompt format goes in "
    '{"messages": [{"role": "user", "content": ...}]}'
)


LIMIT_VARIABLES = {
    "max_input_tokens": "MAX_INPUT_TOKENS",
    "max_total_tokens": "MAX_TOTAL_TOKENS",
    "max_new_tokens": "FMOPS_MAX_NEW_TOKENS",
    "max_prompt_chars": "FMOPS_MAX_PROMPT_CHARS",
    "max_stop_sequences": "MAX_STOP_SEQUENCES",
}


class BadRequestError(ValueError):
    """The request is malformed; the message says what is wrong and what is expected."""


# -- bounds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """The request bounds (see the module docstring for the environment variables)."""

    max_input_tokens: int = 1024
    max_total_tokens: int = 2048
    max_new_tokens: int = 256
    max_prompt_chars: int = 8000
    max_stop_sequences: int = 4

    @classmethod
    def from_env(cls, environ: Any = os.environ) -> Limits:
        """The bounds the environment sets (the defaults for the variables it leaves unset).
        Raises ``ValueError`` naming the variable that is not a positive count, or
        ``MAX_INPUT_TOKENS`` not below ``MAX_TOTAL_TOKENS`` (an answer needs a token)."""
        values = {}
        for name, variable in LIMIT_VARIABLES.items():
            raw = environ.get(variable)
            if raw is None or raw == "":
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                values[name] = 0
            if values[name] < 1:
                raise ValueError(
                    f"{variable}={raw!r} is not a positive integer; set a count, or unset it for "
                    f"{getattr(cls, name)}"
                )
        limits = cls(**values)
        if limits.max_input_tokens >= limits.max_total_tokens:
            raise ValueError(
                f"MAX_INPUT_TOKENS ({limits.max_input_tokens}) must be below MAX_TOTAL_TOKENS "
                f"({limits.max_total_tokens}): the answer's tokens count in the total"
            )
        return limits

    def within_context(self, context: int | None) -> Limits:
        """These bounds cut to a model that attends to ``context`` positions, with a warning
        when that changes them (TGI refuses to start instead)."""
        if not context or self.max_total_tokens <= context:
            return self
        cut = Limits(
            max_input_tokens=min(self.max_input_tokens, context - 1),
            max_total_tokens=context,
            max_new_tokens=self.max_new_tokens,
            max_prompt_chars=self.max_prompt_chars,
            max_stop_sequences=self.max_stop_sequences,
        )
        log.warning(
            "the model attends to %s positions: MAX_TOTAL_TOKENS %s is cut to %s and "
            "MAX_INPUT_TOKENS %s to %s",
            context,
            self.max_total_tokens,
            cut.max_total_tokens,
            self.max_input_tokens,
            cut.max_input_tokens,
        )
        return cut


LIMITS = Limits.from_env()


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One validated request: a raw prompt (``api`` "generate") or a chat ("chat")."""

    api: str
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] = ()
    max_new_tokens: int | None = None  # None: the rest of max_total_tokens, at most the bound
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    details: bool = False
    return_full_text: bool = False


def _present(payload: dict[str, Any], name: str) -> bool:
    return payload.get(name) is not None  # JSON null means "the default", as in TGI


def _count(value: Any, label: str, low: int, high: int, fix: str) -> int:
    # An integral float (16.0) passes: a pandas frame (MLflow's pyfunc input) holds ints so.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequestError(
            f"{label} must be an integer from {low} to {high}, got {value!r}; {fix}"
        )
    return value


def _number(value: Any, label: str, low: float, high: float, low_open: bool = False) -> float:
    number = (
        float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    )
    if (
        number is None
        or not math.isfinite(number)
        or number > high
        or number < low
        or (low_open and number == low)
    ):
        bracket = "(" if low_open else "["
        raise BadRequestError(
            f"{label} must be a number in {bracket}{low:g}, {high:g}], got {value!r}"
        )
    return number


def _flag(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequestError(f"{label} must be true or false, got {value!r}")
    return value


def _stop(value: Any, label: str, limits: Limits, single_allowed: bool) -> tuple[str, ...]:
    if single_allowed and isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        raise BadRequestError(f"{label} must be a list of non-empty strings, got {value!r:.80}")
    if len(value) > limits.max_stop_sequences:
        raise BadRequestError(
            f"{label} has {len(value)} stop strings; at most {limits.max_stop_sequences} "
            "(MAX_STOP_SEQUENCES)"
        )
    return tuple(value)


def _refuse_unknown(
    payload: dict[str, Any], allowed: tuple[str, ...], where: str, hint: str = ""
) -> None:
    unknown = sorted(set(payload) - set(allowed))
    if unknown:
        raise BadRequestError(
            f"unknown {where} {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}"
            + (f" ({hint})" if hint else "")
        )


def _refuse_streaming(payload: dict[str, Any]) -> None:
    if _present(payload, "stream") and _flag(payload["stream"], "'stream'"):
        raise BadRequestError(
            "streaming is not served here: the answer comes whole; leave 'stream' out or false"
        )


def _max_new_tokens(value: Any, label: str, limits: Limits) -> int:
    return _count(
        value,
        label,
        1,
        limits.max_new_tokens,
        f"at most {limits.max_new_tokens} new tokens per answer (FMOPS_MAX_NEW_TOKENS)",
    )


def _prompt_chars(chars: int, what: str, limits: Limits) -> None:
    if chars > limits.max_prompt_chars:
        raise BadRequestError(
            f"{what} has {chars} characters; at most {limits.max_prompt_chars} "
            "(FMOPS_MAX_PROMPT_CHARS): shorten it"
        )


def parse_generate(payload: dict[str, Any], limits: Limits = LIMITS) -> Request:
    """TGI's ``{"inputs": ..., "parameters": {...}}`` as a :class:`Request`."""
    _refuse_unknown(payload, GENERATE_FIELDS, "field(s)", CHAT_HINT)
    _refuse_streaming(payload)
    prompt = payload["inputs"]
    if isinstance(prompt, list):
        raise BadRequestError(
            "'inputs' is one prompt string: one request per prompt (TGI's contract), "
            f"e.g. {GENERATE_EXAMPLE}"
        )
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequestError(f"'inputs' must be a non-empty prompt string, got {prompt!r:.60}")
    _prompt_chars(len(prompt), "'inputs'", limits)
    parameters = payload.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequestError(
            f"'parameters' must be an object, like {GENERATE_EXAMPLE}; got {parameters!r:.60}"
        )
    _refuse_unknown(parameters, GENERATE_PARAMETERS, "parameter(s)", CHAT_HINT)
    given = {k: v for k, v in parameters.items() if v is not None}
    temperature = (
        _number(given["temperature"], "parameters.temperature", 0.0, MAX_TEMPERATURE)
        if "temperature" in given
        else None
    )
    top_p = (
        _number(given["top_p"], "parameters.top_p", 0.0, 1.0, True) if "top_p" in given else None
    )
    do_sample = _flag(given["do_sample"], "parameters.do_sample") if "do_sample" in given else False
    if temperature == 0 and do_sample:
        raise BadRequestError(
            "parameters.do_sample is true but temperature is 0 (greedy): give a temperature "
            "above 0 to sample, or leave do_sample out for greedy decoding"
        )
    sampled = temperature != 0 and (do_sample or temperature is not None or top_p is not None)
    return Request(
        api="generate",
        prompt=prompt,
        max_new_tokens=_max_new_tokens(given["max_new_tokens"], "parameters.max_new_tokens", limits)
        if "max_new_tokens" in given
        else None,
        temperature=(temperature or 1.0) if sampled else 0.0,
        top_p=top_p if sampled and top_p is not None else 1.0,
        stop=_stop(given["stop"], "parameters.stop", limits, False) if "stop" in given else (),
        seed=_count(given["seed"], "parameters.seed", 0, MAX_SEED, "or leave it out")
        if "seed" in given
        else None,
        details=_flag(given["details"], "parameters.details") if "details" in given else False,
        return_full_text=_flag(given["return_full_text"], "parameters.return_full_text")
        if "return_full_text" in given
        else False,
    )


def parse_chat(payload: dict[str, Any], limits: Limits = LIMITS) -> Request:
    """The OpenAI-style ``{"messages": [...], ...}`` as a :class:`Request`."""
    _refuse_unknown(payload, CHAT_FIELDS, "field(s)")
    _refuse_streaming(payload)
    messages = payload["messages"]
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(
            f"'messages' must be a non-empty list of messages, like {CHAT_EXAMPLE}"
        )
    chat = []
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or set(message) != {"role", "content"}
            or message["role"] not in ROLES
            or not isinstance(message["content"], str)
        ):
            raise BadRequestError(
                f"messages[{i}] must be {{'role': {'|'.join(ROLES)}, 'content': a string}} "
                f"(nothing else), got {message!r:.80}"
            )
        chat.append({"role": message["role"], "content": message["content"]})
    if chat[-1]["role"] != "user" or not chat[-1]["content"].strip():
        raise BadRequestError(
            f"the last message must be the user's, not empty: the model answers it (the last "
            f"is the {chat[-1]['role']}'s); end the chat with the user's turn"
        )
    _prompt_chars(sum(len(m["content"]) for m in chat), "'messages'", limits)
    given = {k: v for k, v in payload.items() if v is not None}
    temperature = (
        _number(given["temperature"], "temperature", 0.0, MAX_TEMPERATURE)
        if "temperature" in given
        else 1.0
    )
    top_p = _number(given["top_p"], "top_p", 0.0, 1.0, True) if "top_p" in given else 1.0
    return Request(
        api="chat",
        messages=tuple(chat),
        max_new_tokens=_max_new_tokens(given["max_tokens"], "max_tokens", limits)
        if "max_tokens" in given
        else None,
        temperature=temperature,
        top_p=top_p if temperature > 0 else 1.0,
        stop=_stop(given["stop"], "stop", limits, True) if "stop" in given else (),
        seed=_count(given["seed"], "seed", 0, MAX_SEED, "or leave it out")
        if "seed" in given
        else None,
    )


# -- the handlers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One answer: the response body, and what TGI's headers report."""

    body: Any
    prompt_tokens: int
    generated_tokens: int
    seconds: float  # the request's compute time: rendering, tokenizing, generating
    generation_seconds: float


def model_fn(model_dir: str) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import generation

    path = Path(model_dir)
    if not generation.is_causal_lm(path):
        raise ValueError(
            f"{path} is not a causal LM: no prompt_format.json (train.py task=instruction) and "
            "no *ForCausalLM architecture in config.json; serve a classifier with inference.py"
        )
    lm = generation.CausalLM(path)
    limits = LIMITS.within_context(getattr(lm.model.config, "max_position_embeddings", None))
    # Prompts over MAX_INPUT_TOKENS are refused, never cut: CausalLM truncates past max_length.
    lm.max_length = limits.max_input_tokens
    return {
        "lm": lm,
        "limits": limits,
        "name": path.resolve().name,
        "bos": _bos_prefix(lm),
        "runtime": lm.runtime,  # pytorch-int8 when serving.json names the int8 weights
    }


def _bos_prefix(lm: Any) -> str:
    """The BOS token that TGI's tokenization (special tokens added) puts in front, or ""."""
    tokenizer = lm.tokenizer
    if not tokenizer.bos_token:
        return ""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token if ids and ids[0] == tokenizer.bos_token_id else ""


def input_fn(input_data: bytes | str, content_type: str = "application/json") -> Request:
    if content_type.split(";")[0].strip() != "application/json":
        raise BadRequestError(
            f"content type {content_type!r} is not supported; send application/json"
        )
    try:
        payload = json.loads(input_data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequestError(f"the body is not valid JSON ({err}); expected {EXAMPLES}") from None
    except ValueError:  # an integer past Python's 4,300 digits: the client's error, not ours
        raise BadRequestError(f"a number in the body is too large; expected {EXAMPLES}") from None
    except RecursionError:
        raise BadRequestError(
            f"the body nests arrays or objects too deeply; expected {EXAMPLES}"
        ) from None
    if not isinstance(payload, dict) or ("inputs" in payload) == ("messages" in payload):
        raise BadRequestError(
            f"the body must be an object with either 'inputs' or 'messages': {EXAMPLES}"
        )
    return parse_generate(payload) if "inputs" in payload else parse_chat(payload)


def _prompt_of(request: Request, model: dict[str, Any]) -> str:
    if request.api == "generate":
        bos = model["bos"]
        return request.prompt if request.prompt.startswith(bos) else bos + request.prompt
    import instruction  # beside this file; generation.py imported it
    from jinja2 import TemplateError  # what a chat template raises (transformers renders with it)

    try:
        return model["lm"].prompt(list(request.messages))
    except (instruction.RecordError, TemplateError) as err:
        raise BadRequestError(f"the model's prompt format refuses this chat: {err}") from None


def predict_fn(request: Request, model: dict[str, Any]) -> Prediction:
    """One answer to ``request`` (from ``input_fn``); ``BadRequestError`` when its prompt is
    over the token bounds."""
    started = time.perf_counter()
    lm, limits = model["lm"], model["limits"]
    prompt = _prompt_of(request, model)
    tokens = len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if tokens > limits.max_input_tokens:
        raise BadRequestError(
            f"the prompt has {tokens} tokens; at most {limits.max_input_tokens} "
            "(MAX_INPUT_TOKENS): shorten it"
        )
    room = limits.max_total_tokens - tokens
    new = request.max_new_tokens or min(limits.max_new_tokens, room)
    if new > room:
        name = "max_new_tokens" if request.api == "generate" else "max_tokens"
        raise BadRequestError(
            f"the prompt's {tokens} tokens + {name} {new} = {tokens + new} tokens; at most "
            f"{limits.max_total_tokens} (MAX_TOTAL_TOKENS): ask for at most {room} new tokens "
            "or shorten the prompt"
        )
    seed = request.seed
    if request.temperature > 0 and seed is None:
        seed = random.randrange(MAX_SEED)  # reported, so that the answer can be reproduced
    (answer,) = lm.generate(
        [prompt],
        max_new_tokens=new,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=seed,
    )
    body = _body(request, answer, model, seed if request.temperature > 0 else None)
    return Prediction(
        body,
        answer.prompt_tokens,
        answer.tokens,
        time.perf_counter() - started,
        float(lm.last_timing.get("seconds", 0.0)),
    )


def _body(request: Request, answer: Any, model: dict[str, Any], seed: int | None) -> Any:
    if request.api == "generate":
        text = request.prompt + answer.text if request.return_full_text else answer.text
        generated: dict[str, Any] = {"generated_text": text}
        if request.details:
            generated["details"] = {
                "finish_reason": answer.finish_reason,
                "generated_tokens": answer.tokens,
                "seed": seed,
            }
        return [generated]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model["name"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "length" if answer.finish_reason == "length" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.tokens,
            "total_tokens": answer.prompt_tokens + answer.tokens,
        },
    }


def output_fn(prediction: Prediction, accept: str = "application/json") -> str:
    return json.dumps(prediction.body)


def headers_fn(prediction: Prediction) -> dict[str, str]:
    """TGI's response headers: tokens in and out, the compute time (seconds) and the time per
    generated token (whole milliseconds, as TGI rounds it)."""
    per_token = prediction.generation_seconds * 1000 / max(1, prediction.generated_tokens)
    return {
        "x-generated-tokens": str(prediction.generated_tokens),
        "x-prompt-tokens": str(prediction.prompt_tokens),
        "x-compute-time": f"{prediction.seconds:.6f}",
        "x-time-per-token": str(int(per_token)),
    }


def warm_up(model: dict[str, Any]) -> None:
    """A two-token answer through the whole path (rendering, bounds, generate)."""
    chat = {"messages": [{"role": "user", "content": WARM_UP_MESSAGE}], "max_tokens": 2}
    predict_fn(parse_chat({**chat, "temperature": 0}, model["limits"]), model)
