"""fmops_finetune's cron-or-asset schedule, the asset lineage, and the trigger forms' schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
FINETUNE_FILE = PROJECT_ROOT / "dags" / "fmops_finetune.py"

# Parses the DAG file in a fresh interpreter (the schedule is read at parse time) and prints
# what the scheduler sees.
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[2])
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("fmops_finetune")
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}}
if dag is not None:
    t = dag.timetable
    out["timetable"] = type(t).__name__
    out["cron"] = getattr(getattr(t, "timetable", t), "expression", None)
    out["timezone"] = str(getattr(getattr(t, "timetable", t), "timezone", None))
    out["default_config"] = dag.params.get_param("config_file").value
print(json.dumps(out))
"""


def _assets(condition) -> list:
    """The assets of an SDK asset condition (an Asset, or AssetAll/AssetAny of them)."""
    if hasattr(condition, "objects"):
        return [a for item in condition.objects for a in _assets(item)]
    return [condition]


def _parse_with(tmp_path, **env: str) -> dict:
    import os

    environ = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), **env}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(FINETUNE_FILE), str(PROJECT_ROOT / "include")],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_finetune_runs_on_cron_or_on_a_training_data_update(dagbag):
    from fmops.airflow.schedule import finetune_schedule

    dag = dagbag.get_dag("fmops_finetune")
    settings = finetune_schedule()
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert settings.cron == "0 3 * * 1"
    assert dag.timetable.timetable.expression == "0 3 * * 1"
    assets = [(a.name, a.uri) for a in _assets(dag.timetable.asset_condition)]
    assert assets == [("fmops_training_data", "fmops://datasets/banking77")]
    assert dag.params.get_param("config_file").value == "include/configs/local.yaml"


def test_the_environment_overrides_the_schedule_file(tmp_path):
    only_asset = _parse_with(tmp_path, FMOPS_FINETUNE_CRON="")
    assert only_asset["errors"] == {}
    assert only_asset["timetable"] == "AssetTriggeredTimetable"

    only_cron = _parse_with(
        tmp_path,
        FMOPS_FINETUNE_DATASET_ASSET="",
        FMOPS_FINETUNE_CRON="30 1 * * *",
        FMOPS_FINETUNE_TIMEZONE="Europe/Berlin",
        FMOPS_FINETUNE_CONFIG="tests/configs/tiny.yaml",
    )
    assert only_cron["errors"] == {}
    assert only_cron["timetable"] == "CronTriggerTimetable"
    assert (only_cron["cron"], only_cron["timezone"]) == ("30 1 * * *", "Europe/Berlin")
    assert only_cron["default_config"] == "tests/configs/tiny.yaml"


def test_a_bad_schedule_is_an_import_error_that_names_the_setting(tmp_path):
    broken = _parse_with(tmp_path, FMOPS_FINETUNE_CRON="every monday")
    [message] = broken["errors"].values()
    assert "FMOPS_FINETUNE_CRON" in message and "five-field cron expression" in message

    settings = tmp_path / "schedule.toml"
    settings.write_text('[fmops_finetune]\ncron = "0 3 * * 1"\nwhen = "mondays"\n')
    unknown = _parse_with(tmp_path, FMOPS_SCHEDULE_FILE=str(settings))
    [message] = unknown["errors"].values()
    assert "unknown key(s) ['when']" in message and str(settings) in message


def test_schedule_settings_errors_name_the_fix(tmp_path, monkeypatch):
    from fmops.airflow.schedule import ScheduleError, finetune_schedule

    settings = tmp_path / "schedule.toml"
    monkeypatch.setenv("FMOPS_SCHEDULE_FILE", str(settings))
    with pytest.raises(ScheduleError, match="cannot read the schedule settings"):
        finetune_schedule()
    settings.write_text('[fmops_finetune]\nconfig_file = ""\n')
    with pytest.raises(ScheduleError, match="config_file is empty"):
        finetune_schedule()
    settings.write_text('[fmops_finetune]\ncron = 3\nconfig_file = "x.yaml"\n')
    with pytest.raises(ScheduleError, match="cron must be a string"):
        finetune_schedule()
    monkeypatch.setenv("FMOPS_FINETUNE_TIMEZONE", "Mars/Olympus")
    settings.write_text('[fmops_finetune]\ncron = "0 3 * * 1"\nconfig_file = "x.yaml"\n')
    with pytest.raises(ScheduleError, match="IANA time zone"):
        finetune_schedule().timetable()


