"""Loading datasets and staging the job inputs.

Datasets are tables (CSV, JSON Lines or Parquet) named by a path relative to the project, an
absolute path or a ``file://`` URI. Each file is checked against the config's bounds (``Limits``:
size, line length, columns, cell length, rows) before its content is expanded: the size from
``stat`` or S3, CSV and JSON Lines line by bounded line, Parquet from its footer and with its text
read as dictionaries. Staging writes the training, validation and evaluation channels once,
under a content-addressed folder (``.fmops/datasets/<digest>/``), and hands their URIs on: tasks
pass URIs through XCom, never data.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

from fmops.paths import resolve_path, state_dir

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from fmops.config import DataConfig

log = logging.getLogger(__name__)

READERS = {".csv": "read_csv", ".jsonl": "read_json", ".parquet": "read_parquet"}

# Every refusal of a bound: the file, what was found, the config key, and how to raise it.
OVER_LIMIT = (
    "{uri}: {found}; {key} is {limit:,}: fix the file, or raise {key} in the pipeline config if "
    "it is meant to be this large"
)
SUPPORTED_PARQUET_TYPES = (
    "text, numbers, booleans or dates, a list of them, or chat messages as a list of records "
    "of them (list<struct<role: string, content: string>>)"
)


class DataError(ValueError):
    """A dataset cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Limits:
    """The bounds checked on every data file before its content is expanded, with the config
    keys they come from."""

    max_file_bytes: int
    max_line_bytes: int
    max_columns: int
    max_cell_chars: int
    max_rows: int

    KEYS: ClassVar[dict[str, str]] = {
        "max_file_bytes": "data.max_file_bytes",
        "max_line_bytes": "data.max_line_bytes",
        "max_columns": "data.max_columns",
        "max_cell_chars": "data.max_cell_chars",
        "max_rows": "data.checks.size.max_rows",
    }

    @classmethod
    def of(cls, data: DataConfig | None = None) -> Limits:
        """The config's bounds; without one, the config's defaults."""
        from fmops.config import DataConfig

        if data is None:  # the defaults, without the fields that have none
            data = DataConfig.model_construct()
        return cls(
            max_file_bytes=data.max_file_bytes,
            max_line_bytes=data.max_line_bytes,
            max_columns=data.max_columns,
            max_cell_chars=data.max_cell_chars,
            max_rows=data.checks.size.max_rows,
        )

    def refuse(self, uri: str, name: str, found: str) -> DataError:
        return DataError(
            OVER_LIMIT.format(uri=uri, found=found, key=self.KEYS[name], limit=getattr(self, name))
        )


def open_data(uri: str, limits: Limits | None = None) -> BinaryIO:
    """The file as a binary stream, from a local path, ``file://`` or ``s3://`` (boto3's
    credential chain); a file larger than ``max_file_bytes`` is refused before it is read."""
    limits = limits or Limits.of()
    if uri.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            response = boto3.client("s3").get_object(Bucket=bucket, Key=key)
            size = response["ContentLength"]
            if size > limits.max_file_bytes:
                response["Body"].close()
                raise limits.refuse(uri, "max_file_bytes", f"{size:,} bytes")
            return io.BytesIO(response["Body"].read())
        except ClientError as err:
            raise DataError(
                f"{uri}: cannot be read from S3 ({err}); check the bucket, the key "
                "and the credentials"
            ) from None
        except BotoCoreError as err:
            raise DataError(f"{uri}: cannot reach S3 ({err})") from None
    if "://" in uri and not uri.startswith("file://"):
        raise DataError(f"{uri}: unsupported URI scheme; use a path, file:// or s3://")
    path = resolve_path(uri)
    if not path.is_file():
        raise DataError(f"{uri}: no such file ({path}); fix data.train / data.evaluation")
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise limits.refuse(uri, "max_file_bytes", f"{size:,} bytes")
    return path.open("rb")


def read_bytes(uri: str, limits: Limits | None = None) -> bytes:
    """The file's bytes, within ``max_file_bytes`` (see ``open_data``)."""
    with open_data(uri, limits) as stream:
        return stream.read()


