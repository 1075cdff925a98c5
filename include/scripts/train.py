"""Fine-tune a sentence encoder as a text classifier inside a training job.

Runs unchanged as the entry point of a SageMaker Hugging Face training container and under the
fmops local executor, which emulates the same container contract:

- hyperparameters: the JSON object in ``SM_HPS`` or ``/opt/ml/input/config/hyperparameters.json``
  (SageMaker passes every value as a string, so each one is parsed and checked here);
- channels: ``SM_CHANNEL_TRAIN`` and ``SM_CHANNEL_VALIDATION`` hold ``*.csv`` files (and optionally
  ``labels.json``, the declared label set); ``SM_CHANNEL_BASE_MODEL`` holds a Hugging Face model
  folder, else the ``base_model`` hyperparameter names one;
- outputs: the fine-tuned model in ``SM_MODEL_DIR`` (the encoder's ``model.safetensors``, config
  and tokenizer, the head in ``classifier.safetensors``, ``label_map.json``; with LoRA the
  adapters under ``adapter/`` and the merged encoder at the top) and ``metrics.json`` in
  ``SM_OUTPUT_DATA_DIR``. The platform (or the local executor) packs the model folder into
  ``model.tar.gz``.

The model is ``inference.build_classifier`` (beside this file): encoder, mean pooling and a
linear head that starts from the label names' embeddings (``init_head=label_names``), so that
training starts from the zero-shot classifier. ``method=full`` trains every weight;
``method=lora`` trains LoRA adapters on the encoder (peft) and the head in full.

Progress goes to stdout as ``key=value`` lines that the job spec's MetricDefinitions match.
Only torch, transformers, peft, numpy and the standard library are imported: the file is
uploaded as-is, with inference.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

EXIT_BAD_INPUT = 2


class HyperparameterError(ValueError):
    """A hyperparameter is missing, malformed or out of range."""


@dataclass
class Hyperparameters:
    base_model: str = ""
    method: str = "full"
    text_column: str = "text"
    label_column: str = "label"
    epochs: int = 3
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    seed: int = 13
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0
    gradient_accumulation_steps: int = 1
    group_by_length: bool = True
    early_stopping_patience: int = 0
    init_head: str = "label_names"
    head_learning_rate: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

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
        if self.method not in ("full", "lora"):
            raise HyperparameterError(f"method={self.method!r}; allowed: 'full', 'lora'")
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


def log(**values: object) -> None:
    if RANK != 0:
        return  # one log per job, from the first process
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value:.6g}" if isinstance(value, float) else f"{key}={value}")
    print(" ".join(parts), flush=True)


def main() -> int:
    import inference
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

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
    torch.manual_seed(hps.seed)

    try:
        train_texts, train_labels = read_channel(train_dir, hps)
        labels = declared_labels(train_dir, train_labels)
        val_texts, val_labels = (
            read_channel(Path(validation_dir), hps) if validation_dir else ([], [])
        )
    except HyperparameterError as err:
        print(f"ERROR bad input data: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    label_to_id = {label: i for i, label in enumerate(labels)}
    unknown = sorted({x for x in train_labels + val_labels if x not in label_to_id})
    if unknown:
        print(f"ERROR labels not in labels.json: {unknown[:10]}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    encoder = AutoModel.from_pretrained(base_model, use_safetensors=True)
    model = inference.build_classifier(encoder, len(labels))
    if hps.init_head == "label_names":
        inference.init_head_from_label_names(model, tokenizer, labels)
    if hps.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=hps.lora_r,
            lora_alpha=hps.lora_alpha,
            lora_dropout=hps.lora_dropout,
            target_modules=hps.lora_target_modules,
        )
        model.encoder = get_peft_model(encoder, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log(event="model", method=hps.method, trainable_params=trainable, total_params=total)

    def encode(texts: list[str], ys: list[int], idx: list[int]):
        # Dynamic padding: each batch is padded to its own longest text only.
        enc = tokenizer(
            [texts[i] for i in idx],
            padding=True,
            truncation=True,
            max_length=hps.max_length,
            return_tensors="pt",
        )
        return enc, torch.tensor([ys[i] for i in idx])

    def batches(texts: list[str], ys: list[int]):
        for start in range(0, len(texts), hps.batch_size):
            yield encode(texts, ys, list(range(start, min(start + hps.batch_size, len(texts)))))

    train_y = [label_to_id[x] for x in train_labels]
    val_y = [label_to_id[x] for x in val_labels]
    # Each process takes every WORLD_SIZE-th batch; all take the same number (the remainder of a
    # data-parallel epoch is dropped) so that their gradient all-reduces pair up.
    all_batches = math.ceil(len(train_texts) / hps.batch_size)
    batches_per_epoch = all_batches if WORLD_SIZE == 1 else all_batches // WORLD_SIZE
    accumulation = hps.gradient_accumulation_steps
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)  # optimizer steps
    total_steps = steps_per_epoch * hps.epochs
    text_lengths = [len(t) for t in train_texts]
    head = list(model.classifier.parameters())
    body = [
        p
        for n, p in model.named_parameters()
        if p.requires_grad and not n.startswith("classifier.")
    ]
    optimizer = torch.optim.AdamW(
        [{"params": body}, {"params": head, "lr": hps.head_learning_rate or hps.learning_rate}],
        lr=hps.learning_rate,
        weight_decay=hps.weight_decay,
    )
    scheduler = get_linear_schedule_with_warmup(
        optimizer, int(total_steps * hps.warmup_ratio), total_steps
    )

    def evaluate() -> tuple[float, float]:
        model.eval()
        correct, loss_sum = 0, 0.0
        with torch.no_grad():
            for enc, y in batches(val_texts, val_y):
                logits, loss = model(enc["input_ids"], enc["attention_mask"], labels=y)
                loss_sum += float(loss) * len(y)
                correct += int((logits.argmax(-1) == y).sum())
        model.train()
        return correct / len(val_y), loss_sum / len(val_y)

    log(
        event="start",
        train_examples=len(train_texts),
        validation_examples=len(val_texts),
        labels=len(labels),
        total_steps=total_steps,
    )
    checkpoints = Path(os.environ.get("SM_CHECKPOINT_DIR", "/opt/ml/checkpoints"))
    checkpoint_file = checkpoints / "checkpoint.pt"
    progress: dict = {
        "step": 0,
        "seen": 0,
        "epoch": 1,
        "batch": 0,
        "order": None,
        "stale": 0,  # epochs without a better validation accuracy (early stopping)
        "best": {"validation_accuracy": -1.0, "epoch": 0, "state": None},
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
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
            },
            tmp,
        )
        os.replace(tmp, checkpoint_file)  # a kill mid-save never leaves a torn checkpoint
        log(event="checkpoint", step=progress["step"], epoch=progress["epoch"])

    if checkpoint_file.exists():
        # weights_only: a checkpoint holds tensors and plain values; nothing is unpickled.
        saved = torch.load(checkpoint_file, weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        random.setstate(saved["python_rng"])
        progress = saved["progress"]
        log(
            event="resumed", step=progress["step"], epoch=progress["epoch"], batch=progress["batch"]
        )

    forward = model
    if WORLD_SIZE > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        # The encoder's [CLS] pooler (BERT-style models) is unused by mean pooling.
        forward = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        log(event="distributed", backend=backend, world_size=WORLD_SIZE)
    model.train()
    started = time.monotonic()
    seen_at_start, step_at_start = progress["seen"], progress["step"]
    for epoch in range(progress["epoch"], hps.epochs + 1):
        if progress.get("stopped"):
            break
        if progress["order"] is None:
            if hps.group_by_length:
                order = length_grouped_order(text_lengths, hps.batch_size, random)
            else:
                order = list(range(len(train_texts)))
                random.shuffle(order)
            progress.update(epoch=epoch, batch=0, order=order)
        order = progress["order"]
        for batch in range(progress["batch"], batches_per_epoch):
            first = (batch * WORLD_SIZE + RANK) * hps.batch_size
            enc, y = encode(train_texts, train_y, order[first : first + hps.batch_size])
            _, loss = forward(enc["input_ids"], enc["attention_mask"], labels=y)
            (loss / accumulation).backward()
            progress["seen"] += len(y)
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
        if val_texts:
            accuracy, val_loss = evaluate()
            log(epoch=epoch, validation_accuracy=accuracy, validation_loss=val_loss)
            if accuracy > progress["best"]["validation_accuracy"]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                progress["best"] = {
                    "validation_accuracy": accuracy,
                    "validation_loss": val_loss,
                    "epoch": epoch,
                    "state": state,
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
        model.load_state_dict(best["state"])
        log(event="best", epoch=best["epoch"], validation_accuracy=best["validation_accuracy"])
    if WORLD_SIZE > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        if RANK != 0:
            return 0  # the first process writes the model and the metrics

    model_dir.mkdir(parents=True, exist_ok=True)
    encoder = model.encoder
    if hps.method == "lora":
        encoder.save_pretrained(model_dir / "adapter")
        encoder = encoder.merge_and_unload()
    encoder.save_pretrained(model_dir, safe_serialization=True)
    save_file(
        {k: v.contiguous() for k, v in model.classifier.state_dict().items()},
        model_dir / "classifier.safetensors",
    )
    tokenizer.save_pretrained(model_dir)
    (model_dir / "label_map.json").write_text(json.dumps({"labels": labels}, indent=1))

    elapsed = time.monotonic() - started
    metrics = {
        "train_seconds": round(elapsed, 2),
        "train_samples_per_sec": round((seen - seen_at_start) * WORLD_SIZE / elapsed, 2),
        "steps": step,
        "best_epoch": best["epoch"],
        "validation_accuracy": best["validation_accuracy"] if val_texts else None,
        "validation_loss": best.get("validation_loss"),
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
