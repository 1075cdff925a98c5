"""Personal data detection: the checksums, what is flagged (and what is not), and redaction."""

from __future__ import annotations

import pandas as pd
import pytest

from fmops.data import pii

# Published test numbers: payment cards from the card networks' test sets, IBANs from ISO 13616
# and the national examples.
VALID_CARDS = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "5555555555554444",
    "4012888888881881",
    "378282246310005",  # 15 digits (American Express)
    "6011 1111 1111 1117",
]
INVALID_CARDS = [
    "4111 1111 1111 1112",  # last digit off by one
    "1234 5678 9012 3456",
    "5555555555554443",
    "4111",  # too short
    "411111111111",  # 12 digits: below the 13 a card has
    "41111111111111111111",  # 20 digits: above the 19 a card has
    "",
]
VALID_IBANS = [
    "GB82 WEST 1234 5698 7654 32",
    "GB82WEST12345698765432",
    "gb82 west 1234 5698 7654 32",
    "DE89 3704 0044 0532 0130 00",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91ABNA0417164300",
]
INVALID_IBANS = [
    "GB82 WEST 1234 5698 7654 33",  # last digit changed
    "GB00 WEST 1234 5698 7654 32",  # check digits changed
    "GB28 WEST 1234 5698 7654 32",  # check digits transposed
    "DE89 3704 0044 0532 0130 01",
    "GB82 WEST",  # too short
]


@pytest.mark.parametrize("number", VALID_CARDS)
def test_luhn_valid_accepts_known_card_numbers(number: str) -> None:
    assert pii.luhn_valid(number)


@pytest.mark.parametrize("number", INVALID_CARDS)
def test_luhn_valid_rejects_wrong_checksums_and_lengths(number: str) -> None:
    assert not pii.luhn_valid(number)


@pytest.mark.parametrize("iban", VALID_IBANS)
def test_iban_valid_accepts_known_ibans(iban: str) -> None:
    assert pii.iban_valid(iban)


@pytest.mark.parametrize("iban", INVALID_IBANS)
def test_iban_valid_rejects_wrong_check_digits_and_lengths(iban: str) -> None:
    assert not pii.iban_valid(iban)


# Each text holds exactly one kind of personal data; detect must flag that kind and no other.
ONE_KIND = [
    ("email", "please write to jane.doe@example.com about it"),
    ("email", "cc: first.last+tag@mail.example.co.uk"),
    ("phone", "call me on +44 20 7946 0958 tonight"),
    ("phone", "my number is 555-123-4567"),
    ("phone", "reach me at +1.555.123.4567 after work"),
    ("phone", "office (555) 123-4567"),  # a format that the PHONE pattern's comment lists
    ("card", "my card 4111 1111 1111 1111 was charged twice"),
    ("card", "card number 5555-5555-5555-4444"),
    ("iban", "send it to GB82 WEST 1234 5698 7654 32 please"),
    ("iban", "my IBAN is DE89 3704 0044 0532 0130 00"),
]


@pytest.mark.parametrize(("kind", "text"), ONE_KIND, ids=[t for _, t in ONE_KIND])
def test_detect_flags_each_kind_and_only_that_kind(kind: str, text: str) -> None:
    flags = pii.detect(pd.Series([text]))
    assert list(flags.columns) == [f"_pii_{k}" for k in pii.KINDS]
    flagged = [k for k in pii.KINDS if bool(flags.at[0, f"_pii_{k}"])]
    assert flagged == [kind]


