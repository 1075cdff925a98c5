"""Every command in the README is exercised by a test or by CI.

The README's shell commands (```bash, ```sh and ```console blocks) are read one per line:
continuation lines are joined to the line they continue, comments and blank lines are ignored,
``$ `` prompts are stripped (in a console block only the prompted lines are commands), and a
line of several commands joined by ``&&`` counts as each of them. Each command is looked up in
``COMMANDS`` by its longest matching prefix, after normalising: leading ``NAME=value``
assignments dropped, ``.venv/bin/`` dropped, and ``curl`` reduced to its method and URL path.

An entry names where the command runs: a test (``file::function``, checked with ``ast``), CI
(``.ci/run``, checked against its text), or ``HERE``: this module runs the cheap, offline ones
itself. Commands that cannot run on the development machines (there is no Docker engine) map to
the static test of the files they rely on, marked ``STATIC``, and must be quoted verbatim from
those files. A ``make`` target's recipe is checked against the Makefile, so that the test behind
the underlying command covers the target.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
README = PROJECT_ROOT / "README.md"
CI_SCRIPT = PROJECT_ROOT / ".ci" / "run"
MAKEFILE = PROJECT_ROOT / "Makefile"
BIN = Path(sys.executable).parent

SHELL_LANGUAGES = {"bash", "sh", "console"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SEPARATORS = {"&&", "||", ";"}
CURL_DATA_FLAGS = {"-d", "--data", "--data-raw", "--data-binary", "--json", "-F", "--form"}

CI = ".ci/run"
HERE = "run by this module"
RUNS, STATIC, PARTIAL = "runs", "static", "partial"


@dataclass(frozen=True)
class Where:
    """Where a README command is exercised.

    ``node``: ``tests/<file>.py::<test function>``, ``CI`` or ``HERE``. ``kind``: ``RUNS`` (the
    test runs the command, or the same call in process), ``STATIC`` (the command cannot run here;
    the test checks the files it relies on) or ``PARTIAL`` (the test runs part of what the command
    does; ``note`` says which part). ``recipe``: for ``make`` targets, the recipe line the
    Makefile must have. ``evidence``: text the test's file must contain, where the test reaches
    the command through a fixture. ``quoted_from``: a file that holds the command verbatim.
    """

    node: str
    kind: str = RUNS
    note: str = ""
    recipe: str = ""
    evidence: str = ""
    quoted_from: str = ""


AIRFLOW_API = "tests/integration/test_airflow_api.py"
COMPOSE = "tests/unit/test_compose.py"
COMPOSE_NOTE = "static: no Docker engine on the development machines; the test checks the files"
ROLLOUT = "tests/integration/test_local_rollout.py"
JOBS_CLI = "tests/unit/test_jobs_cli.py::test_list_describe_logs_and_stop"
SAGEMAKER_PLAN = "tests/unit/test_sagemaker_plan.py"
REVIEW = "tests/unit/test_review.py"

COMMANDS: dict[str, Where] = {
    # -- Quick start, the local stack, tests ----------------------------------------------------
    "make demo": Where(
        f"{AIRFLOW_API}::test_make_demo_prints_stages_progress_and_the_live_endpoint",
        note="`fmops demo` (the recipe) end to end on the test's stack, with the small config "
        "(tests/configs/tiny.yaml under names of its own) instead of include/configs/local.yaml; "
        "benchmarks/demo.py runs `make demo` itself with the shipped config",
        recipe="$(BIN)/fmops demo",
        evidence='"demo", "--config"',
    ),
    "make demo-llm": Where(
        f"{AIRFLOW_API}::test_make_demo_llm_tunes_registers_and_serves_a_generative_lm",
        note="`fmops demo --config` end to end on the test's stack, with include/configs/"
        "local-llm.yaml cut to minutes (48 training chats, one epoch); benchmarks/generation.py "
        "runs `make demo-llm` itself with the shipped config",
        recipe="$(BIN)/fmops demo --config include/configs/local-llm.yaml",
        evidence='"demo", "--config", str(demo_llm_config["path"])',
    ),
    "make test": Where(CI, recipe="$(BIN)/pytest -n 2"),
    "make test-quick": Where(
        "tests/unit/test_readme.py::test_make_test_quick_deselects_a_registered_marker",
        STATIC,
        note='the recipe `pytest -m "not e2e"` and the e2e marker; CI runs the superset, make test',
        recipe='$(BIN)/pytest -m "not e2e"',
    ),
    "make up": Where(
        f"{AIRFLOW_API}::test_the_trigger_form_params_have_titles_and_sections",
        note="`fmops stack up` in the module's `stack` fixture, under which every test there runs",
        recipe="$(BIN)/fmops stack up",
        evidence='local.fmops("up"',
    ),
    "make up-team": Where(
        "tests/integration/test_team_stack.py::"
        "test_the_pipeline_runs_on_the_team_stack_through_a_killed_worker_and_an_mlflow_outage",
        note="`fmops stack up --profile team` in the module's `team` fixture (and again after "
        "each fault); its teardown runs `fmops stack down` and checks nothing is left",
        recipe="$(BIN)/fmops stack up --profile team",
        evidence='"stack", "up", "--profile", "team"',
    ),
    "make down": Where(
        f"{AIRFLOW_API}::test_the_trigger_form_params_have_titles_and_sections",
        note="`fmops stack down` in the teardown of the `stack` fixture, which then checks that no "
        "process of the stack is left and both ports are closed",
        recipe="$(BIN)/fmops stack down",
        evidence='local.fmops("down"',
    ),
    # -- Scheduled runs: an asset event through the REST API -------------------------------------
    "curl POST /auth/token": Where(
        f"{AIRFLOW_API}::test_an_asset_event_for_the_training_data_starts_a_run",
        note="the login of the `api` fixture (simple auth manager, admin password file): "
        "tests/airflow_rest.py's RestApi.login posts to /auth/token",
        evidence="client.login()",
    ),
    "curl GET /api/v2/assets": Where(
        f"{AIRFLOW_API}::test_an_asset_event_for_the_training_data_starts_a_run",
        evidence='"/assets", uri_pattern=',
    ),
    "curl POST /api/v2/assets/events": Where(
        f"{AIRFLOW_API}::test_an_asset_event_for_the_training_data_starts_a_run",
        evidence='"POST", "/assets/events"',
    ),
    # -- The sagemaker target --------------------------------------------------------------------
    "fmops config check include/configs/sagemaker.example.yaml": Where(HERE),
    "fmops plan --config include/configs/sagemaker.example.yaml": Where(
        f"{SAGEMAKER_PLAN}::test_cli_text_plan_in_process", note="with --models minilm-full"
    ),
    "fmops plan --config include/configs/sagemaker.example.yaml --json": Where(
        f"{SAGEMAKER_PLAN}::test_cli_json_plan_lists_jobs_instances_and_costs"
    ),
    # -- docker compose: the commands of docker-compose.yaml's header ----------------------------
    "mkdir -p ./logs ./config": Where(
        f"{COMPOSE}::test_airflow_common_anchor_is_used_by_every_airflow_service",
        STATIC,
        note=f"{COMPOSE_NOTE} (the mounts of ./logs and ./config)",
        quoted_from="docker-compose.yaml",
    ),
    "cp .env.example .env": Where(
        f"{COMPOSE}::test_every_variable_is_documented_in_env_example",
        STATIC,
        note=COMPOSE_NOTE,
        quoted_from="docker-compose.yaml",
    ),
    'echo "AIRFLOW_UID=$(id -u)" >> .env': Where(
        f"{COMPOSE}::test_header_documents_supported_variables",
        STATIC,
        note=COMPOSE_NOTE,
        quoted_from="docker-compose.yaml",
    ),
    "docker compose build": Where(
        f"{COMPOSE}::test_dockerfile_installs_the_lock_and_the_package_only",
        STATIC,
        note=COMPOSE_NOTE,
        quoted_from="docker-compose.yaml",
    ),
    "docker compose up airflow-init": Where(
        f"{COMPOSE}::test_services_without_healthcheck_are_one_shot_or_debug",
        STATIC,
        note=COMPOSE_NOTE,
        quoted_from="docker-compose.yaml",
    ),
    "docker compose up -d": Where(
        f"{COMPOSE}::test_depends_on_conditions",
        STATIC,
        note=COMPOSE_NOTE,
        quoted_from="docker-compose.yaml",
    ),
    # -- Configuration ---------------------------------------------------------------------------
    "fmops config check include/configs/local.yaml": Where(
        "tests/unit/test_cli_config.py::test_config_check_good_shipped_file"
    ),
    "fmops config reference --check README.md": Where(HERE),
    "fmops config reference --write README.md": Where(
        "tests/unit/test_config_reference.py::test_cli_check_write_check",
        note="on a README.md in a temporary folder",
    ),
    # -- Operations ------------------------------------------------------------------------------
    "fmops --help": Where(HERE),
    "fmops approve": Where(
        f"{REVIEW}::test_an_unreachable_airflow_is_named_at_once_and_is_a_failure",
        note="approve against a running api-server: the same request as reject in "
        f"{AIRFLOW_API}::test_a_review_is_decided_only_by_an_authenticated_reviewer; what an "
        f"approval records: {REVIEW}::test_an_approval_records_the_authenticated_reviewer",
    ),
    "fmops reject": Where(
        f"{AIRFLOW_API}::test_a_review_is_decided_only_by_an_authenticated_reviewer",
        note="--user, --airflow-url: the defaults there; a named --airflow-url in "
        f"{REVIEW}::test_an_unreachable_airflow_is_named_at_once_and_is_a_failure",
    ),
    "fmops endpoint status": Where(f"{ROLLOUT}::test_cli_status_and_invoke"),
    "fmops endpoint invoke": Where(f"{ROLLOUT}::test_cli_status_and_invoke"),
    "fmops endpoint rollback": Where(f"{ROLLOUT}::test_cli_status_and_invoke"),
    "fmops endpoint delete": Where(
        f"{ROLLOUT}::test_a_killed_deploy_is_rolled_back_to_the_stable_routing"
    ),
    "curl POST /invocations": Where(
        "tests/integration/test_pipeline_e2e.py::test_deploy_serves_the_registered_version",
        note="the same POST through the router (LocalEndpoint.invoke) after a real deployment",
    ),
    "fmops jobs list": Where(JOBS_CLI),
    "fmops jobs describe": Where(JOBS_CLI),
    "fmops jobs logs": Where(JOBS_CLI),
    "fmops jobs stop": Where(JOBS_CLI),
    "fmops jobs list --target sagemaker": Where(
        "tests/unit/test_sagemaker_backend.py::test_jobs_cli_lists_past_the_first_page_on_sagemaker",
        note="against a moto server through an Airflow connection",
    ),
    "fmops data validate --config include/configs/local.yaml": Where(
        "tests/unit/test_data_cli.py::test_the_shipped_config_passes"
    ),
    # -- How it works: a job script run as its container would -----------------------------------
}


# -- reading the README ----------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One command of a README shell block: where it is, its text and its normalised words."""

    line: int
    text: str
    words: tuple[str, ...]
    argv: tuple[str, ...]