def load_table(uri: str, data: DataConfig | None = None) -> pd.DataFrame:
    """A dataset as a dataframe of text; bytes that are not UTF-8 are kept (surrogateescape) so
    that validation can report them instead of failing on them.

    The file is refused, before its content is expanded, when it is over one of the bounds of
    ``data`` (the config's defaults without it): see ``Limits``.
    """
    import pandas as pd

    limits = Limits.of(data)
    suffix = "." + uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    if suffix not in READERS:
        raise DataError(
            f"{uri}: unsupported format {suffix or '(no extension)'!r}; use one of "
            f"{sorted(READERS)}"
        )
    with open_data(uri, limits) as stream:
        try:
            if suffix == ".parquet":
                _check_parquet(uri, stream, limits)
                stream.seek(0)
                return pd.read_parquet(stream)
            if suffix == ".jsonl":
                return _read_jsonl(uri, stream, limits)
            _check_csv(uri, stream, limits)
            stream.seek(0)
            # Text stays text (object dtype: surrogates survive): no "NA" -> NaN or "1" -> int
            # guessing, and empty cells stay empty strings.
            return pd.read_csv(
                stream,
                dtype=object,
                keep_default_na=False,
                encoding="utf-8",
                encoding_errors="surrogateescape",
            )
        except DataError:
            raise
        except (ValueError, OSError) as err:
            raise DataError(f"{uri}: cannot be read as {suffix} ({err}); fix the file") from None


def file_digest(uri: str) -> str:
    with open_data(uri) as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


# -- bounds checked before a file's content is expanded ------------------------------------------


class _Lines:
    """A text file's lines, each read with a bounded ``readline``: the csv and json modules take
    whole lines, so a line of any length would be in memory before they could refuse it."""

    def __init__(self, uri: str, stream: BinaryIO, limits: Limits):
        self.uri, self.stream, self.limits = uri, stream, limits
        self.number = 0  # of the last line read

    def read(self) -> bytes:
        """The next line, ``max_line_bytes`` + 1 bytes at most; b"" at the end."""
        line = self.stream.readline(self.limits.max_line_bytes + 1)
        self.number += bool(line)
        return line

    def check(self, line: bytes) -> None:
        if len(line) > self.limits.max_line_bytes and not line.endswith(b"\n"):
            raise self.limits.refuse(
                self.uri, "max_line_bytes", f"line {self.number:,} is longer than the limit"
            )

    def __iter__(self) -> Iterator[str]:
        while line := self.read():
            self.check(line)
            yield line.decode("utf-8", errors="surrogateescape")


def _check_csv(uri: str, stream: BinaryIO, limits: Limits) -> None:
    """Columns, line and cell lengths and rows, with the csv module over bounded lines: the
    header is counted before any row is parsed, and no cell is read past its limit."""
    import csv

    lines = _Lines(uri, stream, limits)
    first = lines.read()
    # Commas outside quotes (a doubled quote toggles twice), counted rather than parsed: csv
    # would build every name of a million-column header before it could be refused.
    columns = sum(part.count(b",") for part in first.split(b'"')[::2]) + 1
    if columns > limits.max_columns:
        at_least = "" if first.endswith(b"\n") else "at least "
        raise limits.refuse(uri, "max_columns", f"{at_least}{columns:,} columns in its header")
    lines.check(first)
    # Past max_line_bytes characters a cell spans several lines; csv stops it there.
    previous = csv.field_size_limit(limits.max_line_bytes)
    try:
        reader = csv.reader(
            itertools.chain([first.decode("utf-8", errors="surrogateescape")], lines)
        )
        header: list[str] = []
        rows, start = 0, 1
        try:
            for record in reader:
                if not record:  # a blank line, which pandas skips too
                    start = lines.number + 1
                    continue
                if not header:
                    header = record
                else:
                    rows += 1
                    if rows > limits.max_rows:
                        raise limits.refuse(
                            uri, "max_rows", f"more rows than the limit (by line {start:,})"
                        )
                if len(record) > limits.max_columns:
                    raise limits.refuse(
                        uri, "max_columns", f"line {start:,} has {len(record):,} fields"
                    )
                if max(map(len, record)) <= limits.max_cell_chars:
                    start = lines.number + 1
                    continue
                for index, cell in enumerate(record):
                    if len(cell) > limits.max_cell_chars:
                        name = header[index] if index < len(header) else f"#{index + 1}"
                        raise limits.refuse(
                            uri,
                            "max_cell_chars",
                            f"the record at line {start:,}, column {name!r} holds "
                            f"{len(cell):,} characters",
                        )
                start = lines.number + 1
        except csv.Error as err:
            if "field limit" not in str(err):
                raise ValueError(f"line {lines.number}: {err}") from None
            raise limits.refuse(
                uri,
                "max_cell_chars",
                f"the record at line {start:,} holds a cell of more than "
                f"{limits.max_line_bytes:,} characters",
            ) from None
    finally:
        csv.field_size_limit(previous)


