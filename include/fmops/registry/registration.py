"""Registering the winner of a pipeline run as a new model version, and reading a version back.

``register`` records the run on the DAG run's MLflow run (``fmops.registry.runs``), logs the
winner as an MLflow pyfunc model (weights, tokenizer, the serving handlers and an input example,
per model kind) on the winner's training run (``fmops.registry.job_runs``: the version's source
run), and registers it with the alias ``challenger``; the version's description is the model card
(``fmops.registry.card``) and its tags carry the lineage (``fmops.pipeline``, ``fmops.dag_run``,
``fmops.data_digest``, ``fmops.gate``, ...) and ``fmops.approval`` pending.

Every step finds what an earlier attempt of the same task created (runs, the logged model and the
version are looked up by tags) before creating anything, so a retry after an MLflow outage never
duplicates runs or versions, and finishes a registration that an earlier attempt left halfway
(a version without its alias, a model whose upload broke off).
"""

from __future__ import annotations

import json
import logging
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from fmops.config import PipelineConfig
from fmops.evaluation.optimization import ONNX_RUNTIME
from fmops.kinds import kind_of
from fmops.paths import SCRIPTS_DIR
from fmops.registry import digests, tracking
from fmops.registry.card import (
    CARD_ARTIFACT,
    fit_description,
    gate_summary,
    hosting_recommendation,
    model_card,
)
from fmops.registry.review import APPROVAL_TAG, PENDING
from fmops.registry.runs import candidate_of, job_run_of, record_runs, run_costs

log = logging.getLogger(__name__)
PROFILE_TAG = "fmops.request_profile"  # JSON: the efficiency figures fmops.sizing reads
SERVING_TAG = "fmops.serving_runtime"  # what the version's folder serves (serving.json)


def serving_runtime(optimization: dict[str, Any]) -> str:
    """``onnxruntime int8 (onnx/model.int8.onnx)`` or ``pytorch-int8 int8
    (int8/model.safetensors)`` when select kept an artifact, else ``pytorch``."""
    if optimization.get("kept"):
        engine = optimization.get("engine", ONNX_RUNTIME)
        return f"{engine} {optimization['kept']} ({optimization['graph']})"
    return "pytorch"


def register(
    config: PipelineConfig,
    resolved: dict,
    staged: dict,
    trained: list[dict],
    evaluations: list[dict],
    decision: dict,
    dag_id: str,
    run_id: str,
    failed: list[dict] | None = None,
) -> dict[str, Any]:
    """Record the runs and register the winner as a new version (once per DAG run).

    Safe to run again for the same DAG run, after any failure: the runs, the logged model and
    the version are found by their tags, a model whose upload broke off is logged again, and a
    version that an earlier attempt created is finished (alias) rather than created twice."""
    mlflow_client = tracking.client(config)
    # The run's bill goes with the leaderboard (leaderboard.json) and onto the model card.
    decision = {**decision, "costs": run_costs(trained, evaluations)}
    runs = record_runs(config, resolved, staged, decision, dag_id, run_id, failed)
    name, dag_run = config.registry.model_name, f"{dag_id}/{run_id}"
    existing = find_version(mlflow_client, name, dag_run)
    if existing is not None:
        version = str(existing.version)
        log.info("version %s of %s was registered for this run already: reusing it", version, name)
    else:
        version = _create_version(
            mlflow_client,
            config,
            staged,
            trained,
            evaluations,
            decision,
            dag_id,
            run_id,
            runs,
            failed,
        )
    _finish_registration(mlflow_client, name, version)
    log.info(
        "registered %s version %s (alias %s): %s",
        name,
        version,
        tracking.CHALLENGER,
        tracking.version_url(name, version, config),
    )
    experiment_id = mlflow_client.get_run(runs["parent"]).info.experiment_id
    return {
        **_version_summary(config, version, runs),
        "parent_run_url": tracking.run_url(experiment_id, runs["parent"], config),
    }


