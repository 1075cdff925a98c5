"""Hosting by cost at the latency goal (fmops.sizing): which instance type and how many serve a
model's peak within its latency goal for the least per 1,000 requests, against a table of cases
(a CPU type for a small classifier, a GPU where the traffic or the model needs one, the g5 class
for a 6B generative model), with pins, allowed lists, price ceilings, the capacity fallback's
ranking and the auto scaling target it sets."""

from __future__ import annotations

import math

import pytest

from fmops import sizing
from fmops.catalog import CatalogError, hosting_memory, load_catalog
from fmops.deployment.settings import AlarmSettings
from fmops.sagemaker.endpoint_plan import next_instance, plan_endpoint
from fmops.sagemaker.settings import (
    EndpointSettings,
    SageMakerSettings,
    ScalingSettings,
    SizingSettings,
)

MINILM = 22_713_728  # all-MiniLM-L6-v2
BERT_LARGE = 335_141_888
GPT_J = 6_053_381_344
CPU_FAMILIES = ("ml.c6i.", "ml.c7i.", "ml.m6i.")
SETTINGS = SageMakerSettings(
    region="us-east-1",
    role_arn="arn:aws:iam::123456789012:role/fmops-sagemaker-execution",
    bucket="fmops-sizing-tests",
)
ARTIFACTS = "s3://fmops-sizing-tests/fmops/training/train-x/output/model.tar.gz"


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def classifier(p50: float, p95: float, throughput: float, parameters: int = MINILM):
    """A classifier's profile as the evaluation job measures it (one request on one core)."""
    return sizing.Profile.measured(
        {
            "parameters": parameters,
            "throughput_per_s": throughput,
            "threads": 2,
            "request_ms_p50": p50,
            "request_ms_p95": p95,
        }
    )


def demand(peak: float, goal: float = 1000.0, **kwargs) -> sizing.Demand:
    return sizing.Demand(peak_rps=peak, latency_goal_ms=goal, target_utilization=0.7, **kwargs)


def gpt_j(answer_tokens: int = 256) -> sizing.Profile:
    return sizing.Profile.generative(GPT_J, "fp16", answer_tokens=answer_tokens, concurrency=8)


# -- the table of cases ---------------------------------------------------------------------------

# (case, profile, parameters, precision, sharded, demand, the type chosen, its count)
CASES = [
    # 30 ms a request on one core: one core of the cheapest CPU type carries 23 requests/s at
    # 70%, so 10/s is one ml.c6i.large ($0.102/h) against a T4 at $0.736/h
    ("small classifier, low traffic", classifier(30, 40, 400), "fp32", False, demand(10),
     "ml.c6i.large", 1),
    # 5,000 requests/s: 215 single-core CPU instances ($21.9/h) or two T4s ($1.47/h) at the
    # evaluation's stated gpu_speedup of 10: the GPU wins
    ("small classifier, heavy traffic", classifier(30, 40, 400), "fp32", False, demand(5000),
     "ml.g4dn.xlarge", 2),
    # 150 ms a request on a core misses a 100 ms goal on every CPU type; a GPU answers in 15 ms
    ("large classifier, tight goal", classifier(150, 180, 40, BERT_LARGE), "fp32", False,
     demand(2, goal=100), "ml.g4dn.xlarge", 1),
    # the same at a 1 s goal: CPU cores again, two of them for 2 requests/s at 150 ms
    ("large classifier, loose goal", classifier(150, 180, 40, BERT_LARGE), "fp32", False,
     demand(2, goal=1000), "ml.c6i.large", 1),
    # GPT-J 6B at fp16 decodes at 75.7 ms a token on a T4 (320 GB/s at half): it misses a
    # 50 ms goal, which an A10G meets at 40.4 ms: the g5 class, as the talk recommends
    ("6B generative, 50 ms a token", gpt_j(), "fp16", True, demand(0.2, goal=50),
     "ml.g5.xlarge", 1),
    # at 100 ms a token the T4 is fast enough, and cheaper
    ("6B generative, 100 ms a token", gpt_j(), "fp16", True, demand(0.2, goal=100),
     "ml.g4dn.xlarge", 1),
    # more traffic: 8 answers of 10.3 s at a time on an A10G is 0.78 requests/s, 0.54 planned
    ("6B generative, 2 requests/s", gpt_j(), "fp16", True, demand(2, goal=50),
     "ml.g5.xlarge", 4),
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile", "precision", "sharded", "wanted", "chosen", "count"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_the_cheapest_fleet_that_meets_the_goal(
    catalog, profile, precision, sharded, wanted, chosen, count
):
    need = hosting_memory(profile.parameters, precision, sharded=sharded)
    found = sizing.choose(catalog, need, profile, wanted)
    assert (found.chosen.name, found.chosen.count) == (chosen, count)
    assert found.chosen.meets_goal and found.chosen.latency_ms <= wanted.latency_goal_ms
    # nothing eligible is cheaper at the peak, and every eligible type is a fallback, in order
    costs = [e.usd_per_1k(wanted) for e in (found.chosen, *found.fallbacks)]
    assert costs == sorted(costs)
    if profile.kind == "generative":
        assert all(e.instance.gpus for e in (found.chosen, *found.fallbacks))
    # the arithmetic is the record's: count x price / (peak x 3600) x 1000
    per_1k = found.chosen.instance.price_per_hour * count / (wanted.peak_rps * 3600) * 1000
    assert found.record()["usd_per_1k_requests"] == pytest.approx(per_1k, abs=1e-6)


