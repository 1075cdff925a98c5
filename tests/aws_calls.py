"""The AWS operations fmops calls, read from its source, and the IAM actions they need.

``docs/iam/`` holds the policies of the Airflow role and of the SageMaker execution role;
``tests/unit/test_iam_policies.py`` compares them with what this module derives, so that a new
call without its permission, or a permission no call needs, fails a test.

How calls are found (statically, with ``ast``; nothing is imported or run):

- an attribute call whose name is a botocore client method (``xform_name`` of an operation) of
  exactly one of :data:`SERVICES`: ``client.put_object(...)``, ``backend.list_training_jobs()``.
  A job backend offers the SageMaker client's own method names, so its calls count as SageMaker's;
- a string that is such a method name, wherever it stands: ``self._call("create_training_job")``,
  ``get_paginator("list_training_jobs")``, ``getattr(client, "describe_endpoint")``;
- an f-string whose placeholders are in :data:`EXPANSIONS`, expanded over their values:
  ``getattr(backend, f"create_{kind}_job")`` is CreateTrainingJob and CreateProcessingJob. An
  f-string that could name an operation through an unknown placeholder is an error;
- ``get_waiter("endpoint_in_service")``: the operation the waiter polls;
- boto3's S3 transfer methods (:data:`TRANSFER_METHODS`) and the amazon provider hook methods
  that call AWS for us (:data:`HOOK_METHODS`, in modules that import the hook).

A call that only looks like an AWS call (``mlflow_client.create_experiment``) is listed in
:data:`NOT_AWS` with the reason. ``getattr(<a client>, <a variable>)`` is accepted only where the
strings passed in are found by the rules above (a ``_call(method, ...)`` dispatcher).

How operations become IAM actions: ``<IAM prefix>:<Operation>`` (:data:`SERVICES`), except the
operations in :data:`IAM_ACTIONS`, plus what an operation needs beside its own action
(:data:`IMPLIED`: ``iam:PassRole`` for a create that passes a role, ``sagemaker:AddTags`` for a
tagged create, KMS for SSE-KMS uploads, ...).

The execution role is derived from the request fields the sagemaker target sets
(:data:`FIELD_NEEDS`): the containers run as that role and call nothing themselves.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

# botocore service name -> IAM service prefix (CloudWatch's endpoint prefix is "monitoring").
SERVICES = {
    "sagemaker": "sagemaker",
    "s3": "s3",
    "logs": "logs",
    "cloudwatch": "cloudwatch",
    "application-autoscaling": "application-autoscaling",
    "sagemaker-runtime": "sagemaker",  # InvokeEndpoint (the deploy DAG's smoke test)
}
# Where the Airflow side's code lives, relative to the project root.
AIRFLOW_SOURCES = ("include/fmops", "dags")
# The job scripts run in the containers as the execution role; they must not call AWS.
CONTAINER_SOURCES = ("include/scripts",)
# The request builders whose fields decide what the execution role needs.
REQUEST_SOURCES = ("include/fmops/sagemaker", "include/fmops/jobs/specs.py")

SELF = "tests/aws_calls.py"

# f-string placeholders and the values they take where an f-string names an operation:
# (module, placeholder) -> values; module "*" is the default. Every expansion must be an operation.
EXPANSIONS = {
    # fmops.jobs.backend.KIND_FIELDS: describe/create/stop_{kind}_job.
    ("*", "kind"): ("training", "processing"),
    # fmops.sagemaker.endpoint_deploy._ensure: describe/create_{kind}.
    ("include/fmops/sagemaker/endpoint_deploy.py", "kind"): ("model", "endpoint_config"),
}

# A method name in the same place as the key means a non-AWS call; "*" is any module.
NOT_AWS = {
    ("include/fmops/registry/runs.py", "create_experiment"): (
        "MlflowClient.create_experiment (MLflow), not sagemaker:CreateExperiment"
    ),
    ("*", "search"): "re.search / Pattern.search; fmops never calls sagemaker:Search",
    **{
        ("include/fmops/team_stack.py", method): (
            "the native team stack's own S3 store on 127.0.0.1 (compose's MinIO), never AWS"
        )
        for method in ("list_buckets", "create_bucket")
    },
}

# Methods that exist in several services: (module, method) -> service.
AMBIGUOUS: dict[tuple[str, str], str] = {}

# boto3's managed S3 transfers: the operations they may send (multipart above 8 MB).
_MULTIPART = ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
TRANSFER_METHODS = {
    "upload_file": ("PutObject", *_MULTIPART, "AbortMultipartUpload"),
    "upload_fileobj": ("PutObject", *_MULTIPART, "AbortMultipartUpload"),
    "download_file": ("HeadObject", "GetObject"),
    "download_fileobj": ("HeadObject", "GetObject"),
}


def _s3(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple(("s3", name) for name in names)


# amazon provider hook methods that call AWS with the hook's own client: hook class -> method ->
# ((service, operation), ...). Methods named after an operation are found as operations already.
HOOK_METHODS = {
    "S3Hook": {
        "load_file": _s3(*TRANSFER_METHODS["upload_file"]),
        "load_bytes": _s3(*TRANSFER_METHODS["upload_fileobj"]),
        "load_string": _s3(*TRANSFER_METHODS["upload_fileobj"]),
        "load_file_obj": _s3(*TRANSFER_METHODS["upload_fileobj"]),
        "check_for_key": _s3("HeadObject"),
        "get_key": _s3("HeadObject"),
        "read_key": _s3("HeadObject", "GetObject"),
        "list_keys": _s3("ListObjectsV2"),
        "list_prefixes": _s3("ListObjectsV2"),
        "check_for_prefix": _s3("ListObjectsV2"),
    },
    "SageMakerHook": {
        "describe_training_job_with_log": (
            ("sagemaker", "DescribeTrainingJob"),
            ("logs", "DescribeLogStreams"),
            ("logs", "GetLogEvents"),
        ),
    },
}

# Operations whose IAM action is not <prefix>:<Operation> (S3 authorizes by object and bucket).
IAM_ACTIONS = {
    ("s3", "HeadObject"): ("s3:GetObject",),
    ("s3", "HeadBucket"): ("s3:ListBucket",),
    ("s3", "ListObjects"): ("s3:ListBucket",),
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "CreateMultipartUpload"): ("s3:PutObject",),
    ("s3", "UploadPart"): ("s3:PutObject",),
    ("s3", "CompleteMultipartUpload"): ("s3:PutObject",),
    ("s3", "CopyObject"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "DeleteObjects"): ("s3:DeleteObject",),
    ("s3", "ListMultipartUploads"): ("s3:ListBucketMultipartUploads",),
    ("s3", "ListParts"): ("s3:ListMultipartUploadParts",),
}

_PASS_ROLE = "it passes the execution role (RoleArn); iam:PassRole, to sagemaker.amazonaws.com"
_ADD_TAGS = "a create with Tags is authorized as sagemaker:AddTags too"
_SSE_KMS = "fmops uploads with SSE-KMS when sagemaker.kms.output_key_id is set"
# What an operation needs beside its own action: operation -> ((action, why), ...).
IMPLIED = {
    ("sagemaker", "CreateTrainingJob"): (
        ("iam:PassRole", _PASS_ROLE),
        ("sagemaker:AddTags", _ADD_TAGS),
    ),
    ("sagemaker", "CreateProcessingJob"): (
        ("iam:PassRole", _PASS_ROLE),
        ("sagemaker:AddTags", _ADD_TAGS),
    ),
    ("sagemaker", "CreateModel"): (
        ("iam:PassRole", "it passes the execution role (ExecutionRoleArn)"),
        ("sagemaker:AddTags", _ADD_TAGS),
    ),
    ("sagemaker", "CreateEndpointConfig"): (("sagemaker:AddTags", _ADD_TAGS),),
    ("sagemaker", "CreateEndpoint"): (
        ("sagemaker:AddTags", _ADD_TAGS),
        ("kms:CreateGrant", "the caller grants SageMaker the endpoint config's KmsKeyId"),
    ),
    ("cloudwatch", "PutMetricAlarm"): (
        ("cloudwatch:TagResource", "an alarm created with Tags needs cloudwatch:TagResource too"),
    ),
    ("s3", "HeadObject"): (
        ("s3:ListBucket", "without it S3 answers 403, not 404, for a missing key"),
    ),
    ("s3", "GetObject"): (("kms:Decrypt", "reading objects fmops wrote with SSE-KMS"),),
    ("s3", "PutObject"): (("kms:GenerateDataKey", _SSE_KMS),),
    ("s3", "CreateMultipartUpload"): (
        ("kms:GenerateDataKey", _SSE_KMS),
        ("kms:Decrypt", "a multipart upload with SSE-KMS decrypts the data key for each part"),
    ),
    ("application-autoscaling", "RegisterScalableTarget"): (
        ("sagemaker:DescribeEndpoint", "Application Auto Scaling checks the caller's access"),
        ("sagemaker:DescribeEndpointConfig", "Application Auto Scaling checks the caller's access"),
        (
            "sagemaker:UpdateEndpointWeightsAndCapacities",
            "the caller must be allowed what the scaling will do",
        ),
        (
            "iam:CreateServiceLinkedRole",
            "the first registration creates the service-linked role "
            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
        ),
    ),
}

# Request fields (dict keys in the request builders) -> execution-role actions, and why.
_ECR_PULL = (
    "ecr:GetAuthorizationToken",
    "ecr:BatchCheckLayerAvailability",
    "ecr:GetDownloadUrlForLayer",
    "ecr:BatchGetImage",
)
_S3_READ = ("s3:GetObject", "s3:ListBucket")
_RUN_AS_ROLE = (
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
    "logs:DescribeLogStreams",
    "cloudwatch:PutMetricData",
)
_VPC = (
    "ec2:CreateNetworkInterface",
    "ec2:CreateNetworkInterfacePermission",
    "ec2:DeleteNetworkInterface",
    "ec2:DeleteNetworkInterfacePermission",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeVpcs",
    "ec2:DescribeDhcpOptions",
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
)
FIELD_NEEDS = {
    "RoleArn": (_RUN_AS_ROLE, "the job runs as the role: its logs and metrics"),
    "ExecutionRoleArn": (_RUN_AS_ROLE, "the endpoint runs as the role: its logs and metrics"),
    "TrainingImage": (_ECR_PULL, "SageMaker pulls the image as the role"),
    "ImageUri": (_ECR_PULL, "SageMaker pulls the image as the role"),
    "Image": (_ECR_PULL, "SageMaker pulls the image as the role"),
    "S3DataSource": (_S3_READ, "input channels (S3Prefix: listed, then read)"),
    "S3Input": (_S3_READ, "processing inputs"),
    "ModelDataUrl": (_S3_READ, "the model artifacts an endpoint loads"),
    "S3OutputPath": (("s3:PutObject",), "the training job's model.tar.gz"),
    "S3Output": (("s3:PutObject",), "processing outputs"),
    "CheckpointConfig": (("s3:PutObject", *_S3_READ), "checkpoints, written and resumed from"),
    "KmsKeyId": (
        ("kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"),
        "outputs encrypted with the output key, and inputs fmops uploaded with it",
    ),
    "VolumeKmsKeyId": (("kms:CreateGrant",), "SageMaker encrypts the job volumes with a grant"),
    "VpcConfig": (_VPC, "SageMaker puts the job's network interfaces in the VPC"),
}


class Operation(NamedTuple):
    service: str  # botocore's name
    name: str  # the operation, as in the API reference

    def __str__(self) -> str:
        return f"{self.service}.{self.name}"


@dataclass(frozen=True)
class Call:
    operation: Operation
    where: str  # path:line

    def __str__(self) -> str:
        return f"{self.operation} at {self.where}"


class ScanError(ValueError):
    """A call the scan cannot map to one operation; the message says what to add where."""


@lru_cache(maxsize=1)
def _methods() -> dict[str, tuple[Operation, ...]]:
    """botocore client method name -> the operations of that name in :data:`SERVICES`."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    found: dict[str, list[Operation]] = {}
    for service in SERVICES:
        for name in session.get_service_model(service).operation_names:
            found.setdefault(xform_name(name), []).append(Operation(service, name))
    return {method: tuple(ops) for method, ops in found.items()}


