"""Reading artifacts (JSON reports, model archives) by URI, whatever the target stored them in.

``file://`` URIs and paths are the local target's; ``s3://`` URIs the sagemaker target's, read
through the amazon provider's ``S3Hook`` with the config's Airflow AWS connection.
"""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fmops.paths import resolve_path

DEFAULT_CONN_ID = "aws_default"


def _s3_parts(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return bucket, key


def _s3_hook(aws_conn_id: str | None) -> Any:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id or DEFAULT_CONN_ID)


def read_text(uri: str, aws_conn_id: str | None = None) -> str:
    if uri.startswith("s3://"):
        bucket, key = _s3_parts(uri)
        return _s3_hook(aws_conn_id).read_key(key, bucket_name=bucket)
    return resolve_path(uri).read_text()


def read_json(uri: str, aws_conn_id: str | None = None) -> Any:
    return json.loads(read_text(uri, aws_conn_id))


def local_file(uri: str, folder: Path, aws_conn_id: str | None = None) -> Path:
    """A local path to the file at ``uri``: itself when local, else downloaded into ``folder``."""
    if not uri.startswith("s3://"):
        return resolve_path(uri)
    bucket, key = _s3_parts(uri)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(key).name
    _s3_hook(aws_conn_id).get_conn().download_file(bucket, key, str(target))
    return target


def s3_identity(uri: str, aws_conn_id: str | None = None) -> dict[str, str]:
    """What identifies the current content of the S3 object at ``uri`` (HeadObject): its
    ``etag``, and its ``version_id`` in a versioned bucket; ``{}`` for a local file."""
    if not uri.startswith("s3://"):
        return {}
    bucket, key = _s3_parts(uri)
    head = _s3_hook(aws_conn_id).get_conn().head_object(Bucket=bucket, Key=key)
    found = {"etag": head.get("ETag"), "version_id": head.get("VersionId")}
    # VersionId "null": written while the bucket was not versioned
    return {k: v for k, v in found.items() if v and v != "null"}


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def jsonable(value: Any) -> Any:
    """``value`` with its dates and datetimes (boto3's descriptions hold them) as ISO strings."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value
