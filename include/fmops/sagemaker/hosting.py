"""How a model version is served on SageMaker: the container of its CreateModel request, what
its endpoint variant needs, and how the catalog sizes it, per model kind (``fmops.kinds``: the
kind's ``hosting_image``).

- ``huggingface`` (classifiers): the Hugging Face PyTorch inference image running the archive's
  ``code/inference.py`` (the inference toolkit's contract, ``fmops.sagemaker.endpoint_resources``),
  sized unsharded at ``sagemaker.endpoint.serving_precision``. The endpoint plan of a classifier
  carries no serving record: it is what this target always did.
- ``huggingface-llm`` (generative LMs): the Hugging Face LLM image (Text Generation Inference) of
  ``sagemaker.endpoint.llm.tgi_version``, from the SDK's offline ``huggingface-llm`` table. TGI
  reads the model folder itself, so the archive needs no ``code/`` but ``config.json`` and
  ``*.safetensors`` at its root. Environment: ``HF_MODEL_ID=/opt/ml/model``, ``SM_NUM_GPUS`` the
  instance's GPU count (the catalog's), over which TGI shards the weights (tensor parallel, so the
  catalog sizes the model sharded), ``MAX_INPUT_TOKENS`` and ``MAX_TOTAL_TOKENS`` from
  ``sagemaker.endpoint.llm``, ``DTYPE`` from the serving precision (fp16 or bf16; fp16 when the
  config leaves it out, as TGI serves an fp32 checkpoint), and the jobs' offline variables.
- a fine-tuned JumpStart generative model (``jumpstart:<id>``): the inference image and the
  environment its spec names for the chosen instance type, among the types it supports
  (``fmops.sagemaker.jumpstart.resolve_hosting``), as ``JumpStartModel.deploy`` sends them.

The start-up timeouts of a generative model's variant are sized from its archive's weights,
W GiB = parameters x 4 B, or x 2 B for a candidate trained at ``precision: bf16`` (``train.py``
saves the weights in its training precision, ``archive_bytes_per_parameter``), each rounded up to
a whole minute within SageMaker's 60-3600 s:

- ``ModelDataDownloadTimeoutInSeconds`` = 300 + 30 x W: the S3 download and the unpacking of
  ``model.tar.gz`` (gunzip is single-threaded: about 35 MiB/s together), after 300 s to start;
- ``ContainerStartupHealthCheckTimeoutInSeconds`` = 300 + 15 x W: TGI reads the safetensors,
  casts them to DTYPE on the GPUs and warms up (a prefill of MAX_INPUT_TOKENS) before /ping
  answers.

A 7.25B-parameter model (Mistral 7B): 27 GiB in fp32, 1140 s and 720 s; 13.5 GiB in bf16, 720 s
and 540 s. A JumpStart spec's own
``deploy_kwargs`` timeouts come before the formula, ``sagemaker.endpoint.llm``'s before both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.catalog import GIB, InstanceType, MemoryEstimate, hosting_memory
from fmops.deployment.settings import total_wait_seconds
from fmops.jobs.specs import JOB_ENV
from fmops.kinds import kind_of
from fmops.sagemaker import images
from fmops.sagemaker.endpoint_resources import EndpointError, toolkit_environment
from fmops.sagemaker.settings import VARIANT_TIMEOUT_SECONDS

if TYPE_CHECKING:
    from fmops.config import Candidate, PipelineConfig
    from fmops.sagemaker.jumpstart import JumpStartHosting
    from fmops.sagemaker.settings import EndpointSettings, SageMakerSettings

CLASSIFIER = "huggingface"  # the hosting image families of fmops.kinds
LLM = "huggingface-llm"
JUMPSTART = "jumpstart"  # a JumpStart model's own serving container
MODEL_DIR = "/opt/ml/model"
GPUS_VARIABLE = "SM_NUM_GPUS"
TGI_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # TGI's DTYPE (--dtype) values
DEFAULT_LLM_PRECISION = "fp16"
ARCHIVE_BYTES_PER_PARAMETER = {"fp32": 4, "bf16": 2}  # train.py saves in its precision
DOWNLOAD_BASE_SECONDS, DOWNLOAD_SECONDS_PER_GIB = 300, 30
STARTUP_BASE_SECONDS, STARTUP_SECONDS_PER_GIB = 300, 15
DOWNLOAD_TIMEOUT = "ModelDataDownloadTimeoutInSeconds"
STARTUP_TIMEOUT = "ContainerStartupHealthCheckTimeoutInSeconds"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
PRECISION_PROBLEM = (
    "sagemaker.endpoint.serving_precision: {precision} is not a precision TGI serves a generative "
    "model in (its DTYPE: fp16 or bf16); set fp16 (T4 and newer GPUs) or bf16 (A10G, A100, H100), "
    "or leave it out for fp16"
)


def family_of(config: PipelineConfig, candidate: Candidate | None = None) -> str:
    """The serving family of ``candidate``'s model (default: the first candidate)."""
    family = kind_of(config).hosting_image
    candidate = candidate or config.candidates[0]
    return JUMPSTART if family == LLM and candidate.jumpstart else family