ORDINARY = [
    "order 12345",
    "where is order #987654?",
    "£1,250.00",
    "I was charged £1,250.00 instead of £125.00",
    "2024-01-31",
    "the transfer on 2024-01-31 has not arrived",
    "31/01/2024",
    "version 1.2.3",
    "3 items for 19.99 each",
    "ticket 123456789",
    "sort code 12-34-56",
    "card ending in 1111",
    "4111 1111 1111 1112",  # card-shaped but fails Luhn
    "my email is at home",
    "",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_detect_does_not_flag_ordinary_numbers_and_text(text: str) -> None:
    flags = pii.detect(pd.Series([text]))
    assert not flags.to_numpy().any(), flags.to_dict("records")
    assert pii.redact(text) == text


def test_detect_does_not_flag_a_date_with_a_time_as_a_phone_number() -> None:
    """Customer messages quote timestamps; one is not a phone number."""
    flags = pii.detect(pd.Series(["my card was declined on 2024-01-31 12:30 at the shop"]))
    assert not flags.to_numpy().any(), flags.to_dict("records")


def test_detect_is_row_aligned_with_its_input() -> None:
    texts = pd.Series(
        ["nothing here", "mail a.b@example.org", "card 4111 1111 1111 1111", "order 12345"],
        index=[10, 20, 30, 40],
    )
    flags = pii.detect(texts)
    assert list(flags.index) == [10, 20, 30, 40]
    assert flags["_pii_email"].tolist() == [False, True, False, False]
    assert flags["_pii_card"].tolist() == [False, False, True, False]
    assert flags.dtypes.map(str).tolist() == ["bool"] * len(pii.KINDS)


def test_detect_on_an_empty_series() -> None:
    flags = pii.detect(pd.Series([], dtype=object))
    assert flags.empty
    assert list(flags.columns) == [f"_pii_{k}" for k in pii.KINDS]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe@example.com now", "mail [EMAIL] now"),
        ("call +44 20 7946 0958 tonight", "call [PHONE] tonight"),
        ("card 4111 1111 1111 1111 declined", "card [CARD] declined"),
        ("pay GB82 WEST 1234 5698 7654 32 today", "pay [IBAN] today"),
        (
            "a@example.com, b@example.com and 4111-1111-1111-1111",
            "[EMAIL], [EMAIL] and [CARD]",
        ),
        (
            "mail jane.doe@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111, "
            "iban GB82 WEST 1234 5698 7654 32; order 12345 for £1,250.00 on 2024-01-31",
            "mail [EMAIL] or call [PHONE], card [CARD], iban [IBAN]; order 12345 for £1,250.00 "
            "on 2024-01-31",
        ),
    ],
)
def test_redact_masks_each_kind_and_keeps_the_rest(text: str, expected: str) -> None:
    assert pii.redact(text) == expected
    assert pii.mask(text) == expected
    # What is left carries no personal data.
    assert not pii.detect(pd.Series([pii.redact(text)])).to_numpy().any()


def test_redact_leaves_invalid_numbers_alone() -> None:
    text = "card 4111 1111 1111 1112 and iban GB82 WEST 1234 5698 7654 33"
    assert "[CARD]" not in pii.redact(text)
    assert "[IBAN]" not in pii.redact(text)


# IBAN-shaped codes whose mod-97 check digits are right, but that no IBAN has: a British one four
# characters short, and countries without IBANs.
NOT_IBANS = [
    "GB04 WEST 1234 5698 7654",
    "XY80 ABCD 1234 5678 9012 34",
    "US67 1234 5678 9012 3456 7",
]


@pytest.mark.parametrize("code", NOT_IBANS)
def test_an_iban_shaped_code_of_the_wrong_length_or_country_is_not_an_iban(code: str) -> None:
    compact = code.replace(" ", "")
    assert int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1
    assert not pii.iban_valid(code)
    flags = pii.detect(pd.Series([f"product code {code} is out of stock"]))
    assert not flags.to_numpy().any(), flags.to_dict("records")


ADVERSARIAL = {
    # the shapes that made the patterns quadratic or worse, 2 MB each
    "a long local part before an @": "a" * 2_000_000 + "@",
    "many @": "a@" * 1_000_000,
    "a long dotted domain": "a@" + "b." * 1_000_000,
    "long digit runs": "1 " * 1_000_000,
    "a long IBAN-like run": "GB12" + "A" * 2_000_000,
}


@pytest.mark.parametrize("shape", list(ADVERSARIAL))
def test_detection_and_redaction_are_linear_in_the_cell(shape):
    """A 2 MB adversarial cell through detect and redact, in a process the kernel stops after
    10 s of CPU: linear patterns take well under a second; the quadratic email pattern took 2 s
    for 40,000 characters (an hour for this)."""
    import resource
    import subprocess
    import sys

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (10, 10))

    script = (
        "import sys, pandas as pd\n"
        "from fmops.data import pii\n"
        "text = sys.stdin.read()\n"
        "pii.detect(pd.Series([text]))\n"
        "pii.redact(text)\n"
        "print('done')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=ADVERSARIAL[shape],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited,
    )
    assert result.returncode == 0 and result.stdout == "done\n", (
        shape,
        result.returncode,
        result.stderr[-1000:],
    )
