"""Where fmops keeps its files: the project checkout and the state folder (``.fmops/``).

The state folder holds the local target's moving parts: job folders, staged datasets, the MLflow
store, endpoint state and the local Airflow home. ``FMOPS_HOME`` moves it (tests point it at a
temporary folder so that they never touch a developer's runs). Base models converted from a
packaged GGUF are cached under ``<state>/base-models/``; ``FMOPS_BASE_MODELS_DIR`` moves that
cache alone (e.g. onto a volume that several state folders share).
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


def base_models_dir() -> Path:
    """The cache of base-model folders that fmops converts once (``fmops.base_models``)."""
    override = os.environ.get("FMOPS_BASE_MODELS_DIR")
    return Path(override).resolve() if override else state_dir() / "base-models"


def resolve_path(value: str | os.PathLike[str]) -> Path:
    """A config path: absolute, ``file://``, or relative to the project root."""
    text = str(value)
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text)
    return path if path.is_absolute() else PROJECT_ROOT / path
