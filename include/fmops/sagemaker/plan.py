"""The plan of a run: every training and evaluation request, the instance choices and their
cost, computed offline (no AWS call, no credentials).

Training instances come from ``fmops.catalog``: the base model's parameters are counted from
its safetensors headers, the memory of a fine-tune with ``train.py`` (fp32 AdamW, full or LoRA)
is estimated, and either the cheapest type that fits is chosen (``training.instance_type:
auto``, within ``sagemaker.allowed_instance_types`` and ``max_price_per_hour``) or the pinned
type is checked and refused with the arithmetic when it cannot hold the model.

Costs are upper bounds: the on-demand price per hour x the job's MaxRuntimeInSeconds (plus a
warm pool's keep-alive) x its instance count. A job bills only the time it runs, spot bills
less, and the shipped prices are approximate us-east-1 figures (see ``fmops.catalog``).

``plan_training`` and ``plan_evaluation`` return plans in the shape of ``fmops.pipeline``'s (kind,
candidate, base_name, target, settings, request, ...) plus ``instance``, ``cost`` and ``notes``,
so that the sagemaker backend can submit them as the local ones are.

``plan_endpoint`` adds what fmops_deploy would send for the winner (``fmops.sagemaker.endpoints``):
CreateModel, CreateEndpointConfig, CreateEndpoint (a new endpoint) or UpdateEndpoint (a later
version, blue/green as ``deployment.traffic`` says), the rollback alarms and auto scaling. The
winner is not known before a run: the plan takes the first candidate's model artifacts, and the
model version is ``VERSION_PLACEHOLDER``. An endpoint's cost is a rate, not a bound: it bills
per instance-hour while InService, until it is deleted, so it stays out of the run's total.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmops.catalog import (
    PRICE_REGION,
    Catalog,
    CatalogError,
    Choice,
    load_catalog,
    training_memory,
)
from fmops.config import Candidate, PipelineConfig, SageMakerSettings
from fmops.jobs.naming import job_name
from fmops.jobs.specs import PlanError, base_model_parameters, resolve_base_model
from fmops.sagemaker import endpoints, jumpstart, options
from fmops.sagemaker.requests import (
    evaluation_request,
    jumpstart_training_request,
    training_request,
)
from fmops.sagemaker.staging import (
    STAGED_DIGEST_PLACEHOLDER,
    Layout,
    SourceBundle,
    model_name,
    pack_sourcedir,
)

log = logging.getLogger(__name__)

DAG_ID = "fmops_finetune"
PLAN_RUN_ID = "manual__plan"
BASELINE = "baseline"  # as fmops.pipeline names the untuned model's evaluation
TRAINING_PRECISION = "fp32"  # what include/scripts/train.py trains in
VERSION_PLACEHOLDER = "<version>"  # the registered model version, known once a run registers it
ENDPOINT_NOTE = (
    "planned with the first candidate's model artifacts ({candidate}): the real deploy serves the "
    "winner's, and the model version is a placeholder, {version} (in the names: {prefix}...); "
    "the model and endpoint config names, hashed over the requests, differ then"
)
HOURLY = (
    "an endpoint bills per instance-hour while InService, until it is deleted: a rate, not in "
    "the run's total"
)
PLACEHOLDER_NOTE = (
    f"dataset digests are known only after validate_data: dataset URIs show "
    f"{STAGED_DIGEST_PLACEHOLDER}, and job names and tags are for run id {{run_id}}"
)
UPPER_BOUND = (
    "upper bound: on-demand price x MaxRuntimeInSeconds (+ warm-pool keep-alive) x instances; "
    "a job bills only the time it runs, and spot bills less"
)
# On-demand USD per hour of CPU processing instances (us-east-1, SageMaker pricing page, as of
# 2024 from memory, approximate): the catalog holds GPU types only. Evaluation runs on a CPU.
CPU_PRICE_SOURCE = "SageMaker pricing page, processing, us-east-1, 2024 from memory; approximate"
CPU_PRICES = {
    "ml.m5.large": 0.115,
    "ml.m5.xlarge": 0.23,
    "ml.m5.2xlarge": 0.461,
    "ml.m5.4xlarge": 0.922,
    "ml.c5.xlarge": 0.204,
    "ml.c5.2xlarge": 0.408,
    "ml.c5.4xlarge": 0.816,
}


@dataclass
class Planner:
    """What every request of one plan shares: the config, the catalog, the S3 layout."""

    config: PipelineConfig
    settings: SageMakerSettings
    catalog: Catalog
    layout: Layout
    bundle: SourceBundle
    staged: dict[str, Any]
    dag_id: str = DAG_ID
    run_id: str = PLAN_RUN_ID
    _params: dict[str, int] = field(default_factory=dict)
    _jumpstart: dict[str, jumpstart.JumpStartModel] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        config: PipelineConfig,
        staged: dict[str, Any] | None = None,
        dag_id: str = DAG_ID,
        run_id: str = PLAN_RUN_ID,
        catalog: Catalog | None = None,
        bundle: SourceBundle | None = None,
    ) -> Planner:
        settings = options.check_policy(config)
        if catalog is None:
            try:
                catalog = load_catalog(settings.region)
            except CatalogError as err:
                raise PlanError(f"sagemaker.region: {err}") from None
        layout = Layout.of(settings)
        digest = (staged or {}).get("digest")
        return cls(
            config,
            settings,
            catalog,
            layout,
            bundle or pack_sourcedir(),
            layout.dataset_uris(digest),
            dag_id,
            run_id,
        )

    def tags(self, candidate: str) -> dict[str, str]:
        from fmops.pipeline import _tags

        return _tags(self.config, self.dag_id, self.run_id, candidate)

    def base_model(self, name: str) -> tuple[Path, str]:
        folder = resolve_base_model(name)
        return folder, self.layout.model_uri(model_name(name, folder))

    def jumpstart(self, name: str) -> jumpstart.JumpStartModel:
        if name not in self._jumpstart:
            self._jumpstart[name] = jumpstart.resolve(name, self.settings.region)
        return self._jumpstart[name]

    def base_model_uri(self, name: str) -> str:
        """Where a base model's weights are in S3: fmops' upload, or JumpStart's archive."""
        if jumpstart.is_jumpstart(name):
            return self.jumpstart(name).model_uri
        return self.base_model(name)[1]

    def parameters(self, candidate: Candidate) -> int:
        name = candidate.base_model
        if name not in self._params:
            self._params[name] = base_model_parameters(candidate)
        return self._params[name]

    def training_instance(self, candidate: Candidate) -> Choice:
        params = self.parameters(candidate)
        need = training_memory(params, candidate.method, precision=TRAINING_PRECISION)
        label = f"candidate {candidate.name} ({candidate.base_model}, {candidate.method})"
        pinned = self.config.training.pinned_instance_type
        settings = self.settings
        allowed = settings.allowed_instance_types or None
        if candidate.jumpstart:
            allowed = self._jumpstart_types(candidate, pinned, allowed)
        try:
            if pinned:
                choice = self.catalog.check_pinned(pinned, need, model=label)
                price = choice.instance.price_per_hour
                ceiling = settings.max_price_per_hour
                if ceiling is not None and price is not None and price > ceiling:
                    raise PlanError(
                        f"training.instance_type: the pinned {pinned} costs {choice.instance.price}"
                        f", above sagemaker.max_price_per_hour ({ceiling}): raise the ceiling, pin "
                        "a cheaper type, or set instance_type: auto"
                    )
                return choice
            return self.catalog.choose(
                need, allowed=allowed, max_price=settings.max_price_per_hour, model=label
            )
        except CatalogError as err:
            raise PlanError(f"training.instance_type for {label}: {err}") from None

    def _jumpstart_types(
        self, candidate: Candidate, pinned: str | None, allowed: list[str] | None
    ) -> list[str]:
        """The catalog's types that the JumpStart model supports (and the config allows)."""
        model = self.jumpstart(candidate.base_model)
        supported = model.training_types
        if pinned and pinned not in supported:
            raise PlanError(
                f"training.instance_type: JumpStart model {model.model_id} {model.version} does "
                f"not train on the pinned {pinned}; it supports {', '.join(supported)}"
            )
        usable = [t for t in supported if t in self.catalog and (not allowed or t in allowed)]
        if not usable:
            raise PlanError(
                f"candidate {candidate.name}: none of the types JumpStart model {model.model_id} "
                f"supports ({', '.join(supported)}) is in the catalog and in "
                f"sagemaker.allowed_instance_types ({allowed or 'any'}): allow one of them"
            )
        return usable

    def evaluation_price(self) -> tuple[float | None, str | None]:
        instance = self.settings.evaluation_instance_type
        if instance in self.catalog:
            inst = self.catalog.get(instance)
            return inst.price_per_hour, inst.price_source
        if instance in CPU_PRICES:
            region = self.settings.region
            differs = (
                f" (a {PRICE_REGION} figure; {region} differs)" if region != PRICE_REGION else ""
            )
            return CPU_PRICES[instance], CPU_PRICE_SOURCE + differs
        return None, None


