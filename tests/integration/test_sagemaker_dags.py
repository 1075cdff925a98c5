"""``fmops_finetune`` and ``fmops_deploy``, whole DAGs under ``dag.test()``, on the sagemaker
target against a moto server on 127.0.0.1 (S3, SageMaker, CloudWatch, CloudWatch Logs,
Application Auto Scaling).

moto runs no containers, so tests/sagemaker_containers.py plays them: each training and
processing job that moto records runs its request's script (with this virtualenv's Python, not
the request's image) through fmops' local executor on inputs downloaded from moto S3, its log
lines go to moto CloudWatch Logs and its outputs back to moto S3, and the endpoint's
InvokeEndpoint is answered by the model its endpoint config points at. Everything the DAGs do is
otherwise real: the amazon provider's hooks through the ``aws_default`` connection, Airflow's
deferrals (inline under ``dag.test()``), MLflow (SQLite under FMOPS_HOME), the training.

Config: tests/configs/tiny.yaml with two candidates, ``tiny-full`` and ``tiny-broken`` (which
fails on purpose), a smaller evaluation set, and a ``sagemaker:`` block (network isolation on,
the default). The endpoint type is pinned to ml.g4dn.xlarge: moto's CreateEndpointConfig refuses
current GPU types such as ml.g5.*.

Out of scope: a second deployment of the endpoint (a blue/green UpdateEndpoint): moto has no
UpdateEndpoint (it answers HTTP 500), so updates are tested with botocore's Stubber in
tests/unit/test_sagemaker_endpoints.py. StopTrainingJob likewise (moto answers HTTP 500).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from dag_runs import model_card
from moto_server import aws_env_module_fixture, moto_server_fixture  # noqa: F401
from sagemaker_containers import SageMakerContainers

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TINY = PROJECT_ROOT / "tests" / "configs" / "tiny.yaml"
BUCKET = "fmops-sagemaker-dags"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/fmops-e2e-execution"
PIPELINE = "fmops-sagemaker-e2e"
MODEL_NAME = "fmops-sagemaker-e2e-classifier"
ENDPOINT = "fmops-sm-e2e"
CANDIDATES = ("tiny-full", "tiny-broken")
EVALUATION_EXAMPLES = 100

pytestmark = pytest.mark.e2e


class _Tee(io.TextIOBase):
    """Writes to a file and to the stream it stands in for: the DAG run's log, kept."""

    def __init__(self, file: io.TextIOBase, stream: Any):
        self.file, self.stream = file, stream

    def write(self, text: str) -> int:
        self.file.write(text)
        self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.file.flush()
        self.stream.flush()


def _run_dag(dagbag: Any, dag_id: str, config_file: Path, log_file: Path) -> tuple[Any, str]:
    """``dag.test()`` of one DAG run; its output (the task logs under ``dag.test()``, which
    writes no per-task log files) is kept in ``log_file`` and returned with the run."""
    with log_file.open("w") as handle:
        out, err = _Tee(handle, sys.stdout), _Tee(handle, sys.stderr)
        with redirect_stdout(out), redirect_stderr(err):
            # plan_only is explicit: a "Plan only" run earlier in the session (test_plan_only)
            # must not carry over to this one through the shared DAG.
            conf = {"config_file": str(config_file), "plan_only": False}
            if dag_id != "fmops_finetune":
                conf.pop("plan_only")
            run = dagbag.get_dag(dag_id).test(run_conf=conf)
    return run, log_file.read_text()


def _states(run: Any) -> dict[str, list[str]]:
    from airflow.utils.session import create_session

    states: dict[str, list[str]] = {}
    with create_session() as session:
        for ti in sorted(run.get_task_instances(session=session), key=lambda t: t.map_index):
            states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def _try_numbers(run: Any, task_id: str) -> list[int]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            ti.try_number for ti in run.get_task_instances(session=session) if ti.task_id == task_id
        ]


