"""Data validation with Great Expectations, before any job starts.

The suites are generated from the config's ``data.checks``: schema, completeness, labels (within
the declared set, examples per label, imbalance), length (characters and each candidate
tokenizer's tokens against its ``max_length``), exact and normalised duplicates, the same text
with two labels, train/evaluation leakage (exact and normalised), encoding (invalid UTF-8,
control characters, chat roles), personal data, size, and label drift against the last dataset
that passed for the pipeline. Each check has a policy (fail / warn / off) and a threshold: GX
evaluates every expectation with ``mostly = 1 - threshold``; a failed expectation takes its
check's policy, and a passed one still warns above the check's ``warn_above``.

GX runs in a file context under the report folder, so that each run leaves the full validation
result (``validation.json``) and GX Data Docs (``data_docs/index.html``) beside a one-screen
``summary.txt``. The GX Airflow provider does not fail a task on a failed validation; here a
failure raises :class:`DataValidationError`, which the DAG turns into a non-retryable failure.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.data import features, pii

if TYPE_CHECKING:
    import pandas as pd

    from fmops.config import Check, DataConfig

log = logging.getLogger(__name__)
EMPTY_TEXT = r"^\s*$"
SHOWN_ROWS = 5
STATUS_ORDER = {"fail": 0, "warn": 1, "pass": 2}


class DataValidationError(ValueError):
    """The data failed validation: a deterministic failure that a retry cannot fix."""

    def __init__(self, message: str, report: ValidationReport):
        super().__init__(message)
        self.report = report


@dataclass
class Expectation:
    """One GX expectation and the fmops check it belongs to."""

    check: str
    dataset: str
    gx: Any
    policy: str
    threshold: float
    warn_above: float | None = None
    per_row: bool = True  # a share of rows (else a statistic or a table property)
    note: str = ""


@dataclass
class Outcome:
    check: str
    dataset: str
    expectation: str
    column: str | None
    status: str
    observed: str
    threshold: str
    rows: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = f"({self.column})" if self.column else ""
        return (
            f"{self.status.upper():4} {self.dataset}/{self.check}: {self.expectation}{where}: "
            f"{self.observed}; threshold {self.threshold}"
        )


@dataclass
class ValidationReport:
    success: bool
    outcomes: list[Outcome]
    rows: dict[str, int]
    digests: dict[str, str]
    folder: Path | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "fail"]

    @property
    def warnings(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "warn"]

    def summary(self) -> str:
        verdict = "PASSED" if self.success else "FAILED"
        sizes = ", ".join(f"{k} {v:,} rows" for k, v in self.rows.items())
        head = (
            f"data validation {verdict}: {len(self.failures)} failed, {len(self.warnings)} "
            f"warned, {len(self.outcomes)} expectations ({sizes}; {self.seconds:.1f} s)"
        )
        lines = [head]
        for outcome in sorted(self.outcomes, key=lambda o: STATUS_ORDER[o.status]):
            if outcome.status == "pass":
                continue
            lines.append("  " + outcome.line())
            lines += [f"       {row}" for row in outcome.rows]
        lines += [f"  note: {n}" for n in self.notes]
        if not self.success:
            lines.append(
                "No job was started. Fix the data (or data.checks in the config), then "
                "trigger again."
            )
        if self.folder:
            lines.append(
                f"Report: {self.folder / 'summary.txt'}, GX Data Docs: "
                f"{self.folder / 'data_docs' / 'index.html'}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "rows": self.rows,
            "digests": self.digests,
            "failed": len(self.failures),
            "warned": len(self.warnings),
            "expectations": len(self.outcomes),
            "notes": self.notes,
            "folder": str(self.folder) if self.folder else None,
            "problems": [o.line() for o in self.failures + self.warnings],
        }


# -- building the suites --------------------------------------------------------------------


def _required_columns(data: DataConfig, frame: pd.DataFrame) -> list[str]:
    if data.task == "classification":
        return [data.text_column, data.label_column]
    if data.messages_column in frame.columns:
        return [data.messages_column]
    return [data.prompt_column, data.completion_column]


def _row_check(
    name: str, dataset: str, check: Check, gx_expectation: Any, note: str = ""
) -> Expectation:
    return Expectation(
        name, dataset, gx_expectation, check.policy, check.threshold, check.warn_above, True, note
    )


def _flag_check(
    name: str, dataset: str, check: Check, column: str, note: str = "", expected: bool = False
) -> Expectation:
    """A derived boolean column that must hold ``expected`` on (all but threshold of) the rows."""
    import great_expectations.expectations as gxe

    return _row_check(
        name,
        dataset,
        check,
        gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[expected], mostly=_mostly(check)),
        note,
    )


def _mostly(check: Check) -> float:
    return max(0.0, 1.0 - check.threshold)


def plan_expectations(
    data: DataConfig,
    dataset: str,
    frame: pd.DataFrame,
    token_limits: dict[str, int],
    labels: list[str],
) -> list[Expectation]:
    """The expectations for one dataset (``train`` or ``evaluation``), from the config."""
    import great_expectations.expectations as gxe

    checks = data.checks
    plan: list[Expectation] = []
    required = _required_columns(data, frame)
    if checks.schema_.policy != "off":
        for column in required:
            plan.append(
                Expectation(
                    "schema",
                    dataset,
                    gxe.ExpectColumnToExist(column=column),
                    checks.schema_.policy,
                    0.0,
                    per_row=False,
                )
            )
        if not checks.schema_.allow_extra_columns:
            plan.append(
                Expectation(
                    "schema",
                    dataset,
                    gxe.ExpectTableColumnsToMatchSet(column_set=required, exact_match=True),
                    checks.schema_.policy,
                    0.0,
                    per_row=False,
                )
            )
        for column in required:
            if column in frame.columns and column != data.messages_column:
                plan.append(
                    Expectation(
                        "schema",
                        dataset,
                        gxe.ExpectColumnValuesToBeOfType(column=column, type_="str"),
                        checks.schema_.policy,
                        0.0,
                    )
                )
    missing = [c for c in required if c not in frame.columns]
    if missing:
        return plan  # nothing else can be checked without the required columns
    if checks.completeness.policy != "off":
        for column in required:
            plan.append(
                _row_check(
                    "completeness",
                    dataset,
                    checks.completeness,
                    gxe.ExpectColumnValuesToNotBeNull(
                        column=column, mostly=_mostly(checks.completeness)
                    ),
                )
            )
            if column != data.messages_column:
                plan.append(
                    _row_check(
                        "completeness",
                        dataset,
                        checks.completeness,
                        gxe.ExpectColumnValuesToNotMatchRegex(
                            column=column, regex=EMPTY_TEXT, mostly=_mostly(checks.completeness)
                        ),
                    )
                )
        if "_empty_turns" in frame.columns:
            plan.append(
                _row_check(
                    "completeness",
                    dataset,
                    checks.completeness,
                    gxe.ExpectColumnValuesToBeBetween(
                        column="_empty_turns", max_value=0, mostly=_mostly(checks.completeness)
                    ),
                    "chat turns with empty content",
                )
            )
    if data.task == "classification" and checks.labels.policy != "off":
        plan.append(
            _row_check(
                "labels",
                dataset,
                checks.labels,
                gxe.ExpectColumnValuesToBeInSet(
                    column=data.label_column, value_set=labels, mostly=_mostly(checks.labels)
                ),
            )
        )
    if checks.length.policy != "off":
        plan.append(
            _row_check(
                "length",
                dataset,
                checks.length,
                gxe.ExpectColumnValuesToBeBetween(
                    column="_chars",
                    min_value=checks.length.min_chars,
                    max_value=checks.length.max_chars,
                    mostly=_mostly(checks.length),
                ),
                "characters per record",
            )
        )
        for model, limit in token_limits.items():
            plan.append(
                _row_check(
                    "length",
                    dataset,
                    checks.length,
                    gxe.ExpectColumnValuesToBeBetween(
                        column=f"_tokens__{model}", max_value=limit, mostly=_mostly(checks.length)
                    ),
                    f"{model} tokens (max_length {limit}: longer is truncated)",
                )
            )
    if checks.encoding.policy != "off":
        for column, note in (
            ("_invalid_utf8", "bytes that are not UTF-8"),
            ("_control", "control characters"),
        ):
            plan.append(_flag_check("encoding", dataset, checks.encoding, column, note))
        if "_roles_valid" in frame.columns:
            plan.append(
                _flag_check(
                    "encoding",
                    dataset,
                    checks.encoding,
                    "_roles_valid",
                    "chat roles: optional system, then user/assistant alternating, ending with the "
                    "assistant",
                    expected=True,
                )
            )
    if checks.pii.policy in ("fail", "warn", "redact"):
        policy = "fail" if checks.pii.policy == "redact" else checks.pii.policy
        for kind in pii.KINDS:
            plan.append(
                Expectation(
                    "pii",
                    dataset,
                    gxe.ExpectColumnValuesToBeInSet(column=f"_pii_{kind}", value_set=[False]),
                    policy,
                    0.0,
                    note=kind,
                )
            )
    if checks.size.policy != "off":
        low = checks.size.min_rows if dataset == "train" else 1
        plan.append(
            Expectation(
                "size",
                dataset,
                gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=checks.size.max_rows),
                checks.size.policy,
                0.0,
                per_row=False,
            )
        )
    flags = (
        (
            ("exact_duplicates", "_dup_exact", ""),
            ("normalized_duplicates", "_dup_normalized", ""),
            ("conflicting_labels", "_label_conflict", ""),
        )
        if dataset == "train"
        else (
            ("exact_leakage", "_leak_exact", "evaluation rows also in the training set"),
            ("normalized_leakage", "_leak_normalized", "evaluation rows also in the training set"),
        )
    )
    for name, column, note in flags:
        check = getattr(checks, name)
        if check.policy != "off" and column in frame.columns:
            plan.append(_flag_check(name, dataset, check, column, note))
    return plan


def plan_label_stats(
    data: DataConfig, stats: pd.DataFrame
) -> tuple[list[Expectation], list[Expectation]]:
    """Expectations on the per-label counts table and on the one-row label statistics table."""
    import great_expectations.expectations as gxe

    checks = data.checks
    per_label, table = [], []
    if checks.labels.policy != "off":
        per_label.append(
            Expectation(
                "labels",
                "train_label_counts",
                gxe.ExpectColumnValuesToBeBetween(
                    column="examples", min_value=checks.labels.min_examples_per_label
                ),
                checks.labels.policy,
                0.0,
                per_row=False,
                note="training examples per declared label",
            )
        )
        table.append(
            Expectation(
                "labels",
                "train_label_stats",
                gxe.ExpectColumnValuesToBeBetween(
                    column="imbalance_ratio", max_value=checks.labels.max_imbalance_ratio
                ),
                checks.labels.policy,
                checks.labels.max_imbalance_ratio,
                per_row=False,
                note="largest / smallest label count",
            )
        )
    if checks.drift.policy != "off" and "label_psi" in stats.columns:
        table.append(
            Expectation(
                "drift",
                "train_label_stats",
                gxe.ExpectColumnValuesToBeBetween(
                    column="label_psi", max_value=checks.drift.threshold
                ),
                checks.drift.policy,
                checks.drift.threshold,
                per_row=False,
                note="PSI of the label distribution against the last dataset that passed",
            )
        )
    return per_label, table


# -- running them ---------------------------------------------------------------------------


def _run_suite(
    context: Any, dataset: str, frame: pd.DataFrame, plan: list[Expectation]
) -> tuple[list[Any], dict[str, Any]]:
    """Validate ``frame`` with the planned expectations in a checkpoint that updates Data Docs."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    suite = context.suites.add(gx.ExpectationSuite(name=dataset))
    for index, item in enumerate(plan):
        item.gx.meta = {"fmops_check": item.check, "fmops_index": index}
        suite.add_expectation(item.gx)
    source = context.data_sources.add_pandas(name=f"fmops-{dataset}")
    batch = source.add_dataframe_asset(name=dataset).add_batch_definition_whole_dataframe("all")
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=dataset, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=f"fmops-{dataset}",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": SHOWN_ROWS},
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": _flat(frame)})
    validation = next(iter(result.run_results.values()))
    return list(validation.results), validation.to_json_dict()


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame as GX can take it: nested values (chat messages) as their JSON text, and
    undecodable bytes (kept as surrogates, already flagged in ``_invalid_utf8``) as U+FFFD,
    since GX hashes the frame's text as UTF-8."""
    nested = [
        c for c in frame.columns if frame[c].dtype == object and frame[c].map(_is_nested).any()
    ]
    broken = frame.index[frame["_invalid_utf8"]] if "_invalid_utf8" in frame.columns else []
    if not nested and not len(broken):
        return frame
    flat = frame.copy()
    for column in nested:
        flat[column] = flat[column].map(lambda v: None if v is None else _canonical(v))
    for column in flat.columns:
        if flat[column].dtype == object:
            flat.loc[broken, column] = [_replace_surrogates(v) for v in flat.loc[broken, column]]
    return flat


