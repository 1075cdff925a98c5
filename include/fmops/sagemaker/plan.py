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

``plan_training`` and ``plan_evaluation`` return job plans (``fmops.jobs.records``) with the
target's ``instance``, ``cost`` and ``notes``, which ``fmops.pipeline.submit`` submits as it does
the local target's; ``fmops.targets.sagemaker`` offers them through the ``Target`` contract.

``plan_endpoint`` adds what fmops_deploy would send for the winner (``endpoint_plan``):
CreateModel, CreateEndpointConfig, CreateEndpoint (a new endpoint) or UpdateEndpoint (a later
version, blue/green as ``deployment.traffic`` says), the rollback alarms and auto scaling, in
the serving container of the model kind (``fmops.sagemaker.hosting``: the Hugging Face inference
toolkit for a classifier, TGI for a generative model). The
winner is not known before a run: the plan takes the first candidate's model artifacts, and the
model version is ``VERSION_PLACEHOLDER``. An endpoint's cost is a rate, not a bound: it bills
per instance-hour while InService, until it is deleted, so it stays out of the run's total.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmops.base_models import is_jumpstart
from fmops.catalog import (
    PRICE_REGION,
    Catalog,
    CatalogError,
    Choice,
    hosting_memory,
    load_catalog,
    training_memory,
)
from fmops.config import Candidate, PipelineConfig
from fmops.jobs import records
from fmops.jobs.naming import BASELINE, job_name, job_tags
from fmops.jobs.specs import (
    PlanError,
    base_model_files,
    base_model_parameters,
    validate_request,
)
from fmops.kinds import kind_of
from fmops.plan_text import (
    DAG_ID,
    PLACEHOLDER_NOTE,
    PLAN_RUN_ID,
    STAGED_DIGEST_PLACEHOLDER,
    traffic_line,
)
from fmops.sagemaker import endpoint_plan, endpoint_resources, hosting, jumpstart, options
from fmops.sagemaker.requests import (
    evaluation_request,
    jumpstart_training_request,
    training_request,
)
from fmops.sagemaker.settings import SageMakerSettings
from fmops.sagemaker.staging import (
    Layout,
    SourceBundle,
    model_name,
    pack_sourcedir,
)

log = logging.getLogger(__name__)

TARGET = "sagemaker"  # the target whose plans these are (fmops.targets.sagemaker)
JUMPSTART_LLM_PRECISION = "bf16"  # what JumpStart's text-generation scripts are sized at
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
    _hosting: dict[str, jumpstart.JumpStartHosting] = field(default_factory=dict)

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
        return job_tags(self.config.pipeline, self.dag_id, self.run_id, candidate)

    def base_model(self, name: str) -> tuple[Path, str]:
        """A base model's local folder (a Hub model's without weights) and its S3 URI."""
        folder = base_model_files(name)
        return folder, self.layout.model_uri(model_name(name, folder))

    def jumpstart(self, name: str) -> jumpstart.JumpStartModel:
        if name not in self._jumpstart:
            self._jumpstart[name] = jumpstart.resolve(name, self.settings.region)
        return self._jumpstart[name]

    def jumpstart_hosting(self, candidate: Candidate) -> jumpstart.JumpStartHosting | None:
        """How JumpStart serves a generative JumpStart candidate's model, else None."""
        if hosting.family_of(self.config, candidate) != hosting.JUMPSTART:
            return None
        name = candidate.base_model
        if name not in self._hosting:
            self._hosting[name] = jumpstart.resolve_hosting(
                self.jumpstart(name), self.settings.region
            )
        return self._hosting[name]

    def base_model_uri(self, name: str) -> str:
        """Where a base model's weights are in S3: fmops' upload, or JumpStart's archive."""
        if is_jumpstart(name):
            return self.jumpstart(name).model_uri
        return self.base_model(name)[1]

    def parameters(self, candidate: Candidate) -> int:
        name = candidate.base_model
        if name not in self._params:
            self._params[name] = base_model_parameters(candidate)
        return self._params[name]

    def training_instance(self, candidate: Candidate) -> Choice:
        params = self.parameters(candidate)
        if candidate.jumpstart and kind_of(self.config).generative:
            # JumpStart's LLM scripts, not train.py: they fine-tune in half precision with the
            # model sharded over the GPUs (FSDP), on the types their spec lists.
            need = training_memory(
                params, candidate.method, precision=JUMPSTART_LLM_PRECISION, sharded=True
            )
        else:
            # train.py: hyperparameters.precision, fp32 or bf16 (mixed, a LoRA base held in bf16)
            need = training_memory(
                params, candidate.method, precision=candidate.hyperparameters.precision
            )
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

    def evaluation_memory(self) -> list[str]:
        """A generative model's evaluation: evaluate.py loads the weights as train.py saved them
        (in the candidate's training precision, fp32 or bf16) on one device, a GPU when the
        instance has one. A catalog GPU type that cannot hold the largest candidate is refused
        with the arithmetic; a CPU type gets a note."""
        if not kind_of(self.config).generative:
            return []
        instance = self.settings.evaluation_instance_type
        candidate = max(
            self.config.candidates,
            key=lambda c: self.parameters(c) * hosting.archive_bytes_per_parameter(c),
        )
        need = hosting_memory(self.parameters(candidate), candidate.hyperparameters.precision)
        if instance not in self.catalog:
            return [
                f"evaluate.py generates on the CPU of {instance}, holding {need.gib:.1f} GiB for "
                f"{candidate.base_model} ({need.explain()}): choose a type with that much memory "
                "to spare, or a GPU type (it generates on the GPU when there is one)"
            ]
        fits, arithmetic = self.catalog.fit(instance, need)
        if not fits:
            raise PlanError(
                f"sagemaker.evaluation_instance_type: {instance} cannot hold {candidate.base_model}"
                f" for evaluate.py, which loads it in {need.precision} on one GPU: {arithmetic}; "
                "choose a type whose GPU holds it"
            )
        return []

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

    options.check_request(operation, request, catalog)
    try:
        validate_request(operation, {**request, name_field: name})
    except ParamValidationError as err:
        raise PlanError(f"{operation} {name}: botocore's service model refuses it: {err}") from None