def llm_precision(endpoint: EndpointSettings) -> str:
    """The precision TGI serves in: the configured one, fp16 when the config leaves it out."""
    if "serving_precision" in endpoint.model_fields_set:
        return endpoint.serving_precision
    return DEFAULT_LLM_PRECISION


def config_problems(config: PipelineConfig) -> list[str]:
    """What a generative config's sagemaker block asks that TGI cannot do (no I/O: config load)."""
    if config.sagemaker is None or kind_of(config).hosting_image != LLM:
        return []
    endpoint = config.sagemaker.endpoint
    problems = []
    precision = llm_precision(endpoint)
    if precision not in TGI_DTYPES:
        problems.append(PRECISION_PROBLEM.format(precision=precision))
    if any(not c.jumpstart for c in config.candidates):
        problems += images.llm_image_problems(endpoint.llm.tgi_version, config.sagemaker.region)
    return problems


def model_folder_problems(config: PipelineConfig, candidate: Candidate, folder: Path) -> list[str]:
    """Why TGI could not serve a fine-tune of the base model in ``folder`` as the config says:
    ``messages`` requests (the smoke test's) need a chat template, which TGI reads from the
    tokenizer (fmops' plain template is not one), and MAX_TOTAL_TOKENS must fit the model's
    context."""
    if config.sagemaker is None or family_of(config, candidate) != LLM:
        return []
    problems = []
    tokenizer = _json(folder / "tokenizer_config.json")
    has_chat = bool(tokenizer.get("chat_template")) or any(
        (folder / name).exists() for name in CHAT_TEMPLATE_FILES
    )
    template = config.data.prompt_template
    if template == "plain" or not has_chat:
        why = (
            "data.prompt_template is plain"
            if template == "plain"
            else f"the tokenizer of {candidate.base_model} has no chat template"
        )
        problems.append(
            f"candidate {candidate.name}: {why}, but TGI renders `messages` with the tokenizer's "
            "chat template (fmops' plain template is not one): the endpoint would answer the "
            "smoke test's chats with an error. Use a base model with a chat template and "
            "data.prompt_template: auto or chat, or serve it on the local target"
        )
    context = _json(folder / "config.json").get("max_position_embeddings")
    limit = config.sagemaker.endpoint.llm.max_total_tokens
    if isinstance(context, int) and limit > context:
        problems.append(
            f"sagemaker.endpoint.llm.max_total_tokens: {limit} is above the context of "
            f"{candidate.base_model} (max_position_embeddings {context}): TGI would not start; "
            f"set it to at most {context}"
        )
    return problems


def _json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


# -- the serving record ---------------------------------------------------------------------------


def _minutes(seconds: float) -> int:
    low, high = VARIANT_TIMEOUT_SECONDS
    return int(min(high, max(low, math.ceil(seconds / 60) * 60)))


def archive_bytes_per_parameter(candidate: Candidate) -> int:
    """Bytes per parameter of the weights train.py saves for ``candidate``."""
    return ARCHIVE_BYTES_PER_PARAMETER[candidate.hyperparameters.precision]


