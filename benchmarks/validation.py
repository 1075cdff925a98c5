"""Benchmark: data validation throughput and peak memory, fmops (Great Expectations) against a
plain-pandas implementation of the same checks.

    .venv/bin/python benchmarks/validation.py            # BANKING77 and a 1,000,000-row set
    .venv/bin/python benchmarks/validation.py --quick    # BANKING77 only (smoke check)

Datasets (the evaluation set is always BANKING77 test.csv, 3,080 rows):

* ``banking77``: BANKING77 train.csv (10,003 rows) as shipped.
* ``1m``: 1,000,000 training rows resampled from train.csv with replacement (seed 13). Plain
  resampling would make ~99% of the rows exact duplicates and leave only ~10k distinct texts,
  which both fails the duplicate checks for a reason that is not in the data and makes every
  hash-based check (duplicates, conflicts, leakage) unrealistically cheap. So 98% of the
  resampled rows get a unique suffix `` #<5 letters>`` (letters, not digits, so that the PII
  prefilters see the same share of digit-bearing rows as BANKING77), and 2% stay verbatim
  copies: ~1.1% exact duplicates, BANKING77's train/test normalised overlaps kept (the
  normalised-leakage warning), no conflicting labels (none in BANKING77). The duplicate checks
  are pinned at the DataChecks default (fail above 5%), so the 1M run passes or fails on the
  data, not on a threshold relaxed for the benchmark.

Each measured case runs in a fresh subprocess (this script with ``--case NAME --rows N``), so
that peak memory does not mix between cases. Wall time and peak RSS come from a run without
tracemalloc: the kernel's RSS high-water mark is reset (``/proc/self/clear_refs``) just before
the validation call and read after it with ``resource.getrusage`` (``ru_maxrss``), so the peak
is that of validation (interpreter, libraries, tokenizer and input frames included, as they are
resident); psutil gives the RSS just before the call. Python allocations (tracemalloc peak) come
from a second, traced run of the same case, because tracing slows allocation-heavy code about
3x; the two traced runs of a dataset run side by side (their times are not reported).
The timed region is the validation call only: reading the CSVs, building the 1M set, importing
the libraries and loading the tokenizer happen before it (a pipeline task pays them too, but
they are not validation). Both implementations get the same frames, the same tokenizer
(``fmops.pipeline.tokenizers_for``) and the same drift reference (BANKING77 train's label
distribution, as if it were the last dataset that passed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "include/configs/local.yaml"
SEED = 13
LARGE_ROWS = 1_000_000
VERBATIM_SHARE = 0.02  # resampled rows left as exact copies of a BANKING77 training text
SUFFIX_LETTERS = 5  # 26**5 = 11.9M distinct suffixes
DUPLICATE_CHECKS = {
    "exact_duplicates": {"policy": "fail", "threshold": 0.05},
    "normalized_duplicates": {"policy": "fail", "threshold": 0.05},
}
GOAL_SECONDS = 60.0
GOAL_RATIO = 2.0
MARKER = "BENCH_RESULT "
MIB = 1024 * 1024


# -- inputs ---------------------------------------------------------------------------------


def bench_config() -> Any:
    """local.yaml with the duplicate checks pinned (see the module docstring)."""
    from fmops.config import load_config

    config = load_config(CONFIG)
    checks = config.data.checks.model_copy(
        update={
            name: getattr(config.data.checks, name).model_copy(update=values)
            for name, values in DUPLICATE_CHECKS.items()
        }
    )
    data = config.data.model_copy(update={"checks": checks})
    return config.model_copy(update={"data": data})


def suffix(i: int) -> str:
    code = (i * 7919) % 26**SUFFIX_LETTERS  # 7919 is prime to 26**5: a bijection
    letters = []
    for _ in range(SUFFIX_LETTERS):
        code, digit = divmod(code, 26)
        letters.append(chr(97 + digit))
    return " #" + "".join(letters)


def load_frames(data: Any, rows: int) -> tuple[Any, Any, dict[str, float]]:
    """(train, evaluation, drift reference); ``rows`` 0 means BANKING77 train as shipped."""
    import numpy as np
    import pandas as pd

    from fmops.data.features import label_distribution
    from fmops.data.loading import load_table

    train = load_table(data.train)
    evaluation = load_table(data.evaluation)
    reference = label_distribution(train[data.label_column])
    if rows:
        rng = np.random.default_rng(SEED)
        picked = train.iloc[rng.integers(0, len(train), size=rows)].reset_index(drop=True)
        verbatim = rng.random(rows) < VERBATIM_SHARE
        texts = picked[data.text_column].tolist()
        pairs = enumerate(zip(texts, verbatim, strict=True))
        picked[data.text_column] = pd.Series(  # the dtype that load_table gives
            [t if keep else t + suffix(i) for i, (t, keep) in pairs],
            index=picked.index,
            dtype=train[data.text_column].dtype,
        )
        train = picked
    return train, evaluation, reference


# -- the plain-pandas baseline --------------------------------------------------------------

CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
SURROGATE = r"[\udc80-\udcff]"


def _status(check: Any, bad: int, total: int) -> tuple[str, float]:
    """fmops' rule: fail (the policy) above ``threshold``, warn above ``warn_above``."""
    rate = bad / total if total else 0.0
    if rate > check.threshold:
        return check.policy, rate
    if check.warn_above is not None and rate > check.warn_above:
        return "warn", rate
    return "pass", rate


