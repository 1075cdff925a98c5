"""Requests checked against botocore's service models before anything is sent.

botocore's own ``ParamValidator`` checks types, required members and minimums only; ``validate``
adds every ``max``, ``enum`` and ``pattern`` of the model (``model_problems``), so that a request
SageMaker, CloudWatch or Application Auto Scaling would refuse as malformed is refused offline,
with an ``EndpointError`` naming each problem. A SageMaker request also meets the check every
fmops request meets (``fmops.jobs.local.validate_request``). The endpoint plan
(``fmops.sagemaker.endpoint_plan``) checks each of its requests here.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from fmops.sagemaker.endpoint_resources import EndpointError


@lru_cache(maxsize=4)
def _service_model(service: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(service)


@lru_cache(maxsize=256)
def _pattern(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # Java/ECMAScript-only syntax (\p{...}, surrogate ranges): not checked here
        return None


def model_problems(shape: Any, value: Any, path: str) -> list[str]:
    """What botocore's ``ParamValidator`` leaves out: ``max``, ``enum`` and ``pattern``.

    ``ParamValidator`` checks types, required members and minimums only; the service checks the
    rest and answers ValidationException. Patterns are matched in full, as SageMaker does for its
    names (its errors quote them anchored); those Python's ``re`` cannot compile are skipped.
    """
    problems: list[str] = []
    kind, meta = shape.type_name, shape.metadata
    if kind == "structure" and isinstance(value, dict):
        for key, item in value.items():
            if key in shape.members:
                problems += model_problems(shape.members[key], item, f"{path}.{key}")
    elif kind == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} items, at most {meta['max']}")
        for index, item in enumerate(value):
            problems += model_problems(shape.member, item, f"{path}[{index}]")
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} entries, at most {meta['max']}")
        for key, item in value.items():
            problems += model_problems(shape.key, key, f"{path} key {key!r}")
            problems += model_problems(shape.value, item, f"{path}[{key!r}]")
    elif kind == "string" and isinstance(value, str):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: {len(value)} characters, at most {meta['max']}")
        if "enum" in meta and value not in meta["enum"]:
            problems.append(f"{path}: {value!r} is not one of the API's values")
        compiled = _pattern(meta["pattern"]) if "pattern" in meta else None
        if compiled is not None and not compiled.fullmatch(value):
            problems.append(f"{path}: {value!r} does not match the pattern {meta['pattern']}")
    elif (
        kind in ("integer", "long", "double", "float")
        and isinstance(value, int | float)
        and "max" in meta
        and value > meta["max"]
    ):
        problems.append(f"{path}: {value} is above the API's maximum {meta['max']}")
    return problems


def validate(service: str, operation: str, request: dict[str, Any]) -> None:
    """Refuse a request its service would refuse as malformed: botocore's validator (types,
    required members, minimums) plus ``model_problems`` (maximums, enums, patterns)."""
    from botocore.exceptions import ParamValidationError
    from botocore.validate import ParamValidator

    shape = _service_model(service).operation_model(operation).input_shape
    report = ParamValidator().validate(request, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    problems += model_problems(shape, request, operation)
    if problems:
        raise EndpointError(
            f"{service} {operation}: the service model refuses the request: " + "; ".join(problems)
        )
    if service == "sagemaker":
        from fmops.jobs.specs import validate_request  # the check every fmops request meets

        try:
            validate_request(operation, request)
        except ParamValidationError as err:  # pragma: no cover - the check above is a superset
            raise EndpointError(f"{operation}: {err}") from None
