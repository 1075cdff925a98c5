"""Derived columns that the Great Expectations suites validate.

GX validates flat tables, so everything a check needs becomes a column first: the text a model
reads (``_text``, for classification the text column; for instruction tuning the prompt and
completion, or the rendered chat), its length in characters and in each candidate tokenizer's
tokens, a normalised form (case, whitespace and punctuation folded) for duplicate and leakage
checks, encoding problems, personal data, and for chat records their structure (turns, roles in
order, whether the last turn is the assistant's, empty contents).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from fmops.data import pii

if TYPE_CHECKING:
    import pandas as pd

    from fmops.config import DataConfig

log = logging.getLogger(__name__)
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
SURROGATE = r"[\udc80-\udcff]"  # bytes that were not UTF-8, kept by surrogateescape
ROLES = ("system", "user", "assistant")


def normalize(texts: pd.Series) -> pd.Series:
    """Lower case, punctuation dropped, whitespace collapsed: "Card  arrived?" == "card arrived"."""
    return (
        texts.str.lower()
        .str.replace(r"[^\w\s]", "", regex=True)
        .str.replace(r"\s+", " ", regex=True)
        .str.strip()
    )


def _as_messages(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        return None
    return value


def _chat_structure(value: Any) -> dict[str, Any]:
    messages = _as_messages(value)
    if messages is None:
        return {
            "_turns": 0,
            "_roles": "",
            "_last_role": "",
            "_empty_turns": 0,
            "_roles_valid": False,
            "_text": "",
        }
    roles = [str(m.get("role", "")) for m in messages]
    contents = [m.get("content") for m in messages]
    body = [r for r in roles if r != "system"]
    leading_system = all(r == "system" for r in roles[: len(roles) - len(body)])
    alternating = all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(body))
    return {
        "_turns": len(messages),
        "_roles": ",".join(roles),
        "_last_role": roles[-1] if roles else "",
        "_empty_turns": sum(1 for c in contents if not isinstance(c, str) or not c.strip()),
        "_roles_valid": bool(body) and leading_system and alternating and body[-1] == "assistant",
        "_text": "\n".join(f"{r}: {c}" for r, c in zip(roles, contents, strict=True)),
    }


def derive(frame: pd.DataFrame, data: DataConfig, tokenizers: dict[str, Any]) -> pd.DataFrame:
    """The frame with the derived columns added (``_`` prefix); the input is not modified."""
    import pandas as pd

    out = frame.copy()
    if data.task == "classification":
        text = _string(out, data.text_column)
        out["_label"] = _string(out, data.label_column)
    elif data.messages_column in out.columns:
        structure = pd.DataFrame(
            [_chat_structure(v) for v in out[data.messages_column]], index=out.index
        )
        out = pd.concat([out, structure], axis=1)
        text = out["_text"]
    else:
        prompt, completion = _string(out, data.prompt_column), _string(out, data.completion_column)
        out["_prompt_empty"] = prompt.str.strip() == ""
        out["_completion_empty"] = completion.str.strip() == ""
        text = prompt + "\n" + completion
    out["_text"] = text
    out["_chars"] = text.str.len()
    out["_normalized"] = normalize(text)
    out["_control"] = text.str.contains(CONTROL, regex=True)
    out["_invalid_utf8"] = text.str.contains(SURROGATE, regex=True)
    flags = pii.detect(text)
    out = pd.concat([out, flags], axis=1)
    out["_pii"] = flags.any(axis=1)
    for name, tokenizer in tokenizers.items():
        out[f"_tokens__{name}"] = token_counts(tokenizer, text)
    out["_dup_exact"] = text.duplicated(keep="first")
    out["_dup_normalized"] = out["_normalized"].duplicated(keep="first")
    if data.task == "classification":
        labels_per_text = out.groupby("_normalized")["_label"].transform("nunique")
        out["_label_conflict"] = labels_per_text > 1
    return out


def _string(frame: pd.DataFrame, column: str) -> pd.Series:
    import pandas as pd

    if column not in frame.columns:
        return pd.Series("", index=frame.index, dtype=object)
    # Object dtype on purpose: pandas' string dtype cannot hold the surrogates that mark bytes
    # which were not UTF-8, and the encoding check has to see them.
    values = frame[column].astype(object).where(frame[column].notna(), "")
    as_text = [v if isinstance(v, str) else str(v) for v in values]
    return pd.Series(as_text, index=frame.index, dtype=object)


def token_counts(tokenizer: Any, texts: pd.Series, batch: int = 4096) -> list[int]:
    """Tokens per text, special tokens included (what counts against max_length).

    A fast tokenizer is called directly (its Rust ``encode_batch_fast``): the same counts as
    the transformers wrapper, without building a Python list of ids per text (twice as fast on
    1M rows). Undecodable bytes are counted as U+FFFD, as a tokenizer would receive them.
    """
    counts: list[int] = []
    values = [_replace_surrogates(v) for v in texts.tolist()]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        from tokenizers import Tokenizer

        # A private copy without the padding and truncation that a saved tokenizer may carry.
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_padding()
        backend.no_truncation()
        for start in range(0, len(values), batch):
            encoded = backend.encode_batch_fast(
                values[start : start + batch], add_special_tokens=True
            )
            counts += [len(e.ids) for e in encoded]
        return counts
    for start in range(0, len(values), batch):
        encoded = tokenizer(
            values[start : start + batch],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        counts += [len(ids) for ids in encoded["input_ids"]]
    return counts


def _replace_surrogates(value: str) -> str:
    if value.isascii():
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def leakage(evaluation: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows whose text (exactly, or normalised) is also in the training set."""
    out = evaluation.copy()
    out["_leak_exact"] = out["_text"].isin(set(train["_text"]))
    out["_leak_normalized"] = out["_normalized"].isin(set(train["_normalized"]))
    return out


def strip_derived(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[[c for c in frame.columns if not c.startswith("_")]]


def label_distribution(labels: pd.Series) -> dict[str, float]:
    counts = labels.value_counts(normalize=True)
    return {str(k): float(v) for k, v in counts.items()}


def psi(current: dict[str, float], reference: dict[str, float], floor: float = 1e-4) -> float:
    """Population stability index of two label distributions (0: identical; > 0.25: shifted)."""
    import math

    total = 0.0
    for label in set(current) | set(reference):
        actual = max(current.get(label, 0.0), floor)
        expected = max(reference.get(label, 0.0), floor)
        total += (actual - expected) * math.log(actual / expected)
    return total