def _logical_lines(block: list[tuple[int, str]], console: bool) -> list[tuple[int, str]]:
    """Commands of one block as (line number, text): prompts stripped, continuations joined."""
    found: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in block:
        line = raw.rstrip()
        if pending is None:
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:].strip()
            elif console:
                continue  # output in a console block
            if not stripped or stripped.startswith("#"):
                continue
            pending = (number, stripped)
        else:
            pending = (pending[0], f"{pending[1]} {line.strip()}")
        if pending[1].endswith("\\"):
            pending = (pending[0], pending[1][:-1].rstrip())
            continue
        found.append(pending)
        pending = None
    if pending is not None:
        found.append(pending)
    return found


def normalise(argv: list[str]) -> tuple[str, ...]:
    """The words a command is looked up by: no leading assignments, no ``.venv/bin/``, and
    ``curl`` as ``curl METHOD PATH``."""
    while argv and ASSIGNMENT.match(argv[0]):
        argv = argv[1:]
    if not argv:
        return ()
    head = argv[0].removeprefix(".venv/bin/")
    if head == "curl":
        return _curl_words(argv)
    return (head, *argv[1:])


def _curl_words(argv: list[str]) -> tuple[str, ...]:
    method = None
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag in ("-X", "--request"):
            method = value.upper()
    if method is None:
        method = "POST" if CURL_DATA_FLAGS & set(argv) else "GET"
    urls = [word for word in argv if re.match(r"^https?://", word)]
    path = urlsplit(urls[0]).path if urls else "<no URL>"
    return ("curl", method, path)