def test_the_types_left_out_say_why(catalog):
    need = hosting_memory(GPT_J, "fp16", sharded=True)
    found = sizing.choose(catalog, need, gpt_j(), demand(0.2, goal=50))
    left_out = dict(found.left_out)
    assert "75.7 ms per token against a goal of 50 ms" in left_out["ml.g4dn.xlarge"]
    record = found.record()
    assert record["latency_goal_per"] == "token" and record["fleet"]["ml.g5.xlarge"] == 1
    assert "12.11 GB of weights / (1 x 600 GB/s x 0.5) = 40.4 ms per token" in found.explain()
    assert "Need: hosting 6.05B parameters at fp16" in found.explain()


def test_the_arithmetic_of_a_cpu_type(catalog):
    estimate = sizing.estimate(catalog.get("ml.c6i.2xlarge"), classifier(25, 40, 400), demand(60))
    # 8 vCPUs = 4 cores x 1000 / 25 ms = 160 requests/s; 112 at 70%; 60/s needs 1
    assert estimate.capacity_rps == pytest.approx(160)
    assert estimate.count == 1 and estimate.latency_ms == 40
    assert estimate.scaling_target(demand(60)) == pytest.approx(160 * 0.7 * 60)
    assert "4 core(s) x 1000 / 25 ms" in estimate.arithmetic


def test_a_pin_is_kept_and_warned_about_when_it_misses_the_goal(catalog):
    need = hosting_memory(GPT_J, "fp16", sharded=True)
    found = sizing.choose(catalog, need, gpt_j(), demand(0.2, goal=50), pinned="ml.g4dn.xlarge")
    assert found.pinned and found.chosen.name == "ml.g4dn.xlarge"
    assert "WARNING: the pinned type misses the latency goal" in found.explain()
    with pytest.raises(CatalogError, match="ml.c6i.xlarge is a CPU type"):
        sizing.choose(catalog, need, gpt_j(), demand(0.2), pinned="ml.c6i.xlarge")
    # a pinned CPU type for a classifier: sized like any other
    small = sizing.choose(
        catalog, hosting_memory(MINILM, "fp32"), classifier(30, 40, 400), demand(50),
        pinned="ml.m6i.xlarge",
    )  # fmt: skip
    assert (small.chosen.name, small.chosen.count, small.chosen.why_not) == (
        "ml.m6i.xlarge",
        2,  # 2 cores x 33.3/s x 70% = 46.7 a instance
        None,
    )


def test_allowed_types_and_the_price_ceiling_bound_the_choice(catalog):
    need = hosting_memory(MINILM, "fp32")
    profile = classifier(30, 40, 400)
    only_gpus = sizing.choose(
        catalog, need, profile, demand(10), allowed=["ml.g4dn.xlarge", "ml.g5.xlarge"]
    )
    assert only_gpus.chosen.name == "ml.g4dn.xlarge"
    assert [e.name for e in only_gpus.fallbacks] == ["ml.g5.xlarge"]
    cheap = sizing.choose(catalog, need, profile, demand(5000), max_price=0.5)
    assert cheap.chosen.instance.price_per_hour <= 0.5 and not cheap.chosen.instance.gpus


def test_no_type_meets_the_goal_names_the_closest_and_the_fixes(catalog):
    need = hosting_memory(GPT_J, "fp16", sharded=True)
    with pytest.raises(sizing.SizingError) as info:
        sizing.choose(catalog, need, gpt_j(), demand(0.2, goal=1), model="GPT-J")
    message = str(info.value)
    assert "no instance type serves GPT-J within a latency goal of 1 ms per token" in message
    assert "The fastest is ml.p5.48xlarge" in message
    assert "Raise sagemaker.endpoint.sizing's latency goal" in message


def test_profiles_say_where_their_figures_come_from():
    measured = classifier(30, 40, 400)
    assert measured.source.startswith("measured by the evaluation job: 30 ms p50")
    # an evaluation from before single requests were measured: the batched figure, said so
    older = sizing.Profile.measured({"parameters": MINILM, "throughput_per_s": 400, "threads": 2})
    assert older.request_ms_p50 == pytest.approx(2 * 1000 / 400 * sizing.BATCHED_GAIN)
    assert "measured no single requests" in older.source
    assert sizing.Profile.measured({"parameters": MINILM}) is None
    planned = sizing.Profile.from_parameters(MINILM, 64)
    expected = sizing.REQUEST_OVERHEAD_MS + 2 * MINILM * 64 / (sizing.CPU_GFLOPS_PER_CORE * 1e6)
    assert planned.request_ms_p50 == pytest.approx(expected)
    assert planned.source.startswith("estimated before any evaluation")


