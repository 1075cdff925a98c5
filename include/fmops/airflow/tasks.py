"""Task bodies of the two DAGs: read the Airflow context, call the Airflow-free stage functions.

Errors that a retry cannot fix (bad config, bad data, a failed job, a rejected model) become
``AirflowFailException``, which fails the task at once without retries; anything else (a
connection reset, a locked database) keeps the task's retries with backoff.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from fmops.airflow.links import EVALUATION_REPORT_KEY, MLFLOW_RUN_KEY, REPORT_URL_KEY
from fmops.airflow.schedule import REGISTERED_MODEL

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _deterministic_errors() -> tuple[type[BaseException], ...]:
    from botocore.exceptions import ParamValidationError

    from fmops.config import ConfigError
    from fmops.data.loading import DataError
    from fmops.data.validation import DataValidationError
    from fmops.deployment.flow import SmokeTestError
    from fmops.deployment.local import EndpointError
    from fmops.evaluation.selection import SelectionError
    from fmops.hub_models import HubModelError
    from fmops.jobs.specs import PlanError
    from fmops.pipeline import JobFailedError
    from fmops.sagemaker.endpoint_watch import DeploymentFailedError

    return (
        ConfigError,
        DataError,
        DataValidationError,
        PlanError,
        HubModelError,
        JobFailedError,
        SelectionError,
        ParamValidationError,
        SmokeTestError,
        EndpointError,
        DeploymentFailedError,
        LookupError,
        NotImplementedError,
    )


def fail_fast(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _deterministic_errors() as err:
            log.error("%s", err)
            raise AirflowFailException(f"{type(err).__name__}: {err}") from err

    return wrapper  # type: ignore[return-value]


def job_outcomes(values: Iterable[Any]) -> list[Any]:
    """The await tasks' outcomes as the tasks after them pull them (None for a failed wait).

    A wait that ended in the triggerer (``JobTrigger._end_here``) returned its outcome through
    Airflow's ``TaskSuccessEvent``, whose XComs Airflow 3.3.2 stores JSON-encoded once more than
    a worker's: the scheduler's ``TaskInstance.xcom_push`` serializes the value, where the
    Execution API stores what the worker serialized as it is. Such an outcome arrives as a JSON
    string, decoded here."""
    return [json.loads(value) if isinstance(value, str) else value for value in values]


def _run_ids() -> tuple[str, str]:
    context = get_current_context()
    return context["dag"].dag_id, context["run_id"]


def _config(resolved: dict) -> Any:
    from fmops.pipeline import config_of

    return config_of(resolved)


# -- fmops_finetune -------------------------------------------------------------------------


@fail_fast
def load_config(params: dict[str, Any] | None = None) -> dict:
    from fmops.pipeline import resolve

    resolved = resolve(
        params["config_file"],
        params.get("models") or None,
        params.get("target"),
        bool(params.get("force_rerun")),
        bool(params.get("plan_only")),
        params.get("approval"),
    )
    if resolved["plan_only"]:
        _log_plan(resolved)
    else:
        _open_parent_run(resolved)
    return resolved


def _open_parent_run(resolved: dict) -> None:
    """The DAG run's MLflow run, from its start: linked both ways with the Airflow DAG run."""
    from fmops.airflow.links import MLFLOW_RUN, push_links
    from fmops.registry import runs

    config = _config(resolved)
    params = {
        "config_file": resolved["config_file"],
        "target": config.target,
        "candidates": ",".join(c.name for c in config.candidates),
        "force_rerun": bool(resolved.get("force_rerun")),
    }
    where = runs.open_parent_run(config, *_run_ids(), params, _airflow_run_url(), with_jobs=True)
    ti = get_current_context()["ti"]
    ti.xcom_push(key=MLFLOW_RUN_KEY, value=where)
    push_links(ti, {MLFLOW_RUN: where["url"]})
    log.info("MLflow run of this DAG run: %s", where["url"])


def _airflow_run_url() -> str | None:
    """This DAG run's page in the Airflow UI; None when ``[api] base_url`` is not set."""
    from airflow.configuration import conf

    dag_id, run_id = _run_ids()
    base = conf.get("api", "base_url", fallback="").rstrip("/")
    return f"{base}/dags/{dag_id}/runs/{quote(run_id, safe='')}" if base else None


