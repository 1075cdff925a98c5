"""Fine-tune a model inside a training job: a text classifier, or a causal LM on instructions.

Runs unchanged as the entry point of a SageMaker Hugging Face training container and under the
fmops local executor, which emulates the same container contract:

- hyperparameters: the JSON object in ``SM_HPS`` or ``/opt/ml/input/config/hyperparameters.json``
  (SageMaker passes every value as a string, so each one is parsed and checked here);
- channels: ``SM_CHANNEL_TRAIN`` and ``SM_CHANNEL_VALIDATION``; ``SM_CHANNEL_BASE_MODEL`` holds a
  Hugging Face model folder, else the ``base_model`` hyperparameter names one;
- checkpoints: ``SM_CHECKPOINT_DIR`` (a job started again with the same folder resumes);
- outputs: the model in ``SM_MODEL_DIR`` and ``metrics.json`` in ``SM_OUTPUT_DATA_DIR``. The
  platform (or the local executor) packs the model folder into ``model.tar.gz``.

``task=classification`` (channels of ``*.csv`` and optionally ``labels.json``, the declared
label set): the model is ``inference.build_classifier`` (beside this file): encoder, mean
pooling and a linear head that starts from the label names' embeddings
(``init_head=label_names``), so that training starts from the zero-shot classifier. Output: the
encoder's ``model.safetensors``, config and tokenizer, the head in ``classifier.safetensors``,
``label_map.json``.

``task=instruction`` (channels of chat or prompt/completion records, see ``instruction.py``): a
causal LM (``AutoModelForCausalLM``) trained on the assistant's tokens only. Output: the model
(safetensors), tokenizer, ``generation_config.json`` and ``prompt_format.json`` (how prompts
were rendered, for inference).

``method=full`` trains every weight; ``method=lora`` trains LoRA adapters (peft) on the target
modules of the model's architecture (``lora_target_modules`` overrides them) and, for a
classifier, the head in full. LoRA outputs hold the adapters under ``adapter/`` and the merged
model at the top (``merge_adapter=false`` keeps the adapters only, for instruction models).

Each epoch ends with an evaluation on the validation channel; the best epoch's weights are the
ones saved (validation accuracy for classifiers, validation loss for causal LMs), and
``early_stopping_patience`` epochs without improvement end training.

Progress goes to stdout as ``key=value`` lines that the job spec's MetricDefinitions match.
Only torch, transformers, peft, numpy and the standard library are imported: the folder is
uploaded as-is.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

EXIT_BAD_INPUT = 2
# LoRA target modules for architectures that peft's own table lacks.
EXTRA_LORA_TARGETS = {
    "distilbert": ["q_lin", "v_lin"],
    "mpnet": ["q", "v"],
    "phi3": ["qkv_proj"],
}


class HyperparameterError(ValueError):
    """A hyperparameter is missing, malformed or out of range."""


@dataclass
class Hyperparameters:
    base_model: str = ""
    task: str = "classification"
    method: str = "full"
    text_column: str = "text"
    label_column: str = "label"
    messages_column: str = "messages"
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    prompt_template: str = "auto"
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 13
    log_every_steps: int = 10
    precision: str = "fp32"
    checkpoint_every_steps: int = 0
    gradient_accumulation_steps: int = 1
    group_by_length: bool = True
    early_stopping_patience: int = 0
    init_head: str = "label_names"
    head_learning_rate: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=list)  # empty: per architecture
    merge_adapter: bool = True

    @classmethod
    def parse(cls, raw: dict[str, object]) -> Hyperparameters:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(
            set(raw) - set(known) - {"sagemaker_program", "sagemaker_submit_directory"}
        )
        if unknown:
            raise HyperparameterError(
                f"unknown hyperparameter(s) {unknown}; allowed: {sorted(known)}"
            )
        values: dict[str, object] = {}
        defaults = cls()
        for name, value in raw.items():
            if name not in known:
                continue
            default = getattr(defaults, name)
            values[name] = _coerce(name, value, default)
        hps = cls(**values)
        hps.check()
        return hps

    def check(self) -> None:
        if self.task not in ("classification", "instruction"):
            raise HyperparameterError(
                f"task={self.task!r}; allowed: 'classification', 'instruction'"
            )
        if self.prompt_template not in ("auto", "chat", "plain"):
            raise HyperparameterError(
                f"prompt_template={self.prompt_template!r}; allowed: 'auto', 'chat', 'plain'"
            )
        if not self.merge_adapter and (self.task != "instruction" or self.method != "lora"):
            raise HyperparameterError(
                "merge_adapter=false keeps LoRA adapters without a merged model: it applies to "
                "task=instruction with method=lora only (a classifier is served merged)"
            )
        if self.method not in ("full", "lora"):
            raise HyperparameterError(f"method={self.method!r}; allowed: 'full', 'lora'")
        if self.precision not in ("fp32", "bf16"):
            raise HyperparameterError(f"precision={self.precision!r}; allowed: 'fp32', 'bf16'")
        if self.precision == "bf16" and self.task != "instruction":
            raise HyperparameterError(
                "precision=bf16 applies to task=instruction only (a classifier trains in fp32)"
            )
        if self.init_head not in ("label_names", "random"):
            raise HyperparameterError(
                f"init_head={self.init_head!r}; allowed: 'label_names', 'random'"
            )
        if not 0 <= self.head_learning_rate < 1:
            raise HyperparameterError(
                f"head_learning_rate={self.head_learning_rate} must be in [0, 1) (0: learning_rate)"
            )
        positive = ("epochs", "batch_size", "max_length", "log_every_steps", "lora_r", "lora_alpha")
        if self.gradient_accumulation_steps < 1:
            raise HyperparameterError(
                f"gradient_accumulation_steps={self.gradient_accumulation_steps} must be >= 1"
            )
        if self.early_stopping_patience < 0:
            raise HyperparameterError(
                f"early_stopping_patience={self.early_stopping_patience} must be >= 0 (0: off)"
            )
        if self.checkpoint_every_steps < 0:
            raise HyperparameterError(
                f"checkpoint_every_steps={self.checkpoint_every_steps} must be >= 0 "
                "(0: a checkpoint at the end of each epoch only)"
            )
        for name in positive:
            if getattr(self, name) <= 0:
                raise HyperparameterError(f"{name}={getattr(self, name)} must be > 0")
        if not 0 < self.learning_rate < 1:
            raise HyperparameterError(f"learning_rate={self.learning_rate} must be in (0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise HyperparameterError(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if not 0 <= self.lora_dropout < 1:
            raise HyperparameterError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")


def _coerce(name: str, value: object, default: object) -> object:
    """Parse one hyperparameter to the type of its default (SageMaker sends strings)."""
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            number = float(value)  # accepts "3" and "3.0"
            if not number.is_integer():
                raise ValueError
            return int(number)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            parsed = (
                json.loads(value) if isinstance(value, str) and value.startswith("[") else value
            )
            if isinstance(parsed, str):
                parsed = [p.strip() for p in parsed.split(",") if p.strip()]
            if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
                raise ValueError
            return parsed
        return str(value)
    except (TypeError, ValueError):
        raise HyperparameterError(
            f"hyperparameter {name}={value!r} is not a valid {type(default).__name__}"
        ) from None


def load_hyperparameters() -> Hyperparameters:
    raw = os.environ.get("SM_HPS")
    if raw is None:
        path = Path(os.environ.get("SM_INPUT_CONFIG_DIR", "/opt/ml/input/config"))
        path = path / "hyperparameters.json"
        raw = path.read_text() if path.exists() else "{}"
    return Hyperparameters.parse(json.loads(raw))


def read_channel(channel_dir: Path, hps: Hyperparameters) -> tuple[list[str], list[str]]:
    files = sorted(channel_dir.glob("*.csv"))
    if not files:
        raise HyperparameterError(f"no *.csv file in channel folder {channel_dir}")
    texts: list[str] = []
    labels: list[str] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {hps.text_column, hps.label_column} - set(reader.fieldnames or [])
            if missing:
                raise HyperparameterError(
                    f"{path.name} lacks column(s) {sorted(missing)}; it has {reader.fieldnames}; "
                    "set text_column/label_column to the dataset's columns"
                )
            for row in reader:
                texts.append(row[hps.text_column])
                labels.append(row[hps.label_column])
    return texts, labels


def declared_labels(channel_dir: Path, observed: list[str]) -> list[str]:
    path = channel_dir / "labels.json"
    if path.exists():
        return list(json.loads(path.read_text()))
    return sorted(set(observed))


def length_grouped_order(
    lengths: list[int], batch_size: int, rng: random.Random, window: int = 50
) -> list[int]:
    """A shuffled order whose consecutive batches hold texts of similar length.

    The indices are shuffled, cut into windows of ``window`` batches, sorted by length inside
    each window, cut into batches, and the batches shuffled: each batch pads to little more
    than its own texts, while the epoch stays random (the approach of transformers'
    ``group_by_length``).
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


