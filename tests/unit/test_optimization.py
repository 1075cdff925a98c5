"""Keeping the winner's optimized graph or serving it eager (``fmops.evaluation.optimization``),
the version's folder that serves it (``registration._add_graph``), the card's section, and the
evaluation requests that ask for the optimize step."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_gate import metrics_json

from fmops.config import CONFIGS_DIR, ConfigError, parse_config
from fmops.evaluation import optimization
from fmops.registry import card, digests, registration

LOCAL = CONFIGS_DIR / "local.yaml"
N = 400
METRIC = "banking77.accuracy.accuracy"


def config_of(target: str = "local", **optimize: Any):
    raw = yaml.safe_load(LOCAL.read_text())
    raw["evaluation"] = {**raw["evaluation"], "optimize": optimize}
    config = parse_config(copy.deepcopy(raw), "test.yaml")
    return config.model_copy(update={"target": target}) if target != "local" else config


def pattern(rate: float, n: int = N, shift: int = 0) -> list[float]:
    """n correctness marks with ``rate`` right, spread evenly (``shift``: other examples)."""
    return [1.0 if ((i + shift) * rate) % 1 + rate >= 1 else 0.0 for i in range(n)]


def graph_entry(name: str, accuracy: float, request_ms: float, graph: Path) -> dict[str, Any]:
    document = metrics_json(name, accuracy)
    return {
        "graph": f"onnx/{graph.name}",
        "sha256": hashlib.sha256(graph.read_bytes()).hexdigest(),
        "bytes": graph.stat().st_size,
        "scenarios": document["scenarios"],
        "efficiency": {"request_ms_p50": request_ms, "throughput_per_s": 100.0 * 17 / request_ms},
    }


def winner(tmp_path: Path, eager: list[float], graphs: dict[str, list[float]]) -> dict[str, Any]:
    """The winner's evaluation outcome with its optimize step's files: eager at 17 ms a request,
    int8 at 2 ms, fp32 at 4 ms."""
    folder = tmp_path / "evaluation"
    onnx = folder / "optimized" / "onnx"
    onnx.mkdir(parents=True)
    document = metrics_json("full", sum(eager) / len(eager))
    document["efficiency"].update(request_ms_p50=17.0, throughput_per_s=100.0)
    speeds = {"int8": 2.0, "fp32": 4.0}
    entries = {}
    for runtime, scores in graphs.items():
        graph = onnx / ("model.int8.onnx" if runtime == "int8" else "model.onnx")
        graph.write_bytes(f"a {runtime} graph".encode())
        entries[runtime] = graph_entry(runtime, sum(scores) / len(scores), speeds[runtime], graph)
    document["optimized"] = {"export_seconds": 5.0, "threads": 2, "runtimes": entries}
    per_example = {r: {"banking77": {"accuracy": s}} for r, s in graphs.items()}
    (folder / "optimized" / "per_example.json").write_text(json.dumps(per_example))
    return {"candidate": "full", "output_uri": f"file://{folder}", "metrics": document}


def eager_scores(scores: list[float]) -> dict[str, Any]:
    return {"banking77": {"accuracy": scores}}


def test_int8_within_the_margin_is_kept_first(tmp_path):
    eager = pattern(0.85, n=4000)
    int8 = list(eager)
    for i in [i for i, right in enumerate(eager) if right][:4]:  # 4 of 4,000 answers now wrong
        int8[i] = 0.0
    found = optimization.decide(
        config_of(),
        winner(tmp_path, eager, {"int8": int8, "fp32": eager}),
        eager_scores(eager),
        METRIC,
    )
    assert found["kept"] == "int8" and found["graph"] == "onnx/model.int8.onnx"
    assert [c["runtime"] for c in found["checks"]] == ["int8", "fp32"]
    assert all(c["passes"] for c in found["checks"])
    assert found["checks"][0]["difference"] == -0.001
    assert -0.005 <= found["checks"][0]["lower"] < -0.001
    assert found["speedup"] == {"single_request": 8.5, "batched": 8.5, "tokens": None}  # 17/2 ms
    assert set(found["metrics"]) == {"eager", "int8", "fp32"}
    assert found["reason"].startswith("served: the int8 ONNX Runtime graph: int8 - eager")


def test_an_int8_graph_worse_beyond_the_margin_gives_way_to_fp32(tmp_path):
    eager = pattern(0.85)
    int8 = pattern(0.80)  # five points lower on 400 examples
    found = optimization.decide(
        config_of(),
        winner(tmp_path, eager, {"int8": int8, "fp32": eager}),
        eager_scores(eager),
        METRIC,
    )
    first, second = found["checks"]
    assert not first["passes"] and first["lower"] < -0.005 and "below -0.005" in first["why"]
    assert second["passes"] and second["difference"] == 0.0
    assert found["kept"] == "fp32" and found["speedup"]["single_request"] == 4.25


def test_no_graph_within_the_margin_serves_the_eager_model(tmp_path):
    eager = pattern(0.85)
    worse = pattern(0.75)
    found = optimization.decide(
        config_of(),
        winner(tmp_path, eager, {"int8": worse, "fp32": worse}),
        eager_scores(eager),
        METRIC,
    )
    assert found["kept"] is None and "graph" not in found
    assert "eager model is served" in found["reason"]
    assert registration.serving_runtime(found) == "pytorch"


def test_a_wider_margin_keeps_what_the_default_refuses(tmp_path):
    eager = pattern(0.85)
    int8 = pattern(0.84)
    evaluation = winner(tmp_path, eager, {"int8": int8})
    strict = optimization.decide(
        config_of(runtimes=["int8"]), evaluation, eager_scores(eager), METRIC
    )
    loose = optimization.decide(
        config_of(runtimes=["int8"], margin=0.1), evaluation, eager_scores(eager), METRIC
    )
    assert strict["kept"] is None and loose["kept"] == "int8"
    assert strict["checks"][0]["lower"] == loose["checks"][0]["lower"]  # same seed, same interval


def test_the_configured_order_and_list_decide(tmp_path):
    eager = pattern(0.85)
    evaluation = winner(tmp_path, eager, {"int8": eager, "fp32": eager})
    fp32_first = optimization.decide(
        config_of(runtimes=["fp32", "int8"]), evaluation, eager_scores(eager), METRIC
    )
    assert fp32_first["kept"] == "fp32"
    only_fp32 = optimization.decide(
        config_of(runtimes=["fp32"]), evaluation, eager_scores(eager), METRIC
    )
    assert [c["runtime"] for c in only_fp32["checks"]] == ["fp32"]


def test_a_job_without_the_step_or_that_skipped_it(tmp_path):
    eager = pattern(0.85)
    evaluation = winner(tmp_path, eager, {})
    del evaluation["metrics"]["optimized"]
    assert optimization.decide(config_of(), evaluation, eager_scores(eager), METRIC) is None
    evaluation["metrics"]["optimized"] = {
        "skipped": "onnxruntime not installed in this job's image"
    }
    found = optimization.decide(config_of(), evaluation, eager_scores(eager), METRIC)
    assert found["kept"] is None and "onnxruntime not installed" in found["reason"]
    assert "eager model is served" in found["reason"]


def test_the_version_folder_gets_the_kept_graph_and_serving_json(tmp_path):
    eager = pattern(0.85)
    found = optimization.decide(
        config_of(), winner(tmp_path, eager, {"int8": eager}), eager_scores(eager), METRIC
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    registration._add_graph(model_dir, found, tmp_path / "scratch", None)
    assert (model_dir / "onnx" / "model.int8.onnx").read_bytes() == b"a int8 graph"
    assert json.loads((model_dir / "serving.json").read_text()) == {
        "runtime": "onnxruntime",
        "graph": "onnx/model.int8.onnx",
    }
    assert registration.serving_runtime(found) == "onnxruntime int8 (onnx/model.int8.onnx)"
    # a graph changed after its job recorded it is refused
    (tmp_path / "evaluation" / "optimized" / "onnx" / "model.int8.onnx").write_bytes(b"other")
    with pytest.raises(digests.ArtifactDigestError, match="is not the int8 artifact.s"):
        registration._add_graph(tmp_path / "again", found, tmp_path / "scratch", None)


def test_nothing_is_added_when_no_graph_was_kept(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    registration._add_graph(model_dir, {"kept": None}, tmp_path / "scratch", None)
    assert list(model_dir.iterdir()) == []


def test_the_card_shows_both_models_the_tests_and_the_speedup(tmp_path):
    eager = pattern(0.85)
    found = optimization.decide(
        config_of(),
        winner(tmp_path, eager, {"int8": pattern(0.80), "fp32": eager}),
        eager_scores(eager),
        METRIC,
    )
    text = card.serving_lines(config_of(), found)
    assert "the fp32 ONNX Runtime graph `onnx/model.onnx`" in text
    assert "- int8: int8 - eager" in text and "- fp32: fp32 - eager" in text
    assert "; 8.5x a single request, 8.5x the batched pass\n" in text  # int8: 17 ms / 2 ms
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| runtime", "| eager", "| int8", "| fp32"]
    assert "17.00" in rows[1] and "2.00" in rows[2] and "4.00" in rows[3]  # request p50 ms
    assert "On SageMaker" not in text
    on_sagemaker = card.serving_lines(config_of(target="sagemaker"), found)
    assert "On SageMaker the endpoint serves the training job's archive" in on_sagemaker
    assert "eager PyTorch (no optimize step" in card.serving_lines(config_of(), None)


@pytest.mark.parametrize(
    ("optimize", "expected"),
    [
        ({"runtimes": ["int8", "int8"]}, "names a runtime twice"),
        ({"runtimes": ["tensorrt"]}, "'int8' or 'fp32'"),
        ({"margin": -0.1}, "greater than or equal to 0"),
    ],
)
def test_bad_optimize_settings_are_named(optimize, expected):
    with pytest.raises(ConfigError) as info:
        config_of(**optimize)
    assert expected in "\n".join(info.value.problems)


def arguments(config, zero_shot: bool) -> list[str]:
    """The evaluation job's container arguments for ``config``."""
    from fmops.jobs.specs import evaluation_request

    request = evaluation_request(
        config,
        "file:///m",
        {"evaluation_uri": "file:///data"},
        {},
        zero_shot=zero_shot,
        output_uri="file:///o",
    )
    return request["AppSpecification"]["ContainerArguments"]


