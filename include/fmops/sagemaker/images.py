"""The Hugging Face PyTorch deep learning containers the sagemaker target runs its jobs in.

Training runs in the Hugging Face PyTorch *training* image (GPU only in the SDK's table);
evaluation runs in the Hugging Face PyTorch *inference* image, on a CPU instance by default:
``evaluate.py`` and ``inference.py`` never move tensors to a GPU, the training image has no CPU
variant (the SDK refuses a CPU instance type for it), and the inference image is the runtime
the endpoint serves the model in, so evaluation measures the model where it will run. Its
transformers is newer than the training image's, which is the direction that loads: a model
saved by an older transformers loads in a newer one.

A generative model is served by the Hugging Face LLM image (Text Generation Inference, the SDK's
``huggingface-llm`` table): ``llm_image_problems`` and ``llm_image_uri`` read it the same two
ways. TGI images are GPU only, which every type of the catalog is.

Two ways to read the tables: ``image_problems`` reads the SDK's ``huggingface.json`` as a file
(config checks must not import ``sagemaker``, which creates AWS clients on import);
``image_uri`` calls the SDK's own lookup, ``sagemaker.core.image_uris.retrieve``, which is
offline: it reads the same tables and botocore's endpoint data, and sends nothing.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from fmops.catalog import CatalogError, sdk_gpu_info_path

if TYPE_CHECKING:
    from fmops.sagemaker.settings import ImageSettings, SageMakerSettings

Scope = Literal["training", "inference"]
FRAMEWORK = "huggingface"
TABLE = "huggingface.json"
LLM_FRAMEWORK = "huggingface-llm"
LLM_TABLE = "huggingface-llm.json"
SHOWN = 6  # combinations listed in an error


@lru_cache(maxsize=2)
def _read(table: str) -> dict[str, Any]:
    # The image tables sit beside instance_gpu_info.json in the SDK; found without importing it.
    return json.loads((sdk_gpu_info_path().parent / table).read_text())


def _table() -> dict[str, Any]:
    return _read(TABLE)


def _resolve(aliases: dict[str, str], version: str) -> str:
    return aliases.get(version, version)


def combinations(scope: Scope) -> list[dict[str, Any]]:
    """Every (transformers, pytorch, python) combination the SDK lists for ``scope``, newest
    first, with its processors (cpu/gpu) and regions."""
    table = _table()[scope]
    found = []
    for version, by_framework in table["versions"].items():
        for framework, entry in by_framework.items():
            if not framework.startswith("pytorch") or not isinstance(entry, dict):
                continue
            processors = entry.get("container_version") or {p: None for p in table["processors"]}
            found.append(
                {
                    "transformers_version": version,
                    "pytorch_version": framework.removeprefix("pytorch"),
                    "py_versions": list(entry["py_versions"]),
                    "processors": sorted(processors),
                    "regions": entry["registries"],
                    "repository": entry["repository"],
                }
            )

    def newest(item: dict[str, Any]) -> tuple[tuple[int, ...], ...]:
        return tuple(
            tuple(int(p) for p in item[key].split(".") if p.isdigit())
            for key in ("transformers_version", "pytorch_version")
        )

    return sorted(found, key=newest, reverse=True)


def find(image: ImageSettings, scope: Scope) -> dict[str, Any] | None:
    table = _table()[scope]
    version = _resolve(table.get("version_aliases", {}), image.transformers_version)
    by_framework = table["versions"].get(version)
    if not by_framework:
        return None
    framework = _resolve(by_framework.get("version_aliases", {}), f"pytorch{image.pytorch_version}")
    for item in combinations(scope):
        if (
            item["transformers_version"] == version
            and f"pytorch{item['pytorch_version']}" == framework
            and image.py_version in item["py_versions"]
        ):
            return item
    return None


def _listing(scope: Scope, processor: str | None = None) -> str:
    items = [c for c in combinations(scope) if processor is None or processor in c["processors"]]
    shown = [
        f"transformers {c['transformers_version']} / pytorch {c['pytorch_version']} / "
        f"{'|'.join(c['py_versions'])}"
        for c in items[:SHOWN]
    ]
    return "; ".join(shown)


def image_problems(settings: SageMakerSettings) -> list[str]:
    """Whether both images exist in the SDK's table, for the region and the processor needed."""
    try:
        _table()
    except (CatalogError, OSError) as err:
        return [f"sagemaker.image: the sagemaker SDK's {TABLE} cannot be read ({err})"]
    problems = []
    for key, image, scope, processor in (
        ("image", settings.image, "training", "gpu"),
        ("evaluation_image", settings.evaluation_image, "inference", None),
    ):
        item = find(image, scope)
        where = f"sagemaker.{key}"
        wanted = (
            f"transformers {image.transformers_version} / pytorch {image.pytorch_version} / "
            f"{image.py_version}"
        )
        if item is None:
            problems.append(
                f"{where}: {wanted} is not a Hugging Face PyTorch {scope} image in the installed "
                f"sagemaker SDK's table; the newest it lists: {_listing(scope, processor)}"
            )
        elif settings.region not in item["regions"]:
            problems.append(
                f"{where}: {wanted} is not published in region {settings.region}; its regions: "
                f"{', '.join(sorted(item['regions']))}"
            )
    return problems