def backend_settings(settings: SageMakerSettings) -> dict[str, Any]:
    """What ``get_backend("sagemaker", **settings)`` takes: the connection and the region."""
    return {"aws_conn_id": settings.aws_conn_id, "region_name": settings.region}


def cost(
    instance_type: str,
    price: float | None,
    source: str | None,
    seconds: int,
    count: int = 1,
    keep_alive_seconds: int = 0,
) -> dict[str, Any]:
    """The upper bound of one job's cost, with the arithmetic."""
    hours = (seconds + keep_alive_seconds) / 3600
    record: dict[str, Any] = {
        "instance_type": instance_type,
        "usd_per_hour": price,
        "price_source": source,
        "hours": round(hours, 4),
        "instances": count,
    }
    if price is None:
        return record | {
            "upper_bound_usd": None,
            "explain": f"no known price for {instance_type}: the cost is not estimated",
        }
    usd = price * hours * count
    keep = f" incl. {keep_alive_seconds} s keep-alive" if keep_alive_seconds else ""
    return record | {
        "upper_bound_usd": round(usd, 2),
        "explain": (
            f"at most ${usd:.2f} = ${price:.3f}/h x {hours:.2f} h{keep} x {count} instance"
            f"{'s' if count > 1 else ''} (an upper bound)"
        ),
    }


