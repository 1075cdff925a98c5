"""The local stack's secrets on disk: the Airflow admin password file and the servers' logs are
the user's alone (0600), and the password is fmops' own, never generated (and printed) by
Airflow."""

from __future__ import annotations

import json
import os
import sys

from fmops import processes, stack


def test_the_password_file_is_created_private_with_a_random_admin_password(tmp_path, monkeypatch):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    path = stack.ensure_password_file()
    assert path == stack.password_file()
    assert path.stat().st_mode & 0o777 == 0o600
    passwords = json.loads(path.read_text())
    assert list(passwords) == [stack.ADMIN] and len(passwords[stack.ADMIN]) >= 16
    other = tmp_path / "other"
    monkeypatch.setenv("FMOPS_HOME", str(other))
    assert json.loads(stack.ensure_password_file().read_text()) != passwords  # not a constant


def test_an_existing_password_file_keeps_its_passwords_and_is_made_private(tmp_path, monkeypatch):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    path = stack.password_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"admin": "chosen-by-the-user"}) + "\n")
    path.chmod(0o644)
    assert stack.ensure_password_file() == path
    assert json.loads(path.read_text()) == {"admin": "chosen-by-the-user"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_server_log_is_private_even_when_an_older_one_was_not(tmp_path):
    log = tmp_path / "logs" / "server.log"
    log.parent.mkdir()
    log.write_text("earlier\n")
    log.chmod(0o644)
    identity = processes.spawn_detached([sys.executable, "-c", "print('hello')"], log)
    os.waitpid(int(identity["pid"]), 0)
    assert log.stat().st_mode & 0o777 == 0o600
    assert log.read_text() == "earlier\nhello\n"
    fresh = tmp_path / "logs" / "fresh.log"
    os.waitpid(int(processes.spawn_detached([sys.executable, "-c", "pass"], fresh)["pid"]), 0)
    assert fresh.stat().st_mode & 0o777 == 0o600


def test_airflows_database_password_is_private_random_and_kept(tmp_path, monkeypatch):
    from urllib.parse import urlsplit

    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    database = stack.airflow_db()
    path = stack.airflow_home() / "postgres.password"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == database.password and len(database.password) >= 24
    assert stack.airflow_db() == database  # kept: the cluster was created with it
    url = urlsplit(database.url())
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgresql+psycopg2",
        "127.0.0.1",
        stack.AIRFLOW_DB_PORT,
        "/airflow",
    )
    assert stack.airflow_env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == database.url()
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path / "other"))
    assert stack.airflow_db().password != database.password


def test_the_stack_refuses_a_database_port_another_server_holds(tmp_path, monkeypatch):
    import socket

    import pytest

    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        monkeypatch.setattr(stack, "AIRFLOW_DB_PORT", stranger.getsockname()[1])
        with pytest.raises(stack.StackError, match="FMOPS_AIRFLOW_DB_PORT"):
            stack.start(timeout=5)
    assert not stack.running() and not (tmp_path / "postgres").exists()


def test_the_demo_logs_in_as_the_admin_of_the_stack_it_runs_on(tmp_path, monkeypatch):
    from fmops import team_compose
    from fmops.demo import DemoStack

    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    stack.ensure_password_file()
    local = DemoStack.of("local")
    (password,) = json.loads(stack.password_file().read_text()).values()
    assert local.credentials() == (stack.ADMIN, password)
    assert local.airflow_url == stack.airflow_url()
    team = DemoStack.of("team")
    assert team.credentials() == team_compose.admin_credentials()
    assert team.credentials()[1] != password
    assert team.airflow_url == team_compose.airflow_url()
    assert str(team_compose.secrets_file()) in team.password_hint