def _as_text(column: Any) -> Any:
    """Object dtype like fmops: pandas' string dtype cannot hold the surrogates that mark bytes
    which were not UTF-8 (and ``astype(str)`` would switch to it in pandas 3)."""
    import pandas as pd

    values = column.astype(object).where(column.notna(), "")
    if pd.api.types.infer_dtype(values, skipna=False) in ("string", "empty"):
        return values
    return values.map(lambda v: v if isinstance(v, str) else str(v))


def validate_plain(
    data: Any,
    train: Any,
    evaluation: Any,
    tokenizers: dict[str, Any],
    token_limits: dict[str, int],
    reference: dict[str, float],
) -> dict[str, Any]:
    """The same checks as fmops.data.validation for a classification set, in plain pandas."""
    import math

    import pandas as pd

    from fmops.data import pii

    checks = data.checks
    labels = data.label_set()
    results: list[tuple[str, str, str, str]] = []  # dataset, check, status, observed
    counts: dict[str, int] = {}

    def add(dataset: str, name: str, status: str, observed: str) -> None:
        if status != "off":
            results.append((dataset, name, status, observed))

    def per_row(dataset: str, name: str, check: Any, bad: int, total: int, what: str) -> None:
        if check.policy == "off":
            return
        status, rate = _status(check, bad, total)
        add(dataset, name, status, f"{what}: {bad:,} of {total:,} ({rate:.2%})")

    derived: dict[str, dict[str, Any]] = {}
    for dataset, frame in (("train", train), ("evaluation", evaluation)):
        total = len(frame)
        required = [data.text_column, data.label_column]
        missing = [c for c in required if c not in frame.columns]
        if checks.schema_.policy != "off":
            add(
                dataset,
                "schema",
                checks.schema_.policy if missing else "pass",
                f"missing {missing}",
            )
            for column in set(required) - set(missing):
                kind = pd.api.types.infer_dtype(frame[column], skipna=True)
                add(
                    dataset,
                    "schema",
                    "pass" if kind in ("string", "empty") else checks.schema_.policy,
                    f"{column}: {kind}",
                )
        if missing:
            continue
        text, label = _as_text(frame[data.text_column]), _as_text(frame[data.label_column])
        for column in required:
            nulls = int(frame[column].isna().sum())
            per_row(dataset, "completeness", checks.completeness, nulls, total, f"{column} null")
            empty = int(_as_text(frame[column].dropna()).str.strip().eq("").sum())
            per_row(dataset, "completeness", checks.completeness, empty, total, f"{column} empty")
        if checks.labels.policy != "off":
            per_row(
                dataset,
                "labels",
                checks.labels,
                int((~label.isin(labels)).sum()),
                total,
                "label not declared",
            )
        if checks.length.policy != "off":
            chars = text.str.len()
            bad = int((~chars.between(checks.length.min_chars, checks.length.max_chars)).sum())
            per_row(dataset, "length", checks.length, bad, total, "characters out of bounds")
            for name, tokenizer in tokenizers.items():
                # The same (fastest) counter as fmops: the comparison is about the checks, not
                # about two ways of calling a tokenizer.
                from fmops.data.features import token_counts

                lengths = token_counts(tokenizer, text)
                over = sum(n > token_limits[name] for n in lengths)
                longest = max(lengths, default=0)
                per_row(
                    dataset,
                    "length",
                    checks.length,
                    over,
                    total,
                    f"{name} tokens > {token_limits[name]} (longest {longest})",
                )
        if checks.encoding.policy != "off":
            per_row(
                dataset,
                "encoding",
                checks.encoding,
                int(text.str.contains(SURROGATE, regex=True).sum()),
                total,
                "invalid UTF-8",
            )
            per_row(
                dataset,
                "encoding",
                checks.encoding,
                int(text.str.contains(CONTROL, regex=True).sum()),
                total,
                "control chars",
            )
        if checks.pii.policy != "off":
            flags = pii.detect(text)
            policy = "fail" if checks.pii.policy == "redact" else checks.pii.policy
            for column in flags.columns:
                bad = int(flags[column].sum())
                add(dataset, "pii", policy if bad else "pass", f"{column}: {bad}")
            counts[f"{dataset}_pii_rows"] = int(flags.any(axis=1).sum())
        if checks.size.policy != "off":
            low = checks.size.min_rows if dataset == "train" else 1
            add(
                dataset,
                "size",
                "pass" if low <= total <= checks.size.max_rows else checks.size.policy,
                f"{total:,} rows",
            )
        normalized = (
            text.str.lower()
            .str.replace(r"[^\w\s]", "", regex=True)
            .str.replace(r"\s+", " ", regex=True)
            .str.strip()
        )
        derived[dataset] = {"text": text, "normalized": normalized, "label": label}

    if "train" in derived:
        text, normalized, label = (derived["train"][k] for k in ("text", "normalized", "label"))
        total = len(text)
        exact = int(text.duplicated().sum())
        norm = int(normalized.duplicated().sum())
        per_labels = pd.DataFrame({"n": normalized, "label": label}).groupby("n")["label"].nunique()
        conflicting = int(normalized.isin(per_labels.index[per_labels > 1]).sum())
        counts.update(
            train_dup_exact=exact, train_dup_normalized=norm, train_label_conflict=conflicting
        )
        per_row("train", "exact_duplicates", checks.exact_duplicates, exact, total, "duplicates")
        per_row(
            "train",
            "normalized_duplicates",
            checks.normalized_duplicates,
            norm,
            total,
            "normalised duplicates",
        )
        per_row(
            "train",
            "conflicting_labels",
            checks.conflicting_labels,
            conflicting,
            total,
            "texts with two labels",
        )
        if checks.labels.policy != "off":
            observed = label.value_counts().reindex(labels, fill_value=0)
            short = int((observed < checks.labels.min_examples_per_label).sum())
            add(
                "train",
                "labels",
                checks.labels.policy if short else "pass",
                f"{short} label(s) below {checks.labels.min_examples_per_label}",
            )
            ratio = float(observed.max() / max(int(observed.min()), 1))
            add(
                "train",
                "labels",
                "pass" if ratio <= checks.labels.max_imbalance_ratio else checks.labels.policy,
                f"imbalance {ratio:.2f}",
            )
        if checks.drift.policy != "off" and reference:
            current = label.value_counts(normalize=True)
            value = 0.0
            for name in set(current.index) | set(reference):
                actual = max(float(current.get(name, 0.0)), 1e-4)
                expected = max(reference.get(name, 0.0), 1e-4)
                value += (actual - expected) * math.log(actual / expected)
            add(
                "train",
                "drift",
                "pass" if value <= checks.drift.threshold else checks.drift.policy,
                f"label PSI {value:.6f}",
            )
        if "evaluation" in derived:
            ev = derived["evaluation"]
            total = len(ev["text"])
            leak = int(ev["text"].isin(text).sum())
            leak_norm = int(ev["normalized"].isin(normalized).sum())
            counts.update(evaluation_leak_exact=leak, evaluation_leak_normalized=leak_norm)
            per_row("evaluation", "exact_leakage", checks.exact_leakage, leak, total, "in train")
            per_row(
                "evaluation",
                "normalized_leakage",
                checks.normalized_leakage,
                leak_norm,
                total,
                "normalised, in train",
            )
    return {
        "results": results,
        "counts": counts,
        "success": not any(r[2] == "fail" for r in results),
    }


