"""What the sagemaker target keeps in S3, where, and the uploads that put it there.

Layout under ``s3://<bucket>/<prefix>/``:

- ``code/<sha256>/sourcedir.tar.gz``: the job scripts (``include/scripts/*.py``) packed for the
  training container; ``code/<sha256>/source/<script>``: the same files unpacked, the code input
  of evaluation processing jobs. ``<sha256>`` is the digest of the archive's bytes, so the same
  scripts always land at the same key and an upload of unchanged scripts is skipped;
- ``datasets/<digest>/{train,validation,evaluation}/``: the validated, staged channels (the
  digest is known after ``validate_data``; plans made before show ``<staged-digest>``);
- ``models/<name>/``: a base model's folder, staged for network-isolated jobs (a Hub model's
  name carries its commit, ``fmops.hub_models``);
- ``checkpoints/<job>/``, ``training/<job>/output/model.tar.gz``, ``evaluation/<job>/``.

The archive is deterministic: files sorted by name, ustar headers with a fixed mtime, owner
root (0/0) and mode 0644, gzip without a name or timestamp at a fixed level. The same scripts
give the same bytes with the same zlib (a zlib upgrade may change the bytes, and so the key:
the scripts are then uploaded once more, nothing breaks).

Uploads take an S3 client (boto3's, or ``S3Hook(aws_conn_id).get_conn()`` in a task), run at run
time, and are idempotent: an object whose ``sha256`` metadata matches is not sent again.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmops.base_models import PACKAGED_MODELS, is_hub, parse_hub
from fmops.paths import SCRIPTS_DIR
from fmops.plan_text import STAGED_DIGEST_PLACEHOLDER

if TYPE_CHECKING:
    from fmops.sagemaker.settings import SageMakerSettings

SOURCEDIR = "sourcedir.tar.gz"
CHANNELS = ("train", "validation", "evaluation")
# 1980-01-01T00:00:00Z, the zip epoch: tools that distrust 1970 timestamps accept it.
FIXED_MTIME = 315_532_800
SHA_METADATA = "sha256"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SourceBundle:
    """The job scripts as one deterministic ``sourcedir.tar.gz``."""

    archive: bytes
    files: tuple[tuple[str, bytes], ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.files]


def pack_sourcedir(folder: Path = SCRIPTS_DIR) -> SourceBundle:
    """The ``*.py`` files of ``folder`` (as the training cache digests them), packed."""
    files = tuple((p.name, p.read_bytes()) for p in sorted(folder.glob("*.py")))
    if not files:
        raise FileNotFoundError(f"no job scripts (*.py) in {folder}")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = FIXED_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return SourceBundle(packed.getvalue(), files)


def _slug(text: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9.]", "-", text.lower())).strip("-.") or "model"


def model_name(base_model: str, folder: Path) -> str:
    """The S3 name of a base model: a packaged model's name; a Hub model's id and commit (its
    snapshot folder is named by the commit); else the folder's name and a short fingerprint of
    its files (names and sizes, and config.json), so two folders of the same name never share a
    key."""
    if base_model in PACKAGED_MODELS:
        return base_model
    if is_hub(base_model):
        return f"{_slug(parse_hub(base_model).repo_id)}-{folder.name[:12]}"
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\0".encode())
    config = folder / "config.json"
    if config.exists():
        digest.update(config.read_bytes())
    return f"{_slug(folder.name)}-{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Layout:
    """The S3 URIs of one config's bucket and prefix."""

    bucket: str
    prefix: str

    @classmethod
    def of(cls, settings: SageMakerSettings) -> Layout:
        return cls(settings.bucket, settings.prefix.strip("/"))

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, self.prefix, *parts])

    def code_prefix(self, bundle: SourceBundle) -> str:
        return self.uri("code", bundle.sha256)

    def sourcedir_uri(self, bundle: SourceBundle) -> str:
        return self.uri("code", bundle.sha256, SOURCEDIR)

    def source_uri(self, bundle: SourceBundle) -> str:
        return self.uri("code", bundle.sha256, "source") + "/"

    def dataset_uris(self, digest: str | None) -> dict[str, str]:
        digest = digest or STAGED_DIGEST_PLACEHOLDER
        return {
            "digest": digest,
            **{f"{c}_uri": self.uri("datasets", digest, c) + "/" for c in CHANNELS},
        }

    def model_uri(self, name: str) -> str:
        return self.uri("models", name) + "/"

    def checkpoint_uri(self, job: str) -> str:
        return self.uri("checkpoints", job) + "/"

    def training_output(self) -> str:
        return self.uri("training") + "/"

    def model_artifacts(self, job: str) -> str:
        """Where SageMaker puts a training job's model: ``<S3OutputPath><job>/output/``."""
        return self.uri("training", job, "output", "model.tar.gz")

    def evaluation_output(self, job: str) -> str:
        return self.uri("evaluation", job) + "/"


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