def test_the_registered_model_asset_links_finetune_to_deploy(dagbag):
    finetune, deploy = dagbag.get_dag("fmops_finetune"), dagbag.get_dag("fmops_deploy")
    [outlet] = finetune.get_task("register").outlets
    [scheduled_by] = _assets(deploy.timetable.asset_condition)
    assert (outlet.name, outlet.uri, outlet.group) == (
        scheduled_by.name,
        scheduled_by.uri,
        "model",
    )


@pytest.mark.parametrize("dag_id", ["fmops_finetune", "fmops_deploy"])
def test_drop_downs_name_every_choice_and_optional_fields_are_not_required(dagbag, dag_id):
    params = dagbag.get_dag(dag_id).params
    for name in params:
        schema = params.get_param(name).schema
        if "enum" in schema:
            # The UI shows values_display[String(value)]; without it the empty choice reads "null".
            shown = schema.get("values_display", {})
            assert {str(v).replace("None", "null") for v in schema["enum"]} == set(shown), name
        if params.get_param(name).value is None:
            # A type without "null" makes the UI mark the field required and refuse it empty.
            assert "null" in schema["type"], f"{dag_id}.{name} has no value but is required"


@pytest.mark.parametrize("dag_id", ["fmops_finetune", "fmops_deploy"])
def test_every_param_is_in_a_section_and_every_task_has_a_display_name(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)
    sections = {name: dag.params.get_param(name).schema.get("section") for name in dag.params}
    assert all(sections.values()), f"{dag_id}: params without a section: {sections}"
    assert "approval" in sections, f"{dag_id} has no approval override"
    assert dag.dag_display_name != dag_id
    for task in dag.tasks:
        assert task.task_display_name != task.task_id, f"{dag_id}.{task.task_id}: no display name"


def test_the_config_field_suggests_the_shipped_configs(dagbag):
    from fmops.paths import CONFIGS_DIR

    shipped = sorted(f"include/configs/{p.name}" for p in CONFIGS_DIR.glob("*.yaml"))
    for dag_id in ("fmops_finetune", "fmops_deploy"):
        schema = dagbag.get_dag(dag_id).params.get_param("config_file").schema
        assert schema["examples"] == shipped
        assert "include/configs/local.yaml" in shipped


@pytest.mark.parametrize(
    ("dag_id", "name", "bad"),
    [
        ("fmops_finetune", "config_file", "include/configs/local.json"),
        ("fmops_finetune", "config_file", ""),
        ("fmops_finetune", "models", ["minilm full"]),
        ("fmops_finetune", "models", ["minilm-full", "minilm-full"]),
        ("fmops_finetune", "target", "kubernetes"),
        ("fmops_finetune", "force_rerun", "yes"),
        ("fmops_finetune", "plan_only", 1),
        ("fmops_finetune", "approval", "always"),
        ("fmops_deploy", "config_file", "local.txt"),
        ("fmops_deploy", "approval", "yes"),
        ("fmops_deploy", "version", "latest"),
        ("fmops_deploy", "model_name", "-leading-dash"),
    ],
)
def test_the_form_schema_refuses_bad_values(dagbag, dag_id, name, bad):
    from airflow.sdk.definitions.param import ParamValidationError

    with pytest.raises(ParamValidationError):
        dagbag.get_dag(dag_id).params.get_param(name).resolve(bad)


def test_the_form_schema_accepts_good_values(dagbag):
    finetune = dagbag.get_dag("fmops_finetune").params
    assert finetune.get_param("models").resolve(["minilm-full", "minilm-lora"])
    # Optional fields accept the form's empty value (null): "every candidate", "the config's".
    for name in ("models", "target", "approval"):
        assert finetune.get_param(name).resolve(None) is None
    assert finetune.get_param("models").resolve([]) == []
    assert finetune.get_param("approval").resolve("auto") == "auto"
    assert finetune.get_param("approval").resolve(None) is None
    assert finetune.get_param("config_file").resolve("tests/configs/tiny.yaml")
    assert dagbag.get_dag("fmops_deploy").params.get_param("version").resolve("12") == "12"


def test_the_approval_override_applies_to_the_config_and_auto_is_local_only():
    from fmops.config import ConfigError, load_config

    local = PROJECT_ROOT / "include" / "configs" / "local.yaml"
    assert load_config(local).deployment.approval == "auto"
    assert load_config(local, approval="manual").deployment.approval == "manual"
    example = PROJECT_ROOT / "include" / "configs" / "sagemaker.example.yaml"
    assert load_config(example, approval="manual").deployment.approval == "manual"
    with pytest.raises(ConfigError, match="local target only"):
        load_config(example, approval="auto")