def test_only_a_tuned_classifier_s_evaluation_asks_for_the_step():
    """A candidate's and the champion's (the same request, so the champion reuses its cached
    evaluation as a candidate), not the untuned baseline's."""
    tuned = arguments(config_of(), zero_shot=False)
    assert tuned[tuned.index("--optimize") + 1] == "int8,fp32"
    assert "--optimize" not in arguments(config_of(), zero_shot=True)
    assert "--optimize" not in arguments(config_of(runtimes=[]), zero_shot=False)


# -- a causal LM: int8 weights on PyTorch ------------------------------------------------------

LLM = CONFIGS_DIR / "local-llm.yaml"
TOKEN_F1 = "chat.accuracy.token_f1"


def llm_config_of(**optimize: Any):
    raw = yaml.safe_load(LLM.read_text())
    raw["evaluation"] = {**raw["evaluation"], "optimize": optimize}
    return parse_config(raw, "test-llm.yaml")


def lm_winner(tmp_path: Path, eager: list[float], int8: list[float]) -> dict[str, Any]:
    """A causal LM's evaluation outcome with its int8 weights: eager at 40 tokens/s, int8 at 90."""
    folder = tmp_path / "evaluation"
    weights = folder / "optimized" / "int8" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"int8 weights")
    document = metrics_json("lora", sum(eager) / len(eager))
    document["model_kind"] = "generation"
    document["efficiency"].update(tokens_per_second=40.0, throughput_per_s=2.0)
    entry = {
        "graph": "int8/model.safetensors",
        "engine": "pytorch-int8",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "bytes": weights.stat().st_size,
        "scenarios": {"chat": {"accuracy": {"token_f1": sum(int8) / len(int8)}}},
        "efficiency": {"tokens_per_second": 90.0, "throughput_per_s": 4.5},
    }
    document["scenarios"] = {"chat": {"accuracy": {"token_f1": sum(eager) / len(eager)}}}
    document["optimized"] = {"export_seconds": 3.0, "threads": 2, "runtimes": {"int8": entry}}
    per_example = {"int8": {"chat": {"token_f1": int8}}}
    (folder / "optimized" / "per_example.json").write_text(json.dumps(per_example))
    return {"candidate": "lora", "output_uri": f"file://{folder}", "metrics": document}


