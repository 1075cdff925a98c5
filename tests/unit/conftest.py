"""Shared by the unit tests: the local-executor fixtures (defined in test_local_executor.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_local_executor import backend, make_backend, workspace  # noqa: E402, F401
