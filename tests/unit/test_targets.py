"""The ``Target`` seam: the registry, what each target answers, and that a new target is a
module and a registry entry (a fake one here drives the pipeline's and the deploy stage's
target-neutral functions)."""

from __future__ import annotations

from typing import Any

import pytest

from fmops import targets
from fmops.config import ConfigError, load_config
from fmops.deployment import flow
from fmops.jobs import records
from fmops.paths import CONFIGS_DIR
from fmops.targets import get_target
from fmops.targets.base import Deployer, Target
from fmops.targets.local import LocalTarget
from fmops.targets.sagemaker import SageMakerTarget

LOCAL = CONFIGS_DIR / "local.yaml"
EXAMPLE = CONFIGS_DIR / "sagemaker.example.yaml"


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown target 'azure'; targets: local, sagemaker"):
        get_target("azure")


@pytest.mark.parametrize(("name", "kind"), [("local", LocalTarget), ("sagemaker", SageMakerTarget)])
def test_each_registered_target_implements_the_contract(name, kind):
    target = get_target(name)
    assert isinstance(target, kind) and isinstance(target, Target)
    assert target.name == name
    assert get_target(name) is target  # looked up once


def test_the_sagemaker_block_is_the_targets_settings_model():
    from fmops.sagemaker.settings import SageMakerSettings

    assert targets.settings_model("sagemaker") is SageMakerSettings
    assert isinstance(load_config(EXAMPLE).sagemaker, SageMakerSettings)


def test_each_target_checks_the_config_for_itself():
    local = load_config(LOCAL)
    assert targets.config_problems(local) == []
    # The sagemaker target needs its block, only when it is the config's target.
    switched = local.model_copy(update={"target": "sagemaker"})
    assert (
        get_target("sagemaker")
        .config_problems(switched)[0]
        .startswith("sagemaker: target sagemaker needs a `sagemaker:` block")
    )
    assert get_target("local").config_problems(switched) == []
    # The local target refuses JumpStart candidates, only when it is the config's target.
    first = local.candidates[0].model_copy(
        update={"base_model": "jumpstart:huggingface-tc-bert-base-uncased", "parameters": 1}
    )
    jumpstart = local.model_copy(update={"candidates": [first]})
    assert "sagemaker target only" in get_target("local").config_problems(jumpstart)[0]
    assert (
        get_target("local").config_problems(jumpstart.model_copy(update={"target": "sagemaker"}))
        == []
    )


def test_only_the_local_target_takes_the_auto_approval_override():
    assert get_target("local").auto_approval_override
    assert not get_target("sagemaker").auto_approval_override
    assert load_config(LOCAL, approval="auto").deployment.approval == "auto"
    with pytest.raises(ConfigError, match="local target only"):
        load_config(EXAMPLE, approval="auto")


def test_model_artifacts_each_target_can_read():
    sagemaker = get_target("sagemaker")
    assert sagemaker.artifact_problem("s3://bucket/model.tar.gz") is None
    assert "cannot read" in sagemaker.artifact_problem("file:///tmp/model.tar.gz")
    assert get_target("local").artifact_problem("s3://bucket/model.tar.gz") is None


def test_console_pages_only_where_the_target_has_them():
    handle = {"kind": "training", "name": "train-a-1", "settings": {"region_name": "eu-west-1"}}
    assert (
        get_target("sagemaker")
        .job_console_url(handle)
        .endswith("?region=eu-west-1#/jobs/train-a-1")
    )
    assert get_target("sagemaker").job_console_url({**handle, "kind": "endpoint"}) is None
    assert get_target("local").job_console_url(handle) is None
    assert get_target("local").endpoint_console_url(load_config(LOCAL)) is None
    page = get_target("sagemaker").endpoint_console_url(load_config(EXAMPLE))
    assert page.endswith("#/endpoints/banking77")


def test_no_instance_fallback_on_this_machine():
    local = get_target("local")
    assert local.next_instance_after_quota({"target": "local"}, RuntimeError("quota")) is None
    assert local.next_instance_after_failure({"target": "local"}, {}) is None
    # SageMaker moves only a job whose handle kept its plan, after a capacity failure.
    failed = {"FailureReason": "CapacityError: no capacity"}
    assert get_target("sagemaker").next_instance_after_failure({"kind": "training"}, failed) is None


