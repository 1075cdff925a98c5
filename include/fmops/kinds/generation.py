"""A generative LM: a causal LM instruction-tuned on chats or prompt/completion pairs.

The untuned baseline is the base model answering with the same prompt format; the registered
model is the ``fmops/mlflow_generation_model.py`` pyfunc with MLflow's chat schema (``messages``
in, a chat completion out), served by ``include/scripts/serve_generation.py`` with the TGI
contract (``{"inputs", "parameters"}`` and OpenAI-style ``{"messages"}``), and on SageMaker by the
Hugging Face LLM (TGI) image, which reads the model folder itself (no ``code/``).
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.kinds.base import ModelKind, evaluation_sample

if TYPE_CHECKING:
    from fmops.config import DataConfig, PipelineConfig

SMOKE_MAX_TOKENS = 16
CARD_SAMPLES = 8
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (lower case, no punctuation but ``_``, no articles, single spaces),
    as evaluate.py's exact match reads an answer."""
    punctuation = set(string.punctuation) - {"_"}
    text = "".join(c for c in text.lower() if c not in punctuation)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _cell(value: Any, width: int = 120) -> str:
    """A Markdown table cell: one line, pipes escaped, cut to ``width`` characters."""
    text = " ".join(str(value).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def chat_of(row: dict[str, Any], data: DataConfig) -> list[dict[str, str]] | None:
    """A record as a chat ending with the reference answer: the messages column when the row
    has one, else the prompt and completion as a user turn and an assistant turn."""
    messages = row.get(data.messages_column)
    if isinstance(messages, str) and messages.strip():
        messages = json.loads(messages)
    if isinstance(messages, list) and messages:
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    prompt, completion = row.get(data.prompt_column), row.get(data.completion_column)
    if isinstance(prompt, str) and isinstance(completion, str):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return None


class GenerationKind(ModelKind):
    name = "generation"
    data_task = "instruction"
    scenario_task = "generation"
    generative = True
    handlers = "serve_generation.py"
    handler_code = ("serve_generation.py", "generation.py", "instruction.py")
    mlflow_code = "mlflow_generation_model.py"
    hosting_image = "huggingface-llm"

    def train_hyperparameters(self, data: DataConfig) -> dict[str, Any]:
        return {
            "task": "instruction",
            "messages_column": data.messages_column,
            "prompt_column": data.prompt_column,
            "completion_column": data.completion_column,
            "prompt_template": data.prompt_template,
        }

    def baseline_arguments(self, data: DataConfig) -> list[str]:
        return ["--prompt-template", data.prompt_template]

    def heldout_columns(self, data: DataConfig) -> tuple[str, str]:
        return data.prompt_column, data.completion_column

    def model_problem(self, model_dir: Path) -> str | None:
        if (model_dir / "prompt_format.json").exists():
            return None
        return "it has no prompt_format.json: it is not a causal LM that train.py tuned"

    def mlflow_signature(self) -> Any:
        """MLflow's chat schema: ``messages`` (and max_tokens, temperature, stop, ...) in, a chat
        completion out, as the MLflow AI gateway and OpenAI clients speak it."""
        from mlflow.models import ModelSignature
        from mlflow.types.llm import CHAT_MODEL_INPUT_SCHEMA, CHAT_MODEL_OUTPUT_SCHEMA

        return ModelSignature(inputs=CHAT_MODEL_INPUT_SCHEMA, outputs=CHAT_MODEL_OUTPUT_SCHEMA)

    def mlflow_input_example(self, config: PipelineConfig) -> Any:
        case = self.smoke_cases(config, 1)
        messages = case[0]["payload"]["messages"] if case else [{"role": "user", "content": "Hi"}]
        return {"messages": messages, "max_tokens": SMOKE_MAX_TOKENS, "temperature": 0.0}

    def smoke_cases(self, config: PipelineConfig, count: int) -> list[dict[str, Any]]:
        cases = []
        for row in evaluation_sample(config, count):
            chat = chat_of(row, config.data)
            if chat and chat[-1]["role"] == "assistant":
                cases.append(
                    {
                        "payload": {
                            "messages": chat[:-1],
                            "max_tokens": SMOKE_MAX_TOKENS,
                            "temperature": 0.0,
                        },
                        "expected": chat[-1]["content"],
                    }
                )
        return cases

    def example_payload(self, config: PipelineConfig) -> dict[str, Any]:
        """The first smoke case's chat with a message of our own as the user's turn."""
        cases = self.smoke_cases(config, 1)
        messages = (
            [m for m in cases[0]["payload"]["messages"] if m["role"] == "system"] if cases else []
        )
        messages.append({"role": "user", "content": "I still have not received my new card"})
        return {"messages": messages, "max_tokens": SMOKE_MAX_TOKENS, "temperature": 0.0}

    def smoke_answer(self, body: Any, config: PipelineConfig) -> tuple[str | None, str | None]:
        try:
            answer = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return None, f"no choices[0].message.content in {str(body)[:200]}"
        if not isinstance(answer, str):
            return None, f"the answer is not text: {answer!r:.80}"
        return answer, None

    def card_section(self, config: PipelineConfig, evaluation: dict[str, Any] | None) -> str:
        """The prompt format and sample answers beside their references, from the winner's
        evaluation on the held-out scenario (its predictions file)."""
        from fmops import storage
        from fmops.config import HELDOUT

        lines = [
            "## Prompt format",
            f"`{config.data.prompt_template}` (data.prompt_template): "
            + (
                "the tokenizer's chat template when it has one, else the plain template"
                if config.data.prompt_template == "auto"
                else f"the {config.data.prompt_template} template"
            )
            + "; the model folder's `prompt_format.json` records what training used, and the "
            "endpoint renders `messages` and raw `inputs` with it.",
        ]
        scenario = next((s.name for s in config.evaluation.scenarios if s.data == HELDOUT), None)
        if evaluation is None or scenario is None or not evaluation.get("output_uri"):
            return "\n".join(lines)
        aws_conn_id = config.sagemaker.aws_conn_id if config.sagemaker else None
        uri = storage.join(evaluation["output_uri"], f"predictions-{scenario}.jsonl")
        try:
            records = [json.loads(x) for x in storage.read_text(uri, aws_conn_id).splitlines()]
        except (OSError, ValueError) as err:
            return "\n".join([*lines, "", f"(no sample answers: {uri} unreadable: {err})"])
        lines += [
            "",
            f"## Sample answers ({scenario}, the first {min(CARD_SAMPLES, len(records))} of "
            f"{len(records)})",
            "| input | reference | answer | token F1 |",
            "|---|---|---|---|",
        ]
        for record in records[:CARD_SAMPLES]:
            cells = [_cell(record.get(k, "")) for k in ("input", "target", "predicted")]
            f1 = record.get("token_f1")
            lines.append(f"| {' | '.join(cells)} | {'n/a' if f1 is None else f'{f1:.2f}'} |")
        return "\n".join(lines)

    def matches(self, answer: str, expected: str) -> bool:
        return normalize_answer(answer) == normalize_answer(expected)

    def card_limits(self, config: PipelineConfig, staged: dict, winner: str) -> list[str]:
        candidate = next((c for c in config.candidates if c.name == winner), None)
        lines = [
            "- It generates text: an answer can be fluent and wrong, and nothing checks it "
            "against a label set. Score its answers on your own traffic before relying on them.",
            f"- Chats (`messages`) are rendered with the `{config.data.prompt_template}` prompt "
            "format (prompt_format.json in the model folder); raw `inputs` text goes to the "
            "model as it is, as TGI does: send `messages` to get the format it was tuned on.",
        ]
        if candidate is not None:
            lines.append(
                f"- Chats were cut to {candidate.hyperparameters.max_length} tokens in training; "
                "the endpoint refuses prompts over MAX_INPUT_TOKENS."
            )
        return lines
