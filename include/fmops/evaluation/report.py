"""The evaluation report: one self-contained HTML page, and its plots as PNG files beside it.

The page holds the gate's decision with every reason, the leaderboard (best value per column in
bold) with the mean win rate, the bound checks, the cost estimates, and the plots, embedded as
base64 data URIs so that the page needs nothing else: the leaderboard's primary metric and mean
win rate, a reliability diagram per model, the winner's confusion matrix per scenario, and the
accuracy drop per perturbation. Each plot is also written as ``<stem>-<plot>.png`` beside the
HTML file, to be logged as an MLflow artifact. The output depends on the inputs only: no
timestamp unless one is passed.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmops.evaluation.gate import (
    BASELINE,
    CHAMPION,
    GateDecision,
    Leaderboard,
    Metrics,
    metric_value,
)
from fmops.evaluation.settings import HIGHER

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Above this many labels a confusion matrix's cells are too small to hold their counts.
MAX_LABELS_WITH_COUNTS = 20
DPI = 100
# The names write_report gives its PNG files after ``<stem>``; only these are ever replaced.
_PLOT_FILE = r"-(leaderboard|reliability|robustness|confusion-[A-Za-z0-9_-]+)\.png"
ROLE_COLOURS = {
    "winner": "#2a9d4b",
    "candidate": "#4c72b0",
    BASELINE: "#9a9a9a",
    CHAMPION: "#dd8452",
}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
.meta { color: #666; margin-top: 0; }
.verdict { font-size: 1.2rem; font-weight: 600; padding: 0.6rem 0.9rem; border-radius: 4px; }
.promote { background: #e3f4e8; border-left: 5px solid #2a9d4b; }
.hold { background: #fbeaea; border-left: 5px solid #c0392b; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.5rem; text-align: right; }
th { background: #f4f4f4; }
td.text, th.text { text-align: left; }
td.best { font-weight: 700; background: #fff6d6; }
td.pass { color: #2a9d4b; }
td.fail { color: #c0392b; font-weight: 600; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0 2rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9rem; }
.note { color: #555; font-size: 0.9rem; }
"""


@dataclass(frozen=True)
class Plot:
    """One rendered plot: ``name`` gives the file name, ``png`` the image."""

    name: str
    title: str
    caption: str
    png: bytes