# -- uploads (run time) --------------------------------------------------------------------------


def _encryption(kms_key_id: str | None) -> dict[str, str]:
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id else {}


def _stored_sha(s3: Any, bucket: str, key: str) -> str | None:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("Metadata", {}).get(SHA_METADATA)


def put_bytes(
    s3: Any, uri: str, data: bytes, kms_key_id: str | None = None, content_type: str = ""
) -> bool:
    """Upload ``data`` to ``uri`` unless an object with the same sha256 is there; True if sent."""
    bucket, key = split_uri(uri)
    sha = hashlib.sha256(data).hexdigest()
    if _stored_sha(s3, bucket, key) == sha:
        return False
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        Metadata={SHA_METADATA: sha},
        **({"ContentType": content_type} if content_type else {}),
        **_encryption(kms_key_id),
    )
    return True


def upload_code(
    s3: Any, layout: Layout, bundle: SourceBundle, kms_key_id: str | None = None
) -> dict:
    """Upload the archive and the unpacked scripts to their content-addressed keys."""
    sent = put_bytes(
        s3, layout.sourcedir_uri(bundle), bundle.archive, kms_key_id, "application/gzip"
    )
    for name, data in bundle.files:
        sent |= put_bytes(s3, layout.source_uri(bundle) + name, data, kms_key_id, "text/x-python")
    return {
        "sourcedir_uri": layout.sourcedir_uri(bundle),
        "source_uri": layout.source_uri(bundle),
        "uploaded": sent,
    }


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> Iterator[Path]:
    return (p for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)


def upload_folder(s3: Any, folder: Path, uri: str, kms_key_id: str | None = None) -> list[str]:
    """Upload every file of ``folder`` under the prefix ``uri``; returns the keys sent (files
    already there with the same sha256 are skipped). Large files go as multipart uploads."""
    bucket, prefix = split_uri(uri.rstrip("/") + "/")
    sent = []
    for path in _files(folder):
        key = prefix + path.relative_to(folder).as_posix()
        sha = _file_sha(path)
        if _stored_sha(s3, bucket, key) == sha:
            continue
        s3.upload_file(
            str(path),
            bucket,
            key,
            ExtraArgs={"Metadata": {SHA_METADATA: sha}, **_encryption(kms_key_id)},
        )
        sent.append(key)
    return sent


def stage_dataset(
    s3: Any, layout: Layout, staged: dict[str, Any], kms_key_id: str | None = None
) -> dict[str, Any]:
    """Upload the locally staged channels (``file://`` URIs from validate_data) to S3; returns
    ``staged`` with the S3 URIs in their place."""
    from fmops.paths import resolve_path

    uris = layout.dataset_uris(staged["digest"])
    for channel in CHANNELS:
        upload_folder(
            s3, resolve_path(staged[f"{channel}_uri"]), uris[f"{channel}_uri"], kms_key_id
        )
    return {**staged, **uris}