def _create_version(
    mlflow_client: Any,
    config: PipelineConfig,
    staged: dict,
    trained: list[dict],
    evaluations: list[dict],
    decision: dict,
    dag_id: str,
    run_id: str,
    runs: dict[str, str],
    failed: list[dict] | None,
) -> str:
    name, dag_run = config.registry.model_name, f"{dag_id}/{run_id}"
    winner = next(t for t in trained if t and t["candidate"] == decision["winner"])
    experiment_id = mlflow_client.get_run(runs["parent"]).info.experiment_id
    # The version's source run is the winner's training run (its curves, params and data
    # inputs); the DAG run's run when the job has none (it was submitted by an earlier fmops).
    winner_run = job_run_of(mlflow_client, experiment_id, dag_id, run_id, winner["job_name"])
    if winner_run is None:
        log.warning("%s has no MLflow run: the version's source run is the DAG run's", winner)
        winner_run = runs["parent"]
    optimized = decision.get("optimization") or {}
    model = _logged_model(mlflow_client, experiment_id, winner_run)
    if model is None:
        model = _log_model(config, winner, winner_run, optimized)
    _ensure_registered_model(mlflow_client, name, config.pipeline)
    parent = runs["parent"]
    links = {
        "parent_run": tracking.run_url(experiment_id, parent, config),
        "winner_run": tracking.run_url(experiment_id, winner_run, config),
        "validation_report": (
            f"{tracking.run_url(experiment_id, parent, config)}"
            "/artifacts/validation/data_docs/index.html"
        ),
    }
    _, hosting = hosting_recommendation(config, decision, winner["candidate"])
    candidate = candidate_of(config, winner["candidate"])
    tags = {
        "fmops.pipeline": config.pipeline,
        "fmops.target": config.target,
        "fmops.dag_run": dag_run,
        "fmops.dag_id": dag_id,
        "fmops.run_id": run_id,
        "fmops.mlflow_parent_run": parent,
        "fmops.candidate": winner["candidate"],
        "fmops.base_model": candidate.base_model if candidate else "",
        "fmops.method": candidate.method if candidate else "",
        "fmops.data_digest": staged["train_data_digest"],
        "fmops.evaluation_data_digest": staged["evaluation_data_digest"],
        "fmops.staged_data": staged["digest"],
        "fmops.training_job": winner["job_name"],
        "fmops.model_artifacts": winner["model_artifacts"],
        "fmops.metric": f"{decision['metric']}={decision['score']:.4f}",
        "fmops.gate": gate_summary(decision),
        "fmops.evaluation_report": decision.get("report_url", ""),
        "fmops.validation_report": links["validation_report"],
        "fmops.hosting_instance": hosting or "none fits",
        SERVING_TAG: serving_runtime(optimized),
        # the winner's measured request cost, which sizes its endpoint (fmops.sizing)
        PROFILE_TAG: json.dumps(
            ((decision.get("costs_per_1k") or {}).get(winner["candidate"]) or {}).get(
                "request_profile", {}
            ),
            sort_keys=True,
        ),
        APPROVAL_TAG: PENDING,
        # what is reviewed is what is served: the digest of the list of the files' digests
        digests.TAG: _manifest_sha256(mlflow_client, winner_run),
    }
    if winner["model_artifacts"].startswith("s3://"):
        # What a SageMaker model (CreateModel's ModelDataUrl) is made from.
        tags["fmops.sagemaker.model_data_url"] = winner["model_artifacts"]
    card = model_card(
        config,
        staged,
        decision,
        winner,
        dag_id,
        run_id,
        failed,
        links=links,
        evaluation=next(
            (e for e in evaluations if e and e["candidate"] == winner["candidate"]), None
        ),
    )
    # The whole card stays with the winner's run; the description holds what fits.
    mlflow_client.log_text(winner_run, card, CARD_ARTIFACT)
    version = mlflow_client.create_model_version(
        name,
        model.model_uri,
        run_id=winner_run,
        tags={k: str(v)[: tracking.MAX_TAG_VALUE] for k, v in tags.items()},
        description=fit_description(card, f"{links['winner_run']}/artifacts/{CARD_ARTIFACT}"),
        model_id=model.model_id,
    )
    return str(version.version)


def _manifest(mlflow_client: Any, run_id: str) -> dict[str, Any]:
    """The digests of the files logged for serving, from the run the model was logged on."""
    import json

    with tempfile.TemporaryDirectory(prefix="fmops-digests-") as scratch:
        path = mlflow_client.download_artifacts(run_id, digests.MANIFEST, scratch)
        return json.loads(Path(path).read_text())


