"""Review without Airflow's scheduler: what `fmops approve|reject` refuses before asking Airflow,
the approval task (AwaitApprovalOperator: the question it parks with, the decision it records),
the gate line and the task instances' link URLs.

The registry is a real MLflow store (SQLite in a temporary folder); fmops_deploy end to end,
against a real `mlflow server`, is in tests/integration/test_mlflow_server.py.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskAwaitingInput

from fmops import cli
from fmops.airflow import links, tasks
from fmops.airflow.approval import AwaitApprovalOperator
from fmops.config import CONFIGS_DIR, parse_config
from fmops.deployment import flow
from fmops.registry import review, tracking
from fmops.registry.card import (
    MAX_DESCRIPTION,
    comparison_line,
    fit_description,
    gate_summary,
    model_card,
)
from fmops.targets.sagemaker import console_url

MODEL = "review-classifier"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow_client = tracking.client_for(uri)
    mlflow_client.create_registered_model(MODEL)
    return uri


@pytest.fixture
def version(store, tmp_path) -> str:
    """A new pending version, as register leaves it."""
    source = tmp_path / "model"
    source.mkdir()
    created = tracking.client_for(store).create_model_version(
        MODEL,
        source.as_uri(),
        tags={review.APPROVAL_TAG: review.PENDING, "fmops.gate": "promote x (a=0.9)"},
    )
    return str(created.version)


def tags(store: str, version: str) -> dict[str, str]:
    return tracking.client_for(store).get_model_version(MODEL, version).tags


def config(store: str, **deployment: Any):
    raw = yaml.safe_load((CONFIGS_DIR / "local.yaml").read_text())
    raw["registry"] = {"model_name": MODEL, "tracking_uri": store}
    raw["deployment"] = {**raw["deployment"], "approval": "manual", **deployment}
    return parse_config(copy.deepcopy(raw), "review.yaml")


def candidate(store: str, version: str, **deployment: Any) -> dict[str, Any]:
    return {
        "resolved": {
            "config_file": "review.yaml",
            "config": config(store, **deployment).model_dump(mode="json"),
        },
        "model_name": MODEL,
        "version": version,
        "url": f"http://mlflow.example/#/models/{MODEL}/versions/{version}",
        "run_url": "http://mlflow.example/#/experiments/1/runs/abc",
    }


class FakeTi:
    def __init__(self):
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


@pytest.fixture
def context(monkeypatch) -> SimpleNamespace:
    """The task context the task functions read: the DAG run and an XCom-recording ti."""
    ti = FakeTi()
    made = {"dag": SimpleNamespace(dag_id="fmops_deploy"), "run_id": "manual__1", "ti": ti}
    monkeypatch.setattr(tasks, "get_current_context", lambda: made)
    return SimpleNamespace(ti=ti, deploy_run="fmops_deploy/manual__1")


# -- fmops approve|reject: what is refused before Airflow is asked ------------------------------
# (the decision through a real api-server, and a forged one refused, is in
# tests/integration/test_airflow_api.py)


@pytest.fixture
def reviewer_env(monkeypatch):
    monkeypatch.setenv("FMOPS_AIRFLOW_PASSWORD", "not-a-real-password")
    monkeypatch.setenv("FMOPS_AIRFLOW_URL", _dead_url())


def test_without_a_password_nothing_is_sent(monkeypatch, capsys):
    monkeypatch.delenv("FMOPS_AIRFLOW_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", SimpleNamespace(isatty=lambda: False))
    assert cli.main(["approve", MODEL, "1", "--run", "manual__1"]) == 2
    assert "set FMOPS_AIRFLOW_PASSWORD" in capsys.readouterr().err


def test_the_reviewer_flag_is_gone_the_identity_is_the_airflow_login(store, version):
    """A free-text reviewer name is not accepted any more: Airflow says who decided."""
    with pytest.raises(SystemExit) as info:
        cli.main(["approve", MODEL, version, "--reviewer", "alice", "--tracking-uri", store])
    assert info.value.code == 2


def test_an_unreachable_airflow_is_named_at_once_and_is_a_failure(reviewer_env, capsys):
    dead = _dead_url()
    argv = ["approve", MODEL, "1", "--run", "manual__1", "--comment", "ok", "--airflow-url", dead]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"Airflow at {dead} cannot be reached" in err, err
    assert "--airflow-url" in err and "make up" in err


def test_an_unreachable_mlflow_is_named_at_once_and_is_a_failure_not_bad_input(
    reviewer_env, capsys
):
    """With MLflow's client retries as they are (about two minutes): the command asks the
    server's /health first, so it names the problem at once, with what to check."""
    dead = _dead_url()
    code = cli.main(["approve", MODEL, "1", "--tracking-uri", dead])
    assert code == 1
    err = capsys.readouterr().err
    assert f"MLflow at {dead} cannot be reached (" in err and "Connection refused" in err, err
    assert "make up" in err and "--tracking-uri" in err