PLAN_KEY = "plan"


def _log_plan(resolved: dict) -> None:
    """The "Plan only" trigger: what `fmops plan` prints, in this task's log and its XCom."""
    from fmops.plan_text import render_text
    from fmops.storage import jsonable
    from fmops.targets import get_target

    config = _config(resolved)
    dag_id, run_id = _run_ids()
    result = get_target(config.target).plan_run(config, dag_id, run_id, with_connection=True)
    for line in render_text(result, resolved["config_file"]).splitlines():
        log.info("%s", line)
    get_current_context()["ti"].xcom_push(key=PLAN_KEY, value=jsonable(result))


@fail_fast
def validate_data(resolved: dict) -> dict:
    """Validate and stage; the report goes to the DAG run's MLflow parent run, pass or fail."""
    from fmops.pipeline import validate_and_stage, validation_dir
    from fmops.registry import runs

    if resolved.get("plan_only"):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException("plan only: the plan is in load_config's log; nothing runs")
    dag_id, run_id = _run_ids()
    config = _config(resolved)
    key = f"{dag_id}__{run_id}".replace(":", "-").replace("+", "-")
    try:
        return validate_and_stage(resolved, run_key=key)
    finally:
        folder = validation_dir(config) / key
        if folder.exists():
            url = runs.log_validation_report(config, dag_id, run_id, folder)
            get_current_context()["ti"].xcom_push(key=REPORT_URL_KEY, value=url)
            log.info("validation report: %s", url)


@fail_fast
def plan_jobs(resolved: dict, staged: dict) -> list[dict]:
    from fmops.pipeline import plan_training

    return plan_training(resolved, staged, *_run_ids())


@fail_fast
def submit_jobs(plans: list[dict]) -> list[dict]:
    """Start (or find) every job of a phase from this one task, and open each job's MLflow run
    under the DAG run's parent run (``fmops.registry.job_runs``); return their handles in the
    plans' order (``fmops.pipeline.submit_phase``).

    One task for a phase instead of one per candidate: the jobs start within seconds of each
    other however many there are, and a run costs two task processes less per candidate. The
    waits stay one per candidate (mapped over the handles). A request refused for good becomes
    that candidate's handle with its error, so its wait fails with the reason and the others go
    on. MLflow being unreachable fails this task for a retry, which finds the jobs and the runs
    it started. On a target that does not cap jobs itself (SageMaker), the jobs beyond
    ``training.max_concurrent_jobs`` are queued: their waits start them in order
    (``fmops.airflow.job_queue``)."""
    from fmops.pipeline import QUEUED, submit_phase
    from fmops.registry import job_runs, runs
    from fmops.targets import get_target

    context = None
    with contextlib.suppress(RuntimeError):  # RuntimeError: called outside a task
        context = get_current_context()
    if context is None:  # no DAG run to record them under
        return submit_phase(plans)
    config = _config(context["ti"].xcom_pull(task_ids="load_config"))
    dag_id, run_id = _run_ids()

    parent = runs.parent_run(config, dag_id, run_id) if plans else None

    def open_run(plan: dict, handle: dict) -> dict:
        where = job_runs.open_job_run(config, dag_id, run_id, plan, handle, parent)
        return handle | {"mlflow": where}

    cap = None if get_target(config.target).caps_jobs else config.training.max_concurrent_jobs
    handles = submit_phase(plans, open_run, cap=cap)
    for handle in handles:
        if handle["action"] == QUEUED:  # its wait reads the line ahead of it from this XCom
            handle["submitted_by"] = context["ti"].task_id
        log.info(
            "%s: %s job %s %s",
            handle["candidate"],
            handle["kind"],
            handle["name"] or "-",
            handle.get("error") or handle["action"],
        )
    return handles