def _xcom(run: Any, task_id: str, key: str = "return_value") -> Any:
    """A task's XCom (a list by map index for a mapped task; failed instances left out)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=run.run_id, key=key, task_ids=task_id, dag_ids=run.dag_id)
    with create_session() as session:
        rows = session.scalars(query).all()
        values = {row.map_index: XComModel.deserialize_value(row) for row in rows}
    return values[-1] if list(values) == [-1] else [values[i] for i in sorted(values)]


def _client(service: str, endpoint_url: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint_url, region_name=REGION)


def _read_s3(endpoint_url: str, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return _client("s3", endpoint_url).get_object(Bucket=bucket, Key=key)["Body"].read()


def _numbers(document: Any) -> list[float]:
    """Every number in a JSON document."""
    if isinstance(document, dict):
        return [n for v in document.values() for n in _numbers(v)]
    if isinstance(document, list):
        return [n for v in document for n in _numbers(v)]
    is_number = isinstance(document, int | float) and not isinstance(document, bool)
    return [float(document)] if is_number else []


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Path:
    """This module's folder in the session's state folder (beside FMOPS_HOME; kept, for a look
    after a failure): the DAG runs' logs and the emulated containers' files."""
    folder = Path(os.environ["FMOPS_HOME"]).parent / "sagemaker-dags"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def containers(aws_env_module: str, workdir: Path):
    # moto's server logs every request; the task logs are easier to read without them.
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            emulation = SageMakerContainers(
                aws_env_module, workdir / "containers", max_concurrent_jobs=2
            ).install(monkeypatch)
            yield emulation
            emulation.wait(timeout=120)  # and fail the module's teardown on an emulation error
    finally:
        werkzeug.setLevel(level)


@pytest.fixture(scope="module")
def config_file(aws_env_module: str, workdir: Path) -> Path:
    raw = yaml.safe_load(TINY.read_text())
    raw["pipeline"] = PIPELINE
    raw["target"] = "sagemaker"
    raw["candidates"] = [c for c in raw["candidates"] if c["name"] in CANDIDATES]
    raw["data"]["evaluation_sample_size"] = EVALUATION_EXAMPLES
    raw["evaluation"]["perturbation_sample_size"] = 50
    raw["registry"]["model_name"] = MODEL_NAME
    raw["deployment"]["endpoint_name"] = ENDPOINT
    raw["sagemaker"] = {
        "region": REGION,
        "role_arn": ROLE_ARN,
        "bucket": BUCKET,
        "prefix": "fmops-e2e",
        "endpoint": {
            "instance_type": "ml.g4dn.xlarge",  # moto refuses ml.g5.* endpoint configs
            "instance_count": 1,
            "poll_seconds": 1,
            "scaling": {"enabled": True, "min_instances": 1, "max_instances": 2},
        },
    }
    _client("s3", aws_env_module).create_bucket(Bucket=BUCKET)
    path = workdir / "sagemaker-e2e.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def config(config_file: Path) -> Any:
    from fmops.config import load_config

    return load_config(config_file)


@pytest.fixture(scope="module")
def finetune(dagbag, config_file, containers, workdir) -> tuple[Any, str]:
    return _run_dag(dagbag, "fmops_finetune", config_file, workdir / "fmops_finetune.log")


@pytest.fixture(scope="module")
def training_jobs(finetune, aws_env_module) -> dict[str, dict[str, Any]]:
    """DescribeTrainingJob of each candidate's job in moto, by candidate."""
    run, _ = finetune
    sagemaker = _client("sagemaker", aws_env_module)
    jobs = {}
    for handle in _xcom(run, "submit_training"):
        description = sagemaker.describe_training_job(TrainingJobName=handle["name"])
        jobs[handle["candidate"]] = description
    return jobs


@pytest.fixture(scope="module")
def deploy(finetune, dagbag, config_file, containers, workdir) -> tuple[Any, str]:
    return _run_dag(dagbag, "fmops_deploy", config_file, workdir / "fmops_deploy.log")


# -- fmops_finetune ------------------------------------------------------------------------------


