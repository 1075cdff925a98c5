"""Hostile data files are refused before they are expanded: each load runs in a child process
under a CPU-time and a memory limit (``resource.setrlimit``: past either, the kernel ends it and
the test fails on its exit status), and is refused with a ``DataError`` that names the file, what
was found and the config key that bounds it (``fmops.data.loading.Limits``).

Without the bounds, the million-column header, the 60-million-row Parquet file and the Parquet
file of one long value repeated would each take more memory than the limit.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from fmops.config import DataConfig
from fmops.data.loading import DataError, load_table
from fmops.paths import CONFIGS_DIR, PROJECT_ROOT

FMOPS = Path(sys.executable).parent / "fmops"
CPU_SECONDS = 60  # a load, imports included, takes a few seconds of CPU
MEMORY_BYTES = 2 * 1024**3  # address space; a refused load needs a few hundred MB
RAISE = "raise {key} in the pipeline config"

# Loads one file with the config's defaults, or the bounds given as JSON; exit 2 on DataError.
LOAD = """
import json, sys
from fmops.config import DataConfig
from fmops.data.loading import DataError, load_table
data = DataConfig(train="train.csv", evaluation="test.csv", labels=["a"], **json.loads(sys.argv[2]))
try:
    frame = load_table(sys.argv[1], data)
except DataError as err:
    print(err, file=sys.stderr)
    sys.exit(2)
