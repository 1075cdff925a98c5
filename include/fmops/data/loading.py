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
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from fmops.paths import resolve_path, state_dir

if TYPE_CHECKING:
    import pandas as pd

    from fmops.config import DataConfig

log = logging.getLogger(__name__)

READERS = {".csv": "read_csv", ".jsonl": "read_json", ".parquet": "read_parquet"}


class DataError(ValueError):
    """A dataset cannot be read; the message names the file and the fix."""


def load_table(uri: str) -> pd.DataFrame:
    import pandas as pd

    if "://" in uri and not uri.startswith("file://"):
        raise DataError(
            f"{uri}: the local target reads local paths and file:// URIs only; copy the file "
            "into the project or use a file:// URI"
        )
    path = resolve_path(uri)
    if not path.exists():
        raise DataError(f"{uri}: no such file ({path}); fix data.train/data.evaluation")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{uri}: unsupported format {path.suffix!r}; use one of {sorted(READERS)}")
    kwargs = {"lines": True} if reader == "read_json" else {}
    if reader == "read_csv":
        # Text stays text: no "NA" -> NaN or "1" -> int guessing; empty cells stay empty strings.
        kwargs = {"dtype": str, "keep_default_na": False}
    try:
        return getattr(pd, reader)(path, **kwargs)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{uri}: cannot be read as {path.suffix} ({err})") from None


def file_digest(uri: str) -> str:
    digest = hashlib.sha256()
    with resolve_path(uri).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    data: DataConfig, train: pd.DataFrame, evaluation: pd.DataFrame, labels: list[str]
) -> StagedData:
    """Sample, split and write the job channels; the same inputs always give the same folder."""
    recipe = {
        "train": file_digest(data.train),
        "evaluation": file_digest(data.evaluation),
        "labels": labels,
        "columns": [data.text_column, data.label_column],
        "samples_per_label": data.samples_per_label,
        "validation_fraction": data.validation_fraction,
        "evaluation_sample_size": data.evaluation_sample_size,
        "seed": data.seed,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    root = state_dir() / "datasets" / digest
    columns = [data.text_column, data.label_column]
    shuffled = train[columns].sample(frac=1.0, random_state=data.seed)
    # Stratified hold-out: each label gives the same fraction (at least one row) to validation.
    grouped = shuffled.groupby(data.label_column, sort=False)
    rank = grouped.cumcount()
    sizes = grouped[data.label_column].transform("size")
    held = (sizes * data.validation_fraction).clip(lower=1).astype(int)
    validation = shuffled[rank < held]
    training = shuffled[rank >= held]
    if data.samples_per_label:
        training = training.groupby(data.label_column, sort=False).head(data.samples_per_label)
    held_out = evaluation[columns]
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
            frame.to_csv(folder / f"{name}.csv", index=False)
            (folder / "labels.json").write_text(json.dumps(labels))
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
        log.info("staged data %s already exists (same files and sampling): reusing it", digest)
    return StagedData(
        digest=digest,
        train_uri=f"file://{root / 'train'}",
        validation_uri=f"file://{root / 'validation'}",
        evaluation_uri=f"file://{root / 'evaluation'}",
        train_rows=len(training),
        validation_rows=len(validation),
        evaluation_rows=len(held_out),
    )
