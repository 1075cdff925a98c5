"""The evaluation's aggregation: a HELM-style leaderboard, mean win rate, and the promotion gate.

Every evaluated model (the candidates, the untuned ``baseline`` and, once one is registered, the
``champion``) has a ``metrics.json``; ``metrics_by_model`` maps the model's name to it. The
per-example primary scores (1.0/0.0 correctness for classification, token F1 or ROUGE-L for
generation), aligned by example index across models, come as ``per_example[model][scenario]``.

The gate (``decide``): the candidates are ranked by the primary metric; the best-ranked one that
passes every bound is the winner; where a champion exists, the winner is promoted only when the
lower end of the paired-bootstrap confidence interval of (winner - champion) clears the margin.
Nothing here imports Airflow or MLflow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fmops.evaluation.settings import (
    FAMILIES,
    HIGHER,
    SECTIONS,
    Direction,
    GateSettings,
    MetricBound,
    direction,
    parse_metric_path,
)
from fmops.jobs.naming import BASELINE, CHAMPION

log = logging.getLogger(__name__)

CANDIDATE = "candidate"
# The replicates are drawn in batches of at most this many indices (32 MB of int64), so that
# memory stays bounded whatever the number of examples.
_CHUNK_INDICES = 4_000_000
# The per-example scores should average to the metric in metrics.json; a larger gap is reported.
_AGGREGATE_TOLERANCE = 1e-3

Metrics = Mapping[str, Any]
PerExample = Mapping[str, Mapping[str, Sequence[float]]]


class GateError(ValueError):
    """The per-example scores cannot be compared (empty, mismatched, not finite)."""


# -- the paired bootstrap -----------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapResult:
    """The mean of (candidate - champion) over the examples and its percentile interval."""

    mean_difference: float
    lower: float
    upper: float
    confidence: float
    resamples: int
    seed: int
    n: int

    def interval(self) -> str:
        """``95% CI [+0.0100, +0.0300]``."""
        return f"{_percent(self.confidence)} CI [{self.lower:+.4f}, {self.upper:+.4f}]"


def paired_bootstrap(
    candidate_scores: Sequence[float],
    champion_scores: Sequence[float],
    resamples: int = 2000,
    seed: int = 13,
    confidence: float = 0.95,
) -> BootstrapResult:
    """The paired bootstrap of the mean per-example difference (candidate - champion).

    Each replicate draws n example indices with replacement, once, and applies them to both
    models' scores, so an example's difficulty cancels out of the difference: the interval is as
    narrow as the models' disagreement allows. The interval is the percentile one: the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the replicates' means.
    The same inputs and seed give the same interval. ``scipy.stats.bootstrap`` does the
    resampling and the percentile interval.
    """
    # Here, not at import time: DAG files import fmops modules while parsing (scipy.stats: ~0.7 s).
    import numpy as np
    from scipy import stats

    candidate = np.asarray(candidate_scores, dtype=float)
    champion = np.asarray(champion_scores, dtype=float)
    if candidate.ndim != 1 or champion.ndim != 1:
        raise GateError(
            f"per-example scores must be flat lists of numbers, got shapes {candidate.shape} and "
            f"{champion.shape}; pass one score per example"
        )
    if candidate.size != champion.size:
        raise GateError(
            f"the paired bootstrap needs both models' scores on the same examples, got "
            f"{candidate.size} candidate and {champion.size} champion scores; evaluate both "
            "models on the same examples, in the same order"
        )
    if candidate.size == 0:
        raise GateError("no per-example scores to compare; evaluate on at least one example")
    for name, scores in (("candidate", candidate), ("champion", champion)):
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise GateError(
                f"the {name}'s score at example {int(bad[0])} is {scores[bad[0]]}; every "
                "per-example score must be a finite number"
            )
    if resamples < 1:
        raise GateError(f"resamples is {resamples}; draw at least 1 (the gate uses >= 1000)")
    if not 0 < confidence < 1:
        raise GateError(f"confidence is {confidence}; it is a level in (0, 1), such as 0.95")

    # Resampling the difference is resampling both models' scores with the same indices: paired.
    # scipy's paired=True gives the same interval but indexes both arrays and subtracts in every
    # replicate: twice as slow (400 examples x 2000 replicates: 12 ms against 4 ms).
    difference = candidate - champion
    n = difference.size
    if n == 1:  # scipy needs two examples; every replicate of one example is that example
        lower = upper = difference[0]
    else:
        interval = stats.bootstrap(
            (difference,),
            np.mean,
            n_resamples=resamples,
            batch=max(1, _CHUNK_INDICES // n),
            vectorized=True,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).confidence_interval
        lower, upper = interval.low, interval.high
    return BootstrapResult(
        mean_difference=float(difference.mean()),
        lower=float(lower),
        upper=float(upper),
        confidence=confidence,
        resamples=resamples,
        seed=seed,
        n=int(n),
    )


# -- reading metrics.json ----------------------------------------------------------------------


def _lookup(metrics: Metrics, metric: str, model: str) -> tuple[float | None, str | None]:
    """The metric's value, or None and the reason it has none."""
    path = parse_metric_path(metric)
    node: Any = metrics
    walked: list[str] = []
    for key in path.location:
        if not isinstance(node, Mapping) or key not in node:
            under = ".".join(walked) or "the top level"
            return None, (
                f"{metric} is missing from the metrics.json of {model} (no {key!r} under {under})"
            )
        node = node[key]
        walked.append(key)
    if isinstance(node, bool) or not isinstance(node, int | float):
        kind = "a mapping" if isinstance(node, Mapping) else type(node).__name__
        hint = f" with keys {', '.join(map(str, node))}" if isinstance(node, Mapping) else ""
        return None, (
            f"{metric} of {model} is not a number but {kind}{hint}: name one of its numbers"
        )
    if not math.isfinite(node):
        return None, f"{metric} of {model} is {node}, not a finite number"
    return float(node), None


