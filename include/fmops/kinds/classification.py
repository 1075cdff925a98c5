"""A text classifier: a sentence encoder with a linear head over the declared labels.

The untuned baseline is the encoder as a zero-shot classifier (the label names' embeddings);
the registered model is the ``fmops/mlflow_model.py`` pyfunc (``text`` -> ``label``, ``score``),
served by ``include/scripts/inference.py`` (``{"inputs": [...]}`` -> ``{"predictions": [...]}``)
and, on SageMaker, by the Hugging Face PyTorch inference image running that same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.kinds.base import ModelKind, evaluation_sample

if TYPE_CHECKING:
    from fmops.config import DataConfig, PipelineConfig


class ClassificationKind(ModelKind):
    name = "classification"
    data_task = "classification"
    scenario_task = "classification"
    generative = False
    handlers = "inference.py"
    handler_code = ("inference.py",)
    mlflow_code = "mlflow_model.py"
    hosting_image = "huggingface"

    def train_hyperparameters(self, data: DataConfig) -> dict[str, Any]:
        return {
            "task": "classification",
            "text_column": data.text_column,
            "label_column": data.label_column,
        }

    def baseline_arguments(self, data: DataConfig) -> list[str]:
        return ["--zero-shot"]

    def heldout_columns(self, data: DataConfig) -> tuple[str, str]:
        return data.text_column, data.label_column

    def model_problem(self, model_dir: Path) -> str | None:
        if (model_dir / "label_map.json").exists():
            return None
        return "it has no label_map.json: it is not an fmops classifier"

    def mlflow_signature(self) -> Any:
        """Input: a ``text`` column; output: the predicted ``label`` and its ``score``."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        return ModelSignature(
            inputs=Schema([ColSpec("string", "text")]),
            outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
        )

    def mlflow_input_example(self, config: PipelineConfig) -> Any:
        import pandas as pd

        return pd.DataFrame({"text": ["I still have not received my new card"]})

    def smoke_cases(self, config: PipelineConfig, count: int) -> list[dict[str, Any]]:
        data = config.data
        return [
            {
                "payload": {"inputs": [str(row[data.text_column])]},
                "expected": str(row[data.label_column]),
            }
            for row in evaluation_sample(config, count)
        ]

    def example_payload(self, config: PipelineConfig) -> dict[str, Any]:
        return {"inputs": ["I still have not received my new card", "How do I top up by card?"]}

    def smoke_answer(self, body: Any, config: PipelineConfig) -> tuple[str | None, str | None]:
        try:
            label = body["predictions"][0]["label"]
        except (KeyError, IndexError, TypeError):
            return None, f"no predictions[0].label in {str(body)[:200]}"
        if label not in set(config.data.label_set()):
            return label, f"label {label!r} is not a declared label"
        return label, None

    def card_limits(self, config: PipelineConfig, staged: dict, winner: str) -> list[str]:
        labels = config.data.labels
        source = f"`{labels}`" if isinstance(labels, str) else "the config"
        lines = [
            f"- It predicts one of the {staged.get('labels', 'declared')} labels of {source} for "
            "every input, also for inputs that belong to none of them (no abstention): route "
            "out-of-scope traffic elsewhere."
        ]
        candidate = next((c for c in config.candidates if c.name == winner), None)
        if candidate is not None:
            lines.append(
                f"- Texts are cut to {candidate.hyperparameters.max_length} tokens in training, "
                "and to `FMOPS_MAX_LENGTH` tokens when served (inference.py: 128 unless the "
                "endpoint sets it): the end of a longer text is not read."
            )
        return lines
