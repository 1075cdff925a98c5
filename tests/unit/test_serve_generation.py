"""The generation handlers (include/scripts/serve_generation.py): the TGI and chat payloads, their
bounds, the answers' shapes, and a real variant process serving a tiny causal LM over HTTP.

The model is ``tiny_models.save_tiny_causal_lm`` with ``TINY_CHAT_TEMPLATE``: a seeded 2-layer
Llama whose answers are nonsense words, but always the same ones (greedy decoding), so the
tests compare the handlers' answers with the model's own (``CausalLM``) and count tokens with
its tokenizer.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import TINY_CHAT_TEMPLATE, save_tiny_causal_lm

from fmops.deployment.local import free_port
from fmops.paths import PROJECT_ROOT, SCRIPTS_DIR

if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import serve_generation  # noqa: E402
from serve_generation import (  # noqa: E402
    BadRequestError,
    Limits,
    headers_fn,
    input_fn,
    model_fn,
    output_fn,
    predict_fn,
)

HANDLERS = SCRIPTS_DIR / "serve_generation.py"
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my card"}]
LIMITS = Limits()  # the defaults: the tests' environment sets none of the variables


def body(payload) -> str:
    return json.dumps(payload)


def ask(payload, model) -> tuple[object, serve_generation.Prediction]:
    """The response body and the prediction for ``payload`` (a dict)."""
    prediction = predict_fn(input_fn(body(payload)), model)
    return json.loads(output_fn(prediction)), prediction


def tokens(model, text: str) -> int:
    return len(model["lm"].tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-chat-lm"), TINY_CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def model(model_dir):
    return model_fn(str(model_dir))


# -- parsing: the TGI payload -----------------------------------------------------------------


def test_the_tgi_payload_becomes_a_request():
    request = input_fn(
        body(
            {
                "inputs": "Q: where is my card?\nA:",
                "parameters": {
                    "max_new_tokens": 12,
                    "temperature": 0.7,
                    "top_p": 0.9,
                    "do_sample": True,
                    "stop": ["\n", "Q:"],
                    "seed": 42,
                    "details": True,
                    "return_full_text": False,
                },
            }
        ).encode(),
        "application/json; charset=utf-8",
    )
    assert request == serve_generation.Request(
        api="generate",
        prompt="Q: where is my card?\nA:",
        max_new_tokens=12,
        temperature=0.7,
        top_p=0.9,
        stop=("\n", "Q:"),
        seed=42,
        details=True,
    )


@pytest.mark.parametrize(
    ("parameters", "temperature", "top_p"),
    [
        ({}, 0.0, 1.0),  # greedy by default
        ({"do_sample": False, "temperature": None}, 0.0, 1.0),  # null is the default
        ({"do_sample": True}, 1.0, 1.0),
        ({"temperature": 0.5}, 0.5, 1.0),  # a sampling parameter samples, as in TGI
        ({"top_p": 0.8}, 1.0, 0.8),
        ({"temperature": 0}, 0.0, 1.0),  # 0 is greedy
        ({"temperature": 0, "top_p": 0.5}, 0.0, 1.0),
    ],
)
def test_tgi_decoding_follows_the_sampling_parameters(parameters, temperature, top_p):
    request = input_fn(body({"inputs": "hi", "parameters": parameters}))
    assert (request.temperature, request.top_p) == (temperature, top_p)


def test_integral_floats_are_counts():
    """A pandas frame (MLflow's pyfunc input) holds integers as floats."""
    request = input_fn(body({"inputs": "hi", "parameters": {"max_new_tokens": 16.0}}))
    assert request.max_new_tokens == 16 and isinstance(request.max_new_tokens, int)


# -- parsing: the chat payload ----------------------------------------------------------------


def test_the_chat_payload_becomes_a_request():
    request = input_fn(
        body(
            {
                "model": "tgi",
                "messages": CHAT,
                "max_tokens": 20,
                "temperature": 0.3,
                "top_p": 0.5,
                "stop": "###",
                "seed": 1,
                "stream": False,
            }
        )
    )
    assert request == serve_generation.Request(
        api="chat",
        messages=tuple(CHAT),
        max_new_tokens=20,
        temperature=0.3,
        top_p=0.5,
        stop=("###",),
        seed=1,
    )


def test_chat_decoding_samples_unless_temperature_is_zero():
    assert input_fn(body({"messages": CHAT})).temperature == 1.0  # OpenAI's and TGI's default
    greedy = input_fn(body({"messages": CHAT, "temperature": 0, "top_p": 0.5}))
    assert (greedy.temperature, greedy.top_p) == (0.0, 1.0)


# -- parsing: every bound and malformed payload -----------------------------------------------

ALLOWED = "allowed: details, do_sample, max_new_tokens, return_full_text, seed, stop, temperature"
BAD = [
    ("not-json", "{inputs: nope", "the body is not valid JSON"),
    ("not-an-object", '["hi"]', "an object with either 'inputs' or 'messages'"),
    ("neither", '{"text": "hi"}', "an object with either 'inputs' or 'messages'"),
    ("both", {"inputs": "hi", "messages": CHAT}, "either 'inputs' or 'messages'"),
    ("batch", {"inputs": ["a", "b"]}, "'inputs' is one prompt string: one request per prompt"),
    ("empty", {"inputs": "  "}, "'inputs' must be a non-empty prompt string"),
    (
        "too-many-chars",
        {"inputs": "x" * 8001},
        "'inputs' has 8001 characters; at most 8000 (FMOPS_MAX_PROMPT_CHARS): shorten it",
    ),
    ("unknown-field", {"inputs": "hi", "options": {}}, "unknown field(s) 'options'"),
    (
        "unknown-parameter",
        {"inputs": "hi", "parameters": {"top_k": 5, "raw": True}},
        f"unknown parameter(s) 'raw', 'top_k'; {ALLOWED}",
    ),
    ("parameters-not-object", {"inputs": "hi", "parameters": [1]}, "'parameters' must be an obj"),
    (
        "zero-new-tokens",
        {"inputs": "hi", "parameters": {"max_new_tokens": 0}},
        "parameters.max_new_tokens must be an integer from 1 to 256, got 0",
    ),
    (
        "too-many-new-tokens",
        {"inputs": "hi", "parameters": {"max_new_tokens": 257}},
        "from 1 to 256, got 257; at most 256 new tokens per answer (FMOPS_MAX_NEW_TOKENS)",
    ),
    (
        "new-tokens-as-text",
        {"inputs": "hi", "parameters": {"max_new_tokens": "9"}},
        "parameters.max_new_tokens must be an integer",
    ),
    (
        "new-tokens-as-bool",
        {"inputs": "hi", "parameters": {"max_new_tokens": True}},
        "parameters.max_new_tokens must be an integer",
    ),
    (
        "hot",
        {"inputs": "hi", "parameters": {"temperature": 2.5}},
        "parameters.temperature must be a number in [0, 2], got 2.5",
    ),
    (
        "negative-temperature",
        {"inputs": "hi", "parameters": {"temperature": -0.1}},
        "parameters.temperature must be a number in [0, 2]",
    ),
    (
        "top-p-zero",
        {"inputs": "hi", "parameters": {"top_p": 0}},
        "parameters.top_p must be a number in (0, 1], got 0",
    ),
    (
        "top-p-over-one",
        {"inputs": "hi", "parameters": {"top_p": 1.5}},
        "parameters.top_p must be a number in (0, 1]",
    ),
    (
        "greedy-sampling",
        {"inputs": "hi", "parameters": {"do_sample": True, "temperature": 0}},
        "parameters.do_sample is true but temperature is 0 (greedy)",
    ),
    (
        "five-stops",
        {"inputs": "hi", "parameters": {"stop": list("abcde")}},
        "parameters.stop has 5 stop strings; at most 4 (MAX_STOP_SEQUENCES)",
    ),
    (
        "stop-not-a-list",
        {"inputs": "hi", "parameters": {"stop": "\n"}},
        "parameters.stop must be a list of non-empty strings",
    ),
    (
        "empty-stop",
        {"inputs": "hi", "parameters": {"stop": [""]}},
        "parameters.stop must be a list of non-empty strings",
    ),
    ("negative-seed", {"inputs": "hi", "parameters": {"seed": -1}}, "parameters.seed must be an"),
    (
        "details-not-bool",
        {"inputs": "hi", "parameters": {"details": "yes"}},
        "parameters.details must be true or false",
    ),
    ("stream", {"inputs": "hi", "stream": True}, "streaming is not served here"),
    ("no-messages", {"messages": []}, "'messages' must be a non-empty list of messages"),
    (
        "tool-role",
        {"messages": [{"role": "tool", "content": "x"}]},
        "messages[0] must be {'role': system|user|assistant, 'content': a string}",
    ),
    (
        "extra-message-key",
        {"messages": [{"role": "user", "content": "x", "name": "me"}]},
        "messages[0] must be",
    ),
    (
        "content-parts",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
        "messages[0] must be",
    ),
    (
        "ends-with-assistant",
        {"messages": [*CHAT, {"role": "assistant", "content": "it is"}]},
        "the last message must be the user's, not empty: the model answers it (the last is the "
        "assistant's)",
    ),
    (
        "chat-too-many-chars",
        {
            "messages": [
                {"role": "system", "content": "s" * 4000},
                {"role": "user", "content": "u" * 4001},
            ]
        },
        "'messages' has 8001 characters; at most 8000 (FMOPS_MAX_PROMPT_CHARS)",
    ),
    (
        "chat-too-many-tokens",
        {"messages": CHAT, "max_tokens": 300},
        "max_tokens must be an integer from 1 to 256, got 300",
    ),
    ("chat-unknown-field", {"messages": CHAT, "n": 2}, "unknown field(s) 'n'; allowed: messages,"),
    ("chat-five-stops", {"messages": CHAT, "stop": list("abcde")}, "stop has 5 stop strings"),
    ("chat-hot", {"messages": CHAT, "temperature": 3}, "temperature must be a number in [0, 2]"),
    ("chat-stream", {"messages": CHAT, "stream": True}, "streaming is not served here"),
]


@pytest.mark.parametrize(("payload", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_payload_is_refused_with_its_reason(payload, message):
    with pytest.raises(BadRequestError) as info:
        input_fn(payload if isinstance(payload, str) else body(payload))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)  # what the variant answers with 400


def test_an_unknown_parameter_points_to_the_chat_payload():
    with pytest.raises(BadRequestError, match=r"goes in \{\"messages\""):
        input_fn(body({"inputs": "hi", "parameters": {"apply_chat_template": True}}))


def test_a_content_type_other_than_json_is_refused():
    with pytest.raises(BadRequestError, match="'text/plain' is not supported; send application"):
        input_fn(body({"inputs": "hi"}), "text/plain")


# -- the bounds from the environment ----------------------------------------------------------


def test_limits_come_from_the_environment():
    assert Limits.from_env({}) == Limits(1024, 2048, 256, 8000, 4)
    environ = {
        "MAX_INPUT_TOKENS": "100",
        "MAX_TOTAL_TOKENS": "150",
        "FMOPS_MAX_NEW_TOKENS": "20",
        "FMOPS_MAX_PROMPT_CHARS": "500",
        "MAX_STOP_SEQUENCES": "2",
    }
    assert Limits.from_env(environ) == Limits(100, 150, 20, 500, 2)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"FMOPS_MAX_NEW_TOKENS": "many"}, "FMOPS_MAX_NEW_TOKENS='many' is not a positive integer"),
        ({"MAX_INPUT_TOKENS": "0"}, "MAX_INPUT_TOKENS='0' is not a positive integer"),
        ({"MAX_INPUT_TOKENS": "2048"}, "MAX_INPUT_TOKENS (2048) must be below MAX_TOTAL_TOKENS"),
    ],
)
def test_bad_limits_name_their_variable(environ, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Limits.from_env(environ)


def test_limits_are_cut_to_the_models_context(caplog):
    with caplog.at_level(logging.WARNING):
        cut = Limits().within_context(256)
    assert (cut.max_input_tokens, cut.max_total_tokens, cut.max_new_tokens) == (255, 256, 256)
    assert "MAX_TOTAL_TOKENS 2048 is cut to 256" in caplog.text
    assert Limits(10, 20).within_context(256) == Limits(10, 20)


# -- answers of the tiny model ----------------------------------------------------------------


def test_the_model_is_loaded_within_its_context(model, model_dir):
    assert model["name"] == model_dir.name
    assert model["lm"].template == "chat"
    assert model["limits"].max_total_tokens == 256  # the tiny Llama's max_position_embeddings
    assert model["lm"].max_length == model["limits"].max_input_tokens


def test_a_folder_without_a_causal_lm_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is not a causal LM"):
        model_fn(str(tmp_path))


def test_the_tgi_answer_and_its_details(model):
    answer, prediction = ask(
        {"inputs": "where is my card", "parameters": {"max_new_tokens": 3, "details": True}},
        model,
    )
    [generated] = answer
    assert set(generated) == {"generated_text", "details"}
    assert generated["details"] == {"finish_reason": "length", "generated_tokens": 3, "seed": None}
    expected = model["lm"].generate(["where is my card"], max_new_tokens=3)[0].text
    assert generated["generated_text"] == expected
    assert prediction.prompt_tokens == tokens(model, "where is my card")
    plain, _ = ask({"inputs": "where is my card", "parameters": {"max_new_tokens": 3}}, model)
    assert plain == [{"generated_text": expected}]  # no details unless asked


def test_tgi_inputs_are_the_raw_prompt_and_messages_are_rendered(model):
    """``inputs`` is not wrapped in the prompt format; ``messages`` is, so the rendered prompt
    sent as ``inputs`` gets the chat's answer."""
    rendered = model["lm"].prompt(CHAT)
    assert rendered.startswith("<system> be brief [SEP] <user> where is my card")
    chat, chat_prediction = ask({"messages": CHAT, "max_tokens": 5, "temperature": 0}, model)
    raw, raw_prediction = ask({"inputs": rendered, "parameters": {"max_new_tokens": 5}}, model)
    assert raw[0]["generated_text"] == chat["choices"][0]["message"]["content"]
    assert raw_prediction.prompt_tokens == chat_prediction.prompt_tokens == tokens(model, rendered)
    _, message_only = ask(
        {"inputs": CHAT[1]["content"], "parameters": {"max_new_tokens": 5}}, model
    )
    assert message_only.prompt_tokens == tokens(model, CHAT[1]["content"]) < tokens(model, rendered)


def test_return_full_text_puts_the_prompt_in_front(model):
    [full], _ = ask(
        {"inputs": "hello", "parameters": {"max_new_tokens": 2, "return_full_text": True}}, model
    )
    [bare], _ = ask({"inputs": "hello", "parameters": {"max_new_tokens": 2}}, model)
    assert full["generated_text"] == "hello" + bare["generated_text"]


def test_the_chat_completion_and_its_usage(model, model_dir):
    before = int(time.time())
    answer, prediction = ask({"messages": CHAT, "max_tokens": 4, "temperature": 0}, model)
    assert set(answer) == {"id", "object", "created", "model", "choices", "usage"}
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion"
    assert before <= answer["created"] <= time.time() and answer["model"] == model_dir.name
    [choice] = answer["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length"
    assert choice["message"] == {
        "role": "assistant",
        "content": model["lm"].generate([model["lm"].prompt(CHAT)], max_new_tokens=4)[0].text,
    }
    prompt_tokens = tokens(model, model["lm"].prompt(CHAT))
    assert answer["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
    }
    assert (prediction.prompt_tokens, prediction.generated_tokens) == (prompt_tokens, 4)


def test_a_stop_string_ends_the_answer(model):
    answer, _ = ask({"messages": CHAT, "max_tokens": 8, "temperature": 0}, model)
    words = answer["choices"][0]["message"]["content"].split()
    # The first word after the first one that does not occur before it: the answer ends there.
    k = next(k for k in range(1, len(words)) if words[k] not in " ".join(words[:k]))
    stop = words[k]
    stopped, _ = ask({"messages": CHAT, "max_tokens": 8, "temperature": 0, "stop": stop}, model)
    [choice] = stopped["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == " ".join(words[:k])
    [tgi], _ = ask(
        {
            "inputs": model["lm"].prompt(CHAT),
            "parameters": {"max_new_tokens": 8, "stop": [stop], "details": True},
        },
        model,
    )
    assert tgi["details"]["finish_reason"] == "stop_sequence"


def test_sampling_is_reproducible_with_its_seed(model):
    chat = {"messages": CHAT, "max_tokens": 6, "seed": 7}  # sampled: no temperature given
    first, _ = ask(chat, model)
    again, _ = ask(chat, model)
    assert first["choices"][0]["message"] == again["choices"][0]["message"]
    [sampled], _ = ask(
        {
            "inputs": "hello",
            "parameters": {"do_sample": True, "max_new_tokens": 2, "details": True},
        },
        model,
    )
    seed = sampled["details"]["seed"]
    assert isinstance(seed, int)  # a random seed, reported so the answer can be reproduced
    [replayed], _ = ask(
        {"inputs": "hello", "parameters": {"seed": seed, "max_new_tokens": 2, "do_sample": True}},
        model,
    )
    assert replayed["generated_text"] == sampled["generated_text"]


def test_the_token_bounds(model):
    small = {
        **model,
        "limits": dataclasses.replace(model["limits"], max_input_tokens=4, max_total_tokens=10),
    }
    text = "where is my new card please"
    count = tokens(model, text)
    assert count > 4
    with pytest.raises(BadRequestError) as info:
        predict_fn(input_fn(body({"inputs": text})), small)
    assert str(info.value) == (
        f"the prompt has {count} tokens; at most 4 (MAX_INPUT_TOKENS): shorten it"
    )
    short = "my card"
    count = tokens(model, short)
    with pytest.raises(BadRequestError) as info:
        predict_fn(input_fn(body({"inputs": short, "parameters": {"max_new_tokens": 9}})), small)
    assert str(info.value) == (
        f"the prompt's {count} tokens + max_new_tokens 9 = {count + 9} tokens; at most 10 "
        f"(MAX_TOTAL_TOKENS): ask for at most {10 - count} new tokens or shorten the prompt"
    )
    chat = {"messages": [{"role": "user", "content": "a"}], "max_tokens": 9}
    rendered = tokens(model, model["lm"].prompt(chat["messages"]))
    fits = {**model, "limits": Limits(max_input_tokens=rendered, max_total_tokens=rendered + 5)}
    with pytest.raises(
        BadRequestError, match=f"the prompt's {rendered} tokens \\+ max_tokens 9 = "
    ):
        predict_fn(input_fn(body(chat)), fits)
    # Without max_new_tokens the answer may use what is left of the total.
    answer, prediction = ask({"inputs": short, "parameters": {"details": True}}, small)
    assert prediction.generated_tokens <= 10 - count
    if answer[0]["details"]["finish_reason"] == "length":
        assert prediction.generated_tokens == 10 - count


def test_a_prompt_longer_than_training_is_not_cut(model_dir, tmp_path):
    """A model tuned by train.py (prompt_format.json, here the plain template with a 16-token
    max_length): prompts are rendered in its format and refused past MAX_INPUT_TOKENS, never
    truncated to the training length."""
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    for item in model_dir.iterdir():
        (tuned / item.name).symlink_to(item)
    (tuned / "prompt_format.json").write_text(
        json.dumps({"template": "plain", "end_of_answer": "[SEP]", "max_length": 16})
    )
    loaded = model_fn(str(tuned))
    chat = [{"role": "user", "content": " ".join(["card"] * 40)}]
    assert loaded["lm"].prompt(chat).startswith("### Instruction:\ncard card")
    answer, prediction = ask({"messages": chat, "max_tokens": 2, "temperature": 0}, loaded)
    assert prediction.prompt_tokens == tokens(loaded, loaded["lm"].prompt(chat)) > 40


def test_headers_are_tgis(model):
    _, prediction = ask({"inputs": "hello", "parameters": {"max_new_tokens": 3}}, model)
    headers = headers_fn(prediction)
    assert set(headers) == {
        "x-generated-tokens",
        "x-prompt-tokens",
        "x-compute-time",
        "x-time-per-token",
    }
    assert headers["x-generated-tokens"] == "3"
    assert headers["x-prompt-tokens"] == str(tokens(model, "hello"))
    assert 0 < float(headers["x-compute-time"]) == pytest.approx(prediction.seconds, abs=1e-5)
    assert int(headers["x-time-per-token"]) == int(prediction.generation_seconds * 1000 / 3)


def test_warm_up_answers_without_a_client(model):
    serve_generation.warm_up(model)
    assert 0 < model["lm"].last_timing["generated_tokens"] <= 2


# -- a real variant process -------------------------------------------------------------------

SERVED_ENV = {"MAX_INPUT_TOKENS": "32", "MAX_TOTAL_TOKENS": "64", "FMOPS_MAX_NEW_TOKENS": "16"}


def call(port: int, method: str, path: str, payload=None, content_type="application/json"):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = (
            None
            if payload is None
            else payload
            if isinstance(payload, bytes)
            else body(payload).encode()
        )
        connection.request(method, path, data, {"Content-Type": content_type} if data else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


@pytest.fixture(scope="module")
def variant(model_dir, tmp_path_factory):
    """``python -m fmops.deployment.variant`` serving the tiny model on a free 127.0.0.1 port,
    with small token bounds; stopped at the end of the module."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("variant") / "variant.log"
    with log_file.open("w") as log_handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fmops.deployment.variant",
                "--model-dir",
                str(model_dir),
                "--handlers",
                str(HANDLERS),
                "--port",
                str(port),
                "--name",
                "tiny-lm",
            ],
            cwd=PROJECT_ROOT,
            env={**os.environ, **SERVED_ENV},
            stdout=log_handle,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"the variant exited: {log_file.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no /ping 200: {log_file.read_text()[-2000:]}"
            try:
                if call(port, "GET", "/ping")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield port, log_file
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_the_variant_warms_up_with_the_handlers_hook(variant):
    _, log_file = variant
    text = log_file.read_text()
    assert "variant tiny-lm loaded" in text
    assert "warm-up prediction failed" not in text, text


def test_the_variant_answers_both_payloads_with_tgi_headers(variant, model_dir):
    port, _ = variant
    status, answer, headers = call(
        port,
        "POST",
        "/invocations",
        {"inputs": "hello", "parameters": {"max_new_tokens": 4, "details": True}},
    )
    assert status == 200, answer
    assert answer[0]["details"]["generated_tokens"] == int(headers["x-generated-tokens"]) == 4
    assert int(headers["x-prompt-tokens"]) > 0 and float(headers["x-compute-time"]) > 0
    assert "x-time-per-token" in headers
    status, answer, headers = call(
        port, "POST", "/invocations", {"messages": CHAT, "max_tokens": 3, "temperature": 0}
    )
    assert status == 200, answer
    assert answer["object"] == "chat.completion" and answer["model"] == model_dir.name
    assert answer["usage"]["completion_tokens"] == int(headers["x-generated-tokens"]) == 3
    assert answer["usage"]["prompt_tokens"] == int(headers["x-prompt-tokens"])


@pytest.mark.parametrize(
    ("payload", "content_type", "message"),
    [
        (b"{not json", "application/json", "the body is not valid JSON"),
        ({"inputs": "hi"}, "text/plain", "send application/json"),
        ({"inputs": "hi", "parameters": {"top_k": 3}}, "application/json", "unknown parameter(s)"),
        (
            {"inputs": "hi", "parameters": {"max_new_tokens": 17}},
            "application/json",
            "from 1 to 16, got 17",  # FMOPS_MAX_NEW_TOKENS=16 in the variant's environment
        ),
        (
            {"inputs": " ".join(["card"] * 40)},
            "application/json",
            "the prompt has 40 tokens; at most 32 (MAX_INPUT_TOKENS)",
        ),
        (
            {"messages": CHAT, "max_tokens": 16, "stop": ["a", "b", "c", "d", "e"]},
            "application/json",
            "at most 4 (MAX_STOP_SEQUENCES)",
        ),
    ],
    ids=["bad-json", "content-type", "unknown-parameter", "new-tokens", "input-tokens", "stops"],
)
def test_the_variant_answers_bad_payloads_with_400(variant, payload, content_type, message):
    port, _ = variant
    status, answer, headers = call(port, "POST", "/invocations", payload, content_type)
    assert status == 400 and message in answer["error"], answer
    assert "x-generated-tokens" not in headers
    status, _, _ = call(
        port, "POST", "/invocations", {"inputs": "still", "parameters": {"max_new_tokens": 1}}
    )
    assert status == 200
