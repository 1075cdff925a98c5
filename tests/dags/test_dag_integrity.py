"""DAG integrity: every DAG file imports cleanly, fast, and follows the project's conventions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
# boto3 is not in the list: creating any Asset makes Airflow load every provider's asset URI
# handlers, and the amazon provider's S3 handler imports boto3. That cost is Airflow's, the same
# for an empty DAG with one Asset (benchmarks/ measures it against such a baseline).
HEAVY_MODULES = [
    "torch",
    "transformers",
    "peft",
    "mlflow",
    "great_expectations",
    "sagemaker",
    "pandas",
    "sklearn",
]


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, f"DAG import errors: {dagbag.import_errors}"
    assert {p.stem for p in DAG_FILES} <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_conventions(dagbag, dag_file):
    dag = dagbag.get_dag(dag_file.stem)
    assert dag is not None, f"{dag_file.name} must define a DAG whose dag_id is {dag_file.stem!r}"
    assert dag.tags, f"{dag.dag_id} ({dag_file.name}) has no tags"
    assert "fmops" in dag.tags, f"{dag.dag_id} ({dag_file.name}) lacks the fmops tag"
    assert dag.doc_md and dag.doc_md.strip(), f"{dag.dag_id} ({dag_file.name}) has no doc_md"
    assert dag.catchup is False, f"{dag.dag_id} ({dag_file.name}) must not catch up"
    assert dag.default_args.get("retries", 0) >= 1, f"{dag.dag_id} ({dag_file.name}): no retries"
    from fmops.airflow.notify import failure_notifier

    assert dag.default_args.get("on_failure_callback") is failure_notifier, (
        f"{dag.dag_id} ({dag_file.name}): failed tasks must notify (fmops.airflow.notify)"
    )
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("title") and param.description, (
            f"{dag.dag_id} ({dag_file.name}): trigger param {name!r} needs a title and description"
        )
        assert "type" in param.schema, f"{dag.dag_id}: trigger param {name!r} has no type"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_module(dag_file):
    """Parsing a DAG file must not import ML libraries (they take seconds to import)."""
    probe = (
        "import json, runpy, sys; runpy.run_path(sys.argv[1]); "
        f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(dag_file)], capture_output=True, text=True, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{dag_file.name} imports {loaded} at parse time; import them in tasks"


def test_finetune_pipeline_shape(dagbag):
    dag = dagbag.get_dag("fmops_finetune")
    order = [
        "load_config",
        "validate_data",
        "plan_jobs",
        "submit_training",
        "await_training",
        "plan_evaluation",
        "submit_evaluation",
        "await_evaluation",
        "select",
        "register",
    ]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (
            f"fmops_finetune: {upstream} must feed {downstream}"
        )
    outlets = [o.uri.rstrip("/") for o in dag.get_task("register").outlets]
    assert outlets == ["fmops://registered-models"]
    # One task submits a phase's jobs (they start together); one wait per candidate.
    for phase in ("training", "evaluation"):
        assert not dag.get_task(f"submit_{phase}").is_mapped, f"submit_{phase} must not be mapped"
        assert dag.get_task(f"await_{phase}").is_mapped, f"await_{phase} must be mapped"


def test_deploy_pipeline_shape(dagbag):
    dag = dagbag.get_dag("fmops_deploy")
    order = ["resolve_candidate", "await_approval", "deploy", "smoke_test", "promote"]
    for upstream, downstream in zip(order, order[1:], strict=False):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (
            f"fmops_deploy: {upstream} must feed {downstream}"
        )
    rollback = dag.get_task("rollback")
    assert rollback.trigger_rule == "all_done"
    assert rollback.upstream_task_ids == {"deploy", "smoke_test"}
    # The DAG run's MLflow run is ended by the only leaf, whatever happened upstream.
    close_run = dag.get_task("close_run")
    assert close_run.trigger_rule == "all_done"
    assert close_run.upstream_task_ids == {"promote", "rollback"}
    assert [t.task_id for t in dag.leaves] == ["close_run"]
    # A deferrable wait on the review tag: no worker slot is held while a person decides.
    assert dag.get_task("await_approval").task_type == "AwaitApprovalOperator"


def test_trigger_form_rejects_bad_values(dagbag):
    from airflow.sdk.definitions.param import ParamValidationError

    params = dagbag.get_dag("fmops_finetune").params
    with pytest.raises(ParamValidationError):
        params.get_param("target").resolve("kubernetes")
    with pytest.raises(ParamValidationError):
        params.get_param("models").resolve("minilm-full")  # a string, not a list
    assert params.get_param("target").resolve("local") == "local"
    deploy = dagbag.get_dag("fmops_deploy").params
    with pytest.raises(ParamValidationError):
        deploy.get_param("version").resolve("latest")


def test_validate_data_and_select_link_to_their_reports(dagbag):
    import importlib.util

    dag = dagbag.get_dag("fmops_finetune")
    task = dag.get_task("validate_data")
    assert [link.name for link in task.operator_extra_links] == ["Validation report"]
    select = dag.get_task("select")
    assert [link.name for link in select.operator_extra_links] == ["Evaluation report"]
    plugin_file = DAGS_DIR.parent / "plugins" / "fmops_plugin.py"
    spec = importlib.util.spec_from_file_location("fmops_plugin", plugin_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [link.name for link in module.FmopsPlugin.operator_extra_links]
    assert names == ["Validation report", "Evaluation report"], (
        "the plugin must register the links for the UI"
    )
