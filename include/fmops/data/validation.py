"""Data validation with Great Expectations, before any job starts.

The suite is generated from the config's ``data`` block: required columns, no null or empty
(whitespace-only) text or label, labels within the declared set, text length bounds, and a
minimum number of training examples per declared label (checked on a derived table of counts,
since GX has no per-value count expectation). GX runs in an ephemeral context on pandas
dataframes: nothing is written, nothing is fetched.

The GX Airflow provider does not fail a task on a failed validation; here the caller gets a
:class:`DataValidationError` whose message lists every failed expectation with its observed
values, and the report as a dict for the run's records.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from fmops.config import DataConfig

log = logging.getLogger(__name__)
EMPTY_TEXT = r"^\s*$"
SHOWN_VALUES = 5


class DataValidationError(ValueError):
    """The data failed validation: a deterministic failure that a retry cannot fix."""

    def __init__(self, message: str, reports: list[dict[str, Any]]):
        super().__init__(message)
        self.reports = reports


def _suite(name: str, data: DataConfig, labels: list[str]) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    text, label = data.text_column, data.label_column
    suite = gx.ExpectationSuite(name=name)
    for expectation in (
        gxe.ExpectColumnToExist(column=text),
        gxe.ExpectColumnToExist(column=label),
        gxe.ExpectColumnValuesToNotBeNull(column=text),
        gxe.ExpectColumnValuesToNotBeNull(column=label),
        gxe.ExpectColumnValuesToNotMatchRegex(column=text, regex=EMPTY_TEXT),
        gxe.ExpectColumnValuesToNotMatchRegex(column=label, regex=EMPTY_TEXT),
        gxe.ExpectColumnValuesToBeInSet(column=label, value_set=labels),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=text, min_value=data.rules.min_text_chars, max_value=data.rules.max_text_chars
        ),
    ):
        suite.add_expectation(expectation)
    return suite


def _counts_suite(name: str, minimum: int) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=name)
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="examples", min_value=minimum))
    return suite


def _observed(result: dict[str, Any]) -> str:
    if "observed_value" in result:
        return f"observed {result['observed_value']}"
    parts = []
    if "unexpected_count" in result:
        parts.append(
            f"{result['unexpected_count']} of {result.get('element_count', '?')} rows unexpected"
        )
    sample = result.get("partial_unexpected_list") or []
    if sample:
        parts.append(f"e.g. {[str(v)[:60] for v in sample[:SHOWN_VALUES]]}")
    return "; ".join(parts) or "no details"


def _report(dataset: str, rows: int, validation: Any) -> dict[str, Any]:
    checks = []
    for item in validation.results:
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "value_set")}
        exception = (item.exception_info or {}).get("exception_message")
        checks.append(
            {
                "expectation": config.type,
                "kwargs": kwargs,
                "success": bool(item.success),
                "observed": f"could not run: {exception}" if exception else _observed(item.result),
            }
        )
    return {"dataset": dataset, "rows": rows, "success": bool(validation.success), "checks": checks}


def _validate_frame(context: Any, dataset: str, frame: pd.DataFrame, suite: Any) -> dict[str, Any]:
    source = context.data_sources.add_or_update_pandas(name=f"fmops-{dataset}")
    asset = source.add_dataframe_asset(name=dataset)
    batch = asset.add_batch_definition_whole_dataframe(f"{dataset}-batch").get_batch(
        batch_parameters={"dataframe": frame}
    )
    return _report(dataset, len(frame), batch.validate(suite, result_format="SUMMARY"))


def validate_datasets(
    data: DataConfig, train: pd.DataFrame, evaluation: pd.DataFrame, labels: list[str]
) -> list[dict[str, Any]]:
    """Validate the training and evaluation tables; raise DataValidationError if any check fails."""
    import great_expectations as gx
    import pandas as pd

    context = gx.get_context(mode="ephemeral")
    reports = [
        _validate_frame(context, "train", train, _suite("train", data, labels)),
        _validate_frame(context, "evaluation", evaluation, _suite("evaluation", data, labels)),
    ]
    if data.label_column in train.columns:
        observed = train[data.label_column].value_counts()
        counts = pd.DataFrame(
            {"label": labels, "examples": [int(observed.get(x, 0)) for x in labels]}
        )
        report = _validate_frame(
            context,
            "train_label_counts",
            counts,
            _counts_suite("counts", data.rules.min_examples_per_label),
        )
        short = counts[counts.examples < data.rules.min_examples_per_label]
        if not short.empty:
            report["checks"][0]["observed"] = (
                f"{len(short)} label(s) below {data.rules.min_examples_per_label} examples: "
                + ", ".join(f"{r.label}={r.examples}" for r in short.head(10).itertuples())
            )
        reports.append(report)
    failed = [
        f"{r['dataset']}: {c['expectation']}({_kwargs_text(c['kwargs'])}): {c['observed']}"
        for r in reports
        for c in r["checks"]
        if not c["success"]
    ]
    for report in reports:
        passed = sum(c["success"] for c in report["checks"])
        log.info(
            "validation of %s (%s rows): %s/%s expectations passed",
            report["dataset"],
            report["rows"],
            passed,
            len(report["checks"]),
        )
    if failed:
        message = (
            f"data validation failed: {len(failed)} expectation(s) not met; no job was started.\n"
            + "\n".join(f"  - {line}" for line in failed)
            + "\nFix the dataset (or the data.rules / data.labels in the config) and trigger again."
        )
        raise DataValidationError(message, reports)
    return reports


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
