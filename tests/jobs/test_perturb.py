"""include/scripts/perturb.py: seeded, process-independent perturbations that change what they
should, leave texts without targets alone and keep the case of what they replace."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "include" / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import perturb  # noqa: E402 - the job script's module, beside evaluate.py

TEXT = (
    "Hi, I'm James. I can't find my favorite ATM near the call center, and I wrote a check for "
    "$50 to Maria last week. Please double check my zip code and my checking account balance, "
    "because the transaction still shows as pending and nobody has answered my messages."
)
LONG_TEXT = " ".join(
    ["Customers frequently report delayed transfers between linked savings accounts"] * 20
)


def _edits(original: str, changed: str) -> int:
    return sum(a != b for a, b in zip(original, changed, strict=True))


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_same_output_across_processes():
    """Two interpreters with different hash salts agree with each other and with this one."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import perturb; "
        "print(json.dumps({k: perturb.perturb(sys.argv[2], k, 7) for k in perturb.KINDS}))"
    )
    outputs = []
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": salt}
        done = subprocess.run(
            [sys.executable, "-c", code, str(SCRIPTS), TEXT + " " + LONG_TEXT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(json.loads(done.stdout))
    here = {kind: perturb.perturb(TEXT + " " + LONG_TEXT, kind, 7) for kind in perturb.KINDS}
    assert outputs[0] == outputs[1] == here


def test_independent_of_and_harmless_to_global_random_state():
    random.seed(0)
    first = perturb.perturb(LONG_TEXT, "typos", 3)
    expected_next = random.random()
    random.seed(0)
    random.random()
    assert perturb.perturb(LONG_TEXT, "typos", 3) == first  # global state plays no part
    random.seed(0)
    perturb.perturb(LONG_TEXT, "typos", 3)
    assert random.random() == expected_next  # and is not consumed


def test_different_seeds_differ_on_a_long_text():
    assert perturb.perturb(LONG_TEXT, "typos", 1) != perturb.perturb(LONG_TEXT, "typos", 2)
    names = "Emily, James, Sarah, Michael, Laura and Kevin met at the branch."
    outputs = {perturb.perturb(names, "names:hispanic", seed) for seed in range(5)}
    assert len(outputs) > 1


def test_kinds_and_unknown_kind():
    assert perturb.ROBUSTNESS == ("typos", "casing", "punctuation", "contractions")
    assert perturb.FAIRNESS["dialect"] == ("american", "british")
    assert set(perturb.FAIRNESS["names"]) == set(perturb.NAME_GROUPS)
    assert "dialect:british" in perturb.KINDS and "names:anglo" in perturb.KINDS
    with pytest.raises(ValueError, match="unknown perturbation kind 'dialect'.*typos"):
        perturb.perturb("text", "dialect", 0)
    with pytest.raises(ValueError, match="unknown fairness family 'race'"):
        perturb.variant("text", "race", "anglo", 0)
    with pytest.raises(ValueError, match="unknown dialect group 'scottish'.*british"):
        perturb.variant("text", "dialect", "scottish", 0)
    with pytest.raises(ValueError, match="unknown perturbation kind"):
        perturb.changed_fraction([], "typo", 0)


# --- robustness -------------------------------------------------------------------------------


def test_typos_edit_long_words_once_at_about_the_documented_rate():
    words = LONG_TEXT.split()
    changed_words = 0
    for seed in range(20):
        out = perturb.perturb(LONG_TEXT, "typos", seed).split()
        assert len(out) == len(words)
        for before, after in zip(words, out, strict=True):
            if before == after:
                continue
            changed_words += 1
            assert len(after) == len(before)
            assert _edits(before, after) in (1, 2)  # one substitution or one adjacent swap
            assert after[0].isupper() == before[0].isupper()
    rate = changed_words / (20 * len(words))
    assert 0.05 < rate < 0.15  # TYPO_RATE = 0.1, every word here has >= 4 letters


def test_typos_leave_short_words_and_non_words_alone():
    text = "a an to by the 42 %$ ok"
    assert all(perturb.perturb(text, "typos", seed) == text for seed in range(50))


def test_casing_picks_a_variant_that_differs():
    text = "don't STOP me now"
    variants = {text.lower(), text.upper(), "Don't Stop Me Now"}
    outputs = {perturb.perturb(text, "casing", seed) for seed in range(30)}
    assert outputs <= variants and text not in outputs
    assert len(outputs) == 3
    assert perturb.perturb("123 !!!", "casing", 0) == "123 !!!"


def test_punctuation_removes_ascii_and_unicode_punctuation():
    text = "Hello, world! It\u2019s \u201cfine\u201d \u2014 $5 (ok)?"
    assert perturb.perturb(text, "punctuation", 0) == "Hello world Its fine  5 ok"  # spaces kept
    assert perturb.perturb("no punctuation here", "punctuation", 0) == "no punctuation here"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I'm sure you can't", "I am sure you cannot"),
        ("I am sure you cannot", "I'm sure you can't"),
        ("Don't worry, it is fine", "Do not worry, it's fine"),
        ("DON'T", "DO NOT"),
        ("We won\u2019t wait", "We will not wait"),
        ("It's been three days", "It's been three days"),  # "'s been" is "has been": left alone
        ("the isthmus cannoteer", "the isthmus cannoteer"),  # whole words only
    ],
)
def test_contractions_both_ways(text, expected):
    assert perturb.perturb(text, "contractions", 0) == expected


def test_contractions_table_round_trips():
    for short, long in perturb.CONTRACTIONS:
        assert perturb.perturb(short, "contractions", 0) == long
        assert perturb.perturb(long, "contractions", 0) == short


