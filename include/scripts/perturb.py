"""Seeded text perturbations for the robustness and fairness parts of a HELM-style evaluation.

Standalone like the other job scripts (standard library only, never ``fmops``). Every
perturbation is a pure function of ``(text, kind, seed)``: its random choices come from
``random.Random(f"{seed}:{kind}:{text}")``, which seeds through SHA-512 and not through the
per-process salted ``hash()``, so two processes, or two orders of calls, give the same output and
the global ``random`` state is never touched. ``punctuation``, ``contractions`` and ``dialect:*``
are deterministic and ignore the seed.

Kinds (``KINDS`` lists them all):

- robustness (``ROBUSTNESS``), the text should keep its meaning:
  ``typos``: each ASCII-alphabetic word of at least ``TYPO_MIN_LENGTH`` letters gets, with
  probability ``TYPO_RATE``, one edit: a letter replaced by a QWERTY keyboard neighbour, or two
  adjacent different letters swapped (even odds; each position keeps its case);
  ``casing``: the whole text lower-cased, upper-cased or title-cased, one variant drawn per text
  among those that differ from it;
  ``punctuation``: every punctuation character removed (ASCII ``string.punctuation``, which
  includes symbols such as ``$``, and any Unicode ``P*`` character); whitespace is left as is;
  ``contractions``: both ways in one pass, contractions expanded ("I'm" -> "I am") and expanded
  forms contracted ("can not" is left alone, "cannot" -> "can't"), from ``CONTRACTIONS``.
- fairness (``FAIRNESS``), the same text as a member of another group would write it:
  ``dialect:british`` (American -> British spelling and vocabulary) and ``dialect:american``
  (the reverse), from ``DIALECT_PAIRS``; ``names:<group>``: person first names from
  ``NAME_GROUPS`` replaced by names of that group. :func:`variant` is the same by family/group.

Replacements are whole words or phrases: they match case-insensitively between non-word
characters, so "color" and "Color's" change but "colorful" (not in the table) does not; within a
phrase any run of whitespace matches a space, and ``'`` matches a curly apostrophe too. One
regular-expression pass with the longest alternative first, so a replacement is never replaced
again and "checking account" wins over a shorter entry. Case follows the matched text:
ALL CAPS stays all caps, a capitalised first letter stays capitalised, otherwise the table's
own form is used (so "atm" -> "cash machine" and "cash machine" -> "ATM").

Use :func:`changed_fraction` to report how many examples a perturbation actually changed: texts
without targets (no names, no contractions, no dialect words) come back unchanged.
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from collections.abc import Callable, Iterable, Sequence

ROBUSTNESS = ("typos", "casing", "punctuation", "contractions")

TYPO_RATE = 0.1
TYPO_MIN_LENGTH = 4

KEYBOARD_NEIGHBOURS = {
    "q": "wa",
    "w": "qesa",
    "e": "wrds",
    "r": "etfd",
    "t": "rygf",
    "y": "tuhg",
    "u": "yijh",
    "i": "uokj",
    "o": "iplk",
    "p": "ol",
    "a": "qwsz",
    "s": "awedxz",
    "d": "serfcx",
    "f": "drtgvc",
    "g": "ftyhbv",
    "h": "gyujnb",
    "j": "huikmn",
    "k": "jiolm",
    "l": "kop",
    "z": "asx",
    "x": "zsdc",
    "c": "xdfv",
    "v": "cfgb",
    "b": "vghn",
    "n": "bhjm",
    "m": "njk",
}

# (contracted, expanded): used in both directions. Ambiguous forms take one reading: "'s" is
# "is", "'d" is "would" ("it's been", "I'd better" and the like are guarded and left alone).
CONTRACTIONS = (
    ("I'm", "I am"),
    ("I've", "I have"),
    ("I'll", "I will"),
    ("I'd", "I would"),
    ("you're", "you are"),
    ("you've", "you have"),
    ("you'll", "you will"),
    ("you'd", "you would"),
    ("we're", "we are"),
    ("we've", "we have"),
    ("we'll", "we will"),
    ("they're", "they are"),
    ("they've", "they have"),
    ("they'll", "they will"),
    ("he's", "he is"),
    ("she's", "she is"),
    ("it's", "it is"),
    ("that's", "that is"),
    ("there's", "there is"),
    ("what's", "what is"),
    ("where's", "where is"),
    ("who's", "who is"),
    ("let's", "let us"),
    ("isn't", "is not"),
    ("aren't", "are not"),
    ("wasn't", "was not"),
    ("weren't", "were not"),
    ("don't", "do not"),
    ("doesn't", "does not"),
    ("didn't", "did not"),
    ("haven't", "have not"),
    ("hasn't", "has not"),
    ("hadn't", "had not"),
    ("can't", "cannot"),
    ("couldn't", "could not"),
    ("won't", "will not"),
    ("wouldn't", "would not"),
    ("shouldn't", "should not"),
)
# "'s" before "been"/"got" is "has", "'d" before "been"/"better" is "had": left as written.
_CONTRACTION_GUARDS = tuple(
    f"{short} {following}"
    for short, long in CONTRACTIONS
    if short.endswith(("'s", "'d"))
    for following in (("been", "got") if short.endswith("'s") else ("been", "better"))
)

# (American, British) spelling and vocabulary of banking and customer-service text, one to one
# so that a round trip gives back the table word. Deliberate limits: "license" becomes "licence"
# in its verb sense too; "pound(s)" and "holiday(s)" read as money and leave, and "flat(s)" as a
# home, when going to American ("flat fee" and "flat rate" are guarded); "gas" only in "gas
# station" (a gas bill is a gas bill in both); "mobile phone" rather than bare "mobile", so that
# "mobile app" survives the way back.
DIALECT_PAIRS = (
    ("color", "colour"),
    ("colors", "colours"),
    ("favorite", "favourite"),
    ("favorites", "favourites"),
    ("center", "centre"),
    ("centers", "centres"),
    ("license", "licence"),
    ("licenses", "licences"),
    ("canceled", "cancelled"),
    ("canceling", "cancelling"),
    ("traveled", "travelled"),
    ("traveling", "travelling"),
    ("traveler", "traveller"),
    ("travelers", "travellers"),
    ("enroll", "enrol"),
    ("enrollment", "enrolment"),
    ("installment", "instalment"),
    ("installments", "instalments"),
    ("fulfill", "fulfil"),
    ("fulfillment", "fulfilment"),
    ("authorize", "authorise"),
    ("authorized", "authorised"),
    ("unauthorized", "unauthorised"),
    ("authorization", "authorisation"),
    ("recognize", "recognise"),
    ("recognized", "recognised"),
    ("apologize", "apologise"),
    ("realize", "realise"),
    ("organization", "organisation"),
    ("analyze", "analyse"),
    ("behavior", "behaviour"),
    ("honor", "honour"),
    ("neighbor", "neighbour"),
    ("catalog", "catalogue"),
    ("defense", "defence"),
    ("jewelry", "jewellery"),
    ("gray", "grey"),
    ("apartment", "flat"),
    ("apartments", "flats"),
    ("zip code", "postcode"),
    ("cell phone", "mobile phone"),
    ("cell phones", "mobile phones"),
    ("cell number", "mobile number"),
    ("gas station", "petrol station"),
    ("gas stations", "petrol stations"),
    ("vacation", "holiday"),
    ("vacations", "holidays"),
    ("federal holiday", "bank holiday"),
    ("checking account", "current account"),
    ("checking accounts", "current accounts"),
    ("checkbook", "chequebook"),
    ("checkbooks", "chequebooks"),
    ("paycheck", "pay cheque"),
    ("paychecks", "pay cheques"),
    ("routing number", "sort code"),
    ("social security number", "national insurance number"),
    ("credit union", "building society"),
    ("money order", "postal order"),
    ("mailing address", "postal address"),
    ("in the mail", "in the post"),
    ("parking lot", "car park"),
    ("attorney", "solicitor"),
    ("mom", "mum"),
    ("ATM", "cash machine"),
    ("ATMs", "cash machines"),
    ("dollar", "pound"),
    ("dollars", "pounds"),
    ("cents", "pence"),
    ("bucks", "quid"),
    ("USD", "GBP"),
)
_DIALECT_GUARDS = ("flat fee", "flat fees", "flat rate", "flat-rate")

# "check" is a cheque only in its banking sense: after one of these words (an optional
# determiner between) or before one of the followers. Going to American, every "cheque" is a check.
CHEQUE_CUES = (
    "cash",
    "cashed",
    "cashing",
    "deposit",
    "deposited",
    "depositing",
    "write",
    "wrote",
    "written",
    "writing",
    "bounced",
    "personal",
    "paper",
    "certified",
    "cashier's",
    "blank",
    "void",
    "voided",
)
CHEQUE_DETERMINERS = ("", "a ", "the ", "my ", "your ", "this ", "that ", "his ", "her ", "our ")
CHEQUE_FOLLOWERS = ("number", "deposit", "payment", "image", "bounced", "cleared")
_CHEQUE_CONTEXTS = tuple(
    (f"{cue} {det}{check}", f"{cue} {det}{cheque}")
    for cue in CHEQUE_CUES
    for det in CHEQUE_DETERMINERS
    for check, cheque in (("check", "cheque"), ("checks", "cheques"))
) + tuple(
    (f"{check} {follower}", f"{cheque} {follower}")
    for follower in CHEQUE_FOLLOWERS
    for check, cheque in (("check", "cheque"), ("checks", "cheques"))
)

# Common first names by naming tradition, ten female and ten male each, hand-picked to avoid
# names that are also English words or date abbreviations (Will, May, Mark, Grace, Jun, ...).
# The lists are disjoint; a name is replaced by one of the same gender in the target group.
NAME_GROUPS: dict[str, dict[str, tuple[str, ...]]] = {
    "anglo": {
        "female": (
            "Emily", "Sarah", "Jessica", "Jennifer", "Amanda",
            "Megan", "Rachel", "Laura", "Heather", "Katherine",
        ),
        "male": (
            "James", "Michael", "Matthew", "Andrew", "Ryan",
            "Daniel", "Thomas", "Joshua", "Brian", "Kevin",
        ),
    },
    "hispanic": {
        "female": (
            "Maria", "Guadalupe", "Alejandra", "Lucia", "Carmen",
            "Rosa", "Fernanda", "Valentina", "Ximena", "Paola",
        ),
        "male": (
            "Jose", "Carlos", "Alejandro", "Miguel", "Juan",
            "Luis", "Javier", "Diego", "Santiago", "Mateo",
        ),
    },
    "south_asian": {
        "female": (
            "Priya", "Ananya", "Deepika", "Kavya", "Lakshmi",
            "Pooja", "Sneha", "Divya", "Meera", "Anjali",
        ),
        "male": (
            "Rahul", "Arjun", "Rohan", "Amit", "Vikram",
            "Sanjay", "Aditya", "Ravi", "Karthik", "Anil",
        ),
    },
    "east_asian": {
        "female": (
            "Mei", "Yuki", "Hana", "Sakura", "Ying",
            "Haruka", "Jing", "Seoyeon", "Xiaoling", "Aiko",
        ),
        "male": (
            "Wei", "Hiroshi", "Kenji", "Hao", "Takeshi",
            "Jian", "Haruto", "Minjun", "Daisuke", "Zhiwei",
        ),
    },
    "west_african": {
        "female": (
            "Abena", "Amara", "Chiamaka", "Ngozi", "Adaeze",
            "Ama", "Efua", "Folake", "Yetunde", "Nneka",
        ),
        "male": (
            "Kwame", "Chinedu", "Emeka", "Kofi", "Oluwaseun",
            "Tunde", "Babajide", "Obinna", "Kwesi", "Yaw",
        ),
    },
}  # fmt: skip

FAIRNESS: dict[str, tuple[str, ...]] = {
    "dialect": ("american", "british"),
    "names": tuple(NAME_GROUPS),
}

KINDS = ROBUSTNESS + tuple(
    f"{family}:{group}" for family, groups in FAIRNESS.items() for group in groups
)

UNKNOWN_KIND_MSG = "unknown perturbation kind {kind!r}; choose one of {kinds}"


def _rng(seed: int | str, kind: str, text: str) -> random.Random:
    return random.Random(f"{seed}:{kind}:{text}")


def _key(phrase: str) -> str:
    return " ".join(phrase.replace("\u2019", "'").lower().split())


def _match_case(found: str, source: str, target: str) -> str:
    """``target`` in the case of ``found``, the text that matched the table form ``source``."""
    if found == source:
        return target
    if found.isupper() and sum(ch.isalpha() for ch in found) > 1:
        return target.upper()
    if found[:1].isupper():
        words = found.split()
        if len(words) > 1 and all(word[:1].isupper() for word in words):
            return " ".join(word[:1].upper() + word[1:] for word in target.split())
        return target[:1].upper() + target[1:]
    return target


class _Replacer:
    """Whole-word, case-insensitive, longest-first replacement of phrases in one pass."""

    def __init__(self, pairs: Iterable[tuple[str, str]], guards: Iterable[str] = ()):
        self.table = {_key(source): (source, target) for source, target in pairs}
        self.table.update({_key(guard): (guard, guard) for guard in guards})
        alternatives = sorted(self.table.values(), key=lambda pair: len(pair[0]), reverse=True)
        body = "|".join(_phrase_pattern(source) for source, _ in alternatives)
        self.pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    def __call__(self, text: str) -> str:
        return self.pattern.sub(self._swap, text)

    def _swap(self, match: re.Match[str]) -> str:
        found = match[0]
        source, target = self.table[_key(found)]
        if source == target:
            return found  # a guard: leave the phrase as written
        return _match_case(found, source, target)


def _phrase_pattern(phrase: str) -> str:
    parts = [re.escape(word).replace("'", "['\u2019]") for word in phrase.split()]
    return r"\s+".join(parts)


# --- robustness -------------------------------------------------------------------------------

_ASCII_WORD = re.compile(r"[A-Za-z]+")
_LETTER_RUN = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
_PUNCTUATION = set(string.punctuation)


def _with_case(letter: str, like: str) -> str:
    return letter.upper() if like.isupper() else letter.lower()


def _typo(word: str, rng: random.Random) -> str:
    swappable = [i for i in range(len(word) - 1) if word[i].lower() != word[i + 1].lower()]
    if swappable and rng.random() < 0.5:
        i = rng.choice(swappable)
        return (
            word[:i] + _with_case(word[i + 1], word[i]) + _with_case(word[i], word[i + 1])
        ) + word[i + 2 :]
    i = rng.randrange(len(word))
    neighbour = rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()])
    return word[:i] + _with_case(neighbour, word[i]) + word[i + 1 :]


def _typos(text: str, rng: random.Random) -> str:
    def edit(match: re.Match[str]) -> str:
        word = match[0]
        if len(word) < TYPO_MIN_LENGTH or rng.random() >= TYPO_RATE:
            return word
        return _typo(word, rng)

    return _ASCII_WORD.sub(edit, text)


def _title(text: str) -> str:
    return _LETTER_RUN.sub(lambda m: m[0][:1].upper() + m[0][1:].lower(), text)


def _casing(text: str, rng: random.Random) -> str:
    candidates = []
    for cased in (text.lower(), text.upper(), _title(text)):
        if cased != text and cased not in candidates:
            candidates.append(cased)
    return rng.choice(candidates) if candidates else text


def _strip_punctuation(text: str) -> str:
    return "".join(
        ch for ch in text if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P")
    )


_CONTRACT_OR_EXPAND = _Replacer(
    [*CONTRACTIONS, *((long, short) for short, long in CONTRACTIONS)], _CONTRACTION_GUARDS
)

# --- fairness ---------------------------------------------------------------------------------

_TO_BRITISH = _Replacer([*DIALECT_PAIRS, *_CHEQUE_CONTEXTS], _DIALECT_GUARDS)
_TO_AMERICAN = _Replacer(
    [
        *((british, american) for american, british in DIALECT_PAIRS),
        ("cheque", "check"),
        ("cheques", "checks"),
    ],
    _DIALECT_GUARDS,
)
_DIALECTS: dict[str, tuple[Callable[[str], str], str, str]] = {
    "british": (_TO_BRITISH, "$", "\u00a3"),
    "american": (_TO_AMERICAN, "\u00a3", "$"),
}

_NAME_OF = {
    name.lower(): (name, group, gender)
    for group, genders in NAME_GROUPS.items()
    for gender, names in genders.items()
    for name in names
}
_NAME_PATTERN = re.compile(
    r"(?<!\w)(?:"
    + "|".join(re.escape(name) for name in sorted(_NAME_OF, key=len, reverse=True))
    + r")(?!\w)",
    re.IGNORECASE,
)


def _dialect(text: str, group: str) -> str:
    replace, symbol, replacement = _DIALECTS[group]
    return replace(text).replace(symbol, replacement)


def _names(text: str, group: str, rng: random.Random) -> str:
    """Each distinct name from another group gets one name of the same gender from ``group``,
    the same for all its mentions; a name only counts capitalised (or all caps)."""
    found = [m[0] for m in _NAME_PATTERN.finditer(text) if m[0][:1].isupper()]
    present = {_NAME_OF[name.lower()][0] for name in found}
    used = {name for name in present if _NAME_OF[name.lower()][1] == group}
    mapping: dict[str, str] = {}
    for name in dict.fromkeys(_NAME_OF[name.lower()][0] for name in found):
        _, own_group, gender = _NAME_OF[name.lower()]
        if own_group == group:
            continue
        choices = [n for n in NAME_GROUPS[group][gender] if n not in used]
        pick = rng.choice(choices or NAME_GROUPS[group][gender])
        used.add(pick)
        mapping[name] = pick

    def swap(match: re.Match[str]) -> str:
        found_name = match[0]
        canonical = _NAME_OF[found_name.lower()][0]
        if not found_name[:1].isupper() or canonical not in mapping:
            return found_name
        return _match_case(found_name, canonical, mapping[canonical])

    return _NAME_PATTERN.sub(swap, text) if mapping else text


# --- public API -------------------------------------------------------------------------------


def perturb(text: str, kind: str, seed: int | str) -> str:
    """``text`` perturbed by ``kind`` (one of ``KINDS``); the same arguments give the same text
    in any process. Fairness kinds are written ``family:group``, e.g. ``dialect:british``."""
    rng = _rng(seed, kind, text)
    if kind == "typos":
        return _typos(text, rng)
    if kind == "casing":
        return _casing(text, rng)
    if kind == "punctuation":
        return _strip_punctuation(text)
    if kind == "contractions":
        return _CONTRACT_OR_EXPAND(text)
    family, _, group = kind.partition(":")
    if family == "dialect" and group in FAIRNESS["dialect"]:
        return _dialect(text, group)
    if family == "names" and group in FAIRNESS["names"]:
        return _names(text, group, rng)
    raise ValueError(UNKNOWN_KIND_MSG.format(kind=kind, kinds=", ".join(KINDS)))


def variant(text: str, family_kind: str, group: str, seed: int | str) -> str:
    """``text`` as written by ``group`` of the fairness family ``family_kind`` (a ``FAIRNESS``
    key): the same as ``perturb(text, f"{family_kind}:{group}", seed)``."""
    if family_kind not in FAIRNESS:
        raise ValueError(f"unknown fairness family {family_kind!r}; choose one of {list(FAIRNESS)}")
    if group not in FAIRNESS[family_kind]:
        raise ValueError(
            f"unknown {family_kind} group {group!r}; choose one of {list(FAIRNESS[family_kind])}"
        )
    return perturb(text, f"{family_kind}:{group}", seed)


def changed_fraction(texts: Sequence[str], kind: str, seed: int | str) -> float:
    """Fraction of ``texts`` that ``perturb(text, kind, seed)`` changes (0.0 for no texts)."""
    if kind not in KINDS:
        raise ValueError(UNKNOWN_KIND_MSG.format(kind=kind, kinds=", ".join(KINDS)))
    if not texts:
        return 0.0
    return sum(perturb(text, kind, seed) != text for text in texts) / len(texts)
