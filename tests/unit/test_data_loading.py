"""Loading datasets: the three formats read to the same data, errors name the file, S3 works."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from fmops.data.loading import DataError, file_digest, load_table, read_bytes
from fmops.data.validation import dataset_digest

FORMATS = ["csv", "jsonl", "parquet"]


def sample() -> pd.DataFrame:
    """Text that trips naive readers: commas, quotes, new lines, non-ASCII, number-like and
    NA-like strings, an empty string."""
    return pd.DataFrame(
        {
            "text": [
                "my card, the new one, was declined",
                'she said "hello" twice',
                "first line\nsecond line",
                "café ✓ ünïcödé — 日本語",
                "00123",
                "NA",
                "null",
                "",
                "1e5",
                "  leading and trailing spaces  ",
            ],
            "label": [
                "card_declined",
                "greeting",
                "multi_line",
                "unicode",
                "number_like",
                "na_like",
                "null_like",
                "empty",
                "float_like",
                "spaces",
            ],
        }
    )


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_reads_back_the_same_text(fmt: str, tmp_path: Path) -> None:
    frame = sample()
    loaded = load_table(str(write(frame, tmp_path / f"data.{fmt}")))
    assert list(loaded.columns) == ["text", "label"]
    assert loaded["text"].tolist() == frame["text"].tolist()
    assert loaded["label"].tolist() == frame["label"].tolist()
    assert dataset_digest(loaded) == dataset_digest(frame)


def test_csv_jsonl_and_parquet_give_the_same_digest(tmp_path: Path) -> None:
    frame = sample()
    digests = {
        fmt: dataset_digest(load_table(str(write(frame, tmp_path / f"data.{fmt}"))))
        for fmt in FORMATS
    }
    assert len(set(digests.values())) == 1, digests
    # The file bytes differ: the digest is of the data, not of the file.
    assert len({file_digest(str(tmp_path / f"data.{fmt}")) for fmt in FORMATS}) == 3


def test_file_uri_and_relative_paths_read_the_same_file(tmp_path: Path) -> None:
    path = write(sample(), tmp_path / "data.csv")
    assert dataset_digest(load_table(f"file://{path}")) == dataset_digest(load_table(str(path)))
    shipped = load_table("include/data/banking77/test.csv")  # relative to the project root
    assert {"text", "category"} <= set(shipped.columns)
    assert len(shipped) == 3080


def test_the_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = write(sample(), tmp_path / "data.csv").rename(tmp_path / "DATA.CSV")
    assert dataset_digest(load_table(str(path))) == dataset_digest(sample())


def test_the_digest_changes_when_a_value_changes() -> None:
    frame = sample()
    changed = frame.copy()
    changed.loc[3, "text"] = "cafe ✓ ünïcödé — 日本語"
    relabelled = frame.copy()
    relabelled.loc[0, "label"] = "greeting"
    assert dataset_digest(changed) != dataset_digest(frame)
    assert dataset_digest(relabelled) != dataset_digest(frame)
    assert dataset_digest(frame.copy()) == dataset_digest(frame)


def test_the_digest_depends_on_rows_and_names_but_not_on_column_order() -> None:
    frame = sample()
    assert dataset_digest(frame[["label", "text"]]) == dataset_digest(frame)
    assert dataset_digest(frame.iloc[::-1]) != dataset_digest(frame)
    assert dataset_digest(frame.rename(columns={"label": "intent"})) != dataset_digest(frame)
    assert dataset_digest(frame.iloc[:-1]) != dataset_digest(frame)
    # A value moved to the neighbouring cell is a different dataset.
    moved = pd.DataFrame({"a": ["x y", "z"]})
    assert dataset_digest(moved) != dataset_digest(pd.DataFrame({"a": ["x", "y z"]}))


def test_the_digest_tells_null_from_empty() -> None:
    assert dataset_digest(pd.DataFrame({"a": ["", "x"]})) != dataset_digest(
        pd.DataFrame({"a": [None, "x"]})
    )


@pytest.mark.parametrize("name", ["data.xlsx", "data.txt", "data.json", "data", "data.csv.gz"])
def test_an_unsupported_extension_raises_naming_the_file(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text("text,label\nhello,greeting\n")
    with pytest.raises(DataError) as raised:
        load_table(str(path))
    message = str(raised.value)
    assert str(path) in message
    assert "unsupported format" in message
    assert ".csv" in message and ".jsonl" in message and ".parquet" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_file_raises_naming_the_file(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"nowhere.{fmt}"
    with pytest.raises(DataError) as raised:
        load_table(str(path))
    assert str(path) in str(raised.value)
    assert "no such file" in str(raised.value)
    with pytest.raises(DataError, match="no such file"):
        read_bytes(str(path))


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "train.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="no such file"):
        load_table(str(folder))


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_file_that_is_not_its_format_raises_naming_the_file(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"broken.{fmt}"
    path.write_bytes(b"this is not a " + fmt.encode() + b" file\n{{{")
    with pytest.raises(DataError) as raised:
        load_table(str(path))
    assert str(path) in str(raised.value)
    assert f"cannot be read as .{fmt}" in str(raised.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (b'{"text": "hi", "label": "a"}\n42\n', "line 2 is a JSON int, not an object"),
        (b'["text", "label"]\n', "line 1 is a JSON list, not an object"),
        (b'"just a string"\n', "line 1 is a JSON str, not an object"),
        (b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", "line 1 nests too deeply"),
    ],
)
def test_jsonl_lines_that_are_not_records_are_named(tmp_path: Path, lines, message) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(lines)
    with pytest.raises(DataError) as raised:
        load_table(str(path))
    assert str(path) in str(raised.value) and message in str(raised.value)


def test_an_unsupported_uri_scheme_raises() -> None:
    with pytest.raises(DataError, match="unsupported URI scheme"):
        load_table("https://example.com/data.csv")


# -- S3, with moto's in-process mock -------------------------------------------------------------


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch):
    """A mocked S3 bucket "fmops-test-data" (no network, fake credentials)."""
    import moto

    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with moto.mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="fmops-test-data")
        yield client


def test_s3_csv_reads_into_the_same_frame(s3_bucket) -> None:
    frame = sample()
    s3_bucket.put_object(
        Bucket="fmops-test-data", Key="banking/train.csv", Body=frame.to_csv(index=False).encode()
    )
    loaded = load_table("s3://fmops-test-data/banking/train.csv")
    assert loaded["text"].tolist() == frame["text"].tolist()
    assert loaded["label"].tolist() == frame["label"].tolist()
    assert dataset_digest(loaded) == dataset_digest(frame)


def test_s3_parquet_reads_into_the_same_frame(s3_bucket) -> None:
    frame = sample()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    s3_bucket.put_object(Bucket="fmops-test-data", Key="train.parquet", Body=buffer.getvalue())
    assert dataset_digest(load_table("s3://fmops-test-data/train.parquet")) == dataset_digest(frame)


def test_s3_missing_key_raises_naming_the_uri(s3_bucket) -> None:
    uri = "s3://fmops-test-data/banking/missing.csv"
    with pytest.raises(DataError) as raised:
        load_table(uri)
    assert uri in str(raised.value)
    assert "cannot be read from S3" in str(raised.value)


def test_s3_missing_bucket_raises_naming_the_uri(s3_bucket) -> None:
    uri = "s3://no-such-fmops-bucket/train.csv"
    with pytest.raises(DataError) as raised:
        load_table(uri)
    assert uri in str(raised.value)