def test_a_version_no_run_waits_for_is_bad_input(store, version, reviewer_env, capsys):
    assert cli.main(["approve", MODEL, "999", "--tracking-uri", store]) == 2
    assert f"{MODEL} has no version 999" in capsys.readouterr().err
    assert cli.main(["reject", MODEL, version, "--tracking-uri", store]) == 2
    err = capsys.readouterr().err
    assert f"no fmops_deploy run waits for a review of {MODEL} version {version}" in err
    assert "--run" in err
    assert tags(store, version)[review.APPROVAL_TAG] == "pending"


def test_a_decision_the_task_failed_to_act_on_is_a_failure_not_goes_on(
    reviewer_env, monkeypatch, capsys
):
    from fmops import review_client

    def decided(*_: object) -> dict:
        return {
            "chosen_options": ["Reject"],
            "responded_by_user": {"id": "ann", "name": "ann"},
            "confirmed": True,
            "state": "failed",
        }

    monkeypatch.setattr(review_client, "decide", decided)
    argv = ["reject", MODEL, "3", "--run", "manual__1", "--comment", "no"]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    assert "goes on" not in captured.out + captured.err
    assert "Reject by ann was recorded, but await_approval of fmops_deploy run manual__1 ended" in (
        captured.err
    )
    assert "trigger fmops_deploy with version 3 and decide again" in captured.err


def _dead_url() -> str:
    import socket

    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_set_review_refuses_other_decisions(store, version):
    with pytest.raises(review.ApprovalError, match="allowed: approved, rejected"):
        review.set_review(tracking.client_for(store), MODEL, version, "maybe", "alice")


def test_an_unknown_tag_value_reads_as_pending():
    assert review.review_of({review.APPROVAL_TAG: "LGTM"})["decision"] == "pending"
    assert review.review_of({review.APPROVAL_TAG: " Approved "})["decision"] == "approved"
    assert review.review_of({})["decision"] == "pending"


# -- the operator ---------------------------------------------------------------------------------


@pytest.fixture
def asked(monkeypatch) -> list[dict[str, Any]]:
    """The HITL requests await_approval writes (through the task's supervisor in Airflow; here
    recorded, so that execute runs to the point where the task parks)."""
    import airflow.providers.standard.operators.hitl as hitl

    requests: list[dict[str, Any]] = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kwargs: requests.append(kwargs))
    return requests


TASK_CONTEXT = {"task_instance": SimpleNamespace(id="0199a3b0-0000-7000-8000-000000000001")}


def response(option: str, user: dict[str, str] | None, comment: str = "") -> dict[str, Any]:
    """The event Airflow resumes execute_complete with once a person answered."""
    return {
        "chosen_options": [option],
        "params_input": {"comment": comment},
        "responded_at": datetime.now(UTC),
        "responded_by_user": user,
        "timedout": False,
    }


def test_pending_parks_the_task_with_the_question_and_records_that_the_run_waits(
    store, version, context, asked
):
    task = AwaitApprovalOperator(
        task_id="await_approval",
        candidate=candidate(store, version, approval_timeout_seconds=3600, reviewers=["rita"]),
    )
    with pytest.raises(TaskAwaitingInput) as parked:
        task.execute(TASK_CONTEXT)
    assert parked.value.method_name == "execute_complete"
    assert parked.value.timeout == timedelta(seconds=3600)
    (request,) = asked
    assert request["options"] == ["Approve", "Reject"]
    assert request["subject"].startswith(f"Deploy {MODEL} version {version} to endpoint ")
    assert f"/models/{MODEL}/versions/{version}" in request["body"]
    assert "the gate: promote x (a=0.9)" in request["body"].lower()
    assert request["assigned_users"] == [{"id": "rita", "name": "rita"}]
    assert set(request["params"]) == {"comment"}, "the form asks for a comment only"
    found = tags(store, version)
    assert found[review.DEPLOY_RUN_TAG] == context.deploy_run
    assert found[review.DEPLOY_OUTCOME_TAG] == "awaiting_approval"
    assert found[review.DEADLINE_TAG] and found[review.REQUESTED_AT_TAG]
    assert context.ti.pushed[links.LINKS_KEY] == {
        links.MODEL_VERSION: f"http://mlflow.example/#/models/{MODEL}/versions/{version}",
        links.MLFLOW_RUN: "http://mlflow.example/#/experiments/1/runs/abc",
    }


