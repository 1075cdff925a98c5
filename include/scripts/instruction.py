"""Instruction tuning of a causal language model: records, prompt rendering and loss masks.

Used by ``train.py`` (``task=instruction``) and uploaded beside it. A record is either a chat,
``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}`` ending with the
assistant's answer, or a pair ``{"prompt": ..., "completion": ...}`` (read as a user turn and an
assistant turn). Channel folders hold ``*.jsonl`` (what fmops stages) or ``*.csv`` files; the
column names are hyperparameters.

Rendering (``prompt_template``):

- ``auto``: the tokenizer's chat template when it has one, else the plain template;
- ``chat``: the chat template (an error when the tokenizer has none);
- ``plain``: the plain template below, the same for every model::

      ### System:
      {system message}

      ### Instruction:
      {user message}

      ### Response:
      {assistant message}{eos}

  Turns are separated by a blank line; the text starts with the tokenizer's BOS token when it
  has one, and each answer ends with its EOS token (the SEP token for tokenizers without one)
  so that the model learns to stop.

Only the assistant's tokens (and the end-of-turn token that closes them) count in the loss;
everything else is labelled -100. Multi-turn chats train on every assistant turn. The masks come
from rendering growing prefixes of the chat: transformers' ``return_assistant_tokens_mask``
needs ``{% generation %}`` markers that most chat templates lack.

Only the standard library is imported here; the tokenizer is passed in.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

IGNORE = -100  # the label that torch's cross-entropy (and transformers' losses) skip
PLAIN_HEADERS = {
    "system": "### System:\n",
    "user": "### Instruction:\n",
    "assistant": "### Response:\n",
}
TEMPLATES = ("auto", "chat", "plain")


class RecordError(ValueError):
    """An instruction record is malformed; the message names the file, the record and the fix."""


def read_records(
    channel_dir: Path, messages_column: str, prompt_column: str, completion_column: str
) -> list[list[dict[str, str]]]:
    """Every record of a channel folder as a chat (a list of role/content messages)."""
    files = sorted([*channel_dir.glob("*.jsonl"), *channel_dir.glob("*.csv")])
    if not files:
        raise RecordError(f"no *.jsonl or *.csv file in channel folder {channel_dir}")
    chats: list[list[dict[str, str]]] = []
    for path in files:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                rows: list[dict[str, Any]] = list(csv.DictReader(handle))
        else:
            rows = []
            with path.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise RecordError(f"{path.name} line {number} is not JSON: {err}") from None
        for number, row in enumerate(rows, 1):
            where = f"{path.name} record {number}"
            chats.append(as_chat(row, where, messages_column, prompt_column, completion_column))
    return chats


def as_chat(
    row: dict[str, Any],
    where: str,
    messages_column: str,
    prompt_column: str,
    completion_column: str,
) -> list[dict[str, str]]:
    messages = row.get(messages_column)
    if isinstance(messages, str) and messages.strip():
        try:
            messages = json.loads(messages)  # a chat stored as JSON text (CSV, Parquet exports)
        except json.JSONDecodeError:
            raise RecordError(f"{where}: {messages_column!r} is not a JSON list") from None
    if messages is None or messages == "":
        prompt, completion = row.get(prompt_column), row.get(completion_column)
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise RecordError(
                f"{where} has neither {messages_column!r} nor both {prompt_column!r} and "
                f"{completion_column!r} as strings; set messages_column or prompt_column/"
                "completion_column to the dataset's columns"
            )
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
    if not isinstance(messages, list) or not messages:
        raise RecordError(f"{where}: {messages_column!r} must be a non-empty list of messages")
    chat = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in PLAIN_HEADERS or not isinstance(content, str):
            raise RecordError(
                f"{where} message {i}: expected {{'role': system|user|assistant, 'content': str}}, "
                f"got {message!r:.80}"
            )
        chat.append({"role": role, "content": content})
    if chat[-1]["role"] != "assistant" or not chat[-1]["content"].strip():
        raise RecordError(f"{where}: the last message must be the assistant's non-empty answer")
    return chat


def choose_template(tokenizer: Any, prompt_template: str) -> str:
    """``chat`` or ``plain``: what ``prompt_template`` means for this tokenizer."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if prompt_template == "chat" and not has_chat:
        raise RecordError(
            "prompt_template=chat but the base model's tokenizer has no chat template; "
            "use prompt_template=plain (or auto)"
        )
    if prompt_template == "auto":
        return "chat" if has_chat else "plain"
    return prompt_template


def end_of_answer(tokenizer: Any) -> str:
    token = tokenizer.eos_token or tokenizer.sep_token
    if not token:
        raise RecordError(
            "the tokenizer has neither an EOS nor a SEP token to end answers with; "
            "give the base model an eos_token (tokenizer_config.json)"
        )
    return token


def segments(chat: list[dict[str, str]], tokenizer: Any, template: str) -> list[tuple[str, bool]]:
    """The rendered chat as ``(text, trained)`` pieces, in order."""
    if template == "plain":
        pieces: list[tuple[str, bool]] = [(tokenizer.bos_token or "", False)]
        eos = end_of_answer(tokenizer)
        for message in chat:
            if message["role"] == "assistant":
                pieces += [
                    (PLAIN_HEADERS["assistant"], False),
                    (message["content"] + eos, True),
                    ("\n\n", False),
                ]
            else:
                pieces.append((PLAIN_HEADERS[message["role"]] + message["content"] + "\n\n", False))
        return [p for p in pieces[:-1] if p[0]]  # no separator after the last answer

    def render(messages: list[dict[str, str]], prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    full = render(chat, False)
    pieces, position = [], 0
    for i, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        before, after = render(chat[:i], True), render(chat[: i + 1], False)
        if not (after.startswith(before) and full.startswith(after) and len(before) >= position):
            if i != len(chat) - 1:
                continue  # a template that rewrites history: earlier answers stay context
            raise RecordError(
                "the chat template does not render a chat as the prompt followed by the answer; "
                "use prompt_template=plain"
            )
        pieces += [(full[position : len(before)], False), (full[len(before) : len(after)], True)]
        position = len(after)
    pieces.append((full[position:], False))
    return [p for p in pieces if p[0]]


def render_prompt(chat: list[dict[str, str]], tokenizer: Any, template: str) -> str:
    """``chat`` without its answer, rendered as :func:`segments` renders training chats, up to
    where the assistant's answer starts: what a tuned model is asked to continue.

    ``chat`` ends with a user (or system) turn; an assistant turn with a placeholder answer is
    rendered after it and the text is cut at the placeholder, so the prompt ends exactly as the
    training text did before the answer (a chat template's assistant header included)."""
    placeholder = [*chat, {"role": "assistant", "content": "\x00"}]
    text = "".join(piece for piece, _ in segments(placeholder, tokenizer, template))
    return text[: text.rindex("\x00")]


def encode(
    chat: list[dict[str, str]], tokenizer: Any, template: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels (``IGNORE`` outside the answers), cut to ``max_length``."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in segments(chat, tokenizer, template):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    return ids[:max_length], labels[:max_length]