def _validate(operation: str, name_field: str, name: str, request: dict, catalog: Catalog) -> None:
    from botocore.exceptions import ParamValidationError

    from fmops.jobs.local import validate_request

    options.check_request(operation, request, catalog)
    try:
        validate_request(operation, {**request, name_field: name})
    except ParamValidationError as err:
        raise PlanError(f"{operation} {name}: botocore's service model refuses it: {err}") from None


def _classification_only(config: PipelineConfig) -> None:
    if config.data.task != "classification":
        raise PlanError(
            f"data.task={config.data.task!r}: fmops_finetune cannot yet register or serve a "
            "causal LM, so it plans classification runs only (as the local target does)"
        )


def plan_training(
    config: PipelineConfig,
    staged: dict[str, Any] | None = None,
    dag_id: str = DAG_ID,
    run_id: str = PLAN_RUN_ID,
    *,
    planner: Planner | None = None,
    force: bool = False,
) -> list[dict[str, Any]]:
    """One CreateTrainingJob plan per candidate, validated against the policy and botocore."""
    from fmops.jobs import cache

    _classification_only(config)
    planner = planner or Planner.of(config, staged, dag_id, run_id)
    settings = planner.settings
    plans = []
    for candidate in config.candidates:
        base_name = job_name(planner.dag_id, planner.run_id, candidate.name, "training")
        choice = planner.training_instance(candidate)
        if candidate.jumpstart:
            request, notes = jumpstart_training_request(
                config,
                candidate,
                planner.jumpstart(candidate.base_model),
                instance_type=choice.name,
                layout=planner.layout,
                staged=planner.staged,
                tags=planner.tags(candidate.name),
                job_name=base_name,
                catalog=planner.catalog,
            )
        else:
            request, notes = training_request(
                config,
                candidate,
                instance_type=choice.name,
                layout=planner.layout,
                bundle=planner.bundle,
                staged=planner.staged,
                base_model_uri=planner.base_model_uri(candidate.base_model),
                tags=planner.tags(candidate.name),
                job_name=base_name,
                catalog=planner.catalog,
            )
        _validate("CreateTrainingJob", "TrainingJobName", base_name, request, planner.catalog)
        fields = cache.components(request, planner.staged["digest"], candidate.base_model)
        inst = choice.instance
        log.info(
            "planned sagemaker training job %s for %s: %s x %d; %s",
            base_name,
            candidate.name,
            inst.name,
            settings.instance_count,
            "; ".join(notes) or "no option notes",
        )
        plans.append(
            {
                "kind": "training",
                "candidate": candidate.name,
                "pipeline": config.pipeline,
                "base_name": base_name,
                "target": "sagemaker",
                "settings": backend_settings(settings),
                "request": request,
                "cache_key": cache.key_of(fields),
                "cache_fields": fields,
                "force": force,
                "instance": {**choice.as_record(), "explain": choice.explain()},
                "cost": cost(
                    inst.name,
                    inst.price_per_hour,
                    inst.price_source,
                    config.training.max_runtime_seconds,
                    settings.instance_count,
                    settings.keep_alive_seconds,
                ),
                "notes": notes,
                "model_artifacts": planner.layout.model_artifacts(base_name),
            }
        )
    return plans