def timeouts(
    parameters: int,
    llm: Any,
    download: int | None = None,
    startup: int | None = None,
    bytes_per_parameter: int = ARCHIVE_BYTES_PER_PARAMETER["fp32"],
) -> tuple[dict[str, int], str]:
    """The variant's two start-up timeouts and their arithmetic: the config's
    (``sagemaker.endpoint.llm``), else ``download`` / ``startup`` (a JumpStart spec's), else the
    formula of the module docstring."""
    gib = parameters * bytes_per_parameter / GIB
    formula = {
        DOWNLOAD_TIMEOUT: _minutes(DOWNLOAD_BASE_SECONDS + DOWNLOAD_SECONDS_PER_GIB * gib),
        STARTUP_TIMEOUT: _minutes(STARTUP_BASE_SECONDS + STARTUP_SECONDS_PER_GIB * gib),
    }
    chosen = {
        DOWNLOAD_TIMEOUT: llm.download_timeout_seconds or download or formula[DOWNLOAD_TIMEOUT],
        STARTUP_TIMEOUT: llm.startup_timeout_seconds or startup or formula[STARTUP_TIMEOUT],
    }
    explain = (
        f"weights {gib:.1f} GiB ({parameters:,} parameters x {bytes_per_parameter} B, "
        f"the archive's precision): download {DOWNLOAD_BASE_SECONDS} s + "
        f"{DOWNLOAD_SECONDS_PER_GIB} s/GiB = {formula[DOWNLOAD_TIMEOUT]} s, "
        f"start-up {STARTUP_BASE_SECONDS} s + "
        f"{STARTUP_SECONDS_PER_GIB} s/GiB = {formula[STARTUP_TIMEOUT]} s (whole minutes, "
        f"{VARIANT_TIMEOUT_SECONDS[0]}-{VARIANT_TIMEOUT_SECONDS[1]} s)"
    )
    if chosen != formula:
        explain += (
            f"; sent: download {chosen[DOWNLOAD_TIMEOUT]} s, start-up {chosen[STARTUP_TIMEOUT]} s "
            "(sagemaker.endpoint.llm or the JumpStart spec)"
        )
    return chosen, explain


def serving_of(
    config: PipelineConfig,
    candidate: Candidate,
    parameters: int,
    jumpstart_hosting: JumpStartHosting | None = None,
) -> dict[str, Any] | None:
    """The serving record of ``candidate``'s model (JSON: it travels in the endpoint plan, so
    that a capacity fallback can rebuild the container for another type); None for a
    classifier, which the inference toolkit serves as it always did."""
    family = family_of(config, candidate)
    if family == CLASSIFIER:
        return None
    settings = config.sagemaker
    endpoint = settings.endpoint
    precision = llm_precision(endpoint)
    if precision not in TGI_DTYPES:
        raise EndpointError(PRECISION_PROBLEM.format(precision=precision))
    llm = endpoint.llm
    notes: list[str] = []
    if family == JUMPSTART:
        if jumpstart_hosting is None:
            raise EndpointError(
                f"candidate {candidate.name}: JumpStart model {candidate.base_model}'s hosting "
                "specs were not looked up (fmops.sagemaker.jumpstart.resolve_hosting)"
            )
        hosting = jumpstart_hosting
        if hosting.uses_script:
            raise EndpointError(
                f"JumpStart model {hosting.model_id} {hosting.version} serves with JumpStart's own "
                "inference script (hosting_use_script_uri), which fmops does not pack into the "
                "model archive: deploy it with the SDK's JumpStartModel, or choose a JumpStart "
                "model served by the Hugging Face LLM (TGI) or LMI image"
            )
        if hosting.network_isolation and not settings.network_isolation:
            notes.append(
                f"JumpStart model {hosting.model_id} serves with network isolation; "
                "sagemaker.network_isolation is false, so it is served without"
            )
        chosen, explain = timeouts(
            parameters, llm, hosting.download_timeout_seconds, hosting.startup_timeout_seconds
        )
        notes.append(
            f"JumpStart model {hosting.model_id} {hosting.version}: the image, the environment "
            "(its token limits among them) and the instance types are the spec's; "
            "sagemaker.endpoint.llm's token limits and tgi_version apply to train.py's models only"
        )
        return {
            "family": JUMPSTART,
            "precision": precision,
            "sharded": True,
            "allowed_types": list(hosting.instance_types),
            "per_type": {
                t: {"image": hosting.images[t], "environment": hosting.environments[t]}
                for t in hosting.instance_types
            },
            "timeouts": chosen,
            "timeouts_explain": explain,
            "archive": "weights",
            "notes": notes,
        }
    chosen, explain = timeouts(
        parameters, llm, bytes_per_parameter=archive_bytes_per_parameter(candidate)
    )
    if "serving_precision" not in endpoint.model_fields_set:
        notes.append(
            f"served at {precision} (TGI's DTYPE {TGI_DTYPES[precision]}), as "
            "sagemaker.endpoint.serving_precision is left out; bf16 needs an A10G or newer"
        )
    return {
        "family": LLM,
        "precision": precision,
        "sharded": True,
        "tgi_version": llm.tgi_version,
        "environment": {
            "HF_MODEL_ID": MODEL_DIR,
            "MAX_INPUT_TOKENS": str(llm.max_input_tokens),
            "MAX_TOTAL_TOKENS": str(llm.max_total_tokens),
            "DTYPE": TGI_DTYPES[precision],
            **JOB_ENV,
        },
        "gpus_variable": GPUS_VARIABLE,
        "timeouts": chosen,
        "timeouts_explain": explain,
        "archive": "weights",
        "notes": notes,
    }


