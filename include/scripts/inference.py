"""The fmops text classifier and its inference handlers (the SageMaker serving contract).

The classifier is a sentence encoder (a Hugging Face ``AutoModel``), mean pooling over tokens,
L2 normalisation and a linear head. It is the architecture that sentence encoders such as
all-MiniLM-L6-v2 were trained for (their [CLS] pooler is untrained), and it lets the head start
from the embeddings of the label names: the untuned model is then already a zero-shot
classifier, and fine-tuning starts from there. A saved model folder holds the encoder
(``model.safetensors`` + config + tokenizer), ``classifier.safetensors`` (the head) and
``label_map.json``.

``model_fn`` / ``input_fn`` / ``predict_fn`` / ``output_fn`` are the hooks that the SageMaker
Hugging Face inference toolkit calls; the fmops local variant server calls the same functions.

Request:  ``{"inputs": ["text", ...]}`` (or a single string), JSON.
Response: ``{"predictions": [{"label": ..., "score": ...}, ...]}``.

Malformed input raises :class:`BadRequestError`; a server answers it with HTTP 400 and the message.
Weights load from safetensors; nothing is unpickled. Only torch, transformers, numpy and the
standard library are imported, and ONNX Runtime for a folder that asks for it:

An optimized folder carries ``serving.json`` (``{"runtime": "onnxruntime", "graph":
"onnx/model.int8.onnx"}``): ``export_onnx`` writes the classifier as an ONNX graph (and its int8
dynamic quantization), and ``load_classifier`` then serves that graph with ONNX Runtime, the same
requests and answers (``benchmarks/serving_optimized.py`` measures it). Without the file the
model is served as eager PyTorch. (The Hugging Face inference image has no ONNX Runtime: a
SageMaker endpoint would need it in the archive's ``code/requirements.txt``; fmops does not
serve ONNX there yet.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_BATCH = int(os.environ.get("FMOPS_MAX_BATCH", "64"))
MAX_TEXT_CHARS = int(os.environ.get("FMOPS_MAX_TEXT_CHARS", "2000"))
MAX_LENGTH = int(os.environ.get("FMOPS_MAX_LENGTH", "128"))
ZERO_SHOT_TEMPERATURE = 0.05
EXAMPLE = '{"inputs": ["I still have not received my card"]}'
SERVING_FILE = "serving.json"
ONNX_RUNTIME = "onnxruntime"


class BadRequestError(ValueError):
    """The request is malformed; the message says what is wrong and what is expected."""


def build_classifier(encoder: Any, num_labels: int) -> Any:
    """Encoder + mean pooling + normalisation + linear head, as a ``torch.nn.Module``."""
    import torch

    class SentenceClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)

        def embed(self, input_ids, attention_mask, **kwargs):  # noqa: ANN001
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, **kwargs
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

        def forward(self, input_ids, attention_mask, labels=None, **kwargs):  # noqa: ANN001
            logits = self.classifier(self.embed(input_ids, attention_mask, **kwargs))
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return logits, loss

    return SentenceClassifier()


def init_head_from_label_names(classifier: Any, tokenizer: Any, labels: list[str]) -> None:
    """Head rows = embeddings of the label names (``card_arrival`` -> "card arrival")."""
    import torch

    names = [label.replace("_", " ") for label in labels]
    encoded = tokenizer(names, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        vectors = classifier.embed(encoded["input_ids"], encoded["attention_mask"])
        classifier.classifier.weight.copy_(vectors / ZERO_SHOT_TEMPERATURE)
        classifier.classifier.bias.zero_()


def load_classifier(
    model_dir: str | Path, zero_shot_labels: list[str] | None = None
) -> dict[str, Any]:
    """A saved fmops classifier, or (``zero_shot_labels``) an untuned encoder as a zero-shot one."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    path = Path(model_dir)
    if zero_shot_labels is None and (path / SERVING_FILE).exists():
        return load_onnx(path, json.loads((path / SERVING_FILE).read_text()))
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, use_safetensors=True)
    if zero_shot_labels is not None:
        labels = list(zero_shot_labels)
        classifier = build_classifier(encoder, len(labels))
        init_head_from_label_names(classifier, tokenizer, labels)
    else:
        labels = json.loads((path / "label_map.json").read_text())["labels"]
        classifier = build_classifier(encoder, len(labels))
        classifier.classifier.load_state_dict(load_file(path / "classifier.safetensors"))
    # A GPU when the host has one (a SageMaker GPU instance), else the CPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier.to(device).eval()
    torch.set_grad_enabled(False)
    return {"model": classifier, "tokenizer": tokenizer, "labels": labels, "device": device}


