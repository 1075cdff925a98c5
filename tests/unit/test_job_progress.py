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


def test_metric_points_carry_the_step_and_the_time_the_job_printed():
    from fmops.jobs.progress import MetricPoint, metric_points

    log_text = "\n".join(
        [
            "event=start train_examples=8 total_steps=4 time=1700000000.000",
            "step=1/4 epoch=1 train_loss=2.5 learning_rate=0.001 samples_per_sec=9 "
            "time=1700000001.250",
            "a warning from a library",
            "step=2/4 epoch=1 train_loss=1.5 learning_rate=0.0009 time=1700000002.500",
            "epoch=1 validation_loss=1.25 validation_accuracy=0.5 time=1700000003.000",
            "step=3/4 epoch=2 train_loss=1e-2 learning_rate=nan",
            "event=done train_seconds=4 time=1700000004.000",
        ]
    )
    points, last = metric_points(log_text, fallback_ms=42)
    assert last == 3
    assert points == [
        MetricPoint("train_loss", 2.5, 1_700_000_001_250, 1),
        MetricPoint("learning_rate", 0.001, 1_700_000_001_250, 1),
        MetricPoint("samples_per_sec", 9.0, 1_700_000_001_250, 1),
        MetricPoint("train_loss", 1.5, 1_700_000_002_500, 2),
        MetricPoint("learning_rate", 0.0009, 1_700_000_002_500, 2),
        # a validation line is recorded at the step it followed
        MetricPoint("validation_accuracy", 0.5, 1_700_000_003_000, 2),
        MetricPoint("validation_loss", 1.25, 1_700_000_003_000, 2),
        # no time=: the fallback; "nan" is not a number this reader records
        MetricPoint("train_loss", 0.01, 42, 3),
    ]
    # a live reader leaves the lines without time= to the closing pass
    live, _ = metric_points(log_text, fallback_ms=None)
    assert len(live) == 7 and all(p.timestamp_ms != 42 for p in live)
    # a later chunk of the log continues from the last step of the earlier one
    later, _ = metric_points("epoch=2 validation_loss=1.0 time=1700000009.000", None, last)
    assert later == [MetricPoint("validation_loss", 1.0, 1_700_000_009_000, 3)]