def test_the_broken_candidate_fails_alone_with_its_reason(finetune, training_jobs):
    run, text = finetune
    states = _states(run)
    assert sorted(states["await_training"]) == ["failed", "success"], f"{states}\n{text[-3000:]}"
    assert _try_numbers(run, "await_training") == [1, 1], "a job failure is final"
    # The others went on: the trained candidate and the untuned baseline were evaluated.
    assert states["plan_evaluation"] == ["success"], states
    assert sorted(states["await_evaluation"]) == ["success", "success"], states
    assert states["select"] == ["success"], states

    broken = training_jobs["tiny-broken"]
    assert broken["TrainingJobStatus"] == "Failed"
    assert broken["FailureReason"].startswith("AlgorithmError: ")
    assert "no_such_module" in broken["FailureReason"]
    # SageMaker's reason is in the failed task's log.
    assert re.search(r"training job \S+ for tiny-broken ended Failed \(Failed\): Algorithm", text)
    assert training_jobs["tiny-full"]["TrainingJobStatus"] == "Completed"


def test_the_finetune_run_succeeds(finetune):
    run, text = finetune
    states = _states(run)
    assert run.state == "success", f"task states: {states}\n{text[-4000:]}"
    assert states["register"] == ["success"]


def test_training_jobs_carry_the_planned_request(finetune, training_jobs, aws_env_module):
    run, _ = finetune
    sagemaker = _client("sagemaker", aws_env_module)
    for candidate, job in training_jobs.items():
        assert job["TrainingJobName"].startswith(f"train-{candidate}-")
        # DescribeTrainingJob has no tags (on AWS as in moto): ListTags has them.
        tags = {
            t["Key"]: t["Value"]
            for t in sagemaker.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
        }
        assert tags["fmops:candidate"] == candidate
        assert tags["fmops:run_id"] == run.run_id
        assert tags["fmops:dag_id"] == "fmops_finetune"
        assert tags["fmops:pipeline"] == PIPELINE
        hps = job["HyperParameters"]
        assert hps["epochs"] == "1" and hps["batch_size"] == "32"
        assert hps["sagemaker_program"] == "train.py"
        # Network isolation (the default): the code arrives as the channel `code`.
        assert job["EnableNetworkIsolation"] is True
        assert hps["sagemaker_submit_directory"] == "/opt/ml/input/data/code/sourcedir.tar.gz"
        channels = {c["ChannelName"] for c in job["InputDataConfig"]}
        assert channels == {"train", "validation", "base_model", "code"}
        assert job["RoleArn"] == ROLE_ARN
        assert job["AlgorithmSpecification"]["TrainingImage"].startswith("763104351884.dkr.ecr.")
        metrics = {m["Name"] for m in job["AlgorithmSpecification"]["MetricDefinitions"]}
        assert "train:loss" in metrics
    assert training_jobs["tiny-full"]["HyperParameters"]["method"] == "full"
    broken = training_jobs["tiny-broken"]["HyperParameters"]
    assert broken["method"] == "lora" and "no_such_module" in broken["lora_target_modules"]
    # The job's own metrics, by the request's MetricDefinitions over its log.
    full = training_jobs["tiny-full"]
    assert {m["MetricName"] for m in full["FinalMetricDataList"]} >= {"train:loss"}
    statuses = [t["Status"] for t in full["SecondaryStatusTransitions"]]
    assert statuses[-3:] == ["Training", "Uploading", "Completed"], statuses


