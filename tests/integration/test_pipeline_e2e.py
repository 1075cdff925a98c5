"""End to end on the local target: both DAGs with ``dag.test()``, real jobs, MLflow, endpoint.

Uses tests/configs/tiny.yaml (2 candidates, 4 examples per intent, 1 epoch, 300 evaluation
examples) so that the whole path, real fine-tuning included, runs in about two minutes.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from dag_runs import model_card, task_states, try_numbers, xcom, xcom_key

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
PRIMARY = "banking77.accuracy.accuracy"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tiny_config():
    from fmops.config import load_config

    return load_config(TINY)


@pytest.fixture(scope="module")
def endpoint(tiny_config):
    from fmops.deployment.local import LocalEndpoint

    endpoint = LocalEndpoint(tiny_config.deployment.endpoint_name)
    yield endpoint
    endpoint.delete()
    assert not endpoint.status()["router_alive"]


@pytest.fixture(scope="module")
def finetune_run(dagbag):
    run = dagbag.get_dag("fmops_finetune").test(run_conf={"config_file": str(TINY)})
    return run


def test_finetune_registers_the_winner(finetune_run, tiny_config, tmp_path):
    from fmops.registry import tracking

    states = task_states(finetune_run)
    assert finetune_run.state == "success", f"task states: {states}"
    # tiny-broken fails on purpose: its own mapped task is red, the others go on.
    assert sorted(states["await_training"]) == ["failed", "success", "success"]
    assert try_numbers(finetune_run, "await_training") == [1, 1, 1], "a job failure is final"
    assert len(states["await_evaluation"]) == 3  # two candidates and the untuned baseline
    assert states["register"] == ["success"]

    client = tracking.client(tiny_config)
    name = tiny_config.registry.model_name
    challenger = client.get_model_version_by_alias(name, tracking.CHALLENGER)
    assert challenger.tags["fmops.dag_run"] == f"fmops_finetune/{finetune_run.run_id}"
    assert challenger.tags["fmops.candidate"] in {"tiny-full", "tiny-lora"}
    card = model_card(client, challenger)
    assert "| model | mean win rate | primary |" in card
    assert "no champion is registered: the bounds alone decide" in card

    experiment = client.get_experiment_by_name(tiny_config.pipeline)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{finetune_run.run_id}'"
    )
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags["fmops.role"], []).append(run)
    assert len(by_role["parent"]) == 1
    # each model's record is on its job runs: register adds no run of its own
    assert set(by_role) == {"parent", "training", "evaluation"}, set(by_role)
    children = {r.data.tags["fmops.candidate"]: r for r in by_role["evaluation"]}
    trainings = {r.data.tags["fmops.candidate"]: r for r in by_role["training"]}
    assert set(children) == {"tiny-full", "tiny-lora", "baseline"}
    for candidate in ("tiny-full", "tiny-lora"):
        metrics = children[candidate].data.metrics
        assert 0 <= metrics["banking77.accuracy.accuracy"] <= 1
        assert metrics["banking77.examples"] == 300
        assert 0 <= metrics["banking77.calibration.ece"] <= 1
        assert "banking77.robustness.worst_drop" in metrics
        assert metrics["cost.usd_per_1k_requests"] > 0
        history = client.get_metric_history(trainings[candidate].info.run_id, "train_loss")
        assert history, f"{candidate} has no training loss curve in MLflow"
    # The winner's evaluation score is the one the registry recorded.
    winner = children[challenger.tags["fmops.candidate"]].data.metrics[PRIMARY]
    baseline = children["baseline"].data.metrics[PRIMARY]
    assert challenger.tags["fmops.metric"] == f"{PRIMARY}={winner:.4f}"
    # The evaluation report is on the parent run, and the select task links to it.
    report = client.list_artifacts(by_role["parent"][0].info.run_id, "evaluation")
    assert "evaluation/report.html" in {a.path for a in report}
    assert challenger.tags["fmops.evaluation_report"].endswith("evaluation/report.html")
    assert baseline < 1
    # The failure and its reason are in the run's record and on the model card.
    (parent,) = by_role["parent"]
    assert parent.data.params["failed_candidates"] == "tiny-broken"
    failed = client.download_artifacts(parent.info.run_id, "failed-candidates.json", str(tmp_path))
    (failure,) = json.loads(Path(failed).read_text())["failed"]
    assert failure["candidate"] == "tiny-broken" and failure["status"] == "Failed"
    assert "no_such_module" in failure["reason"]
    assert "- tiny-broken: training job" in card

    # Every job has a nested run of its own, ended with the job's status; the DAG run's run is
    # ended by close_run with the run's outcome.
    jobs = {
        (r.data.tags["fmops.role"], r.data.tags["fmops.candidate"]): r
        for r in runs
        if r.data.tags["fmops.role"] in ("training", "evaluation")
    }
    assert set(jobs) == {
        *(("training", c) for c in ("tiny-full", "tiny-lora", "tiny-broken")),
        *(("evaluation", c) for c in ("tiny-full", "tiny-lora", "baseline")),
    }
    for (role, candidate), job_run in jobs.items():
        assert job_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert job_run.data.tags["fmops.target"] == "local", (role, candidate)
        expected = "FAILED" if candidate == "tiny-broken" else "FINISHED"
        assert job_run.info.status == expected, (role, candidate)
    assert "no_such_module" in jobs["training", "tiny-broken"].data.tags["fmops.failure_reason"]
    tuned = jobs["training", "tiny-full"]
    assert tuned.data.params["method"] == "full" and tuned.data.tags["fmops.cache_hit"] == "false"
    curve = client.get_metric_history(tuned.info.run_id, "train_loss")
    assert curve and all(
        tuned.info.start_time - 60_000 <= p.timestamp <= tuned.info.end_time for p in curve
    )
    assert [p.step for p in curve] == sorted(p.step for p in curve)
    assert "validation_accuracy" in tuned.data.metrics
    scored = jobs["evaluation", "tiny-full"].data.metrics
    assert scored[PRIMARY] == children["tiny-full"].data.metrics[PRIMARY]
    # lineage: the staged data each job read, as MLflow dataset inputs
    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in tuned.inputs.dataset_inputs
    }
    assert set(inputs) == {"training", "validation"}
    assert inputs["training"].name == f"{tiny_config.pipeline}/training"
    assert inputs["training"].digest and json.loads(inputs["training"].source)["uri"]
    evaluation = jobs["evaluation", "tiny-full"]
    (evaluated,) = evaluation.inputs.dataset_inputs
    assert evaluated.dataset.name == f"{tiny_config.pipeline}/evaluation"
    # the per-example predictions, as an MLflow table
    table = client.load_table(
        experiment.experiment_id, "predictions-banking77.json", run_ids=[evaluation.info.run_id]
    )
    assert len(table) == 300 and {"input", "target", "predicted", "confidence"} <= set(table)
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["fmops.gate"] == "promoted"

    # The optimize step: the winner's graphs tested against its eager model, in the configured
    # order (int8, then fp32), the first within the margin kept, on the version and its card.
    optimized = xcom(finetune_run, "select")["optimization"]
    int8, fp32 = optimized["checks"]
    assert (int8["runtime"], fp32["runtime"]) == ("int8", "fp32")
    assert fp32["passes"] and fp32["difference"] == 0.0  # the eager model's arithmetic
    kept = "int8" if int8["passes"] else "fp32"
    assert optimized["kept"] == kept
    assert int8["passes"] == (int8["lower"] >= -0.005)  # tiny.yaml keeps the default margin
    graph = optimized["graph"]
    assert challenger.tags["fmops.serving_runtime"] == f"onnxruntime {kept} ({graph})"
    assert f"Served: **the {kept} ONNX Runtime graph `{graph}`**" in card
    assert "| eager |" in card and f"| {kept} |" in card
    assert parent.data.tags["fmops.outcome"].startswith("registered version")


def test_register_again_finds_the_same_version(finetune_run, tiny_config):
    """A retried register of the same DAG run reuses its runs and version: no duplicates."""
    from fmops.registry import registration, tracking

    client = tracking.client(tiny_config)
    name = tiny_config.registry.model_name
    versions_before = client.search_model_versions(f"name = '{name}'")
    experiment = client.get_experiment_by_name(tiny_config.pipeline)
    runs_before = client.search_runs([experiment.experiment_id])
    first = xcom(finetune_run, "register")

    again = registration.register(
        tiny_config,
        xcom(finetune_run, "load_config"),
        xcom(finetune_run, "validate_data"),
        xcom_key(finetune_run, "plan_evaluation", "trained"),
        xcom(finetune_run, "await_evaluation"),
        xcom(finetune_run, "select"),
        "fmops_finetune",
        finetune_run.run_id,
        failed=xcom_key(finetune_run, "plan_evaluation", "failed"),
    )

    assert again["version"] == first["version"]
    assert again["parent_run_id"] == first["parent_run_id"]
    assert len(client.search_model_versions(f"name = '{name}'")) == len(versions_before)
    assert len(client.search_runs([experiment.experiment_id])) == len(runs_before)


def test_deploy_serves_the_registered_version(finetune_run, dagbag, tiny_config, endpoint):
    from fmops.registry import review, tracking

    assert finetune_run.state == "success"
    run = dagbag.get_dag("fmops_deploy").test(run_conf={"config_file": str(TINY)})
    assert run.state == "success", f"task states: {task_states(run)}"

    client = tracking.client(tiny_config)
    name = tiny_config.registry.model_name
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION)
    challenger = client.get_model_version_by_alias(name, tracking.CHALLENGER)
    assert champion.version == challenger.version
    assert champion.tags[review.APPROVAL_TAG] == "approved"

    labels = set(json.loads((PROJECT_ROOT / "include/data/banking77/categories.json").read_text()))
    status, body = endpoint.invoke(
        {"inputs": ["I lost my card, please block it", "What is the exchange rate for euros?"]}
    )
    assert status == 200, body
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert prediction["label"] in labels
        assert 0 < prediction["score"] <= 1

    state = endpoint.status()
    serving = [v for v in state["variants"].values() if v["weight"] == 100]
    assert [v["version"] for v in serving] == [str(champion.version)]
    # The variant serves the weights downloaded from the registry, not the job's folder: the
    # graph select kept, on ONNX Runtime (serving.json), its digest checked with the others'.
    model_dir = json.loads(endpoint.state_file.read_text())["variants"]
    assert all("/models/" in v["model_dir"] for v in model_dir.values())
    (live,) = serving
    served = json.loads((Path(live["model_dir"]) / "serving.json").read_text())
    assert served["graph"] == champion.tags["fmops.serving_runtime"].split("(")[1].rstrip(")")
    assert (Path(live["model_dir"]) / served["graph"]).is_file()
    with urllib.request.urlopen(f"http://127.0.0.1:{live['port']}/ping", timeout=10) as answer:
        assert json.loads(answer.read())["runtime"] == "onnxruntime"

    for bad, expected in (
        (b"{not json", 400),
        (b'{"inputs": []}', 400),
        (b'{"text": "hello"}', 400),
        (b'{"inputs": [42]}', 400),
        (b"x" * (300 * 1024), 413),
    ):
        status, body = endpoint.invoke(bad)
        assert status == expected, (bad[:40], status, body)
        assert body.get("error"), body
    status, _ = endpoint.invoke({"inputs": ["still serving after bad requests"]})
    assert status == 200


def test_a_rerun_that_does_not_beat_the_champion_registers_nothing(
    finetune_run, dagbag, tiny_config, endpoint
):
    """After the deploy, the champion exists: a second run on the same data reuses the cached
    training jobs, evaluates the champion beside them on the same examples, and the paired
    bootstrap finds no real difference: nothing is registered and fmops_deploy is not due."""
    from fmops.registry import tracking

    client = tracking.client(tiny_config)
    name = tiny_config.registry.model_name
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION)
    versions_before = len(client.search_model_versions(f"name = '{name}'"))

    run = dagbag.get_dag("fmops_finetune").test(run_conf={"config_file": str(TINY)})

    states = task_states(run)
    assert run.state == "success", f"task states: {states}"
    assert states["register"] == ["skipped"]
    assert len(states["await_evaluation"]) == 4  # two candidates, the baseline, the champion
    decision = xcom(run, "select")
    assert decision["promote"] is False
    roles = {r["candidate"]: r["role"] for r in decision["leaderboard"]}
    assert roles["champion"] == "champion"
    champion_check = decision["gate"]["champion"]
    assert champion_check["against"] == "champion" and not champion_check["cleared"]
    assert any("does not clear the margin" in r for r in decision["reasons"])
    assert len(client.search_model_versions(f"name = '{name}'")) == versions_before
    assert client.get_model_version_by_alias(name, tracking.CHAMPION).version == champion.version

    # The declined run is a finished MLflow run with the decision, and its cached jobs' runs
    # say which job they reused and carry that job's curve.
    experiment = client.get_experiment_by_name(tiny_config.pipeline)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run.run_id}'"
    )
    (parent,) = [r for r in runs if r.data.tags["fmops.role"] == "parent"]
    assert parent.info.status == "FINISHED" and parent.data.tags["fmops.gate"] == "declined"
    assert parent.data.params["promoted"] == "False"
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (cached,) = [
        r
        for r in runs
        if r.data.tags["fmops.role"] == "training" and r.data.tags["fmops.candidate"] == "tiny-full"
    ]
    assert cached.data.tags["fmops.cache_hit"] == "true"
    assert cached.data.tags["fmops.reused_job"] == cached.data.tags["fmops.job_name"]
    assert client.get_metric_history(cached.info.run_id, "train_loss")


def test_bad_dataset_stops_at_validation(dagbag, tmp_path, tiny_config):
    """Unknown labels and empty texts fail validate_data once, start no job, register nothing."""
    import pandas as pd

    from fmops.paths import state_dir
    from fmops.registry import tracking

    frame = pd.read_csv(
        PROJECT_ROOT / "include/data/banking77/train.csv", dtype=str, keep_default_na=False
    )
    frame.loc[0, "category"] = "not_an_intent"
    frame.loc[1, "text"] = "   "
    frame.loc[2, "text"] = ""
    bad_csv = tmp_path / "bad-train.csv"
    frame.to_csv(bad_csv, index=False)
    raw = yaml.safe_load(TINY.read_text())
    raw["pipeline"] = "fmops-e2e-bad"
    raw["registry"]["model_name"] = "fmops-e2e-bad-classifier"
    raw["data"]["train"] = str(bad_csv)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    jobs_dir = state_dir() / "jobs"
    jobs_before = set(jobs_dir.iterdir()) if jobs_dir.exists() else set()

    run = dagbag.get_dag("fmops_finetune").test(run_conf={"config_file": str(config_file)})

    states = task_states(run)
    assert run.state == "failed"
    assert states["validate_data"] == ["failed"]
    assert try_numbers(run, "validate_data") == [1], "a data failure must not be retried"
    assert states["load_config"] == ["success"]
    for task_id in ("plan_jobs", "register"):
        assert states[task_id] == ["upstream_failed"], states
    jobs_after = set(jobs_dir.iterdir()) if jobs_dir.exists() else set()
    assert jobs_after == jobs_before, "no job may start when the data is bad"
    client = tracking.client()
    assert client.search_model_versions("name = 'fmops-e2e-bad-classifier'") == []
    # The readable report went to the run's MLflow parent run, and the task links to it.
    experiment = client.get_experiment_by_name("fmops-e2e-bad")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run.run_id}'"
    )
    summary = client.download_artifacts(parent.info.run_id, "validation/summary.txt", str(tmp_path))
    text = Path(summary).read_text()
    assert "data validation FAILED" in text
    assert "train/labels: expect_column_values_to_be_in_set(category)" in text
    assert "train/completeness: expect_column_values_to_not_match_regex(text)" in text
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "validation")}
    assert {"validation/validation.json", "validation/data_docs"} <= artifacts
    url = xcom_key(run, "validate_data", "validation_report_url")
    assert url.endswith(f"runs/{parent.info.run_id}/artifacts/validation/data_docs/index.html")
    # close_run (all done) ended the DAG run's MLflow run FAILED, and failed with it
    assert states["close_run"] == ["failed"]
    ended = client.get_run(parent.info.run_id)
    assert ended.info.status == "FAILED" and "failed" in ended.data.tags["fmops.outcome"]
