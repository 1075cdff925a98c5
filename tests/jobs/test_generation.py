"""generation.py, the causal LM runner of the evaluation job and the serving handler, on a tiny
seeded Llama with a WordPiece tokenizer: batched greedy answers equal one-at-a-time answers and
a greedy decode written out by hand, their log-probabilities are the model's, stop strings and
end tokens end answers, and teacher-forced scores agree with a plain forward pass."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "include" / "scripts"
sys.path.insert(0, str(SCRIPTS))

import generation  # noqa: E402 - the job scripts' modules
import instruction  # noqa: E402

CHATS = [
    [{"role": "user", "content": "Where is the card I ordered last week?"}],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You answer with an intent name."},
        {"role": "user", "content": "My top-up was declined twice today, why?"},
    ],
]
STEPS = 10


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="module")
def lm(base) -> generation.CausalLM:
    return generation.CausalLM(base)


def greedy_by_hand(lm: generation.CausalLM, prompt: str, steps: int) -> tuple[list[int], list]:
    """Greedy decoding as its definition: a full forward pass per token (no cache, no padding,
    no batch), stopping after an end token. The tokens and their log-probabilities."""
    import torch

    ids = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    picked: list[int] = []
    logprobs: list[float] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = lm.model(input_ids=torch.tensor([ids + picked])).logits[0, -1]
            table = torch.log_softmax(logits.float(), dim=-1)
            token = int(table.argmax())
            picked.append(token)
            logprobs.append(float(table[token]))
            if token in lm.eos_token_ids:
                break
    return picked, logprobs


def continuation_by_hand(lm: generation.CausalLM, prompt: str, continuation: str) -> float:
    context = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return score_by_hand(lm, context, continuation)


def score_by_hand(lm: generation.CausalLM, context: list[int], continuation: str) -> float:
    """The continuation's summed log-probability after ``context``, from one unpadded forward
    pass over the prompt's tokens followed by the continuation's (tokenized apart, as train.py
    joins a prompt and its answer)."""
    import torch

    target = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([context + target])).logits[0]
    table = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(table[len(context) + k - 1, t]) for k, t in enumerate(target))


def test_a_causal_lm_folder_is_recognised(base, tmp_path):
    from tiny_models import save_tiny_bert

    assert generation.is_causal_lm(base)
    encoder = save_tiny_bert(tmp_path / "bert")
    assert not generation.is_causal_lm(encoder)
    (encoder / "prompt_format.json").write_text("{}")  # what train.py writes into a tuned LM
    assert generation.is_causal_lm(encoder)
    assert not generation.is_causal_lm(tmp_path / "missing")


def test_an_untuned_model_is_prompted_with_the_chosen_template(base, lm, tmp_path):
    """Without prompt_format.json: the plain template (the tokenizer has no chat template), up to
    where the answer starts; its end of answer, [SEP], ends answers; max_length defaults to 512."""
    from tiny_models import TINY_CHAT_TEMPLATE, save_tiny_causal_lm

    assert lm.template == "plain" and lm.max_length == 512
    assert (
        lm.prompt(CHATS[0])
        == "### Instruction:\nWhere is the card I ordered last week?\n\n### Response:\n"
    )
    assert lm.prompt(CHATS[2]).startswith("### System:\nYou answer with an intent name.\n\n")
    assert lm.tokenizer.sep_token_id in lm.eos_token_ids
    assert lm.tokenizer.padding_side == "left" and lm.tokenizer.truncation_side == "left"

    chat_model = save_tiny_causal_lm(tmp_path / "chat", TINY_CHAT_TEMPLATE)
    chat = generation.CausalLM(chat_model)
    assert chat.template == "chat"
    assert chat.prompt(CHATS[1]) == "<user> hi [SEP] <assistant> "
    assert chat.tokenizer.sep_token_id in chat.eos_token_ids  # the token that ends a turn
    assert generation.CausalLM(chat_model, "plain").template == "plain"
    with pytest.raises(instruction.RecordError, match="no chat template"):
        generation.CausalLM(base, "chat")
    # render_prompt is the prompt: the training text of the chat with an answer, cut before it.
    answered = [*CHATS[0], {"role": "assistant", "content": "card_arrival"}]
    text = "".join(p for p, _ in instruction.segments(answered, lm.tokenizer, "plain"))
    assert text.startswith(lm.prompt(CHATS[0])) and text[len(lm.prompt(CHATS[0])) :].startswith(
        "card_arrival"
    )


def test_a_tuned_models_prompt_format_wins(base, tmp_path):
    import shutil

    tuned = tmp_path / "tuned"
    shutil.copytree(base, tuned)
    end = "[unused5]"
    prompt_format = {"template": "plain", "end_of_answer": end, "max_length": 40, "merged": True}
    (tuned / "prompt_format.json").write_text(json.dumps(prompt_format))
    lm = generation.CausalLM(tuned, prompt_template="plain")
    assert lm.max_length == 40
    assert lm.tokenizer.convert_tokens_to_ids(end) in lm.eos_token_ids
    assert generation.CausalLM(tuned, max_length=24).max_length == 24


def test_only_input_ids_and_the_attention_mask_reach_generate(lm, monkeypatch):
    """A WordPiece tokenizer returns token_type_ids, which a causal LM's generate refuses."""
    assert "token_type_ids" in lm.tokenizer("a question")
    seen: dict = {}
    original = lm.model.generate

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", spy)
    answers = lm.generate([lm.prompt(c) for c in CHATS], max_new_tokens=3)
    assert len(answers) == 3 and "token_type_ids" not in seen
    assert {"input_ids", "attention_mask"} <= set(seen)
    assert seen["input_ids"].shape[0] == 3  # one call for the batch