def _manifest_sha256(mlflow_client: Any, run_id: str) -> str:
    return digests.manifest_sha256(_manifest(mlflow_client, run_id))


def registered_manifest(config: PipelineConfig, version: str) -> dict[str, Any]:
    """The digests of the files the version serves and of the archive they came from
    (``fmops.registry.digests``), once their list matches the version's tag: else
    ``ArtifactDigestError`` (registered without them, or the list changed since)."""
    mlflow_client = tracking.client(config)
    name = config.registry.model_name
    found = mlflow_client.get_model_version(name, version)
    pinned = found.tags.get(digests.TAG)
    listed = _manifest(mlflow_client, found.run_id) if pinned else {}
    digests.check_pinned(listed, pinned, f"{name} version {version}")
    return listed


def verify_download(config: PipelineConfig, version: str, model_dir: Path, code_dir: Path) -> None:
    """Refuse to serve a downloaded version whose files are not the registered ones
    (``fmops.registry.digests``), naming each file that differs."""
    mlflow_client = tracking.client(config)
    name = config.registry.model_name
    found = mlflow_client.get_model_version(name, version)
    digests.verify(
        _manifest(mlflow_client, found.run_id) if found.tags.get(digests.TAG) else {},
        found.tags.get(digests.TAG),
        model_dir,
        code_dir,
        f"{name} version {version}",
    )
    log.info("%s version %s: every served file matches its registered digest", name, version)


def find_version(mlflow_client: Any, model_name: str, dag_run: str) -> Any | None:
    query = f"name = '{model_name}' and tags.`fmops.dag_run` = '{dag_run}'"
    found = mlflow_client.search_model_versions(query)
    return found[0] if found else None