def processor_of(instance_type: str) -> str:
    """cpu or gpu, as the SDK decides it: GPU families are g* and p*."""
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    return "gpu" if family[:1] in ("g", "p") else "cpu"


@lru_cache(maxsize=64)
def _retrieve(scope: Scope, region: str, image: ImageSettings, instance_type: str) -> str:
    # sagemaker creates boto3 clients on import and needs a region for them; no call is made.
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    from sagemaker.core import image_uris

    return image_uris.retrieve(
        framework=FRAMEWORK,
        region=region,
        version=image.transformers_version,
        base_framework_version=f"pytorch{image.pytorch_version}",
        py_version=image.py_version,
        instance_type=instance_type,
        image_scope=scope,
    )


def image_uri(scope: Scope, settings: SageMakerSettings, instance_type: str) -> str:
    """The ECR URI of the training or evaluation image for ``instance_type`` in the region."""
    from fmops.sagemaker.options import PolicyError

    image = settings.image if scope == "training" else settings.evaluation_image
    try:
        return _retrieve(scope, settings.region, image, instance_type)
    except ValueError as err:  # the SDK's word for an unsupported combination
        key = "image" if scope == "training" else "evaluation_image"
        raise PolicyError(
            f"sagemaker.{key}: no Hugging Face PyTorch {scope} image for {instance_type} "
            f"({processor_of(instance_type)}) in {settings.region}: {err}. The newest "
            f"combinations: {_listing(scope, processor_of(instance_type))}"
        ) from None


# -- the Hugging Face LLM (TGI) image ---------------------------------------------------------


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def llm_versions() -> list[str]:
    """The TGI versions of the SDK's huggingface-llm table, newest first."""
    return sorted(_read(LLM_TABLE)["inference"]["versions"], key=_version_key, reverse=True)


def llm_image_problems(version: str, region: str) -> list[str]:
    """Whether the SDK's table has TGI ``version`` (or its alias, ``3.3`` for ``3.3.6``) in
    ``region``; read as a file, without importing ``sagemaker``."""
    where = "sagemaker.endpoint.llm.tgi_version"
    try:
        table = _read(LLM_TABLE)["inference"]
    except (CatalogError, OSError, KeyError) as err:
        return [f"{where}: the sagemaker SDK's {LLM_TABLE} cannot be read ({err})"]
    resolved = _resolve(table.get("version_aliases", {}), version)
    entry = table["versions"].get(resolved)
    if entry is None:
        return [
            f"{where}: TGI {version} is not a Hugging Face LLM image in the installed sagemaker "
            f"SDK's table; the newest it lists: {', '.join(llm_versions()[:SHOWN])}"
        ]
    if region not in entry.get("registries", {}):
        return [
            f"{where}: TGI {version} is not published in region {region}; its regions: "
            f"{', '.join(sorted(entry.get('registries', {})))}"
        ]
    return []


@lru_cache(maxsize=64)
def _retrieve_llm(version: str, region: str, instance_type: str) -> str:
    os.environ.setdefault("AWS_DEFAULT_REGION", region)  # as in _retrieve: no call is made
    from sagemaker.core import image_uris

    return image_uris.retrieve(
        framework=LLM_FRAMEWORK,
        region=region,
        version=version,
        instance_type=instance_type,
        image_scope="inference",
    )


def llm_image_uri(version: str, region: str, instance_type: str) -> str:
    """The ECR URI of the Hugging Face LLM (TGI) image ``version`` for ``instance_type``."""
    from fmops.sagemaker.options import PolicyError

    problems = llm_image_problems(version, region)
    if problems:
        raise PolicyError("; ".join(problems))
    if processor_of(instance_type) != "gpu":
        raise PolicyError(
            f"sagemaker.endpoint.instance_type: TGI images are GPU only, and {instance_type} is "
            "a CPU type: choose a g* or p* type, or instance_type: auto"
        )
    try:
        return _retrieve_llm(version, region, instance_type)
    except ValueError as err:  # the SDK's word for an unsupported combination
        raise PolicyError(
            f"sagemaker.endpoint.llm.tgi_version: no TGI {version} image for {instance_type} in "
            f"{region}: {err}"
        ) from None