# torchrun sets RANK and WORLD_SIZE: data-parallel over processes (gloo on CPUs, nccl on GPUs).
RANK = int(os.environ.get("RANK", "0"))
WORLD_SIZE = int(os.environ.get("WORLD_SIZE", "1"))
LOCAL_RANK = int(os.environ.get("LOCAL_RANK", "0"))
LOCAL_WORLD_SIZE = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def choose_device() -> Any:
    """This process's GPU (one per process, by LOCAL_RANK) when there is one for each process on
    the host, else the CPU."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() >= LOCAL_WORLD_SIZE:
        torch.cuda.set_device(LOCAL_RANK)
        return torch.device("cuda", LOCAL_RANK)
    return torch.device("cpu")


def base_dtype(hps: Hyperparameters) -> Any:
    """The dtype the base model's weights are loaded in: bf16 for a LoRA run in bf16 (the frozen
    weights never see an optimizer step: half their memory), else fp32 (the weights that train
    stay fp32 under bf16 autocast: mixed precision). Explicit, because transformers otherwise
    loads a checkpoint in its own dtype (a bf16 checkpoint would train in pure bf16)."""
    import torch

    return torch.bfloat16 if hps.precision == "bf16" and hps.method == "lora" else torch.float32


def autocast(device: Any, hps: Hyperparameters) -> Any:
    """bf16 autocast for the forward passes when ``precision`` is bf16 (off otherwise)."""
    import torch

    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=hps.precision == "bf16"
    )


def on(device: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    return {k: v.to(device) for k, v in tensors.items()}


def log(**values: object) -> None:
    """One progress line: ``key=value`` tokens, ending with ``time=<unix seconds>`` (the time the
    values were measured, which is what MLflow records for them, however late they are read)."""
    if RANK != 0:
        return  # one log per job, from the first process
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}")
    parts.append(f"time={time.time():.3f}")
    print(" ".join(parts), flush=True)


def lora_targets(model: Any, override: list[str]) -> list[str]:
    """The modules to adapt: ``override``, else the table for the model's architecture."""
    if override:
        return override
    import torch
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = model.config.model_type
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(
        model_type
    ) or EXTRA_LORA_TARGETS.get(model_type)
    if not targets:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise HyperparameterError(
            f"no default LoRA target modules for architecture {model_type!r}; set "
            f"lora_target_modules to some of its linear layers: {linear}"
        )
    return list(targets)


