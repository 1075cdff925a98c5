"""The ``fmops`` command line: config checks, the local stack, the demo, endpoints and review.

    fmops config check FILE [--models a,b] [--target local]
    fmops config reference [--write FILE | --check FILE]
    fmops plan --config FILE [--json] [--models a,b] [--target sagemaker] [--run-id ID]
    fmops data validate --config FILE [--train URI] [--eval URI] [--report-dir DIR]
    fmops jobs list|describe|logs|stop [NAME] [--follow] [--status S]
    fmops stack up|down|status
    fmops demo [--config FILE] [--profile local|team]
    fmops endpoint status|invoke|delete|start|rollback NAME [TEXT ...] [--variant COLOR]
    fmops approve|reject MODEL VERSION [--comment TEXT] [--user USER] [--airflow-url URL] [--run ID]

Exit status: 0 on success, 1 on a failure (a failed validation, an endpoint error), 2 on bad or
unusable input (config, arguments, a missing or unreadable dataset).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from typing import Any

import yaml

EXIT_FAILURE, EXIT_BAD_INPUT = 1, 2
# The reviewer's Airflow login for fmops approve|reject (never a flag: a password in argv is in
# the shell's history and in every process listing).
USER_ENV, PASSWORD_ENV, AIRFLOW_URL_ENV = (
    "FMOPS_AIRFLOW_USER",
    "FMOPS_AIRFLOW_PASSWORD",
    "FMOPS_AIRFLOW_URL",
)


def _config_check(args: argparse.Namespace) -> int:
    from fmops.config import ConfigError, load_config

    models = [m for m in (args.models or "").split(",") if m]
    try:
        config = load_config(args.file, models=models or None, target=args.target)
        labels = config.data.label_set()
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as err:
        print(f"invalid pipeline config {args.file}: data.labels: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"# {args.file}: valid ({len(config.candidates)} candidates, {len(labels)} labels)")
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _config_reference(args: argparse.Namespace) -> int:
    """Print the configuration reference, or keep FILE's block between the markers current.
    Exit 1: ``--check`` found it stale; 2: FILE is unreadable or has no markers."""
    from fmops import config_reference

    if not (args.write or args.check):
        print(config_reference.render(), end="")
        return 0
    path = args.write or args.check
    try:
        if args.write:
            changed = config_reference.update(path)
            print(f"{path}: configuration reference {'updated' if changed else 'already current'}")
            return 0
        if config_reference.check(path):
            return 0
    except (config_reference.ReferenceMarkersError, OSError) as err:
        print(f"fmops config reference: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    fix = config_reference.FIX.format(path=path)
    print(f"{path}: the configuration reference is stale; {fix}", file=sys.stderr)
    return EXIT_FAILURE


def _plan(args: argparse.Namespace) -> int:
    """Every request a run of the config would send (jobs, then fmops_deploy's endpoint), with
    instance choices, cost upper bounds and the endpoint's hourly rate; computed without AWS (no
    AWS call, no credentials; a Hub base model's JSON files come from the Hub or its cache).
    Exit 2 if it cannot be planned, or the config is invalid; 1 if the Hub is unreachable."""
    from fmops.catalog import CatalogError
    from fmops.config import ConfigError, load_config
    from fmops.hub_models import HubModelError, HubUnreachableError
    from fmops.jobs.specs import PlanError
    from fmops.plan_text import render_text
    from fmops.storage import jsonable
    from fmops.targets import get_target

    models = [m for m in (args.models or "").split(",") if m]
    try:
        config = load_config(args.config, models=models or None, target=args.target)
        result = get_target(config.target).plan_run(config, args.dag_id, args.run_id)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    except (PlanError, CatalogError, HubModelError) as err:
        print(f"cannot plan {args.config}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HubUnreachableError as err:  # transient: the same command may work later
        print(f"cannot plan {args.config} now: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(jsonable(result), indent=1))
    else:
        print(render_text(result, args.config), end="")
    return 0


def _data_validate(args: argparse.Namespace) -> int:
    """Exit 0: passed (warnings allowed); 1: failed; 2: unusable input. Always the summary."""
    import tempfile
    from pathlib import Path

    from fmops.config import ConfigError, load_config
    from fmops.data.loading import DataError
    from fmops.pipeline import run_validation

    try:
        config = load_config(args.config)
        folder = Path(args.report_dir or tempfile.mkdtemp(prefix="fmops-validation-"))
        report, _, _ = run_validation(config, folder, args.train, args.eval)
    except (ConfigError, DataError) as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    print(report.summary())
    return 0 if report.success else EXIT_FAILURE


def _jobs(args: argparse.Namespace) -> int:
    """People's view of the jobs: list, describe, logs (--follow), stop."""
    import time

    from botocore.exceptions import ClientError

    from fmops.jobs.backend import TERMINAL, describe, get_backend, is_not_found, status_of
    from fmops.storage import jsonable

    backend = get_backend(args.target)
    if args.action == "list":
        training = _listed(backend.list_training_jobs, "TrainingJobSummaries", args.limit)
        processing = _listed(backend.list_processing_jobs, "ProcessingJobSummaries", args.limit)
        rows = [("training", s) for s in training] + [("processing", s) for s in processing]
        print(f"{'job':44} {'kind':10} {'status':10} {'detail':18} created")
        for kind, s in sorted(rows, key=lambda r: r[1]["CreationTime"], reverse=True):
            prefix = "Training" if kind == "training" else "Processing"
            status = s[f"{prefix}JobStatus"]
            if args.status and status != args.status:
                continue
            print(
                f"{s[f'{prefix}JobName']:44} {kind:10} {status:10} "
                f"{s.get('SecondaryStatus', ''):18} {s['CreationTime']:%Y-%m-%d %H:%M:%S}"
            )
        return 0
    kind = None
    for candidate in ("training", "processing"):
        try:
            description = describe(backend, candidate, args.name)
            kind = candidate
            break
        except ClientError as err:
            if not is_not_found(err):
                raise
    if kind is None:
        print(f"no job {args.name!r}; `fmops jobs list` shows the jobs", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.action == "describe":
        print(json.dumps(jsonable(description), indent=1))
    elif args.action == "stop":
        getattr(backend, f"stop_{kind}_job")(
            **{"TrainingJobName" if kind == "training" else "ProcessingJobName": args.name}
        )
        print(f"asked {kind} job {args.name} to stop (was {status_of(kind, description)})")
    else:
        offset = 0
        while True:
            text, offset = backend.read_log(kind, args.name, offset)
            print(text, end="", flush=True)
            if not args.follow or status_of(kind, describe(backend, kind, args.name)) in TERMINAL:
                while text:  # a read returns at most a batch: read on until nothing is left
                    text, offset = backend.read_log(kind, args.name, offset)
                    print(text, end="", flush=True)
                return 0
            time.sleep(2)
    return 0


def _listed(list_jobs: Any, field: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` summaries from ``list_jobs`` (ListTrainingJobs/ListProcessingJobs),
    following NextToken: SageMaker pages 10 at a time, the local executor answers with all."""
    summaries: list[dict[str, Any]] = []
    token = None
    while len(summaries) < limit:
        page = list_jobs(
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=min(100, limit - len(summaries)),
            **({"NextToken": token} if token else {}),
        )
        summaries += page[field]
        token = page.get("NextToken")
        if not token:
            break
    return summaries[:limit]


def _stack(args: argparse.Namespace) -> int:
    from fmops import stack, team_stack

    if args.action == "up" and args.profile == "team":
        print(
            "starting the team stack: PostgreSQL, Redis, S3 (moto), MLflow, the Airflow api-server,"
            f" scheduler, dag-processor, triggerer and {team_stack.WORKERS} Celery workers"
        )
        team_stack.start()
        user, _ = team_stack.admin_credentials()
        print(
            f"Airflow UI:  {team_stack.airflow_url()}  (user {user}, password "
            f"_AIRFLOW_WWW_USER_PASSWORD in {team_stack.secrets_file()})"
        )
        print(f"MLflow UI:   {team_stack.mlflow_url()}")
    elif args.action == "up":
        print(
            "starting PostgreSQL, airflow standalone and mlflow server (first start: a minute"
            " or two)"
        )
        team_stack.start_local()
        print(
            f"Airflow UI:  {stack.airflow_url()}  (user admin, password in {stack.password_file()})"
        )
        print(f"MLflow UI:   {stack.mlflow_url()}")
    elif args.action == "down":  # whichever profile runs
        stopped = stack.stop() + team_stack.stop()
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    elif args.profile == "team":
        print(json.dumps(team_stack.status(), indent=1))
    else:
        print(json.dumps(stack.status(), indent=1))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fmops.demo import run_demo

    return run_demo(args.config, args.profile)


def _endpoint(args: argparse.Namespace) -> int:
    from fmops.deployment.local import EndpointError, LocalEndpoint
    from fmops.deployment.rollout import rollback_to_stable

    try:
        endpoint = LocalEndpoint(args.name)
    except ValueError as err:  # not an endpoint's name (a path, say): nothing to look up
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    if not endpoint.exists():
        print(f"no endpoint {args.name!r}; deploy a model with fmops_deploy first", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.action == "status":
            print(json.dumps(endpoint.status(window=args.window), indent=1))
            return 0
        if args.action == "delete":
            endpoint.delete()
            print(f"deleted endpoint {args.name}")
            return 0
        if args.action == "start":
            print(json.dumps(endpoint.start(), indent=1))
            return 0
        if args.action == "rollback":
            print(json.dumps(rollback_to_stable(endpoint, note="fmops endpoint rollback")))
            return 0
        if not args.texts:
            print("give at least one text to classify", file=sys.stderr)
            return EXIT_BAD_INPUT
        status, body = endpoint.invoke({"inputs": args.texts}, target_variant=args.variant)
    except (EndpointError, OSError) as err:
        print(f"endpoint {args.name}: {err}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(body, indent=1))
    return 0 if status == 200 else EXIT_FAILURE


def _decide(args: argparse.Namespace) -> int:
    """``fmops approve|reject MODEL VERSION``: answer fmops_deploy's await_approval through
    Airflow's REST API as the reviewer's own Airflow user (``fmops.review_client``). Exit 2 for
    what the reviewer must change (credentials, version, run), 1 when Airflow or MLflow cannot
    be reached."""
    from fmops import review_client, stack
    from fmops.registry import tracking

    password = os.environ.get(PASSWORD_ENV)
    if password is None and sys.stdin.isatty():
        password = getpass.getpass(f"Airflow password of {args.user}: ")
    if not password:
        print(
            f"fmops {args.command}: no password for Airflow user {args.user!r}: set "
            f"{PASSWORD_ENV}, or run in a terminal to be asked",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    reviewer = review_client.Reviewer(
        airflow_url=args.airflow_url or os.environ.get(AIRFLOW_URL_ENV) or stack.airflow_url(),
        username=args.user,
        password=password,
    )
    try:
        run_id = args.run
        if not run_id:
            uri = args.tracking_uri or tracking.tracking_uri()
            problem = tracking.unreachable(uri)
            if problem:
                raise review_client.ReviewError(
                    f"MLflow at {uri} cannot be reached ({problem}): is it running (`make up` "
                    "starts the local stack)? Otherwise give its address with --tracking-uri or "
                    "MLFLOW_TRACKING_URI, or name the waiting run with --run",
                    exit_code=EXIT_FAILURE,
                )
            run_id = review_client.waiting_run(uri, args.model, args.version)
        answer = review_client.decide(
            reviewer, args.model, args.version, run_id, args.command == "approve", args.comment
        )
    except review_client.ReviewError as err:
        print(f"fmops {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    who = (answer.get("responded_by_user") or {}).get("name", args.user)
    if answer.get("state") in review_client.FAILED:
        print(
            f"fmops {args.command}: {answer['chosen_options'][0]} by {who} was recorded, but "
            f"await_approval of fmops_deploy run {run_id} ended {answer['state']} instead of "
            "acting on it: nothing was deployed; see the task's log in the Airflow UI, then "
            f"trigger fmops_deploy with version {args.version} and decide again",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    goes_on = (
        "goes on; the version's MLflow tags record it"
        if answer.get("confirmed", True)
        else f"has not acted on it within {review_client.CONFIRM_SECONDS:.0f} s: see its "
        "await_approval in the Airflow UI"
    )
    print(
        f"{args.model} version {args.version}: {answer['chosen_options'][0]} by {who} "
        f"(fmops_deploy run {run_id} {goes_on})"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    from fmops.plan_text import DAG_ID, PLAN_RUN_ID
    from fmops.targets import NAMES

    root = argparse.ArgumentParser(prog="fmops", description=__doc__.split("\n\n")[0])
    root.add_argument(
        "--verbose",
        action="store_true",
        help="show the libraries' logging and progress bars (Great Expectations, MLflow, ...)",
    )
    commands = root.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="check a pipeline config, or print the reference")
    config_actions = config.add_subparsers(dest="action", required=True)
    check = config_actions.add_parser("check", help="validate FILE and print the resolved config")
    check.add_argument("file")
    check.add_argument("--models", help="comma-separated subset of candidates")
    check.add_argument("--target", choices=NAMES)
    check.set_defaults(func=_config_check)
    reference = config_actions.add_parser(
        "reference", help="print the Markdown reference of every config key (the README's)"
    )
    reference_file = reference.add_mutually_exclusive_group()
    reference_file.add_argument(
        "--write", metavar="FILE", help="replace the reference between FILE's markers"
    )
    reference_file.add_argument(
        "--check", metavar="FILE", help="exit 1 if the reference in FILE is stale"
    )
    reference.set_defaults(func=_config_reference)

    plan = commands.add_parser(
        "plan",
        help="print the job and endpoint requests a run would send, with instances and costs "
        "(offline)",
    )
    plan.add_argument("--config", required=True, help="pipeline YAML")
    plan.add_argument("--json", action="store_true", help="one JSON object on stdout")
    plan.add_argument("--models", help="comma-separated subset of candidates")
    plan.add_argument("--target", choices=NAMES, help="default: the config's")
    plan.add_argument("--dag-id", default=DAG_ID, help="names and tags the jobs")
    plan.add_argument(
        "--run-id", default=PLAN_RUN_ID, help="the run the job names and tags are for"
    )
    plan.set_defaults(func=_plan)

    data = commands.add_parser("data", help="validate datasets as validate_data does")
    data_actions = data.add_subparsers(dest="action", required=True)
    validate = data_actions.add_parser("validate", help="run the config's data checks")
    validate.add_argument("--config", required=True, help="pipeline YAML")
    validate.add_argument("--train", help="training data URI (default: the config's)")
    validate.add_argument("--eval", help="evaluation data URI (default: the config's)")
    validate.add_argument("--report-dir", help="where to write the reports (default: a temp dir)")
    validate.set_defaults(func=_data_validate)

    jobs = commands.add_parser("jobs", help="training and evaluation jobs")
    jobs.add_argument("action", choices=["list", "describe", "logs", "stop"])
    jobs.add_argument("name", nargs="?", help="job name (all but list)")
    jobs.add_argument("--target", default="local", choices=NAMES)
    jobs.add_argument("--status", help="list: only jobs in this status (e.g. InProgress)")
    jobs.add_argument(
        "--limit", type=int, default=100, help="list: the newest N jobs of each kind (100)"
    )
    jobs.add_argument("--follow", action="store_true", help="logs: until the job ends")
    jobs.set_defaults(func=_jobs)

    stack = commands.add_parser("stack", help="the local or the team Airflow + MLflow stack")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument(
        "--profile",
        choices=["local", "team"],
        default="local",
        help="local: airflow standalone + mlflow server (default); team: docker-compose.yaml's "
        "services natively (CeleryExecutor with 2 workers, PostgreSQL, Redis, S3). "
        "down stops either",
    )
    stack.set_defaults(func=_stack)

    demo = commands.add_parser("demo", help="run both DAGs on the local stack, end to end")
    demo.add_argument("--config", default="include/configs/local.yaml")
    demo.add_argument(
        "--profile",
        choices=("local", "team"),
        default="local",
        help="the stack to run it on: local (make up) or team (make up-team)",
    )
    demo.set_defaults(func=_demo)

    endpoint = commands.add_parser(
        "endpoint",
        help="a local endpoint: status (routing, versions, per-variant stats), invoke, delete, "
        "start (after its processes stopped), rollback (to its last stable routing)",
    )
    endpoint.add_argument("action", choices=["status", "invoke", "delete", "start", "rollback"])
    endpoint.add_argument("name")
    endpoint.add_argument("texts", nargs="*", help="texts to classify (invoke)")
    endpoint.add_argument("--variant", help="invoke: send to this variant (blue/green)")
    endpoint.add_argument(
        "--window", type=float, default=60, help="status: seconds of stats (default 60)"
    )
    endpoint.set_defaults(func=_endpoint)

    for action, effect in (("approve", "deploys it"), ("reject", "ends it without deploying")):
        decide = commands.add_parser(
            action,
            help=f"{action} a model version that an fmops_deploy run waits on (as your Airflow "
            f"user, through Airflow's REST API); the run {effect}",
        )
        decide.add_argument("model", help="registered model name")
        decide.add_argument("version", help="model version number")
        decide.add_argument("--comment", default="", help="why (recorded on the version)")
        decide.add_argument(
            "--user",
            default=os.environ.get(USER_ENV, "admin"),
            help=f"your Airflow user (default: ${USER_ENV}, else admin); the password comes "
            f"from ${PASSWORD_ENV}, else a prompt",
        )
        decide.add_argument(
            "--airflow-url",
            help=f"Airflow's address (default: ${AIRFLOW_URL_ENV}, else the local stack's)",
        )
        decide.add_argument(
            "--run", help="the fmops_deploy run id (default: the one the version's tags name)"
        )
        decide.add_argument(
            "--tracking-uri",
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the local store)",
        )
        decide.set_defaults(func=_decide)

    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # A command speaks to a person: fmops' own messages, the libraries' only when they warn,
    # and no progress bars (tqdm reads TQDM_DISABLE), unless --verbose.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("fmops").setLevel(logging.INFO)
    if not args.verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")
    if getattr(args, "command", None) == "jobs" and args.action != "list" and not args.name:
        print(f"fmops jobs {args.action} needs a job name", file=sys.stderr)
        return EXIT_BAD_INPUT
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