def shell_commands(text: str) -> list[Command]:
    """Every command of the ```bash, ```sh and ```console blocks of a Markdown text."""
    commands: list[Command] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        index += 1
        if not fence:
            continue
        block: list[tuple[int, str]] = []
        while index < len(lines) and not lines[index].strip().startswith("```"):
            block.append((index + 1, lines[index]))
            index += 1
        index += 1  # the closing fence
        language = fence["lang"].lower()
        if language not in SHELL_LANGUAGES:
            continue
        for number, logical in _logical_lines(block, console=language == "console"):
            words = shlex.split(logical, comments=True)
            part: list[str] = []
            for word in [*words, ";"]:
                if word not in SEPARATORS:
                    part.append(word)
                    continue
                if part:
                    commands.append(
                        Command(number, shlex.join(part), normalise(list(part)), tuple(part))
                    )
                part = []
    return commands


def lookup(command: Command) -> str | None:
    """The table key of the longest prefix of the command's words, if any."""
    matches = [key for key in COMMANDS if command.words[: len(key_words(key))] == key_words(key)]
    return max(matches, key=lambda key: len(key_words(key)), default=None)


def key_words(key: str) -> tuple[str, ...]:
    return tuple(shlex.split(key))


README_COMMANDS = shell_commands(README.read_text())