def test_batched_greedy_answers_are_the_answers_one_at_a_time(lm):
    prompts = [lm.prompt(c) for c in CHATS]
    together = lm.generate(prompts, max_new_tokens=STEPS)
    alone = [lm.generate([p], max_new_tokens=STEPS)[0] for p in prompts]
    for batched, single in zip(together, alone, strict=True):
        assert batched.text == single.text and batched.text
        assert batched.tokens == single.tokens
        assert batched.finish_reason == single.finish_reason
        assert batched.prompt_tokens == single.prompt_tokens
        assert batched.logprob == pytest.approx(single.logprob, abs=1e-3)
    prompt_lengths = [len(lm.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    assert [g.prompt_tokens for g in together] == prompt_lengths


def test_answers_and_logprobs_are_those_of_greedy_decoding_by_hand(lm):
    prompts = [lm.prompt(c) for c in CHATS]
    answers = lm.generate(prompts, max_new_tokens=STEPS)
    for prompt, answer in zip(prompts, answers, strict=True):
        tokens, logprobs = greedy_by_hand(lm, prompt, STEPS)
        ended = tokens[-1] in lm.eos_token_ids
        body = tokens[:-1] if ended else tokens
        assert answer.text == lm.tokenizer.decode(body, skip_special_tokens=True).strip()
        assert answer.tokens == len(tokens)
        assert answer.finish_reason == ("eos_token" if ended else "length")
        assert answer.logprob == pytest.approx(sum(logprobs[: len(body)]), abs=1e-3)
        assert answer.logprob < 0
        assert generation.sequence_probability(answer) == pytest.approx(math.exp(answer.logprob))


def test_a_stop_string_cuts_the_answer(lm):
    prompt = lm.prompt(CHATS[0])
    full = lm.generate([prompt], max_new_tokens=STEPS)[0]
    tokens, logprobs = greedy_by_hand(lm, prompt, STEPS)
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[2]
    cut = lm.generate([prompt], max_new_tokens=STEPS, stop=["never there", stop])[0]
    assert cut.finish_reason == "stop_sequence"
    assert cut.text == full.text[: full.text.index(stop)].strip()
    assert stop not in cut.text and cut.tokens < full.tokens
    # Generation ran up to the token that completed the stop string, and the answer's logprob
    # is that of the tokens its text needs.
    decoded = [lm.tokenizer.decode(tokens[:k], skip_special_tokens=True) for k in range(STEPS + 1)]
    assert cut.tokens == next(k for k, text in enumerate(decoded) if stop in text)
    used = next(k for k, text in enumerate(decoded) if len(text.rstrip()) >= len(cut.text))
    assert decoded[used].strip() == cut.text
    assert cut.logprob == pytest.approx(sum(logprobs[:used]), abs=1e-3)
    # In a batch, only the row that meets the stop string stops.
    other = lm.generate([lm.prompt(CHATS[1])], max_new_tokens=STEPS)[0]
    both = lm.generate([prompt, lm.prompt(CHATS[1])], max_new_tokens=STEPS, stop=[stop])
    assert both[0].text == cut.text
    if stop not in other.text:
        assert both[1].text == other.text and both[1].finish_reason == other.finish_reason


def test_the_end_of_answer_token_ends_an_answer(base, lm, tmp_path):
    """A tuned model's end_of_answer (prompt_format.json) is an end token: set it to the third
    token that the model generates, and the answer is the two before it."""
    import shutil

    prompt = lm.prompt(CHATS[0])
    tokens, logprobs = greedy_by_hand(lm, prompt, STEPS)
    end = lm.tokenizer.convert_ids_to_tokens(tokens[2])
    assert tokens[2] not in tokens[:2]
    tuned = tmp_path / "tuned"
    shutil.copytree(base, tuned)
    prompt_format = {"template": "plain", "end_of_answer": end, "max_length": 64}
    (tuned / "prompt_format.json").write_text(json.dumps(prompt_format))
    answer = generation.CausalLM(tuned).generate([prompt], max_new_tokens=STEPS)[0]
    assert answer.finish_reason == "eos_token" and answer.tokens == 3
    assert answer.text == lm.tokenizer.decode(tokens[:2], skip_special_tokens=True).strip()
    assert answer.logprob == pytest.approx(sum(logprobs[:2]), abs=1e-3)


def test_generation_is_timed(lm):
    answers = lm.generate([lm.prompt(c) for c in CHATS], max_new_tokens=4)
    timing = lm.last_timing
    assert set(timing) == {"first_token_seconds", "seconds", "generated_tokens"}
    assert 0 < timing["first_token_seconds"] < timing["seconds"]
    assert timing["generated_tokens"] == sum(a.tokens for a in answers) > 0
    assert all(a.finish_reason == "length" and a.tokens == 4 for a in answers)
    assert lm.generate([], max_new_tokens=4) == []


def test_seeded_sampling_repeats(lm):
    prompts = [lm.prompt(c) for c in CHATS]
    first = lm.generate(prompts, max_new_tokens=6, temperature=1.0, seed=5)
    again = lm.generate(prompts, max_new_tokens=6, temperature=1.0, seed=5)
    greedy = lm.generate(prompts, max_new_tokens=6)
    assert [a.text for a in first] == [a.text for a in again]
    assert [a.text for a in first] != [a.text for a in greedy]
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(prompts, max_new_tokens=2, temperature=-1.0)


def test_continuation_logprobs_agree_with_a_forward_pass(lm):
    prompts = [lm.prompt(c) for c in CHATS]
    continuations = ["card_arrival", "hello there, how are you", "declined_card_payment"]
    scored = lm.continuation_logprobs(prompts, continuations)
    for prompt, continuation, (logprob, count) in zip(prompts, continuations, scored, strict=True):
        assert count == len(lm.tokenizer(continuation, add_special_tokens=False)["input_ids"])
        assert logprob == pytest.approx(continuation_by_hand(lm, prompt, continuation), abs=1e-3)
        assert logprob < 0
    # Alone, or in a batch padded to a longer neighbour: the same scores.
    assert lm.continuation_logprobs(prompts[1:2], continuations[1:2])[0] == pytest.approx(
        scored[1], abs=1e-3
    )
    assert lm.continuation_logprobs([], []) == []
    with pytest.raises(ValueError, match="differ in length"):
        lm.continuation_logprobs(prompts, continuations[:1])


def test_a_long_pair_keeps_the_continuation_and_the_end_of_the_prompt(base):
    lm = generation.CausalLM(base, max_length=16)
    prompt = lm.prompt([{"role": "user", "content": "my card has not arrived yet " * 10}])
    [(logprob, count)] = lm.continuation_logprobs([prompt], ["card arrival"])
    assert count == 2
    context = lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(context) > 16
    kept = context[-(16 - count) :]
    assert logprob == pytest.approx(score_by_hand(lm, kept, "card arrival"), abs=1e-3)


# -- int8 weights (the optimize step's artifact for a causal LM) --------------------------------


def int8_folder(base: Path, folder: Path, serving: dict | None = None) -> Path:
    """``base`` as registration packs it with int8 weights: the eager folder, the quantized
    layers' file and serving.json naming it."""
    import shutil

    shutil.copytree(base, folder)
    lm = generation.CausalLM(base)
    assert generation.quantize_int8(lm.model) > 0
    generation.save_int8(lm.model, folder / generation.INT8_WEIGHTS)
    spec = serving or {"runtime": generation.INT8_RUNTIME, "weights": generation.INT8_WEIGHTS}
    (folder / generation.SERVING_FILE).write_text(json.dumps(spec))
    return folder


def test_int8_weights_are_served_as_saved_and_the_head_stays_fp32(base, lm, tmp_path):
    import torch

    served = generation.CausalLM(int8_folder(base, tmp_path / "int8"))
    assert served.runtime == generation.INT8_RUNTIME and lm.runtime == "pytorch"
    assert type(served.model.get_output_embeddings()) is torch.nn.Linear  # the head: fp32
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    quantized = [n for n, m in served.model.named_modules() if isinstance(m, DynamicLinear)]
    assert len(quantized) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    # Greedy answers in a batch: int8 arithmetic, so log-probabilities near the eager model's
    # but not equal.
    prompts = [served.prompt(chat) for chat in CHATS]
    int8_answers = served.generate(prompts, STEPS)
    eager_answers = lm.generate(prompts, STEPS)
    assert all(a.tokens > 0 for a in int8_answers)
    assert [a.logprob for a in int8_answers] != [a.logprob for a in eager_answers]


@pytest.mark.parametrize(
    ("serving", "named"),
    [
        (
            {"runtime": "onnxruntime", "graph": "onnx/model.onnx"},
            "must name runtime 'pytorch-int8'",
        ),
        ({"runtime": "pytorch-int8"}, "must name runtime 'pytorch-int8' and its weights"),
        ({"runtime": "pytorch-int8", "weights": "../elsewhere.safetensors"}, "is not a file of"),
        ({"runtime": "pytorch-int8", "weights": "int8/missing.safetensors"}, "is not a file of"),
    ],
)
def test_a_bad_serving_json_is_refused_with_the_fix(base, tmp_path, serving, named):
    folder = int8_folder(base, tmp_path / "int8", serving)
    with pytest.raises(ValueError, match=re.escape(named)):
        generation.CausalLM(folder)


def test_another_models_int8_weights_are_refused(base, tmp_path):
    from tiny_models import save_tiny_causal_lm

    other = save_tiny_causal_lm(tmp_path / "other", layers=3)
    folder = int8_folder(other, tmp_path / "int8")
    (folder / generation.INT8_WEIGHTS).replace(tmp_path / "other.safetensors")
    target = int8_folder(base, tmp_path / "target")
    (tmp_path / "other.safetensors").replace(target / generation.INT8_WEIGHTS)
    with pytest.raises(ValueError, match="it is another model's file"):
        generation.CausalLM(target)


def test_int8_weights_of_another_scheme_are_refused(base, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = int8_folder(base, tmp_path / "int8")
    path = folder / generation.INT8_WEIGHTS
    save_file(load_file(str(path)), str(path), metadata={"scheme": "per-tensor int8, head too"})
    with pytest.raises(ValueError, match="int8 scheme 'per-tensor int8, head too' is not"):
        generation.CausalLM(folder)
