"""The progress lines that the job scripts print, and how to read them: their format, once.

``include/scripts/train.py`` (standalone: it cannot import this) prints lines of ``key=value``
tokens and nothing else, numbers as ``%.6g``:

- ``event=start ... total_steps=N`` when training starts, ``event=resumed step=S epoch=E ...``
  when a job resumes from its checkpoint;
- every ``log_every_steps`` optimizer steps a step line,
  ``step=S/N epoch=E train_loss=L learning_rate=LR samples_per_sec=R eta_s=T``;
- after each epoch a validation line, ``epoch=E validation_accuracy=.. validation_loss=..``
  (``validation_loss``, ``validation_perplexity`` and ``validation_token_accuracy`` for
  generation);
- ``event=early_stop ...``, ``event=best epoch=E validation_...`` and ``event=done ...``.

``include/scripts/evaluate.py`` prints ``progress <scenario>=DONE/TOTAL`` every tenth batch of
the clean pass, then ``scenario <name>: {accuracy metrics}`` once the scenario is scored.

Three readers: SageMaker (``METRIC_DEFINITIONS``, the CreateTrainingJob regexes it matches in
the job's CloudWatch log), the registry (a candidate run's training curves, from ``steps``) and
``make demo`` (``fmops.demo.JobProgress``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

# A number as the job scripts print it; SageMaker's metric regexes capture the same.
NUMBER = r"[0-9.eE+-]+"
# SageMaker metric name -> the key of train.py's lines that carries its value.
METRIC_KEYS = {
    "train:loss": "train_loss",
    "train:learning_rate": "learning_rate",
    "train:samples_per_sec": "samples_per_sec",
    "validation:accuracy": "validation_accuracy",
    "validation:loss": "validation_loss",
    "validation:perplexity": "validation_perplexity",
}
# CreateTrainingJob's AlgorithmSpecification.MetricDefinitions. The golden requests
# (tests/golden/*.json) pin these strings: changing one changes every training request.
METRIC_DEFINITIONS = [
    {"Name": name, "Regex": f"{key}=({NUMBER})"} for name, key in METRIC_KEYS.items()
]
EVALUATION_PROGRESS = re.compile(r"^progress (\S+)=(\d+)/(\d+)\s*$")
EVALUATION_SCORED = re.compile(r"^scenario (\S+): (\{.*\})\s*$")


class Step(NamedTuple):
    """A step line of train.py; a value it lacks, or that is not a number, is None."""

    step: int
    total_steps: int
    epoch: int | None
    train_loss: float | None
    learning_rate: float | None
    samples_per_sec: float | None
    eta_s: float | None


def parse_line(line: str) -> dict[str, str] | None:
    """A train.py line as its ``key=value`` tokens; None for any other line (a warning, a
    traceback, evaluate.py's lines)."""
    tokens = line.split()
    if not tokens or not all("=" in t and not t.startswith("=") for t in tokens):
        return None
    return dict(t.split("=", 1) for t in tokens)


def to_number(text: str | None) -> float | None:
    """A value of a line as a float; None when it is absent or not a number (``NUMBER``)."""
    if text is None or not re.fullmatch(NUMBER, text):
        return None
    try:
        return float(text)
    except ValueError:  # "e", "-", "1-2": the characters of a number, not one
        return None


def step_of(values: dict[str, str]) -> Step | None:
    """The step line that ``values`` (a line from ``parse_line``) is; None for the other lines."""
    done, _, total = values.get("step", "").partition("/")
    if not (done.isdigit() and total.isdigit()):
        return None
    epoch = to_number(values.get("epoch"))
    return Step(
        step=int(done),
        total_steps=int(total),
        epoch=None if epoch is None else int(epoch),
        train_loss=to_number(values.get("train_loss")),
        learning_rate=to_number(values.get("learning_rate")),
        samples_per_sec=to_number(values.get("samples_per_sec")),
        eta_s=to_number(values.get("eta_s")),
    )


def steps(log_text: str) -> list[Step]:
    """Every step line of a job's log, in order."""
    found = []
    for line in log_text.splitlines():
        values = parse_line(line)
        step = step_of(values) if values is not None else None
        if step is not None:
            found.append(step)
    return found