# -- a new target: one module and one registry entry -----------------------------------------------


class FakeDeployer(Deployer):
    waits = True

    def start(self, version: str) -> dict[str, Any]:
        return {"wait": {"target": "fake", "version": version}}

    def finish(self, wait, verdict, description):
        return {"result": {"version": wait["version"], "verdict": verdict}}

    def deploy(self, version):
        raise AssertionError("a waiting deployer is started, not deployed in one call")

    def rollback(self):
        return {"action": "none"}

    def endpoint(self):
        raise NotImplementedError


class FakeTarget(Target):
    name = "fake"
    unbilled_note = "free"

    def backend_settings(self, config):
        return {"where": "nowhere"}

    def plan_training(self, config, staged, dag_id, run_id, *, force=False):
        return []

    def plan_evaluation(self, config, staged, trained, dag_id, run_id, **kwargs):
        return []

    def plan_run(self, config, dag_id="d", run_id="r", *, with_connection=False):
        return {}

    def endpoint_lines(self, endpoint):
        return [f"endpoint {endpoint['endpoint_name']} somewhere else"]

    def hosting_note(self, config):
        return "elsewhere"

    def deployer(self, config):
        return FakeDeployer(config)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(targets.TARGETS, "fake", f"{__name__}:FakeTarget")
    get_target.cache_clear()
    yield get_target("fake")
    get_target.cache_clear()


def test_a_new_target_needs_no_change_to_the_stages(fake):
    from fmops import pipeline
    from fmops.plan_text import render_text

    config = load_config(LOCAL).model_copy(update={"target": "fake"})
    assert pipeline.backend_settings(config) == {"where": "nowhere"}
    assert flow.start_deploy(config, "3") == {"wait": {"target": "fake", "version": "3"}}
    finished = flow.finish_deploy({"target": "fake", "version": "3"}, {"state": "ok"}, None)
    assert finished == {"result": {"version": "3", "verdict": {"state": "ok"}}}
    assert flow.rollback(config) == {"action": "none"}
    plan = {
        "pipeline": "p",
        "target": "fake",
        "placeholders": {"note": "n"},
        "training": [],
        "evaluation": [],
        "cost": {"upper_bound_usd": 0.0, "explain": "free"},
        "endpoint": {"endpoint_name": "e"},
    }
    assert "\nendpoint e somewhere else\n" in render_text(plan, "x.yaml")


# -- the job records -------------------------------------------------------------------------------


def test_job_records_have_one_shape_on_both_targets():
    config = load_config(LOCAL)
    candidate = config.candidates[0]
    request = {"HyperParameters": {"epochs": "1"}, "AlgorithmSpecification": {}}
    plan = records.training_plan(
        config,
        candidate,
        target="local",
        base_name="train-x",
        settings={},
        request=request,
        staged_digest="abc",
        force=False,
    )
    assert set(plan) == {
        "kind", "candidate", "pipeline", "base_name", "target", "settings", "request",
        "cache_key", "cache_fields", "force",
    }  # fmt: skip
    uncached = records.evaluation_plan(
        config,
        "baseline",
        target="sagemaker",
        base_name="eval-x",
        settings={},
        request={},
        zero_shot=True,
        force=True,
        staged_digest=None,
        instance={"instance_type": "ml.m5.xlarge", "fallbacks": ["ml.m5.2xlarge"]},
        cost={"instance_type": "ml.m5.xlarge", "usd_per_hour": 0.23, "hours": 1},
    )
    assert "cache_key" not in uncached and uncached["force"] is True
    handle = records.job_handle(uncached, "eval-x-a2", "created")
    assert handle["plan"] == uncached  # kept: the job may move to another instance type
    assert handle["price"] == {
        "instance_type": "ml.m5.xlarge",
        "usd_per_hour": 0.23,
        "price_source": None,
        "instances": None,
    }
    assert handle["zero_shot"] is True and handle["name"] == "eval-x-a2"
    assert "plan" not in records.job_handle(plan, "train-x", "cached")
