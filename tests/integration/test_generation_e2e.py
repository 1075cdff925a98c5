"""End to end for a generative LM on the local target: both DAGs with ``dag.test()``, real jobs on
the packaged SmolLM2-135M-Instruct, MLflow, and an endpoint with the TGI contract.

A small cut of the shipped chat task (include/data/banking77-chat: 48 training chats, 32
evaluation chats, one epoch) keeps the whole path to a few minutes on 2 cores: one LoRA candidate
that trains, one that fails on purpose (no such module), the untuned base model evaluated with the
same prompt format, the winner registered with MLflow's chat schema and served blue/green; a
second run on the same data is declined by the champion comparison.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml
from dag_runs import model_card, task_states, xcom

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CHAT = PROJECT_ROOT / "include" / "data" / "banking77-chat"
SCENARIO = "banking77-chat"
PRIMARY = f"{SCENARIO}.accuracy.token_f1"
PORT = 18091

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def llm_config_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llm-e2e")
    train = (CHAT / "train.jsonl").read_text().splitlines()[:48]
    (folder / "train.jsonl").write_text("\n".join(train) + "\n")
    raw = {
        "pipeline": "fmops-e2e-llm",
        "target": "local",
        "data": {
            "task": "instruction",
            "train": str(folder / "train.jsonl"),
            "evaluation": str(CHAT / "test.jsonl"),
            "messages_column": "messages",
            "validation_fraction": 0.1,
            "evaluation_sample_size": 32,
            "seed": 7,
            "checks": {"size": {"min_rows": 20}},
        },
        "candidates": [
            {
                "name": "smol-lora",
                "base_model": "smollm2-135m-instruct",
                "method": "lora",
                "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                "hyperparameters": {
                    "epochs": 1,
                    "learning_rate": 2.0e-3,
                    "batch_size": 8,
                    "max_length": 96,
                },
            },
            {
                # Fails on purpose (peft finds no such module): the others go on.
                "name": "smol-broken",
                "base_model": "smollm2-135m-instruct",
                "method": "lora",
                "lora": {"r": 4, "alpha": 8, "target_modules": ["no_such_module"]},
                "hyperparameters": {"epochs": 1, "batch_size": 8, "max_length": 96},
            },
        ],
        "training": {"max_concurrent_jobs": 2, "max_runtime_seconds": 900},
        "evaluation": {
            "scenarios": [
                {
                    "name": SCENARIO,
                    "data": "heldout",
                    "families": ["accuracy", "calibration", "robustness"],
                }
            ],
            "gate": {"primary": PRIMARY, "bounds": [{"metric": PRIMARY, "min": 0.0}]},
            "baseline": True,
            "batch_size": 16,
            "max_new_tokens": 8,
            "perturbation_sample_size": 16,
            # The optimize step's int8 weights, with a margin of 1 (any loss): kept whatever
            # they score, so that this run registers and serves them.
            "optimize": {"generative": ["int8"], "margin": 1.0},
        },
        "registry": {"model_name": "fmops-e2e-llm"},
        "deployment": {
            "endpoint_name": "fmops-e2e-llm",
            "approval": "auto",
            "port": PORT,
            "smoke_requests": 4,
        },
    }
    path = folder / "llm.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def llm_config(llm_config_file):
    from fmops.config import load_config

    return load_config(llm_config_file)


@pytest.fixture(scope="module")
def endpoint(llm_config):
    from fmops.deployment.local import LocalEndpoint

    endpoint = LocalEndpoint(llm_config.deployment.endpoint_name)
    yield endpoint
    endpoint.delete()
    assert not endpoint.status()["router_alive"]


@pytest.fixture(scope="module")
def finetune_run(dagbag, llm_config_file):
    return dagbag.get_dag("fmops_finetune").test(run_conf={"config_file": str(llm_config_file)})


def test_finetune_registers_a_generative_winner(finetune_run, llm_config, tmp_path):
    import mlflow

    from fmops.registry import tracking

    states = task_states(finetune_run)
    assert finetune_run.state == "success", f"task states: {states}"
    assert sorted(states["await_training"]) == ["failed", "success"]
    assert len(states["await_evaluation"]) == 2  # the candidate and the untuned base model
    assert states["register"] == ["success"]

    client = tracking.client(llm_config)
    name = llm_config.registry.model_name
    challenger = client.get_model_version_by_alias(name, tracking.CHALLENGER)
    assert challenger.tags["fmops.candidate"] == "smol-lora"
    assert challenger.tags["fmops.base_model"] == "smollm2-135m-instruct"
    card = model_card(client, challenger)
    assert "## Prompt format" in card and "## Sample answers (banking77-chat" in card
    assert "| input | reference | answer | token F1 |" in card
    assert "- smol-broken: training job" in card

    experiment = client.get_experiment_by_name(llm_config.pipeline)
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fmops.run_id` = '{finetune_run.run_id}'"
    )
    children = {
        r.data.tags["fmops.candidate"]: r for r in runs if r.data.tags["fmops.role"] == "evaluation"
    }
    assert set(children) == {"smol-lora", "baseline"}
    for candidate, child in children.items():
        metrics = child.data.metrics
        assert metrics[f"{SCENARIO}.examples"] == 32, candidate
        for metric in ("exact_match", "token_f1", "rouge_l"):
            assert 0 <= metrics[f"{SCENARIO}.accuracy.{metric}"] <= 1, (candidate, metric)
        # Calibration from the answers' sequence probabilities: a real ECE, not a constant.
        assert 0 <= metrics[f"{SCENARIO}.calibration.ece"] <= 1
        assert f"{SCENARIO}.robustness.worst_drop" in metrics
        assert metrics["cost.usd_per_1k_requests"] > 0
    assert challenger.tags["fmops.metric"].startswith(f"{PRIMARY}=")

    # The optimize step: the winner's int8 weights tested against its eager model (kept: the
    # margin is 1), on the version, its card and in its folder.
    optimized = xcom(finetune_run, "select")["optimization"]
    (check,) = optimized["checks"]
    assert check["runtime"] == "int8" and check["passes"] and check["examples"] == 32
    assert -1 <= check["lower"] <= check["difference"] <= check["upper"] <= 1
    assert optimized["kept"] == "int8" and optimized["engine"] == "pytorch-int8"
    assert check["speedup"]["tokens"] > 0 and check["speedup"]["single_request"] is None
    assert challenger.tags["fmops.serving_runtime"] == "pytorch-int8 int8 (int8/model.safetensors)"
    assert "Served: **the PyTorch int8 weights `int8/model.safetensors`**" in card

    # The registered model: MLflow's chat schema, the LoRA adapter beside the merged weights,
    # and it answers a chat from the registry alone.
    uri = f"models:/{name}/{challenger.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert {field["name"] for field in inputs} >= {"messages", "max_tokens", "temperature"}
    model_dir = next(local.rglob("prompt_format.json")).parent
    assert (model_dir / "adapter" / "adapter_config.json").is_file()
    assert (model_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert json.loads((model_dir / "serving.json").read_text()) == {
        "runtime": "pytorch-int8",
        "weights": "int8/model.safetensors",
    }
    assert (model_dir / "int8" / "model.safetensors").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "transformers==" in requirements
    model = mlflow.pyfunc.load_model(str(local))
    answer = model.predict(
        {"messages": [{"role": "user", "content": "My card has not arrived"}], "max_tokens": 6}
    )
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= answer["usage"]["completion_tokens"] <= 6


def test_deploy_serves_the_tgi_and_the_chat_contract(
    finetune_run, dagbag, llm_config_file, llm_config, endpoint
):
    from fmops.registry import tracking

    assert finetune_run.state == "success"
    run = dagbag.get_dag("fmops_deploy").test(run_conf={"config_file": str(llm_config_file)})
    assert run.state == "success", f"task states: {task_states(run)}"
    smoke = xcom(run, "smoke_test")
    assert smoke["requests"] == 4 and smoke["errors"] == 0

    client = tracking.client(llm_config)
    champion = client.get_model_version_by_alias(llm_config.registry.model_name, tracking.CHAMPION)
    serving = [v for v in endpoint.status()["variants"].values() if v["weight"] == 100]
    assert [v["version"] for v in serving] == [str(champion.version)]
    # The variant serves the int8 weights the version carries (serving.json).
    (live,) = serving
    with urllib.request.urlopen(f"http://127.0.0.1:{live['port']}/ping", timeout=10) as answer:
        assert json.loads(answer.read())["runtime"] == "pytorch-int8"

    status, body = endpoint.invoke(
        {"inputs": "Where is my card?", "parameters": {"max_new_tokens": 5, "details": True}}
    )
    assert status == 200, body
    (generated,) = body
    assert isinstance(generated["generated_text"], str)
    assert 1 <= generated["details"]["generated_tokens"] <= 5

    status, body = endpoint.invoke(
        {
            "messages": [
                {"role": "system", "content": "Name the topic of the bank customer's message."},
                {"role": "user", "content": "I still have not received my new card"},
            ],
            "max_tokens": 8,
            "temperature": 0,
        }
    )
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )

    for bad in (
        b"{not json",
        b'{"inputs": ""}',
        b'{"inputs": "hi", "parameters": {"max_new_tokens": 100000}}',
        b'{"inputs": "hi", "parameters": {"temperature": -1}}',
        b'{"messages": []}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}',
    ):
        status, body = endpoint.invoke(bad)
        assert status == 400, (bad, status, body)
        assert body.get("error"), body
    status, _ = endpoint.invoke({"inputs": "still serving", "parameters": {"max_new_tokens": 2}})
    assert status == 200


def test_a_rerun_that_does_not_beat_the_champion_registers_nothing(
    finetune_run, dagbag, llm_config_file, llm_config, endpoint
):
    from fmops.registry import tracking

    client = tracking.client(llm_config)
    name = llm_config.registry.model_name
    champion = client.get_model_version_by_alias(name, tracking.CHAMPION)
    before = len(client.search_model_versions(f"name = '{name}'"))

    run = dagbag.get_dag("fmops_finetune").test(run_conf={"config_file": str(llm_config_file)})

    states = task_states(run)
    assert run.state == "success", f"task states: {states}"
    assert states["register"] == ["skipped"]
    assert len(states["await_evaluation"]) == 3  # the candidate, the baseline, the champion
    decision = xcom(run, "select")
    assert decision["promote"] is False
    assert not decision["gate"]["champion"]["cleared"]
    assert len(client.search_model_versions(f"name = '{name}'")) == before
    assert client.get_model_version_by_alias(name, tracking.CHAMPION).version == champion.version