def metric_value(metrics: Metrics, metric: str) -> float | None:
    """The value at the metric path in one model's metrics.json; None if it has none."""
    return _lookup(metrics, metric, "the model")[0]


def default_primary(metrics_by_model: Mapping[str, Metrics]) -> str:
    """The first scenario's ``accuracy.accuracy``, or its first accuracy metric if no model has
    that (a generation scenario).

    The first scenario is the first one in the first metrics.json (in ``metrics_by_model``'s
    order) that has scenarios.
    """
    scenario = next(
        (s for metrics in metrics_by_model.values() for s in metrics.get("scenarios") or {}), None
    )
    if scenario is None:
        raise GateError(
            "no metrics.json has any scenario, so there is no primary metric to rank by; check "
            "the evaluation jobs' outputs, or set the gate's primary metric"
        )
    names: list[str] = []
    for metrics in metrics_by_model.values():
        result = (metrics.get("scenarios") or {}).get(scenario) or {}
        names.extend(n for n in _leaves(result.get("accuracy")) if n not in names)
    name = "accuracy" if "accuracy" in names or not names else names[0]
    return f"{scenario}.accuracy.{name}"


# -- bounds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundCheck:
    """One bound checked on one model: ``bound`` reads ``>= 0.8``, ``<= 0.1``, ``in [a, b]``."""

    metric: str
    value: float | None
    bound: str
    passed: bool
    reason: str


def _check(metrics: Metrics, model: str, bound: MetricBound) -> BoundCheck:
    value, missing = _lookup(metrics, bound.metric, model)
    described = bound.describe()
    if value is None:
        return BoundCheck(bound.metric, None, described, False, str(missing))
    shown = f"{bound.metric} = {_number(value)}"
    if bound.min is not None and value < bound.min:
        reason = f"{shown} is below the minimum {bound.min:g}"
    elif bound.max is not None and value > bound.max:
        reason = f"{shown} is above the maximum {bound.max:g}"
    else:
        return BoundCheck(bound.metric, value, described, True, f"{shown} {described}")
    return BoundCheck(bound.metric, value, described, False, reason)


def check_bounds(
    metrics_by_model: Mapping[str, Metrics], bounds: Sequence[MetricBound]
) -> dict[str, list[BoundCheck]]:
    """Every bound checked on every model; a missing or non-numeric metric fails its check."""
    return {
        model: [_check(metrics, model, bound) for bound in bounds]
        for model, metrics in metrics_by_model.items()
    }