def with_lora(model: Any, hps: Hyperparameters, task_type: str | None) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, hps.lora_target_modules)
    log(event="lora", target_modules=",".join(targets), r=hps.lora_r)
    lora = LoraConfig(
        r=hps.lora_r,
        lora_alpha=hps.lora_alpha,
        lora_dropout=hps.lora_dropout,
        target_modules=targets,
        task_type=task_type,
    )
    return get_peft_model(model, lora)


class ClassificationTask:
    """Encoder + mean pooling + linear head; the best epoch has the best validation accuracy."""

    find_unused_parameters = True  # the encoder's [CLS] pooler (BERT-style) is not used
    device: Any = "cpu"  # where batches go; main() moves the model there

    def __init__(
        self, hps: Hyperparameters, base_model: str, train_dir: Path, validation_dir: Path | None
    ):
        import inference
        from transformers import AutoModel, AutoTokenizer

        self.hps = hps
        train_texts, train_labels = read_channel(train_dir, hps)
        self.labels = declared_labels(train_dir, train_labels)
        val_texts, val_labels = read_channel(validation_dir, hps) if validation_dir else ([], [])
        ids = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({x for x in train_labels + val_labels if x not in ids})
        if unknown:
            raise HyperparameterError(f"labels not in labels.json: {unknown[:10]}")
        self.train = (train_texts, [ids[x] for x in train_labels])
        self.validation = (val_texts, [ids[x] for x in val_labels])
        self.lengths = [len(t) for t in train_texts]
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        encoder = AutoModel.from_pretrained(base_model, use_safetensors=True, dtype=base_dtype(hps))
        self.model = inference.build_classifier(encoder, len(self.labels))
        if hps.init_head == "label_names":
            inference.init_head_from_label_names(self.model, self.tokenizer, self.labels)
        if hps.method == "lora":
            self.model.encoder = with_lora(encoder, hps, task_type=None)

    def sizes(self) -> dict[str, int]:
        return {
            "train_examples": len(self.train[0]),
            "validation_examples": len(self.validation[0]),
            "labels": len(self.labels),
        }

    def param_groups(self) -> list[dict[str, Any]]:
        head = list(self.model.classifier.parameters())
        body = [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and not n.startswith("classifier.")
        ]
        rate = self.hps.head_learning_rate or self.hps.learning_rate
        return [{"params": body}, {"params": head, "lr": rate}]

    def batch(self, split: str, idx: list[int]) -> dict[str, Any]:
        import torch

        texts, ys = self.train if split == "train" else self.validation
        # Dynamic padding: each batch is padded to its own longest text only.
        enc = self.tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=self.hps.max_length,
            return_tensors="pt",
        )
        tensors = {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": torch.tensor([ys[i] for i in idx]),
        }
        return on(self.device, tensors)

    @staticmethod
    def loss(forward: Any, inputs: dict[str, Any]) -> Any:
        return forward(**inputs)[1]

    def evaluate(self) -> dict[str, float]:
        import torch

        correct, loss_sum, count = 0, 0.0, len(self.validation[0])
        with torch.no_grad():
            for start in range(0, count, self.hps.batch_size):
                inputs = self.batch(
                    "validation", list(range(start, min(start + self.hps.batch_size, count)))
                )
                logits, loss = self.model(**inputs)
                loss_sum += float(loss) * len(inputs["labels"])
                correct += int((logits.argmax(-1) == inputs["labels"]).sum())
        return {"validation_accuracy": correct / count, "validation_loss": loss_sum / count}

    @staticmethod
    def score(metrics: dict[str, float]) -> float:
        return metrics["validation_accuracy"]

    def save(self, model_dir: Path) -> None:
        from safetensors.torch import save_file

        encoder = self.model.encoder
        if self.hps.method == "lora":
            encoder.save_pretrained(model_dir / "adapter")
            encoder = encoder.merge_and_unload()
        encoder.save_pretrained(model_dir, safe_serialization=True)
        save_file(
            {k: v.contiguous().cpu() for k, v in self.model.classifier.state_dict().items()},
            model_dir / "classifier.safetensors",
        )
        self.tokenizer.save_pretrained(model_dir)
        (model_dir / "label_map.json").write_text(json.dumps({"labels": self.labels}, indent=1))
        # The serving handlers travel with the weights: the Hugging Face inference toolkit imports
        # code/inference.py from the model archive (SAGEMAKER_PROGRAM).
        (model_dir / "code").mkdir(exist_ok=True)
        shutil.copy2(Path(__file__).resolve().parent / "inference.py", model_dir / "code")