def unpack_model(
    model_artifacts: str, target: Path, aws_conn_id: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The job's model archive unpacked into ``target``, and what the version's manifest records
    of it (``digests.archive_record``: in a versioned bucket, the S3 object version read)."""
    from fmops import storage

    before = storage.s3_identity(model_artifacts, aws_conn_id)
    archive = storage.local_file(model_artifacts, target.parent / "archive", aws_conn_id)
    if storage.s3_identity(model_artifacts, aws_conn_id) != before:
        raise RuntimeError(
            f"{model_artifacts} was overwritten while it was read for the registration: what "
            "was read may be neither version; try again"
        )
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target, digests.archive_record(model_artifacts, archive, before.get("version_id"))


def _logged_model(mlflow_client: Any, experiment_id: str, run_id: str) -> Any | None:
    """The model an earlier attempt logged on the winner's run, if its upload finished; one
    that broke off (not READY) is deleted, so that it is logged again whole."""
    from mlflow.entities import LoggedModelStatus

    found = mlflow_client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = 'model'",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    for broken in (m for m in found if m.status != LoggedModelStatus.READY):
        log.warning(
            "model %s on run %s is %s (an earlier attempt broke off): deleting it, logging again",
            broken.model_id,
            run_id,
            broken.status,
        )
        mlflow_client.delete_logged_model(broken.model_id)
    if ready:
        log.info("reusing model %s, logged by an earlier attempt", ready[0].model_id)
    return ready[0] if ready else None


def _log_model(
    config: PipelineConfig, winner: dict, run_id: str, optimization: dict[str, Any]
) -> Any:
    """Log the winner as a pyfunc model on its run: the job's model folder (safetensors weights,
    tokenizer, and the label map or the prompt format and LoRA adapter) with the optimized graph
    select kept, the kind's serving handlers as code, an input example and the kind's signature
    (``fmops.kinds``)."""
    import mlflow

    kind = kind_of(config)
    aws_conn_id = config.sagemaker.aws_conn_id if config.sagemaker else None
    with tempfile.TemporaryDirectory(prefix="fmops-register-") as scratch:
        model_dir, archive = unpack_model(
            winner["model_artifacts"], Path(scratch) / "model", aws_conn_id
        )
        _add_graph(model_dir, optimization, Path(scratch) / "graph", aws_conn_id)
        code = [SCRIPTS_DIR / name for name in kind.handler_code]
        # A SageMaker endpoint serves the archive itself: its digest goes with its files'.
        listed = {**digests.manifest(model_dir, code), digests.ARCHIVE: archive}
        with mlflow.start_run(run_id=run_id):
            # First: a retry that finds the model logged finds its digests too.
            mlflow.log_dict(listed, digests.MANIFEST)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(kind.mlflow_code_path()),
                artifacts={"model_dir": str(model_dir)},
                code_paths=[str(path) for path in code],
                input_example=kind.mlflow_input_example(config),
                signature=kind.mlflow_signature(),
                pip_requirements=_serving_requirements(
                    optimization.get("kept") and optimization.get("engine", ONNX_RUNTIME)
                ),
            )
    return info


def _add_graph(
    model_dir: Path, optimization: dict[str, Any], scratch: Path, aws_conn_id: str | None
) -> None:
    """The artifact select kept, copied beside the eager weights from the evaluation job's
    output (checked against the SHA-256 the job recorded), and ``serving.json`` naming it: the
    folder then serves it (a graph: ``inference.load_classifier``; int8 weights:
    ``generation.CausalLM``), and the version's digests cover both artifacts. Nothing when none
    was kept."""
    import shutil

    from fmops import storage

    if not optimization.get("kept"):
        return
    fetched = storage.local_file(
        storage.join(optimization["source"], optimization["graph"]), scratch, aws_conn_id
    )
    found = digests.file_sha256(fetched)
    if found != optimization["sha256"]:
        raise digests.ArtifactDigestError(
            f"{fetched}: sha256 {found[:12]}... is not the {optimization['kept']} artifact's that "
            f"its evaluation job recorded ({optimization['sha256'][:12]}...): it changed after the "
            "job; run fmops_finetune again"
        )
    graph = model_dir / optimization["graph"]
    graph.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fetched, graph)
    engine = optimization.get("engine", ONNX_RUNTIME)
    # inference.load_classifier reads a graph; generation.CausalLM int8 weights over the eager.
    key = "graph" if engine == ONNX_RUNTIME else "weights"
    serving = {"runtime": engine, key: optimization["graph"]}
    (model_dir / "serving.json").write_text(json.dumps(serving))
    log.info("the version serves %s %s", engine, optimization["graph"])


def _finish_registration(mlflow_client: Any, name: str, version: str) -> None:
    """The steps after the version exists, safe to repeat: wait until it is READY, then point
    ``challenger`` at it, unless a later DAG run has registered a newer version since."""
    _wait_ready(mlflow_client, name, version)
    current = tracking.alias_version(mlflow_client, name, tracking.CHALLENGER)
    if current is None or int(current.version) < int(version):
        mlflow_client.set_registered_model_alias(name, tracking.CHALLENGER, version)
    elif current.version != version:
        log.info(
            "%s: alias %s stays on the newer version %s", name, tracking.CHALLENGER, current.version
        )


def _ensure_registered_model(mlflow_client: Any, name: str, pipeline: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        mlflow_client.create_registered_model(name, tags={"fmops.pipeline": pipeline})


def _serving_requirements(engine: str | None = None) -> list[str]:
    from importlib.metadata import version

    packages = ("torch", "transformers", "safetensors", "pandas") + (
        ("onnxruntime",) if engine == ONNX_RUNTIME else ()
    )
    return [f"{p}=={version(p)}" for p in packages]


def _wait_ready(mlflow_client: Any, name: str, version: str, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while mlflow_client.get_model_version(name, version).status == "PENDING_REGISTRATION":
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} version {version} still pending after {timeout} s")
        time.sleep(1)


def _version_summary(config: PipelineConfig, version: str, runs: dict[str, str]) -> dict:
    name = config.registry.model_name
    return {
        "model_name": name,
        "version": str(version),
        "url": tracking.version_url(name, version, config),
        "parent_run_id": runs["parent"],
    }


def download_model(config: PipelineConfig, version: str, target: Path) -> Path:
    """The registered version's weights folder, downloaded from the registry."""
    import mlflow

    tracking.client(config)
    uri = f"models:/{config.registry.model_name}/{version}"
    import yaml

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    entry = flavor.get("artifacts", {}).get("model_dir")
    model_dir = local / entry["path"] if entry else None
    kind = kind_of(config)
    problem = "it has no model_dir artifact" if model_dir is None else kind.model_problem(model_dir)
    if problem:
        raise LookupError(
            f"{uri} is not an fmops {kind.name} model ({problem}); register it with "
            "fmops_finetune from a config with this data.task"
        )
    return model_dir