# -- helpers -----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _label(text: str) -> str:
    """Text for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "scenario"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if abs(value) >= 10_000:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    # No "Software" chunk: the bytes depend on the figure only.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _figure(width: float, height: float) -> Any:
    # A Figure without pyplot: no global backend state, safe in a worker thread (Agg renders PNG).
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _role(model: str, decision: GateDecision) -> str:
    if model == decision.winner:
        return "winner"
    return decision.roles.get(model, "candidate")


def _scenarios(metrics: Metrics) -> Mapping[str, Any]:
    scenarios = metrics.get("scenarios")
    return scenarios if isinstance(scenarios, Mapping) else {}


# -- plots -------------------------------------------------------------------------------------


def _leaderboard_plot(board: Leaderboard, decision: GateDecision, metrics_by_model) -> Plot:
    models = board.models
    primary = [metric_value(metrics_by_model.get(m, {}), decision.primary) for m in models]
    rates = [row["mean_win_rate"] for row in board.rows]
    colours = [ROLE_COLOURS[_role(m, decision)] for m in models]
    figure = _figure(11, 1.2 + 0.45 * len(models))
    axes = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(models)))
    for ax, values, title in (
        (axes[0], primary, decision.primary),
        (axes[1], rates, "mean win rate"),
    ):
        ax.barh(positions, [v or 0.0 for v in values], color=colours)
        for y, value in zip(positions, values, strict=True):
            ax.text(value or 0.0, y, f" {_fmt(value)}", va="center", fontsize=8)
        ax.set_title(_label(title), fontsize=10)
        ax.margins(x=0.15)
    axes[0].set_yticks(positions, [_label(m) for m in models], fontsize=9)
    axes[0].invert_yaxis()
    axes[1].set_xlim(0, 1.15)
    return Plot(
        "leaderboard",
        "Leaderboard",
        f"{decision.primary} and mean win rate per model (green: winner, orange: champion, "
        "grey: baseline).",
        _png(figure),
    )


def _bins(metrics: Metrics) -> list[tuple[str, float | None, list[Mapping[str, Any]]]]:
    found = []
    for scenario, result in _scenarios(metrics).items():
        calibration = result.get("calibration") if isinstance(result, Mapping) else None
        if isinstance(calibration, Mapping) and calibration.get("bins"):
            found.append((scenario, calibration.get("ece"), list(calibration["bins"])))
    return found


def _reliability_plot(models: Sequence[str], metrics_by_model) -> Plot | None:
    calibrated = [(m, _bins(metrics_by_model[m])) for m in models]
    calibrated = [(m, b) for m, b in calibrated if b]
    if not calibrated:
        return None
    columns = min(4, len(calibrated))
    rows = math.ceil(len(calibrated) / columns)
    figure = _figure(3.2 * columns, 3.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(calibrated) :]:
        ax.set_visible(False)
    for ax, (model, scenarios) in zip(axes.flat, calibrated, strict=False):
        ax.plot([0, 1], [0, 1], linestyle="--", color="#888", linewidth=1)
        for index, (scenario, ece, bins) in enumerate(scenarios):
            used = [b for b in bins if b.get("count")]
            ax.bar(
                [b["lower"] for b in used],
                [b["accuracy"] for b in used],
                width=[b["upper"] - b["lower"] for b in used],
                align="edge",
                alpha=0.55,
                color=f"C{index}",
                edgecolor="#333",
                linewidth=0.5,
                label=_label(f"{scenario} (ECE {_fmt(ece)})"),
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(_label(model), fontsize=10)
        ax.set_xlabel("confidence", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    return Plot(
        "reliability",
        "Reliability diagrams",
        "Accuracy per confidence bin (empty bins left out); the dashed diagonal is perfect "
        "calibration, bars below it are over-confident.",
        _png(figure),
    )


def confusion_figure(labels: Sequence[Any], matrix: Sequence[Sequence[float]], title: str) -> Any:
    """A confusion matrix as a matplotlib Figure: rows are the true labels, colour the share of
    each true label's examples predicted as each label; counts in the cells up to
    ``MAX_LABELS_WITH_COUNTS`` labels (beyond, they would not fit). A ValueError if the matrix
    is not square with a row per label."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    names = [str(label) for label in labels]
    n = len(names)
    if n == 0 or counts.shape != (n, n):
        raise ValueError(
            f"a confusion matrix of shape {counts.shape} does not fit {n} labels; it needs a row "
            "and a column per label"
        )
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    side = min(16.0, max(5.0, 2.5 + 0.14 * n))
    figure = _figure(side + 1.2, side)
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    figure.colorbar(image, ax=ax, shrink=0.7, label="share of the true label")
    size = max(4.5, min(9.0, 380 / n))
    ticks = list(range(n))
    ax.set_xticks(ticks, [_label(x) for x in names], rotation=90, fontsize=size)
    ax.set_yticks(ticks, [_label(x) for x in names], fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(_label(title), fontsize=11)
    if n <= MAX_LABELS_WITH_COUNTS:
        for (row, column), count in np.ndenumerate(counts):
            if count:
                dark = shares[row, column] > 0.5
                colour = "white" if dark else "#222"
                ax.text(column, row, f"{count:g}", ha="center", va="center", color=colour)
    return figure


def _confusion_plots(model: str | None, metrics_by_model, winner: bool) -> list[Plot]:
    if model is None or model not in metrics_by_model:
        return []
    plots = []
    for scenario, result in _scenarios(metrics_by_model[model]).items():
        confusion = result.get("confusion") if isinstance(result, Mapping) else None
        if not isinstance(confusion, Mapping) or not confusion.get("matrix"):
            continue
        matrix = confusion["matrix"]
        labels = confusion.get("labels") or list(range(len(matrix)))
        try:
            figure = confusion_figure(labels, matrix, f"{model} on {scenario}")
        except ValueError as err:
            log.warning("no confusion matrix plot of %s on %s: %s", model, scenario, err)
            continue
        who = "the winner" if winner else "the best-ranked candidate (not promoted)"
        counted = len(labels) <= MAX_LABELS_WITH_COUNTS
        plots.append(
            Plot(
                f"confusion-{_file_part(scenario)}",
                f"Confusion matrix: {scenario}",
                f"{model}, {who}, on {scenario}: colour is the share of each true label "
                f"predicted as each label ({len(labels)} labels"
                + ("; counts in the cells)." if counted else ")."),
                _png(figure),
            )
        )
    return plots


def _drops(metrics: Metrics, scenario: str) -> dict[str, float]:
    result = _scenarios(metrics).get(scenario)
    robustness = result.get("robustness") if isinstance(result, Mapping) else None
    if not isinstance(robustness, Mapping):
        return {}
    return {
        kind: float(value["drop"])
        for kind, value in robustness.items()
        if isinstance(value, Mapping) and isinstance(value.get("drop"), int | float)
    }


def _robustness_plot(models: Sequence[str], metrics_by_model) -> Plot | None:
    scenarios: list[str] = []
    for model in models:
        for scenario in _scenarios(metrics_by_model[model]):
            if scenario not in scenarios and _drops(metrics_by_model[model], scenario):
                scenarios.append(scenario)
    if not scenarios:
        return None
    figure = _figure(10, 3.2 * len(scenarios))
    axes = figure.subplots(len(scenarios), 1, squeeze=False)[:, 0]
    # A group of bars per perturbation kind, a bar per model; narrow bars even with few models.
    group = min(0.8, 0.2 * len(models))
    width = group / max(1, len(models))
    for ax, scenario in zip(axes, scenarios, strict=True):
        drops = {m: _drops(metrics_by_model[m], scenario) for m in models}
        kinds: list[str] = []
        for values in drops.values():
            kinds.extend(k for k in values if k not in kinds)
        for index, model in enumerate(models):
            ax.bar(
                [k + index * width for k in range(len(kinds))],
                [drops[model].get(kind, 0.0) for kind in kinds],
                width=width,
                align="edge",
                color=f"C{index % 10}",
                label=_label(model),
            )
        ax.set_xticks([k + group / 2 for k in range(len(kinds))], [_label(k) for k in kinds])
        ax.set_xlim(-0.3, max(len(kinds), 3) - 0.1)
        ax.axhline(0, color="#333", linewidth=0.8)
        ax.set_title(_label(f"{scenario}: score drop per perturbation (lower is better)"))
        ax.set_ylabel("drop")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot(
        "robustness",
        "Robustness",
        "The primary score's drop under each perturbation of the inputs, per model.",
        _png(figure),
    )


def render_plots(
    board: Leaderboard, decision: GateDecision, metrics_by_model: Mapping[str, Metrics]
) -> list[Plot]:
    """The report's plots, in page order; a plot with no data (no calibration bins, no
    confusion matrix, no robustness results) is left out."""
    models = [m for m in board.models if m in metrics_by_model]
    subject = decision.winner or (decision.ranking[0][0] if decision.ranking else None)
    plots = [_leaderboard_plot(board, decision, metrics_by_model)]
    plots.append(_reliability_plot(models, metrics_by_model))
    plots.extend(_confusion_plots(subject, metrics_by_model, winner=decision.winner is not None))
    plots.append(_robustness_plot(models, metrics_by_model))
    return [p for p in plots if p is not None]


# -- the page ----------------------------------------------------------------------------------


def _decision_html(decision: GateDecision) -> str:
    if decision.promote:
        verdict, css = f"Promote {decision.winner}", "promote"
    elif decision.winner:
        verdict, css = (
            f"Do not promote: {decision.winner} won but did not beat the champion",
            "hold",
        )
    else:
        verdict, css = "Do not promote: no candidate passes the gate", "hold"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in decision.reasons)
    return (
        f'<section id="decision"><h2>Gate decision</h2><p class="verdict {css}">{_e(verdict)}</p>'
        f"<ol>{reasons}</ol></section>"
    )


