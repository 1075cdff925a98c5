"""The IAM policies in docs/iam/ against the code: what fmops calls is allowed, and nothing else.

The Airflow role's actions are derived from the AWS calls in include/fmops and dags/ (read with
``ast`` by ``tests/aws_calls.py``); the execution role's from the request fields the
sagemaker target sets. Both ways are checked: a call whose action is missing fails, and so does an
action no call needs. The policies are read as templates (``${Bucket}`` ...), never sent to AWS.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import aws_calls
import pytest
from aws_calls import ScanError, allowed_actions, covers, resources_for

from fmops.deployment.settings import AlarmSettings
from fmops.jobs.backend import KIND_FIELDS
from fmops.jobs.naming import KINDS
from fmops.jobs.sagemaker import LOG_GROUPS
from fmops.sagemaker import images
from fmops.sagemaker.staging import Layout

ROOT = Path(__file__).resolve().parents[2]  # this checkout's sources, not the installed package's
IAM = ROOT / "docs" / "iam"
AIRFLOW = IAM / "airflow-role-policy.json"
EXECUTION = IAM / "sagemaker-execution-role-policy.json"
TRUST = IAM / "sagemaker-execution-role-trust.json"
README = IAM / "README.md"
PERMISSION_POLICIES = (AIRFLOW, EXECUTION)

# The template variables the README explains; a policy may use no other.
TEMPLATE_VARIABLES = {
    "Partition",
    "Region",
    "Account",
    "Bucket",
    "Prefix",
    "ExecutionRoleArn",
    "DataBucket",
    "DataPrefix",
    "OutputKeyArn",
    "VolumeKeyArn",
    "EndpointKeyArn",
    "DlcAccount",
}
_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_ACTION = re.compile(r"^[a-z0-9-]+:[A-Za-z0-9]+$")  # no wildcards: every action is named

# Actions a statement may grant on "*", why, and whether the statement must narrow it by a
# Condition instead.
RESOURCE_STAR = {
    "sagemaker:ListTrainingJobs": ("SageMaker List* calls take no resource ARN", False),
    "sagemaker:ListProcessingJobs": ("SageMaker List* calls take no resource ARN", False),
    "application-autoscaling:RegisterScalableTarget": (
        "a new scalable target's ARN (a generated ID) is not known in advance; narrowed to the "
        "sagemaker service namespace",
        True,
    ),
    **{
        f"application-autoscaling:{name}": (
            "as RegisterScalableTarget: narrowed to the endpoint variants' namespace and dimension",
            True,
        )
        for name in ("PutScalingPolicy", "DeleteScalingPolicy", "DeregisterScalableTarget")
    },
    "application-autoscaling:DescribeScalableTargets": (
        "Application Auto Scaling's Describe calls take no resource",
        False,
    ),
    "ecr:GetAuthorizationToken": ("the registry token is account-wide: no resource type", False),
    "cloudwatch:PutMetricData": ("no resource type; narrowed by cloudwatch:namespace", True),
    **{
        action: ("EC2 Describe* take no resource; SageMaker makes the ENIs (optional)", False)
        for action in aws_calls.FIELD_NEEDS["VpcConfig"][0]
    },
}

HOW_TO_FIX_MISSING = (
    "add each to docs/iam/{policy} in a statement scoped to the resources it touches, and say "
    "why in docs/iam/README.md"
)
HOW_TO_FIX_EXTRA = (
    "remove each from docs/iam/{policy}; if a call does need it and the scan cannot see that, "
    "teach tests/aws_calls.py (IMPLIED, HOOK_METHODS or FIELD_NEEDS) with the reason"
)


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def _statements(path: Path) -> list[dict]:
    return aws_calls.statements(load(path))


def _report(title: str, actions: dict[str, list[str]], fix: str) -> str:
    lines = [title]
    for action in sorted(actions):
        reasons = sorted(set(actions[action]))
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        lines.append(f"  {action}: {reasons[0]}{more}")
    return "\n".join([*lines, fix])


def arn_of(uri: str) -> str:
    bucket_and_key = uri.removeprefix("s3://")
    return f"arn:${{Partition}}:s3:::{bucket_and_key}"


# -- the policy files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [AIRFLOW, EXECUTION, TRUST], ids=lambda p: p.name)
def test_policy_is_well_formed(path):
    policy = load(path)
    assert policy.get("Version") == "2012-10-17", f"{path.name}: Version must be 2012-10-17"
    statements = policy.get("Statement")
    assert isinstance(statements, list) and statements, f"{path.name}: Statement must be a list"
    sids = [s.get("Sid") for s in statements]
    assert all(sids) and len(set(sids)) == len(sids), f"{path.name}: every Sid set and unique"
    for statement in statements:
        where = f"{path.name} {statement['Sid']}"
        assert statement.get("Effect") in ("Allow", "Deny"), f"{where}: Effect"
        assert not {"NotAction", "NotResource", "NotPrincipal"} & set(statement), (
            f"{where}: Not* elements grant by exclusion; name what is allowed"
        )
        actions = aws_calls.as_list(statement.get("Action"))
        assert actions, f"{where}: no Action"
        for action in actions:
            assert _ACTION.match(action), f"{where}: {action!r} is not one named action"
        if path is TRUST:
            assert "Principal" in statement and "Resource" not in statement, where
        else:
            assert aws_calls.as_list(statement.get("Resource")), f"{where}: no Resource"
            assert "Principal" not in statement, f"{where}: an identity policy has no Principal"


@pytest.mark.parametrize("path", PERMISSION_POLICIES, ids=lambda p: p.name)
def test_resource_star_only_where_no_resource_can_be_named(path):
    for statement in _statements(path):
        if "*" not in aws_calls.as_list(statement["Resource"]):
            continue
        where = f"{path.name} {statement['Sid']}"
        assert aws_calls.as_list(statement["Resource"]) == ["*"], f"{where}: * and ARNs mixed"
        for action in aws_calls.as_list(statement["Action"]):
            assert action in RESOURCE_STAR, (
                f"{where}: {action} is granted on every resource; scope it to the ARNs it "
                "touches, or add it to RESOURCE_STAR in this test with the reason it cannot be"
            )
            reason, needs_condition = RESOURCE_STAR[action]
            assert not needs_condition or statement.get("Condition"), (
                f"{where}: {action} on * must be narrowed by a Condition ({reason})"
            )


def test_trust_policy_lets_only_sagemaker_assume_the_role():
    (statement,) = _statements(TRUST)
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert aws_calls.as_list(statement["Action"]) == ["sts:AssumeRole"]


def test_template_variables_are_known_and_documented():
    readme = README.read_text()
    for path in (AIRFLOW, EXECUTION, TRUST):
        used = set(_VARIABLE.findall(path.read_text()))
        assert used <= TEMPLATE_VARIABLES, (
            f"{path.name} uses {sorted(used - TEMPLATE_VARIABLES)}; document them in "
            "docs/iam/README.md and add them to TEMPLATE_VARIABLES"
        )
        assert path.name in readme, f"docs/iam/README.md does not mention {path.name}"
        for statement in _statements(path):
            assert f"`{statement['Sid']}`" in readme, (
                f"docs/iam/README.md does not explain {path.name}'s statement {statement['Sid']}"
            )
    for name in TEMPLATE_VARIABLES:
        assert f"`${{{name}}}`" in readme, f"docs/iam/README.md does not explain ${{{name}}}"


KEY = "arn:aws:kms:eu-west-1:111122223333:key"


@pytest.mark.parametrize("path", [AIRFLOW, EXECUTION, TRUST], ids=lambda p: p.name)
def test_filled_in_templates_are_valid_json_with_well_formed_arns(path):
    values = {
        "Partition": "aws",
        "Region": "eu-west-1",
        "Account": "111122223333",
        "Bucket": "acme-ml",
        "Prefix": "fmops",
        "ExecutionRoleArn": "arn:aws:iam::111122223333:role/fmops-sagemaker",
        "DataBucket": "acme-data",
        "DataPrefix": "raw",
        "OutputKeyArn": f"{KEY}/1234abcd-12ab-34cd-56ef-1234567890ab",
        "VolumeKeyArn": f"{KEY}/1234abcd-12ab-34cd-56ef-1234567890ac",
        "EndpointKeyArn": f"{KEY}/1234abcd-12ab-34cd-56ef-1234567890ad",
        "DlcAccount": "763104351884",
    }
    assert set(values) == TEMPLATE_VARIABLES
    filled = json.loads(_VARIABLE.sub(lambda m: values[m.group(1)], path.read_text()))
    for statement in aws_calls.statements(filled):
        for resource in aws_calls.as_list(statement.get("Resource")):
            assert resource == "*" or re.match(
                r"^arn:aws:[a-z0-9-]+:[a-z0-9-]*:\d*:.+", resource
            ), f"{path.name} {statement['Sid']}: {resource!r} is not an ARN once filled in"


# -- the Airflow role: the calls of include/fmops and dags/ ----------------------------------------


@pytest.fixture(scope="module")
def airflow_needs() -> dict[str, list[str]]:
    return aws_calls.required_actions(aws_calls.find_calls(ROOT))


def test_airflow_policy_allows_every_call(airflow_needs):
    missing = {
        a: why for a, why in airflow_needs.items() if a not in allowed_actions(load(AIRFLOW))
    }
    assert not missing, _report(
        f"{AIRFLOW.name} lacks actions the code calls:",
        missing,
        HOW_TO_FIX_MISSING.format(policy=AIRFLOW.name),
    )


def test_airflow_policy_allows_nothing_the_code_does_not_call(airflow_needs):
    extra = sorted(allowed_actions(load(AIRFLOW)) - set(airflow_needs))
    assert not extra, _report(
        f"{AIRFLOW.name} allows actions no call in include/fmops or dags/ needs:",
        {action: ["no call found"] for action in extra},
        HOW_TO_FIX_EXTRA.format(policy=AIRFLOW.name),
    )


def test_job_names_and_log_groups_are_the_ones_the_code_uses():
    sagemaker = "arn:${Partition}:sagemaker:${Region}:${Account}"
    assert set(KINDS) == set(KIND_FIELDS) == set(aws_calls.EXPANSIONS[("*", "kind")])
    for kind, short in KINDS.items():
        job = f"{sagemaker}:{kind}-job/{short}-0123456789-a2"
        for action in (f"sagemaker:Describe{kind.title()}Job", f"sagemaker:Stop{kind.title()}Job"):
            assert covers(resources_for(load(AIRFLOW), action), job), (action, job)
        other = f"{sagemaker}:{kind}-job/other-0123456789"
        assert not covers(resources_for(load(AIRFLOW), "sagemaker:AddTags"), other), other
    logs = "arn:${Partition}:logs:${Region}:${Account}:log-group:"
    granted = resources_for(load(AIRFLOW), "logs:GetLogEvents")
    assert set(granted) == {f"{logs}{g}{end}" for g in LOG_GROUPS.values() for end in ("", ":*")}
    assert covers(granted, f"{logs}{LOG_GROUPS['training']}:log-stream:train-x/algo-1-1700000000")


def test_alarms_and_scaling_are_the_ones_the_endpoints_use():
    from fmops.sagemaker import endpoint_resources

    names = endpoint_resources.alarm_names("e", "AllTraffic", AlarmSettings(max_4xx_error_rate=0.5))
    alarms = resources_for(load(AIRFLOW), "cloudwatch:PutMetricAlarm")
    assert resources_for(load(AIRFLOW), "cloudwatch:DescribeAlarms") == alarms
    for name in names.values():
        assert covers(
            alarms, f"arn:${{Partition}}:cloudwatch:${{Region}}:${{Account}}:alarm:{name}"
        )
    (scaling,) = [s for s in _statements(AIRFLOW) if s["Sid"] == "EndpointAutoScaling"]
    assert scaling["Condition"]["StringEquals"] == {
        "application-autoscaling:service-namespace": endpoint_resources.SCALING_NAMESPACE,
        "application-autoscaling:scalable-dimension": endpoint_resources.SCALABLE_DIMENSION,
    }


def test_pass_role_only_the_execution_role_to_sagemaker():
    (statement,) = [s for s in _statements(AIRFLOW) if "iam:PassRole" in s["Action"]]
    assert statement["Resource"] == "${ExecutionRoleArn}"
    assert statement["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }


def test_airflow_role_reaches_what_staging_writes_and_reads():
    layout = Layout("${Bucket}", "${Prefix}")
    policy = load(AIRFLOW)
    written = [
        layout.uri("code", "abc", "sourcedir.tar.gz"),
        layout.dataset_uris("d1")["train_uri"] + "part-0.jsonl",
        layout.model_uri("tiny") + "config.json",
    ]
    read = [
        *written,
        layout.model_artifacts("train-x"),
        layout.evaluation_output("eval-x") + "r.json",
    ]
    for uri in written:
        assert covers(resources_for(policy, "s3:PutObject"), arn_of(uri)), uri
    for uri in read:
        assert covers(resources_for(policy, "s3:GetObject"), arn_of(uri)), uri
    assert resources_for(policy, "s3:ListBucket") == ["arn:${Partition}:s3:::${Bucket}"]
    assert not covers(resources_for(policy, "s3:PutObject"), "arn:${Partition}:s3:::${Bucket}/x")


# -- the execution role: the fields of the requests ------------------------------------------------


@pytest.fixture(scope="module")
def execution_needs() -> dict[str, list[str]]:
    return aws_calls.execution_role_actions(aws_calls.request_fields(ROOT))


def test_execution_role_allows_what_the_requests_need(execution_needs):
    missing = {
        a: w for a, w in execution_needs.items() if a not in allowed_actions(load(EXECUTION))
    }
    assert not missing, _report(
        f"{EXECUTION.name} lacks actions the jobs' requests need:",
        missing,
        HOW_TO_FIX_MISSING.format(policy=EXECUTION.name),
    )


def test_execution_role_allows_nothing_the_requests_do_not_need(execution_needs):
    extra = sorted(allowed_actions(load(EXECUTION)) - set(execution_needs))
    assert not extra, _report(
        f"{EXECUTION.name} allows actions no request field needs:",
        {action: ["no request field needs it"] for action in extra},
        HOW_TO_FIX_EXTRA.format(policy=EXECUTION.name),
    )


def test_execution_role_reaches_the_job_inputs_and_outputs():
    layout = Layout("${Bucket}", "${Prefix}")
    policy = load(EXECUTION)
    inputs = [
        layout.uri("code", "abc", "sourcedir.tar.gz"),
        layout.uri("code", "abc", "source", "evaluate.py"),
        layout.dataset_uris("d1")["validation_uri"] + "part-0.jsonl",
        layout.model_uri("tiny") + "model.safetensors",
        layout.model_artifacts("train-x"),
        layout.checkpoint_uri("train-x") + "checkpoint-10/state.pt",
    ]
    outputs = [
        layout.model_artifacts("train-x"),
        layout.checkpoint_uri("train-x") + "checkpoint-10/state.pt",
        layout.evaluation_output("eval-x") + "metrics.json",
    ]
    for uri in inputs:
        assert covers(resources_for(policy, "s3:GetObject"), arn_of(uri)), uri
    for uri in outputs:
        assert covers(resources_for(policy, "s3:PutObject"), arn_of(uri)), uri
    staged = arn_of(layout.uri("code", "abc", "x"))
    assert not covers(resources_for(policy, "s3:PutObject"), staged), "jobs never write code/"


def test_execution_role_pulls_exactly_the_images_the_jobs_use():
    from fmops.sagemaker.settings import EVALUATION_IMAGE, TRAINING_IMAGE

    repositories = {
        images.find(TRAINING_IMAGE, "training")["repository"],
        images.find(EVALUATION_IMAGE, "inference")["repository"],
    }
    ecr = "arn:${Partition}:ecr:${Region}:${DlcAccount}:repository/"
    assert set(resources_for(load(EXECUTION), "ecr:BatchGetImage")) == {
        ecr + name for name in repositories
    }


def test_job_scripts_call_no_aws():
    calls = aws_calls.find_calls(ROOT, aws_calls.CONTAINER_SOURCES)
    assert not calls, (
        "the job scripts call AWS as the execution role, whose policy is derived from request "
        f"fields only: {[str(c) for c in calls]}; derive those calls in aws_calls.py too"
    )


# -- the scan itself -------------------------------------------------------------------------------


def scan_of(tmp_path: Path, source: str, name: str = "include/fmops/x.py") -> set[str]:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return {str(c.operation) for c in aws_calls.find_calls(tmp_path)}


def test_scan_reads_direct_dispatched_and_generated_calls(tmp_path):
    found = scan_of(
        tmp_path,
        '''
        """Docstrings naming create_endpoint are not calls."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        def run(client, backend, kind, s3):
            client.put_metric_alarm(AlarmName="a")
            client.get_paginator("list_endpoints")
            client.get_waiter("endpoint_in_service").wait(EndpointName="e")
            getattr(backend, f"stop_{kind}_job")(Name="n")
            s3.upload_file("f", "b", "k")
            S3Hook().check_for_key("k")
            mlflow.search("x")

        class Backend:
            def _call(self, method, **request):
                return getattr(self.sagemaker_client, method)(**request)

            def create(self):
                return self._call("create_model", ModelName="m")
        ''',
    )
    assert found == {
        "cloudwatch.PutMetricAlarm",
        "sagemaker.ListEndpoints",
        "sagemaker.DescribeEndpoint",
        "sagemaker.StopTrainingJob",
        "sagemaker.StopProcessingJob",
        "s3.PutObject",
        "s3.CreateMultipartUpload",
        "s3.UploadPart",
        "s3.CompleteMultipartUpload",
        "s3.AbortMultipartUpload",
        "s3.HeadObject",
        "sagemaker.CreateModel",
    }


def test_implied_actions_come_with_their_calls():
    calls = [
        aws_calls.Call(aws_calls.Operation("sagemaker", "CreateTrainingJob"), "x.py:1"),
        aws_calls.Call(aws_calls.Operation("s3", "HeadObject"), "x.py:2"),
    ]
    assert set(aws_calls.required_actions(calls)) == {
        "sagemaker:CreateTrainingJob",
        "sagemaker:AddTags",
        "iam:PassRole",
        "s3:GetObject",
        "s3:ListBucket",
    }


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('getattr(client, f"describe_{what}_job")()', "whose values the scan does not know"),
        ('getattr(client, f"describe_{kind}")()', "describe_training, describe_processing, which"),
        ("name = pick()\ngetattr(s3_client, name)()", "cannot see"),
        (
            "def call(client, op):\n    return getattr(client, op)()\ncall(c, chosen)",
            "as a string literal",
        ),
        ('import boto3\nboto3.resource("s3")', "client calls only"),
        ("client.tag_resource(ResourceARN='a', Tags=[])", "add ('include/fmops/x.py'"),
    ],
    ids=[
        "unknown-placeholder",
        "wrong-expansion",
        "dynamic-getattr",
        "dispatcher-variable",
        "resource",
        "ambiguous",
    ],
)
def test_scan_refuses_calls_it_cannot_resolve(tmp_path, source, message):
    with pytest.raises(ScanError, match=re.escape(message)):
        scan_of(tmp_path, source)