def _node_parts(node: str) -> tuple[Path, list[str]]:
    path, *names = node.split("::")
    return PROJECT_ROOT / path, names


def _function_defined(path: Path, names: list[str]) -> bool:
    """Whether ``names`` (``[function]`` or ``[Class, method]``) is defined in the module."""
    body = ast.parse(path.read_text(), filename=str(path)).body
    for name in names[:-1]:
        classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == name]
        if not classes:
            return False
        body = classes[0].body
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    return any(isinstance(n, functions) and n.name == names[-1] for n in body)


def _makefile_recipe(target: str) -> list[str]:
    lines = MAKEFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            recipe = []
            for following in lines[index + 1 :]:
                if not following.startswith("\t"):
                    break
                recipe.append(following.strip())
            return recipe
    return []


def _ci_commands() -> list[tuple[str, ...]]:
    """The commands of .ci/run, one per logical line (a line shlex cannot split, such as one
    inside a subshell, is split on whitespace: it only has to not match)."""
    numbered = list(enumerate(CI_SCRIPT.read_text().splitlines(), start=1))
    commands = []
    for _, line in _logical_lines(numbered, console=False):
        try:
            commands.append(tuple(shlex.split(line, comments=True)))
        except ValueError:
            commands.append(tuple(line.split()))
    return commands


# -- the tests -------------------------------------------------------------------------------


def test_the_readme_has_shell_commands():
    found = {command.words for command in README_COMMANDS}
    assert ("make", "demo") in found and ("make", "test") in found, sorted(found)
    assert len(README_COMMANDS) >= 10, README_COMMANDS


def test_every_readme_command_is_in_the_table():
    unknown = [f"README.md:{c.line}: {c.text}" for c in README_COMMANDS if lookup(c) is None]
    assert not unknown, (
        "commands in README.md that no entry of COMMANDS in tests/unit/test_readme.py maps to "
        "a test or CI step; add the test that runs each (or drop the command):\n"
        + "\n".join(unknown)
    )


def test_every_table_entry_is_used_by_the_readme():
    used = {lookup(command) for command in README_COMMANDS}
    stale = sorted(set(COMMANDS) - used)
    assert not stale, f"entries of COMMANDS that no README command uses any more: {stale}"


@pytest.mark.parametrize("key", sorted(COMMANDS))
def test_every_entry_names_an_existing_test_or_ci(key):
    where = COMMANDS[key]
    assert where.kind in (RUNS, STATIC, PARTIAL), (key, where.kind)
    if where.kind != RUNS:
        assert where.note, f"{key!r}: a {where.kind} entry says in its note what is checked"
    if where.node == HERE:
        assert where.kind == RUNS and key.startswith("fmops "), key
        return
    if where.node == CI:
        assert key_words(key) in _ci_commands(), f"{key!r} is not a command of {CI}"
        return
    path, names = _node_parts(where.node)
    assert path.is_file(), f"{key!r}: no test file {path.relative_to(PROJECT_ROOT)}"
    assert names and names[-1].startswith("test"), f"{key!r}: {where.node} names no test"
    assert _function_defined(path, names), f"{key!r}: {where.node} does not exist"
    if where.evidence:
        assert where.evidence in path.read_text(), (
            f"{key!r}: {path.relative_to(PROJECT_ROOT)} no longer contains {where.evidence!r}, "
            "through which it ran the command"
        )