def _replace_surrogates(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _is_nested(value: Any) -> bool:
    return isinstance(value, list | dict) or hasattr(value, "tolist")


def _shown(frame: pd.DataFrame, indices: list[Any], text_column: str) -> list[str]:
    rows = []
    for index in indices[:SHOWN_ROWS]:
        if index not in frame.index:
            continue
        value = str(frame.at[index, text_column])
        rows.append(f"row {index}: {pii.redact(value)[:100]!r}")
    return rows


def _judge(item: Expectation, result: Any, frame: pd.DataFrame) -> Outcome:
    config = result.expectation_config
    column = config.kwargs.get("column")
    details = result.result or {}
    exception = (result.exception_info or {}).get("exception_message")
    if exception:
        return Outcome(
            item.check,
            item.dataset,
            config.type,
            column,
            item.policy,
            f"could not run: {exception}",
            "-",
        )
    if item.per_row and "unexpected_count" in details:
        rate = (details.get("unexpected_percent") or 0.0) / 100
        observed = (
            f"{details['unexpected_count']:,} of {details.get('element_count', 0):,} rows "
            f"({rate:.2%})"
        )
        threshold = f"{item.threshold:.2%} of rows"
        if item.warn_above is not None:
            threshold += f" (warn above {item.warn_above:.2%})"
        rows = (
            _shown(frame, details.get("unexpected_index_list") or [], "_text")
            if ("_text" in frame.columns)
            else [f"value {v!r}" for v in details.get("partial_unexpected_list", [])[:SHOWN_ROWS]]
        )
    else:
        rate = None
        value = details.get("observed_value")
        if value is None and "partial_unexpected_list" in details:
            value = details["partial_unexpected_list"][:SHOWN_ROWS]
        observed = f"observed {value}"
        threshold = _bounds(config.kwargs)
        rows = []
        if item.dataset == "train_label_counts" and not result.success:
            short = frame[frame["examples"] < config.kwargs["min_value"]]
            observed = f"{len(short)} label(s) below {config.kwargs['min_value']} examples"
            rows = [f"{r.label}: {r.examples}" for r in short.head(SHOWN_ROWS).itertuples()]
    if not result.success:
        status = item.policy
    elif rate is not None and item.warn_above is not None and rate > item.warn_above:
        status = "warn"
    else:
        status = "pass"
    if item.note:
        observed = f"{item.note}: {observed}"
    return Outcome(
        item.check,
        item.dataset,
        config.type,
        column,
        status,
        observed,
        threshold,
        rows if status != "pass" else [],
    )


def _bounds(kwargs: dict[str, Any]) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"between {low} and {high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return "present"


def validate_frames(
    data: DataConfig,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    *,
    tokenizers: dict[str, Any] | None = None,
    token_limits: dict[str, int] | None = None,
    reference: dict[str, float] | None = None,
    folder: Path | None = None,
) -> tuple[ValidationReport, pd.DataFrame, pd.DataFrame]:
    """Validate the two tables; returns the report and the frames with derived columns.

    ``tokenizers`` maps a base model name to its tokenizer, ``token_limits`` to the smallest
    ``max_length`` of the candidates that use it. ``reference`` is the label distribution of
    the last dataset that passed (drift). ``folder`` receives the reports (a temporary folder if
    None). Raises nothing: the caller decides what a failed report means.
    """
    import tempfile

    import great_expectations as gx
    import pandas as pd

    started = time.monotonic()
    tokenizers = tokenizers or {}
    token_limits = token_limits or {}
    labels = data.label_set()
    notes: list[str] = []
    train_x = features.derive(train, data, tokenizers)
    eval_x = features.leakage(features.derive(evaluation, data, tokenizers), train_x)
    work = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="fmops-validation-"))
    if data.checks.pii.policy == "redact":
        train_x, eval_x, redacted = _redact(data, train, evaluation, train_x, eval_x, tokenizers)
        cleaned = work / "redacted"
        cleaned.mkdir(parents=True, exist_ok=True)
        for name, frame in (("train", train_x), ("evaluation", eval_x)):
            features.strip_derived(frame).to_json(
                cleaned / f"{name}.jsonl", orient="records", lines=True, force_ascii=False
            )
        notes.append(
            f"PII policy redact: {redacted} record(s) redacted; the cleaned copy ({cleaned}) "
            "was validated and is what the jobs get"
        )

    gx_root = work / "gx-project"
    shutil.rmtree(gx_root, ignore_errors=True)
    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    # No progress bars: a command's output and a task's log carry the summary, not GX's meters.
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    outcomes: list[Outcome] = []
    raw_results: dict[str, Any] = {}
    for dataset, frame in (("train", train_x), ("evaluation", eval_x)):
        plan = plan_expectations(data, dataset, frame, token_limits, labels)
        results, raw_results[dataset] = _run_suite(context, dataset, frame, plan)
        outcomes += [
            _judge(plan[r.expectation_config.meta["fmops_index"]], r, frame) for r in results
        ]

    if data.task == "classification" and data.label_column in train.columns:
        observed = train_x["_label"].value_counts()
        counts = pd.DataFrame(
            {"label": labels, "examples": [int(observed.get(x, 0)) for x in labels]}
        )
        smallest = max(int(counts["examples"].min()), 1)
        stats = {"imbalance_ratio": float(counts["examples"].max() / smallest)}
        distribution = features.label_distribution(train_x["_label"])
        if reference:
            stats["label_psi"] = round(features.psi(distribution, reference), 6)
        elif data.checks.drift.policy != "off":
            notes.append(
                "drift: no earlier dataset passed validation for this pipeline; "
                "this one becomes the reference if it passes"
            )
        stats_frame = pd.DataFrame([stats])
        per_label, table = plan_label_stats(data, stats_frame)
        for dataset, frame, plan in (
            ("train_label_counts", counts, per_label),
            ("train_label_stats", stats_frame, table),
        ):
            if plan:
                results, raw_results[dataset] = _run_suite(context, dataset, frame, plan)
                outcomes += [
                    _judge(plan[r.expectation_config.meta["fmops_index"]], r, frame)
                    for r in results
                ]

    success = not any(o.status == "fail" for o in outcomes)
    report = ValidationReport(
        success=success,
        outcomes=outcomes,
        rows={"train": len(train), "evaluation": len(evaluation)},
        digests={"train": dataset_digest(train), "evaluation": dataset_digest(evaluation)},
        folder=work,
        notes=notes,
        seconds=time.monotonic() - started,
    )
    docs = gx_root / "gx" / "uncommitted" / "data_docs" / "local_site"
    if docs.exists():
        shutil.copytree(docs, work / "data_docs", dirs_exist_ok=True)
    shutil.rmtree(gx_root, ignore_errors=True)
    (work / "validation.json").write_text(json.dumps(raw_results, indent=1, default=str))
    (work / "summary.txt").write_text(report.summary() + "\n")
    (work / "report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report, train_x, eval_x


def _redact(
    data: DataConfig,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    train_x: pd.DataFrame,
    eval_x: pd.DataFrame,
    tokenizers: dict[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    columns = (
        [data.text_column]
        if data.task == "classification"
        else [data.prompt_column, data.completion_column]
    )
    redacted = 0
    cleaned = []
    for raw, derived in ((train, train_x), (evaluation, eval_x)):
        frame = raw.copy()
        flagged = derived.index[derived["_pii"]]
        redacted += len(flagged)
        for column in columns:
            if column in frame.columns:
                frame.loc[flagged, column] = frame.loc[flagged, column].astype(str).map(pii.redact)
        cleaned.append(frame)
    train_x = features.derive(cleaned[0], data, tokenizers)
    eval_x = features.leakage(features.derive(cleaned[1], data, tokenizers), train_x)
    return train_x, eval_x, redacted


def dataset_digest(frame: pd.DataFrame) -> str:
    """sha256 over a canonical serialisation: columns sorted by name, rows in order, values as
    text (NaN as the empty marker), so the same data gives the same digest in any file format."""
    import hashlib

    digest = hashlib.sha256()
    for column in sorted(frame.columns, key=str):
        digest.update(f"\x1d{column}\x1d".encode())
        values = [_canonical(v) for v in frame[column]]  # a list: surrogates stay as they are
        digest.update("\x1e".join(values).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if value is None or (isinstance(value, float) and value != value):
        return "\x00"
    return str(value)