@fail_fast
def plan_evaluation(trained: list[dict]) -> list[dict]:
    """Evaluation jobs for the candidates that trained; the failed ones are named with reasons.

    Runs once at least one training succeeded (trigger rule all_done_min_one_success), so that
    one failed candidate never stops the others. Its inputs from earlier tasks are pulled here
    rather than passed as arguments, so that its only upstream is await_training.
    """
    from fmops.pipeline import plan_evaluation as plan
    from fmops.pipeline import training_failures

    ti = get_current_context()["ti"]
    resolved = ti.xcom_pull(task_ids="load_config")
    staged = ti.xcom_pull(task_ids="validate_data")
    handles = ti.xcom_pull(task_ids="submit_training") or []
    trained = [t for t in job_outcomes(trained) if t]
    failed = training_failures(handles, trained)
    for failure in failed:
        log.error(
            "candidate %s failed in %s: %s",
            failure["candidate"],
            failure["job_name"],
            failure["reason"],
        )
    ti.xcom_push(key="trained", value=trained)
    ti.xcom_push(key="failed", value=failed)
    return plan(resolved, staged, trained, *_run_ids())


@fail_fast
def select(resolved: dict, evaluations: list[dict]) -> dict:
    """The gate: leaderboard, bounds, the paired bootstrap against the champion, the report."""
    from fmops.evaluation.selection import select as choose
    from fmops.registry import runs

    config = _config(resolved)
    decision = choose(config, job_outcomes(evaluations), *_run_ids())
    get_current_context()["ti"].xcom_push(key=EVALUATION_REPORT_KEY, value=decision["report_url"])
    runs.log_decision(config, *_run_ids(), decision)
    return decision


def close_run() -> str:
    """fmops_finetune's last task (trigger rule all_done): end the DAG run's MLflow run with the
    run's outcome, and fail when that is a failure.

    FINISHED when register registered a version, or when select's gate declined (nothing to
    register is a result); FAILED otherwise (a task upstream failed), and then this task fails
    too, so that the DAG run ends failed as its MLflow run does. It reads the outcome from the
    XComs of load_config, select and register: a task cannot read the DAG run's state from the
    metadata database in Airflow 3. A plan-only run, or one whose config did not load, has no
    MLflow run."""
    from fmops.registry import runs

    ti = get_current_context()["ti"]
    resolved = ti.xcom_pull(task_ids="load_config")
    if not resolved:
        raise AirflowFailException("the config did not load (see load_config): no MLflow run")
    if resolved.get("plan_only"):
        return "no MLflow run: plan only"
    registered = ti.xcom_pull(task_ids="register")
    decision = ti.xcom_pull(task_ids="select")
    if registered:
        status, reason = "FINISHED", f"registered version {registered['version']}"
    elif decision and not decision.get("promote", True):
        status, reason = "FINISHED", "declined by the gate: nothing registered"
    else:
        status, reason = "FAILED", "a task failed before a version was registered"
    runs.close_parent_run(_config(resolved), *_run_ids(), status, reason)
    log.info("MLflow run ended %s: %s", status, reason)
    if status == "FAILED":
        raise AirflowFailException(f"the run failed: {reason} (see the failed task above)")
    return status


@fail_fast
def register(resolved: dict, staged: dict, evaluations: list[dict], decision: dict) -> dict:
    """Record the runs, register the winner; the trained and failed candidates come from
    plan_evaluation (which ran past failed trainings), not from await_training."""
    from airflow.sdk.exceptions import AirflowSkipException

    from fmops.airflow.links import MLFLOW_RUN, MODEL_VERSION, push_links
    from fmops.registry import registration

    if not decision.get("promote", True):
        reason = next((r for r in reversed(decision["reasons"]) if "do not promote" in r), "")
        raise AirflowSkipException(f"nothing registered: {reason}; see {decision['report_url']}")
    config = _config(resolved)
    dag_id, run_id = _run_ids()
    ti = get_current_context()["ti"]
    trained = ti.xcom_pull(task_ids="plan_evaluation", key="trained") or []
    failed = ti.xcom_pull(task_ids="plan_evaluation", key="failed") or []
    # MLflow being unreachable is not in _deterministic_errors: the task retries with backoff,
    # and registration.register finds what an earlier attempt created (runs, model, version).
    summary = registration.register(
        config,
        resolved,
        staged,
        trained,
        job_outcomes(evaluations),
        decision,
        dag_id,
        run_id,
        failed=list(failed),
    )
    push_links(ti, {MODEL_VERSION: summary["url"], MLFLOW_RUN: summary.get("parent_run_url")})
    context = get_current_context()
    context["outlet_events"][REGISTERED_MODEL].extra = {
        "config_file": resolved["config_file"],
        "model_name": summary["model_name"],
        "version": summary["version"],
        **({"approval": resolved["approval"]} if resolved.get("approval") else {}),
    }
    return summary


