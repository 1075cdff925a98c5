"""Where fmops keeps its files: the project checkout and the state folder (``.fmops/``).

The state folder holds the local target's moving parts: job folders, staged datasets, the MLflow
store, endpoint state and the local Airflow home. ``FMOPS_HOME`` moves it (tests point it at a
temporary folder so that they never touch a developer's runs).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = PROJECT_ROOT / "include" / "scripts"
CONFIGS_DIR = PROJECT_ROOT / "include" / "configs"


def config_file_choices() -> list[str]:
    """The shipped pipeline configs, relative to the project root, as the trigger forms suggest
    them (read when the DAG files are parsed: a directory listing, nothing more)."""
    return sorted(f"include/configs/{p.name}" for p in CONFIGS_DIR.glob("*.yaml"))


def state_dir() -> Path:
    return Path(os.environ.get("FMOPS_HOME", PROJECT_ROOT / ".fmops")).resolve()


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """A config path: absolute, ``file://``, or relative to the project root."""
    text = str(value)
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text)
    return path if path.is_absolute() else PROJECT_ROOT / path
