"""Loading datasets and staging the job inputs.

Datasets are tables (CSV, JSON Lines or Parquet) named by a path relative to the project, an
absolute path or a ``file://`` URI. Staging writes the training, validation and evaluation
channels once, under a content-addressed folder (``.fmops/datasets/<digest>/``), and hands their
URIs on: tasks pass URIs through XCom, never data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.paths import resolve_path, state_dir

if TYPE_CHECKING:
    import pandas as pd

    from fmops.config import DataConfig

log = logging.getLogger(__name__)

READERS = {".csv": "read_csv", ".jsonl": "read_json", ".parquet": "read_parquet"}


class DataError(ValueError):
    """A dataset cannot be read; the message names the file and the fix."""


def read_bytes(uri: str) -> bytes:
    """The file's bytes from a local path, ``file://`` or ``s3://`` (boto3's credential chain)."""
    if uri.startswith("s3://"):
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri[len("s3://") :].partition("/")
        try:
            return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
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
    return path.read_bytes()


def load_table(uri: str) -> pd.DataFrame:
    """A dataset as a dataframe of text; bytes that are not UTF-8 are kept (surrogateescape) so
    that validation can report them instead of failing on them."""
    import io

    import pandas as pd

    suffix = "." + uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    if suffix not in READERS:
        raise DataError(
            f"{uri}: unsupported format {suffix or '(no extension)'!r}; use one of "
            f"{sorted(READERS)}"
        )
    raw = read_bytes(uri)
    try:
        if suffix == ".parquet":
            return pd.read_parquet(io.BytesIO(raw))
        if suffix == ".jsonl":
            # json.loads keeps undecodable bytes as surrogates; pandas' JSON reader cannot.
            text = raw.decode("utf-8", errors="surrogateescape")
            records = []
            for number, line in enumerate(text.splitlines(), start=1):
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
                records.append(record)
            return pd.DataFrame.from_records(records) if records else pd.DataFrame()
        # Text stays text (object dtype: surrogates survive): no "NA" -> NaN or "1" -> int
        # guessing, and empty cells stay empty strings.
        return pd.read_csv(
            io.BytesIO(raw),
            dtype=object,
            keep_default_na=False,
            encoding="utf-8",
            encoding_errors="surrogateescape",
        )
    except (ValueError, OSError) as err:
        raise DataError(f"{uri}: cannot be read as {suffix} ({err}); fix the file") from None


def file_digest(uri: str) -> str:
    return hashlib.sha256(read_bytes(uri)).hexdigest()


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
