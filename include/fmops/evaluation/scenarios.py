"""Benchmark scenarios: what ``evaluation.scenarios`` declares, staged for the evaluation job.

The evaluation channel that ``validate_data`` stages holds the pipeline's held-out set (the
``heldout`` scenario, validated with Great Expectations) and, in a subfolder per scenario, every
other scenario's data, plus ``scenarios.json``: each scenario with its task, columns, sample and
families filled in from the defaults, which is what ``include/scripts/evaluate.py`` reads. The
files' digests are part of the staged data's digest, so a changed scenario file is staged anew
and a cached evaluation is never reused across different data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fmops.config import HELDOUT, PipelineConfig, ScenarioConfig
from fmops.data.loading import DataError, file_digest, load_table
from fmops.kinds import kind_of

SPEC_FILE = "scenarios.json"
# Scenario tasks that score a generative model (its answers, its options' log-likelihoods, its
# perplexity on reference answers); a classifier skips them, and they read records as chats.
GENERATIVE_TASKS = ("generation", "multiple_choice", "perplexity")
# The main score of each scenario task, as evaluate.py reports it (``main_score``).
MAIN_SCORE = {
    "classification": "accuracy",
    "generation": "token_f1",
    "multiple_choice": "accuracy",
    "perplexity": "nll_per_token",
}
# The families each scenario task can measure (calibration needs a confidence; perplexity is a
# likelihood, not an answer that perturbations could change).
TASK_FAMILIES = {
    "classification": ("accuracy", "calibration", "robustness", "fairness"),
    "generation": ("accuracy", "calibration", "robustness", "fairness"),
    "multiple_choice": ("accuracy", "calibration", "robustness", "fairness"),
    "perplexity": ("accuracy",),
}


class ScenarioError(DataError):
    """A scenario's data cannot be evaluated as declared; the message names the fix."""


def task_of(config: PipelineConfig, scenario: ScenarioConfig) -> str:
    return scenario.task or kind_of(config).scenario_task


def spec(config: PipelineConfig, scenario: ScenarioConfig) -> dict[str, Any]:
    """The scenario as evaluate.py reads it, with every default filled in."""
    data = config.data
    task = task_of(config, scenario)
    heldout = scenario.data == HELDOUT
    kind = kind_of(config)
    if heldout and task not in (kind.scenario_task, "perplexity" if kind.generative else ""):
        raise ScenarioError(
            f"evaluation.scenarios {scenario.name}: the held-out data is {data.task} data, so "
            f"the scenario's task is {kind.scenario_task}, not {task}; remove task or point "
            "data at another file"
        )
    if heldout:
        columns = kind.heldout_columns(data)
    elif task == "classification":
        columns = ("text", "label")
    elif task == "multiple_choice":
        columns = ("question", "answer")
    else:
        columns = ("prompt", "completion")
    families = [f for f in scenario.families if f in TASK_FAMILIES[task]]
    return {
        "name": scenario.name,
        "task": task,
        "folder": "." if heldout else scenario.name,
        "input_column": scenario.input_column or columns[0],
        "target_column": scenario.target_column or columns[1],
        "messages_column": scenario.messages_column or data.messages_column,
        **({"choices_column": scenario.choices_column} if task == "multiple_choice" else {}),
        "sample_size": scenario.sample_size,
        "seed": scenario.seed,
        "families": families,
    }


def recipe(config: PipelineConfig) -> dict[str, Any]:
    """What the staged evaluation channel depends on, for the staged data's digest."""
    return {
        "scenarios": [spec(config, s) for s in config.evaluation.scenarios],
        "files": {
            s.name: file_digest(s.data) for s in config.evaluation.scenarios if s.data != HELDOUT
        },
    }


def _labels(config: PipelineConfig, scenario: ScenarioConfig) -> list[str]:
    if isinstance(scenario.labels, list):
        return list(scenario.labels)
    if isinstance(scenario.labels, str):
        from fmops.paths import resolve_path

        return list(json.loads(resolve_path(scenario.labels).read_text()))
    return config.data.label_set()


def write(config: PipelineConfig, evaluation_dir: Path) -> list[dict[str, Any]]:
    """Write each non-held-out scenario's data and ``scenarios.json`` into the channel folder."""
    specs = [spec(config, s) for s in config.evaluation.scenarios]
    for scenario, item in zip(config.evaluation.scenarios, specs, strict=True):
        if scenario.data == HELDOUT:
            continue
        frame = load_table(scenario.data, config.data)  # the config's data limits bound it too
        where = f"evaluation.scenarios {scenario.name} ({scenario.data})"
        if frame.empty:
            raise ScenarioError(f"{where}: the file has no rows")
        needed = [item["input_column"], item["target_column"]]
        if item["task"] in GENERATIVE_TASKS and item["messages_column"] in frame.columns:
            needed = [item["messages_column"]]
        if item["task"] == "multiple_choice":
            needed.append(item["choices_column"])
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ScenarioError(
                f"{where}: no column(s) {missing}; it has {list(frame.columns)}. Set the "
                "scenario's input_column / target_column (or messages_column) to its columns"
            )
        folder = evaluation_dir / scenario.name
        folder.mkdir(parents=True, exist_ok=True)
        if item["task"] == "classification":
            labels = _labels(config, scenario)
            unknown = sorted(set(frame[item["target_column"]].astype(str)) - set(labels))
            if unknown:
                raise ScenarioError(
                    f"{where}: labels outside the scenario's label set: {unknown[:10]}; set the "
                    "scenario's labels (a list or a JSON file) to the labels its data uses"
                )
            frame[needed].to_csv(folder / "data.csv", index=False)
            (folder / "labels.json").write_text(json.dumps(labels))
        else:
            frame.to_json(folder / "data.jsonl", orient="records", lines=True, force_ascii=False)
    (evaluation_dir / SPEC_FILE).write_text(json.dumps(specs, indent=1))
    return specs
