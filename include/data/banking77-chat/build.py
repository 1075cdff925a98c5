"""Build the generative BANKING77 task that ``make demo-llm`` instruction-tunes: run from the
project root as ``python include/data/banking77-chat/build.py``; it rewrites ``train.jsonl`` and
``test.jsonl`` beside it, the same bytes every time (seeded).

Each record is a chat ``{"messages": [system, user, assistant]}``: a one-line system instruction,
a BANKING77 customer message as the user's turn, and the assistant's answer naming the message's
intent in plain words (``card_arrival`` -> ``card arrival``). The instruction is short on
purpose: every token of it is computed in every training step on 2 CPU cores.
Standard library only.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "banking77"
SEED = 77
TRAIN_PER_INTENT = 4
TEST_PER_INTENT = 2
SYSTEM = "Name the topic of the bank customer's message in a few words."


def intent_words(category: str) -> str:
    return category.replace("_", " ").lower()


def records(path: Path, per_intent: int, rng: random.Random) -> list[dict[str, list]]:
    by_intent: dict[str, list[str]] = defaultdict(list)
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_intent[row["category"]].append(row["text"].strip())
    chosen = []
    for category in sorted(by_intent):
        for text in rng.sample(sorted(set(by_intent[category])), per_intent):
            chosen.append(
                {
                    "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": text},
                        {"role": "assistant", "content": intent_words(category)},
                    ]
                }
            )
    rng.shuffle(chosen)
    return chosen


def write(path: Path, rows: list[dict[str, list]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(SEED)
    write(HERE / "train.jsonl", records(SOURCE / "train.csv", TRAIN_PER_INTENT, rng))
    write(HERE / "test.jsonl", records(SOURCE / "test.csv", TEST_PER_INTENT, rng))


if __name__ == "__main__":
    main()