@pytest.mark.parametrize("key", sorted(k for k in COMMANDS if k.startswith("make ")))
def test_make_targets_run_the_recipe_the_table_says(key):
    where = COMMANDS[key]
    target = key_words(key)[1]
    assert where.recipe, f"{key!r}: give the Makefile recipe line it must run"
    recipe = _makefile_recipe(target)
    assert where.recipe in recipe, f"Makefile target {target!r} runs {recipe}, not {where.recipe!r}"


@pytest.mark.parametrize(
    "command",
    [c for c in README_COMMANDS if (k := lookup(c)) and COMMANDS[k].quoted_from],
    ids=lambda c: c.text,
)
def test_static_commands_are_quoted_from_their_file(command):
    source = PROJECT_ROOT / COMMANDS[lookup(command)].quoted_from
    readme_line = README.read_text().splitlines()[command.line - 1].strip()
    text = readme_line.split(" #", 1)[0].strip()
    assert text in source.read_text(), f"README.md:{command.line}: {text!r} is not in {source}"


def test_make_test_quick_deselects_a_registered_marker():
    pytest_settings = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]
    options = pytest_settings["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"].split()
    assert any(marker.startswith("e2e:") for marker in options["markers"]), options["markers"]
    assert '$(BIN)/pytest -m "not e2e"' in _makefile_recipe("test-quick")


@pytest.mark.parametrize(
    "command",
    [c for c in README_COMMANDS if (k := lookup(c)) and COMMANDS[k].node == HERE],
    ids=lambda c: c.text,
)
def test_the_cheap_commands_run(command):
    argv = [str(BIN / command.argv[0].removeprefix(".venv/bin/")), *command.argv[1:]]
    assert Path(argv[0]).name == "fmops", argv
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # offline: nothing here may reach AWS
    result = subprocess.run(
        argv, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"README.md:{command.line}: {command.text}\n{result.stderr}"


SAMPLE = """\
Intro with `make inline` that is no command.

```bash
make up   # a comment
# a comment line

.venv/bin/fmops reject m 3 --reviewer bob \\
    --comment "two words"
A=1 B='x y' .venv/bin/python include/scripts/train.py
docker compose build && docker compose up -d
curl -s 'http://127.0.0.1:8080/api/v2/assets?uri_pattern=x' -H "Authorization: Bearer $T"
curl -s http://h:1/invocations -d '{"inputs": ["a"]}'
```

```console
$ fmops --help
usage: fmops [-h]
```

```text
make not-a-shell-block
```

- a list item:

  ```sh
  .venv/bin/fmops data validate --config c.yaml
  ```
"""


def test_the_reader_takes_commands_as_a_shell_would():
    commands = shell_commands(SAMPLE)
    assert [(c.line, c.words) for c in commands] == [
        (4, ("make", "up")),
        (7, ("fmops", "reject", "m", "3", "--reviewer", "bob", "--comment", "two words")),
        (9, ("python", "include/scripts/train.py")),
        (10, ("docker", "compose", "build")),
        (10, ("docker", "compose", "up", "-d")),
        (11, ("curl", "GET", "/api/v2/assets")),
        (12, ("curl", "POST", "/invocations")),
        (16, ("fmops", "--help")),
        (27, ("fmops", "data", "validate", "--config", "c.yaml")),
    ]


def test_lookup_takes_the_longest_prefix():
    [plain, sagemaker, other] = shell_commands(
        "```bash\nfmops jobs list --status X\nfmops jobs list --target sagemaker\nfmops nope\n```\n"
    )
    assert lookup(plain) == "fmops jobs list"
    assert lookup(sagemaker) == "fmops jobs list --target sagemaker"
    assert lookup(other) is None