def test_demand_defaults_follow_the_kind_and_the_alarms():
    endpoint, alarms = EndpointSettings(), AlarmSettings(max_latency_ms=800)
    assert sizing.demand_for(endpoint, alarms, generative=False) == sizing.Demand(
        peak_rps=10.0, latency_goal_ms=800, target_utilization=0.7, min_count=1, max_count=2
    )
    generative = sizing.demand_for(endpoint, alarms, generative=True)
    assert (generative.peak_rps, generative.latency_goal_ms) == (0.2, 50.0)
    per_token = AlarmSettings(latency_per_token_ms=80)
    assert sizing.demand_for(endpoint, per_token, generative=True).latency_goal_ms == 80
    given = EndpointSettings(
        sizing=SizingSettings(peak_requests_per_second=3, latency_goal_ms=200),
        scaling=ScalingSettings(enabled=False),
    )
    assert sizing.demand_for(given, alarms, generative=False) == sizing.Demand(
        peak_rps=3, latency_goal_ms=200, target_utilization=0.7, min_count=1, max_count=None
    )


# -- the endpoint plan ----------------------------------------------------------------------------


def sized_plan(catalog, endpoint: EndpointSettings, profile: sizing.Profile) -> dict:
    return plan_endpoint(
        SETTINGS,
        endpoint,
        endpoint_name="banking77",
        model_version="4",
        model_data_url=ARTIFACTS,
        parameters=profile.parameters,
        catalog=catalog,
        profile=profile,
    )


def test_the_plan_starts_the_fleet_for_the_peak_and_scales_on_its_estimate(catalog):
    endpoint = EndpointSettings(
        sizing=SizingSettings(peak_requests_per_second=60),
        scaling=ScalingSettings(min_instances=1, max_instances=6),
    )
    plan = sized_plan(catalog, endpoint, classifier(30, 40, 400))
    (variant,) = plan["requests"]["CreateEndpointConfig"]["ProductionVariants"]
    # 60/s at 23.3 per core: 3 single-core instances ($0.306/h) beat one 4-core ($0.408/h)
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c6i.large", 3)
    assert plan["instance_count"] == 3
    assert "-cpu-" in plan["requests"]["CreateModel"]["PrimaryContainer"]["Image"]
    policy = plan["requests"]["PutScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]
    assert policy["TargetValue"] == pytest.approx(1000 / 30 * 0.7 * 60, abs=0.1)  # 1400/minute
    assert plan["instance"]["sizing"]["scaling_target_per_minute"] == policy["TargetValue"]
    assert plan["instance"]["explain"].startswith("ml.c6i.large x 3, the lowest cost per 1,000")
    # a target the config gives is kept
    given = endpoint.model_copy(
        update={
            "scaling": endpoint.scaling.model_copy(update={"target_invocations_per_instance": 500})
        }
    )
    plan = sized_plan(catalog, given, classifier(30, 40, 400))
    target = plan["requests"]["PutScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]
    assert target["TargetValue"] == 500


def test_a_peak_beyond_max_instances_raises_the_scaling_maximum_and_says_so(catalog):
    endpoint = EndpointSettings(
        sizing=SizingSettings(peak_requests_per_second=60),
        scaling=ScalingSettings(min_instances=1, max_instances=1),
    )
    plan = sized_plan(catalog, endpoint, classifier(30, 40, 400))
    assert (plan["instance"]["instance_type"], plan["instance_count"]) == ("ml.c6i.large", 3)
    assert plan["requests"]["RegisterScalableTarget"]["MaxCapacity"] == 3
    assert plan["scaling"]["max_instances"] == 3
    assert any(
        "larger than sagemaker.endpoint.scaling.max_instances (1)" in n for n in plan["notes"]
    )


def test_a_capacity_fallback_moves_to_the_next_fleet_with_its_image_count_and_target(catalog):
    endpoint = EndpointSettings(
        sizing=SizingSettings(peak_requests_per_second=10),
        allowed_instance_types=["ml.c6i.large", "ml.g4dn.xlarge"],
    )
    plan = sized_plan(catalog, endpoint, classifier(30, 40, 400))
    assert plan["instance"]["instance_type"] == "ml.c6i.large"
    moved = next_instance(plan, "no capacity", catalog=catalog)
    (variant,) = moved["requests"]["CreateEndpointConfig"]["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge"
    assert variant["InitialInstanceCount"] == moved["instance_count"] == 1
    image = moved["requests"]["CreateModel"]["PrimaryContainer"]["Image"]
    assert "-gpu-" in image and moved["model_name"] != plan["model_name"]
    target = moved["requests"]["PutScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]
    assert target["TargetValue"] == plan["sizing"]["scaling_targets"]["ml.g4dn.xlarge"]
    assert math.isclose(target["TargetValue"], 400 * 10 * 0.7 * 60)
    assert next_instance(moved, "no capacity", catalog=catalog) is None  # the ranking's end
