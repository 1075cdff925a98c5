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

Every line ends with ``time=<unix seconds>``, when its values were measured: MLflow records a
point at that time (``metric_points``), so a point has the same timestamp whenever and however
often the log is read, and MLflow's store keeps it once.

``include/scripts/evaluate.py`` prints ``progress <scenario>=DONE/TOTAL`` every tenth batch of
the clean pass, then ``scenario <name>: {accuracy metrics}`` once the scenario is scored; the
optimize step's passes over the same examples (``optimize.py``) print
``progress <scenario>@<runtime>=DONE/TOTAL``.

Three readers: SageMaker (``METRIC_DEFINITIONS``, the CreateTrainingJob regexes it matches in
the job's CloudWatch log), MLflow (a job run's metrics while it runs, ``metric_points``, and a
candidate run's training curves, from ``steps``) and ``make demo`` (``fmops.demo.JobProgress``).
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


# The values of train.py's lines that a job run records in MLflow, under these names.
LIVE_METRICS = (
    "train_loss",
    "learning_rate",
    "samples_per_sec",
    "validation_accuracy",
    "validation_loss",
    "validation_perplexity",
    "validation_token_accuracy",
)


class MetricPoint(NamedTuple):
    """One point of a job's metric history: MLflow's (key, value, timestamp in ms, step)."""

    key: str
    value: float
    timestamp_ms: int
    step: int


def metric_points(
    log_text: str, fallback_ms: int | None, first_step: int = 0
) -> tuple[list[MetricPoint], int]:
    """The points of train.py's step and validation lines in ``log_text``, and the last step
    seen. A validation line is recorded at the optimizer step it followed (``first_step`` before
    the first step line of this text); a line without ``time=`` (an older job's) at
    ``fallback_ms``, or not at all when that is None (a live reader leaves them to the closing
    pass, which gives them one fixed time, so that a point is never recorded at two)."""
    points: list[MetricPoint] = []
    last = first_step
    for line in log_text.splitlines():
        values = parse_line(line)
        if values is None or values.get("event") is not None:
            continue
        seconds = to_number(values.get("time"))
        stamp = fallback_ms if seconds is None else int(seconds * 1000)
        step = step_of(values)
        if step is not None:
            last = step.step
        elif "epoch" not in values:
            continue
        if stamp is None:
            continue
        for key in LIVE_METRICS:
            value = to_number(values.get(key))
            if value is not None:
                points.append(MetricPoint(key, value, stamp, last))
    return points, last