# -- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """The winner against the champion (the gate) or the baseline (for information)."""

    candidate: str
    against: str
    metric: str
    margin: float
    result: BootstrapResult | None
    cleared: bool
    reason: str


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict.

    ``winner`` is the best-ranked candidate that passes every bound (None: none does);
    ``promote`` is whether it should become the champion: it passes, and it beats the champion
    where one exists. ``reasons`` explains every step in plain English, with the numbers.
    ``ranking`` is the candidates in order with their primary values; ``roles`` maps each
    evaluated model to ``candidate``, ``baseline`` or ``champion``.
    """

    promote: bool
    winner: str | None
    reasons: list[str]
    primary: str
    ranking: list[tuple[str, float | None]]
    checks: dict[str, list[BoundCheck]]
    roles: dict[str, str]
    champion: Comparison | None = None
    baseline: Comparison | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (for XCom and MLflow)."""
        data = asdict(self)
        data["ranking"] = [{"model": m, "value": v} for m, v in self.ranking]
        return data


def _percent(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _number(value: float) -> str:
    return f"{value:.4g}"


def _rank(
    candidates: Iterable[str], metrics_by_model: Mapping[str, Metrics], primary: str
) -> list[tuple[str, float | None]]:
    higher = direction(parse_metric_path(primary).name) == HIGHER
    values = [(m, _lookup(metrics_by_model[m], primary, m)[0]) for m in candidates]

    def key(item: tuple[str, float | None]) -> tuple[bool, float, str]:
        model, value = item
        if value is None:
            return (True, 0.0, model)
        return (False, -value if higher else value, model)

    return sorted(values, key=key)


def _compare(
    candidate: str,
    against: str,
    metric: str,
    per_example: PerExample,
    settings: GateSettings,
    *,
    margin: float,
) -> Comparison:
    """The paired bootstrap of (candidate - against) on the metric's scenario, as a Comparison."""
    scenario = parse_metric_path(metric).scenario
    champion = settings.champion
    label = f"{candidate} vs {against} on {metric}"
    missing = [m for m in (candidate, against) if scenario not in per_example.get(m, {})]
    if missing:
        reason = (
            f"{label}: no per-example scores of {' or '.join(missing)} on scenario {scenario}, "
            "so the difference cannot be tested"
        )
        return Comparison(candidate, against, metric, margin, None, False, reason)
    try:
        result = paired_bootstrap(
            per_example[candidate][scenario],
            per_example[against][scenario],
            resamples=champion.resamples,
            seed=champion.seed,
            confidence=champion.confidence,
        )
    except GateError as err:
        return Comparison(candidate, against, metric, margin, None, False, f"{label}: {err}")
    cleared = result.lower > margin
    verdict = "clears" if cleared else "does not clear"
    reason = (
        f"{label} (paired bootstrap, {result.resamples} resamples, seed {result.seed}, "
        f"n={result.n}): mean difference {result.mean_difference:+.4f}; the "
        f"{_percent(result.confidence)} CI [{result.lower:+.4f}, {result.upper:+.4f}] of the "
        f"difference {verdict} the margin {margin:g}"
    )
    return Comparison(candidate, against, metric, margin, result, cleared, reason)


def _aggregate_notes(
    models: Iterable[str],
    metric: str,
    metrics_by_model: Mapping[str, Metrics],
    per_example: PerExample,
) -> list[str]:
    """A note for each model whose per-example scores do not average to its metrics.json value."""
    scenario = parse_metric_path(metric).scenario
    notes = []
    for model in models:
        scores = per_example.get(model, {}).get(scenario)
        value = _lookup(metrics_by_model.get(model, {}), metric, model)[0]
        if not scores or value is None:
            continue
        mean = math.fsum(scores) / len(scores)
        if abs(mean - value) > _AGGREGATE_TOLERANCE:
            notes.append(
                f"note: the per-example scores of {model} on {scenario} average to "
                f"{_number(mean)} while its metrics.json reports {metric} = {_number(value)}; "
                "the bootstrap tests the per-example scores"
            )
    return notes


def _bounds_reason(model: str, checks: list[BoundCheck]) -> str:
    failed = [c for c in checks if not c.passed]
    if not failed:
        return f"{model} passes every bound ({len(checks)}): " + "; ".join(c.reason for c in checks)
    passed = [c.reason for c in checks if c.passed]
    text = f"{model} fails {len(failed)} of {len(checks)} bounds: " + "; ".join(
        c.reason for c in failed
    )
    return text + (f" (passes: {'; '.join(passed)})" if passed else "")


def decide(
    metrics_by_model: Mapping[str, Metrics],
    per_example: PerExample,
    settings: GateSettings,
    *,
    baseline: str | None = BASELINE,
    champion: str | None = CHAMPION,
) -> GateDecision:
    """Rank the candidates, check the bounds, and test the winner against the champion.

    Every model in ``metrics_by_model`` other than ``baseline`` and ``champion`` is a
    candidate; the champion takes part when it is in ``metrics_by_model``. See GateDecision.
    """
    roles = {
        m: BASELINE if m == baseline else CHAMPION if m == champion else CANDIDATE
        for m in metrics_by_model
    }
    candidates = [m for m, role in roles.items() if role == CANDIDATE]
    primary = settings.primary or default_primary(metrics_by_model)
    compared_on = settings.champion.metric or primary
    checks = check_bounds(metrics_by_model, settings.bounds)
    reasons: list[str] = []

    if not candidates:
        reasons.append("no candidate was evaluated: nothing to promote")
        return GateDecision(False, None, reasons, primary, [], checks, roles)

    ranking = _rank(candidates, metrics_by_model, primary)
    better = "higher" if direction(parse_metric_path(primary).name) == HIGHER else "lower"
    shown = ", ".join(f"{m} {'missing' if v is None else _number(v)}" for m, v in ranking)
    reasons.append(f"candidates ranked by {primary} ({better} is better): {shown}")
    if not settings.bounds:
        reasons.append("no bounds are configured: every candidate passes them")
    else:
        reasons.extend(_bounds_reason(m, checks[m]) for m, _ in ranking)

    winner = None
    for model, value in ranking:
        if value is None:
            reasons.append(f"{model} has no {primary}, so it cannot be ranked or win")
        elif winner is None and all(c.passed for c in checks[model]):
            winner = model
    if winner is None:
        reasons.append("no candidate passes every bound: do not promote")
        return GateDecision(False, None, reasons, primary, ranking, checks, roles)
    value = dict(ranking)[winner]
    reasons.append(
        f"winner: {winner} ({primary} = {_number(value)}), the best-ranked candidate that "
        "passes every bound"
    )

    has_champion = champion is not None and champion in metrics_by_model
    compared = [winner] + [m for m in (champion, baseline) if m and m in metrics_by_model]
    reasons.extend(_aggregate_notes(compared, compared_on, metrics_by_model, per_example))
    against_champion = None
    if has_champion:
        against_champion = _compare(
            winner,
            champion,
            compared_on,
            per_example,
            settings,
            margin=settings.champion.margin,
        )
        reasons.append(against_champion.reason)
        promote = against_champion.cleared
    else:
        reasons.append(f"no champion is registered: the bounds alone decide, and {winner} passes")
        promote = True

    against_baseline = None
    if baseline and baseline in metrics_by_model:
        against_baseline = _compare(
            winner, baseline, compared_on, per_example, settings, margin=0.0
        )
        reasons.append(f"for information: {against_baseline.reason}")

    if promote:
        reasons.append(f"promote {winner}")
    else:
        reasons.append(f"do not promote {winner}: it is not shown to beat the champion")
    log.info("gate: %s", "; ".join(reasons))
    return GateDecision(
        promote,
        winner,
        reasons,
        primary,
        ranking,
        checks,
        roles,
        champion=against_champion,
        baseline=against_baseline,
    )


# -- the leaderboard ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One leaderboard column: a metric path, its group (scenario or section), its direction."""

    key: str
    group: str
    family: str
    name: str
    direction: Direction | None

    @property
    def in_win_rate(self) -> bool:
        """Scenario metrics with a direction count towards the mean win rate."""
        return self.family in FAMILIES and self.direction is not None


@dataclass(frozen=True)
class Leaderboard:
    """One row per model: ``model``, ``mean_win_rate`` and one value per column key (or None).

    Rows are sorted by mean win rate (best first, then by name); ``table`` and ``directions``
    are what ``mean_win_rate`` takes.
    """

    columns: list[Column]
    rows: list[dict[str, Any]]
    win_rate_columns: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return [row["model"] for row in self.rows]

    @property
    def table(self) -> dict[str, dict[str, float | None]]:
        return {row["model"]: {c.key: row[c.key] for c in self.columns} for row in self.rows}

    @property
    def directions(self) -> dict[str, Direction]:
        return {c.key: c.direction for c in self.columns if c.direction is not None}

    def best(self, key: str) -> set[str]:
        """The models with the column's best value (all of them on a tie); none if unranked."""
        return _best(self.table, key, self.directions.get(key))

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": [asdict(c) for c in self.columns],
            "rows": self.rows,
            "win_rate_columns": self.win_rate_columns,
        }


