"""Benchmark: `make demo` end to end, then again with unchanged inputs (the cache re-run).

    .venv/bin/python benchmarks/demo.py                 # a fresh FMOPS_HOME: first run + re-run
    .venv/bin/python benchmarks/demo.py --keep-stack    # leave the stack and the endpoint up
    .venv/bin/python benchmarks/demo.py --json demo.json
    .venv/bin/python benchmarks/demo.py --stacks local,team   # first runs, side by side

Runs ``make demo`` twice, one after the other, against a fresh state folder (``FMOPS_HOME`` in a
temporary folder, so that the first run finds no cached job and no champion, as after install):

1. the first run: its wall time (``make demo`` as a process: stack start, both DAGs, the
   endpoint, the printing), broken down by stage from Airflow's REST API (the stack keeps
   running after the demo), against the sum of its jobs' own run times (``TrainingTimeInSeconds``
   and the processing jobs' runtime, from the local executor's records) and against their
   critical path (the longest training job plus the longest evaluation job: the jobs of a phase
   run concurrently);
2. the re-run with the same config and data: its wall time against the first run's, and whether
   every training job was reused (each ``submit_training`` returned ``action: cached`` and no
   new training job was created).

The demo uses Airflow on 127.0.0.1:8080, MLflow on :5000 and the endpoint on :8090: the script
refuses to start when one of them is taken (``make down`` stops a stack of this checkout).
``make install`` runs first, untimed (a no-op when the virtualenv is up to date). At the end it
stops the stack (``make down``) and deletes the demo's endpoint, unless ``--keep-stack``.

With ``--stacks local,team``: the first run only, once on each stack, one after the other, each
with a fresh state folder: ``fmops demo`` on the local stack (``airflow standalone``,
LocalExecutor, PostgreSQL; MLflow on SQLite) and ``fmops demo --profile team`` on the team stack
(``make up-team``: CeleryExecutor with two workers, PostgreSQL, Redis, MLflow on PostgreSQL with
S3 artifacts). Each stack is stopped before the next starts (they share ports 8080 and 5000).
The table puts the stages side by side; the local stack is the baseline.

Goals (issue 10): the re-run under 10% of the first run's wall time, every training job reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = "include/configs/local.yaml"
PORTS = {"Airflow": 8080, "MLflow": 5000, "endpoint": 8090}
GOAL_RERUN_RATIO = 0.10
FINETUNE, DEPLOY = "fmops_finetune", "fmops_deploy"


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def stamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def run_make_demo(
    env: dict[str, str], log: Path, target: str = "demo", command: list[str] | None = None
) -> dict[str, Any]:
    """``make <target>`` (``demo``, ``demo-llm``), or ``command``, as a process: its wall time and
    output lines (echoed as they come)."""
    started_at = datetime.now(UTC)
    began = time.perf_counter()
    lines = []
    with log.open("w") as out:
        process = subprocess.Popen(
            command or ["make", target],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            lines.append(line.rstrip("\n"))
            print(f"    | {lines[-1]}", flush=True)
        code = process.wait()
    wall = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"make {target} failed (exit {code}); its output is in {log}")
    return {"started_at": started_at, "wall_s": wall, "lines": lines}


def printed_stages(lines: list[str]) -> dict[str, Any]:
    """The demo's own "Stage durations (s):" block and its "Demo wall time" line."""
    stages: dict[str, float] = {}
    inside = False
    for line in lines:
        if line.startswith("Stage durations"):
            inside = True
            continue
        if inside:
            match = re.match(r"^\s+(\S+)\s+(\S+)\s+([0-9.]+)$", line)
            if not match:
                inside = False
                continue
            stages[f"{match[1]}.{match[2]}"] = float(match[3])
    demo_wall = next(
        (float(m[1]) for x in lines if (m := re.search(r"Demo wall time: ([0-9.]+) s", x))), None
    )
    return {"stages": stages, "demo_wall_s": demo_wall}