def plan_evaluation(
    config: PipelineConfig,
    staged: dict[str, Any] | None = None,
    trained: list[dict[str, Any]] | None = None,
    dag_id: str = DAG_ID,
    run_id: str = PLAN_RUN_ID,
    *,
    planner: Planner | None = None,
    champion: bool = False,
) -> list[dict[str, Any]]:
    """A CreateProcessingJob plan per trained candidate (``candidate``, ``model_artifacts``),
    plus the untuned baseline when the config asks for it, and with ``champion`` the registry's
    champion (the offline plan leaves it out: it reads no registry)."""
    planner = planner or Planner.of(config, staged, dag_id, run_id)
    settings = planner.settings
    instance = settings.evaluation_instance_type
    price, source = planner.evaluation_price()
    entries = [(t["candidate"], t["model_artifacts"], False) for t in trained or [] if t]
    baseline = baseline_model(config)
    if baseline:
        entries.append((BASELINE, planner.base_model_uri(baseline), True))
    if champion:
        from fmops.pipeline import champion_entry

        entries += champion_entry(config)
    plans = []
    for candidate, model_uri, zero_shot in entries:
        base_name = job_name(planner.dag_id, planner.run_id, candidate, "processing")
        request, notes = evaluation_request(
            config,
            instance_type=instance,
            layout=planner.layout,
            bundle=planner.bundle,
            staged=planner.staged,
            model_uri=model_uri,
            zero_shot=zero_shot,
            output_uri=planner.layout.evaluation_output(base_name),
            tags=planner.tags(candidate),
            catalog=planner.catalog,
        )
        _validate("CreateProcessingJob", "ProcessingJobName", base_name, request, planner.catalog)
        plans.append(
            {
                "kind": "processing",
                "candidate": candidate,
                "base_name": base_name,
                "target": "sagemaker",
                "settings": backend_settings(settings),
                "request": request,
                "zero_shot": zero_shot,
                "instance": {"instance_type": instance, "price_per_hour": price},
                "cost": cost(instance, price, source, config.evaluation.max_runtime_seconds),
                "notes": notes,
            }
        )
    return plans


def baseline_model(config: PipelineConfig) -> str | None:
    """The base model evaluated untuned: the first candidate's that evaluate.py can run
    zero-shot (a JumpStart model's weights come in JumpStart's own format), or None."""
    if not config.evaluation.baseline:
        return None
    usable = [c.base_model for c in config.candidates if not c.jumpstart]
    if not usable:
        log.info("no zero-shot baseline: every candidate's base model is a JumpStart model")
        return None
    return usable[0]