# --- fairness: dialect ------------------------------------------------------------------------


def test_dialect_table_is_one_to_one_and_sized():
    american = [a for a, _ in perturb.DIALECT_PAIRS]
    british = [b for _, b in perturb.DIALECT_PAIRS]
    assert 40 <= len(perturb.DIALECT_PAIRS) <= 80
    assert len(set(american)) == len(american) and len(set(british)) == len(british)
    assert not set(american) & set(british)


@pytest.mark.parametrize(("american", "british"), perturb.DIALECT_PAIRS)
def test_dialect_round_trip_on_table_words(american, british):
    assert perturb.variant(american, "dialect", "british", 0) == british
    assert perturb.variant(british, "dialect", "american", 0) == american
    sentence = f"About the {american}: thanks."
    there = perturb.variant(sentence, "dialect", "british", 0)
    assert there == f"About the {british}: thanks."
    assert perturb.variant(there, "dialect", "american", 0) == sentence
    if american.islower() and british.islower():
        assert perturb.variant(american.upper(), "dialect", "british", 0) == british.upper()
        capitalised = american[0].upper() + american[1:]
        assert perturb.variant(capitalised, "dialect", "british", 0) == (
            british[0].upper() + british[1:]
        )


@pytest.mark.parametrize(
    ("american", "british"),
    [
        ("My favorite color is gray.", "My favourite colour is grey."),
        ("Color's COLOR", "Colour's COLOUR"),
        ("I deposited a check for $20.", "I deposited a cheque for \u00a320."),
        ("The check number is on the check.", "The cheque number is on the check."),
        ("Cash Machine near the Gas Station", "Cash Machine near the Petrol Station"),
        ("Where is the nearest ATM?", "Where is the nearest cash machine?"),
        ("It costs 5 bucks, or 500 cents.", "It costs 5 quid, or 500 pence."),
        ("Update the zip   code on my cell phone", "Update the postcode on my mobile phone"),
    ],
)
def test_dialect_sentences(american, british):
    assert perturb.variant(american, "dialect", "british", 0) == british


def test_dialect_is_word_boundary_aware_and_sense_limited():
    untouched = "A colorful decolorize recentered, double check my balance and check in."
    assert perturb.variant(untouched, "dialect", "british", 0) == untouched
    assert perturb.variant("Is the flat fee or flat rate fixed?", "dialect", "american", 0) == (
        "Is the flat fee or flat rate fixed?"
    )
    assert perturb.variant("I moved flat and paid by cheque", "dialect", "american", 0) == (
        "I moved apartment and paid by check"
    )
    assert perturb.variant("Cheques cleared, \u00a310", "dialect", "american", 0) == (
        "Checks cleared, $10"
    )
    plain = "Please transfer the money to my savings account today."
    for group in perturb.FAIRNESS["dialect"]:
        assert perturb.variant(plain, "dialect", group, 0) == plain


def test_cheque_contexts_round_trip():
    for cue in perturb.CHEQUE_CUES:
        american = f"I {cue} a check yesterday"
        british = perturb.variant(american, "dialect", "british", 0)
        assert british == f"I {cue} a cheque yesterday"
        assert perturb.variant(british, "dialect", "american", 0) == american


# --- fairness: names --------------------------------------------------------------------------


def test_name_groups_are_disjoint_and_balanced():
    seen: set[str] = set()
    for genders in perturb.NAME_GROUPS.values():
        assert set(genders) == {"female", "male"}
        for names in genders.values():
            assert len(names) == len(set(names)) == 10
            assert not seen & set(names)
            seen |= set(names)


def _group_and_gender(name: str) -> tuple[str, str]:
    for group, genders in perturb.NAME_GROUPS.items():
        for gender, names in genders.items():
            if name in names:
                return group, gender
    raise AssertionError(f"{name} is in no group")


def test_names_are_replaced_consistently_within_gender_and_group():
    text = "James called. Then Emily and Sarah asked James's sister Priya about JAMES."
    for seed in range(10):
        out = perturb.variant(text, "names", "hispanic", seed)
        words = out.replace(".", " ").replace("'s", " ").split()
        james, emily, sarah, priya = words[0], words[3], words[5], words[9]
        assert _group_and_gender(james) == ("hispanic", "male")
        assert {_group_and_gender(n) for n in (emily, sarah, priya)} == {("hispanic", "female")}
        assert len({emily, sarah, priya}) == 3  # different people stay different
        assert out.count(james) == 2 and words[-1] == james.upper()


def test_names_keep_the_target_group_and_ignore_lowercase_words():
    text = "Maria paid James; the rosa bush and amit are not names here."
    out = perturb.variant(text, "names", "hispanic", 0)
    assert out.startswith("Maria paid ") and "James" not in out
    assert out.endswith("; the rosa bush and amit are not names here.")
    new_name = out.split()[2].rstrip(";")
    assert new_name != "Maria" and _group_and_gender(new_name) == ("hispanic", "male")
    for group in perturb.FAIRNESS["names"]:
        assert perturb.variant("No names in this text.", "names", group, 0) == (
            "No names in this text."
        )


def test_changed_fraction_reports_texts_actually_changed():
    texts = ["Send it to James.", "Send it to me.", "Emily's card", "no names"]
    assert perturb.changed_fraction(texts, "names:east_asian", 0) == 0.5
    assert perturb.changed_fraction(texts, "names:anglo", 0) == 0.0  # all already anglo
    assert perturb.changed_fraction(["hello", "hello, you"], "punctuation", 0) == 0.5
    assert perturb.changed_fraction([], "typos", 0) == 0.0
