"""The MLflow pyfunc wrapper of a causal LM that fmops tuned (an MLflow "model from code").

MLflow stores this file with the model; the serving handlers (``serve_generation.py`` and the
scripts it imports) travel as code paths and the model folder (merged safetensors weights, the
tokenizer, ``prompt_format.json`` and the LoRA ``adapter/`` it was merged from) as the
``model_dir`` artifact. The schema is MLflow's chat schema: ``{"messages": [...], "max_tokens":
N, "temperature": t, "stop": [...]}`` in, an OpenAI-style chat completion out, the same answer
the endpoint gives (one code path).
"""

from __future__ import annotations

import json
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

REQUEST_FIELDS = ("messages", "max_tokens", "temperature", "top_p", "stop")


class GenerationModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import serve_generation  # put on sys.path by MLflow from the model's code paths

        self._handlers = serve_generation
        self._model = serve_generation.model_fn(context.artifacts["model_dir"])

    # model_input has no type hint on purpose: MLflow reads a hint as the input schema.
    def predict(self, context: Any, model_input, params: dict | None = None) -> Any:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            requests = [
                {k: _plain(v) for k, v in row.items() if k in REQUEST_FIELDS and _present(v)}
                for row in model_input.to_dict(orient="records")
            ]
        elif isinstance(model_input, dict):
            requests = [model_input]
        else:
            requests = list(model_input)
        answers = []
        for request in requests:
            body = json.dumps({k: v for k, v in request.items() if k in REQUEST_FIELDS})
            parsed = self._handlers.input_fn(body, "application/json")
            prediction = self._handlers.predict_fn(parsed, self._model)
            answers.append(json.loads(self._handlers.output_fn(prediction, "application/json")))
        return answers[0] if len(answers) == 1 else answers


def _present(value: Any) -> bool:
    try:
        return value is not None and not (isinstance(value, float) and value != value)
    except TypeError:
        return True


def _plain(value: Any) -> Any:
    """numpy arrays and scalars from a dataframe row as JSON values."""
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


mlflow.models.set_model(GenerationModel())
