"""inference.py's optimized serving path: a classifier exported to ONNX (and its int8 dynamic
quantization) and served by ONNX Runtime when the folder's serving.json asks for it, with the same
requests and answers as the eager PyTorch model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny_bert

SCRIPTS = Path(__file__).resolve().parents[2] / "include" / "scripts"
LABELS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "top_up_failed"]
TEXTS = [
    "where is my new card?",
    "someone stole my card",
    "what rate do you use for euros",
    "my top up did not go through, why?",
    "hello",
]


@pytest.fixture(scope="module")
def inference():
    sys.path.insert(0, str(SCRIPTS))
    import inference

    yield inference
    sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory, inference) -> Path:
    """A tiny fmops classifier as train.py saves one: encoder, head, label map."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel

    folder = save_tiny_bert(tmp_path_factory.mktemp("classifier"))
    torch.manual_seed(1)
    model = inference.build_classifier(AutoModel.from_pretrained(folder), len(LABELS))
    save_file(dict(model.classifier.state_dict()), folder / "classifier.safetensors")
    (folder / "label_map.json").write_text(json.dumps({"labels": LABELS}))
    return folder


@pytest.fixture(scope="module")
def exported(inference, classifier_folder) -> dict[str, Path]:
    return inference.export_onnx(
        inference.load_classifier(classifier_folder), classifier_folder / "onnx"
    )


def serve(folder: Path, graph: str | None) -> None:
    serving = folder / "serving.json"
    if graph is None:
        serving.unlink(missing_ok=True)
    else:
        serving.write_text(json.dumps({"runtime": "onnxruntime", "graph": graph}))


def test_the_fp32_graph_answers_as_the_eager_model(inference, classifier_folder, exported):
    serve(classifier_folder, None)
    eager = inference.load_classifier(classifier_folder)
    assert "model" in eager and "session" not in eager
    expected = inference.predict_fn(TEXTS, eager)
    serve(classifier_folder, "onnx/model.onnx")
    try:
        optimized = inference.model_fn(str(classifier_folder))
        assert optimized["runtime"] == "onnxruntime" and "model" not in optimized
        answers = inference.predict_fn(TEXTS, optimized)
    finally:
        serve(classifier_folder, None)
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    for answer, reference in zip(answers, expected, strict=True):
        assert answer["score"] == pytest.approx(reference["score"], abs=1e-4)
    # the whole request path: JSON in, JSON out, as a variant calls the handlers
    body = inference.output_fn(answers)
    assert json.loads(body)["predictions"] == answers


def test_the_int8_graph_is_smaller_and_answers_every_request(
    inference, classifier_folder, exported
):
    assert exported["int8"].stat().st_size < exported["fp32"].stat().st_size / 2
    serve(classifier_folder, "onnx/model.int8.onnx")
    try:
        answers = inference.predict_fn(TEXTS, inference.load_classifier(classifier_folder))
    finally:
        serve(classifier_folder, None)
    assert len(answers) == len(TEXTS)
    assert all(a["label"] in LABELS and 0 < a["score"] <= 1 for a in answers)


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        ({"runtime": "tensorrt", "graph": "onnx/model.onnx"}, "must name runtime 'onnxruntime'"),
        ({"runtime": "onnxruntime"}, "must name runtime 'onnxruntime' and a graph"),
        ({"runtime": "onnxruntime", "graph": "../model.onnx"}, "is not a file of"),
        ({"runtime": "onnxruntime", "graph": "onnx/missing.onnx"}, "is not a file of"),
    ],
)
def test_a_bad_serving_file_names_the_problem(
    inference, classifier_folder, exported, serving, message
):
    (classifier_folder / "serving.json").write_text(json.dumps(serving))
    try:
        with pytest.raises(ValueError, match=message) as info:
            inference.load_classifier(classifier_folder)
        assert "serving.json" in str(info.value)
    finally:
        serve(classifier_folder, None)