@lru_cache(maxsize=1)
def _waiters() -> dict[str, tuple[Operation, ...]]:
    import botocore.session
    from botocore import xform_name
    from botocore.exceptions import UnknownServiceError

    session = botocore.session.get_session()
    found: dict[str, list[Operation]] = {}
    for service in SERVICES:
        try:
            model = session.get_waiter_model(service)
        except UnknownServiceError:  # no waiters (logs, application-autoscaling)
            continue
        for name in model.waiter_names:
            operation = Operation(service, model.get_waiter(name).operation)
            found.setdefault(xform_name(name), []).append(operation)
    return {name: tuple(ops) for name, ops in found.items()}


def _python_files(root: Path, sources: Iterable[str]) -> Iterator[Path]:
    """The Python files under ``sources``, this module left out (its tables name operations)."""
    for source in sources:
        path = root / source
        files = [path] if path.is_file() else sorted(path.rglob("*.py")) if path.is_dir() else []
        for file in files:
            if "__pycache__" not in file.parts and file.relative_to(root).as_posix() != SELF:
                yield file


def _not_aws(module: str, method: str) -> bool:
    return (module, method) in NOT_AWS or ("*", method) in NOT_AWS


def _expansion(module: str, name: str) -> tuple[str, ...] | None:
    return EXPANSIONS.get((module, name), EXPANSIONS.get(("*", name)))


