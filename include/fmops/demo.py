"""``make demo``: run both DAGs on the local stack through the real scheduler, and show the result.

Starts the stack if needed, triggers ``fmops_finetune`` through Airflow's REST API, prints task
state changes while it runs, follows the ``fmops_deploy`` run that the registration schedules,
then prints the leaderboard, the registered version with its MLflow URL and a ``curl`` command
against the live endpoint (after sending it one real request).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

import requests

from fmops import stack
from fmops.pipeline import config_of, resolve

log = logging.getLogger(__name__)
POLL_SECONDS = 5
RUN_TIMEOUT_SECONDS = 3 * 3600
TERMINAL = {"success", "failed"}


class DemoError(RuntimeError):
    """The demo could not finish; the message says where to look."""


class AirflowApi:
    """A small client of Airflow 3's REST API (v2) with the simple auth manager's admin user."""

    def __init__(self, base_url: str):
        self.base = base_url
        self.session = requests.Session()
        self.session.trust_env = False  # 127.0.0.1 only: never through a proxy

    def login(self) -> None:
        passwords = json.loads(stack.password_file().read_text())
        username, password = next(iter(passwords.items()))
        response = self.session.post(
            f"{self.base}/auth/token", json={"username": username, "password": password}, timeout=30
        )
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code == 401:
            self.login()
            response = self.session.request(
                method, f"{self.base}/api/v2{path}", timeout=30, **kwargs
            )
        response.raise_for_status()
        return response.json() if response.content else None

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        entry = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
            params={"deserialize": "true"},
        )
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value


def _wait_for_dags(api: AirflowApi, dag_ids: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    for dag_id in dag_ids:
        while True:
            try:
                dag = api.call("GET", f"/dags/{dag_id}")
                if dag.get("is_paused"):
                    api.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
                break
            except requests.HTTPError as err:
                if err.response.status_code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(2)
    errors = api.call("GET", "/importErrors")
    if errors.get("total_entries"):
        raise DemoError(f"DAG import errors: {errors['import_errors']}")


def follow(api: AirflowApi, dag_id: str, run_id: str, started: float) -> dict[str, Any]:
    """Print each task's state changes until the run ends; return the run."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        run = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        instances = api.call(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500}
        )["task_instances"]
        for ti in sorted(instances, key=lambda t: (t["start_date"] or "~", t["task_id"])):
            key = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            state = ti["state"] or "none"
            if seen.get(key) != state:
                seen[key] = state
                print(
                    f"  {time.monotonic() - started:7.1f}s  {dag_id:15} {key:24} {state}",
                    flush=True,
                )
        if run["state"] in TERMINAL:
            return run
        if time.monotonic() > deadline:
            raise DemoError(f"{dag_id} run {run_id} did not finish in {RUN_TIMEOUT_SECONDS} s")
        time.sleep(POLL_SECONDS)


def stage_durations(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, float]:
    instances = api.call(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500}
    )["task_instances"]
    spans: dict[str, list[datetime]] = {}
    for ti in instances:
        if ti["start_date"] and ti["end_date"]:
            span = spans.setdefault(ti["task_id"], [])
            span += [
                datetime.fromisoformat(ti["start_date"]),
                datetime.fromisoformat(ti["end_date"]),
            ]
    return {task: round((max(s) - min(s)).total_seconds(), 1) for task, s in spans.items()}


def _failure_hint(api: AirflowApi, dag_id: str, run_id: str) -> str:
    instances = api.call(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500}
    )["task_instances"]
    failed = [t["task_id"] for t in instances if t["state"] == "failed"]
    return (
        f"{dag_id} run {run_id} failed at {failed}; read the task logs in the Airflow UI "
        f"({api.base}/dags/{dag_id}/runs/{run_id}) or under "
        f"{stack.airflow_home() / 'logs'}"
    )


