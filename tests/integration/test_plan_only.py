"""The "Plan only" trigger Param: fmops_finetune writes the plan to load_config's log and XCom
and stops; nothing is validated, staged, trained or registered."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"

pytestmark = pytest.mark.e2e


def test_plan_only_plans_and_stops(dagbag):
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    from fmops.jobs.backend import get_backend

    jobs_before = get_backend("local").list_training_jobs()["TrainingJobSummaries"]
    dag = dagbag.get_dag("fmops_finetune")
    # dag.test() writes run_conf into the DAG object's params, and the session's dagbag is
    # shared: without the restore, every later dag.test() of this DAG would run "plan only".
    params = copy.deepcopy(dag.params)
    try:
        run = dag.test(run_conf={"config_file": str(TINY), "plan_only": True})
    finally:
        dag.params = params
    with create_session() as session:
        states = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
        load_config = (
            session.query(TaskInstance)
            .filter_by(dag_id="fmops_finetune", run_id=run.run_id, task_id="load_config")
            .one()
        )
        plan = load_config.xcom_pull(task_ids="load_config", key="plan", session=session)
    assert states["load_config"] == "success"
    assert states["validate_data"] == "skipped"
    assert states["register"] == "skipped"
    assert {states[t] for t in ("plan_jobs", "select")} == {"skipped"}

    candidates = [job["candidate"] for job in plan["training"]]
    assert candidates == ["tiny-full", "tiny-lora", "tiny-broken"]
    assert all(job["request"]["AlgorithmSpecification"] for job in plan["training"])
    jobs_after = get_backend("local").list_training_jobs()["TrainingJobSummaries"]
    assert len(jobs_after) == len(jobs_before)  # nothing was started