def test_an_approval_tag_written_in_mlflow_approves_nothing(store, version, context, asked):
    """Anyone who reaches MLflow can write tags: a forged approval still waits for a person."""
    client = tracking.client_for(store)
    review.set_review(client, MODEL, version, "approved", "mallory", "trust me")
    task = AwaitApprovalOperator(task_id="await_approval", candidate=candidate(store, version))
    with pytest.raises(TaskAwaitingInput):
        task.execute(TASK_CONTEXT)
    assert len(asked) == 1


def test_an_approval_records_the_authenticated_reviewer(store, version, context):
    task = AwaitApprovalOperator(task_id="await_approval", candidate=candidate(store, version))
    user = {"id": "erin", "name": "Erin Ode"}
    result = task.execute_complete(
        TASK_CONTEXT, event=response("Approve", user, "calibration is fine")
    )
    assert (result["decision"], result["reviewer"], result["version"]) == (
        "approved",
        "Erin Ode",
        version,
    )
    found = tags(store, version)
    assert found[review.APPROVAL_TAG] == "approved"
    assert (found[review.REVIEWER_TAG], found[review.REVIEWER_ID_TAG]) == ("Erin Ode", "erin")
    assert found[review.COMMENT_TAG] == "calibration is fine"
    assert found[review.REVIEW_SOURCE_TAG] == f"airflow:{context.deploy_run}/await_approval"


def test_a_rejection_skips_the_run_and_is_recorded(store, version, context):
    task = AwaitApprovalOperator(task_id="await_approval", candidate=candidate(store, version))
    with pytest.raises(AirflowSkipException, match="rejected by frank: drift"):
        task.execute_complete(
            TASK_CONTEXT, event=response("Reject", {"id": "frank", "name": "frank"}, "drift")
        )
    found = tags(store, version)
    assert found[review.APPROVAL_TAG] == "rejected"
    assert found[review.DEPLOY_OUTCOME_TAG] == "rejected"
    assert found[review.DEPLOY_RUN_TAG] == context.deploy_run
    assert "ended without deploying: rejected by frank: drift" in found[review.DEPLOY_NOTE_TAG]
    assert context.ti.pushed[tasks.REJECTED_KEY].endswith("rejected by frank: drift")


def test_a_response_without_an_authenticated_user_deploys_nothing(store, version, context):
    task = AwaitApprovalOperator(task_id="await_approval", candidate=candidate(store, version))
    with pytest.raises(AirflowFailException, match="no authenticated reviewer"):
        task.execute_complete(TASK_CONTEXT, event=response("Approve", None))
    assert tags(store, version)[review.APPROVAL_TAG] == "pending"


def test_a_timeout_fails_the_task_without_retries_and_is_recorded(store, version, context):
    task = AwaitApprovalOperator(
        task_id="await_approval", candidate=candidate(store, version, approval_timeout_seconds=60)
    )
    # what Airflow's scheduler resumes the task with once its response timeout passed
    event = {"error": "The Human-in-the-loop response timeout has passed", "error_type": "timeout"}
    with pytest.raises(AirflowFailException, match="no review within 60 s"):
        task.execute_complete(TASK_CONTEXT, event=event)
    found = tags(store, version)
    assert found[review.DEPLOY_OUTCOME_TAG] == "approval_timed_out"
    assert found[review.APPROVAL_TAG] == "pending", "a timeout is not a rejection"


@pytest.mark.parametrize(
    "returned",
    [None, {"decision": "pending"}, "approved"],
    ids=["marked success by hand", "not approved", "not a review"],
)
def test_deploy_refuses_to_run_without_an_approval(monkeypatch, returned):
    """await_approval marked success by hand returns nothing: deploy must not go on."""
    ti = SimpleNamespace(xcom_pull=lambda task_ids: returned if task_ids == "await_approval" else 0)
    monkeypatch.setattr(tasks, "get_current_context", lambda: {"ti": ti})
    monkeypatch.setattr(flow, "start_deploy", lambda *args: pytest.fail("deployed"))
    with pytest.raises(AirflowFailException, match="await_approval returned no approval"):
        tasks.start_deploy({"resolved": {}, "version": "1"})