def load_onnx(path: Path, serving: dict[str, Any], threads: int | None = None) -> dict[str, Any]:
    """The classifier's ONNX graph on ONNX Runtime (``serving.json`` names it); ``threads``:
    the session's intra-op threads (default: ONNX Runtime's, one per core)."""
    if serving.get("runtime") != ONNX_RUNTIME or not serving.get("graph"):
        raise ValueError(
            f"{path / SERVING_FILE} must name runtime {ONNX_RUNTIME!r} and a graph, got "
            f"{serving!r}; remove the file to serve the PyTorch weights"
        )
    graph = (path / serving["graph"]).resolve()
    if path.resolve() not in graph.parents or not graph.is_file():
        raise ValueError(
            f"{path / SERVING_FILE}: graph {serving['graph']!r} is not a file of {path}"
        )
    return graph_classifier(graph, path, threads) | {"graph": serving["graph"]}


def graph_classifier(graph: Path, model_dir: Path, threads: int | None = None) -> dict[str, Any]:
    """An ONNX graph of the classifier on ONNX Runtime, with the tokenizer and label map of
    ``model_dir`` (the folder it was exported from): what ``predict_fn`` serves."""
    import onnxruntime
    from transformers import AutoTokenizer

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    return {
        "session": session,
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
        "labels": json.loads((Path(model_dir) / "label_map.json").read_text())["labels"],
        "runtime": ONNX_RUNTIME,
    }


def export_onnx(model: dict[str, Any], folder: Path, quantize: bool = True) -> dict[str, Path]:
    """``model`` (``load_classifier``'s, PyTorch) as ``folder/model.onnx`` (fp32, dynamic batch
    and sequence axes, ``torch.onnx.export(dynamo=True)``) and, with ``quantize``,
    ``folder/model.int8.onnx`` (ONNX Runtime's int8 dynamic quantization of its weights)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, classifier: Any) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask):  # noqa: ANN001
            return self.classifier(input_ids, attention_mask)[0]

    folder.mkdir(parents=True, exist_ok=True)
    sample = model["tokenizer"](["a sample request"], return_tensors="pt")
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    graphs = {"fp32": folder / "model.onnx"}
    torch.onnx.export(
        Logits(model["model"].cpu()).eval(),
        (sample["input_ids"], sample["attention_mask"]),
        str(graphs["fp32"]),
        dynamo=True,
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}),
        external_data=False,
        verbose=False,
    )
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graphs["int8"] = folder / "model.int8.onnx"
        quantize_dynamic(str(graphs["fp32"]), str(graphs["int8"]), weight_type=QuantType.QInt8)
    return graphs


def model_fn(model_dir: str) -> dict[str, Any]:
    return load_classifier(model_dir)


def input_fn(input_data: bytes | str, content_type: str = "application/json") -> list[str]:
    if content_type.split(";")[0].strip() != "application/json":
        raise BadRequestError(
            f"content type {content_type!r} is not supported; send application/json"
        )
    try:
        payload = json.loads(input_data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequestError(f"the body is not valid JSON ({err}); expected {EXAMPLE}") from None
    except ValueError:  # an integer past Python's 4,300 digits: the client's error, not ours
        raise BadRequestError(f"a number in the body is too large; expected {EXAMPLE}") from None
    except RecursionError:
        raise BadRequestError(
            f"the body nests arrays or objects too deeply; expected {EXAMPLE}"
        ) from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise BadRequestError(f"the body must be an object with an 'inputs' field, like {EXAMPLE}")
    texts = payload["inputs"]
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts:
        raise BadRequestError("'inputs' must be a non-empty string or a non-empty list of strings")
    if len(texts) > MAX_BATCH:
        raise BadRequestError(f"'inputs' has {len(texts)} texts; at most {MAX_BATCH} per request")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise BadRequestError(f"inputs[{i}] must be a non-empty string, got {text!r:.60}")
        if len(text) > MAX_TEXT_CHARS:
            raise BadRequestError(
                f"inputs[{i}] has {len(text)} characters; at most {MAX_TEXT_CHARS}"
            )
    return texts


def predict_fn(texts: list[str], model: dict[str, Any]) -> list[dict[str, Any]]:
    if "session" in model:
        return _predict_onnx(texts, model)
    import torch

    encoded = model["tokenizer"](
        texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
    )
    device = model.get("device", "cpu")
    with torch.no_grad():
        logits, _ = model["model"](
            encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        )
        probabilities = logits.softmax(-1)
    scores, indices = probabilities.max(-1)
    return [
        {"label": model["labels"][int(i)], "score": round(float(s), 6)}
        for s, i in zip(scores, indices, strict=True)
    ]


def _predict_onnx(texts: list[str], model: dict[str, Any]) -> list[dict[str, Any]]:
    import numpy as np

    encoded = model["tokenizer"](
        texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="np"
    )
    (logits,) = model["session"].run(
        ["logits"],
        {
            "input_ids": encoded["input_ids"].astype(np.int64),
            "attention_mask": encoded["attention_mask"].astype(np.int64),
        },
    )
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities = shifted / shifted.sum(-1, keepdims=True)
    indices = probabilities.argmax(-1)
    return [
        {"label": model["labels"][int(i)], "score": round(float(probabilities[row, i]), 6)}
        for row, i in enumerate(indices)
    ]


def output_fn(prediction: list[dict[str, Any]], accept: str = "application/json") -> str:
    return json.dumps({"predictions": prediction})