def test_each_sagemaker_job_has_a_run_with_the_curve_from_cloudwatch(
    finetune, training_jobs, config
):
    """The job runs on the sagemaker target: the training curve read from the job's CloudWatch
    stream (the same progress lines), at the times train.py printed them, within the job's
    lifetime; the broken candidate's run FAILED with SageMaker's reason; the console page."""
    from fmops.registry import tracking

    run, _ = finetune
    mlflow_client = tracking.client(config)
    experiment = mlflow_client.get_experiment_by_name(config.pipeline)
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run.run_id}'"
    )
    training = {
        r.data.tags["fmops.candidate"]: r for r in runs if r.data.tags["fmops.role"] == "training"
    }
    assert set(training) == set(CANDIDATES)
    full = training["tiny-full"]
    assert full.info.status == "FINISHED" and full.data.tags["fmops.target"] == "sagemaker"
    assert full.data.tags["fmops.instance_type"].startswith("ml.")
    assert "console.aws.amazon.com/sagemaker" in full.data.tags["fmops.job_console"]
    curve = mlflow_client.get_metric_history(full.info.run_id, "train_loss")
    job = training_jobs["tiny-full"]
    start = job["TrainingStartTime"].timestamp() * 1000
    end = job["TrainingEndTime"].timestamp() * 1000
    assert curve and all(start - 1000 <= p.timestamp <= end + 1000 for p in curve)
    broken = training["tiny-broken"]
    assert broken.info.status == "FAILED"
    assert "no_such_module" in broken.data.tags["fmops.failure_reason"]
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_the_model_archive_is_where_sagemaker_puts_it(training_jobs, aws_env_module):
    job = training_jobs["tiny-full"]
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    output = job["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    assert uri == f"{output}/{job['TrainingJobName']}/output/model.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(_read_s3(aws_env_module, uri))) as tar:
        names = set(tar.getnames())
    # The serving contract: the weights, the labels and the handlers, in the archive.
    assert {"code/inference.py", "label_map.json", "classifier.safetensors"} <= names
    assert "model.safetensors" in names


def test_evaluation_metrics_are_real_numbers_in_s3(finetune, aws_env_module):
    run, _ = finetune
    outcomes = {o["candidate"]: o for o in _xcom(run, "await_evaluation")}
    assert set(outcomes) == {"tiny-full", "baseline"}
    for candidate, outcome in outcomes.items():
        assert outcome["output_uri"].startswith(f"s3://{BUCKET}/")
        metrics_uri = outcome["output_uri"].rstrip("/") + "/metrics.json"
        document = json.loads(_read_s3(aws_env_module, metrics_uri))
        assert document == outcome["metrics"], candidate
        numbers = _numbers(document)
        assert numbers and all(n == n for n in numbers), candidate  # no NaN
        accuracies = [
            result["accuracy"]["accuracy"]
            for result in document["scenarios"].values()
            if "accuracy" in result
        ]
        assert accuracies and all(0 <= a <= 1 for a in accuracies), document
    assert outcomes["tiny-full"]["zero_shot"] is False
    assert outcomes["baseline"]["zero_shot"] is True
    # Each evaluation container logged to its own CloudWatch stream, as SageMaker names them.
    logs = _client("logs", aws_env_module)
    for outcome in outcomes.values():
        streams = logs.describe_log_streams(
            logGroupName="/aws/sagemaker/ProcessingJobs",
            logStreamNamePrefix=f"{outcome['job_name']}/",
        )["logStreams"]
        names = [s["logStreamName"] for s in streams]
        assert len(names) == 1 and re.fullmatch(rf"{outcome['job_name']}/algo-1-\d+", names[0])


def test_the_winner_is_registered_in_mlflow(finetune, training_jobs, config):
    from fmops.registry import review, tracking

    run, _ = finetune
    client = tracking.client(config)
    challenger = client.get_model_version_by_alias(MODEL_NAME, tracking.CHALLENGER)
    assert challenger.tags["fmops.dag_run"] == f"fmops_finetune/{run.run_id}"
    assert challenger.tags["fmops.candidate"] == "tiny-full"
    full = training_jobs["tiny-full"]
    assert challenger.tags["fmops.model_artifacts"] == full["ModelArtifacts"]["S3ModelArtifacts"]
    assert challenger.tags["fmops.training_job"] == full["TrainingJobName"]
    assert challenger.tags[review.APPROVAL_TAG] == "pending"
    assert "- tiny-broken: training job" in model_card(client, challenger)

    experiment = client.get_experiment_by_name(PIPELINE)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{run.run_id}'"
    )
    by_role: dict[str, list[Any]] = {}
    for found in runs:
        by_role.setdefault(found.data.tags["fmops.role"], []).append(found)
    (parent,) = by_role["parent"]
    assert parent.data.params["failed_candidates"] == "tiny-broken"
    assert set(by_role) == {"parent", "training", "evaluation"}, set(by_role)
    children = {r.data.tags["fmops.candidate"]: r for r in by_role["evaluation"]}
    assert set(children) == {"tiny-full", "baseline"}
    trained = {r.data.tags["fmops.candidate"]: r for r in by_role["training"]}
    # The training loss curve came from the job's CloudWatch log.
    history = client.get_metric_history(trained["tiny-full"].info.run_id, "train_loss")
    assert history and all(m.value > 0 for m in history)
    # And the job's cost, billed seconds at the planned price, from DescribeTrainingJob.
    (outcome,) = [o for o in _xcom(run, "await_training") if o]
    metrics = trained["tiny-full"].data.metrics
    assert outcome["cost"]["usd"] > 0
    assert metrics["cost_usd"] == pytest.approx(outcome["cost"]["usd"])
    assert metrics["training_seconds"] == full["TrainingTimeInSeconds"]


