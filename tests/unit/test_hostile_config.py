"""Hostile and careless config files through ``fmops config check``: each is refused with exit 2
and a message that names the problem and never quotes the file, within a CPU-time and a memory
limit set on the command's process (``resource.setrlimit``: past either, the kernel ends it and
the test fails on its exit status).

The limits are ``fmops.bounded_yaml``'s: 1 MiB, 64 levels, 100,000 values with aliases expanded.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from fmops import bounded_yaml

FMOPS = Path(sys.executable).parent / "fmops"
CPU_SECONDS = 60  # the whole command, imports included, takes about 3 s of CPU
MEMORY_BYTES = 2 * 1024**3  # address space; the command needs a few hundred MB
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def limited() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def check(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FMOPS), "config", "check", str(path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited,
        env={**os.environ, "FMOPS_HOME": str(path.parent / "home")},
    )


def alias_bomb(levels: int = 12) -> str:
    """A few hundred bytes that stand for 10**levels values."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines) + f"\npipeline: *a{levels - 1}\n"


CASES = {
    "alias bomb": (
        alias_bomb(),
        "expands to more than 100,000 values",
    ),
    "an anchor that contains itself": ("pipeline: &a [1, *a]\n", "alias of itself"),
    "deep nesting": ("pipeline: " + "[" * 5000 + "]" * 5000 + "\n", "nests lists or mappings"),
    "deep mappings": (
        "".join(f"{'  ' * i}k{i}:\n" for i in range(80)) + "  " * 80 + "v: 1\n",
        "deeper than 64 levels",
    ),
    "a credentials file given by mistake": (
        f"[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = {SECRET}\n"
        f"region = us-east-1: [\n",
        "is not valid YAML:",
    ),
    "a secret in a line that does not parse": (
        f"pipeline: demo\ntoken: {SECRET}: {{\n",
        "is not valid YAML:",
    ),
    "a top-level list": ("- pipeline: demo\n- target: local\n", "must be a mapping, got list"),
    "a top-level scalar": ("just a string\n", "must be a mapping, got str"),
    "a long rejected value": (
        "pipeline: demo\ntarget: local\ndata: " + "x" * 100_000 + "\n",
        "characters)",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_config_is_refused_with_a_message_and_within_bounds(tmp_path, name):
    text, expected = CASES[name]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for args in ((), ("--target", "sagemaker")):  # the override must not reach a non-mapping
        result = check(path, *args)
        assert result.returncode == 2, (name, args, result.returncode, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        assert expected in result.stderr, result.stderr[-2000:]
        assert SECRET not in result.stderr + result.stdout
        assert len(result.stderr) < 5_000, f"{len(result.stderr)} characters of error"


def test_a_file_too_large_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "config.yaml"
    with path.open("w") as out:
        out.write("pipeline: demo\nnotes: |\n")
        line = "  " + "y" * 1022 + "\n"
        for _ in range(bounded_yaml.MAX_BYTES // len(line) + 1):
            out.write(line)
    result = check(path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "bytes; a config is read up to 1,048,576" in result.stderr


def test_a_directory_or_binary_file_is_named_as_such(tmp_path):
    folder = tmp_path / "configs.yaml"
    folder.mkdir()
    result = check(folder)
    assert result.returncode == 2 and "not a file (a directory?)" in result.stderr, result.stderr
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"pipeline: \xff\xfe\x00binary\n")
    result = check(binary)
    assert result.returncode == 2 and "is not UTF-8 text" in result.stderr, result.stderr
    assert "data.labels" not in result.stderr


def test_the_limits_leave_real_configs_alone():
    """Every shipped config reads within the limits, and so does one near them."""
    configs = sorted((Path(__file__).resolve().parents[2] / "include" / "configs").glob("*.yaml"))
    assert configs
    for config in configs:
        assert isinstance(bounded_yaml.load(config.read_bytes()), dict), config
    near = "values: [" + ", ".join(["1"] * (bounded_yaml.MAX_VALUES - 10)) + "]\n"
    assert len(bounded_yaml.load(near)["values"]) == bounded_yaml.MAX_VALUES - 10
    with pytest.raises(bounded_yaml.YamlLimitError, match="more than 100,000 values"):
        bounded_yaml.load("values: [" + ", ".join(["1"] * bounded_yaml.MAX_VALUES) + "]\n")
