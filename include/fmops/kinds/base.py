"""The model-kind contract: what differs between a classifier and a generative LM.

Everything the pipeline does with a model that depends on what the model *is* goes through these
methods: the train task ``train.py`` runs, how ``evaluate.py`` treats the untuned base model, the
held-out scenario's columns, the MLflow model logged at registration, the serving handlers of the
local variant, the smoke check of a live endpoint, and the SageMaker hosting image family.
Where a model runs (local or SageMaker) is the other seam, :mod:`fmops.targets`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from fmops.config import DataConfig, PipelineConfig


def evaluation_sample(config: PipelineConfig, count: int) -> list[dict[str, Any]]:
    """``count`` records of the evaluation set, drawn with the data seed (the smoke traffic)."""
    import random

    from fmops.data.loading import load_table

    frame = load_table(config.data.evaluation, config.data)
    rows = random.Random(config.data.seed).sample(range(len(frame)), min(count, len(frame)))
    return [frame.iloc[i].to_dict() for i in rows]


class ModelKind(ABC):
    """One kind of model. Implementations are stateless; ``fmops.kinds.get_kind`` caches one."""

    name: ClassVar[str]  # what the leaderboard and the model card call it
    data_task: ClassVar[str]  # the config's data.task
    scenario_task: ClassVar[str]  # the held-out scenario's task in evaluate.py
    generative: ClassVar[bool]  # scores answers and log-likelihoods (generation scenarios)
    # The serving handlers (include/scripts/<file>) and every sibling script they import: they
    # travel with the registered model as code.
    handlers: ClassVar[str]
    handler_code: ClassVar[tuple[str, ...]]
    # The MLflow model-from-code file (include/fmops/<file>).
    mlflow_code: ClassVar[str]
    # The SageMaker hosting image family (fmops.sagemaker.images).
    hosting_image: ClassVar[str]

    @abstractmethod
    def train_hyperparameters(self, data: DataConfig) -> dict[str, Any]:
        """The hyperparameters that tell train.py the task and the data's columns."""

    @abstractmethod
    def baseline_arguments(self, data: DataConfig) -> list[str]:
        """evaluate.py's arguments for the untuned base model."""

    @abstractmethod
    def heldout_columns(self, data: DataConfig) -> tuple[str, str]:
        """(input, target) columns of the held-out scenario."""

    @abstractmethod
    def model_problem(self, model_dir: Path) -> str | None:
        """Why a downloaded model folder is not a model of this kind, or None."""

    @abstractmethod
    def mlflow_signature(self) -> Any:
        """The MLflow ModelSignature of the logged model."""

    @abstractmethod
    def mlflow_input_example(self, config: PipelineConfig) -> Any:
        """An input example logged with the model (an inference check MLflow runs)."""

    @abstractmethod
    def smoke_cases(self, config: PipelineConfig, count: int) -> list[dict[str, Any]]:
        """``count`` cases from the evaluation set, each ``{"payload": request body, "expected":
        the reference answer}``, drawn with the data seed."""

    @abstractmethod
    def smoke_answer(self, body: Any, config: PipelineConfig) -> tuple[str | None, str | None]:
        """(the answer in a 200 response, or None; the problem with the response, or None)."""

    @abstractmethod
    def card_limits(self, config: PipelineConfig, staged: dict, winner: str) -> list[str]:
        """The kind's own lines in the model card's known limits."""

    def card_section(self, config: PipelineConfig, evaluation: dict[str, Any] | None) -> str:
        """Markdown the model card adds for this kind (``evaluation``: the winner's evaluation
        outcome, with its ``output_uri``); empty by default."""
        return ""

    @abstractmethod
    def example_payload(self, config: PipelineConfig) -> dict[str, Any]:
        """A request body to show a user what the live endpoint answers."""

    def matches(self, answer: str, expected: str) -> bool:
        """Whether a smoke answer counts as right (the smoke test reports the share)."""
        return answer == expected

    def mlflow_code_path(self) -> Path:
        return Path(__file__).parents[1] / self.mlflow_code