def test_deploy_goes_on_after_an_approval(monkeypatch):
    review = {"decision": "approved", "reviewer": "erin"}
    ti = SimpleNamespace(xcom_pull=lambda task_ids: review, xcom_push=lambda **kwargs: None)
    monkeypatch.setattr(tasks, "get_current_context", lambda: {"ti": ti})
    monkeypatch.setattr(tasks, "_push_candidate_links", lambda candidate: None)
    monkeypatch.setattr(tasks, "_config", lambda resolved: "the config")
    monkeypatch.setattr(flow, "start_deploy", lambda config, version: {"result": (config, version)})
    assert tasks.start_deploy({"resolved": {}, "version": "1"}) == {"result": ("the config", "1")}


def test_auto_approval_says_who_approved_and_why(store, version, context, asked):
    task = AwaitApprovalOperator(
        task_id="await_approval", candidate=candidate(store, version, approval="auto")
    )
    result = task.execute(TASK_CONTEXT)
    assert result["decision"] == "approved" and result["version"] == version
    assert asked == [], "nobody is asked"
    found = tags(store, version)
    assert found[review.APPROVAL_TAG] == "approved"
    assert found[review.REVIEWER_TAG] == flow.AUTO_REVIEWER
    comment = found[review.COMMENT_TAG]
    assert "deployment.approval is auto in review.yaml" in comment
    assert "the gate: promote x (a=0.9)" in comment


def test_auto_approval_does_not_overrule_a_person(store, version, context):
    review.set_review(tracking.client_for(store), MODEL, version, "rejected", "gina", "no")
    task = AwaitApprovalOperator(
        task_id="await_approval", candidate=candidate(store, version, approval="auto")
    )
    with pytest.raises(AirflowSkipException):
        task.execute(TASK_CONTEXT)
    assert tags(store, version)[review.REVIEWER_TAG] == "gina"


def test_the_approval_settings_are_checked():
    from fmops.config import ConfigError

    with pytest.raises(ConfigError, match="approval_timeout_seconds"):
        config("sqlite:///x.db", approval_timeout_seconds=0)
    with pytest.raises(ConfigError, match="reviewers"):
        config("sqlite:///x.db", reviewers=[""])
    assert config("sqlite:///x.db").deployment.approval_timeout_seconds == 7 * 24 * 3600
    assert config("sqlite:///x.db").deployment.reviewers == []


# -- the gate on the card and the tag -------------------------------------------------------------


def comparison(against: str, lower: float, upper: float, cleared: bool) -> dict[str, Any]:
    return {
        "candidate": "a",
        "against": against,
        "metric": "s.accuracy.accuracy",
        "margin": 0.0,
        "cleared": cleared,
        "reason": "...",
        "result": {
            "mean_difference": (lower + upper) / 2,
            "lower": lower,
            "upper": upper,
            "confidence": 0.95,
            "resamples": 2000,
            "seed": 13,
            "n": 300,
        },
    }


def test_the_gate_tag_names_the_confidence_intervals():
    decision = {
        "winner": "a",
        "promote": True,
        "metric": "s.accuracy.accuracy",
        "score": 0.91,
        "gate": {
            "checks": {"a": [{"passed": True}, {"passed": True}]},
            "champion": comparison("champion", 0.01, 0.03, True),
            "baseline": comparison("baseline", 0.2, 0.3, True),
        },
    }
    line = gate_summary(decision)
    assert line.startswith("promote a (s.accuracy.accuracy=0.9100); bounds passed 2/2")
    assert "vs champion: +0.0200, 95% CI [+0.0100, +0.0300] clears margin 0" in line
    assert "vs baseline: +0.2500, 95% CI [+0.2000, +0.3000]" in line
    decision["gate"]["champion"] = None
    assert "no champion to beat" in gate_summary(decision)
    sentence = comparison_line(comparison("champion", -0.01, 0.02, False))
    assert "95% CI [-0.0100, +0.0200]" in sentence and "does not clear the margin 0" in sentence


# -- links ----------------------------------------------------------------------------------------


