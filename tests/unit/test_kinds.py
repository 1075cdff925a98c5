"""The model-kind seam (``fmops.kinds``): what each kind sends to the job scripts, how it reads
the evaluation set for smoke traffic, and the shipped generative dataset."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmops.config import load_config
from fmops.kinds import KINDS, get_kind, kind_of
from fmops.kinds.generation import normalize_answer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "include" / "scripts"))

from train import Hyperparameters  # noqa: E402 - the job script, beside its siblings

LLM_CONFIG = ROOT / "include" / "configs" / "local-llm.yaml"
CHAT_DATA = ROOT / "include" / "data" / "banking77-chat"


@pytest.fixture(scope="module")
def llm_config():
    return load_config(LLM_CONFIG)


@pytest.fixture(scope="module")
def classifier_config():
    return load_config(ROOT / "include" / "configs" / "local.yaml")


def test_an_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"'regression'.*\['classification', 'instruction'\]"):
        get_kind("regression")


def test_each_kind_is_registered_under_its_data_task():
    for task in KINDS:
        assert get_kind(task).data_task == task


def test_every_handler_script_a_kind_names_exists():
    for task in KINDS:
        kind = get_kind(task)
        assert kind.handlers in kind.handler_code
        for name in kind.handler_code:
            assert (ROOT / "include" / "scripts" / name).is_file(), name
        assert kind.mlflow_code_path().is_file()


def test_what_an_instruction_config_sends_is_what_train_py_accepts(llm_config):
    kind = kind_of(llm_config)
    assert kind.name == "generation"
    for candidate in llm_config.candidates:
        hps = Hyperparameters.parse(
            candidate.job_hyperparameters(kind.train_hyperparameters(llm_config.data))
        )
        assert hps.task == "instruction"
        assert hps.messages_column == "messages"
        assert hps.prompt_template == "auto"
        assert hps.method == "lora" and hps.lora_r == candidate.lora.r
        assert hps.lora_target_modules == candidate.lora.target_modules
        assert hps.merge_adapter  # served merged; the adapter is kept beside it


def test_the_baseline_is_evaluated_as_its_kind(llm_config, classifier_config):
    assert kind_of(classifier_config).baseline_arguments(classifier_config.data) == ["--zero-shot"]
    assert kind_of(llm_config).baseline_arguments(llm_config.data) == ["--prompt-template", "auto"]


def test_the_evaluation_request_carries_the_kinds_baseline_arguments(llm_config):
    from fmops.jobs.specs import evaluation_request

    staged = {"evaluation_uri": "file:///tmp/x"}
    request = evaluation_request(
        llm_config, "file:///m", staged, {}, zero_shot=True, output_uri="file:///o"
    )
    arguments = request["AppSpecification"]["ContainerArguments"]
    assert arguments[-2:] == ["--prompt-template", "auto"]
    assert "--zero-shot" not in arguments
    tuned = evaluation_request(
        llm_config, "file:///m", staged, {}, zero_shot=False, output_uri="file:///o"
    )
    assert "--prompt-template" not in tuned["AppSpecification"]["ContainerArguments"]


def test_generation_smoke_cases_are_the_evaluation_chats(llm_config):
    kind = kind_of(llm_config)
    cases = kind.smoke_cases(llm_config, 5)
    assert len(cases) == 5
    records = [json.loads(line) for line in (CHAT_DATA / "test.jsonl").read_text().splitlines()]
    chats = [r["messages"] for r in records]
    for case in cases:
        messages = case["payload"]["messages"]
        assert [m["role"] for m in messages] == ["system", "user"]
        assert [*messages, {"role": "assistant", "content": case["expected"]}] in chats
        assert case["payload"]["max_tokens"] >= 1
    assert kind.smoke_cases(llm_config, 5) == cases  # seeded


def test_generation_smoke_answer_reads_a_chat_completion(llm_config):
    kind = kind_of(llm_config)
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "card arrival"}}]}
    assert kind.smoke_answer(body, llm_config) == ("card arrival", None)
    answer, problem = kind.smoke_answer([{"generated_text": "x"}], llm_config)
    assert answer is None and "choices[0].message.content" in problem


def test_classification_smoke_answer_refuses_an_undeclared_label(classifier_config):
    kind = kind_of(classifier_config)
    ok = {"predictions": [{"label": "card_arrival", "score": 0.9}]}
    assert kind.smoke_answer(ok, classifier_config) == ("card_arrival", None)
    answer, problem = kind.smoke_answer(
        {"predictions": [{"label": "weather", "score": 0.9}]}, classifier_config
    )
    assert answer == "weather" and "not a declared label" in problem


@pytest.mark.parametrize(
    ("answer", "expected", "same"),
    [
        ("Card arrival.", "card arrival", True),
        ("the card_arrival", "card_arrival", True),
        ("card_arrival", "card arrival", False),  # the underscore is kept, as evaluate.py does
        ("card delivery", "card arrival", False),
    ],
)
def test_a_generated_answer_matches_after_squad_normalisation(answer, expected, same):
    assert (normalize_answer(answer) == normalize_answer(expected)) is same


def test_the_card_shows_sample_answers_and_the_prompt_format(llm_config, tmp_path):
    records = [
        {
            "input": "where is my card | now",
            "target": "card arrival",
            "predicted": "card arrival",
            "token_f1": 1.0,
        },
        {
            "input": "top up failed",
            "target": "top up failed",
            "predicted": "top up",
            "token_f1": 0.8,
        },
    ]
    (tmp_path / "predictions-banking77-chat.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )
    section = kind_of(llm_config).card_section(
        llm_config, {"candidate": "x", "output_uri": f"file://{tmp_path}"}
    )
    assert "## Prompt format" in section and "`auto`" in section
    assert "| where is my card \\| now | card arrival | card arrival | 1.00 |" in section
    assert "| top up failed | top up failed | top up | 0.80 |" in section


def test_the_shipped_chat_data_rebuilds_to_the_same_bytes(tmp_path):
    """build.py is the source of train.jsonl and test.jsonl: rebuilding changes nothing."""
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in CHAT_DATA.glob("*.jsonl")}
    copy = tmp_path / "banking77-chat"
    copy.mkdir()
    (copy / "build.py").write_text((CHAT_DATA / "build.py").read_text())
    (tmp_path / "banking77").symlink_to(ROOT / "include" / "data" / "banking77")
    subprocess.run([sys.executable, str(copy / "build.py")], check=True)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in copy.glob("*.jsonl")}
    assert after == before and set(before) == {"train.jsonl", "test.jsonl"}


def test_the_shipped_chat_data_never_puts_an_evaluation_message_into_training():
    def users(name: str) -> set[str]:
        lines = (CHAT_DATA / name).read_text().splitlines()
        return {json.loads(x)["messages"][1]["content"] for x in lines}

    assert not users("train.jsonl") & users("test.jsonl")
