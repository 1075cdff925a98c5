"""The MLflow pyfunc wrapper of an fmops text classifier (an MLflow "model from code").

MLflow stores this file with the model; ``inference.py`` (the serving handlers) travels as a code
path and the weights as the ``model_dir`` artifact, so a registered version is loadable and
servable from the registry alone: ``mlflow.pyfunc.load_model("models:/NAME/VERSION")``.
Input: a dataframe with a ``text`` column (or a list of strings); output: ``label`` and ``score``.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class TextClassifierModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import inference  # put on sys.path by MLflow from the model's code paths

        self._inference = inference
        self._model = inference.model_fn(context.artifacts["model_dir"])

    # model_input has no type hint on purpose: MLflow reads a hint as the input schema and
    # warns about any it cannot use; the signature logged with the model is the schema.
    def predict(self, context: Any, model_input, params: dict | None = None) -> Any:
        import pandas as pd

        texts = (
            list(model_input["text"])
            if isinstance(model_input, pd.DataFrame)
            else list(model_input)
        )
        return pd.DataFrame(self._inference.predict_fn(texts, self._model))


mlflow.models.set_model(TextClassifierModel())
