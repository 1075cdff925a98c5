"""Failure notifications: a real webhook (an HTTP server on 127.0.0.1) receives what the notifier
posts, from a failed task under ``dag.test()`` and from direct calls of the callback."""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from airflow.sdk import Connection

from fmops.airflow.notify import (
    FailureNotifier,
    NotificationError,
    describe_error,
    failure_message,
    failure_notifier,
    post_message,
    webhook_url,
)

SECRET = "T0FMOPS/B0ALERTS/s3cretW3bhookT0ken"
ENV = "AIRFLOW_CONN_FMOPS_ALERTS"


class Webhook:
    """What the server received (path, JSON body) and what it answers next, in order."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/services"
        self.posts: list[tuple[str, dict]] = []
        self.answers: list[tuple[int, str, dict[str, str]]] = []

    def answer(self, *statuses: int, body: str = "", headers: dict[str, str] | None = None):
        self.answers.extend((status, body, headers or {}) for status in statuses)

    @property
    def texts(self) -> list[str]:
        return [payload["text"] for _, payload in self.posts]


@pytest.fixture
def webhook():
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.posts.append((self.path, json.loads(body)))
            status, text, headers = hook.answers.pop(0) if hook.answers else (200, "ok", {})
            data = text.replace("{path}", self.path).encode()
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook = Webhook(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def alerts_conn(monkeypatch, webhook):
    """``fmops_alerts`` in the documented layout: URL prefix in host, the secret in password."""
    conn = {"conn_type": "http", "host": webhook.base, "password": SECRET}
    monkeypatch.setenv(ENV, json.dumps(conn))
    return webhook


def _write_to_db(dag):
    """Record a DAG defined in a test in the metadata DB, as parsing its file would: ``dag.test()``
    only runs DAGs that a bundle's parse recorded there."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)
    return dag


def _context(error: BaseException | None = None, map_index: int = -1) -> dict:
    ti = SimpleNamespace(
        dag_id="fmops_finetune",
        task_id="await_training",
        run_id="manual__2026-01-01T00:00:00+00:00",
        map_index=map_index,
        try_number=3,
        log_url="http://airflow.example/dags/fmops_finetune/runs/r/tasks/await_training",
    )
    return {"ti": ti, "exception": error or RuntimeError("job failed: out of memory")}


def _notifier(sleeps: list[float], **kwargs) -> FailureNotifier:
    return FailureNotifier(backoff=0.01, sleep=sleeps.append, **kwargs)


def test_failed_task_under_dag_test_posts_the_message(airflow_db, alerts_conn):
    from airflow.sdk import dag, task

    @dag(
        dag_id="notify_failure_probe",
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        default_args={"retries": 0, "on_failure_callback": failure_notifier},
    )
    def probe():
        @task
        def explode(n: int) -> None:
            raise ValueError(f"bad input {n}\nsecond line of the message")

        explode.expand(n=[0, 1])

    run = _write_to_db(probe()).test()

    assert run.state == "failed"
    assert sorted(path for path, _ in alerts_conn.posts) == [f"/services/{SECRET}"] * 2
    texts = sorted(alerts_conn.texts)
    for map_index, text in enumerate(texts):
        assert "notify_failure_probe" in text
        assert f"explode[{map_index}]" in text
        assert f"Reason: ValueError: bad input {map_index}" in text
        assert "second line" not in text
        assert run.run_id in text
        assert "Try: 1" in text
        link = (
            f"/dags/notify_failure_probe/runs/{quote(run.run_id)}/tasks/explode/mapped/{map_index}"
        )
        assert "\nLog: http" in text
        assert link in text


def test_no_connection_logs_the_message_and_posts_nothing(monkeypatch, webhook, caplog):
    monkeypatch.delenv(ENV, raising=False)
    caplog.set_level(logging.DEBUG)

    assert failure_notifier(_context()) is None

    assert webhook.posts == []
    [record] = [r for r in caplog.records if r.name == "fmops.airflow.notify"]
    assert record.levelno == logging.WARNING
    assert "fmops_alerts" in record.getMessage()
    assert "await_training" in record.getMessage()
    assert "RuntimeError: job failed: out of memory" in record.getMessage()


def test_transient_errors_are_retried_with_backoff(alerts_conn, caplog):
    alerts_conn.answer(500, 503, body="try later")
    sleeps: list[float] = []

    _notifier(sleeps)(_context())

    assert len(alerts_conn.posts) == 3
    assert sleeps == [0.01, 0.02]
    assert "Failure notification posted to 127.0.0.1 (try 3)" in caplog.text


def test_retry_after_is_honoured_up_to_the_largest_delay(alerts_conn):
    alerts_conn.answer(429, headers={"Retry-After": "5"})
    alerts_conn.answer(429, headers={"Retry-After": "120"})
    sleeps: list[float] = []

    _notifier(sleeps, max_delay=30)(_context())

    assert len(alerts_conn.posts) == 3
    assert sleeps == [5.0, 30.0]


def test_client_error_is_not_retried_and_does_not_raise(alerts_conn, caplog):
    alerts_conn.answer(400, body="invalid_payload")
    sleeps: list[float] = []

    assert _notifier(sleeps)(_context()) is None

    assert len(alerts_conn.posts) == 1
    assert sleeps == []
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    message = error.getMessage()
    assert "HTTP 400 (invalid_payload)" in message
    assert "check that it accepts Slack's" in message
    assert "await_training" in message  # the undelivered message is kept in the log