def _read_jsonl(uri: str, stream: BinaryIO, limits: Limits) -> pd.DataFrame:
    """The records, read line by bounded line: rows, keys and text lengths are counted as they
    come, so a file over a bound is refused at the first line past it."""
    import pandas as pd

    records = []
    columns: set[str] = set()
    lines = _Lines(uri, stream, limits)
    # json.loads keeps undecodable bytes as surrogates; pandas' JSON reader cannot.
    for line in lines:
        number = lines.number
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except RecursionError:
            raise ValueError(f"line {number} nests too deeply") from None
        if not isinstance(record, dict):
            raise ValueError(
                f"line {number} is a JSON {type(record).__name__}, not an object with "
                "one field per column"
            )
        if len(records) == limits.max_rows:
            raise limits.refuse(uri, "max_rows", f"more rows than the limit (by line {number:,})")
        columns.update(record)
        if len(columns) > limits.max_columns:
            raise limits.refuse(
                uri, "max_columns", f"{len(columns):,} distinct keys by line {number:,}"
            )
        for key, value in record.items():
            longest = _longest_text(value)
            if longest > limits.max_cell_chars:
                raise limits.refuse(
                    uri,
                    "max_cell_chars",
                    f"line {number:,}, column {key!r} holds a text of {longest:,} characters",
                )
        records.append(record)
    return pd.DataFrame.from_records(records) if records else pd.DataFrame()


def _longest_text(value: Any) -> int:
    """The longest string in a JSON value (a chat cell holds one per message)."""
    longest, pending = 0, [value]
    while pending:  # a loop, not recursion: json.loads allows deeper values than Python's stack
        item = pending.pop()
        if isinstance(item, str):
            longest = max(longest, len(item))
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return longest


