"""``make demo``: run both DAGs on the local stack through the real scheduler, and show the result.

Starts the stack if needed, triggers ``fmops_finetune`` through Airflow's REST API and follows
it, follows the ``fmops_deploy`` run that the registration schedules, then prints the
leaderboard, the DAG run's MLflow run and its jobs in MLflow's runs table, the registered version
with its MLflow URL and a ``curl`` command against the live endpoint (after sending it one real
request).

While a run goes on it prints plain lines (readable in a terminal and in a CI log):

- the stage in words whenever it changes, derived from the task instances' states
  (:func:`current_stage`);
- the task-state changes that matter (running, deferred, awaiting input, success, failed,
  retries);
- for each training and evaluation job, at most every ``PROGRESS_SECONDS`` and only when it
  changed, a progress line read from the job itself: the job handle in ``submit_*``'s XCom names
  the job, the job backend's ``describe`` gives its status and times, and ``read_log`` its log
  (the job folder's ``job.log`` locally, CloudWatch on SageMaker). ``train.py`` logs
  ``step=S/N epoch=E train_loss=L ... eta_s=T`` lines and a validation line per epoch;
  ``evaluate.py`` logs ``progress <scenario>=DONE/TOTAL`` (their format: ``fmops.jobs.progress``;
  read by :class:`JobProgress`). A job reused from the training cache says so instead.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import requests
from botocore.exceptions import BotoCoreError, ClientError

from fmops import stack
from fmops.jobs.progress import (
    EVALUATION_PROGRESS,
    EVALUATION_SCORED,
    parse_line,
    step_of,
    to_number,
)
from fmops.pipeline import backend_for, config_of, resolve

log = logging.getLogger(__name__)
POLL_SECONDS = 5
PROGRESS_SECONDS = 20  # the most often a job's progress line is printed
RUN_TIMEOUT_SECONDS = 3 * 3600
TERMINAL = {"success", "failed"}
# Task-instance states (as the REST API spells them) of a task that has work ahead of it now.
ACTIVE_STATES = {
    "scheduled",
    "queued",
    "running",
    "deferred",
    "awaiting_input",  # a human-in-the-loop task waiting for a person (await_approval)
    "up_for_retry",
    "up_for_reschedule",
    "restarting",
}
# States not worth a line of their own: every task passes through them on its way to running.
QUIET_STATES = {"none", "scheduled", "queued", "removed"}
# The tasks whose XCom is a phase's list of job handles (fmops.pipeline.submit_phase), per DAG.
SUBMIT_TASKS = {"fmops_finetune": ("submit_training", "submit_evaluation")}
# Progress is informational: a job backend that cannot answer now is asked again next time.
PROGRESS_ERRORS = (ClientError, BotoCoreError, OSError, ValueError)


class Stage(NamedTuple):
    """A stage of a DAG as the demo names it: the tasks that make it up, and its words.

    ``words`` may hold ``{count}``: the number of mapped instances of ``counted``, with ``noun``.
    """

    task_ids: tuple[str, ...]
    words: str
    counted: str = ""
    noun: str = ""


STAGES: dict[str, tuple[Stage, ...]] = {
    "fmops_finetune": (
        Stage(("load_config",), "loading the pipeline config"),
        Stage(("validate_data",), "validating data (Great Expectations)"),
        Stage(("plan_jobs",), "planning the training jobs"),
        Stage(
            ("submit_training", "await_training"),
            "training {count}",
            "await_training",
            "candidate",
        ),
        Stage(("plan_evaluation",), "planning the evaluation"),
        Stage(
            ("submit_evaluation", "await_evaluation"),
            "evaluating {count}",
            "await_evaluation",
            "model",
        ),
        Stage(("select",), "gate / selecting the winner"),
        Stage(("register",), "registering the winner in MLflow"),
        Stage(("close_run",), "closing the run's MLflow run"),
    ),
    "fmops_deploy": (
        Stage(("resolve_candidate",), "resolving the model version"),
        Stage(("await_approval",), "awaiting approval"),
        Stage(("deploy",), "deploying (blue/green)"),
        Stage(("smoke_test",), "smoke test"),
        Stage(("promote",), "promoting to champion"),
        Stage(("rollback",), "checking the endpoint is left on a stable routing (rollback task)"),
        Stage(("close_run",), "closing the run's MLflow run"),
    ),
}


class DemoError(RuntimeError):
    """The demo could not finish; the message says where to look."""


def retrying_session() -> requests.Session:
    """A session for the local Airflow's REST API that retries what is transient.

    The local stack keeps Airflow's metadata in SQLite: while the scheduler writes, the
    api-server can answer "Database error" (HTTP 500, the database is locked) or drop a
    connection. Idempotent calls (GET, PATCH, PUT, DELETE) are retried with backoff by urllib3's
    Retry; POST (a trigger) is not, so a run is never created twice.
    """
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retry = Retry(
        total=6,
        backoff_factor=0.5,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "PATCH", "PUT", "DELETE"}),
        raise_on_status=False,  # the last answer goes back to the caller, who names it
    )
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only: never through a proxy
    session.mount("http://", HTTPAdapter(max_retries=retry))
    return session


def _local_credentials() -> tuple[str, str]:
    passwords = json.loads(stack.password_file().read_text())
    return next(iter(passwords.items()))


@dataclass(frozen=True)
class DemoStack:
    """The stack a demo runs on: ``local`` (``make up``) or ``team`` (``make up-team``)."""

    profile: str
    start: Callable[[], Any]
    airflow_url: str
    mlflow_url: str
    credentials: Callable[[], tuple[str, str]]
    password_hint: str  # where a person finds the admin's password
    task_logs: str

    @classmethod
    def of(cls, profile: str) -> DemoStack:
        from fmops import team_compose, team_stack

        if profile == "team":
            return cls(
                profile,
                team_stack.start,
                team_stack.airflow_url(),
                team_stack.mlflow_url(),
                team_compose.admin_credentials,
                f"_AIRFLOW_WWW_USER_PASSWORD in {team_compose.secrets_file()}",
                str(team_compose.home() / "logs" / "airflow"),
            )
        return cls(
            profile,
            team_stack.start_local,
            stack.airflow_url(),
            stack.mlflow_url(),
            _local_credentials,
            str(stack.password_file()),
            str(stack.airflow_home() / "logs"),
        )


class AirflowApi:
    """A small client of Airflow 3's REST API (v2) as the stack's admin user."""

    def __init__(
        self, base_url: str, credentials: Callable[[], tuple[str, str]] = _local_credentials
    ):
        self.base = base_url
        self.credentials = credentials
        self.session = retrying_session()

    def login(self) -> None:
        username, password = self.credentials()
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

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value"
    ) -> Any:
        entry = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": "true", "map_index": map_index},
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


def _state(ti: dict[str, Any]) -> str:
    return ti.get("state") or "none"


def current_stage(dag_id: str, instances: Iterable[dict[str, Any]]) -> str | None:
    """The stage of a run in words, from its task instances (the REST API's ``task_instances``).

    The earliest stage (in the DAG's order) with a task that is running, deferred, queued or
    about to retry; between two tasks, the earliest stage with a task still to run; None once
    every task has ended, or for a DAG without a stage table.
    """
    stages = STAGES.get(dag_id)
    if not stages:
        return None
    instances = list(instances)
    states: dict[str, list[str]] = {}
    for ti in instances:
        states.setdefault(ti["task_id"], []).append(_state(ti))

    def has(stage: Stage, wanted: Callable[[str], bool]) -> bool:
        return any(wanted(s) for task_id in stage.task_ids for s in states.get(task_id, []))

    chosen = next((s for s in stages if has(s, lambda state: state in ACTIVE_STATES)), None)
    if chosen is None:
        chosen = next((s for s in stages if has(s, lambda state: state == "none")), None)
    if chosen is None:
        return None
    if "{count}" not in chosen.words:
        return chosen.words
    mapped = {
        ti["map_index"]
        for ti in instances
        if ti["task_id"] == chosen.counted and ti.get("map_index", -1) >= 0
    }
    count = f"{len(mapped)} {chosen.noun}{'' if len(mapped) == 1 else 's'}"
    return chosen.words.format(count=count if mapped else f"{chosen.noun}s")


def _number(text: Any) -> float | None:
    try:
        return float(text) if text is not None else None
    except (TypeError, ValueError):
        return None


def _int(value: float | None, default: int | None = None) -> int | None:
    return int(value) if value is not None else default


@dataclass
class JobProgress:
    """What a job's log says so far; ``feed`` it the log text as it grows.

    The lines and their format are ``fmops.jobs.progress``'s: train.py's start, step, validation
    and ``event=best`` lines, evaluate.py's ``progress`` and ``scenario`` lines.
    """

    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    validation: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    scenarios: dict[str, tuple[int, int]] = field(default_factory=dict)
    scored: dict[str, dict[str, Any]] = field(default_factory=dict)

    def feed(self, text: str) -> None:
        for line in text.splitlines():
            if match := EVALUATION_PROGRESS.match(line):
                self.scenarios[match[1]] = (int(match[2]), int(match[3]))
            elif match := EVALUATION_SCORED.match(line):
                try:
                    self.scored[match[1]] = json.loads(match[2])
                except ValueError:
                    continue
            elif (values := parse_line(line)) is not None:
                self._train_line(values)

    def _train_line(self, values: dict[str, str]) -> None:
        event = values.get("event")
        numbers = {k: to_number(v) for k, v in values.items()}
        if (step := step_of(values)) is not None:
            self.step, self.total_steps = step.step, step.total_steps
            self.epoch = _int(step.epoch, self.epoch)
            self.loss = step.train_loss
            self.eta_s = step.eta_s
        elif event == "start":
            self.total_steps = _int(numbers.get("total_steps"), self.total_steps)
            self.step = self.step or 0
            self.epoch = self.epoch or 1  # a resumed job says otherwise on its next line
        elif event == "resumed":
            self.step = _int(numbers.get("step"), self.step)
            self.epoch = _int(numbers.get("epoch"), self.epoch)
        elif event == "best":
            self.best = _scores(numbers)
        elif event is None and "epoch" in values:
            self.validation = _scores(numbers)

    def describe(self, epochs: int | None) -> str | None:
        """The progress in a few words, e.g. ``epoch 1/2  step 20/88 (23%)  loss 3.912``, or
        ``banking77 1280/3080 (42%)``; None while the log shows none yet."""
        if self.scenarios or self.scored:
            parts = []
            for name in dict.fromkeys([*self.scenarios, *self.scored]):
                if name in self.scored:
                    accuracy = self.scored[name].get("accuracy")
                    parts.append(
                        f"{name} scored (accuracy {accuracy:.3f})"
                        if isinstance(accuracy, int | float)
                        else f"{name} scored"
                    )
                else:
                    done, total = self.scenarios[name]
                    parts.append(f"{name} {done}/{total} ({_percent(done, total)})")
            return "  ".join(parts)
        if self.total_steps is None:
            return None
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{epochs}" if epochs else f"epoch {self.epoch}")
        step = self.step or 0
        parts.append(f"step {step}/{self.total_steps} ({_percent(step, self.total_steps)})")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if score := _score(self.validation):
            parts.append(f"{score} (epoch {self.validation['epoch']:.0f})")
        return "  ".join(parts)

    def summary(self) -> str:
        """What training ended with: the best epoch and its validation score, if logged."""
        score = _score(self.best)
        if score and "epoch" in self.best:
            return f"best epoch {self.best['epoch']:.0f}: {score}"
        return score


def _scores(numbers: dict[str, float | None]) -> dict[str, float]:
    return {
        k: v
        for k, v in numbers.items()
        if v is not None and (k == "epoch" or k.startswith("validation_"))
    }


def _percent(done: int, total: int) -> str:
    return f"{100 * done / total:.0f}%" if total else "?%"


def _score(values: dict[str, float]) -> str:
    if "validation_accuracy" in values:
        return f"val_acc {values['validation_accuracy']:.3f}"
    if "validation_loss" in values:
        return f"val_loss {values['validation_loss']:.3f}"
    return ""


class JobLine(NamedTuple):
    """A job's line: ``text`` (what changed is worth printing), ``clock`` (the time part, which
    changes at every poll and so does not count as a change) and whether the job has ended."""

    text: str
    clock: str
    ended: bool

    def __str__(self) -> str:
        return f"{self.text}  {self.clock}" if self.clock else self.text


KIND_FIELDS = {
    "training": ("TrainingJobName", "TrainingJobStatus", "TrainingStartTime", "TrainingEndTime"),
    "processing": (
        "ProcessingJobName",
        "ProcessingJobStatus",
        "ProcessingStartTime",
        "ProcessingEndTime",
    ),
}
ACTIVE_JOB = ("InProgress", "Stopping")


def job_line(
    handle: dict[str, Any],
    description: dict[str, Any],
    progress: JobProgress,
    now: datetime | None = None,
) -> JobLine:
    """The line to show for a job from its handle, its ``describe`` answer and its log."""
    kind = handle["kind"]
    _, status_field, start_field, end_field = KIND_FIELDS[kind]
    status = description[status_field]
    start, end = description.get(start_field), description.get(end_field)
    cached = ""
    if handle.get("action") == "cached":
        if status == "Completed":
            return JobLine(f"reused from cache (job {handle['name']})", "", True)
        cached = f"reused from cache (job {handle['name']}, still running for an earlier run); "
    if status == "Completed":
        seconds = description.get("TrainingTimeInSeconds")
        if seconds is None and start and end:
            seconds = (end - start).total_seconds()
        summary = progress.summary() or progress.describe(None) or ""
        took = f"done in {seconds:.0f} s" if seconds is not None else "done"
        return JobLine(took + (f"; {summary}" if summary else ""), "", True)
    if status not in ACTIVE_JOB:  # Failed, Stopped
        reason = (description.get("FailureReason") or description.get("ExitMessage") or "").strip()
        lines = [line.strip()[:160] for line in reason.splitlines() if line.strip()]
        # The reason's first line, and the log's last line where the reason quotes the log.
        said = " ... ".join(dict.fromkeys(lines[:1] + lines[-1:]))
        return JobLine(status.lower() + (f": {said}" if said else ""), "", True)
    secondary = description.get("SecondaryStatus")
    if not start or secondary not in (None, "Training"):
        transitions = description.get("SecondaryStatusTransitions") or [{}]
        message = transitions[-1].get("StatusMessage")
        what = (secondary or "waiting to start").lower() + (f": {message}" if message else "")
        return JobLine(cached + what, "", False)
    now = now or datetime.now(UTC)
    elapsed = f"{(now - start).total_seconds():.0f} s"
    epochs = _int(_number(description.get("HyperParameters", {}).get("epochs")))
    text = progress.describe(epochs)
    if text is None:
        return JobLine(cached + "started, loading the model and data", elapsed, False)
    left = ""
    if progress.eta_s and progress.step is not None and progress.step < (progress.total_steps or 0):
        left = f", ~{progress.eta_s:.0f} s left"
    return JobLine(cached + text, elapsed + left, False)


@dataclass
class _Watched:
    handle: dict[str, Any]
    progress: JobProgress = field(default_factory=JobProgress)
    offset: int = 0
    shown: str | None = None
    ended: bool = False


class JobWatcher:
    """Follows the jobs named by ``submit_*`` handles; ``poll`` says what to print."""

    def __init__(
        self,
        interval: float = PROGRESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        backends: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self.interval = interval
        self.clock = clock
        self.backends = backends or backend_for  # the handle's target and settings
        self.jobs: dict[str, _Watched] = {}
        self._backends: dict[str, Any] = {}
        self._last = float("-inf")

    def add(self, handle: dict[str, Any] | None) -> None:
        if handle and handle.get("name") and handle["name"] not in self.jobs:
            self.jobs[handle["name"]] = _Watched(handle)

    def poll(self, force: bool = False) -> list[tuple[str, JobLine]]:
        """``(candidate, line)`` for each job whose line changed (its clock aside). All jobs are
        asked at most every ``interval`` seconds; a job never asked yet, or ``force``, at once."""
        due = force or self.clock() - self._last >= self.interval
        changed = []
        for watched in self.jobs.values():
            if watched.ended or not (due or watched.shown is None):
                continue
            line = self._refresh(watched)
            if line is not None and line.text != watched.shown:
                watched.shown, watched.ended = line.text, line.ended
                changed.append((watched.handle["candidate"], line))
        if due:
            self._last = self.clock()
        return changed

    def _refresh(self, watched: _Watched) -> JobLine | None:
        handle = watched.handle
        kind, name = handle["kind"], handle["name"]
        name_field, status_field, _, _ = KIND_FIELDS[kind]
        try:
            backend = self._backend(handle)
            description = getattr(backend, f"describe_{kind}_job")(**{name_field: name})
            if handle.get("action") != "cached" or description[status_field] in ACTIVE_JOB:
                while True:  # SageMaker hands back a page of log events at a time
                    text, offset = backend.read_log(kind, name, watched.offset)
                    watched.progress.feed(text)
                    if not text or offset == watched.offset:
                        break
                    watched.offset = offset
        except PROGRESS_ERRORS as err:
            log.debug("no progress for job %s this time: %s", name, err)
            return None
        return job_line(handle, description, watched.progress)

    def _backend(self, handle: dict[str, Any]) -> Any:
        key = json.dumps([handle["target"], handle.get("settings", {})], sort_keys=True)
        if key not in self._backends:
            self._backends[key] = self.backends(handle)
        return self._backends[key]


def _stamp(started: float) -> str:
    return f"  {time.monotonic() - started:7.1f}s"


def follow(api: AirflowApi, dag_id: str, run_id: str, started: float) -> dict[str, Any]:
    """Print the stage, task-state changes and job progress until the run ends; return the run."""
    seen: dict[str, str] = {}
    fetched: set[tuple[str, int, int]] = set()
    watcher = JobWatcher()
    stage = None
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        run = api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        instances = api.call(
            "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500}
        )["task_instances"]
        now_stage = current_stage(dag_id, instances)
        if now_stage and now_stage != stage:
            # The last lines of the stage that ends come before the next stage's name.
            _print_progress(dag_id, watcher.poll(force=True), started)
            stage = now_stage
            print(f"{_stamp(started)}  {dag_id:15} Stage: {stage}", flush=True)
        for ti in sorted(instances, key=lambda t: (t["start_date"] or "~", t["task_id"])):
            key = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            state = _state(ti)
            if seen.get(key) != state:
                seen[key] = state
                if state not in QUIET_STATES:
                    print(f"{_stamp(started)}  {dag_id:15}   {key:24} {state}", flush=True)
        for ti in instances:
            handle_key = (ti["task_id"], ti["map_index"], ti.get("try_number") or 0)
            if (
                ti["task_id"] in SUBMIT_TASKS.get(dag_id, ())
                and ti["state"] == "success"
                and handle_key not in fetched
            ):
                try:
                    # a phase's handles, one list (add skips a refused request: no job)
                    for handle in api.xcom(dag_id, run_id, ti["task_id"], ti["map_index"]):
                        watcher.add(handle)
                    fetched.add(handle_key)
                except requests.RequestException as err:
                    log.debug("job handle of %s not readable yet: %s", handle_key, err)
        _print_progress(dag_id, watcher.poll(), started)
        if run["state"] in TERMINAL:
            _print_progress(dag_id, watcher.poll(force=True), started)
            print(f"{_stamp(started)}  {dag_id:15} Run {run['state']}", flush=True)
            return run
        if time.monotonic() > deadline:
            raise DemoError(f"{dag_id} run {run_id} did not finish in {RUN_TIMEOUT_SECONDS} s")
        time.sleep(POLL_SECONDS)


def _print_progress(dag_id: str, lines: list[tuple[str, JobLine]], started: float) -> None:
    width = max([16, *(len(name) for name, _ in lines)])
    for name, line in lines:
        print(f"{_stamp(started)}  {dag_id:15}   {name:{width}} {line}", flush=True)


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


def _failure_hint(api: AirflowApi, dag_id: str, run_id: str, task_logs: str) -> str:
    instances = api.call(
        "GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500}
    )["task_instances"]
    failed = [t["task_id"] for t in instances if t["state"] == "failed"]
    return (
        f"{dag_id} run {run_id} failed at {failed}; read the task logs in the Airflow UI "
        f"({api.base}/dags/{dag_id}/runs/{run_id}) or under {task_logs}"
    )


def run_demo(config_file: str = "include/configs/local.yaml", profile: str = "local") -> int:
    config = config_of(resolve(config_file))
    on = DemoStack.of(profile)
    started = time.monotonic()
    print(
        f"Starting the {profile} stack (Airflow {on.airflow_url}, MLflow {on.mlflow_url})",
        flush=True,
    )
    on.start()
    print(f"  Airflow admin password: {on.password_hint}", flush=True)
    api = AirflowApi(on.airflow_url, on.credentials)
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
        raise DemoError(_failure_hint(api, "fmops_finetune", run_id, on.task_logs))
    decision = api.xcom("fmops_finetune", run_id, "select")
    print_decision(decision)
    from fmops.airflow.links import MLFLOW_RUN_KEY

    mlflow_run = api.xcom("fmops_finetune", run_id, "load_config", key=MLFLOW_RUN_KEY)
    print(f"\nMLflow run of this DAG run: {mlflow_run['url']}")
    print(f"  its jobs in the runs table: {mlflow_run['jobs_view']}")
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
        raise DemoError(_failure_hint(api, "fmops_deploy", deploy_run["dag_run_id"], on.task_logs))
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
    from fmops.kinds import kind_of

    example = kind_of(config).example_payload(config)
    status, answer = LocalEndpoint(config.deployment.endpoint_name).invoke(example)
    print(f"  live answer (HTTP {status}): {json.dumps(answer)}")
    print(
        f"  try it: curl -s -X POST {deployed['url']}/invocations "
        f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(example))}"
    )
    _print_durations(api, [("fmops_finetune", run_id), ("fmops_deploy", deploy_run["dag_run_id"])])
    print(
        f"\nDemo wall time: {total:.0f} s (stack start included). The stack keeps running: "
        f"Airflow {on.airflow_url}, MLflow {on.mlflow_url}; `make down` stops it."
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