def test_the_training_log_reaches_the_task_log(finetune, training_jobs, aws_env_module):
    _, text = finetune
    logs = _client("logs", aws_env_module)
    lines = {}
    for candidate, job in training_jobs.items():
        name = job["TrainingJobName"]
        streams = logs.describe_log_streams(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamNamePrefix=f"{name}/"
        )["logStreams"]
        names = [s["logStreamName"] for s in streams]
        assert len(names) == 1 and re.fullmatch(rf"{name}/algo-1-\d+", names[0]), names
        events = logs.get_log_events(
            logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=names[0], startFromHead=True
        )["events"]
        lines[candidate] = [e["message"] for e in events]
        assert lines[candidate], candidate
    assert any("no_such_module" in line for line in lines["tiny-broken"])
    # tiny-full was still training when its await_training deferred: JobTrigger streamed every
    # CloudWatch line into that task's log. (tiny-broken had failed before its wait began, so
    # its task log has SageMaker's FailureReason, not the job's log.)
    name = training_jobs["tiny-full"]["TrainingJobName"]
    for line in lines["tiny-full"]:
        assert f"[{name}] {line}" in text, line
    assert any("train_loss=" in line for line in lines["tiny-full"])


def test_job_cost_is_the_billed_time_at_the_planned_price(finetune, training_jobs):
    run, _ = finetune
    plans = {p["candidate"]: p for p in _xcom(run, "plan_jobs")}
    (outcome,) = [o for o in _xcom(run, "await_training") if o]
    assert outcome["candidate"] == "tiny-full"
    job = training_jobs["tiny-full"]
    cost, plan = outcome["cost"], plans["tiny-full"]
    billed = job["BillableTimeInSeconds"]
    assert billed > 0 and billed == job["TrainingTimeInSeconds"]
    assert cost["billed_seconds"] == billed
    assert cost["usd_per_hour"] == plan["cost"]["usd_per_hour"] > 0
    assert cost["instance_type"] == job["ResourceConfig"]["InstanceType"]
    assert cost["usd"] == round(billed / 3600 * cost["usd_per_hour"] * cost["instances"], 4)
    for evaluation in _xcom(run, "await_evaluation"):
        assert evaluation["cost"]["billed_seconds"] > 0, evaluation


# -- fmops_deploy --------------------------------------------------------------------------------


