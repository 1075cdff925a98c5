"""SageMaker real-time endpoints, the plan: every request of one deployment, named and
validated, offline; and the plan's moves at run time, capacity fallback among them.

``plan_endpoint`` (or ``plan_deployment``, from a pipeline config: no AWS call, no credentials)
chooses the instance type and count (``hosting_instance``: with a request profile, the fleet with
the lowest cost per 1,000 requests at the latency goal, CPU types included for a classifier,
``fmops.sizing``; without one, the catalog's cheapest GPU type that holds the model; a pinned type
if it holds the model), builds the requests
(``fmops.sagemaker.endpoint_resources``), names them and checks each against botocore's service
models (``fmops.sagemaker.service_model``) and fmops' rules, so that ``fmops plan`` can show them.
``fmops.sagemaker.endpoint_deploy`` runs the plan. What serves the model (the image, its
environment, the variant's start-up timeouts, how the model is sized) is the model kind's
(``fmops.sagemaker.hosting``): a generative model's plan carries its ``serving`` record.

At run time the plan moves: ``with_instance_count`` starts the new fleet as large as auto scaling
grew the old one, and ``next_instance`` is the capacity fallback (``fmops.sagemaker.capacity``):
when SageMaker has no capacity or no quota for the instance type, the plan moves to the next type
of the catalog's ranking that fits the model, within ``sagemaker.endpoint.allowed_instance_types``
and the price ceiling: a new endpoint config (a new name), the same model (a generative model's
container names the instance's GPU count, so there it is a new model too). Each move is logged
("no capacity for ml.X in <region>: falling back to ml.Y (...)") and kept in the plan's
``instance.tried`` and ``capacity_fallback``, which reach the deployment's result. A pinned type
does not fall back, and a ranking tried to its end stops with ``no_capacity_error``'s
``NoCapacityError``, naming every type tried.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from fmops import sizing as sizing_
from fmops.catalog import (
    Catalog,
    CatalogError,
    Choice,
    InstanceType,
    MemoryEstimate,
    hosting_memory,
)
from fmops.deployment.settings import (
    AlarmSettings,
    TrafficSettings,
    baking_periods,
    total_wait_seconds,
)
from fmops.sagemaker import hosting, options
from fmops.sagemaker.endpoint_resources import (
    NO_BAKE,
    EndpointError,
    alarm_names,
    alarm_requests,
    check_endpoint_name,
    deployment_config,
    deployment_config_problems,
    endpoint_config_problems,
    endpoint_config_request,
    model_request,
    request_digest,
    scaling_requests,
    set_endpoint_key,
    versioned_name,
)
from fmops.sagemaker.endpoint_watch import NoCapacityError
from fmops.sagemaker.service_model import validate
from fmops.sagemaker.settings import EndpointSettings

if TYPE_CHECKING:
    from fmops.config import Candidate, PipelineConfig
    from fmops.sagemaker.jumpstart import JumpStartHosting
    from fmops.sagemaker.settings import SageMakerSettings

log = logging.getLogger(__name__)

DEFAULT_TARGET = 100.0  # invocations per instance per minute, when nothing estimates the capacity

# -- the plan --------------------------------------------------------------------------------------


class EndpointPlan(TypedDict):
    """One deployment of a model version, as ``plan_endpoint`` builds it: the requests in the
    order they are sent, the instance choice and its reason, the waits, and what a capacity
    fallback needs. It crosses tasks as JSON (the deploy task's wait) and moves at run time
    (``with_instance_count``, ``next_instance``); ``fmops plan`` adds its cost and placeholders."""

    endpoint_name: str
    model_version: str
    variant_name: str
    model_name: str
    endpoint_config_name: str
    model_data_url: str
    region: str
    instance: dict[str, Any]  # the catalog's choice, its explanation and the types tried
    instance_count: int
    alarm_names: list[str]
    traffic: dict[str, Any]  # the traffic settings with the waits they add up to
    requests: dict[str, Any]  # operation -> request (PutMetricAlarm: a list)
    wait: dict[str, int]  # fmops' own wait: timeout_seconds, poll_seconds
    scaling: dict[str, Any]
    notes: list[str]
    sizing: dict[str, Any]  # parameters and serving precision, to size the next type
    kms_key_id: str | None
    capacity_fallback: list[str]  # one line per instance type that had no capacity
    # A classifier's serving image per processor (cpu, gpu): a fallback may cross between them.
    images: NotRequired[dict[str, str]]
    # A generative model's container and timeouts (fmops.sagemaker.hosting.serving_of); a
    # classifier's plan has none.
    serving: NotRequired[dict[str, Any]]


def hosting_instance(
    catalog: Catalog,
    endpoint: EndpointSettings,
    parameters: int,
    model: str,
    serving: dict[str, Any] | None = None,
    *,
    profile: sizing_.Profile | None = None,
    demand: sizing_.Demand | None = None,
) -> tuple[Choice, sizing_.Sizing | None]:
    """The instance type for the endpoint, and with ``profile`` and ``demand`` its fleet
    (``fmops.sizing``: the lowest cost per 1,000 requests at the goal); without them the
    catalog's cheapest GPU type that is offered for endpoints and fits. A pinned type is checked
    against the model's memory (and warned about when it misses the goal). ``serving`` (a
    generative model's, ``fmops.sagemaker.hosting``) sizes it sharded at its precision, and a
    JumpStart model's types are the ones its spec supports."""
    label = f"endpoint of {model}"
    allowed = endpoint.allowed_instance_types or None
    supported = (serving or {}).get("allowed_types")
    if supported is not None:
        allowed = [t for t in supported if t in catalog and (allowed is None or t in allowed)]
        pinned = endpoint.pinned_instance_type
        if pinned and pinned not in supported:
            raise EndpointError(
                f"sagemaker.endpoint.instance_type: {model} does not serve on the pinned "
                f"{pinned}; its JumpStart spec supports {', '.join(supported)}"
            )
        if not allowed:
            raise EndpointError(
                f"sagemaker.endpoint.instance_type for {model}: none of the types its JumpStart "
                f"spec supports ({', '.join(supported) or 'none in this region'}) is in the "
                "catalog and in sagemaker.endpoint.allowed_instance_types: allow one of them"
            )
    try:
        need = hosting.need_of(parameters, endpoint.serving_precision, serving)
        if profile is not None and demand is not None:
            return _sized(catalog, endpoint, need, profile, demand, allowed, label)
        if endpoint.pinned_instance_type:
            choice = catalog.check_pinned(endpoint.pinned_instance_type, need, model=label)
            _check_ceiling(endpoint, choice.instance)
            return choice, None
        choice = catalog.choose(
            need, allowed=allowed, max_price=endpoint.max_price_per_hour, model=label
        )
        return choice, None
    except (CatalogError, sizing_.SizingError) as err:
        raise EndpointError(f"sagemaker.endpoint.instance_type for {model}: {err}") from None


def _check_ceiling(endpoint: EndpointSettings, pinned: InstanceType) -> None:
    """Refuse a pinned type that costs more than ``max_price_per_hour``."""
    price, ceiling = pinned.price_per_hour, endpoint.max_price_per_hour
    if ceiling is not None and price is not None and price > ceiling:
        raise EndpointError(
            f"sagemaker.endpoint.instance_type: the pinned {pinned.name} costs {pinned.price}, "
            f"above sagemaker.endpoint.max_price_per_hour ({ceiling}): raise the ceiling, pin a "
            "cheaper type, or set instance_type: auto"
        )


def _sized(
    catalog: Catalog,
    endpoint: EndpointSettings,
    need: MemoryEstimate,
    profile: sizing_.Profile,
    demand: sizing_.Demand,
    allowed: list[str] | None,
    label: str,
) -> tuple[Choice, sizing_.Sizing]:
    pinned = endpoint.pinned_instance_type
    found = sizing_.choose(
        catalog,
        need,
        profile,
        demand,
        allowed=allowed,
        max_price=endpoint.max_price_per_hour,
        pinned=pinned,
        model=label,
    )
    if pinned:
        _check_ceiling(endpoint, found.chosen.instance)
        if found.chosen.why_not:
            log.warning("endpoint of %s: the pinned %s %s", label, pinned, found.chosen.why_not)
    choice = Choice(
        found.chosen.instance,
        need,
        found.memory,  # the cost arithmetic is in the plan's instance.sizing and explain
        tuple(e.name for e in found.fallbacks),
        pinned=bool(pinned),
    )
    log.info("instance type for %s: %s", label, found.explain())
    return choice, found


def _check(requests: dict[str, Any], instance_count: int, catalog: Catalog | None) -> None:
    validate("sagemaker", "CreateModel", requests["CreateModel"])
    validate("sagemaker", "CreateEndpointConfig", requests["CreateEndpointConfig"])
    validate("sagemaker", "CreateEndpoint", requests["CreateEndpoint"])
    validate("sagemaker", "UpdateEndpoint", requests["UpdateEndpoint"])
    for alarm in requests["PutMetricAlarm"]:
        validate("cloudwatch", "PutMetricAlarm", alarm)
    if requests.get("RegisterScalableTarget"):
        validate(
            "application-autoscaling", "RegisterScalableTarget", requests["RegisterScalableTarget"]
        )
        validate("application-autoscaling", "PutScalingPolicy", requests["PutScalingPolicy"])
    problems = endpoint_config_problems(requests["CreateEndpointConfig"], catalog)
    problems += deployment_config_problems(
        requests["UpdateEndpoint"]["DeploymentConfig"], instance_count
    )
    if problems:
        raise EndpointError("endpoint requests refused: " + "; ".join(problems))


def _named(
    endpoint_name: str,
    model_version: str,
    model: dict[str, Any],
    config: dict[str, Any],
    deployment: dict[str, Any],
) -> dict[str, Any]:
    """The named requests: the config names the model, the endpoint requests name the config."""
    model_name = versioned_name(endpoint_name, model_version, request_digest(model, "ModelName"))
    model = {"ModelName": model_name, **model}
    config = copy.deepcopy(config)
    for variant in config["ProductionVariants"]:
        variant["ModelName"] = model_name
    config_name = versioned_name(
        endpoint_name, model_version, request_digest(config, "EndpointConfigName")
    )
    tags = config.get("Tags", [])
    return {
        "CreateModel": model,
        "CreateEndpointConfig": {"EndpointConfigName": config_name, **config},
        "CreateEndpoint": {
            "EndpointName": endpoint_name,
            "EndpointConfigName": config_name,
            "Tags": tags,
        },
        "UpdateEndpoint": {
            "EndpointName": endpoint_name,
            "EndpointConfigName": config_name,
            "DeploymentConfig": deployment,
            # the new config's instance count and weight, not the old fleet's
            "RetainAllVariantProperties": False,
        },
    }


def plan_endpoint(
    settings: SageMakerSettings,
    endpoint: EndpointSettings | None = None,
    *,
    traffic: TrafficSettings | None = None,
    alarms: AlarmSettings | None = None,
    endpoint_name: str,
    model_version: str,
    model_data_url: str,
    parameters: int,
    tags: dict[str, str] | None = None,
    catalog: Catalog | None = None,
    model: str | None = None,
    serving: dict[str, Any] | None = None,
    profile: sizing_.Profile | None = None,
) -> EndpointPlan:
    """Every request of one deployment, named and validated, offline; JSON-able.

    ``endpoint`` defaults to ``settings.endpoint`` (the config's ``sagemaker.endpoint``),
    ``traffic`` and ``alarms`` to their defaults (the config's are ``deployment.traffic`` and
    ``deployment.alarms``: ``plan_deployment`` takes all of them from a config).
    ``parameters`` is the model's parameter count (``fmops.catalog.count_parameters`` on the
    base model's safetensors), which sizes the instance with ``hosting_memory`` at
    ``endpoint.serving_precision``; ``model_data_url`` is the training job's ``model.tar.gz``.
    ``serving``: a generative model's container, timeouts and sizing
    (``fmops.sagemaker.hosting.serving_of``); None for a classifier. ``profile``: what one request
    costs (``fmops.sizing.Profile``); with it the type and count are chosen by cost per 1,000
    requests at ``endpoint.sizing``'s goal, and auto scaling's target follows the estimate.
    """
    from fmops.catalog import load_catalog

    endpoint = endpoint or settings.endpoint
    traffic = traffic or TrafficSettings()
    alarms = alarms or AlarmSettings()
    check_endpoint_name(endpoint_name)
    if catalog is None:
        try:
            catalog = load_catalog(settings.region)
        except CatalogError as err:
            raise EndpointError(f"sagemaker.region: {err}") from None
    label = model or f"{endpoint_name} version {model_version}"
    demand = sizing_.demand_for(endpoint, alarms, serving is not None) if profile else None
    choice, sized = hosting_instance(
        catalog, endpoint, parameters, label, serving, profile=profile, demand=demand
    )
    count = sized.chosen.count if sized and sized.chosen.count else endpoint.instance_count
    notes: list[str] = list((serving or {}).get("notes", []))
    scaling = endpoint.scaling
    if scaling.enabled and count > scaling.max_instances:
        notes.append(
            f"the fleet for the peak ({count} x {choice.name}) is larger than "
            f"sagemaker.endpoint.scaling.max_instances ({scaling.max_instances}): auto scaling's "
            f"maximum is raised to {count}; raise max_instances to leave room above the peak"
        )
        scaling = scaling.model_copy(update={"max_instances": count})
    resource_tags = {
        **(tags or {}),
        "fmops:endpoint": endpoint_name,
        "fmops:model-version": str(model_version),
    }
    variant = endpoint.variant_name
    names = alarm_names(endpoint_name, variant, alarms)
    container = hosting.container(
        serving,
        choice.instance,
        hosting.image_for(serving, settings, choice.name),
        settings.region,
    )
    model_part = model_request(
        settings,
        image=container["Image"],
        environment=container["Environment"],
        model_data_url=model_data_url,
        tags=resource_tags,
    )
    config_part = endpoint_config_request(
        settings,
        endpoint,
        model_name="",  # named by _named, from the model request's hash
        instance_type=choice.name,
        instance_count=count,
        tags=resource_tags,
        catalog=catalog,
        notes=notes,
        variant_fields=hosting.variant_fields(serving),
    )
    requests = _named(
        endpoint_name,
        str(model_version),
        model_part,
        config_part,
        deployment_config(traffic, list(names.values())),
    )
    # The alarms outlive a version (CloudWatch also ignores Tags when it updates an alarm).
    alarm_tags = {k: v for k, v in resource_tags.items() if k != "fmops:model-version"}
    requests["PutMetricAlarm"] = alarm_requests(endpoint_name, variant, alarms, alarm_tags)
    target = endpoint.scaling.target_invocations_per_instance
    if target is None:
        target = sized.chosen.scaling_target(demand) if sized and demand else DEFAULT_TARGET
        if not sized:
            notes.append(
                f"auto scaling targets {DEFAULT_TARGET:g} invocations per instance per minute: "
                "no request profile to estimate the type's capacity from"
            )
    if scaling.enabled:
        register, policy = scaling_requests(endpoint_name, variant, scaling, target)
        requests["RegisterScalableTarget"], requests["PutScalingPolicy"] = register, policy
    else:
        requests["RegisterScalableTarget"] = requests["PutScalingPolicy"] = None
    _check(requests, count, catalog)
    if traffic.mode != "all_at_once" and count == 1:
        notes.append(
            f"{traffic.mode} with one instance: a traffic step cannot be smaller than an "
            "instance, so the first step takes the whole new fleet; give "
            "sagemaker.endpoint.instance_count >= 2 for a real canary or linear shift"
        )
    if traffic.wait_seconds == 0:
        notes.append(NO_BAKE)
    if not settings.network_isolation:
        notes.append("network isolation is off: the serving container can reach the internet")
    log.info(
        "planned endpoint %s version %s: %s x %d, %s traffic shift; %s",
        endpoint_name,
        model_version,
        choice.name,
        count,
        traffic.mode,
        "; ".join(notes) or "no notes",
    )
    plan = EndpointPlan(
        {
            "endpoint_name": endpoint_name,
            "model_version": str(model_version),
            "variant_name": variant,
            "model_name": requests["CreateModel"]["ModelName"],
            "endpoint_config_name": requests["CreateEndpointConfig"]["EndpointConfigName"],
            "model_data_url": model_data_url,
            "region": settings.region,
            "instance": {
                **choice.as_record(),
                "explain": sized.explain() if sized else choice.explain(),
                "tried": [],
                **({"sizing": sized.record()} if sized else {}),
            },
            "instance_count": count,
            "alarm_names": list(names.values()),
            "traffic": {
                **traffic.model_dump(),
                "baking_periods": baking_periods(traffic.mode, traffic.step_percent),
                "total_wait_seconds": total_wait_seconds(
                    traffic.mode,
                    traffic.wait_seconds,
                    traffic.termination_wait_seconds,
                    traffic.step_percent,
                ),
                "execution_timeout_seconds": traffic.timeout_seconds,
            },
            "requests": requests,
            "wait": {
                "timeout_seconds": endpoint.deployment_wait_seconds(traffic),
                "poll_seconds": endpoint.poll_seconds,
            },
            "scaling": scaling.model_dump(),
            "notes": notes,
            # What a capacity fallback needs to size and key the next instance type (next_instance).
            "sizing": {
                "parameters": parameters,
                "serving_precision": endpoint.serving_precision,
                **_fleets(sized, demand, endpoint),
            },
            "kms_key_id": settings.kms.endpoint_key_id,
            "capacity_fallback": [],
        }
    )
    if serving is not None:
        plan["serving"] = copy.deepcopy(serving)
        plan["sizing"] = {
            "parameters": parameters,
            "serving_precision": serving["precision"],
            "sharded": serving["sharded"],
            **_fleets(sized, demand, endpoint),
        }
    elif sized is not None:  # a classifier may fall back between CPU and GPU types
        plan["images"] = {
            processor: hosting.image_for(None, settings, _first_of(sized, processor))
            for processor in ("cpu", "gpu")
            if _first_of(sized, processor)
        }
    return plan


def _fleets(
    sized: sizing_.Sizing | None, demand: sizing_.Demand | None, endpoint: EndpointSettings
) -> dict[str, Any]:
    """The count and auto scaling target of every type of the ranking, for a capacity fallback."""
    if sized is None or demand is None:
        return {}
    estimates = (sized.chosen, *sized.fallbacks)
    return {
        "fleet": {e.name: e.count for e in estimates},
        "scaling_targets": {
            e.name: endpoint.scaling.target_invocations_per_instance or e.scaling_target(demand)
            for e in estimates
        },
    }


def _first_of(sized: sizing_.Sizing, processor: str) -> str | None:
    for found in (sized.chosen, *sized.fallbacks):
        if found.instance.processor == processor:
            return found.name
    return None


def plan_deployment(
    config: PipelineConfig,
    *,
    model_version: str,
    model_data_url: str,
    parameters: int,
    tags: dict[str, str] | None = None,
    catalog: Catalog | None = None,
    model: str | None = None,
    candidate: Candidate | None = None,
    jumpstart_hosting: JumpStartHosting | None = None,
    efficiency: dict[str, Any] | None = None,
) -> EndpointPlan:
    """``plan_endpoint`` with everything the config says: ``sagemaker`` and its ``endpoint``,
    ``deployment.endpoint_name``, ``deployment.traffic`` and ``deployment.alarms``, and how the
    model kind serves ``candidate``'s model (default: the first candidate;
    ``jumpstart_hosting``: a JumpStart model's, ``fmops.sagemaker.jumpstart.resolve_hosting``).
    ``efficiency``: the version's evaluation figures, which size a classifier's fleet; without
    them its request cost is estimated from the parameter count (``fmops.sizing``)."""
    settings = options.settings_of(config)
    candidate = candidate or config.candidates[0]
    serving = hosting.serving_of(config, candidate, parameters, jumpstart_hosting)
    profile = request_profile(config, candidate, parameters, serving, efficiency)
    plan = plan_endpoint(
        settings,
        settings.endpoint,
        traffic=config.deployment.traffic,
        alarms=config.deployment.alarms,
        endpoint_name=config.deployment.endpoint_name,
        model_version=model_version,
        model_data_url=model_data_url,
        parameters=parameters,
        tags=tags,
        catalog=catalog,
        model=model,
        serving=serving,
        profile=profile,
    )
    plan["notes"] += hosting.plan_notes(config, serving)
    return plan


def request_profile(
    config: PipelineConfig,
    candidate: Candidate,
    parameters: int,
    serving: dict[str, Any] | None,
    efficiency: dict[str, Any] | None = None,
) -> sizing_.Profile:
    """What one request of ``candidate``'s model costs (``fmops.sizing.profile_for``)."""
    return sizing_.profile_for(
        options.settings_of(config).endpoint,
        config.evaluation.cost.gpu_speedup,
        parameters,
        generative_precision=serving["precision"] if serving else None,
        efficiency=efficiency,
        tokens=candidate.hyperparameters.max_length,
    )


def with_instance_count(plan: dict[str, Any], count: int) -> dict[str, Any]:
    """The plan with the new fleet started at ``count`` instances (a new config name)."""
    plan = copy.deepcopy(plan)
    requests = plan["requests"]
    config = requests["CreateEndpointConfig"]
    for variant in config["ProductionVariants"]:
        variant["InitialInstanceCount"] = count
    _rename_config(plan)
    plan["instance_count"] = count
    return plan


# -- capacity fallback ---------------------------------------------------------------------------


def _gib(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def first_line(text: str, limit: int = 200) -> str:
    lines = (text or "").strip().splitlines()
    return (lines[0] if lines else "no reason given")[:limit]


def _rename_config(plan: dict[str, Any]) -> None:
    """Name the plan's endpoint config after its request (and the endpoint requests after it)."""
    requests = plan["requests"]
    config = requests["CreateEndpointConfig"]
    name = versioned_name(
        plan["endpoint_name"],
        plan["model_version"],
        request_digest(config, "EndpointConfigName"),
    )
    config["EndpointConfigName"] = name
    requests["CreateEndpoint"]["EndpointConfigName"] = name
    requests["UpdateEndpoint"]["EndpointConfigName"] = name
    plan["endpoint_config_name"] = name


def next_instance(
    plan: dict[str, Any], why: str, *, failed: str | None = None, catalog: Catalog | None = None
) -> dict[str, Any] | None:
    """The plan moved to the next instance type of its ranking, after SageMaker had no capacity
    (or no quota) for ``failed`` (default: the plan's type) because ``why``; None when the type
    is pinned or no type is left (``no_capacity_error`` says so).

    The ranking is the one made with the plan (``hosting_instance``): the types that fit the
    model at its serving precision (and, for a sized plan, meet the goal), cheapest first, within
    ``sagemaker.endpoint.allowed_instance_types`` and ``max_price_per_hour``. The new plan has a
    new endpoint config (the name is hashed over the request, so it differs), the endpoint key
    set by the NVMe rule for the new type, the old type in ``instance.tried`` and a note in
    ``capacity_fallback``. A sized plan (``fmops.sizing``) starts the next type with its own
    count and auto scaling target; the model is the same unless its container changes with the
    type (a generative model's GPU count, a classifier's CPU or GPU image).
    """
    from fmops.catalog import load_catalog

    instance = plan["instance"]
    current = instance["instance_type"]
    failed = failed or current
    fallbacks = list(instance.get("fallbacks") or [])
    if failed in fallbacks:  # a retry found a fallback's endpoint failed: go on after it
        fallbacks = fallbacks[fallbacks.index(failed) + 1 :]
    if instance.get("pinned") or not fallbacks:
        return None
    region = plan["region"]
    try:
        catalog = catalog or load_catalog(region)
    except CatalogError as err:
        raise EndpointError(f"sagemaker.region: {err}") from None
    sizing = plan["sizing"]
    need = hosting_memory(
        sizing["parameters"], sizing["serving_precision"], sharded=sizing.get("sharded", False)
    )
    # The catalog may have changed since the plan was made: skip a type that no longer fits.
    fitting = [t for t in fallbacks if t in catalog and catalog.fit(t, need)[0]]
    if not fitting:
        return None
    following = fitting[0]
    _, reason = catalog.fit(following, need)
    choice = Choice(catalog.get(following), need, reason, tuple(fitting[1:]))
    note = (
        f"no capacity for {failed} in {region}: falling back to {following} (next in the "
        f"catalog ranking that fits {_gib(need.gib)} GiB, {choice.instance.price})"
    )
    moved = copy.deepcopy(plan)
    config = moved["requests"]["CreateEndpointConfig"]
    count = sizing.get("fleet", {}).get(following, plan["instance_count"])
    for variant in config["ProductionVariants"]:
        variant["InstanceType"] = following
        variant["InitialInstanceCount"] = count
    moved["instance_count"] = count
    target = sizing.get("scaling_targets", {}).get(following)
    policy = moved["requests"].get("PutScalingPolicy")
    if policy and target:  # the next type's capacity, as the plan estimated it
        policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] = target
    image = moved.get("images", {}).get(choice.instance.processor)
    if moved.get("serving"):  # the container names the GPU count (and JumpStart's the type)
        _rebuild_model(moved, choice.instance)
    elif image and image != moved["requests"]["CreateModel"]["PrimaryContainer"]["Image"]:
        _rebuild_model(moved, choice.instance, image)  # between CPU and GPU types
    notes = [n for n in plan["notes"] if not n.startswith(f"KmsKeyId left out on {current}")]
    set_endpoint_key(config, plan.get("kms_key_id"), following, catalog, notes)
    _rename_config(moved)
    validate("sagemaker", "CreateEndpointConfig", config)
    validate("sagemaker", "CreateEndpoint", moved["requests"]["CreateEndpoint"])
    validate("sagemaker", "UpdateEndpoint", moved["requests"]["UpdateEndpoint"])
    problems = endpoint_config_problems(config, catalog)
    if problems:
        raise EndpointError("endpoint requests refused: " + "; ".join(problems))
    moved["instance"] = {
        **choice.as_record(),
        "explain": _fallback_explain(choice, need, failed),
        "tried": [*instance.get("tried", []), {"instance_type": failed, "why": why}],
    }
    moved["capacity_fallback"] = [*plan.get("capacity_fallback", []), note]
    moved["notes"] = [*notes, note]
    log.warning("%s: %s; SageMaker said: %s", plan["endpoint_name"], note, first_line(why))
    return moved


def _rebuild_model(plan: dict[str, Any], instance: InstanceType, image: str | None = None) -> None:
    """The plan's model on ``instance``: its container rebuilt (a generative model's names the
    GPU count; a classifier's ``image`` is the CPU or GPU build), named after its request, and
    named by the config."""
    requests = plan["requests"]
    model = {k: v for k, v in requests["CreateModel"].items() if k != "ModelName"}
    primary = model["PrimaryContainer"]
    built = hosting.container(
        plan.get("serving"), instance, image or primary["Image"], plan["region"]
    )
    model["PrimaryContainer"] = {**primary, **built}
    validate("sagemaker", "CreateModel", {"ModelName": "x", **model})
    name = versioned_name(
        plan["endpoint_name"], plan["model_version"], request_digest(model, "ModelName")
    )
    requests["CreateModel"] = {"ModelName": name, **model}
    for variant in requests["CreateEndpointConfig"]["ProductionVariants"]:
        variant["ModelName"] = name
    plan["model_name"] = name


def _fallback_explain(choice: Choice, need: MemoryEstimate, failed: str) -> str:
    text = (
        f"{choice.name}, the next in the catalog ranking after {failed} had no capacity: "
        f"{choice.reason}. Need: {need.explain()}"
    )
    if choice.fallbacks:
        text += f". Fallbacks if it has no capacity: {', '.join(choice.fallbacks)}"
    return text


def no_capacity_error(
    instance: dict[str, Any],
    *,
    endpoint_name: str,
    region: str,
    failed: str,
    why: str,
    status: str | None,
    config_name: str | None,
    deleted: bool = False,
) -> NoCapacityError:
    """The error of a deployment SageMaker had no capacity for, with no type left to try:
    ``instance`` is the plan's (or handle's) instance record, ``failed`` the last type tried."""
    tried = [*instance.get("tried", []), {"instance_type": failed, "why": why}]
    gone = (
        f" The failed endpoint {endpoint_name} is being deleted (it never served), so that a "
        "later run can create it again."
        if deleted
        else ""
    )
    if instance.get("pinned"):
        message = (
            f"no capacity for {failed} in {region} for endpoint {endpoint_name}: "
            f"{first_line(why)}. sagemaker.endpoint.instance_type pins {failed}, so fmops does "
            "not fall back to another type: retry later, ask AWS for capacity or a quota "
            f"increase for {failed}, or set sagemaker.endpoint.instance_type: auto to let fmops "
            "fall back along the catalog ranking."
        )
    else:
        listing = "; ".join(f"{t['instance_type']} ({first_line(t['why'])})" for t in tried)
        message = (
            f"no capacity in {region} for endpoint {endpoint_name} on any instance type of the "
            "catalog ranking that fits the model within sagemaker.endpoint."
            f"allowed_instance_types and max_price_per_hour; tried {len(tried)}: {listing}. "
            "Retry later, ask AWS for a quota increase for one of them, or widen "
            "sagemaker.endpoint.allowed_instance_types or max_price_per_hour."
        )
    return NoCapacityError(
        message + gone, endpoint_name=endpoint_name, status=status, config_name=config_name
    )
