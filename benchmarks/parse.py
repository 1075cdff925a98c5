"""Benchmark: how long each DAG file takes to parse, against an empty DAG with the same imports.

    .venv/bin/python benchmarks/parse.py                # 5 alternating repeats (~4 min)
    .venv/bin/python benchmarks/parse.py --repeats 3    # quicker
    .venv/bin/python benchmarks/parse.py --json parse.json

For every file in dags/ the script writes a baseline: an empty DAG file (one ``@dag`` function
without tasks) whose module-level imports are the DAG file's own ``airflow.sdk`` and standard
library imports, and nothing of fmops. It then measures, each in a fresh process, alternating
the DAG file and its baseline on every repeat:

* ``airflow dags report``: the parse duration that Airflow's DagBag reports for the file, with
  ``core.dags_folder`` a folder that holds only that file (a link to it, or the baseline), so
  that each file pays for its own imports, as in the dag processor's child process;
* ``python dags/<file>.py``: the wall time of a cold interpreter running the file (interpreter
  start, Airflow's import and the file), which is what a developer or CI sees.

``python -X importtime`` then lists the modules that the DAG file imports beyond its baseline,
and checks that none of the heavy libraries (torch, transformers, pandas, ...) is among them.

Goals (issue 10): each DAG file parses in under 0.2 s (``dags report``) and within 0.05 s of its
baseline (both measures). Medians are reported; the machine's load average is printed first.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402 - beside this script

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
AIRFLOW = Path(sys.executable).parent / "airflow"
GOAL_SECONDS = 0.2
GOAL_DELTA = 0.05
ASSET_URI = "fmops://registered-models"
STDLIB = sys.stdlib_module_names | {"__future__"}
# What a DAG file must never import at module level (tests/dags checks the same list).
HEAVY = (
    "torch",
    "transformers",
    "peft",
    "mlflow",
    "great_expectations",
    "sagemaker",
    "pandas",
    "sklearn",
    "matplotlib",
)
BASELINE = '''"""Empty DAG with the airflow.sdk imports of {name} (benchmarks/parse.py baseline)."""

{imports}


@dag(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def {dag_id}():
    pass


{dag_id}()
'''


def baseline_source(dag_file: Path) -> str:
    """The baseline of ``dag_file``: its standard-library and airflow.sdk imports, no tasks."""
    tree = ast.parse(dag_file.read_text())
    kept = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            if module.startswith("airflow.sdk") or module.split(".")[0] in STDLIB:
                kept.append(ast.unparse(node))
        elif isinstance(node, ast.Import) and all(
            a.name.split(".")[0] in STDLIB for a in node.names
        ):
            kept.append(ast.unparse(node))
    if not any("datetime import" in line and "datetime" in line for line in kept):
        kept.append("from datetime import datetime")
    if not any(line.startswith("from airflow.sdk import") and " dag" in line for line in kept):
        kept.append("from airflow.sdk import dag")
    # Imported and unused on purpose: the baseline pays for the same imports as the DAG file.
    imports = "\n".join(f"{line}  # noqa: F401" for line in kept)
    return BASELINE.format(name=dag_file.name, imports=imports, dag_id=f"baseline_{dag_file.stem}")


def airflow_env(home: Path, dags_folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
        FMOPS_HOME=str(home / "fmops"),
    )
    return env


def dags_report(home: Path, folder: Path) -> float:
    """The parse duration DagBag reports for the only file in ``folder``, in seconds."""
    done = subprocess.run(
        [str(AIRFLOW), "dags", "report", "-o", "json"],
        env=airflow_env(home, folder),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("[")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"airflow dags report failed on {folder}:\n{done.stdout}\n{done.stderr}")
    (row,) = json.loads(line)
    if int(row["dag_num"]) != 1:
        raise SystemExit(f"{folder}: expected one DAG, dags report says {row}")
    hours, minutes, seconds = row["duration"].split(":")
    return timedelta(hours=int(hours), minutes=int(minutes), seconds=float(seconds)).total_seconds()


def cold_python(home: Path, file: Path) -> float:
    """Wall time of ``python FILE`` in a fresh interpreter."""
    env = airflow_env(home, file.parent)
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(file)], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"python {file} failed:\n{done.stderr[-3000:]}")
    return wall


def import_times(home: Path, file: Path) -> dict[str, tuple[int, int]]:
    """``python -X importtime FILE``: module -> (self us, cumulative us)."""
    env = airflow_env(home, file.parent)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", str(file)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    found = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative, name = (part.strip() for part in line[12:].split("|"))
        found[name.strip()] = (int(self_us), int(cumulative))
    return found


def extra_imports(dag: dict[str, tuple[int, int]], base: dict[str, tuple[int, int]]) -> dict:
    """The modules that the DAG file imports beyond its baseline, grouped by top package."""
    extra = {name: times for name, times in dag.items() if name not in base}
    groups: dict[str, int] = {}
    for name, (self_us, _) in extra.items():
        top = name.split(".")[0]
        groups[top] = groups.get(top, 0) + self_us
    heavy = sorted({n.split(".")[0] for n in dag if n.split(".")[0] in HEAVY})
    return {
        "modules": len(extra),
        "self_seconds": sum(t[0] for t in extra.values()) / 1e6,
        "by_package": {k: v / 1e6 for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "heavy": heavy,
    }


def variants(dag_file: Path, work: Path) -> dict[str, Path]:
    """The folders to parse: the DAG file (a link), its baseline, and the baseline plus one
    ``Asset`` when the file uses assets (constructing an Asset loads every installed
    provider's asset-URI handlers: Airflow's cost, shown apart from fmops' own)."""
    source = baseline_source(dag_file)
    files = {"dag": (dag_file.stem, None), "base": (f"baseline_{dag_file.stem}", source)}
    text = dag_file.read_text()
    # fmops' DAG files get their assets from fmops.airflow.schedule (the lineage asset, the
    # training-data asset); any file that builds an Asset pays for Airflow's handlers.
    if "Asset(" in text or "fmops.airflow.schedule" in text:
        needs_import = "import Asset" not in source and " Asset," not in source
        imported = "\nfrom airflow.sdk import Asset  # noqa: E402\n" if needs_import else ""
        asset = source.replace(
            "\n\n\n@dag", f"\n{imported}\nASSET = Asset({ASSET_URI!r})\n\n\n@dag", 1
        )
        files["asset"] = (f"baseline_asset_{dag_file.stem}", asset)
    folders = {}
    for key, (name, text) in files.items():
        folder = work / name
        folder.mkdir()
        if text is None:
            (folder / dag_file.name).symlink_to(dag_file)
        else:
            (folder / f"{name}.py").write_text(text)
        folders[key] = folder
    return folders


def measure(dag_file: Path, work: Path, home: Path, repeats: int) -> dict:
    folders = variants(dag_file, work)
    files = {k: next(f.glob("*.py")) for k, f in folders.items()}
    files["dag"] = dag_file  # the real path: `python dags/x.py`
    report: dict[str, list[float]] = {k: [] for k in folders}
    cold: dict[str, list[float]] = {k: [] for k in folders}
    for repeat in range(repeats):
        order = list(folders) if repeat % 2 == 0 else list(reversed(folders))
        for key in order:
            report[key].append(dags_report(home, folders[key]))
        for key in order:
            cold[key].append(cold_python(home, files[key]))
        shown = ", ".join(f"{k} {report[k][-1]:.3f}" for k in folders)
        shown_cold = ", ".join(f"{k} {cold[k][-1]:.2f}" for k in folders)
        print(
            f"  {dag_file.name} repeat {repeat + 1}: dags report s: {shown}; "
            f"python s: {shown_cold}",
            flush=True,
        )
    report_m = {k: statistics.median(v) for k, v in report.items()}
    cold_m = {k: statistics.median(v) for k, v in cold.items()}
    return {
        "file": f"dags/{dag_file.name}",
        "baselines": {k: files[k].read_text() for k in folders if k != "dag"},
        "runs": {"dags_report": report, "python": cold},
        "median": {"dags_report": report_m, "python": cold_m},
        "report_delta": report_m["dag"] - report_m["base"],
        "cold_delta": cold_m["dag"] - cold_m["base"],
        "imports": extra_imports(
            import_times(home, dag_file), import_times(home, files.get("asset", files["base"]))
        ),
    }


def print_table(results: list[dict], repeats: int) -> None:
    print(
        f"\n{'DAG file':24} {'measure':12} {'DAG file s':>10} {'baseline s':>10} {'delta s':>8} "
        f"{'+Asset s':>9} {'of delta':>9}"
    )
    print("-" * 88)
    for r in results:
        for label, key in (("dags report", "dags_report"), ("python", "python")):
            m = r["median"][key]
            delta = m["dag"] - m["base"]
            asset = m.get("asset")
            extra = f"{asset:9.3f} {asset - m['base']:+9.3f}" if asset is not None else f"{'-':>9}"
            print(
                f"{r['file']:24} {label:12} {m['dag']:10.3f} {m['base']:10.3f} {delta:+8.3f} "
                f"{extra}"
            )
    print(
        f"medians of {repeats} alternating runs, each in a fresh process\n"
        "  dags report: DagBag's parse duration for a dags folder holding only that file\n"
        "  python: wall time of `python FILE` (interpreter start and Airflow's import included)\n"
        "  baseline: an empty DAG with the file's airflow.sdk and standard-library imports\n"
        f"  +Asset: the baseline that also constructs Asset({ASSET_URI!r}) (Airflow then loads "
        "every\n  installed provider's asset-URI handlers); of delta: +Asset minus the baseline"
    )
    print("\nmodules imported beyond the baseline with an Asset (python -X importtime, self time):")
    for r in results:
        i = r["imports"]
        top = ", ".join(f"{k} {v:.3f} s" for k, v in list(i["by_package"].items())[:6])
        print(f"  {r['file']}: {i['modules']} modules, {i['self_seconds']:.3f} s: {top}")
        print(f"    heavy libraries imported: {', '.join(i['heavy']) or 'none'}")


def print_goals(results: list[dict]) -> list[bool]:
    print("\ngoals:")
    verdicts = []
    for r in results:
        m = r["median"]["dags_report"]
        checks = [
            (f"parses in under {GOAL_SECONDS} s (dags report)", m["dag"], m["dag"] < GOAL_SECONDS),
            (
                f"within {GOAL_DELTA} s of the baseline (dags report)",
                r["report_delta"],
                r["report_delta"] <= GOAL_DELTA,
            ),
            (
                f"within {GOAL_DELTA} s of the baseline (cold python)",
                r["cold_delta"],
                r["cold_delta"] <= GOAL_DELTA,
            ),
            (
                "no heavy import at module level",
                len(r["imports"]["heavy"]),
                not r["imports"]["heavy"],
            ),
        ]
        for text, value, ok in checks:
            verdicts.append(ok)
            shown = f"{value:.3f} s" if isinstance(value, float) else str(value)
            print(f"  {r['file']}: {text}: {shown} -> {'PASS' if ok else 'MISS'}")
    print("what the misses are made of (medians):")
    for r in results:
        report, cold = r["median"]["dags_report"], r["median"]["python"]
        if "asset" not in report:
            continue
        print(
            f"  {r['file']}: Airflow's Asset() {report['asset'] - report['base']:+.3f} s "
            f"(python {cold['asset'] - cold['base']:+.3f} s); fmops' own, the DAG file minus the "
            f"baseline with an Asset: {report['dag'] - report['asset']:+.3f} s "
            f"(python {cold['dag'] - cold['asset']:+.3f} s)"
        )
    return verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs per measure")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    began = time.perf_counter()
    print("fmops DAG parse-time benchmark (benchmarks/parse.py)")
    for line in _common.machine(("apache-airflow", "apache-airflow-task-sdk")):
        print(line)
    with tempfile.TemporaryDirectory(prefix="fmops-bench-parse-") as tmp:
        work = Path(tmp)
        home = work / "airflow"
        home.mkdir()
        subprocess.run(
            [str(AIRFLOW), "db", "migrate"],
            env=airflow_env(home, DAGS),
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        results = [measure(f, work, home, args.repeats) for f in sorted(DAGS.glob("*.py"))]
    print_table(results, args.repeats)
    verdicts = print_goals(results)
    load = os.getloadavg()
    print(
        f"\nload average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"total benchmark time {time.perf_counter() - began:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "goals_met": all(verdicts)}, indent=1))
        print(f"figures written to {args.json}")


if __name__ == "__main__":
    main()