print(f"loaded {frame.shape}")
"""


def limited() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def run(command: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited,
        cwd=PROJECT_ROOT,
        env={**os.environ, "FMOPS_HOME": str(home)},
    )


def load(path: Path, **bounds: int) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-c", LOAD, str(path), json.dumps(bounds)], path.parent / "home")


# -- the hostile files ---------------------------------------------------------------------------


def million_column_header(path: Path) -> None:
    path.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n" + "x," * 999_999 + "x\n")


def long_csv_line(path: Path) -> None:
    """A 50 MB cell on one line."""
    with path.open("w") as out:
        out.write('text,label\n"hello",greeting\n"')
        out.write("x" * 50_000_000)
        out.write('",greeting\n')


def long_csv_cell(path: Path) -> None:
    path.write_text(f"text,label\nhello,greeting\n{'y' * 200_000},greeting\n")


def long_multiline_csv_cell(path: Path) -> None:
    """A 50 MB quoted cell in 500,000 short lines: no line is long, the cell is."""
    with path.open("w") as out:
        out.write('text,label\nhello,greeting\n"')
        out.write(("z" * 99 + "\n") * 500_000)
        out.write('",greeting\n')


def long_jsonl_line(path: Path) -> None:
    with path.open("w") as out:
        out.write('{"text": "hello", "label": "greeting"}\n{"text": "')
        out.write("x" * 50_000_000)
        out.write('", "label": "greeting"}\n')


def long_jsonl_cell(path: Path) -> None:
    records = [
        {"text": "hello", "label": "greeting"},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "user", "content": "y" * 200_000},
            ]
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def many_jsonl_keys(path: Path) -> None:
    path.write_text(json.dumps({f"k{i}": i for i in range(5_000)}) + "\n")


def many_parquet_rows(path: Path) -> None:
    """60 million rows of the same text in 470 KB: each row group holds one dictionary entry.
    Without the stored Arrow schema a reader decodes the text in full."""
    first = pa.array(np.zeros(1_000_000, dtype=np.int32))
    table = pa.table(
        {
            "text": pa.DictionaryArray.from_arrays(first, ["my card was declined"]),
            "label": pa.DictionaryArray.from_arrays(first, ["card_declined"]),
        }
    )
    with pq.ParquetWriter(path, table.schema, store_schema=False) as writer:
        for _ in range(60):
            writer.write_table(table)


def repeated_parquet_text(path: Path) -> None:
    """One row group of a million rows that all hold the same 100,000 characters: 7 KB on disk,
    100 GB of text once decoded."""
    first = pa.array(np.zeros(1_000_000, dtype=np.int32))
    text = pa.DictionaryArray.from_arrays(first, ["x" * 100_000])
    pq.write_table(pa.table({"text": text}), path, store_schema=False)


def long_parquet_cell(path: Path) -> None:
    pd.DataFrame({"text": ["hello", "y" * 200_000], "label": ["a", "b"]}).to_parquet(path)


def long_parquet_chat_message(path: Path) -> None:
    chats = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "y" * 200_000}],
    ]
    pq.write_table(pa.table({"messages": chats}), path)


def struct_holding_a_list(path: Path) -> None:
    metadata = [{"tags": [1, 2]}, {"tags": [3]}]
    pq.write_table(pa.table({"text": ["a", "b"], "metadata": metadata}), path)


def many_parquet_columns(path: Path) -> None:
    pq.write_table(pa.table({f"c{i}": [i] for i in range(1_500)}), path)


CASES = {
    # name: (file name, writer, bounds, expected parts of the message)
    "a million-column CSV header": (
        "train.csv",
        million_column_header,
        {},
        ["1,000,000 columns in its header", "data.max_columns is 1,000"],
    ),
    "a 50 MB CSV line": (
        "train.csv",
        long_csv_line,
        {},
        ["line 3 is longer than the limit", "data.max_line_bytes is 8,388,608"],
    ),
    "a long CSV cell": (
        "train.csv",
        long_csv_cell,
        {},
        [
            "the record at line 3, column 'text' holds 200,000 characters",
            "data.max_cell_chars is 100,000",
        ],
    ),
    "a 50 MB CSV cell in short lines": (
        "train.csv",
        long_multiline_csv_cell,
        {},
        [
            "the record at line 3 holds a cell of more than 8,388,608 characters",
            "data.max_cell_chars is 100,000",
        ],
    ),
    "a 50 MB JSON Lines line": (
        "train.jsonl",
        long_jsonl_line,
        {},
        ["line 2 is longer than the limit", "data.max_line_bytes is 8,388,608"],
    ),
    "a long chat message in JSON Lines": (
        "train.jsonl",
        long_jsonl_cell,
        {},
        [
            "line 2, column 'messages' holds a text of 200,000 characters",
            "data.max_cell_chars is 100,000",
        ],
    ),
    "5,000 JSON Lines keys": (
        "train.jsonl",
        many_jsonl_keys,
        {},
        ["5,000 distinct keys by line 1", "data.max_columns is 1,000"],
    ),
    "a small Parquet file of 60 million rows": (
        "train.parquet",
        many_parquet_rows,
        {},
        ["60,000,000 rows", "data.checks.size.max_rows is 50,000,000"],
    ),
    "a Parquet file that decodes to 100 GB": (
        "train.parquet",
        repeated_parquet_text,
        {},
        ["its text takes at least 100,000,000,000", "bytes once decoded", "data.max_file_bytes"],
    ),
    "a long Parquet cell": (
        "train.parquet",
        long_parquet_cell,
        {},
        ["row 2, column 'text' holds a text of 200,000 characters", "data.max_cell_chars"],
    ),
    "a long chat message in Parquet": (
        "train.parquet",
        long_parquet_chat_message,
        {},
        ["row 3, column 'messages' holds a text of 200,000 characters", "data.max_cell_chars"],
    ),
    "a Parquet struct column holding a list": (
        "train.parquet",
        struct_holding_a_list,
        {},
        [
            "column 'metadata' has type struct<tags: list<element: int64>>",
            "a column must hold text, numbers",
            "list<struct<role: string, content: string>>",
            "flatten the column or write it as JSON text",
        ],
    ),
    "1,500 Parquet columns": (
        "train.parquet",
        many_parquet_columns,
        {},
        ["1,500 columns", "data.max_columns is 1,000"],
    ),
    "a file over data.max_file_bytes": (
        "train.csv",
        long_csv_cell,
        {"max_file_bytes": 100_000},
        ["200,036 bytes; data.max_file_bytes is 100,000"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_file_is_refused_with_a_message_and_within_bounds(
    tmp_path: Path, name: str
) -> None:
    file_name, write, bounds, expected = CASES[name]
    path = tmp_path / file_name
    write(path)
    result = load(path, **bounds)
    assert result.returncode == 2, (name, result.returncode, result.stdout, result.stderr[-2000:])
    message = result.stderr.strip()
    assert "Traceback" not in message, message[-2000:]
    assert message.startswith(f"{path}: "), message[:2000]
    for part in expected:
        assert part in message, (part, message[:2000])
    keys = [word for word in message.split() if word.startswith("data.")]
    if name != "a Parquet struct column holding a list":  # a type, not a bound
        assert RAISE.format(key=keys[0]) in message, message
    assert len(message) < 1_000, f"{len(message)} characters of error"


def test_the_refusal_is_a_data_error_in_process(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    long_csv_cell(path)
    with pytest.raises(
        DataError, match=r"line 3, column 'text' holds 200,000 .*max_cell_chars is 100:"
    ):
        load_table(str(path), _data(max_cell_chars=100))
    assert len(load_table(str(path), _data(max_cell_chars=200_000))) == 2


def test_the_bounds_leave_real_data_alone(tmp_path: Path) -> None:
    """The shipped BANKING77 data, chat records and a list column load with the defaults."""
    for name in ("train.csv", "test.csv"):
        assert len(load_table(f"include/data/banking77/{name}")) > 3000
    chats = tmp_path / "chats.parquet"
    long_parquet_chat_message(chats)
    assert len(load_table(str(chats), _data(max_cell_chars=200_000))) == 3
    choices = tmp_path / "choices.parquet"
    pq.write_table(pa.table({"question": ["q"], "choices": [["a", "b"]], "n": [1]}), choices)
    assert load_table(str(choices))["choices"].iloc[0].tolist() == ["a", "b"]


def _data(**bounds: int) -> DataConfig:
    return DataConfig(train="train.csv", evaluation="test.csv", labels=["a"], **bounds)


# -- through the CLI: exit 2 and the message -----------------------------------------------------


def validate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(FMOPS), "data", "validate", *args], tmp_path / "home")


def test_the_cli_refuses_a_hostile_train_file_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    million_column_header(path)
    result = validate(tmp_path, "--config", str(CONFIGS_DIR / "local.yaml"), "--train", str(path))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"{path}: 1,000,000 columns in its header; data.max_columns is 1,000" in result.stderr


def test_the_cli_applies_the_configured_bounds(tmp_path: Path) -> None:
    """data.max_file_bytes from the config refuses the shipped 820 KB training file."""
    config = yaml.safe_load((CONFIGS_DIR / "local.yaml").read_text())
    config["data"]["max_file_bytes"] = 100_000
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    result = validate(tmp_path, "--config", str(path))
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-2000:])
    assert "include/data/banking77/train.csv: " in result.stderr, result.stderr[-2000:]
    assert "data.max_file_bytes is 100,000" in result.stderr, result.stderr[-2000:]
