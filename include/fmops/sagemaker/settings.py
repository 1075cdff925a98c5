"""The sagemaker target's settings: the ``sagemaker`` block of a pipeline config.

The models only check shapes and ranges; the rules that span several settings (spot with warm
pools, KMS on NVMe types, the images the SDK knows) are the option policy's
(``fmops.sagemaker.options``), applied when a config is loaded. Credentials never appear here:
they come from the Airflow connection ``aws_conn_id``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from fmops.deployment.settings import START_UP_ALLOWANCE_SECONDS, TrafficSettings
from fmops.schema import AUTO, INSTANCE_TYPE_PATTERN, Strict

DEFAULT_VARIANT = "AllTraffic"  # the SageMaker SDK's default variant name
SAGEMAKER_NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$"  # endpoint, config, variant
MAX_SAGEMAKER_NAME = 63
SERVING_PRECISION = "fp32"  # include/scripts/inference.py serves the weights as saved: fp32
INSTANCE_TYPE = r"^ml\.[a-z0-9]+\.[a-z0-9]+$"


class ImageSettings(Strict):
    """A Hugging Face PyTorch deep learning container: one combination the sagemaker SDK lists."""

    transformers_version: Annotated[str, Field(pattern=r"^\d+\.\d+(\.\d+)?$")]
    pytorch_version: Annotated[str, Field(pattern=r"^\d+\.\d+(\.\d+)?$")]
    py_version: Annotated[str, Field(pattern=r"^py3\d{1,2}$")]

    @field_validator("transformers_version", "pytorch_version", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        return quoted_version(value)


def quoted_version(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML reads 2.10 as the number 2.1: a version must be written as a string.
        raise ValueError(f'YAML read the version as the number {value}; quote it: "{value}"')
    return value


# The newest Hugging Face PyTorch training image of the installed SDK (sagemaker 3.27's
# image_uri_config/huggingface.json): transformers 5.x as the local target runs, GPU only.
TRAINING_IMAGE = ImageSettings(
    transformers_version="5.3.0", pytorch_version="2.9.0", py_version="py312"
)
# The newest inference image with a CPU variant: evaluate.py runs on the CPU (see fmops.sagemaker).
EVALUATION_IMAGE = ImageSettings(
    transformers_version="5.5.3", pytorch_version="2.6.0", py_version="py312"
)


class VpcSettings(Strict):
    subnets: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]+$")]] = Field(
        default_factory=list, max_length=16
    )
    security_group_ids: list[Annotated[str, Field(pattern=r"^sg-[0-9a-f]+$")]] = Field(
        default_factory=list, max_length=5
    )


KMS_KEY = r"^[A-Za-z0-9:/_-]{1,2048}$"  # a key id, key ARN, alias name or alias ARN (botocore)


class KmsSettings(Strict):
    output_key_id: Annotated[str, Field(pattern=KMS_KEY)] | None = Field(
        None, description="job outputs, checkpoints and what fmops uploads to the bucket"
    )
    volume_key_id: Annotated[str, Field(pattern=KMS_KEY)] | None = Field(
        None, description="the jobs' EBS volumes (left out on instance types with NVMe storage)"
    )
    endpoint_key_id: Annotated[str, Field(pattern=KMS_KEY)] | None = Field(
        None, description="the endpoint instances' storage (CreateEndpointConfig KmsKeyId)"
    )


class ScalingSettings(Strict):
    """Target-tracking auto scaling of the variant's instance count."""

    enabled: bool = True
    min_instances: int = Field(1, ge=1)
    max_instances: int = Field(2, ge=1)
    target_invocations_per_instance: float | None = Field(
        None,
        gt=0,
        description=(
            "SageMakerVariantInvocationsPerInstance, per instance per minute; left out: the "
            "chosen type's estimated capacity x sizing.target_utilization x 60 (fmops.sizing)"
        ),
    )
    scale_in_cooldown_seconds: int = Field(300, ge=0)
    scale_out_cooldown_seconds: int = Field(60, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> ScalingSettings:
        if self.max_instances < self.min_instances:
            raise ValueError(
                f"max_instances ({self.max_instances}) is below min_instances "
                f"({self.min_instances}): make max_instances >= min_instances"
            )
        return self


class SizingSettings(Strict):
    """What the endpoint must serve, from which fmops.sizing chooses the instance type and count
    with the lowest cost per 1,000 requests (estimates, each shown with its inputs)."""

    peak_requests_per_second: float | None = Field(
        None,
        gt=0,
        description=(
            "the traffic the fleet a version starts with must carry; left out: 10 for a "
            "classifier, 0.2 for a generative model"
        ),
    )
    latency_goal_ms: float | None = Field(
        None,
        gt=0,
        description=(
            "a classifier's p95 per request; left out: deployment.alarms.max_latency_ms (the "
            "rollback bound)"
        ),
    )
    token_latency_goal_ms: float | None = Field(
        None,
        gt=0,
        description=(
            "a generative model's time per generated token; left out: "
            "deployment.alarms.latency_per_token_ms, else 50 ms (20 tokens/s)"
        ),
    )
    target_utilization: float = Field(
        0.7, gt=0, le=1, description="the share of an instance's estimated capacity to plan for"
    )
    cpu_speedup: float = Field(
        1.0,
        gt=0,
        description="a hosting CPU core against the evaluation machine's: an assumption",
    )
    answer_tokens: int = Field(256, ge=1, description="a generative model's typical answer")
    concurrency: int = Field(
        8, ge=1, description="sequences TGI decodes together on one instance (continuous batching)"
    )


# The newest Hugging Face LLM (TGI) image of the installed SDK (sagemaker 3.27's
# image_uri_config/huggingface-llm.json: TGI 3.3.6, GPU only).
TGI_VERSION = "3.3.6"
# SageMaker's bounds of a ProductionVariant's two start-up timeouts (botocore's service model).
VARIANT_TIMEOUT_SECONDS = (60, 3600)


class LlmServingSettings(Strict):
    """How a generative model (data.task: instruction) is served on SageMaker: the Hugging Face
    LLM image (Text Generation Inference), which reads the model folder itself. Ignored for a
    classifier (served by the Hugging Face inference toolkit and inference.py)."""

    tgi_version: Annotated[
        str,
        Field(
            pattern=r"^\d+\.\d+(\.\d+)?$",
            description="a TGI version the installed sagemaker SDK lists (huggingface-llm)",
        ),
    ] = TGI_VERSION
    max_input_tokens: int = Field(
        1024, ge=1, le=1_048_576, description="MAX_INPUT_TOKENS: the longest prompt, in tokens"
    )
    max_total_tokens: int = Field(
        2048,
        ge=2,
        le=1_048_576,
        description=(
            "MAX_TOTAL_TOKENS: prompt + answer tokens of one request; at most the model's "
            "context (max_position_embeddings)"
        ),
    )
    startup_timeout_seconds: int | None = Field(
        None,
        ge=VARIANT_TIMEOUT_SECONDS[0],
        le=VARIANT_TIMEOUT_SECONDS[1],
        description=(
            "ContainerStartupHealthCheckTimeoutInSeconds; null: sized from the weights "
            "(300 s + 15 s per GiB of the archive's weights)"
        ),
    )
    download_timeout_seconds: int | None = Field(
        None,
        ge=VARIANT_TIMEOUT_SECONDS[0],
        le=VARIANT_TIMEOUT_SECONDS[1],
        description=(
            "ModelDataDownloadTimeoutInSeconds; null: sized from the weights (300 s + 30 s per "
            "GiB of the archive's weights)"
        ),
    )

    @field_validator("tgi_version", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        return quoted_version(value)

    @model_validator(mode="after")
    def _room_for_an_answer(self) -> LlmServingSettings:
        if self.max_input_tokens >= self.max_total_tokens:
            raise ValueError(
                f"max_input_tokens ({self.max_input_tokens}) must be below max_total_tokens "
                f"({self.max_total_tokens}): the answer's tokens count in the total"
            )
        return self


class EndpointSettings(Strict):
    """Where and how the sagemaker target serves a model version (a real-time endpoint). How
    a new version takes the traffic, and the alarms that roll it back, are ``deployment``'s."""

    variant_name: Annotated[
        str, Field(pattern=SAGEMAKER_NAME_PATTERN, max_length=MAX_SAGEMAKER_NAME)
    ] = DEFAULT_VARIANT
    instance_type: Annotated[
        str,
        Field(
            pattern=INSTANCE_TYPE_PATTERN,
            description=(
                "auto: the type and count with the lowest cost per 1,000 requests at the "
                "latency goal (sizing; CPU types for classifiers); or a pinned ml.<family>.<size>, "
                "checked against the memory the model needs at serving_precision"
            ),
        ),
    ] = AUTO
    instance_count: int = Field(
        1, ge=1, description="the smallest fleet a version starts with (sizing may start more)"
    )
    serving_precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        SERVING_PRECISION,
        description=(
            "what the serving code computes in; inference.py: fp32; a generative model on TGI: "
            "fp16 or bf16 (its DTYPE), fp16 when left out"
        ),
    )
    allowed_instance_types: list[Annotated[str, Field(pattern=INSTANCE_TYPE)]] = Field(
        default_factory=list, description="empty: any catalog type offered for endpoints"
    )
    max_price_per_hour: float | None = Field(None, gt=0, description="USD per instance-hour")
    scaling: ScalingSettings = ScalingSettings()
    sizing: SizingSettings = SizingSettings()
    llm: LlmServingSettings = LlmServingSettings()
    wait_timeout_seconds: int | None = Field(
        None, ge=60, description="fmops' own wait; default: the execution timeout plus 1800 s"
    )
    poll_seconds: int = Field(30, ge=1, description="how often the wait reads DescribeEndpoint")

    @model_validator(mode="after")
    def _consistent(self) -> EndpointSettings:
        problems = []
        scaling = self.scaling
        if scaling.enabled and not (
            scaling.min_instances <= self.instance_count <= scaling.max_instances
        ):
            problems.append(
                f"instance_count: {self.instance_count} is outside scaling.min_instances-"
                f"max_instances ({scaling.min_instances}-{scaling.max_instances}): auto "
                "scaling would move it at once; make them agree or disable scaling"
            )
        pinned = self.pinned_instance_type
        if pinned and self.allowed_instance_types and pinned not in self.allowed_instance_types:
            problems.append(
                f"instance_type: {pinned} is pinned but not in allowed_instance_types "
                f"{self.allowed_instance_types}: pin one of those, or set instance_type: auto"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def pinned_instance_type(self) -> str | None:
        """The pinned type, or None when the catalog chooses (``auto``)."""
        return None if self.instance_type == AUTO else self.instance_type

    def deployment_wait_seconds(self, traffic: TrafficSettings) -> int:
        """How long fmops waits for a deployment: past SageMaker's own execution timeout, so
        that a deployment SageMaker times out is seen rolled back, not abandoned."""
        if self.wait_timeout_seconds:
            return self.wait_timeout_seconds
        return traffic.timeout_seconds + START_UP_ALLOWANCE_SECONDS


class SageMakerSettings(Strict):
    """Where and how the sagemaker target runs jobs. Credentials come from the Airflow
    connection ``aws_conn_id``, never from this file."""

    aws_conn_id: str = "aws_default"
    region: Annotated[str, Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    role_arn: Annotated[
        str,
        Field(
            pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9_+=,.@/-]+$",
            description="the SageMaker execution role the jobs run as",
        ),
    ]
    bucket: Annotated[
        str,
        Field(
            pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            description="the S3 bucket for code, datasets, models, checkpoints and outputs",
        ),
    ]
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$")] = (
        "fmops"
    )
    image: ImageSettings = TRAINING_IMAGE
    evaluation_image: ImageSettings = EVALUATION_IMAGE
    evaluation_instance_type: Annotated[str, Field(pattern=INSTANCE_TYPE)] = "ml.m5.xlarge"
    instance_count: int = Field(
        1, ge=1, le=16, description=">1: data-parallel replicas under torchrun"
    )
    volume_size_gb: int = Field(30, ge=1, le=16384)
    spot: bool = False
    max_wait_seconds: int | None = Field(
        None,
        ge=1,
        le=28 * 24 * 3600,
        description="spot: how long to wait for capacity plus run; default 2 x max runtime",
    )
    keep_alive_seconds: int = Field(
        0, ge=0, le=3600, description="warm pool: keep the instances this long after a job"
    )
    retry_attempts: int = Field(
        0, ge=0, le=30, description="RetryStrategy MaximumRetryAttempts; 0: no retry strategy"
    )
    network_isolation: bool = True
    vpc: VpcSettings = VpcSettings()
    kms: KmsSettings = KmsSettings()
    allowed_instance_types: list[Annotated[str, Field(pattern=INSTANCE_TYPE)]] = Field(
        default_factory=list, description="empty: any type in the catalog"
    )
    max_price_per_hour: float | None = Field(None, gt=0, description="USD per instance-hour")
    endpoint: EndpointSettings = EndpointSettings()