def test_console_urls():
    assert console_url("training", "train-a-1", "eu-west-1") == (
        "https://eu-west-1.console.aws.amazon.com/sagemaker/home?region=eu-west-1#/jobs/train-a-1"
    )
    assert console_url("processing", "eval-a", "us-east-1").endswith(
        "?region=us-east-1#/processing-jobs/eval-a"
    )
    assert console_url("endpoint", "banking77") == (
        "https://console.aws.amazon.com/sagemaker/home#/endpoints/banking77"
    )
    with pytest.raises(ValueError, match="kind 'model'"):
        console_url("model", "x")


class FakeXComs:
    """``links.read_xcom`` over a dict keyed by (task_id, key)."""

    def __init__(self, values: dict[tuple[str, str], Any]):
        self.values = values

    def __call__(
        self, ti_key: Any, key: str, task_id: str | None = None, map_index: int | None = None
    ) -> Any:
        return self.values.get((task_id or ti_key.task_id, key))


def link(monkeypatch, name: str, task_id: str, values: dict, upstream: tuple[str, ...] = ()):
    monkeypatch.setattr(links, "read_xcom", FakeXComs(values))
    (found,) = [g for g in links.GLOBAL_LINKS if g.name == name]
    operator = SimpleNamespace(upstream_task_ids=set(upstream))
    ti_key = SimpleNamespace(dag_id="d", run_id="r", task_id=task_id, map_index=0)
    return found.get_link(operator, ti_key=ti_key)


def test_global_links_read_what_the_task_pushed(monkeypatch):
    pushed = {
        ("register", links.LINKS_KEY): {
            links.MODEL_VERSION: "http://m/#/models/x/versions/3",
            links.MLFLOW_RUN: "http://m/#/experiments/1/runs/p",
        }
    }
    assert link(monkeypatch, links.MODEL_VERSION, "register", pushed).endswith("/versions/3")
    assert link(monkeypatch, links.MLFLOW_RUN, "register", pushed).endswith("/runs/p")
    assert link(monkeypatch, links.SAGEMAKER_ENDPOINT, "register", pushed) == ""
    assert link(monkeypatch, links.MODEL_VERSION, "plan_jobs", pushed) == ""


def test_the_run_link_of_a_report_task_is_the_reports_run(monkeypatch):
    report = "http://m/#/experiments/2/runs/abc/artifacts/evaluation/report.html"
    values = {("select", links.EVALUATION_REPORT_KEY): report}
    assert link(monkeypatch, links.MLFLOW_RUN, "select", values) == (
        "http://m/#/experiments/2/runs/abc"
    )


SAGEMAKER_HANDLE = {
    "kind": "training",
    "name": "train-a-6041a125df",
    "target": "sagemaker",
    "candidate": "a",
    "settings": {"aws_conn_id": "aws_default", "region_name": "eu-west-1"},
}


def test_the_job_link_comes_from_the_submit_tasks_handle_at_the_waits_index(monkeypatch):
    handle = dict(SAGEMAKER_HANDLE)
    refused = {**handle, "candidate": "b", "name": None, "action": "refused", "error": "no"}
    # submit_training returns the phase's handles as one list; the wait at map index 0 is "a".
    values = {("submit_training", "return_value"): [handle, refused]}
    url = link(monkeypatch, links.SAGEMAKER_JOB, "await_training", values, ("submit_training",))
    assert url.endswith("?region=eu-west-1#/jobs/train-a-6041a125df")
    # The submit task stands for every job of its phase: no single job to link.
    assert link(monkeypatch, links.SAGEMAKER_JOB, "submit_training", values) == ""
    local = {("submit_training", "return_value"): [{**handle, "target": "local"}]}
    assert (
        link(monkeypatch, links.SAGEMAKER_JOB, "await_training", local, ("submit_training",)) == ""
    )


def test_the_wait_pushes_its_jobs_links(monkeypatch):
    """The wait of a job pushes its console page and its MLflow run when it starts, so the
    links are there while it is deferred."""
    from fmops.airflow.operators import AwaitJobOperator

    monkeypatch.delenv("FMOPS_MLFLOW_UI", raising=False)
    handle = {
        **SAGEMAKER_HANDLE,
        "mlflow": {
            "tracking_uri": "http://127.0.0.1:5000",
            "experiment_id": "7",
            "parent_run_id": "p",
            "run_id": "j",
        },
    }
    pushed = {}
    ti = SimpleNamespace(xcom_push=lambda key, value: pushed.__setitem__(key, value))
    AwaitJobOperator(task_id="await_training", handle=handle)._push_links({"ti": ti})
    assert pushed == {
        links.LINKS_KEY: {
            links.SAGEMAKER_JOB: "https://eu-west-1.console.aws.amazon.com/sagemaker/home"
            "?region=eu-west-1#/jobs/train-a-6041a125df",
            links.MLFLOW_RUN: "http://127.0.0.1:5000/#/experiments/7/runs/j",
        }
    }