def hourly_cost(instance: dict[str, Any], count: int, max_count: int) -> dict[str, Any]:
    """What an endpoint costs per hour while InService: price x instances, with the arithmetic."""
    price = instance.get("price_per_hour")
    record: dict[str, Any] = {
        "instance_type": instance["instance_type"],
        "usd_per_hour": price,
        "price_source": instance.get("price_source"),
        "instances": count,
        "max_instances": max_count,
    }
    if price is None:
        return record | {
            "usd_per_hour_all_instances": None,
            "explain": f"no known price for {instance['instance_type']}: the cost is not estimated",
        }
    plural = "s" if count > 1 else ""
    text = f"${price:.3f}/h x {count} instance{plural} = ${price * count:.3f}/h while InService"
    if max_count > count:
        text += f" (auto scaling up to {max_count}: ${price * max_count:.3f}/h)"
    return record | {
        "usd_per_hour_all_instances": round(price * count, 4),
        "explain": f"{text}; {HOURLY}",
    }


def plan_endpoint(
    config: PipelineConfig, training: list[dict[str, Any]], *, planner: Planner
) -> dict[str, Any]:
    """fmops_deploy's requests for the first candidate's model (``endpoints.plan_deployment``),
    with the hosting instance, its hourly cost, and what stands in for the winner."""
    first = config.candidates[0]
    job = next(p for p in training if p["candidate"] == first.name)
    parameters = planner.parameters(first)
    plan = endpoints.plan_deployment(
        config,
        model_version=VERSION_PLACEHOLDER,
        model_data_url=planner.layout.model_artifacts(job["base_name"]),
        parameters=parameters,
        tags={"fmops:pipeline": config.pipeline},
        catalog=planner.catalog,
        model=f"candidate {first.name} ({first.base_model})",
    )
    scaling = plan["scaling"]
    max_count = scaling["max_instances"] if scaling["enabled"] else plan["instance_count"]
    notes = list(plan["notes"])
    others = sorted({c.base_model for c in config.candidates} - {first.base_model})
    if others:
        notes.append(
            f"the instance is sized for {first.base_model}; a winner on {', '.join(others)} may "
            "need another type, which fmops_deploy chooses the same way when it deploys"
        )
    return plan | {
        "candidate": first.name,
        "base_model": first.base_model,
        "parameters": parameters,
        "placeholders": {
            "model_version": VERSION_PLACEHOLDER,
            "note": ENDPOINT_NOTE.format(
                candidate=first.name,
                version=VERSION_PLACEHOLDER,
                prefix=endpoints.version_prefix(plan["endpoint_name"], VERSION_PLACEHOLDER),
            ),
        },
        "cost": hourly_cost(plan["instance"], plan["instance_count"], max_count),
        "notes": notes,
    }


def _total(plans: list[dict[str, Any]]) -> dict[str, Any]:
    known = [
        p["cost"]["upper_bound_usd"] for p in plans if p["cost"]["upper_bound_usd"] is not None
    ]
    unknown = [p["base_name"] for p in plans if p["cost"]["upper_bound_usd"] is None]
    return {
        "upper_bound_usd": round(sum(known), 2),
        "jobs_without_price": unknown,
        "explain": UPPER_BOUND,
    }


