"""What every benchmark prints first: the machine, its load and the versions its figures need.

Imported by the scripts beside it (``python benchmarks/<name>.py`` puts this folder on the path).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def machine(packages: tuple[str, ...]) -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name")),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = next(
        (int(x.split()[1]) / 1024 / 1024 for x in meminfo.splitlines() if x.startswith("MemTotal")),
        0.0,
    )
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    return [
        f"date:     {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine:  {model}; {os.cpu_count()} cores ({usable} usable); {total:.1f} GiB memory; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start",
        f"python:   {platform.python_version()} ({platform.platform()})",
        f"packages: {', '.join(versions)}",
    ]


def finish(
    began: float, machine_lines: list[str], results: dict[str, Any], quick: bool, json_path: Any
) -> None:
    """The last lines of a benchmark: its total time, and the figures as JSON when asked."""
    total = time.perf_counter() - began
    print(f"\ntotal benchmark time {total:.0f} s")
    if json_path:
        report = {"machine": machine_lines, "quick": quick, "parts": results, "seconds": total}
        Path(json_path).write_text(json.dumps(report, indent=1, default=str))
        print(f"figures written to {json_path}")


def run_job_dirs(fmops_home: Path, run_id: str) -> list[Path]:
    """The local executor's job folders of one DAG run (by the request's fmops:run_id tag)."""
    folders = []
    for request_path in sorted((Path(fmops_home) / "jobs").glob("*/request.json")):
        request = json.loads(request_path.read_text())
        tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
        if tags.get("fmops:run_id") == run_id:
            folders.append(request_path.parent)
    return folders
