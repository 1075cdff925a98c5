"""Where MLflow is and how to reach it: the tracking and registry URI, clients, the UI's
addresses of runs and versions, the version aliases and version tags.

The tracking server and the model registry are one address (``registry.tracking_uri`` in the
config, else ``MLFLOW_TRACKING_URI``, else a local SQLite store in the state folder).
``challenger`` is the version the last fmops_finetune run registered, ``champion`` the one in
service.
"""

from __future__ import annotations

from typing import Any

from fmops.config import PipelineConfig
from fmops.paths import state_dir

MAX_TAG_VALUE = 5000  # MLflow's limit for a model version tag's value
CHALLENGER, CHAMPION = "challenger", "champion"


def tracking_uri(config: PipelineConfig | None = None) -> str:
    import os

    if config is not None and config.registry.tracking_uri:
        return config.registry.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = state_dir() / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def ui_url(config: PipelineConfig | None = None, *, uri: str | None = None) -> str:
    """The MLflow UI that people's browsers reach: ``FMOPS_MLFLOW_UI`` when set (docker-compose:
    the tracking server's name inside the network is not the browser's), else the tracking
    server itself when it is one (``uri``, else the config's), else the local stack's
    http://127.0.0.1:5000."""
    import os

    if os.environ.get("FMOPS_MLFLOW_UI"):
        return os.environ["FMOPS_MLFLOW_UI"].rstrip("/")
    uri = uri or tracking_uri(config)
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return "http://127.0.0.1:5000"


def run_url(experiment_id: str, run_id: str, config: PipelineConfig | None = None) -> str:
    return f"{ui_url(config)}/#/experiments/{experiment_id}/runs/{run_id}"


def version_url(
    name: str, version: str, config: PipelineConfig | None = None, *, uri: str | None = None
) -> str:
    return f"{ui_url(config, uri=uri)}/#/models/{name}/versions/{version}"


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why the tracking server at ``uri`` cannot be reached (its ``/health`` within
    ``timeout``), or None when it answers or is no server (a local store). A command asks this
    first: MLflow's client retries an unreachable server for about two minutes, saying nothing
    useful meanwhile."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):  # noqa: S310
            return None
    except urllib.error.HTTPError:
        return None  # it answered (a proxy's or an auth app's status): the client says more
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err)) or type(err).__name__


def client(config: PipelineConfig | None = None) -> Any:
    """A client of the config's tracking server and registry; also makes them mlflow's
    current ones (``mlflow.pyfunc.log_model`` and ``download_artifacts`` use those)."""
    import mlflow

    uri = tracking_uri(config)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return client_for(uri)


def client_for(uri: str) -> Any:
    """A client of the tracking server and registry at ``uri``, changing no global state."""
    from mlflow import MlflowClient

    _scope_sagemaker_headers()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _scope_sagemaker_headers() -> None:
    """Keep sagemaker-mlflow's request-header provider to SageMaker's own tracking servers.

    sagemaker-mlflow (installed with the sagemaker SDK) registers a provider that says it is
    always in context and then fails on any tracking URI that is not a SageMaker ARN
    (aws/sagemaker-mlflow#15, open in 0.5.0, the latest): against an http:// server MLflow logs
    "Encountered unexpected error during resolving request headers" on every request, which
    fills task logs at error level. Its ``in_context`` is made to hold for ARN URIs only, the
    one case it serves; MLflow has no setting to leave a plugin out."""
    import mlflow
    from mlflow.tracking.request_header.registry import _request_header_provider_registry

    for provider in _request_header_provider_registry:
        if type(provider).__module__.startswith("sagemaker_mlflow."):
            provider.in_context = lambda: str(mlflow.get_tracking_uri()).startswith("arn:")


def alias_version(mlflow_client: Any, name: str, alias: str) -> Any | None:
    """The version with ``alias``; None when no version has it. An unreachable server raises:
    "no champion" must never be concluded from an outage."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def latest_alias(config: PipelineConfig, alias: str = CHALLENGER) -> str | None:
    """The version with ``alias``, None when there is none (an unreachable MLflow raises)."""
    found = alias_version(client(config), config.registry.model_name, alias)
    return None if found is None else str(found.version)


def tag_version(config: PipelineConfig, version: str, tags: dict[str, str]) -> None:
    """Set tags on a version of the config's model (values cut to MLflow's limit)."""
    mlflow_client = client(config)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(
            config.registry.model_name, str(version), key, str(value)[:MAX_TAG_VALUE]
        )