def _fstring_names(node: ast.JoinedStr, module: str) -> list[str]:
    """The method names an f-string produces; [] if it cannot name an operation."""
    where = f"{module}:{node.lineno}"
    parts: list[tuple[str, ...]] = []
    pattern, unknown, letters = "", [], 0
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append((str(value.value),))
            pattern += re.escape(str(value.value))
            letters += sum(c.isalpha() for c in str(value.value))
            continue
        inner = value.value if isinstance(value, ast.FormattedValue) else value
        name = inner.id if isinstance(inner, ast.Name) else ast.unparse(inner)
        values = _expansion(module, name)
        parts.append(values or ())
        pattern += "[a-z0-9_]+"
        if values is None:
            unknown.append(name)
    if letters < 4 or not any(re.fullmatch(pattern, m) for m in _methods()):
        return []  # a message or a path, not an operation's name
    fix = (
        f"set EXPANSIONS[({module!r}, <placeholder>)] in tests/aws_calls.py to the "
        "values the placeholder takes there"
    )
    if unknown:
        raise ScanError(
            f"{where}: f-string {ast.unparse(node)} can name an AWS operation through "
            f"{', '.join(unknown)}, whose values the scan does not know; {fix}"
        )
    names = [""]
    for options in parts:
        names = [n + o for n in names for o in options]
    strays = [n for n in names if n not in _methods()]
    if strays:
        raise ScanError(
            f"{where}: f-string {ast.unparse(node)} expands to {', '.join(strays)}, which is no "
            f"operation of {', '.join(SERVICES)}; {fix}"
        )
    return names