def _best(table: Mapping[str, Mapping[str, float | None]], key: str, way: str | None) -> set[str]:
    values = {m: row.get(key) for m, row in table.items() if _usable(row.get(key))}
    if way is None or not values:
        return set()
    top = max(values.values()) if way == HIGHER else min(values.values())
    return {m for m, v in values.items() if v == top}


def _usable(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _leaves(node: Any) -> list[str]:
    """The names of a mapping's direct numeric values (nested mappings and lists are detail)."""
    if not isinstance(node, Mapping):
        return []
    return [k for k, v in node.items() if _usable(v)]


def _columns(metrics_by_model: Mapping[str, Metrics]) -> list[Column]:
    keys: dict[str, Column] = {}

    def add(key: str, group: str, family: str, name: str) -> None:
        keys.setdefault(key, Column(key, group, family, name, direction(name)))

    scenarios: list[str] = []
    for metrics in metrics_by_model.values():
        for scenario in metrics.get("scenarios") or {}:
            if scenario not in scenarios:
                scenarios.append(scenario)
    for scenario in scenarios:
        for family in FAMILIES:
            for metrics in metrics_by_model.values():
                result = (metrics.get("scenarios") or {}).get(scenario) or {}
                for name in _leaves(result.get(family)):
                    add(f"{scenario}.{family}.{name}", scenario, family, name)
    for section in SECTIONS:
        for metrics in metrics_by_model.values():
            for name in _leaves(metrics.get(section)):
                add(f"{section}.{name}", section, section, name)
    return list(keys.values())


def leaderboard(metrics_by_model: Mapping[str, Metrics]) -> Leaderboard:
    """The HELM-style leaderboard of the models' metrics.json.

    A column per scenario and family metric (``banking77.accuracy.macro_f1``,
    ``banking77.calibration.ece``, ``banking77.robustness.worst_drop``,
    ``banking77.fairness.max_gap``: each family's direct numbers; per-perturbation and per-group
    detail stays in metrics.json), then the efficiency and cost numbers. The mean win rate is
    taken over the scenario columns: efficiency and cost are shown, not averaged in, as HELM
    reports them apart from the quality metrics.
    """
    columns = _columns(metrics_by_model)
    rows = []
    for model, metrics in metrics_by_model.items():
        row: dict[str, Any] = {"model": model}
        for column in columns:
            row[column.key] = metric_value(metrics, column.key)
        rows.append(row)
    ranked = [c for c in columns if c.in_win_rate]
    table = {row["model"]: {c.key: row[c.key] for c in ranked} for row in rows}
    rates = mean_win_rate(table, {c.key: c.direction for c in ranked if c.direction})
    for row in rows:
        row["mean_win_rate"] = rates[row["model"]]
    rows.sort(key=lambda r: (r["mean_win_rate"] is None, -(r["mean_win_rate"] or 0), r["model"]))
    return Leaderboard(columns, rows, [c.key for c in ranked])


def mean_win_rate(
    table: Mapping[str, Mapping[str, float | None]], directions: Mapping[str, Direction]
) -> dict[str, float | None]:
    """HELM's mean win rate: per column, the share of the other models a model beats; the mean.

    Only the columns in ``directions`` count. In a column, a model's win rate is the number of
    the other models with a value there that it strictly beats, plus half the number it ties
    with (HELM counts a tie as half a win), divided by the number of those other models. A model
    without a value in a column is skipped for it (neither ranked nor counted as an opponent),
    and a column where fewer than two models have a value is skipped. The mean is over the
    columns where the model has a win rate; None when there is none.
    """
    rates: dict[str, list[float]] = {model: [] for model in table}
    for key, way in directions.items():
        values = {m: row.get(key) for m, row in table.items() if _usable(row.get(key))}
        if len(values) < 2:
            continue
        for model, mine in values.items():
            score = 0.0
            for other, theirs in values.items():
                if other == model:
                    continue
                if mine == theirs:
                    score += 0.5
                elif (mine > theirs) == (way == HIGHER):
                    score += 1.0
            rates[model].append(score / (len(values) - 1))
    return {m: (sum(r) / len(r) if r else None) for m, r in rates.items()}
