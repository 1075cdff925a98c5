"""The HTML report: one self-contained page, its plots embedded and written beside it."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_gate import GATE, evaluation, metrics_json

from fmops.evaluation.gate import decide, leaderboard
from fmops.evaluation.report import (
    MAX_LABELS_WITH_COUNTS,
    PNG_SIGNATURE,
    confusion_figure,
    render_plots,
    report_plots,
    write_report,
)
from fmops.evaluation.settings import GateSettings
from fmops.jobs.naming import BASELINE, CHAMPION

DATA_URI = "data:image/png;base64,"
ODD_NAME = '<b>evil</b> & "co" $x$'


class Page(HTMLParser):
    """What the tests look at: the images, the text, and the cells marked best."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []
        self.links: list[str] = []
        self.best_cells = 0

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        if tag in ("link", "script") or (tag != "img" and "src" in attributes):
            self.links.append(tag)
        if tag == "td" and attributes.get("class") == "best":
            self.best_cells += 1

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def report(tmp_path: Path, champion_correct: int | None = 280, **kwargs) -> tuple[Path, object]:
    metrics, per_example = evaluation(champion_correct=champion_correct)
    decision = decide(metrics, per_example, GateSettings.model_validate(GATE))
    path = write_report(tmp_path / "report.html", leaderboard(metrics), decision, metrics, **kwargs)
    return path, decision


def test_the_page_parses_and_holds_the_decision_and_every_reason(tmp_path):
    path, decision = report(tmp_path)
    assert path == tmp_path / "report.html"
    page = parse(path)
    text = " ".join(page.text)
    assert decision.promote
    assert "Promote minilm-full" in text
    for reason in decision.reasons:
        assert reason in text
    assert "the 95% CI [" in text
    for section in ("Gate decision", "Leaderboard", "Bound checks", "Plots", "Cost"):
        assert section in text
    assert {"table", "ol", "figure", "style"} <= set(page.tags)
    assert page.best_cells > 0
    # Self-contained: no stylesheet, script or other fetched resource.
    assert page.links == []


def test_one_embedded_png_per_plot_and_the_same_png_beside_the_page(tmp_path):
    path, _ = report(tmp_path)
    page = parse(path)
    files = report_plots(path)
    assert [f.name for f in files] == [
        "report-confusion-banking77.png",
        "report-leaderboard.png",
        "report-reliability.png",
        "report-robustness.png",
    ]
    assert len(page.images) == len(files)
    embedded = set()
    for src in page.images:
        assert src.startswith(DATA_URI)
        png = base64.b64decode(src.removeprefix(DATA_URI), validate=True)
        assert png.startswith(PNG_SIGNATURE)
        embedded.add(png)
    for file in files:
        assert file.read_bytes().startswith(PNG_SIGNATURE)
        assert file.read_bytes() in embedded


def test_a_report_without_calibration_or_confusion_leaves_those_plots_out(tmp_path):
    metrics = {
        "gen-a": {"scenarios": {"qa": {"accuracy": {"token_f1": 0.5}}}},
        "gen-b": {"scenarios": {"qa": {"accuracy": {"token_f1": 0.4}}}},
    }
    decision = decide(metrics, {}, GateSettings())
    board = leaderboard(metrics)
    assert [p.name for p in render_plots(board, decision, metrics)] == ["leaderboard"]
    path = write_report(tmp_path / "gen.html", board, decision, metrics)
    assert len(parse(path).images) == 1
    assert [f.name for f in report_plots(path)] == ["gen-leaderboard.png"]


def test_special_characters_are_escaped(tmp_path):
    metrics, per_example = evaluation()
    metrics[ODD_NAME] = metrics.pop("minilm-full")
    per_example[ODD_NAME] = per_example.pop("minilm-full")
    metrics[ODD_NAME]["cost"]["estimate"] = "<script>alert(1)</script>"
    decision = decide(metrics, per_example, GateSettings.model_validate(GATE))
    assert decision.winner == ODD_NAME
    path = write_report(
        tmp_path / "odd.html", leaderboard(metrics), decision, metrics, title="a <title> & more"
    )
    raw = path.read_text(encoding="utf-8")
    assert ODD_NAME not in raw
    assert "<script>" not in raw and "<b>evil" not in raw
    assert "&lt;b&gt;evil&lt;/b&gt; &amp; &quot;co&quot; $x$" in raw
    page = parse(path)
    text = " ".join(page.text)
    assert f"Promote {ODD_NAME}" in text  # the parser unescapes: the name reads as written
    assert "a <title> & more" in text
    assert "script" not in page.tags and "b" not in page.tags


def test_the_page_is_deterministic_and_dated_only_when_asked(tmp_path):
    first, _ = report(tmp_path / "one")
    second, _ = report(tmp_path / "two")
    assert first.read_bytes() == second.read_bytes()
    assert "generated" not in first.read_text()
    dated, _ = report(tmp_path / "three", generated_at="2025-01-02T03:04:05Z", subtitle="run 7")
    text = " ".join(parse(dated).text)
    assert "run 7 · generated 2025-01-02T03:04:05Z" in text


def test_a_held_decision_says_so(tmp_path):
    path, decision = report(tmp_path, champion_correct=380)
    assert not decision.promote
    text = " ".join(parse(path).text)
    assert "Do not promote: minilm-full won but did not beat the champion" in text
    assert "does not clear the margin 0" in text
    assert "champion" in text and BASELINE in text and CHAMPION in decision.roles


def test_rewriting_replaces_its_own_plots_and_leaves_other_files(tmp_path):
    path, _ = report(tmp_path)
    assert (tmp_path / "report-confusion-banking77.png").exists()
    mine = tmp_path / "report-notes.png"
    mine.write_bytes(PNG_SIGNATURE)
    metrics = {"gen-a": {"scenarios": {"qa": {"accuracy": {"token_f1": 0.5}}}}}
    write_report(path, leaderboard(metrics), decide(metrics, {}, GateSettings()), metrics)
    assert [f.name for f in report_plots(path)] == ["report-leaderboard.png"]
    assert mine.exists()


@pytest.mark.parametrize(("labels", "cells_with_counts"), [(5, 10), (77, 0)])
def test_the_confusion_matrix_shows_counts_only_while_they_fit(labels, cells_with_counts):
    confusion = metrics_json("m", 0.8, labels=labels)["scenarios"]["banking77"]["confusion"]
    figure = confusion_figure(confusion["labels"], confusion["matrix"], "m on banking77")
    (ax,) = [a for a in figure.axes if a.get_title()]
    assert len(ax.texts) == cells_with_counts  # the non-zero cells: 2 per label
    assert len(ax.get_xticklabels()) == labels
    assert labels > MAX_LABELS_WITH_COUNTS or cells_with_counts == 2 * labels


def test_a_malformed_confusion_matrix_is_refused_by_the_figure_and_skipped_by_the_report():
    with pytest.raises(ValueError, match=r"shape \(2, 3\) does not fit 2 labels"):
        confusion_figure(["a", "b"], [[1, 0, 0], [0, 1, 0]], "bad")
    metrics, per_example = evaluation()
    metrics["minilm-full"]["scenarios"]["banking77"]["confusion"]["matrix"] = [[1, 2]]
    decision = decide(metrics, per_example, GateSettings())
    names = [p.name for p in render_plots(leaderboard(metrics), decision, metrics)]
    assert names == ["leaderboard", "reliability", "robustness"]
