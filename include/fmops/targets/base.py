"""The contract of a target, written once (``fmops.targets`` registers the implementations).

A target answers, for one pipeline config, every question whose answer depends on where the
work runs. The pipeline (``fmops.pipeline``), the deploy stages (``fmops.deployment.flow``), the
Airflow tasks and the CLI ask it; none of them names a target.

Values that cross Airflow tasks stay JSON: a job plan, a job handle and a job outcome are the
``TypedDict`` records of ``fmops.jobs.records``, each built by one function there.

Jobs:

- ``backend_settings(config)``: the keyword arguments of ``fmops.jobs.backend.get_backend`` for
  this target (the job backend is looked up by the same name);
- ``stage_inputs(config, staged)``: after validation has staged the channels on this machine,
  put them where the jobs read them; returns what was uploaded (``{}`` when nothing moves);
- ``plan_training(config, staged, dag_id, run_id, force=)``: one job plan per candidate;
- ``plan_evaluation(config, staged, trained, dag_id, run_id, force=, champion=)``: one job plan
  per trained candidate, the untuned baseline when the config asks for it, and ``champion``
  (``(name, model URI, zero_shot)`` entries the pipeline found in the registry);
- ``plan_run(config, dag_id, run_id, with_connection=)``: everything a run would send, offline,
  as ``fmops plan`` prints it (``endpoint_lines`` renders its endpoint part);
- ``next_instance_after_quota(plan, error)`` / ``next_instance_after_failure(handle,
  description)``: the plan moved to the next instance type when the account's quota refused a
  type or a job found no capacity; None when there is no other type (always, on this machine).

Models and endpoints:

- ``artifact_problem(uri)``: why this target's jobs cannot read a model artifact at ``uri``
  (e.g. the registry's champion trained on another target), or None;
- ``hosting_note(config)``, ``unbilled_note``: what the model card says about where the model
  serves and about a job without a billed time;
- ``job_console_url(handle)``, ``endpoint_console_url(config)``: the provider's console page of
  a job or the endpoint, for the Airflow UI's links; None where there is none;
- ``deployer(config)``: the endpoint's ``Deployer`` (below);
- ``auto_approval_override``: whether the trigger form may set ``approval: auto``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from fmops.plan_text import DAG_ID, PLAN_RUN_ID

if TYPE_CHECKING:
    from fmops.config import PipelineConfig


class ServingEndpoint(Protocol):
    """An endpoint as a client sees it: a name and ``invoke(payload) -> (HTTP status, body)``."""

    name: str

    def invoke(self, payload: Any) -> tuple[int, Any]: ...


class Deployer(ABC):
    """Serves registered model versions on the config's endpoint, blue/green.

    - ``start(version)``: deploy up to the first wait, without holding a worker: returns
      ``{"result": ...}`` (the deployed record) when nothing is left to wait for, else
      ``{"wait": ...}``, a JSON-safe wait (with ``target``: the target's name) that a trigger
      watches and ``finish`` concludes; a deployer whose ``waits`` is False is never asked;
    - ``finish(wait, verdict, description)``: conclude a wait (``{"result": ...}``, or the next
      ``{"wait": ...}`` after a capacity fallback); raises when the deployment failed, rolled
      back or timed out;
    - ``deploy(version)``: the same in one blocking call;
    - ``rollback()``: leave the endpoint on its last stable version after a failed or killed
      deploy; idempotent, and a no-op after a success;
    - ``endpoint()``: the live endpoint, to invoke (the smoke test); deleting an endpoint is the
      CLI's and the provider's, never the pipeline's.

    A version that was rolled back is tagged so on the model version, with the reason.
    """

    waits: ClassVar[bool] = False  # whether ``start`` may return a wait (else: ``deploy``)

    def __init__(self, config: PipelineConfig | None):
        self.config = config  # None only to ``finish`` a wait that carries no config

    def start(self, version: str) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} deploys within deploy(): it never waits")

    def finish(
        self, wait: dict[str, Any], verdict: dict[str, Any], description: dict[str, Any] | None
    ) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} deploys without a wait to finish")

    @abstractmethod
    def deploy(self, version: str) -> dict[str, Any]: ...

    @abstractmethod
    def rollback(self) -> dict[str, Any]: ...

    @abstractmethod
    def endpoint(self) -> ServingEndpoint: ...


class Target(ABC):
    """Where jobs and endpoints run (see the module docstring for each method's contract)."""

    name: ClassVar[str]
    auto_approval_override: ClassVar[bool] = False
    unbilled_note: ClassVar[str]
    # Seconds between two describes of a running job by its wait (in the triggerer).
    job_poll_seconds: ClassVar[float] = 30.0
    # Whether the job backend itself holds jobs beyond training.max_concurrent_jobs (the local
    # executor does); if not, the pipeline queues them (fmops.airflow.job_queue).
    caps_jobs: ClassVar[bool] = False
    # Why the target's endpoints serve a version's eager weights even when the version carries
    # an optimized artifact (fmops.evaluation.optimization); None: they serve the artifact.
    eager_only_note: ClassVar[str | None] = None

    def config_problems(self, config: PipelineConfig) -> list[str]:
        """Problems with the config for this target, one line each: its own settings block
        whatever the target, and, when it is the config's target, what it needs to run."""
        return []

    @abstractmethod
    def backend_settings(self, config: PipelineConfig) -> dict[str, Any]: ...

    def stage_inputs(self, config: PipelineConfig, staged: dict[str, Any]) -> dict[str, Any]:
        return {}

    @abstractmethod
    def plan_training(
        self,
        config: PipelineConfig,
        staged: dict[str, Any],
        dag_id: str,
        run_id: str,
        *,
        force: bool = False,
    ) -> list[dict[str, Any]]: ...

    @abstractmethod
    def plan_evaluation(
        self,
        config: PipelineConfig,
        staged: dict[str, Any],
        trained: list[dict[str, Any]],
        dag_id: str,
        run_id: str,
        *,
        force: bool = False,
        champion: list[tuple[str, str, bool]] = (),
    ) -> list[dict[str, Any]]: ...

    @abstractmethod
    def plan_run(
        self,
        config: PipelineConfig,
        dag_id: str = DAG_ID,
        run_id: str = PLAN_RUN_ID,
        *,
        with_connection: bool = False,
    ) -> dict[str, Any]: ...

    @abstractmethod
    def endpoint_lines(self, endpoint: dict[str, Any]) -> list[str]: ...

    def next_instance_after_quota(
        self, plan: dict[str, Any], error: Exception
    ) -> dict[str, Any] | None:
        return None

    def next_instance_after_failure(
        self, handle: dict[str, Any], description: dict[str, Any]
    ) -> dict[str, Any] | None:
        return None

    def artifact_problem(self, uri: str) -> str | None:
        return None

    @abstractmethod
    def hosting_note(self, config: PipelineConfig) -> str: ...

    def job_console_url(self, handle: dict[str, Any]) -> str | None:
        return None

    def endpoint_console_url(self, config: PipelineConfig) -> str | None:
        return None

    @abstractmethod
    def deployer(self, config: PipelineConfig) -> Deployer: ...