def _leaderboard_html(board: Leaderboard, decision: GateDecision) -> str:
    groups: list[tuple[str, int]] = []
    for column in board.columns:
        if groups and groups[-1][0] == column.group:
            groups[-1] = (column.group, groups[-1][1] + 1)
        else:
            groups.append((column.group, 1))
    head = '<tr><th class="text" rowspan="2">model</th><th class="text" rowspan="2">role</th>'
    head += '<th rowspan="2">mean win rate &uarr;</th>'
    head += "".join(f'<th colspan="{span}">{_e(group)}</th>' for group, span in groups) + "</tr>"
    arrows = {HIGHER: " &uarr;", "lower": " &darr;"}
    head += (
        "<tr>"
        + "".join(
            f'<th title="{_e(c.key)}">{_e(c.name)}{arrows.get(c.direction or "", "")}</th>'
            for c in board.columns
        )
        + "</tr>"
    )
    # A column where every model has the same value has no best one.
    best = {c.key: _distinct_best(board, c.key) for c in board.columns}
    best_rate = _best_rate(board)
    body = ""
    for row in board.rows:
        model = row["model"]
        cells = [
            f'<td class="text">{_e(model)}</td>',
            f'<td class="text">{_e(_role(model, decision))}</td>',
            _cell(row["mean_win_rate"], model in best_rate),
        ]
        cells += [_cell(row[c.key], model in best[c.key]) for c in board.columns]
        body += "<tr>" + "".join(cells) + "</tr>"
    note = (
        "Mean win rate (as in HELM): for each scenario metric, the share of the other models "
        "that a model beats, a tie counting half; averaged over the metrics where the model has "
        "a value. Efficiency and cost are shown but not averaged in. &uarr; higher is better, "
        "&darr; lower is better; the best value of each column is in bold."
    )
    return (
        '<section id="leaderboard"><h2>Leaderboard</h2><div class="scroll"><table>'
        f"<thead>{head}</thead><tbody>{body}</tbody></table></div>"
        f'<p class="note">{note}</p></section>'
    )