# -- one measured case (child process) ------------------------------------------------------


class Timers:
    """Wall time per instrumented function (patched in for the fmops case: cheap, 1 call each)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute, None)
        if original is None:  # renamed in fmops: that line of the breakdown is left out
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started

        setattr(owner, attribute, timed)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def _reset_hwm() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) so that it covers validation only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mib() -> float | None:
    """VmHWM (the same high-water mark as ru_maxrss after a reset, read from /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def run_case(case: str, rows: int, trace: bool, profile: int) -> dict[str, Any]:
    import tracemalloc

    from fmops.pipeline import tokenizers_for

    config = bench_config()
    data = config.data
    tokenizers, limits = tokenizers_for(config)
    train, evaluation, reference = load_frames(data, rows)
    timers = Timers()
    gx_import = None
    if case == "fmops":
        # Imported before timing (reported apart: a task process pays it once).
        started = time.perf_counter()
        import great_expectations  # noqa: F401
        import great_expectations.expectations  # noqa: F401
        from great_expectations.checkpoint import Checkpoint, UpdateDataDocsAction

        gx_import = time.perf_counter() - started

        from fmops.data import features, pii, validation

        timers.wrap(features, "derive", "derive")
        timers.wrap(features, "leakage", "derive")
        timers.wrap(features, "token_counts", "derive: token counts")
        timers.wrap(pii, "detect", "derive: PII detection")
        timers.wrap(features, "normalize", "derive: normalise")
        timers.wrap(validation, "_run_suite", "GX suites")
        timers.wrap(Checkpoint, "run", "GX suites: checkpoint.run")
        timers.wrap(UpdateDataDocsAction, "run", "GX suites: checkpoint.run: Data Docs")
        timers.wrap(validation, "_judge", "judging results")
        timers.wrap(validation, "dataset_digest", "dataset digests")
        folder = Path(tempfile.mkdtemp(prefix="fmops-bench-"))

        def call() -> Any:
            return validation.validate_frames(
                data,
                train,
                evaluation,
                tokenizers=tokenizers,
                token_limits=limits,
                reference=reference,
                folder=folder,
            )
    else:

        def call() -> Any:
            return validate_plain(data, train, evaluation, tokenizers, limits, reference)

    rss_before = _rss_mib()
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hwm_reset = _reset_hwm()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    outcome = call()
    if profiler:
        profiler.disable()
    wall = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] / MIB if trace else None
    if trace:
        tracemalloc.stop()
    result: dict[str, Any] = {
        "case": case,
        "rows_train": len(train),
        "rows_eval": len(evaluation),
        "trace": trace,
        "wall_s": wall,
        "rows_per_s": (len(train) + len(evaluation)) / wall,
        "rss_before_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hwm_reset": hwm_reset,
        "setup_peak_rss_mib": setup_peak,
        "validation_hwm_mib": _vm_hwm_mib() if hwm_reset else None,
        "gx_import_s": gx_import,
        "tracemalloc_peak_mib": traced_peak,
    }
    if case == "fmops":
        report, train_x, eval_x = outcome
        statuses = [(o.dataset, o.check, o.status) for o in report.outcomes]
        result.update(
            success=report.success,
            failed=len(report.failures),
            warned=len(report.warnings),
            problems=report.to_dict()["problems"],
            breakdown=dict(timers.seconds),
            counts={
                "train_dup_exact": int(train_x["_dup_exact"].sum()),
                "train_dup_normalized": int(train_x["_dup_normalized"].sum()),
                "train_label_conflict": int(train_x["_label_conflict"].sum()),
                "train_pii_rows": int(train_x["_pii"].sum()),
                "evaluation_pii_rows": int(eval_x["_pii"].sum()),
                "evaluation_leak_exact": int(eval_x["_leak_exact"].sum()),
                "evaluation_leak_normalized": int(eval_x["_leak_normalized"].sum()),
            },
        )
    else:
        statuses = [(d, c, s) for d, c, s, _ in outcome["results"]]
        result.update(
            success=outcome["success"],
            failed=sum(s == "fail" for *_, s in statuses),
            warned=sum(s == "warn" for *_, s in statuses),
            problems=[
                f"{s.upper()} {d}/{c}: {o}" for d, c, s, o in outcome["results"] if s != "pass"
            ],
            counts=outcome["counts"],
        )
    worst: dict[str, str] = {}
    order = {"fail": 0, "warn": 1, "pass": 2}
    for dataset, check, status in statuses:
        key = f"{dataset.split('_')[0]}/{check}"
        if key not in worst or order[status] < order[worst[key]]:
            worst[key] = status
    result["statuses"] = worst
    if case == "fmops":  # the GX reports that validate_frames wrote (not timed)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    if profiler:
        import io
        import pstats

        for sort in ("cumulative", "tottime"):
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats(sort).print_stats(profile)
            print(stream.getvalue(), file=sys.stderr)
    return result