@dataclass
class Scan:
    """What :func:`scan` found."""

    calls: list[Call]
    # function name -> (index of the method-name argument, its parameter name, where)
    dispatchers: dict[str, tuple[int, str, str]]


class _Scanner(ast.NodeVisitor):
    def __init__(self, module: str, source: str):
        self.module = module
        self.calls: list[Call] = []
        self.dispatchers: dict[str, tuple[int, str, str]] = {}
        self.hooks = {hook for hook in HOOK_METHODS if re.search(rf"\b{hook}\b", source)}
        self._functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = []

    def _where(self, node: ast.AST) -> str:
        return f"{self.module}:{node.lineno}"

    def _add(self, service: str, names: Iterable[str], node: ast.AST) -> None:
        for name in names:
            self.calls.append(Call(Operation(service, name), self._where(node)))

    def _method(self, method: str, node: ast.AST) -> None:
        """Record the operation a client method name stands for, if any."""
        if _not_aws(self.module, method):
            return
        for hook in sorted(self.hooks):
            if method in HOOK_METHODS[hook]:
                for service, name in HOOK_METHODS[hook][method]:
                    self._add(service, (name,), node)
                return
        if method in TRANSFER_METHODS:
            self._add("s3", TRANSFER_METHODS[method], node)
            return
        operations = _methods().get(method, ())
        if len(operations) > 1:
            service = AMBIGUOUS.get((self.module, method))
            if service is None:
                raise ScanError(
                    f"{self._where(node)}: {method} is an operation of "
                    f"{', '.join(o.service for o in operations)}; add "
                    f"({self.module!r}, {method!r}): <service> to AMBIGUOUS in "
                    "tests/aws_calls.py"
                )
            operations = tuple(o for o in operations if o.service == service)
        for operation in operations:
            self.calls.append(Call(operation, self._where(node)))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._function(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):
            return  # a docstring
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value in _methods():
            self._method(node.value, node)

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        for name in _fstring_names(node, self.module):
            self._method(name, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr == "get_waiter" and node.args and isinstance(node.args[0], ast.Constant):
                for operation in _waiters().get(str(node.args[0].value), ()):
                    self.calls.append(Call(operation, self._where(node)))
            elif func.attr == "resource" and ast.unparse(func.value) == "boto3":
                raise ScanError(
                    f"{self._where(node)}: boto3.resource(...); the IAM scan reads client calls "
                    "only: use a boto3 client, or teach tests/aws_calls.py its calls"
                )
            self._method(func.attr, node)
        elif isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
            self._dynamic_getattr(node, node.args[0], node.args[1])
        self.generic_visit(node)

    def _dynamic_getattr(self, node: ast.Call, target: ast.expr, attribute: ast.expr) -> None:
        """``getattr(<client>, <parameter>)`` makes its function a dispatcher, whose callers'
        method names are checked by :func:`scan`; any other variable is an error."""
        if isinstance(attribute, ast.Constant | ast.JoinedStr):
            return  # read by visit_Constant / visit_JoinedStr
        if "client" not in ast.unparse(target).lower():
            return  # not an AWS client
        function = self._functions[-1] if self._functions else None
        params = [a.arg for a in function.args.args] if function else []
        if params[:1] in (["self"], ["cls"]):
            params = params[1:]
        name = attribute.id if isinstance(attribute, ast.Name) else None
        if function is None or name not in params:
            raise ScanError(
                f"{self._where(node)}: {ast.unparse(node)} calls a client method whose name the "
                "scan cannot see; pass the name in as a parameter given as a string literal by "
                "every caller, or call the method by name"
            )
        self.dispatchers[function.name] = (params.index(name), name, self._where(node))


def _check_dispatch(module: str, tree: ast.AST, dispatchers: dict) -> None:
    """Every call of a dispatcher passes the method name as a literal (or a known f-string)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in dispatchers:
            continue
        index, param, defined = dispatchers[name]
        given = [k.value for k in node.keywords if k.arg == param]
        given += node.args[index : index + 1]
        if not given or not isinstance(given[0], ast.Constant | ast.JoinedStr):
            raise ScanError(
                f"{module}:{node.lineno}: {name}() dispatches to a client method ({defined}); "
                f"pass its {param} as a string literal (or an f-string over EXPANSIONS) so that "
                "the IAM scan sees which operation it calls"
            )


def scan(root: Path, sources: Iterable[str] = AIRFLOW_SOURCES) -> Scan:
    """The AWS operations the Python files under ``sources`` call, with where."""
    calls: list[Call] = []
    dispatchers: dict[str, tuple[int, str, str]] = {}
    trees = []
    for path in _python_files(root, sources):
        module = path.relative_to(root).as_posix()
        source = path.read_text()
        tree = ast.parse(source, str(path))
        scanner = _Scanner(module, source)
        scanner.visit(tree)
        calls += scanner.calls
        dispatchers |= scanner.dispatchers
        trees.append((module, tree))
    for module, tree in trees:
        _check_dispatch(module, tree, dispatchers)
    return Scan(calls, dispatchers)


def find_calls(root: Path, sources: Iterable[str] = AIRFLOW_SOURCES) -> list[Call]:
    return scan(root, sources).calls


def iam_actions(operation: Operation) -> tuple[str, ...]:
    """The IAM actions that authorize the operation itself."""
    key = (operation.service, operation.name)
    return IAM_ACTIONS.get(key, (f"{SERVICES[operation.service]}:{operation.name}",))


def required_actions(calls: Iterable[Call]) -> dict[str, list[str]]:
    """IAM action -> why it is needed (the calls, and what implies it)."""
    needed: dict[str, list[str]] = {}
    for call in calls:
        for action in iam_actions(call.operation):
            needed.setdefault(action, []).append(str(call))
        for action, why in IMPLIED.get(tuple(call.operation), ()):
            needed.setdefault(action, []).append(f"{call.operation}: {why}")
    return needed


def request_fields(root: Path, sources: Iterable[str] = REQUEST_SOURCES) -> dict[str, str]:
    """The :data:`FIELD_NEEDS` fields the request builders set, and where (first place)."""
    found: dict[str, str] = {}
    for path in _python_files(root, sources):
        module = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            keys: list[ast.expr | None] = []
            if isinstance(node, ast.Dict):
                keys = list(node.keys)
            elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                keys = [node.slice]
            for key in keys:
                if isinstance(key, ast.Constant) and key.value in FIELD_NEEDS:
                    found.setdefault(key.value, f"{module}:{key.lineno}")
    return found


def execution_role_actions(fields: dict[str, str]) -> dict[str, list[str]]:
    """IAM action -> why the execution role needs it, from the request fields set."""
    needed: dict[str, list[str]] = {}
    for field, where in fields.items():
        actions, why = FIELD_NEEDS[field]
        for action in actions:
            needed.setdefault(action, []).append(f"{field} ({where}): {why}")
    return needed


# -- policies -------------------------------------------------------------------------------------


def statements(policy: dict) -> list[dict]:
    found = policy.get("Statement", [])
    return [found] if isinstance(found, dict) else list(found)


def as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def allowed_actions(policy: dict) -> set[str]:
    return {
        action
        for statement in statements(policy)
        if statement.get("Effect") == "Allow"
        for action in as_list(statement.get("Action"))
    }


def resources_for(policy: dict, action: str) -> list[str]:
    """The resources an Allow statement grants ``action`` on (with their templates)."""
    return [
        resource
        for statement in statements(policy)
        if statement.get("Effect") == "Allow" and action in as_list(statement.get("Action"))
        for resource in as_list(statement.get("Resource"))
    ]


def covers(patterns: Iterable[str], arn: str) -> bool:
    """Whether an IAM resource pattern (``*`` and ``?`` wildcards) matches ``arn``."""
    return any(fnmatch.fnmatchcase(arn, p.replace("[", "[[]")) for p in patterns)