class InstructionTask:
    """A causal LM trained on the answers of chat records; the best epoch has the lowest
    validation loss (per answer token)."""

    find_unused_parameters = False
    device: Any = "cpu"

    def __init__(
        self, hps: Hyperparameters, base_model: str, train_dir: Path, validation_dir: Path | None
    ):
        import instruction
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.hps = hps
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.template = instruction.choose_template(self.tokenizer, hps.prompt_template)
        self.end = instruction.end_of_answer(self.tokenizer) if self.template == "plain" else None
        if self.tokenizer.pad_token is None:
            # Padding is masked out of attention and loss; any token serves, EOS is the usual one.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        columns = (hps.messages_column, hps.prompt_column, hps.completion_column)
        self.train = self._encode(instruction.read_records(train_dir, *columns), "train")
        self.validation = (
            self._encode(instruction.read_records(validation_dir, *columns), "validation")
            if validation_dir
            else []
        )
        self.lengths = [len(ids) for ids, _ in self.train]
        self.model = AutoModelForCausalLM.from_pretrained(
            base_model, use_safetensors=True, dtype=base_dtype(hps)
        )
        if hps.method == "lora":
            self.model = with_lora(self.model, hps, task_type="CAUSAL_LM")

    def _encode(self, chats: list, split: str) -> list[tuple[list[int], list[int]]]:
        import instruction

        encoded = [
            instruction.encode(chat, self.tokenizer, self.template, self.hps.max_length)
            for chat in chats
        ]
        kept = [
            (ids, labels) for ids, labels in encoded if any(x != instruction.IGNORE for x in labels)
        ]
        if len(kept) < len(encoded):
            log(
                event="dropped",
                split=split,
                records=len(encoded) - len(kept),
                reason=f"no_answer_token_within_max_length_{self.hps.max_length}",
            )
        if encoded and not kept:
            raise instruction.RecordError(
                f"every {split} record lost its answer to truncation at "
                f"max_length={self.hps.max_length}; raise max_length"
            )
        return kept

    def sizes(self) -> dict[str, int]:
        return {
            "train_examples": len(self.train),
            "validation_examples": len(self.validation),
            "template": self.template,
        }

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def batch(self, split: str, idx: list[int]) -> dict[str, Any]:
        import instruction
        import torch

        rows = [(self.train if split == "train" else self.validation)[i] for i in idx]
        width = max(len(ids) for ids, _ in rows)  # dynamic padding, on the right
        pad = self.tokenizer.pad_token_id
        tensors = {
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows]),
            "attention_mask": torch.tensor(
                [[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]
            ),
            "labels": torch.tensor(
                [labels + [instruction.IGNORE] * (width - len(labels)) for _, labels in rows]
            ),
        }
        return on(self.device, tensors)

    @staticmethod
    def loss(forward: Any, inputs: dict[str, Any]) -> Any:
        return forward(**inputs).loss

    def evaluate(self) -> dict[str, float]:
        import instruction
        import torch

        loss_sum, tokens, correct = 0.0, 0, 0
        count = len(self.validation)
        with torch.no_grad():
            for start in range(0, count, self.hps.batch_size):
                inputs = self.batch(
                    "validation", list(range(start, min(start + self.hps.batch_size, count)))
                )
                logits = self.model(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).logits
                # Token t predicts token t+1; answer tokens only, summed over the whole channel.
                targets = inputs["labels"][:, 1:]
                scored = targets != instruction.IGNORE
                logits = logits[:, :-1][scored].float()
                loss_sum += float(
                    torch.nn.functional.cross_entropy(logits, targets[scored], reduction="sum")
                )
                correct += int((logits.argmax(-1) == targets[scored]).sum())
                tokens += int(scored.sum())
        loss = loss_sum / tokens
        return {
            "validation_loss": loss,
            "validation_perplexity": math.exp(min(loss, 50.0)),
            "validation_token_accuracy": correct / tokens,
        }

    @staticmethod
    def score(metrics: dict[str, float]) -> float:
        return -metrics["validation_loss"]

    def save(self, model_dir: Path) -> None:
        import instruction

        model = self.model
        end_id = self.tokenizer.convert_tokens_to_ids(self.end) if self.end else None
        generation = model.generation_config
        generation.pad_token_id = self.tokenizer.pad_token_id
        if end_id is not None:
            generation.eos_token_id = end_id
        if self.hps.method == "lora":
            model.save_pretrained(model_dir / "adapter")
            model = model.merge_and_unload() if self.hps.merge_adapter else None
        if model is not None:
            if self.hps.precision == "bf16":  # what TGI serves: half the archive of fp32
                import torch

                model = model.to(torch.bfloat16)
            model.save_pretrained(model_dir, safe_serialization=True)
        generation.save_pretrained(model_dir)
        self.tokenizer.save_pretrained(model_dir)
        prompt_format = {
            "template": self.template,
            "plain_headers": instruction.PLAIN_HEADERS,
            "end_of_answer": self.end,
            "max_length": self.hps.max_length,
            "merged": model is not None,
        }
        (model_dir / "prompt_format.json").write_text(json.dumps(prompt_format, indent=1))