def test_deploy_serves_the_registered_version(deploy, finetune, config, containers, aws_env_module):
    from fmops.registry import review, tracking
    from fmops.sagemaker.runtime import SageMakerEndpoint

    run, text = deploy
    assert run.state == "success", f"task states: {_states(run)}\n{text[-4000:]}"

    client = tracking.client(config)
    champion = client.get_model_version_by_alias(MODEL_NAME, tracking.CHAMPION)
    challenger = client.get_model_version_by_alias(MODEL_NAME, tracking.CHALLENGER)
    assert champion.version == challenger.version
    assert champion.tags[review.APPROVAL_TAG] == "approved"

    sagemaker = _client("sagemaker", aws_env_module)
    endpoint = sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == _xcom(run, "deploy")["endpoint_config"]
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint["EndpointConfigName"]
    )
    (variant,) = endpoint_config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge"
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    # (Not EnableNetworkIsolation: moto's CreateModel drops it and describes False.)
    assert model["PrimaryContainer"]["ModelDataUrl"] == champion.tags["fmops.model_artifacts"]

    alarms = _client("cloudwatch", aws_env_module).describe_alarms()["MetricAlarms"]
    ours = [
        a for a in alarms if {"Name": "EndpointName", "Value": ENDPOINT} in a.get("Dimensions", [])
    ]
    assert {a["MetricName"] for a in ours} >= {"Invocation5XXErrors", "ModelLatency"}, alarms
    targets = _client("application-autoscaling", aws_env_module).describe_scalable_targets(
        ServiceNamespace="sagemaker",
        ResourceIds=[f"endpoint/{ENDPOINT}/variant/{variant['VariantName']}"],
    )["ScalableTargets"]
    assert len(targets) == 1

    # The smoke test's requests were answered by the registered model through InvokeEndpoint.
    smoke = _xcom(run, "smoke_test")
    assert smoke["errors"] == 0 and smoke["requests"] == config.deployment.smoke_requests
    served = [status for name, status in containers.invocations if name == ENDPOINT]
    assert served.count(200) >= smoke["requests"] and 400 in served

    labels = set(json.loads((PROJECT_ROOT / "include/data/banking77/categories.json").read_text()))
    live = SageMakerEndpoint(ENDPOINT, region_name=REGION)
    status, body = live.invoke(
        {"inputs": ["I lost my card, please block it", "What is the exchange rate for euros?"]}
    )
    assert status == 200, body
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        assert prediction["label"] in labels and 0 < prediction["score"] <= 1, prediction
    status, body = live.invoke(b'{"inputs": []}')
    assert status == 400 and "non-empty" in body["message"], body


def test_the_deploy_task_resumes_from_its_trigger_at_the_first_try(deploy):
    run, text = deploy
    assert _states(run)["deploy"] == ["success"], text[-3000:]
    assert _try_numbers(run, "deploy") == [1]
    assert _xcom(run, "deploy")["action"] == "created"


# -- a generative LM: train.py, evaluate.py, and an endpoint served by TGI ----------------------

LLM_PIPELINE = "fmops-sagemaker-llm-e2e"
LLM_MODEL_NAME = "fmops-sagemaker-llm-e2e-chat"
LLM_ENDPOINT = "fmops-sm-llm-e2e"
LLM_CANDIDATE = "tiny-lm-lora"
LLM_SCENARIO = "chat"
CHAT = PROJECT_ROOT / "include" / "data" / "banking77-chat"
TGI_REPOSITORY = "huggingface-pytorch-tgi-inference"
HUB_REPO = "fmops-tests/tiny-chat-lm"


@pytest.fixture(scope="module")
def llm_hub(workdir: Path) -> Any:
    """The tiny causal LM with a chat template (tests/tiny_models.py), gated on a Hugging Face
    Hub served from 127.0.0.1 (tests/hf_hub_server.py); HF_ENDPOINT and HF_TOKEN point the run
    at it, and the Hub cache is this module's."""
    from hf_hub_server import HubServer
    from tiny_models import TINY_CHAT_TEMPLATE, save_tiny_causal_lm

    model = save_tiny_causal_lm(workdir / "hub" / "tiny-lm", chat_template=TINY_CHAT_TEMPLATE)
    with HubServer() as hub, pytest.MonkeyPatch.context() as monkeypatch:
        hub.commit = hub.add_repo(HUB_REPO, model, gated=True)
        hub.model = model
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("FMOPS_BASE_MODELS_DIR", str(workdir / "base-models"))
        yield hub


