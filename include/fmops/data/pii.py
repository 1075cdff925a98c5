"""Personal data in free text: e-mail addresses, phone numbers, payment cards, IBANs.

Card numbers are checked with the Luhn checksum and IBANs with ISO 13616's mod-97 check and
their country's format (python-stdnum does both), so that order numbers, amounts and product
codes are not flagged. Detection and redaction are vectorised over a pandas Series
(``str.contains`` prefilters; the checksums run only on the candidates). The patterns are
hand-written because the well-kept detectors (presidio, scrubadub) pull in spaCy models that
would have to be downloaded at run time; these four patterns are what a fine-tuning set must
not leak.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

# A match starts only where a run of local-part characters starts (the lookbehind): without it,
# every position of a long run was a start that scanned to its end, quadratic in the cell
# (40,000 characters before an "@": 2 s). Each "@" now starts one scan of its domain: linear.
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# The written forms of phone numbers, not any run of digit groups (dates, amounts, IBAN digits):
# +44 20 7946 0958, +1.555.123.4567 (international), (555) 123-4567, 555-123-4567 (North
# American), 020 7946 0958 and 07700 900123 (national, leading 0).
# Not the phonenumbers library: its matcher needs the caller's country to read a national number
# (with region US it finds none of the UK forms above, and the texts have no country), its valid
# check drops numbers from unallocated ranges (555-123-4567), which are still personal data
# here, and it is 25 times slower (195 us a text against 7.8 us for this pattern and the digit
# count; 24 us a parsed candidate against 1.2 us), on every cell of the tables scanned.
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
    """A payment card's length (13 to 19 digits, separators ignored) and Luhn checksum."""
    from stdnum import luhn  # here, not at import time: importing stdnum takes 60 ms

    digits = "".join(c for c in number if c.isdigit())
    return 13 <= len(digits) <= 19 and luhn.is_valid(digits)


def iban_valid(text: str) -> bool:
    """The mod-97 check digits, and the length and format of the country's account numbers in
    the SWIFT IBAN registry: an IBAN-shaped code of a country without IBANs is not one. The
    registry is the one the pinned python-stdnum ships: upgrade it when SWIFT adds a country."""
    from stdnum import iban

    return iban.is_valid(text)


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