def _distinct_best(board: Leaderboard, key: str) -> set[str]:
    best = board.best(key)
    valued = {r["model"] for r in board.rows if r[key] is not None}
    return best if best != valued else set()


def _best_rate(board: Leaderboard) -> set[str]:
    rates = [r["mean_win_rate"] for r in board.rows if r["mean_win_rate"] is not None]
    top = max(rates, default=None)
    best = {r["model"] for r in board.rows if top is not None and r["mean_win_rate"] == top}
    return best if len(best) < len(rates) else set()


def _cell(value: Any, best: bool) -> str:
    return f'<td class="best">{_e(_fmt(value))}</td>' if best else f"<td>{_e(_fmt(value))}</td>"


def _checks_html(decision: GateDecision) -> str:
    rows = ""
    for model, checks in decision.checks.items():
        for check in checks:
            result = "pass" if check.passed else "fail"
            rows += (
                f'<tr><td class="text">{_e(model)}</td><td class="text">{_e(check.metric)}</td>'
                f"<td>{_e(_fmt(check.value))}</td><td>{_e(check.bound)}</td>"
                f'<td class="{result}">{result}</td><td class="text">{_e(check.reason)}</td></tr>'
            )
    if not rows:
        return (
            '<section id="bounds"><h2>Bound checks</h2><p>No bounds are configured.</p></section>'
        )
    return (
        '<section id="bounds"><h2>Bound checks</h2><div class="scroll"><table><thead><tr>'
        '<th class="text">model</th><th class="text">metric</th><th>value</th><th>bound</th>'
        f'<th>result</th><th class="text">reason</th></tr></thead><tbody>{rows}</tbody></table>'
        "</div></section>"
    )


def _cost_html(models: Sequence[str], metrics_by_model: Mapping[str, Metrics]) -> str:
    rows = ""
    for model in models:
        cost = metrics_by_model.get(model, {}).get("cost")
        if not isinstance(cost, Mapping):
            continue
        rows += (
            f'<tr><td class="text">{_e(model)}</td>'
            f'<td class="text">{_e(cost.get("instance_type", "–"))}</td>'
            f"<td>{_e(_fmt(cost.get('price_per_hour')))}</td>"
            f"<td>{_e(_fmt(cost.get('usd_per_1k_requests')))}</td>"
            f'<td class="text">{_e(cost.get("estimate", ""))}</td></tr>'
        )
    if not rows:
        return ""
    return (
        '<section id="cost"><h2>Cost</h2><div class="scroll"><table><thead><tr>'
        '<th class="text">model</th><th class="text">instance type</th><th>USD per hour</th>'
        '<th>USD per 1k requests</th><th class="text">estimate</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div></section>"
    )


def _plots_html(plots: Sequence[Plot]) -> str:
    figures = "".join(
        f'<figure id="plot-{_e(p.name)}"><h3>{_e(p.title)}</h3>'
        f'<img alt="{_e(p.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.png).decode("ascii")}">'
        f"<figcaption>{_e(p.caption)}</figcaption></figure>"
        for p in plots
    )
    return f'<section id="plots"><h2>Plots</h2>{figures}</section>'


def write_report(
    path: str | Path,
    leaderboard: Leaderboard,
    decision: GateDecision,
    metrics_by_model: Mapping[str, Metrics],
    *,
    title: str = "Evaluation report",
    subtitle: str | None = None,
    generated_at: str | None = None,
) -> Path:
    """Write the HTML report to ``path`` and each plot to ``<stem>-<plot>.png`` beside it.

    Returns the HTML file's path; ``report_plots(path)`` lists the PNG files. ``subtitle`` and
    ``generated_at`` (a timestamp, shown as given) are optional lines under the title.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plots = render_plots(leaderboard, decision, metrics_by_model)
    for stale in report_plots(path):
        stale.unlink()
    for plot in plots:
        path.with_name(f"{path.stem}-{plot.name}.png").write_bytes(plot.png)
    meta = " · ".join(_e(x) for x in (subtitle, generated_at and f"generated {generated_at}") if x)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        + (f'<p class="meta">{meta}</p>' if meta else "")
        + _decision_html(decision)
        + _leaderboard_html(leaderboard, decision)
        + _checks_html(decision)
        + _plots_html(plots)
        + _cost_html(leaderboard.models, metrics_by_model)
        + "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path


def report_plots(path: str | Path) -> list[Path]:
    """The PNG files that ``write_report`` wrote beside the HTML file at ``path``, sorted."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(path.stem) + _PLOT_FILE)
    return sorted(p for p in path.parent.iterdir() if p.is_file() and pattern.fullmatch(p.name))
