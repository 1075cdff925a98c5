"""``fmops plan`` as people read it: a summary of the jobs, their instances and costs, the
endpoint, then every request as JSON. The plan itself comes from the target
(``fmops.targets``: ``Target.plan_run``), and so does its endpoint's summary."""

from __future__ import annotations

import json
from typing import Any

from fmops.storage import jsonable
from fmops.targets import get_target

# The DAG run an offline plan names its jobs for (``fmops plan --dag-id/--run-id``).
DAG_ID = "fmops_finetune"
PLAN_RUN_ID = "manual__plan"
# What stands in for values a plan cannot know before a run validates its data.
STAGED_DIGEST_PLACEHOLDER = "<staged-digest>"
PLACEHOLDER_NOTE = (
    f"dataset digests are known only after validate_data: dataset URIs show "
    f"{STAGED_DIGEST_PLACEHOLDER}, and job names and tags are for run id {{run_id}}"
)


def render_text(plan: dict[str, Any], source: str) -> str:
    """The plan as people read it: a summary, then every request as JSON."""
    lines = [
        f"# fmops plan {source}: pipeline {plan['pipeline']}, target {plan['target']}"
        + (f", region {plan['region']}" if plan.get("region") else ""),
        "# computed offline: nothing was sent to AWS and no credentials were used",
        f"# {plan['placeholders']['note']}",
    ]
    if plan.get("uploads", {}).get("jumpstart_models"):
        lines[1] = (
            "# computed offline except JumpStart's model specs, read from its S3 bucket; "
            "nothing was sent to SageMaker"
        )
    if plan.get("uploads"):
        code = plan["uploads"]["sourcedir"]
        lines += [
            "",
            f"code: {code['uri']} ({len(code['files'])} scripts, {code['bytes']} bytes, "
            f"sha256 {code['sha256'][:12]}...)",
            *(f"base model {k}: {v}" for k, v in plan["uploads"]["base_models"].items()),
            *(
                f"base model {k}: JumpStart {v['model_id']} {v['version']}, "
                f"weights {v['model_uri']}"
                for k, v in plan["uploads"].get("jumpstart_models", {}).items()
            ),
            *(f"{k.removesuffix('_uri')}: {v}" for k, v in plan["uploads"]["datasets"].items()),
        ]
    for kind, operation in (
        ("training", "CreateTrainingJob"),
        ("evaluation", "CreateProcessingJob"),
    ):
        plans = plan[kind]
        lines += ["", f"{kind} jobs ({len(plans)}, {operation}):"]
        for item in plans:
            lines.append(
                f"  {item['candidate']:20} {item['base_name']:40} "
                f"{item['instance']['instance_type']:16} {item['cost']['explain']}"
            )
            if kind == "training" and item["instance"].get("reason"):
                lines.append(f"    instance: {item['instance']['explain']}")
            lines += [f"    note: {note}" for note in item.get("notes", [])]
    total = plan["cost"]
    unpriced = [
        name
        for part in ("training", "evaluation")
        for name in total.get(part, {}).get("jobs_without_price", [])
    ]
    lines += [
        "",
        f"total: at most ${total['upper_bound_usd']:.2f} ({total['explain']})"
        + (f"; plus {len(unpriced)} jobs without a known price" if unpriced else ""),
        "",
        *get_target(plan["target"]).endpoint_lines(plan["endpoint"]),
    ]
    for kind, name_field in (("training", "TrainingJobName"), ("evaluation", "ProcessingJobName")):
        for item in plan[kind]:
            request = {name_field: item["base_name"], **item["request"]}
            lines += ["", f"## {item['base_name']} ({item['candidate']})"]
            lines.append(json.dumps(jsonable(request), indent=1))
    endpoint = plan["endpoint"]["endpoint_name"]
    for operation, request in endpoint_requests(plan["endpoint"]):
        lines += ["", f"## {operation} (fmops_deploy, endpoint {endpoint})"]
        lines.append(json.dumps(jsonable(request), indent=1))
    return "\n".join(lines) + "\n"


def endpoint_requests(endpoint: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The endpoint's requests in the order fmops_deploy sends them (none on the local target)."""
    requests = endpoint.get("requests") or {}
    ordered = [
        (op, requests[op]) for op in ("CreateModel", "CreateEndpointConfig") if op in requests
    ]
    ordered += [("PutMetricAlarm", alarm) for alarm in requests.get("PutMetricAlarm", [])]
    ordered += [(op, requests[op]) for op in ("CreateEndpoint", "UpdateEndpoint") if op in requests]
    ordered += [
        (op, requests[op])
        for op in ("RegisterScalableTarget", "PutScalingPolicy")
        if requests.get(op)
    ]
    return ordered


def traffic_line(traffic: dict[str, Any]) -> str:
    mode = traffic["mode"]
    shift = {
        "all_at_once": "all at once",
        "canary": f"canary {traffic['canary_percent']}% then the rest",
        "linear": f"linear steps of {traffic['linear_step_percent']}%",
    }[mode]
    text = (
        f"traffic: blue/green, {shift}; a baking period of {traffic['wait_seconds']} s after each "
        f"shift, the old fleet kept {traffic['termination_wait_seconds']} s"
    )
    if "execution_timeout_seconds" in traffic:
        text += (
            f"; {traffic['baking_periods']} bake(s) + termination = "
            f"{traffic['total_wait_seconds']} s of waits; SageMaker rolls back a deployment "
            f"still running after {traffic['execution_timeout_seconds']} s "
            "(MaximumExecutionTimeoutInSeconds)"
        )
    return text
