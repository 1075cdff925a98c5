"""The serving script's request parsing, and the training script's hyperparameter parsing."""

from __future__ import annotations

import json
import sys

import pytest

from fmops.paths import SCRIPTS_DIR

if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import inference  # noqa: E402
import train  # noqa: E402
from inference import BadRequestError, input_fn  # noqa: E402
from train import HyperparameterError, Hyperparameters  # noqa: E402

# -- inference.input_fn ------------------------------------------------------------------------


def body(payload) -> str:
    return json.dumps(payload)


def test_single_string():
    assert input_fn(body({"inputs": "where is my card"})) == ["where is my card"]


def test_list_of_strings():
    texts = ["a card question", "a transfer question"]
    assert input_fn(body({"inputs": texts})) == texts


def test_bytes_body_and_content_type_parameters():
    raw = body({"inputs": ["héllo"]}).encode()
    assert input_fn(raw, "application/json; charset=utf-8") == ["héllo"]


def test_default_content_type_is_json():
    assert input_fn(body({"inputs": "x"})) == ["x"]


def test_limits_allow_the_maximum():
    assert len(input_fn(body({"inputs": ["x"] * inference.MAX_BATCH}))) == inference.MAX_BATCH
    longest = "y" * inference.MAX_TEXT_CHARS
    assert input_fn(body({"inputs": longest})) == [longest]


def bad(payload: str | bytes, content_type: str = "application/json") -> str:
    with pytest.raises(BadRequestError) as info:
        input_fn(payload, content_type)
    assert isinstance(info.value, ValueError)
    return str(info.value)


def test_invalid_json():
    message = bad("{inputs: nope")
    assert "not valid JSON" in message
    assert inference.EXAMPLE in message


def test_invalid_utf8():
    assert "not valid JSON" in bad(b"\xff\xfe\xfa")


@pytest.mark.parametrize("payload", ['["a", "b"]', '"text"', "42", "null"])
def test_not_an_object(payload):
    message = bad(payload)
    assert "must be an object with an 'inputs' field" in message
    assert inference.EXAMPLE in message


def test_missing_inputs():
    message = bad(body({"text": "hello"}))
    assert "'inputs' field" in message


@pytest.mark.parametrize("value", [[], None, 5, {"a": "b"}])
def test_empty_or_wrong_inputs(value):
    message = bad(body({"inputs": value}))
    assert "'inputs' must be a non-empty string or a non-empty list of strings" in message


@pytest.mark.parametrize("item", [3, None, ["nested"], {"a": 1}])
def test_non_string_item(item):
    message = bad(body({"inputs": ["fine", item]}))
    assert message.startswith("inputs[1] must be a non-empty string")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_string(text):
    message = bad(body({"inputs": text}))
    assert message.startswith("inputs[0] must be a non-empty string")


def test_too_many_items():
    count = inference.MAX_BATCH + 1
    message = bad(body({"inputs": ["x"] * count}))
    assert f"has {count} texts" in message
    assert f"at most {inference.MAX_BATCH}" in message


def test_too_long_text():
    length = inference.MAX_TEXT_CHARS + 1
    message = bad(body({"inputs": ["ok", "z" * length]}))
    assert message.startswith("inputs[1]")
    assert f"{length} characters" in message
    assert f"at most {inference.MAX_TEXT_CHARS}" in message


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-npy", "text/csv"])
def test_wrong_content_type(content_type):
    message = bad(body({"inputs": "x"}), content_type)
    assert repr(content_type) in message
    assert "application/json" in message


# -- train.Hyperparameters.parse ---------------------------------------------------------------


def test_parse_coerces_sagemaker_strings():
    hps = Hyperparameters.parse(
        {
            "epochs": "3",
            "learning_rate": "0.001",
            "batch_size": "16.0",
            "lora_r": "4",
            "lora_dropout": "0.05",
            "lora_target_modules": '["query","value"]',
            "method": "lora",
            "text_column": "utterance",
        }
    )
    assert hps.epochs == 3 and isinstance(hps.epochs, int)
    assert hps.learning_rate == 0.001 and isinstance(hps.learning_rate, float)
    assert hps.batch_size == 16 and isinstance(hps.batch_size, int)
    assert hps.lora_r == 4
    assert hps.lora_dropout == 0.05
    assert hps.lora_target_modules == ["query", "value"]
    assert hps.method == "lora"
    assert hps.text_column == "utterance"


def test_parse_comma_separated_list_and_native_values():
    hps = Hyperparameters.parse({"lora_target_modules": "query, key,value", "epochs": 2})
    assert hps.lora_target_modules == ["query", "key", "value"]
    assert hps.epochs == 2


def test_parse_empty_gives_defaults():
    assert Hyperparameters.parse({}) == Hyperparameters()


def test_parse_ignores_sagemaker_keys():
    hps = Hyperparameters.parse(
        {"sagemaker_program": "train.py", "sagemaker_submit_directory": "file:///x", "epochs": "1"}
    )
    assert hps.epochs == 1


def test_parse_accepts_config_job_hyperparameters():
    """What the config sends (Candidate.job_hyperparameters) is what train.py accepts."""
    from fmops.config import load_config

    config = load_config("include/configs/local.yaml")
    for candidate in config.candidates:
        sent = candidate.job_hyperparameters(
            {"task": "classification", "text_column": "text", "label_column": "category"}
        )
        hps = Hyperparameters.parse(sent)
        assert hps.method == candidate.method
        assert hps.epochs == candidate.hyperparameters.epochs
        assert hps.learning_rate == candidate.hyperparameters.learning_rate
        assert hps.label_column == "category"
        if candidate.method == "lora":
            assert hps.lora_r == candidate.lora.r
            assert hps.lora_target_modules == candidate.lora.target_modules


def test_unknown_key_named():
    with pytest.raises(HyperparameterError) as info:
        Hyperparameters.parse({"epochs": "1", "learnign_rate": "0.1"})
    assert "learnign_rate" in str(info.value)
    assert "learning_rate" in str(info.value)  # the allowed keys are listed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "three"),
        ("epochs", "2.5"),
        ("learning_rate", "fast"),
        ("lora_target_modules", '["query", 3]'),
        ("lora_target_modules", "[not json"),
        ("batch_size", None),
    ],
)
def test_malformed_value_named(key, value):
    with pytest.raises(HyperparameterError) as info:
        Hyperparameters.parse({key: value})
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "0"),
        ("batch_size", "-4"),
        ("learning_rate", "0"),
        ("learning_rate", "1.5"),
        ("warmup_ratio", "1"),
        ("lora_dropout", "1.0"),
        ("head_learning_rate", "2"),
        ("method", "qlora"),
        ("init_head", "zeros"),
    ],
)
def test_out_of_range_value_named(key, value):
    with pytest.raises(HyperparameterError) as info:
        Hyperparameters.parse({key: value})
    assert key in str(info.value)


def test_hyperparameter_error_is_value_error():
    assert issubclass(train.HyperparameterError, ValueError)
