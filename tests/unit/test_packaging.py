"""The package builds with what its build requirements allow: `project.license` is an SPDX
string (PEP 639), which setuptools reads only from 77.0 on; an older one that `setuptools>=68`
admitted fails the build with "`project.license` must be valid exactly by one definition"
(checked by hand with setuptools 76.1.0 and 77.0.3, `pip wheel --no-build-isolation`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_build_requirement_admits_no_setuptools_that_cannot_read_the_license():
    project = tomllib.loads(PYPROJECT.read_text())
    assert isinstance(project["project"]["license"], str), "an SPDX expression (PEP 639)"
    (setuptools,) = [
        Requirement(r)
        for r in project["build-system"]["requires"]
        if Requirement(r).name == "setuptools"
    ]
    oldest = min(
        (Version(s.version) for s in setuptools.specifier if s.operator in (">=", "==", "~=")),
        default=None,
    )
    assert oldest is not None, f"{setuptools} admits any setuptools"
    assert oldest >= Version("77.0"), f"{setuptools} admits setuptools {oldest}, before 77.0"
