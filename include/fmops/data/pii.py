"""Personal data in free text: e-mail addresses, phone numbers, payment cards, IBANs.

Card numbers are checked with the Luhn checksum and IBANs with ISO 13616's mod-97 check, so
that order numbers and amounts are not flagged. Detection and redaction are vectorised over a
pandas Series (``str.contains`` prefilters; the checksums run only on the candidates).
Hand-written because the well-kept detectors (presidio, scrubadub) pull in spaCy models that
would have to be downloaded at run time; these four patterns are what a fine-tuning set must
not leak.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# The written forms of phone numbers, not any run of digit groups (dates, amounts, IBAN digits):
# +44 20 7946 0958, +1.555.123.4567 (international), (555) 123-4567, 555-123-4567 (North
# American), 020 7946 0958 and 07700 900123 (national, leading 0).
PHONE = re.compile(
    r"""(?<![\w+])(?:
        \+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{2,4}){2,4}
      | \(\d{3}\)\s?\d{3}[\s.-]\d{4}
      | \d{3}[.-]\d{3}[.-]\d{4}
      | 0\d{2,4}[\s-]\d{3,4}(?:[\s-]?\d{3,4})?
    )(?![\w])""",
    re.VERBOSE,
)
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
KINDS = ("email", "phone", "card", "iban")
MASKS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]"}


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    digits = "".join(str(int(c, 36)) for c in rearranged)
    return int(digits) % 97 == 1


def _phone_digits_ok(match: str) -> bool:
    return 9 <= sum(c.isdigit() for c in match) <= 15


def _matches(kind: str, text: str) -> list[str]:
    if kind == "email":
        return EMAIL.findall(text)
    if kind == "card":
        return [m for m in CARD.findall(text) if luhn_valid(m)]
    if kind == "iban":
        return [m for m in IBAN.findall(text) if iban_valid(m)]
    for iban in _matches("iban", text):  # an IBAN's digit groups are not a phone number
        text = text.replace(iban, " ")
    return [m for m in PHONE.findall(text) if _phone_digits_ok(m) and not luhn_valid(m)]


def detect(texts: pd.Series) -> pd.DataFrame:
    """One boolean column per kind of personal data, row-aligned with ``texts``."""
    import pandas as pd

    flags = {}
    prefilter = {"email": "@", "phone": r"\d", "card": r"\d", "iban": r"[A-Z]{2}\d{2}"}
    for kind in KINDS:
        column = pd.Series(False, index=texts.index)
        candidates = texts[texts.str.contains(prefilter[kind], regex=True, na=False)]
        if not candidates.empty:
            column.loc[candidates.index] = candidates.map(lambda t, k=kind: bool(_matches(k, t)))
        flags[f"_pii_{kind}"] = column
    return pd.DataFrame(flags)


def redact(text: str) -> str:
    """The text with each detected item replaced by its mask, e.g. ``[EMAIL]``."""
    for kind in ("email", "iban", "card", "phone"):
        for match in sorted(set(_matches(kind, text)), key=len, reverse=True):
            text = text.replace(match, MASKS[kind])
    return text


# Reports mask personal data exactly as redaction does.
mask = redact