def latest_run(api: Any, dag_id: str, after: datetime) -> dict | None:
    runs = api.call(
        "GET",
        f"/dags/{dag_id}/dagRuns",
        params={"run_after_gte": after.isoformat(), "order_by": "-run_after"},
    )["dag_runs"]
    return runs[0] if runs else None


def task_instances(api: Any, dag_id: str, run_id: str) -> list[dict]:
    return api.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 500})[
        "task_instances"
    ]


def task_spans(instances: list[dict]) -> dict[str, tuple[datetime, datetime]]:
    """Per task: the first start and the last end over its (mapped) instances."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for ti in instances:
        began, ended = stamp(ti["start_date"]), stamp(ti["end_date"])
        if began and ended:
            old = spans.get(ti["task_id"])
            spans[ti["task_id"]] = (
                (min(old[0], began), max(old[1], ended)) if old else (began, ended)
            )
    return spans


def submit_actions(api: Any, run_id: str, task_id: str = "submit_training") -> list:
    """Each job's action, in the submit task's order: created, cached (reused from the cache),
    reattached, reused or refused (the submit task returns its phase's handles as one list)."""
    entry = api.call(
        "GET",
        f"/dags/{FINETUNE}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
        params={"map_index": -1, "deserialize": "true"},
    )
    value = entry["value"]
    value = json.loads(value) if isinstance(value, str) else value
    return [handle.get("action", "?") for handle in value]


def run_jobs(fmops_home: Path, run_id: str) -> list[dict]:
    """The local executor's jobs of one DAG run, with their own run times."""
    jobs = []
    for folder in _common.run_job_dirs(fmops_home, run_id):
        record = json.loads((folder / "record.json").read_text())
        jobs.append(
            {
                "name": folder.name,
                "kind": record["kind"],
                "status": record["status"],
                "runtime_s": record.get("runtime_seconds"),
            }
        )
    return jobs


def measure(
    api: Any, fmops_home: Path, demo: dict[str, Any], training_jobs_before: set[str]
) -> dict[str, Any]:
    """Stages of one demo run from the API, its jobs, and the training cache's verdict."""
    finetune = latest_run(api, FINETUNE, demo["started_at"])
    if finetune is None:
        raise SystemExit(f"no {FINETUNE} run since {demo['started_at'].isoformat()}")
    run_id = finetune["dag_run_id"]
    instances = task_instances(api, FINETUNE, run_id)
    spans = task_spans(instances)
    stages: dict[str, float] = {}

    def between(first: str, last: str) -> float | None:
        if first in spans and last in spans:
            return (spans[last][1] - spans[first][0]).total_seconds()
        return None

    queued = stamp(finetune.get("queued_at")) or stamp(finetune["start_date"])
    stages["stack start and trigger"] = (queued - demo["started_at"]).total_seconds()
    stages["config (load_config)"] = between("load_config", "load_config")
    stages["validation (validate_data)"] = between("validate_data", "validate_data")
    stages["planning (plan_jobs)"] = between("plan_jobs", "plan_jobs")
    stages["training (submit -> last await_training)"] = between(
        "submit_training", "await_training"
    )
    stages["evaluation (plan -> last await_evaluation)"] = between(
        "plan_evaluation", "await_evaluation"
    )
    stages["selection (select)"] = between("select", "select")
    stages["registration (register)"] = between("register", "register")
    finetune_end = stamp(finetune["end_date"])
    deploy = latest_run(api, DEPLOY, demo["started_at"])
    if deploy and deploy.get("end_date"):
        deploy_spans = task_spans(task_instances(api, DEPLOY, deploy["dag_run_id"]))
        stages["fmops_finetune end -> fmops_deploy start"] = (
            stamp(deploy["start_date"]) - finetune_end
        ).total_seconds()
        for task in ("resolve_candidate", "await_approval", "deploy", "smoke_test", "promote"):
            if task in deploy_spans:
                began, ended = deploy_spans[task]
                stages[f"deploy: {task}"] = (ended - began).total_seconds()
        last_end = stamp(deploy["end_date"])
    else:
        last_end = finetune_end
    known = sum(v for v in stages.values() if v is not None)
    stages["scheduling gaps and the demo's own printing"] = demo["wall_s"] - known
    jobs = run_jobs(fmops_home, run_id)
    training = [j for j in jobs if j["kind"] == "training"]
    evaluation = [j for j in jobs if j["kind"] == "processing"]
    actions = submit_actions(api, run_id)
    evaluation_actions = submit_actions(api, run_id, "submit_evaluation")
    new_training = [j["name"] for j in training if j["name"] not in training_jobs_before]
    return {
        "run_id": run_id,
        "wall_s": demo["wall_s"],
        "printed": printed_stages(demo["lines"]),
        "finetune_s": (finetune_end - queued).total_seconds(),
        "until_last_dag_end_s": (last_end - demo["started_at"]).total_seconds(),
        "stages": stages,
        "jobs": jobs,
        "jobs_own_s": sum(j["runtime_s"] or 0 for j in jobs),
        "training_own_s": sum(j["runtime_s"] or 0 for j in training),
        "evaluation_own_s": sum(j["runtime_s"] or 0 for j in evaluation),
        "jobs_critical_path_s": max((j["runtime_s"] or 0 for j in training), default=0)
        + max((j["runtime_s"] or 0 for j in evaluation), default=0),
        "submit_actions": actions,
        "evaluation_actions": evaluation_actions,
        "new_training_jobs": new_training,
        "training_reused": bool(actions) and all(a == "cached" for a in actions),
    }


def training_job_names(fmops_home: Path) -> set[str]:
    names = set()
    for record in (fmops_home / "jobs").glob("*/record.json"):
        if json.loads(record.read_text()).get("kind") == "training":
            names.add(record.parent.name)
    return names


def print_report(first: dict, second: dict) -> None:
    print(f"\n{'stage':52} {'first run s':>11} {'re-run s':>9}")
    print("-" * 74)
    for stage in first["stages"]:
        a, b = first["stages"].get(stage), second["stages"].get(stage)
        print(
            f"{stage:52} {'-' if a is None else f'{a:.1f}':>11} "
            f"{'-' if b is None else f'{b:.1f}':>9}"
        )
    print("-" * 74)
    print(f"{'make demo, wall':52} {first['wall_s']:11.1f} {second['wall_s']:9.1f}")
    print(
        f"{'  fmops_finetune run, queued -> end':52} {first['finetune_s']:11.1f} "
        f"{second['finetune_s']:9.1f}"
    )
    print(
        f"{'  start -> the last DAG run ended':52} {first['until_last_dag_end_s']:11.1f} "
        f"{second['until_last_dag_end_s']:9.1f}"
    )
    a, b = first["printed"]["demo_wall_s"], second["printed"]["demo_wall_s"]
    label = "the demo's own 'Demo wall time' line"
    print(
        f"{label:52} {'-' if a is None else f'{a:.0f}':>11} {'-' if b is None else f'{b:.0f}':>9}"
    )
    rows = (
        ("jobs' own run times, summed", "jobs_own_s"),
        ("  training jobs", "training_own_s"),
        ("  evaluation jobs", "evaluation_own_s"),
        ("jobs' critical path (longest training + evaluation)", "jobs_critical_path_s"),
    )
    for label, key in rows:
        print(f"{label:52} {first[key]:11.1f} {second[key]:9.1f}")
    for run, name in ((first, "first run"), (second, "re-run")):
        print(
            f"{name}: {len(run['jobs'])} jobs ({sum(j['kind'] == 'training' for j in run['jobs'])} "
            f"training); submit_training actions {run['submit_actions']}; new training jobs "
            f"{len(run['new_training_jobs'])}; submit_evaluation actions "
            f"{run['evaluation_actions']}"
        )
    print(
        "stages: from Airflow's REST API (task instances' start and end); wall: `make demo` as a "
        "process;\n  jobs' own run times: the local executor's runtime_seconds (whole seconds)"
    )


def print_goals(first: dict, second: dict) -> bool:
    ratio = second["wall_s"] / first["wall_s"]
    reused = second["training_reused"] and not second["new_training_jobs"]
    print("\ngoals:")
    print(
        f"  re-run wall time {second['wall_s']:.1f} s = {ratio:.1%} of the first run's "
        f"{first['wall_s']:.0f} s (goal < {GOAL_RERUN_RATIO:.0%}) -> "
        f"{'PASS' if ratio < GOAL_RERUN_RATIO else 'MISS'}"
    )
    print(
        f"  every training job reused on the re-run: {reused} "
        f"(actions {second['submit_actions']}) -> {'PASS' if reused else 'MISS'}"
    )
    return ratio < GOAL_RERUN_RATIO and reused


def compare_stacks(profiles: list[str], json_path: Path | None) -> None:
    """The first run of the demo on each stack in ``profiles``, side by side."""
    from fmops import team_stack

    taken = [
        f":{port}"
        for port in {*PORTS.values(), *dataclasses.asdict(team_stack.Ports.from_env()).values()}
        if port_taken(port)
    ]
    if taken:
        raise SystemExit(f"ports taken: {', '.join(sorted(taken))}; `make down` and run again")
    subprocess.run(["make", "install"], cwd=ROOT, check=True)
    results = {}
    for profile in profiles:
        work = Path(tempfile.mkdtemp(prefix=f"fmops-bench-demo-{profile}-"))
        fmops_home = work / "fmops"
        env = {**os.environ, "FMOPS_HOME": str(fmops_home)}
        env.pop("MLFLOW_TRACKING_URI", None)
        print(f"\n== fmops demo --profile {profile}, FMOPS_HOME={fmops_home} (fresh)", flush=True)
        command = [str(BIN / "fmops"), "demo", "--config", CONFIG, "--profile", profile]
        try:
            demo = run_make_demo(env, work / "demo.log", command=command)
            results[profile] = _measure_in(env, profile, fmops_home, demo)
            print(f"   {profile}: {demo['wall_s']:.1f} s", flush=True)
        finally:
            subprocess.run(
                [str(BIN / "fmops"), "endpoint", "delete", "banking77"], env=env, check=False
            )
            subprocess.run([str(BIN / "fmops"), "stack", "down"], cwd=ROOT, env=env, check=False)
            shutil.rmtree(work, ignore_errors=True)
    print_side_by_side(results)
    if json_path:
        json_path.write_text(json.dumps(results, indent=1, default=str))
        print(f"figures written to {json_path}")


def _measure_in(env: dict[str, str], profile: str, fmops_home: Path, demo: dict) -> dict:
    """measure() against the stack of ``profile`` (fmops reads FMOPS_HOME on each call)."""
    from fmops.demo import AirflowApi, DemoStack

    os.environ["FMOPS_HOME"] = env["FMOPS_HOME"]
    on = DemoStack.of(profile)
    api = AirflowApi(on.airflow_url, on.credentials)
    api.login()
    return measure(api, fmops_home, demo, set())


def print_side_by_side(results: dict[str, dict]) -> None:
    profiles = list(results)
    width = 12
    print(f"\n{'stage (s)':52}" + "".join(f"{p:>{width}}" for p in profiles))
    print("-" * (52 + width * len(profiles)))
    stages = list(dict.fromkeys(s for r in results.values() for s in r["stages"]))

    def cell(value: float | None) -> str:
        return f"{'-' if value is None else f'{value:.1f}':>{width}}"

    for stage in stages:
        print(f"{stage:52}" + "".join(cell(results[p]["stages"].get(stage)) for p in profiles))
    print("-" * (52 + width * len(profiles)))
    for label, key in (
        ("fmops demo, wall", "wall_s"),
        ("  fmops_finetune run, queued -> end", "finetune_s"),
        ("  start -> the last DAG run ended", "until_last_dag_end_s"),
        ("jobs' own run times, summed", "jobs_own_s"),
        ("jobs' critical path (longest training + evaluation)", "jobs_critical_path_s"),
    ):
        print(f"{label:52}" + "".join(cell(results[p][key]) for p in profiles))
    base = profiles[0]
    for other in profiles[1:]:
        ratio = results[other]["wall_s"] / results[base]["wall_s"]
        overhead = (results[other]["wall_s"] - results[other]["jobs_critical_path_s"]) - (
            results[base]["wall_s"] - results[base]["jobs_critical_path_s"]
        )
        print(
            f"{other} against {base}: wall {ratio:.2f}x; wall minus the jobs' critical path "
            f"{overhead:+.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-stack", action="store_true", help="leave the stack running")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--stacks",
        help="first runs on these stacks side by side, e.g. local,team (the first "
        "is the baseline); without it: the first run and the re-run on the local stack",
    )
    args = parser.parse_args()
    if args.stacks:
        print("fmops demo benchmark (benchmarks/demo.py), stacks side by side")
        for line in _common.machine(("apache-airflow", "mlflow", "torch", "transformers")):
            print(line)
        began = time.perf_counter()
        compare_stacks(args.stacks.split(","), args.json)
        load = os.getloadavg()
        print(
            f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            f"total benchmark time {time.perf_counter() - began:.0f} s"
        )
        return
    began = time.perf_counter()
    print("fmops demo benchmark (benchmarks/demo.py)")
    for line in _common.machine(("apache-airflow", "mlflow", "torch", "transformers")):
        print(line)
    taken = [f"{name} :{port}" for name, port in PORTS.items() if port_taken(port)]
    if taken:
        raise SystemExit(
            f"ports taken: {', '.join(taken)}; the demo needs them: stop what listens there "
            "(`make down` stops this checkout's stack) and run again"
        )
    work = Path(tempfile.mkdtemp(prefix="fmops-bench-demo-"))
    fmops_home = work / "fmops"
    os.environ["FMOPS_HOME"] = str(fmops_home)  # before fmops.stack is imported
    env = {**os.environ, "FMOPS_HOME": str(fmops_home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"FMOPS_HOME={fmops_home} (fresh); config {CONFIG}", flush=True)
    from fmops import stack
    from fmops.demo import AirflowApi

    # "After install": make demo installs first when the lock changed; that is not timed here.
    subprocess.run(["make", "install"], cwd=ROOT, check=True)

    results = []
    try:
        for attempt, label in enumerate(("first run", "re-run (unchanged inputs)")):
            print(f"\n== make demo, {label}", flush=True)
            before = training_job_names(fmops_home) if fmops_home.exists() else set()
            demo = run_make_demo(env, work / f"demo-{attempt + 1}.log")
            api = AirflowApi(stack.airflow_url())
            api.login()
            results.append(measure(api, fmops_home, demo, before))
            print(f"   {label}: {demo['wall_s']:.1f} s", flush=True)
    finally:
        if not args.keep_stack:
            subprocess.run(
                [str(BIN / "fmops"), "endpoint", "delete", "banking77"], env=env, check=False
            )
            subprocess.run(["make", "down"], cwd=ROOT, env=env, check=False)
    first, second = results
    print_report(first, second)
    print_goals(first, second)
    load = os.getloadavg()
    print(
        f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"total benchmark time {time.perf_counter() - began:.0f} s"
    )
    if args.json:
        payload = {"first": first, "rerun": second}
        args.json.write_text(json.dumps(payload, indent=1, default=str))
        print(f"figures written to {args.json}")
    if args.keep_stack:
        print(f"the stack and the endpoint keep running with FMOPS_HOME={fmops_home}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