def _check_parquet(uri: str, stream: BinaryIO, limits: Limits) -> None:
    """Rows, columns, types and decompressed size from the footer, before any row group is
    read; then text lengths and total size with the text read as dictionaries (each distinct
    value once), so that a small file of repeated values is refused before it is expanded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        footer = pq.ParquetFile(stream)  # reads the footer only
        meta = footer.metadata
        if meta.num_rows > limits.max_rows:
            raise limits.refuse(uri, "max_rows", f"{meta.num_rows:,} rows")
        schema = footer.schema_arrow
        if len(schema) > limits.max_columns:
            raise limits.refuse(uri, "max_columns", f"{len(schema):,} columns")
        for field in schema:
            if not _supported(field.type):
                raise DataError(
                    f"{uri}: column {field.name!r} has type {field.type}; a column must hold "
                    f"{SUPPORTED_PARQUET_TYPES}: flatten the column or write it as JSON text"
                )
        # Decompressed pages, and 8 bytes per value read (the indices of dictionary text).
        footprint = sum(
            chunk.total_uncompressed_size + 8 * chunk.num_values
            for group in range(meta.num_row_groups)
            for chunk in map(meta.row_group(group).column, range(meta.num_columns))
        )
        if footprint > limits.max_file_bytes:
            raise limits.refuse(
                uri,
                "max_file_bytes",
                f"its columns take about {footprint:,} bytes once decompressed",
            )
        text = [
            column.path
            for column in map(footer.schema.column, range(meta.num_columns))
            if column.physical_type == "BYTE_ARRAY"
        ]
        stream.seek(0)
        dictionaries = pq.ParquetFile(stream, read_dictionary=text)
        decoded, first_row = 0, 1
        for group in range(meta.num_row_groups):
            table = dictionaries.read_row_group(group)
            for name, column in zip(table.column_names, table.columns, strict=True):
                row = first_row
                for chunk in column.chunks:
                    for chars, size, rows in _text_lengths(chunk, None):
                        _check_cells(uri, limits, name, chars, rows, row)
                        decoded += size
                        if decoded > limits.max_file_bytes:
                            raise limits.refuse(
                                uri,
                                "max_file_bytes",
                                f"its text takes at least {decoded:,} bytes once decoded",
                            )
                    row += len(chunk)
            first_row += table.num_rows
    except pa.ArrowException as err:
        raise ValueError(str(err)) from None


def _supported(kind: pa.DataType) -> bool:
    """Flat values, a list of them, or a list of records of them (chat messages)."""
    import pyarrow as pa

    nested = pa.types.is_nested
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not nested(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        item = kind.value_type
        if pa.types.is_struct(item):
            return not any(nested(item.field(i).type) for i in range(item.num_fields))
        return not nested(item)
    return False


def _text_lengths(
    array: pa.Array, rows: pa.Array | None
) -> Iterator[tuple[pa.Array, int, pa.Array | None]]:
    """For each text leaf of a column: the characters of each value, the bytes of all of them
    decoded, and the row of each value (None: the value's own index), computed on the
    dictionary and its indices without decoding the values."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        parents = pc.list_parent_indices(array)
        yield from _text_lengths(array.flatten(), parents if rows is None else rows.take(parents))
        return
    if pa.types.is_struct(array.type):
        for child in array.flatten():
            yield from _text_lengths(child, rows)
        return
    values, indices = (
        (array.dictionary, array.indices) if pa.types.is_dictionary(array.type) else (array, None)
    )
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        chars = pc.utf8_length(values)
    elif pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        chars = pc.binary_length(values)
    else:
        return
    sizes = pc.binary_length(values)
    if indices is not None:
        chars, sizes = chars.take(indices), sizes.take(indices)
    yield chars, pc.sum(sizes).as_py() or 0, rows


def _check_cells(
    uri: str, limits: Limits, name: str, chars: pa.Array, rows: pa.Array | None, first_row: int
) -> None:
    import pyarrow.compute as pc

    longest = pc.max(chars).as_py()
    if longest is None or longest <= limits.max_cell_chars:
        return
    at = pc.index(pc.greater(chars, limits.max_cell_chars), True).as_py()
    row = first_row + (at if rows is None else rows[at].as_py())
    raise limits.refuse(
        uri,
        "max_cell_chars",
        f"row {row:,}, column {name!r} holds a text of {chars[at].as_py():,} characters",
    )


@dataclass(frozen=True)
class StagedData:
    digest: str
    train_uri: str
    validation_uri: str
    evaluation_uri: str
    train_rows: int
    validation_rows: int
    evaluation_rows: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def stage(
    data: DataConfig,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    labels: list[str],
    digests: dict[str, str],
    scenarios: dict[str, Any] | None = None,
    write_scenarios: Callable[[Path], Any] | None = None,
) -> StagedData:
    """Sample, split and write the job channels; the same inputs always give the same folder.

    Classification: a stratified validation hold-out of ``validation_fraction`` per label, then
    at most ``samples_per_label`` training rows per label (CSV). Instruction data: a random
    hold-out, written as JSON Lines with the original columns.
    """
    recipe = {
        "train": digests["train"],
        "evaluation": digests["evaluation"],
        "task": data.task,
        "labels": labels,
        "columns": [data.text_column, data.label_column],
        "samples_per_label": data.samples_per_label,
        "validation_fraction": data.validation_fraction,
        "evaluation_sample_size": data.evaluation_sample_size,
        "seed": data.seed,
        **({"scenarios": scenarios} if scenarios else {}),
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    root = state_dir() / "datasets" / digest
    if data.task == "classification":
        columns = [data.text_column, data.label_column]
        shuffled = train[columns].sample(frac=1.0, random_state=data.seed)
        # Each label gives the same fraction (at least one row) to validation.
        grouped = shuffled.groupby(data.label_column, sort=False)
        rank = grouped.cumcount()
        sizes = grouped[data.label_column].transform("size")
        held = (sizes * data.validation_fraction).clip(lower=1).astype(int)
        validation = shuffled[rank < held]
        training = shuffled[rank >= held]
        if data.samples_per_label:
            training = training.groupby(data.label_column, sort=False).head(data.samples_per_label)
        held_out = evaluation[columns]
    else:
        shuffled = train.sample(frac=1.0, random_state=data.seed)
        cut = max(1, int(len(shuffled) * data.validation_fraction))
        validation, training, held_out = shuffled[:cut], shuffled[cut:], evaluation
    if data.evaluation_sample_size and data.evaluation_sample_size < len(held_out):
        held_out = held_out.sample(n=data.evaluation_sample_size, random_state=data.seed)
    if not (root / "done").exists():
        for name, frame in (
            ("train", training),
            ("validation", validation),
            ("evaluation", held_out),
        ):
            folder = root / name
            folder.mkdir(parents=True, exist_ok=True)
            if data.task == "classification":
                frame.to_csv(folder / f"{name}.csv", index=False, errors="replace")
                (folder / "labels.json").write_text(json.dumps(labels))
            else:
                frame.to_json(
                    folder / f"{name}.jsonl", orient="records", lines=True, force_ascii=False
                )
        if write_scenarios is not None:
            write_scenarios(root / "evaluation")
        (root / "recipe.json").write_text(json.dumps(recipe, indent=1))
        (root / "done").touch()
        log.info(
            "staged %s training, %s validation, %s evaluation rows in %s",
            len(training),
            len(validation),
            len(held_out),
            root,
        )
    else:
        log.info("staged data %s already exists (same data and sampling): reusing it", digest)
    return StagedData(
        digest=digest,
        train_uri=f"file://{root / 'train'}",
        validation_uri=f"file://{root / 'validation'}",
        evaluation_uri=f"file://{root / 'evaluation'}",
        train_rows=len(training),
        validation_rows=len(validation),
        evaluation_rows=len(held_out),
    )