@pytest.fixture(scope="module")
def llm_config_file(aws_env_module: str, workdir: Path, llm_hub: Any) -> Path:
    """The tiny LM from the local Hub (hf:<repo>@main), tuned with LoRA on a cut of the shipped
    chats; the endpoint on ml.g4dn.xlarge (moto refuses ml.g5.*) at fp16."""
    folder = workdir / "llm"
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", 48), ("test", 16)):
        lines = (CHAT / f"{name}.jsonl").read_text().splitlines()[:rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    primary = f"{LLM_SCENARIO}.accuracy.token_f1"
    raw = {
        "pipeline": LLM_PIPELINE,
        "target": "sagemaker",
        "data": {
            "task": "instruction",
            "train": str(folder / "train.jsonl"),
            "evaluation": str(folder / "test.jsonl"),
            "messages_column": "messages",
            "prompt_template": "auto",
            "validation_fraction": 0.1,
            "seed": 7,
            "checks": {"size": {"min_rows": 10}},
        },
        "candidates": [
            {
                "name": LLM_CANDIDATE,
                "base_model": f"hf:{HUB_REPO}",
                "method": "lora",
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "hyperparameters": {
                    "epochs": 1,
                    "learning_rate": 1.0e-3,
                    "batch_size": 16,
                    "max_length": 128,
                },
            }
        ],
        "training": {"max_concurrent_jobs": 1, "max_runtime_seconds": 900},
        "evaluation": {
            "scenarios": [{"name": LLM_SCENARIO, "data": "heldout", "families": ["accuracy"]}],
            "gate": {"primary": primary, "bounds": [{"metric": primary, "min": 0.0}]},
            "baseline": True,
            "batch_size": 8,
            "max_new_tokens": 4,
            "perturbation_sample_size": 8,
        },
        "registry": {"model_name": LLM_MODEL_NAME},
        "deployment": {
            "endpoint_name": LLM_ENDPOINT,
            "approval": "auto",
            "port": 18093,
            "smoke_requests": 3,
        },
        "sagemaker": {
            "region": REGION,
            "role_arn": ROLE_ARN,
            "bucket": BUCKET,
            "prefix": "fmops-llm-e2e",
            "endpoint": {
                "instance_type": "ml.g4dn.xlarge",  # moto refuses ml.g5.* endpoint configs
                "instance_count": 1,
                "serving_precision": "fp16",  # a T4 has no bf16
                "poll_seconds": 1,
                "scaling": {"enabled": True, "min_instances": 1, "max_instances": 2},
                "llm": {"max_input_tokens": 96, "max_total_tokens": 128},
            },
        },
    }
    s3 = _client("s3", aws_env_module)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    path = folder / "sagemaker-llm-e2e.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def llm_config(llm_config_file: Path) -> Any:
    from fmops.config import load_config

    return load_config(llm_config_file)


@pytest.fixture(scope="module")
def llm_finetune(dagbag, llm_config_file, containers, workdir) -> tuple[Any, str]:
    return _run_dag(dagbag, "fmops_finetune", llm_config_file, workdir / "llm_finetune.log")


@pytest.fixture(scope="module")
def llm_deploy(llm_finetune, dagbag, llm_config_file, containers, workdir) -> tuple[Any, str]:
    return _run_dag(dagbag, "fmops_deploy", llm_config_file, workdir / "llm_deploy.log")


def test_llm_finetune_trains_with_train_py_and_registers(
    llm_finetune, llm_config, aws_env_module, llm_hub
):
    from fmops.registry import tracking

    run, text = llm_finetune
    assert run.state == "success", f"task states: {_states(run)}\n{text[-4000:]}"
    sagemaker = _client("sagemaker", aws_env_module)
    (handle,) = _xcom(run, "submit_training")
    job = sagemaker.describe_training_job(TrainingJobName=handle["name"])
    assert job["TrainingJobStatus"] == "Completed"
    # The Hub model was downloaded on this side, staged under its commit, and read from there
    # by the network-isolated job; its weights are the Hub's bytes.
    staged = f"s3://{BUCKET}/fmops-llm-e2e/models/fmops-tests-tiny-chat-lm-{llm_hub.commit[:12]}/"
    channels = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert channels["base_model"]["DataSource"]["S3DataSource"]["S3Uri"] == staged
    weights = _read_s3(aws_env_module, staged + "model.safetensors")
    assert weights == (llm_hub.model / "model.safetensors").read_bytes()
    assert llm_hub.token not in text
    hps = job["HyperParameters"]
    assert hps["sagemaker_program"] == "train.py" and hps["task"] == "instruction"
    assert hps["messages_column"] == "messages" and hps["method"] == "lora"
    # The archive is a model folder TGI reads as it is: no code/, the merged weights at the top.
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    with tarfile.open(fileobj=io.BytesIO(_read_s3(aws_env_module, uri))) as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
    assert {"config.json", "model.safetensors", "prompt_format.json"} <= names
    assert "tokenizer_config.json" in names and not any(n.startswith("code/") for n in names)

    outcomes = {o["candidate"]: o for o in _xcom(run, "await_evaluation")}
    assert set(outcomes) == {LLM_CANDIDATE, "baseline"}
    baseline = sagemaker.describe_processing_job(ProcessingJobName=outcomes["baseline"]["job_name"])
    arguments = baseline["AppSpecification"]["ContainerArguments"]
    assert arguments[-2:] == ["--prompt-template", "auto"] and "--zero-shot" not in arguments
    for outcome in outcomes.values():
        f1 = outcome["metrics"]["scenarios"][LLM_SCENARIO]["accuracy"]["token_f1"]
        assert 0 <= f1 <= 1, outcome["metrics"]

    challenger = tracking.client(llm_config).get_model_version_by_alias(
        LLM_MODEL_NAME, tracking.CHALLENGER
    )
    assert challenger.tags["fmops.model_artifacts"] == uri


def test_llm_deploy_serves_the_version_through_tgi(
    llm_deploy, llm_finetune, llm_config, containers, aws_env_module
):
    from fmops.registry import tracking
    from fmops.sagemaker.runtime import SageMakerEndpoint

    run, text = llm_deploy
    assert run.state == "success", f"task states: {_states(run)}\n{text[-4000:]}"
    assert _xcom(run, "deploy")["action"] == "created"
    sagemaker = _client("sagemaker", aws_env_module)
    endpoint = sagemaker.describe_endpoint(EndpointName=LLM_ENDPOINT)
    assert endpoint["EndpointStatus"] == "InService"
    endpoint_config = sagemaker.describe_endpoint_config(
        EndpointConfigName=endpoint["EndpointConfigName"]
    )
    (variant,) = endpoint_config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge"
    # sized from the weights (under 1 GiB: the 300 s base, a whole minute up)
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 360
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 360
    model = sagemaker.describe_model(ModelName=variant["ModelName"])["PrimaryContainer"]
    assert TGI_REPOSITORY in model["Image"] and ":2.7.0-tgi3.3.6-gpu-" in model["Image"]
    champion = tracking.client(llm_config).get_model_version_by_alias(
        LLM_MODEL_NAME, tracking.CHAMPION
    )
    assert model["ModelDataUrl"] == champion.tags["fmops.model_artifacts"]
    environment = model["Environment"]
    assert environment["HF_MODEL_ID"] == "/opt/ml/model"
    assert environment["SM_NUM_GPUS"] == "1"  # ml.g4dn.xlarge: one T4
    assert (environment["MAX_INPUT_TOKENS"], environment["MAX_TOTAL_TOKENS"]) == ("96", "128")
    assert environment["DTYPE"] == "float16" and "SAGEMAKER_PROGRAM" not in environment

    # The smoke test's chats were answered through InvokeEndpoint, and its bad body got 400.
    smoke = _xcom(run, "smoke_test")
    assert smoke["errors"] == 0 and smoke["requests"] == llm_config.deployment.smoke_requests
    served = [status for name, status in containers.invocations if name == LLM_ENDPOINT]
    assert served.count(200) >= smoke["requests"] and 400 in served

    live = SageMakerEndpoint(LLM_ENDPOINT, region_name=REGION)
    chat = {"messages": [{"role": "user", "content": "where is my card"}], "max_tokens": 4}
    status, body = live.invoke({**chat, "temperature": 0})
    assert status == 200 and body["object"] == "chat.completion", body
    assert body["usage"]["completion_tokens"] <= 4
    status, body = live.invoke({"inputs": "where is my card", "parameters": {"max_new_tokens": 3}})
    assert status == 200 and isinstance(body[0]["generated_text"], str), body
    # TGI's validation: a request over MAX_TOTAL_TOKENS is a 422, not an answer
    status, body = live.invoke({**chat, "max_tokens": 120})
    assert status == 422 and body["error_type"] == "validation", body
    assert "MAX_TOTAL_TOKENS" in body["error"]
    status, body = live.invoke(b"{not json")
    assert status == 400 and body["error_type"] == "json", body