# -- fmops_deploy ---------------------------------------------------------------------------


# The task whose asset events fmops_deploy takes its request from: a registration.
REGISTRATION = ("fmops_finetune", "register")


def _deploy_request(params: dict[str, Any]) -> tuple[str, str | None, str | None, str | None]:
    """Config file, model name, version and approval override: from the trigger form, else from
    the newest asset event of a registration (the one that scheduled this run).

    Only the events that fmops_finetune's register task emitted count: anyone who may post an
    asset event through the REST API (``POST /api/v2/assets/events``, which records no source)
    could otherwise name a config and ``approval: auto`` and deploy without a review. Such an
    event still schedules a run, which then fails, saying so."""
    context = get_current_context()
    config_file, version = params.get("config_file"), params.get("version")
    model_name, approval = params.get("model_name"), params.get("approval")
    triggering = [
        event
        for asset_events in (context.get("triggering_asset_events") or {}).values()
        for event in asset_events
    ]
    events = [
        e
        for e in triggering
        if (getattr(e, "source_dag_id", None), getattr(e, "source_task_id", None)) == REGISTRATION
    ]
    if len(events) < len(triggering):
        log.warning(
            "ignored %d asset event(s) that %s.%s did not emit (posted by hand?): %s",
            len(triggering) - len(events),
            *REGISTRATION,
            [getattr(e, "extra", None) for e in triggering if e not in events],
        )
    if triggering and not events and not config_file:
        raise AirflowFailException(
            "this run was scheduled by an asset event that fmops_finetune's register task did "
            "not emit (posted through the REST API?): a deployment takes its config and "
            "approval from a registration, or from the trigger form. Trigger fmops_deploy by "
            "hand with the config file and the version instead"
        )
    if events:
        newest = max(events, key=lambda e: (e.timestamp is not None, e.timestamp))
        extra = newest.extra or {}
        config_file = config_file or extra.get("config_file")
        model_name = model_name or extra.get("model_name")
        version = version or extra.get("version")
        approval = approval or extra.get("approval")
    if not config_file:
        raise AirflowFailException(
            "no config_file: trigger with one, or let fmops_finetune's "
            "registration trigger this DAG"
        )
    return config_file, model_name, version, approval


def _deploy_run() -> str:
    dag_id, run_id = _run_ids()
    return f"{dag_id}/{run_id}"


def _push_candidate_links(candidate: dict) -> None:
    """The links of fmops_deploy's tasks: the version page, the run it was logged from, and the
    endpoint's console page where the target has one."""
    from fmops.airflow.links import MLFLOW_RUN, MODEL_VERSION, SAGEMAKER_ENDPOINT, push_links
    from fmops.targets import get_target

    try:
        ti = get_current_context()["ti"]
    except RuntimeError:  # called outside a task (a script, a test): nothing to link from
        return
    links = {MODEL_VERSION: candidate.get("url"), MLFLOW_RUN: candidate.get("run_url")}
    config = _config(candidate["resolved"])
    endpoint_page = get_target(config.target).endpoint_console_url(config)
    if endpoint_page:
        links[SAGEMAKER_ENDPOINT] = endpoint_page
    push_links(ti, links)


@fail_fast
def resolve_candidate(params: dict[str, Any] | None = None) -> dict:
    from fmops.deployment.flow import resolve_candidate as resolve_version
    from fmops.pipeline import resolve

    config_file, model_name, version, approval = _deploy_request(params)
    resolved = resolve(config_file, target=params.get("target"), approval=approval)
    if model_name and model_name != resolved["config"]["registry"]["model_name"]:
        log.info(
            "model %s (asked for) instead of the config's %s",
            model_name,
            resolved["config"]["registry"]["model_name"],
        )
        resolved["config"]["registry"]["model_name"] = model_name
    candidate = {"resolved": resolved, **resolve_version(_config(resolved), version)}
    _push_candidate_links(candidate)
    _open_deploy_run(candidate)
    return candidate