TASKS = {"classification": ClassificationTask, "instruction": InstructionTask}


def trainable_state(model: Any) -> dict[str, Any]:
    """The weights that training changes: a LoRA checkpoint holds the adapters, not the model."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, state: dict[str, Any]) -> None:
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise RuntimeError(f"checkpoint has weights this model lacks: {result.unexpected_keys[:5]}")


def main() -> int:
    import instruction
    import numpy as np
    import torch
    from transformers import get_linear_schedule_with_warmup

    try:
        hps = load_hyperparameters()
    except HyperparameterError as err:
        print(f"ERROR bad hyperparameters: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT

    model_dir = Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    output_dir = Path(os.environ.get("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    train_dir = Path(os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    validation_dir = os.environ.get("SM_CHANNEL_VALIDATION")
    base_model = os.environ.get("SM_CHANNEL_BASE_MODEL") or hps.base_model
    if not base_model:
        print("ERROR no base model: give a base_model channel or hyperparameter", file=sys.stderr)
        return EXIT_BAD_INPUT

    random.seed(hps.seed)
    np.random.seed(hps.seed)
    torch.manual_seed(hps.seed)  # seeds the GPUs' generators too
    device = choose_device()

    try:
        task = TASKS[hps.task](
            hps, base_model, train_dir, Path(validation_dir) if validation_dir else None
        )
    except (HyperparameterError, instruction.RecordError) as err:
        print(f"ERROR bad input data: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    if hps.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print(
            f"ERROR precision=bf16, but {torch.cuda.get_device_name(device)} has no bf16: "
            "train at precision fp32, or on an A10G, L4, A100 or H100 GPU",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_BAD_INPUT
    model = task.model.to(device)  # built on the CPU (the head's init), trained on the device
    task.device = device
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(
        event="model",
        task=hps.task,
        device=device,
        method=hps.method,
        precision=hps.precision,
        weights_dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        trainable_params=trainable,
        total_params=total,
    )

    sizes = task.sizes()
    train_size = len(task.lengths)
    has_validation = sizes["validation_examples"] > 0
    # Each process takes every WORLD_SIZE-th batch; all take the same number (the remainder of a
    # data-parallel epoch is dropped) so that their gradient all-reduces pair up.
    all_batches = math.ceil(train_size / hps.batch_size)
    batches_per_epoch = all_batches if WORLD_SIZE == 1 else all_batches // WORLD_SIZE
    accumulation = hps.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)  # optimizer steps
    total_steps = steps_per_epoch * hps.epochs
    optimizer = torch.optim.AdamW(
        task.param_groups(), lr=hps.learning_rate, weight_decay=hps.weight_decay
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total_steps * hps.warmup_ratio), total_steps
    )

    log(event="start", **sizes, total_steps=total_steps)
    checkpoints = Path(os.environ.get("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    checkpoint_file = checkpoints / "checkpoint.pt"
    progress: dict = {
        "step": 0,
        "seen": 0,
        "epoch": 1,
        "batch": 0,
        "order": None,
        "stale": 0,  # epochs without a better validation score (early stopping)
        "best": {"score": None, "epoch": 0, "metrics": {}, "state": None},
        "history": [],
    }

    def save_checkpoint() -> None:
        """Everything a restarted job needs to continue exactly where this one is now."""
        if RANK != 0:
            return  # the processes hold the same state: the first one writes it
        checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = checkpoints / "checkpoint.pt.tmp"
        torch.save(
            {
                "progress": progress,
                "model": trainable_state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
            },
            tmp,
        )
        os.replace(tmp, checkpoint_file)  # a kill mid-save never leaves a torn checkpoint
        log(event="checkpoint", step=progress["step"], epoch=progress["epoch"])

    if checkpoint_file.exists():
        # weights_only: a checkpoint holds tensors and plain values; nothing is unpickled.
        saved = torch.load(checkpoint_file, weights_only=True, map_location="cpu")
        load_trainable(model, saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        if device.type == "cuda" and saved.get("cuda_rng"):
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        progress = saved["progress"]
        log(
            event="resumed", step=progress["step"], epoch=progress["epoch"], batch=progress["batch"]
        )

    forward = model
    if WORLD_SIZE > 1:
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        forward = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters,
        )
        log(event="distributed", backend=backend, world_size=WORLD_SIZE)
    model.train()
    started = time.monotonic()
    seen_at_start, step_at_start = progress["seen"], progress["step"]
    for epoch in range(progress["epoch"], hps.epochs + 1):
        if progress.get("stopped"):
            break
        if progress["order"] is None:
            if hps.group_by_length:
                order = length_grouped_order(task.lengths, hps.batch_size, random)
            else:
                order = list(range(train_size))
                random.shuffle(order)
            progress.update(epoch=epoch, batch=0, order=order)
        order = progress["order"]
        for batch in range(progress["batch"], batches_per_epoch):
            first = (batch * WORLD_SIZE + RANK) * hps.batch_size
            idx = order[first : first + hps.batch_size]
            with autocast(device, hps):
                loss = task.loss(forward, task.batch("train", idx))
            (loss / accumulation).backward()
            progress["seen"] += len(idx)
            progress["batch"] = batch + 1
            if (batch + 1) % accumulation and batch + 1 < batches_per_epoch:
                continue  # gradients accumulate until the optimizer step
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            progress["step"] += 1
            step = progress["step"]
            if step % hps.log_every_steps == 0 or step == total_steps:
                elapsed = time.monotonic() - started
                # All processes advance in step: the job's rate is one process's times WORLD_SIZE.
                rate = (progress["seen"] - seen_at_start) * WORLD_SIZE / max(elapsed, 1e-9)
                eta = (total_steps - step) * elapsed / max(step - step_at_start, 1)
                lr = scheduler.get_last_lr()[0]
                log(
                    step=f"{step}/{total_steps}",
                    epoch=epoch,
                    train_loss=loss.item(),
                    learning_rate=float(lr),
                    samples_per_sec=rate,
                    eta_s=round(eta),
                )
                progress["history"].append(
                    {"step": step, "train_loss": loss.item(), "learning_rate": lr}
                )
            if hps.checkpoint_every_steps and step % hps.checkpoint_every_steps == 0:
                save_checkpoint()
        if has_validation:
            model.eval()
            with autocast(device, hps):
                metrics = task.evaluate()
            model.train()
            log(epoch=epoch, **metrics)
            score = task.score(metrics)
            if progress["best"]["score"] is None or score > progress["best"]["score"]:
                progress["best"] = {
                    "score": score,
                    "epoch": epoch,
                    "metrics": metrics,
                    "state": trainable_state(model),
                }
                progress["stale"] = 0
            else:
                progress["stale"] += 1
            if hps.early_stopping_patience and progress["stale"] >= hps.early_stopping_patience:
                progress["stopped"] = True
                log(
                    event="early_stop",
                    epoch=epoch,
                    best_epoch=progress["best"]["epoch"],
                    patience=hps.early_stopping_patience,
                )
        progress.update(epoch=epoch + 1, batch=0, order=None)
        save_checkpoint()
    best = progress["best"]
    history = progress["history"]
    step, seen = progress["step"], progress["seen"]
    if best["state"] is not None:
        load_trainable(model, best["state"])
        log(event="best", epoch=best["epoch"], **best["metrics"])
    if WORLD_SIZE > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        if RANK != 0:
            return 0  # the first process writes the model and the metrics

    model_dir.mkdir(parents=True, exist_ok=True)
    task.save(model_dir)

    elapsed = time.monotonic() - started
    metrics = {
        "task": hps.task,
        "train_seconds": round(elapsed, 2),
        "train_samples_per_sec": round((seen - seen_at_start) * WORLD_SIZE / elapsed, 2),
        "steps": step,
        "best_epoch": best["epoch"],
        **{
            name: best["metrics"].get(name)
            for name in (
                ("validation_accuracy", "validation_loss")
                if hps.task == "classification"
                else ("validation_loss", "validation_perplexity", "validation_token_accuracy")
            )
        },
        "trainable_params": trainable,
        "total_params": total,
        "world_size": WORLD_SIZE,
        "hyperparameters": {k: v for k, v in asdict(hps).items()},
        "history": history,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log(event="done", train_seconds=elapsed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