# -- the parent: run the cases, print the table ---------------------------------------------


def start(case: str, rows: int, trace: bool) -> tuple[subprocess.Popen, Any, str]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--rows", str(rows)]
    if trace:
        command.append("--trace")
    errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115  (closed in finish)
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True)
    return process, errors, f"case {case} rows={rows} trace={trace}"


def finish(started: tuple[subprocess.Popen, Any, str]) -> dict[str, Any]:
    process, errors, what = started
    stdout, _ = process.communicate()
    errors.seek(0)
    stderr = errors.read()
    errors.close()
    lines = [x for x in stdout.splitlines() if x.startswith(MARKER)]
    if process.returncode or not lines:
        sys.stderr.write(stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {process.returncode})")
    return json.loads(lines[-1][len(MARKER) :])


def machine() -> list[str]:
    return _common.machine(
        ("pandas", "numpy", "great_expectations", "transformers", "tokenizers", "psutil")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="BANKING77 only (smoke check)")
    parser.add_argument(
        "--rows",
        type=int,
        default=LARGE_ROWS,
        help="rows of the resampled training set (default 1,000,000)",
    )
    parser.add_argument(
        "--trace-large",
        action="store_true",
        help="also run tracemalloc for the large set (adds about 5 minutes)",
    )
    parser.add_argument("--no-trace", action="store_true", help="skip all tracemalloc runs")
    parser.add_argument("--case", choices=("fmops", "pandas"), help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        help="with --case: cProfile the call, print the top N to stderr",
    )
    args = parser.parse_args()
    if args.case:  # child: one measured case
        result = run_case(args.case, args.rows, args.trace, args.profile)
        print(MARKER + json.dumps(result), flush=True)
        return

    began = time.perf_counter()
    print("fmops data validation benchmark (benchmarks/validation.py)")
    for line in machine():
        print(line)
    from fmops.config import load_config

    tokenizer = load_config(CONFIG).candidates[0]
    print(
        f"config:   {CONFIG}: data.checks as in the file (length <= 512 chars and <= "
        f"{tokenizer.hyperparameters.max_length} tokens, labels >= 10 per label and imbalance "
        f"<= 10, size >= 1000 rows, ...), duplicate checks pinned: fail above 5% (the "
        "DataChecks default)"
    )
    print(
        f"tokenizer: {tokenizer.base_model} via fmops.pipeline.tokenizers_for; drift reference: "
        "BANKING77 train's label distribution"
    )
    sizes = [("banking77", 0)] + (
        []
        if args.quick
        else [
            (
                f"{args.rows // 1000}k" if args.rows < LARGE_ROWS else f"{args.rows / 1e6:g}M",
                args.rows,
            )
        ]
    )
    print("datasets: banking77 = train.csv 10,003 + test.csv 3,080 rows")
    if not args.quick:
        print(
            f"          {sizes[1][0]} = {args.rows:,} rows resampled from train.csv with "
            f"replacement (seed {SEED}); {1 - VERBATIM_SHARE:.0%} get a unique ' #<5 letters>' "
            f"suffix, {VERBATIM_SHARE:.0%} stay verbatim copies (realistic duplicates and "
            "train/test overlap, ~1M distinct texts); + test.csv 3,080 rows as evaluation"
        )
    traced = (
        "none (--no-trace)"
        if args.no_trace
        else "all"
        if args.trace_large or args.quick
        else "banking77 only (--trace-large adds the large set: tracing slows it ~3x)"
    )
    print(
        "each case runs in a fresh subprocess; timing and RSS from a run without tracemalloc, "
        f"the tracemalloc peak from a second run;\n  traced: {traced}"
    )
    sources = sorted((ROOT / "include" / "fmops" / "data").glob("*.py"))
    newest = max(sources, key=lambda p: p.stat().st_mtime)
    stamp = dt.datetime.fromtimestamp(newest.stat().st_mtime).astimezone()
    print(
        f"fmops code: include/fmops/data/*.py last modified {stamp.isoformat(timespec='seconds')}"
        f" ({newest.name})"
    )
    print()

    measured: dict[tuple[str, str], dict[str, Any]] = {}
    for name, rows in sizes:
        for case in ("fmops", "pandas"):
            measured[(name, case)] = finish(start(case, rows, trace=False))
            print(
                f"  timed   {name:9} {case:6}: {measured[(name, case)]['wall_s']:7.2f} s",
                flush=True,
            )
        if not args.no_trace and (rows == 0 or args.trace_large):
            began_traced = time.perf_counter()
            runs = {case: start(case, rows, trace=True) for case in ("fmops", "pandas")}
            for case, run in runs.items():
                measured[(name, case)]["tracemalloc_peak_mib"] = finish(run)["tracemalloc_peak_mib"]
            print(
                f"  traced  {name:9} both  : {time.perf_counter() - began_traced:7.2f} s "
                "(side by side, for tracemalloc only)",
                flush=True,
            )
    print()

    label = {"fmops": "fmops (GX)", "pandas": "plain pandas"}
    header = (
        f"{'dataset':9} {'implementation':14} {'rows':>9} {'wall s':>8} {'rows/s':>9} "
        f"{'peak RSS':>9} {'RSS before':>10} {'delta':>7} {'tracemalloc':>11}  "
        "verdict"
    )
    print(header)
    print(
        f"{'':9} {'':14} {'':>9} {'':>8} {'':>9} {'MiB':>9} {'MiB':>10} {'MiB':>7} {'peak MiB':>11}"
    )
    print("-" * len(header))

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    for name, _ in sizes:
        for case in ("fmops", "pandas"):
            r = measured[(name, case)]
            verdict = (
                f"{'passed' if r['success'] else 'FAILED'} ({r['failed']} failed, "
                f"{r['warned']} warned)"
            )
            print(
                f"{name:9} {label[case]:14} {r['rows_train'] + r['rows_eval']:>9,} "
                f"{r['wall_s']:>8.2f} {r['rows_per_s']:>9,.0f} {mib(r['peak_rss_mib']):>9} "
                f"{mib(r['rss_before_mib']):>10} "
                f"{mib(r['peak_rss_mib'] - r['rss_before_mib']):>7} "
                f"{mib(r['tracemalloc_peak_mib']):>11}  {verdict}"
            )
        f, p = measured[(name, "fmops")], measured[(name, "pandas")]

        def ratio(key: str, f: dict = f, p: dict = p) -> str:
            a, b = f[key], p[key]
            return "-" if a is None or not b else f"{a / b:.2f}x"

        print(
            f"{name:9} {'fmops/pandas':14} {'':>9} {ratio('wall_s'):>8} {'':>9} "
            f"{ratio('peak_rss_mib'):>9} {'':>10} {'':>7} "
            f"{ratio('tracemalloc_peak_mib'):>11}"
        )
        print()
    reset = all(r["hwm_reset"] for r in measured.values())
    reset = all(r["hwm_reset"] for r in measured.values())
    print(
        "peak RSS: ru_maxrss, "
        + (
            "reset just before the validation call: the high-water mark of validation"
            if reset
            else "NOT reset (clear_refs refused): process lifetime"
        )
    )
    print(
        "  (interpreter, libraries, tokenizer and input frames included); RSS before: psutil "
        "just before the call;"
    )
    print(
        "  delta: peak - before; tracemalloc peak: Python allocations during the call (numpy "
        "buffers included,"
    )
    print("  the Rust tokenizer's not)")
    gx_import = measured[(sizes[0][0], "fmops")]["gx_import_s"]
    print(
        f"not timed: importing great_expectations ({gx_import:.1f} s here), loading the "
        "tokenizer, reading the CSVs\n  (a pipeline task pays them once per run)"
    )
    print()

    for name, _ in sizes:
        f = measured[(name, "fmops")]
        print(f"fmops time breakdown, {name} ({f['wall_s']:.2f} s):")
        seconds = f["breakdown"]
        top = [k for k in seconds if ":" not in k]
        for key in sorted(top, key=lambda k: -seconds[k]):
            print(f"  {key:40} {seconds[key]:7.2f} s {seconds[key] / f['wall_s']:6.1%}")
            for sub in sorted(
                (k for k in seconds if k.startswith(key + ":")),
                key=lambda k: (k.count(":"), -seconds[k]),
            ):
                print(
                    f"    {sub[len(key) + 2 :]:38} {seconds[sub]:7.2f} s "
                    f"{seconds[sub] / f['wall_s']:6.1%}"
                )
        rest = f["wall_s"] - sum(seconds[k] for k in top)
        print(f"  {'other (GX context, report files)':40} {rest:7.2f} s {rest / f['wall_s']:6.1%}")
        print()

    print("agreement of the two implementations (same checks, same data):")
    for name, _ in sizes:
        f, p = measured[(name, "fmops")], measured[(name, "pandas")]
        differ = sorted(
            k
            for k in set(f["statuses"]) | set(p["statuses"])
            if f["statuses"].get(k, "pass") != p["statuses"].get(k, "pass")
        )
        counts = {k: (f["counts"].get(k), p["counts"].get(k)) for k in f["counts"]}
        shown = ", ".join(
            f"{k} {a:,}" if a == b else f"{k} {a} vs {b}" for k, (a, b) in counts.items()
        )
        print(
            f"  {name}: verdicts {'agree' if not differ else 'DIFFER: ' + ', '.join(differ)}; "
            f"{shown}"
        )
        for line in f["problems"]:
            print(f"    fmops: {line}")
    print()

    print("goals:")
    large = sizes[-1][0]
    if args.quick:
        print(
            f"  validating 1M rows takes under {GOAL_SECONDS:.0f} s on this "
            f"{os.cpu_count()}-core machine: not measured (--quick)"
        )
    else:
        wall = measured[(large, "fmops")]["wall_s"]
        print(
            f"  validating 1M rows takes under {GOAL_SECONDS:.0f} s on this "
            f"{os.cpu_count()}-core machine: {large} {wall:.1f} s -> "
            f"{'PASS' if wall < GOAL_SECONDS else 'MISS'}"
            + ("" if args.rows == LARGE_ROWS else f" (measured at {args.rows:,} rows)")
        )
    for name, _ in reversed(sizes):
        ratio = measured[(name, "fmops")]["wall_s"] / measured[(name, "pandas")]["wall_s"]
        print(
            f"  no more than {GOAL_RATIO:g}x the plain-pandas time: {name} {ratio:.2f}x -> "
            f"{'PASS' if ratio <= GOAL_RATIO else 'MISS'}"
        )
    print(f"\ntotal benchmark time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