def _open_deploy_run(candidate: dict) -> None:
    """fmops_deploy's MLflow run, in the pipeline's experiment beside fmops_finetune's runs:
    what is deployed where, linked to the Airflow DAG run and the model version; close_run ends
    it with the deployment's outcome."""
    from fmops.registry import runs

    config = _config(candidate["resolved"])
    params = {
        "config_file": candidate["resolved"]["config_file"],
        "target": config.target,
        "model_name": candidate["model_name"],
        "version": candidate["version"],
        "approval": config.deployment.approval,
        "traffic": config.deployment.traffic.mode,
    }
    note = f"Deploys [{candidate['model_name']} version {candidate['version']}]({candidate['url']})"
    where = runs.open_parent_run(config, *_run_ids(), params, _airflow_run_url(), note)
    get_current_context()["ti"].xcom_push(key=MLFLOW_RUN_KEY, value=where)
    log.info("MLflow run of this DAG run: %s", where["url"])


@fail_fast
def start_approval(candidate: dict) -> dict:
    """await_approval up to its wait (``AwaitApprovalOperator.execute``): ``{"result": the
    review}`` when ``approval: auto`` approved here, else ``{"request": what the reviewer is
    asked, for how long, and who may answer}`` after recording on the version that this run
    waits and until when. A version rejected before ends the run without deploying.

    A version's ``fmops.approval`` tag never approves a manual review: anyone who reaches MLflow
    can write it (see ``fmops.airflow.approval``). Each run asks its reviewer in Airflow."""
    from fmops.deployment import flow
    from fmops.registry.review import REJECTED

    _push_candidate_links(candidate)
    config, version = _config(candidate["resolved"]), candidate["version"]
    if config.deployment.approval == "auto":
        found = flow.review(config, version, candidate["resolved"]["config_file"])
        if found["decision"] == REJECTED:  # a person rejected it before: it stays rejected
            _rejected(config, version, found)
        return {"result": {**found, "version": version}}
    flow.request_review(config, version, _deploy_run())
    return {"request": flow.review_request(config, version, candidate)}


@fail_fast
def finish_approval(candidate: dict, response: dict | None) -> dict:
    """await_approval once a person answered (``response``: Airflow's HITL payload, with the
    authenticated ``responded_by_user``) or the deadline passed (``None``): the review when
    approved; a rejection skips the rest of the run, a timeout fails it, both without deploying
    and recorded on the version (``fmops.deploy_outcome``, ``fmops.deploy_note``)."""
    from fmops.deployment import flow
    from fmops.registry.review import APPROVED, REJECTED
    from fmops.review_client import APPROVE, COMMENT

    config, version = _config(candidate["resolved"]), candidate["version"]
    if response is None:
        note = flow.timed_out_note(_deploy_run(), config.deployment.approval_timeout_seconds)
        flow.record_deploy(config, version, _deploy_run(), "approval_timed_out", note)
        raise AirflowFailException(note)
    user = response.get("responded_by_user") or {}
    if not user.get("id"):  # Airflow fills it from the request's authenticated user
        raise AirflowFailException(
            "the review has no authenticated reviewer: decide again in Airflow's Required actions"
        )
    decision = APPROVED if response["chosen_options"] == [APPROVE] else REJECTED
    review = flow.record_review(
        config,
        version,
        decision,
        reviewer=user,
        comment=str((response.get("params_input") or {}).get(COMMENT) or ""),
        source=f"airflow:{_deploy_run()}/await_approval",
    )
    if decision == REJECTED:
        _rejected(config, version, review)
    log.info("%s version %s: approved by %s", config.registry.model_name, version, user["name"])
    return {**review, "version": version}


def _rejected(config: Any, version: str, found: dict) -> None:
    """A rejected version: recorded on it, and the run's remaining tasks are skipped.

    Skipped, not failed: the review decided, the pipeline did not break. A failed run would
    alert whoever is on call for a decision a person made on purpose, and would invite a retry
    that cannot change it; the skipped deploy, smoke_test and promote say plainly that nothing
    was deployed, and the version's tags say why."""
    from airflow.sdk.exceptions import AirflowSkipException

    from fmops.deployment import flow

    note = flow.rejected_note(_deploy_run(), found)
    flow.record_deploy(config, version, _deploy_run(), "rejected", note)
    get_current_context()["ti"].xcom_push(key=REJECTED_KEY, value=note)  # for close_deploy_run
    raise AirflowSkipException(note)


REJECTED_KEY = "rejected"


