"""The two locks: requirements-dev.txt (everything `make install` installs) and requirements.txt,
its runtime part (what the Airflow image installs). ``make lock`` writes both; this module
writes the second from the first and pip's resolution of requirements.in::

    pip install --dry-run --ignore-installed --report runtime.json \\
        -r requirements.in -c requirements-dev.txt
    python tests/lockfiles.py runtime.json      # writes requirements.txt

Constrained to the dev lock, pip resolves requirements.in to exactly the versions the dev lock
pins, so the runtime lock never holds a version the tests did not run with. Like ``pip freeze``
(which writes the dev lock), it leaves out pip, setuptools and wheel.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements.txt"
DEV_LOCK = ROOT / "requirements-dev.txt"
UNPINNED = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """canonical name -> (the name as written, the pinned version)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = (name, version)
    return pins


def runtime_lock(report: dict, dev: dict[str, tuple[str, str]]) -> str:
    """requirements.txt's text: the dev lock's lines of the distributions pip would install."""
    resolved = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"].split("+")[0]
        for item in report["install"]
    }
    for name in sorted(set(resolved) - UNPINNED):
        if name not in dev or dev[name][1] != resolved[name]:
            raise SystemExit(f"{name}=={resolved[name]} is not pinned so in {DEV_LOCK.name}")
    # In the dev lock's order (pip freeze's), so that the two read side by side.
    return "".join(
        f"{written}=={version}\n" for name, (written, version) in dev.items() if name in resolved
    )


if __name__ == "__main__":
    report = json.loads(Path(sys.argv[1]).read_text())
    RUNTIME_LOCK.write_text(runtime_lock(report, read_lock(DEV_LOCK)))
    print(f"{RUNTIME_LOCK.name}: {len(RUNTIME_LOCK.read_text().splitlines())} pins")