def test_the_plugin_registers_the_links():
    import importlib.util

    plugin_file = Path(__file__).resolve().parents[2] / "plugins" / "fmops_plugin.py"
    spec = importlib.util.spec_from_file_location("fmops_plugin_under_test", plugin_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [g.name for g in module.FmopsPlugin.global_operator_extra_links]
    assert names == ["MLflow run", "MLflow model version", "SageMaker job", "SageMaker endpoint"]


def test_the_model_card_has_what_a_reviewer_needs(store):
    cfg = config(store)
    staged = {
        "train_rows": 1540,
        "validation_rows": 31,
        "evaluation_rows": 3080,
        "digest": "s" * 12,
        "train_data_digest": "t" * 64,
        "evaluation_data_digest": "e" * 64,
        "labels": 77,
        "validation": {"expectations": 12, "failed": 0, "warned": 1, "problems": ["w: x"]},
    }
    winner = cfg.candidates[0]
    trained = {
        "candidate": winner.name,
        "job_name": f"train-{winner.name}-1",
        "target": "local",
        "training_seconds": 129,
        "model_artifacts": "file:///jobs/model.tar.gz",
        "hyperparameters": {"epochs": "2"},
    }
    row = {
        "candidate": winner.name,
        "role": "candidate",
        "mean_win_rate": 1.0,
        "primary": 0.81,
        "ece": 0.05,
        "worst_drop": 0.02,
        "max_gap": 0.01,
        "latency_p95_ms": 12.0,
        "usd_per_1k_requests": 0.0002,
    }
    decision = {
        "winner": winner.name,
        "promote": True,
        "metric": "banking77.accuracy.accuracy",
        "score": 0.81,
        "reasons": ["a passes every bound"],
        "leaderboard": [row, {**row, "candidate": "champion", "role": "champion"}],
        "report_url": "http://m/#/experiments/1/runs/p/artifacts/evaluation/report.html",
        "gate": {
            "checks": {winner.name: [{"metric": "m", "bound": ">= 0.3", "passed": True}]},
            "champion": comparison("champion", 0.011, 0.032, True),
            "baseline": comparison("baseline", 0.15, 0.22, True),
        },
        "costs_per_1k": {
            winner.name: {
                "instance_type": "ml.g4dn.xlarge",
                "price_per_hour": 0.736,
                "price_source": "catalog",
                "usd_per_1k_requests": 0.0002,
                "estimate": "estimate: ...",
            }
        },
    }
    decision["gate"]["checks"][winner.name][0]["reason"] = "m = 0.81 >= 0.3"
    card = model_card(
        cfg,
        staged,
        decision,
        trained,
        "fmops_finetune",
        "manual__1",
        links={"parent_run": "http://m/#/experiments/1/runs/p", "validation_report": "http://v"},
    )
    assert card.startswith(f"# {MODEL}: {winner.name}\n")
    assert "- MLflow run of the DAG run: http://m/#/experiments/1/runs/p" in card
    assert "t" * 64 in card and "e" * 64 in card and "; report: http://v" in card
    assert f"- base model `{winner.base_model}`, method {winner.method}" in card
    assert "- cost of the training job: not billed" in card
    assert "| champion (champion) |" in card
    assert "against the champion: a - champion on `s.accuracy.accuracy`: mean +0.0215, " in card
    assert "95% CI [+0.0110, +0.0320] (paired bootstrap, 2000 resamples, seed 13, n=300)" in card
    assert "the lower end clears the margin 0" in card
    assert "Recommended instance `ml.g4dn.xlarge` at $0.736/h each (catalog)" in card
    assert "no abstention" in card
    assert "fmops approve|reject review-classifier VERSION" in card
    assert "--reviewer" not in card  # a review names its Airflow user, not a typed-in name
    assert fit_description(card, "http://m/card") == card  # it fits: the description is whole


def test_a_card_longer_than_mlflow_holds_leaves_out_what_a_reviewer_needs_least():
    """PostgreSQL's model_versions.description is VARCHAR(5000): a longer card failed `register`
    on the team stack (SQLite had taken it). The description leaves out whole sections, the
    least needed first, and says which and where the whole card is."""
    titles = ["Data", "Training", "Evaluation", "Sample answers (x)", "Hosting", "Cost"]
    titles += ["Known limits", "Review"]
    body = {title: f"## {title}\n{title[0] * 800}\n" for title in titles}
    card = f"# m: a\n\n- lineage {'x' * 200}\n" + "\n".join(body.values())
    assert len(card) > MAX_DESCRIPTION
    url = "http://m/#/experiments/1/runs/w/artifacts/model_card.md"
    described = fit_description(card, url)
    assert len(described) <= MAX_DESCRIPTION
    assert described.startswith("# m: a\n\n- lineage ")
    for kept in ("Data", "Training", "Evaluation", "Known limits", "Review"):
        assert body[kept].strip() in described, kept
    for left_out in ("Sample answers (x)", "Hosting", "Cost"):
        assert f"## {left_out}" not in described, left_out
    assert described.endswith(
        "Left out here (an MLflow description holds 5,000 characters): Sample answers (x), "
        f"Hosting, Cost. The whole card is `model_card.md` on the winner's run: {url}_\n"
    )
    # The sections kept keep their order.
    positions = [described.index(f"## {title}") for title in ("Data", "Evaluation", "Review")]
    assert positions == sorted(positions)
    # A title and lineage longer than the bound alone are cut at a line.
    huge = "# m: a\n" + "\n".join("y" * 99 for _ in range(80))
    cut = fit_description(huge, "http://c")
    assert len(cut) <= MAX_DESCRIPTION and cut.split("\n\n_Left out")[0].endswith("y" * 99)


def test_fmops_deploy_takes_the_newest_registration_from_the_asset_events(monkeypatch):
    from datetime import UTC, datetime

    def event(version: str, minute: int, source=("fmops_finetune", "register"), **more: str):
        extra = {"config_file": "c.yaml", "model_name": "m", "version": version, **more}
        return SimpleNamespace(
            extra=extra,
            timestamp=datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
            source_dag_id=source[0],
            source_task_id=source[1],
        )

    made = {
        "triggering_asset_events": {
            "fmops://registered-models": [event("4", 2, approval="auto"), event("3", 1)]
        }
    }
    monkeypatch.setattr(tasks, "get_current_context", lambda: made)
    assert tasks._deploy_request({}) == ("c.yaml", "m", "4", "auto")
    # By hand: the form's values win.
    assert tasks._deploy_request({"version": "2", "model_name": "other", "approval": "manual"}) == (
        "c.yaml",
        "other",
        "2",
        "manual",
    )
    made["triggering_asset_events"] = {}
    with pytest.raises(AirflowFailException, match="no config_file"):
        tasks._deploy_request({"version": "2"})


def test_an_asset_event_posted_by_hand_cannot_widen_a_deployment(monkeypatch):
    """An event posted through the REST API has no source task: its config and approval: auto
    are ignored, and a run it alone scheduled fails, saying why; a newer forged event does not
    displace the registration's."""
    from datetime import UTC, datetime

    def event(minute: int, source: tuple, **extra: str) -> SimpleNamespace:
        return SimpleNamespace(
            extra=extra,
            timestamp=datetime(2026, 1, 1, 0, minute, tzinfo=UTC),
            source_dag_id=source[0],
            source_task_id=source[1],
        )

    forged = event(5, (None, None), config_file="evil.yaml", version="9", approval="auto")
    registered = event(1, ("fmops_finetune", "register"), config_file="c.yaml", version="3")
    made = {"triggering_asset_events": {"fmops://registered-models": [forged, registered]}}
    monkeypatch.setattr(tasks, "get_current_context", lambda: made)
    assert tasks._deploy_request({}) == ("c.yaml", None, "3", None)
    made["triggering_asset_events"] = {"fmops://registered-models": [forged]}
    with pytest.raises(AirflowFailException, match="register task did not emit"):
        tasks._deploy_request({})
    # by hand, the trigger form's values are what count
    assert tasks._deploy_request({"config_file": "c.yaml", "version": "3"}) == (
        "c.yaml",
        None,
        "3",
        None,
    )