def close_deploy_run() -> str:
    """fmops_deploy's last task (trigger rule all_done): end the DAG run's MLflow run with the
    deployment's outcome, and fail when that is a failure (as close_run does for
    fmops_finetune).

    FINISHED when promote made the version champion, or when a reviewer rejected it (a decision,
    not a breakage); FAILED otherwise. The run gets the smoke test's figures as metrics and where
    the version serves as tags."""
    from fmops.registry import runs

    ti = get_current_context()["ti"]
    where = ti.xcom_pull(task_ids="resolve_candidate", key=MLFLOW_RUN_KEY)
    if not where:
        raise AirflowFailException(
            "the version did not resolve (see resolve_candidate): no MLflow run"
        )
    deployed = ti.xcom_pull(task_ids="deploy") or {}
    smoke = ti.xcom_pull(task_ids="smoke_test") or {}
    promoted = ti.xcom_pull(task_ids="promote")
    rejected = ti.xcom_pull(task_ids="await_approval", key=REJECTED_KEY)
    if promoted:
        status, reason = "FINISHED", f"version {promoted['champion']} is champion now"
    elif rejected:
        status, reason = "FINISHED", rejected
    else:
        status, reason = "FAILED", "a task failed before the version was promoted"
    metrics = {f"smoke.{k}": v for k, v in smoke.items() if k in ("requests", "errors", "accuracy")}
    tags = {
        f"fmops.endpoint.{k}": deployed[k]
        for k in ("endpoint", "instance_type")
        if isinstance(deployed.get(k), str)
    }
    runs.close_dag_run(where, status, reason, metrics=metrics, tags=tags)
    log.info("MLflow run ended %s: %s", status, reason)
    if status == "FAILED":
        raise AirflowFailException(f"the deployment failed: {reason} (see the failed task above)")
    return status


@fail_fast
def start_deploy(candidate: dict) -> dict:
    """The deploy task up to its wait (``DeployEndpointOperator.execute``): its result, or the
    SageMaker deployment to wait for."""
    from fmops.deployment.flow import start_deploy as start

    _require_approval()
    _push_candidate_links(candidate)
    return start(_config(candidate["resolved"]), candidate["version"])


def _require_approval() -> None:
    """deploy goes on only after await_approval returned an approval. A task marked success by
    hand (UI or REST) returns nothing: that would skip the review, so the deploy refuses."""
    from fmops.registry.review import APPROVED

    try:
        ti = get_current_context()["ti"]
    except RuntimeError:  # called outside a task (a script, a test): no DAG run to check
        return
    review = ti.xcom_pull(task_ids="await_approval")
    if not isinstance(review, dict) or review.get("decision") != APPROVED:
        raise AirflowFailException(
            "await_approval returned no approval (was it marked success by hand?): nothing is "
            "deployed without a review decided in Airflow, or approval: auto; trigger "
            "fmops_deploy again and decide in its Required actions"
        )


@fail_fast
def finish_deploy(wait: dict, event: dict) -> dict:
    """The deploy task after ``EndpointTrigger`` fired: a failed or rolled back deployment raises
    ``DeploymentFailedError``, which fails the task without retries."""
    from fmops.deployment.flow import finish_deploy as finish

    return finish(wait, event["verdict"], event["description"])


@fail_fast
def smoke_test(candidate: dict) -> dict:
    from fmops.deployment.flow import smoke_test as smoke

    _push_candidate_links(candidate)
    return smoke(_config(candidate["resolved"]), candidate["version"])


@fail_fast
def promote(candidate: dict) -> dict:
    from fmops.deployment.flow import promote as make_champion

    _push_candidate_links(candidate)
    return make_champion(_config(candidate["resolved"]), candidate["version"], _deploy_run())


@fail_fast
def rollback(params: dict[str, Any] | None = None) -> dict:
    """Runs whatever happened upstream (trigger rule ALL_DONE): a failed or killed deploy never
    leaves the local endpoint half-shifted (``fmops.deployment.flow.rollback``)."""
    from fmops.deployment.flow import rollback as restore
    from fmops.pipeline import resolve

    params = params or {}
    config_file, model_name, _, _ = _deploy_request(params)
    resolved = resolve(config_file, target=params.get("target"))
    if model_name:
        resolved["config"]["registry"]["model_name"] = model_name
    result = restore(_config(resolved))
    log.info("rollback: %s", result)
    return result