def run_demo(config_file: str = "include/configs/local.yaml") -> int:
    config = config_of(resolve(config_file))
    started = time.monotonic()
    print(
        f"Starting the local stack (Airflow {stack.airflow_url()}, MLflow {stack.mlflow_url()})",
        flush=True,
    )
    stack.start()
    print(f"  Airflow admin password: {stack.password_file()}", flush=True)
    api = AirflowApi(stack.airflow_url())
    api.login()
    _wait_for_dags(api, ["fmops_finetune", "fmops_deploy"])
    print(f"Triggering fmops_finetune with {config_file}", flush=True)
    trigger_time = datetime.now().astimezone().isoformat()
    run = api.call(
        "POST",
        "/dags/fmops_finetune/dagRuns",
        json={"logical_date": None, "conf": {"config_file": config_file}},
    )
    run_id = run["dag_run_id"]
    finetune = follow(api, "fmops_finetune", run_id, started)
    if finetune["state"] != "success":
        raise DemoError(_failure_hint(api, "fmops_finetune", run_id))
    decision = api.xcom("fmops_finetune", run_id, "select")
    print_decision(decision)
    if not decision["promote"]:
        print(
            "\nNot promoted: the winner is not shown to beat the registry's champion, so nothing"
            " was registered and the endpoint keeps serving the champion. See the report."
        )
        _print_durations(api, [("fmops_finetune", run_id)])
        return 0
    registered = api.xcom("fmops_finetune", run_id, "register")

    print("Waiting for the fmops_deploy run scheduled by the registration", flush=True)
    deploy_run = None
    deadline = time.monotonic() + 300
    while deploy_run is None:
        runs = api.call(
            "GET",
            "/dags/fmops_deploy/dagRuns",
            params={"run_after_gte": trigger_time, "order_by": "-run_after"},
        )
        deploy_run = next(iter(runs["dag_runs"]), None)
        if deploy_run is None:
            if time.monotonic() > deadline:
                raise DemoError("fmops_deploy was not scheduled by the registration asset event")
            time.sleep(POLL_SECONDS)
    deploy = follow(api, "fmops_deploy", deploy_run["dag_run_id"], started)
    if deploy["state"] != "success":
        raise DemoError(_failure_hint(api, "fmops_deploy", deploy_run["dag_run_id"]))
    deployed = api.xcom("fmops_deploy", deploy_run["dag_run_id"], "deploy")
    smoke = api.xcom("fmops_deploy", deploy_run["dag_run_id"], "smoke_test")
    total = time.monotonic() - started

    print(f"Registered: {registered['model_name']} version {registered['version']}")
    print(f"  MLflow: {registered['url']}")
    print(
        f"Endpoint: {deployed['url']} serves version {deployed['version']}; smoke test: "
        f"{smoke['requests']} requests, {smoke['errors']} errors"
    )
    from fmops.deployment.local import LocalEndpoint

    example = {"inputs": ["I still have not received my new card", "How do I top up by card?"]}
    status, answer = LocalEndpoint(config.deployment.endpoint_name).invoke(example)
    print(f"  live answer (HTTP {status}): {json.dumps(answer)}")
    print(
        f"  try it: curl -s -X POST {deployed['url']}/invocations "
        f"-H 'Content-Type: application/json' -d '{json.dumps(example)}'"
    )
    _print_durations(api, [("fmops_finetune", run_id), ("fmops_deploy", deploy_run["dag_run_id"])])
    print(
        f"\nDemo wall time: {total:.0f} s (stack start included). The stack keeps running: "
        f"Airflow {stack.airflow_url()}, MLflow {stack.mlflow_url()}; `make down` stops it."
    )
    return 0


def _print_durations(api: AirflowApi, runs: list[tuple[str, str]]) -> None:
    print("\nStage durations (s):")
    for dag_id, rid in runs:
        for task, seconds in stage_durations(api, dag_id, rid).items():
            print(f"  {dag_id:15} {task:20} {seconds:8.1f}")


def print_decision(decision: dict) -> None:
    print(f"\nLeaderboard ({decision['metric']}; mean win rate over every scenario metric):")
    print(
        f"  {'model':28} {'win rate':>9} {'primary':>9} {'ECE':>7} {'worst drop':>11} {'$/1k':>9}"
    )
    for row in decision["leaderboard"]:
        role = row["role"]
        name = row["candidate"] + ("" if role in ("candidate", row["candidate"]) else f" ({role})")
        print(
            f"  {name:28} {_num(row['mean_win_rate'], 9)} {_num(row['primary'], 9)} "
            f"{_num(row['ece'], 7)} {_num(row['worst_drop'], 11)} "
            f"{_num(row['usd_per_1k_requests'], 9, 5)}"
        )
    print(
        f"\nWinner: {decision['winner']} ({decision['metric']}={decision['score']:.4f}, "
        f"+{decision.get('gain_over_baseline', 0):.4f} over the untuned baseline)"
    )
    print("Gate:")
    for reason in decision["reasons"]:
        print(f"  - {reason}")
    print(f"Evaluation report: {decision['report_url']}")


def _num(value: float | None, width: int, digits: int = 4) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:{width}.{digits}f}"