def plan_run(
    config: PipelineConfig, dag_id: str = DAG_ID, run_id: str = PLAN_RUN_ID
) -> dict[str, Any]:
    """Everything one run of ``config`` on the sagemaker target would send, before validation."""
    planner = Planner.of(config, None, dag_id, run_id)
    settings, layout, bundle = planner.settings, planner.layout, planner.bundle
    training = plan_training(config, planner=planner)
    trained = [
        {"candidate": p["candidate"], "model_artifacts": p["model_artifacts"]} for p in training
    ]
    evaluation = plan_evaluation(config, trained=trained, planner=planner)
    endpoint = plan_endpoint(config, training, planner=planner)
    base_models = sorted({c.base_model for c in config.candidates})
    return {
        "pipeline": config.pipeline,
        "target": "sagemaker",
        "region": settings.region,
        "dag_id": dag_id,
        "run_id": run_id,
        "aws_conn_id": settings.aws_conn_id,
        "placeholders": {
            "staged_digest": STAGED_DIGEST_PLACEHOLDER,
            "note": PLACEHOLDER_NOTE.format(run_id=run_id),
        },
        "uploads": {
            "sourcedir": {
                "uri": layout.sourcedir_uri(bundle),
                "source_uri": layout.source_uri(bundle),
                "sha256": bundle.sha256,
                "bytes": len(bundle.archive),
                "files": bundle.names,
            },
            "datasets": {k: v for k, v in planner.staged.items() if k.endswith("_uri")},
            "base_models": {
                name: planner.base_model_uri(name)
                for name in base_models
                if not jumpstart.is_jumpstart(name)
            },
            "jumpstart_models": {
                name: planner.jumpstart(name).as_record()
                for name in base_models
                if jumpstart.is_jumpstart(name)
            },
            "note": "uploaded at run time (fmops.sagemaker.staging); the plan sends nothing",
        },
        "training": training,
        "evaluation": evaluation,
        "cost": {
            "training": _total(training),
            "evaluation": _total(evaluation),
            "upper_bound_usd": round(
                _total(training)["upper_bound_usd"] + _total(evaluation)["upper_bound_usd"], 2
            ),
            "explain": UPPER_BOUND,
            "endpoint_usd_per_hour": endpoint["cost"]["usd_per_hour_all_instances"],
        },
        "endpoint": endpoint,
    }


# -- the local target ----------------------------------------------------------------------------


def local_plan_run(
    config: PipelineConfig, dag_id: str = DAG_ID, run_id: str = PLAN_RUN_ID
) -> dict[str, Any]:
    """The local target's requests for a run, from ``fmops.pipeline``'s own planning."""
    from fmops import pipeline
    from fmops.jobs.local import validate_request
    from fmops.paths import state_dir

    resolved = {"config": config.model_dump(mode="json"), "force_rerun": False}
    root = state_dir() / "datasets" / STAGED_DIGEST_PLACEHOLDER
    staged = {"digest": STAGED_DIGEST_PLACEHOLDER} | {
        f"{c}_uri": f"file://{root / c}" for c in ("train", "validation", "evaluation")
    }
    training = pipeline.plan_training(resolved, staged, dag_id, run_id)
    trained = []
    for plan in training:
        validate_request(
            "CreateTrainingJob", {**plan["request"], "TrainingJobName": plan["base_name"]}
        )
        output = plan["request"]["OutputDataConfig"]["S3OutputPath"]
        trained.append(
            {
                "candidate": plan["candidate"],
                "model_artifacts": f"{output}/{plan['base_name']}/output/model.tar.gz",
            }
        )
    evaluation = pipeline.plan_evaluation(resolved, staged, trained, dag_id, run_id)
    for plan in evaluation:
        validate_request(
            "CreateProcessingJob", {**plan["request"], "ProcessingJobName": plan["base_name"]}
        )
    for plan in training + evaluation:
        plan["cost"] = {"upper_bound_usd": 0.0, "explain": "runs on this machine: no AWS cost"}
        plan["instance"] = {
            "instance_type": "local process",
            "explain": "the local executor runs the job script on this machine's CPUs",
        }
    return {
        "pipeline": config.pipeline,
        "target": "local",
        "dag_id": dag_id,
        "run_id": run_id,
        "placeholders": {
            "staged_digest": STAGED_DIGEST_PLACEHOLDER,
            "note": PLACEHOLDER_NOTE.format(run_id=run_id),
        },
        "training": training,
        "evaluation": evaluation,
        "cost": {"upper_bound_usd": 0.0, "explain": "the local target runs on this machine"},
        "endpoint": local_endpoint(config),
    }


