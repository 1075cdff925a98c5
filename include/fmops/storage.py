"""Reading small artifacts (JSON reports, logs) by URI, whatever the target stored them in."""

from __future__ import annotations

import json
from typing import Any

from fmops.paths import resolve_path


def read_text(uri: str) -> str:
    if uri.startswith("s3://"):
        raise NotImplementedError(
            f"{uri}: reading from S3 arrives with the sagemaker target; the local target stores "
            "artifacts under .fmops/ (file:// URIs)"
        )
    return resolve_path(uri).read_text()


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])