def test_giving_up_after_the_last_try_logs_an_error(alerts_conn, caplog):
    alerts_conn.answer(502, 502, 502)
    sleeps: list[float] = []

    _notifier(sleeps, tries=3)(_context())

    assert len(alerts_conn.posts) == 3
    assert sleeps == [0.01, 0.02]
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "HTTP 502, 3 tries; check that 127.0.0.1 is reachable" in error.getMessage()


def test_unreachable_host_is_retried_then_logged(monkeypatch, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conn = {"conn_type": "http", "host": f"http://127.0.0.1:{port}/services", "password": SECRET}
    monkeypatch.setenv(ENV, json.dumps(conn))
    sleeps: list[float] = []

    _notifier(sleeps, tries=2)(_context())

    assert sleeps == [0.01]
    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "did not answer (ConnectionError), 2 tries" in error.getMessage()


@pytest.mark.parametrize(
    "answers",
    [[200], [404], [500, 500, 500, 500]],
    ids=["delivered", "rejected", "gave-up"],
)
def test_the_secret_never_reaches_a_log(alerts_conn, caplog, answers):
    # The server echoes the request path in its answer, as some webhooks do in their errors.
    alerts_conn.answer(*answers, body="no such hook: {path}")
    caplog.set_level(logging.DEBUG)

    _notifier([])(_context())

    assert alerts_conn.posts
    assert "127.0.0.1" in caplog.text
    for part in SECRET.split("/"):
        assert part not in caplog.text


def test_a_complete_url_in_host_is_posted_to_and_kept_out_of_logs(monkeypatch, webhook, caplog):
    monkeypatch.setenv(ENV, json.dumps({"conn_type": "http", "host": f"{webhook.base}/{SECRET}"}))
    webhook.answer(403, body="invalid_token {path}")
    caplog.set_level(logging.DEBUG)

    _notifier([])(_context())

    assert [path for path, _ in webhook.posts] == [f"/services/{SECRET}"]
    assert "wrong or revoked" in caplog.text
    for part in SECRET.split("/"):
        assert part not in caplog.text


@pytest.mark.parametrize("url", [f"http://[::1/{SECRET}", f"ftp://example.com/{SECRET}"])
def test_errors_raised_by_post_message_do_not_name_the_url(url):
    with pytest.raises(NotificationError) as raised:
        post_message(url, {"text": "x"}, sleep=lambda _: None)
    assert "check the webhook URL" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_an_invalid_url_in_the_connection_is_logged_with_the_fix(monkeypatch, caplog):
    monkeypatch.setenv(ENV, json.dumps({"conn_type": "http", "host": "http://[::1/services"}))

    assert failure_notifier(_context()) is None

    [error] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "the webhook URL is not valid (Invalid IPv6 URL)" in error.getMessage()
    assert "crashed" not in caplog.text


@pytest.mark.parametrize(
    ("conn", "url"),
    [
        (
            {"host": "https://hooks.slack.com/services/", "password": "T0/B0/X"},
            "https://hooks.slack.com/services/T0/B0/X",
        ),
        (
            {"host": "https://hooks.slack.com/services/T0/B0/X"},
            "https://hooks.slack.com/services/T0/B0/X",
        ),
        (
            {"uri": "https://:T0%2FB0%2FX@hooks.slack.com/services"},
            "https://hooks.slack.com/services/T0/B0/X",
        ),
        (
            {"uri": "http://:T0%2FB0%2FX@chat.internal:8065/hooks"},
            "http://chat.internal:8065/hooks/T0/B0/X",
        ),
        (
            {"host": "hooks.slack.com", "schema": "https", "password": "services/T0/B0/X"},
            "https://hooks.slack.com/services/T0/B0/X",
        ),
    ],
    ids=["host-and-password", "host-alone", "uri", "uri-with-port", "http-provider-style"],
)
def test_webhook_url_layouts(conn, url):
    if "uri" in conn:
        connection = Connection.from_uri(conn["uri"], conn_id="fmops_alerts")
    else:
        connection = Connection(conn_id="fmops_alerts", conn_type="http", **conn)
    assert webhook_url(connection) == url


def test_a_connection_without_host_is_an_error_with_the_fix():
    with pytest.raises(NotificationError, match="has no host; set the Airflow connection"):
        webhook_url(Connection(conn_id="fmops_alerts", conn_type="http", password=SECRET))


def test_the_message_names_the_mapped_task_and_the_first_line_of_the_reason():
    error = KeyError("x" * 1000 + "\nmore")

    text = failure_message({**_context(error, map_index=4)}, reason_limit=80)

    assert text.splitlines() == [
        "Airflow task failed: fmops_finetune / await_training[4]",
        "Run: manual__2026-01-01T00:00:00+00:00",
        "Try: 3",
        f"Reason: {describe_error(error, 80)}",
        "Log: http://airflow.example/dags/fmops_finetune/runs/r/tasks/await_training",
    ]
    assert len(describe_error(error, 80)) == 80
    assert describe_error(error, 80).startswith("KeyError: 'xxx")
    assert describe_error(ValueError()) == "ValueError"
