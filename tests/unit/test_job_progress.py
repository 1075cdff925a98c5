"""train.py's progress lines read the same way by all three readers: SageMaker's metric regexes,
the registry's training curves and ``make demo``."""

from __future__ import annotations

import re

from fmops.jobs.progress import METRIC_DEFINITIONS, METRIC_KEYS, Step, parse_line, step_of, steps

# As train.py's log() prints them (numbers as %.6g).
LOG = """\
event=start task=classification total_steps=88 world_size=1
step=10/88 epoch=1 train_loss=3.91234 learning_rate=4.5e-05 samples_per_sec=61.2 eta_s=42
Some warning from a library: not a progress line
step=20/88 epoch=1 train_loss=nan learning_rate=4e-05 samples_per_sec=60.9 eta_s=37
epoch=1 validation_accuracy=0.4125 validation_loss=2.87
event=best epoch=1 validation_accuracy=0.4125 validation_loss=2.87
"""


def test_step_lines_are_parsed_with_their_values():
    found = steps(LOG)
    assert found[0] == Step(10, 88, 1, 3.91234, 4.5e-05, 61.2, 42.0)
    assert [s.step for s in found] == [10, 20]
    assert found[1].train_loss is None, "nan is not a number SageMaker's regexes capture"


def test_only_key_value_lines_are_train_lines():
    assert parse_line("Some warning: x=1") is None
    assert parse_line("") is None
    values = parse_line("epoch=1 validation_accuracy=0.4125 validation_loss=2.87")
    assert values == {"epoch": "1", "validation_accuracy": "0.4125", "validation_loss": "2.87"}
    assert step_of(values) is None


def test_sagemaker_regexes_read_the_values_the_parser_reads():
    assert [d["Name"] for d in METRIC_DEFINITIONS] == list(METRIC_KEYS)
    first = LOG.splitlines()[1]
    values = parse_line(first)
    for definition in METRIC_DEFINITIONS:
        key = METRIC_KEYS[definition["Name"]]
        match = re.search(definition["Regex"], first)
        assert (match[1] if match else None) == values.get(key), definition