def local_endpoint(config: PipelineConfig) -> dict[str, Any]:
    """What fmops_deploy does on the local target: no request to plan, the settings it takes."""
    deployment = config.deployment
    return {
        "target": "local",
        "endpoint_name": deployment.endpoint_name,
        "url": f"http://127.0.0.1:{deployment.port}",
        "traffic": deployment.traffic.model_dump(),
        "cost": {"usd_per_hour_all_instances": 0.0, "explain": "runs on this machine: no cost"},
        "explain": (
            "fmops_deploy serves the winner on this machine (fmops.deployment.local), blue/green "
            f"behind a router on 127.0.0.1:{deployment.port}: no AWS request and no cost "
            "(deployment.alarms are CloudWatch alarms, the sagemaker target's)"
        ),
    }


# -- text --------------------------------------------------------------------------------------


def render_text(plan: dict[str, Any], source: str) -> str:
    """The plan as people read it: a summary, then every request as JSON."""
    import json

    from fmops.pipeline import jsonable

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
        *endpoint_lines(plan["endpoint"]),
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


def _traffic_line(traffic: dict[str, Any]) -> str:
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


def _alarm_rule(alarm: dict[str, Any]) -> str:
    statistic = alarm.get("ExtendedStatistic") or alarm.get("Statistic")
    window = f"{alarm['DatapointsToAlarm']} of {alarm['EvaluationPeriods']} x {alarm['Period']} s"
    if alarm["MetricName"] == "ModelLatency":  # microseconds
        limit = f"{alarm['Threshold'] / 1000:g} ms"
    else:  # 0 or 1 per invocation: the Average is the error rate
        limit = f"{alarm['Threshold']:.2%} of invocations"
    return f"{alarm['MetricName']} {statistic} > {limit}, {window}"


def endpoint_lines(endpoint: dict[str, Any]) -> list[str]:
    """The endpoint part of the summary: instance, hourly cost, traffic, alarms, scaling."""
    name = endpoint["endpoint_name"]
    if endpoint.get("target") == "local":
        return [
            f"endpoint {name} (fmops_deploy, local): {endpoint['url']}",
            f"  {endpoint['explain']}",
            f"  {_traffic_line(endpoint['traffic'])}",
        ]
    requests = endpoint["requests"]
    instance, cost = endpoint["instance"], endpoint["cost"]
    alarms = requests["PutMetricAlarm"]
    lines = [
        f"endpoint {name} (fmops_deploy: a new endpoint, or a blue/green update of it):",
        f"  {endpoint['placeholders']['note']}",
        f"  model data: {endpoint['model_data_url']}",
        f"  instance ({endpoint['instance_count']} to start with): {instance['explain']}",
        f"  cost: {cost['explain']}",
        f"  {_traffic_line(endpoint['traffic'])}",
        f"  CreateModel {endpoint['model_name']}; CreateEndpointConfig "
        f"{endpoint['endpoint_config_name']} (variant {endpoint['variant_name']})",
        f"  CreateEndpoint {name} if it does not exist, else UpdateEndpoint {name} to the new "
        "config (a later version), with AutoRollbackConfiguration on the alarms",
        f"  PutMetricAlarm x {len(alarms)}, before CreateEndpoint or UpdateEndpoint names them: "
        + "; ".join(f"{a['AlarmName']} ({_alarm_rule(a)})" for a in alarms),
    ]
    register, policy = requests.get("RegisterScalableTarget"), requests.get("PutScalingPolicy")
    if register and policy:
        target = policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"]
        lines.append(
            f"  auto scaling once InService: RegisterScalableTarget {register['ResourceId']} "
            f"({register['MinCapacity']}-{register['MaxCapacity']} instances), PutScalingPolicy "
            f"{policy['PolicyName']} (target {target:g} invocations per instance per minute)"
        )
    else:
        lines.append("  auto scaling: off (sagemaker.endpoint.scaling.enabled: false)")
    lines += [f"  note: {note}" for note in endpoint.get("notes", [])]
    return lines