# The hosting image families this target deploys (fmops.sagemaker.hosting); a model kind whose
# family is missing here is refused before anything is planned.
HOSTING_IMAGES = (hosting.CLASSIFIER, hosting.LLM)


def hostable(config: PipelineConfig) -> None:
    """Refuse a run whose winner this target could not deploy: a kind without a hosting image
    here, or a base model TGI could not serve as the config says (``hosting``)."""
    kind = kind_of(config)
    if kind.hosting_image not in HOSTING_IMAGES:
        raise PlanError(
            f"data.task={config.data.task!r}: the sagemaker target cannot host a {kind.name} "
            f"model yet (it needs the {kind.hosting_image} image; this version deploys "
            f"{list(HOSTING_IMAGES)}); run it on the local target, or use task: classification"
        )
    problems = hosting.config_problems(config)
    for candidate in config.candidates:
        if hosting.family_of(config, candidate) == hosting.LLM:
            folder = base_model_files(candidate.base_model)
            problems += hosting.model_folder_problems(config, candidate, folder)
    if problems:
        raise PlanError("; ".join(problems))


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
    hostable(config)
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
            records.training_plan(
                config,
                candidate,
                target=TARGET,
                base_name=base_name,
                settings=backend_settings(settings),
                request=request,
                staged_digest=planner.staged["digest"],
                force=force,
                instance={**choice.as_record(), "explain": choice.explain()},
                cost=cost(
                    inst.name,
                    inst.price_per_hour,
                    inst.price_source,
                    config.training.max_runtime_seconds,
                    settings.instance_count,
                    settings.keep_alive_seconds,
                ),
                notes=notes,
                model_artifacts=planner.layout.model_artifacts(base_name),
            )
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
    force: bool = False,
    champion: list[tuple[str, str, bool]] = (),
) -> list[dict[str, Any]]:
    """A CreateProcessingJob plan per trained candidate (``candidate``, ``model_artifacts``),
    plus the untuned baseline when the config asks for it, and the ``champion`` entry the
    pipeline found in the registry (the offline plan reads no registry). SageMaker evaluations
    are not cached."""
    planner = planner or Planner.of(config, staged, dag_id, run_id)
    settings = planner.settings
    instance = settings.evaluation_instance_type
    price, source = planner.evaluation_price()
    memory_notes = planner.evaluation_memory()
    entries = [(t["candidate"], t["model_artifacts"], False) for t in trained or [] if t]
    baseline = baseline_model(config)
    if baseline:
        entries.append((BASELINE, planner.base_model_uri(baseline), True))
    entries += champion
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
            records.evaluation_plan(
                config,
                candidate,
                target=TARGET,
                base_name=base_name,
                settings=backend_settings(settings),
                request=request,
                zero_shot=zero_shot,
                force=force,
                staged_digest=None,
                instance={"instance_type": instance, "price_per_hour": price},
                cost=cost(instance, price, source, config.evaluation.max_runtime_seconds),
                notes=[*notes, *memory_notes],
            )
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
    """fmops_deploy's requests for the first candidate's model (``endpoint_plan.plan_deployment``),
    with the hosting instance, its hourly cost, and what stands in for the winner."""
    first = config.candidates[0]
    job = next(p for p in training if p["candidate"] == first.name)
    parameters = planner.parameters(first)
    plan = endpoint_plan.plan_deployment(
        config,
        model_version=VERSION_PLACEHOLDER,
        model_data_url=planner.layout.model_artifacts(job["base_name"]),
        parameters=parameters,
        tags={"fmops:pipeline": config.pipeline},
        catalog=planner.catalog,
        model=f"candidate {first.name} ({first.base_model})",
        candidate=first,
        jumpstart_hosting=planner.jumpstart_hosting(first),
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
                prefix=endpoint_resources.version_prefix(
                    plan["endpoint_name"], VERSION_PLACEHOLDER
                ),
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
        "target": TARGET,
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
                name: planner.base_model_uri(name) for name in base_models if not is_jumpstart(name)
            },
            "jumpstart_models": {
                name: planner.jumpstart(name).as_record()
                for name in base_models
                if is_jumpstart(name)
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


# -- the plan's text ------------------------------------------------------------------------------


def _alarm_rule(alarm: dict[str, Any]) -> str:
    statistic = alarm.get("ExtendedStatistic") or alarm.get("Statistic")
    window = f"{alarm['DatapointsToAlarm']} of {alarm['EvaluationPeriods']} x {alarm['Period']} s"
    if alarm["MetricName"] == "ModelLatency":  # microseconds
        limit = f"{alarm['Threshold'] / 1000:g} ms"
    else:  # 0 or 1 per invocation: the Average is the error rate
        limit = f"{alarm['Threshold']:.2%} of invocations"
    return f"{alarm['MetricName']} {statistic} > {limit}, {window}"


def _serving_lines(endpoint: dict[str, Any]) -> list[str]:
    """A generative model's container and start-up timeouts (a classifier's plan has none)."""
    serving = endpoint.get("serving")
    if not serving:
        return []
    requests = endpoint["requests"]
    container = requests["CreateModel"]["PrimaryContainer"]
    variant = requests["CreateEndpointConfig"]["ProductionVariants"][0]
    env = container["Environment"]
    shown = ", ".join(
        f"{k}={env[k]}"
        for k in ("HF_MODEL_ID", "SM_NUM_GPUS", "MAX_INPUT_TOKENS", "MAX_TOTAL_TOKENS", "DTYPE")
        if k in env
    )
    what = (
        f"JumpStart's serving container: {container['Image']}"
        if serving["family"] == hosting.JUMPSTART
        else f"Hugging Face LLM (TGI {serving['tgi_version']}): {container['Image']}"
    )
    return [
        f"  serving: {what}; {shown or 'environment: ' + json.dumps(env)}; no code/ (the "
        "archive must hold config.json and *.safetensors)",
        f"  start-up: {hosting.DOWNLOAD_TIMEOUT} {variant[hosting.DOWNLOAD_TIMEOUT]} s, "
        f"{hosting.STARTUP_TIMEOUT} {variant[hosting.STARTUP_TIMEOUT]} s ("
        f"{serving['timeouts_explain']})",
    ]


def endpoint_lines(endpoint: dict[str, Any]) -> list[str]:
    """The endpoint part of ``fmops plan``'s summary (``fmops.plan_text``): instance, hourly
    cost, traffic, alarms, scaling."""
    name = endpoint["endpoint_name"]
    requests = endpoint["requests"]
    instance, cost = endpoint["instance"], endpoint["cost"]
    alarms = requests["PutMetricAlarm"]
    lines = [
        f"endpoint {name} (fmops_deploy: a new endpoint, or a blue/green update of it):",
        f"  {endpoint['placeholders']['note']}",
        f"  model data: {endpoint['model_data_url']}",
        f"  instance ({endpoint['instance_count']} to start with): {instance['explain']}",
        *_serving_lines(endpoint),
        f"  cost: {cost['explain']}",
        f"  {traffic_line(endpoint['traffic'])}",
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