def test_a_causal_lm_asks_for_its_int8_weights_only_when_configured():
    assert llm_config_of().evaluation.optimize.generative == []  # off by default
    assert "--optimize" not in arguments(llm_config_of(), zero_shot=False)
    tuned = arguments(llm_config_of(generative=["int8"]), zero_shot=False)
    assert tuned[tuned.index("--optimize") + 1] == "int8"  # never the classifier's graphs
    assert "--optimize" not in arguments(llm_config_of(generative=["int8"]), zero_shot=True)
    with pytest.raises(ConfigError) as info:
        llm_config_of(generative=["fp32"])
    assert "'int8'" in "\n".join(info.value.problems)


def test_a_causal_lms_int8_weights_within_the_margin_are_served(tmp_path):
    eager = pattern(0.6)
    int8 = list(eager)
    int8[0] = 0.0 if int8[0] else 1.0  # 1 of 400 answers changed
    config = llm_config_of(generative=["int8"])
    found = optimization.decide(
        config, lm_winner(tmp_path, eager, int8), {"chat": {"token_f1": eager}}, TOKEN_F1
    )
    assert found["kept"] == "int8" and found["engine"] == "pytorch-int8"
    assert found["speedup"] == {"single_request": None, "batched": 2.25, "tokens": 2.25}
    assert found["reason"].startswith("served: the PyTorch int8 weights: int8 - eager on ")
    assert found["reason"].endswith("; 2.25x the eager model's generated tokens per second")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    registration._add_graph(model_dir, found, tmp_path / "scratch", None)
    assert (model_dir / "int8" / "model.safetensors").read_bytes() == b"int8 weights"
    assert json.loads((model_dir / "serving.json").read_text()) == {
        "runtime": "pytorch-int8",
        "weights": "int8/model.safetensors",
    }
    assert registration.serving_runtime(found) == "pytorch-int8 int8 (int8/model.safetensors)"
    assert (
        registration._serving_requirements("pytorch-int8") == registration._serving_requirements()
    )
    text = card.serving_lines(config, found)
    assert "Served: **the PyTorch int8 weights `int8/model.safetensors`**" in text
    assert "2.25x the eager model's generated tokens per second" in text
    assert (
        "- int8: int8 - eager on " in text and "; 2.25x the batched pass, 2.25x generated " in text
    )
    assert "n/a" not in text.split("\n| runtime")[0]  # no single-request figure to print
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert "| 40.0 |" in rows[1] and "| 90.0 |" in rows[2]  # tokens/s


def test_a_causal_lms_int8_weights_beyond_the_margin_are_refused(tmp_path):
    eager = pattern(0.6)
    int8 = list(eager)
    for i in [i for i, right in enumerate(eager) if right][:40]:  # 10 points of token F1 lost
        int8[i] = 0.0
    found = optimization.decide(
        llm_config_of(generative=["int8"]),
        lm_winner(tmp_path, eager, int8),
        {"chat": {"token_f1": eager}},
        TOKEN_F1,
    )
    assert found["kept"] is None and found["checks"][0]["passes"] is False
    assert found["checks"][0]["upper"] < 0
    assert "eager model is served" in found["reason"]
    # with the step turned off since the job ran, nothing is tested
    assert (
        optimization.decide(
            llm_config_of(), lm_winner(tmp_path / "off", eager, int8), {}, TOKEN_F1
        )["checks"]
        == []
    )