def need_of(parameters: int, precision: str, serving: dict[str, Any] | None) -> MemoryEstimate:
    """The GPU memory the model needs where it is served: TGI shards it over the GPUs."""
    if serving is None:
        return hosting_memory(parameters, precision)
    return hosting_memory(parameters, serving["precision"], sharded=serving["sharded"])


def serving_need(config: PipelineConfig, parameters: int) -> MemoryEstimate:
    """The GPU memory a model of the config's kind needs on a SageMaker endpoint, as the endpoint
    plan sizes it: a classifier unsharded at ``serving_precision``, a generative model sharded at
    TGI's precision (for the cost estimate of the evaluation, which sizes the same endpoint)."""
    from fmops.sagemaker.settings import EndpointSettings

    endpoint = config.sagemaker.endpoint if config.sagemaker else EndpointSettings()
    if kind_of(config).hosting_image == CLASSIFIER:
        return hosting_memory(parameters, endpoint.serving_precision)
    return hosting_memory(parameters, llm_precision(endpoint), sharded=True)


def image_for(
    serving: dict[str, Any] | None, settings: SageMakerSettings, instance_type: str
) -> str:
    """The serving image for ``instance_type``."""
    if serving is None:
        return images.image_uri("inference", settings, instance_type)
    if serving["family"] == JUMPSTART:
        return serving["per_type"][instance_type]["image"]
    return images.llm_image_uri(serving["tgi_version"], settings.region, instance_type)


def container(
    serving: dict[str, Any] | None, instance: InstanceType, image: str, region: str
) -> dict[str, Any]:
    """The CreateModel container's ``Image`` and ``Environment`` on ``instance``."""
    if serving is None:
        return {"Image": image, "Environment": toolkit_environment(region)}
    if serving["family"] == JUMPSTART:
        found = serving["per_type"][instance.name]
        return {"Image": found["image"], "Environment": dict(found["environment"])}
    environment = dict(serving["environment"])
    environment[serving["gpus_variable"]] = str(instance.gpus)
    return {"Image": image, "Environment": dict(sorted(environment.items()))}


def variant_fields(serving: dict[str, Any] | None) -> dict[str, int]:
    """The ProductionVariant's start-up timeouts (none for a classifier: SageMaker's defaults)."""
    return dict(serving["timeouts"]) if serving else {}


def plan_notes(config: PipelineConfig, serving: dict[str, Any] | None) -> list[str]:
    """What the endpoint's settings mean for the model kind: the rollback alarms and the
    execution timeout of a generative endpoint, and settings that do not apply."""
    endpoint = config.sagemaker.endpoint
    if serving is None:
        if endpoint.llm != type(endpoint.llm)():  # set to other than its defaults
            return [
                "sagemaker.endpoint.llm is ignored: a classifier is served by the Hugging Face "
                "inference toolkit and inference.py, not by TGI"
            ]
        return []
    alarms, llm = config.deployment.alarms, endpoint.llm
    answer = llm.max_total_tokens - 1
    notes = [
        f"ModelLatency times a whole answer: deployment.alarms.max_latency_ms "
        f"{alarms.max_latency_ms:g} ms allows {alarms.max_latency_ms / answer:.1f} ms per token "
        f"for the longest one ({answer} tokens within MAX_TOTAL_TOKENS {llm.max_total_tokens}); a "
        "bound under your answers' latency rolls a healthy version back"
    ]
    if getattr(alarms, "latency_per_token_ms", None) is not None:
        notes.append(
            "deployment.alarms.latency_per_token_ms is ignored on SageMaker: it publishes no "
            "per-token metric (the local target's router measures it)"
        )
    traffic = config.deployment.traffic
    waits = total_wait_seconds(
        traffic.mode, traffic.wait_seconds, traffic.termination_wait_seconds, traffic.step_percent
    )
    start = sum(serving["timeouts"].values())
    if traffic.timeout_seconds < waits + start:
        notes.append(
            f"deployment.traffic's execution timeout ({traffic.timeout_seconds} s) is shorter than "
            f"the waits ({waits} s) plus the new fleet's download and start-up timeouts ({start} "
            "s): SageMaker may roll an update back before the new fleet serves; set "
            f"deployment.traffic.max_execution_timeout_seconds to at least {waits + start}"
        )
    return notes
