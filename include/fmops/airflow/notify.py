"""Failure notifications: a short message to a chat webhook when a task of an fmops DAG fails.

Wiring, in a DAG's ``default_args``::

    from fmops.airflow.notify import failure_notifier

    default_args = {"retries": 2, "on_failure_callback": failure_notifier}

The callback runs once a task has failed for good (not on the tries that are retried). The message
names the DAG, the task (with its map index when mapped), the run, the try, the reason (the
exception's class and the first line of its message, with the values Airflow masks in logs
masked) and links the task instance's log in the Airflow UI (``[api] base_url`` must be the
address users open for that link to work).

Where it goes is the Airflow connection ``fmops_alerts``, so it can come from the environment
(``AIRFLOW_CONN_FMOPS_ALERTS``), the metadata database or a secrets backend. The layout keeps the
secret part of the webhook URL in the connection's password, which Airflow masks in every log::

    AIRFLOW_CONN_FMOPS_ALERTS='{"conn_type": "http",
        "host": "https://hooks.slack.com/services", "password": "T000/B000/XXXX"}'

The URL posted to is ``host + "/" + password``. The URI form says the same
(``https://:T000%2FB000%2FXXXX@hooks.slack.com/services``: the path is the connection's schema),
and a complete URL in ``host`` with no password works too; this module then masks the URL's path
itself. The body is Slack's ``{"text": ...}``, which Slack-compatible webhooks (Mattermost,
Rocket.Chat, Discord's ``/slack`` endpoint) accept as well.

Without the connection, the message is logged at WARNING and nothing is posted. Connection errors,
timeouts and HTTP 429/5xx are retried with exponential backoff (a ``Retry-After`` is honoured up to
the largest delay); any other answer is final. A message that cannot be delivered is logged as an
error naming the problem and the fix; it never raises out of the callback, so a notification
never changes or hides the task's own failure. Delivery is at least once: a timed-out post that
did arrive is posted again. The webhook URL never appears in a log line or exception message
(urllib3's DEBUG line of each request included).

Importing this module is cheap (DAG files import it when they are parsed): ``requests`` and the
connection lookup are imported when a message is sent.
"""

# Not the Slack provider's SlackWebhookNotifier (apache-airflow-providers-slack 9.11.1, on
# slack_sdk 3.48), which breaks the promises above: slack_sdk retries a connection error once and
# nothing else by default, and its opt-in handlers retry only HTTP 500/503, sleep a 429's whole
# Retry-After (uncapped, no injectable sleep) and never retry a read timeout; the hook raises
# AirflowException on any non-200 answer, with the answer's body (which may echo the secret path)
# in the message; slack_sdk logs the full URL (at DEBUG per request, at INFO when it retries),
# and Airflow masks only the connection's password, not a complete URL in host, which the hook
# refuses anyway (it needs a password) while it reads the URI form's path as the URL's scheme;
# a missing connection raises instead of logging the message; and its text is a Jinja template,
# where the reason here is the exception's first line, masked and truncated.

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

CONN_ID = "fmops_alerts"
REASON_LIMIT = 300
BODY_LIMIT = 200
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
HOW_TO_CONFIGURE = (
    "set the Airflow connection {conn_id!r} with host https://hooks.slack.com/services and "
    "password T.../B.../... (the rest of the webhook URL), or the complete URL in host"
)
CHECK_URL = "check the webhook URL (the connection's host and password)"


class NotificationError(Exception):
    """A message that was not delivered; the text never holds the webhook URL."""


def failure_message(context: Mapping[str, Any], reason_limit: int = REASON_LIMIT) -> str:
    """The message for a failed task, one fact a line, readable without any markup."""
    ti = context.get("ti")
    dag_id = _first(getattr(ti, "dag_id", None), getattr(context.get("dag"), "dag_id", None))
    run_id = _first(
        getattr(ti, "run_id", None),
        context.get("run_id"),
        getattr(context.get("dag_run"), "run_id", None),
    )
    map_index = getattr(ti, "map_index", None)
    task = getattr(ti, "task_id", None) or "-"
    if isinstance(map_index, int) and map_index >= 0:
        task = f"{task}[{map_index}]"
    reason = describe_error(context.get("exception") or context.get("reason"), reason_limit)
    lines = [
        f"Airflow task failed: {dag_id} / {task}",
        f"Run: {run_id}",
        f"Try: {_first(getattr(ti, 'try_number', None))}",
        f"Reason: {reason}",
    ]
    if log_url := getattr(ti, "log_url", None):
        lines.append(f"Log: {log_url}")
    return "\n".join(lines)


def describe_error(error: BaseException | str | None, limit: int = REASON_LIMIT) -> str:
    """``Class: first line of the message``, truncated to ``limit`` characters, with the secrets
    Airflow masks in logs masked here too (the message leaves Airflow)."""
    from airflow.sdk._shared.secrets_masker import redact

    if error is None:
        return "unknown (the callback context holds no exception)"
    first_line = next(iter(str(error).strip().splitlines()), "").strip()
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    else:
        text = first_line or "unknown"
    return _truncate(str(redact(text)), limit)


def webhook_url(conn: Any) -> str:
    """The URL an Airflow connection points at: ``host`` (with a scheme, or built from the URI
    form's scheme, port and path) joined with ``password``."""
    base = (conn.host or "").strip().rstrip("/")
    if not base:
        fix = HOW_TO_CONFIGURE.format(conn_id=conn.conn_id)
        raise NotificationError(f"the connection {conn.conn_id!r} has no host; {fix}")
    if "://" not in base:
        # The http provider's convention keeps the scheme in `schema`; a URI keeps the path there.
        schema = (conn.schema or "").strip("/")
        if schema in ("http", "https"):
            scheme, path = schema, ""
        else:
            scheme = conn.conn_type if conn.conn_type in ("http", "https") else "https"
            path = f"/{schema}" if schema else ""
        port = f":{conn.port}" if conn.port else ""
        base = f"{scheme}://{base}{port}{path}"
    secret = (conn.password or "").strip().strip("/")
    return _checked(f"{base}/{secret}" if secret else base)


def post_message(
    url: str,
    payload: Mapping[str, Any],
    *,
    tries: int = 4,
    backoff: float = 1.0,
    max_delay: float = 30.0,
    timeout: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """POST ``payload`` as JSON to ``url``; returns the number of tries it took.

    Connection errors, timeouts and HTTP 429/5xx are retried after ``backoff``, then twice that,
    and so on (at most ``max_delay``, which also caps a ``Retry-After``). Raises
    ``NotificationError`` when the message is not delivered.
    """
    if tries < 1:
        raise ValueError(f"tries={tries}; at least 1")
    _checked(url)
    # urllib3 logs each request's path at DEBUG; the path holds the webhook's secret.
    redaction = _Redact(_secret_part(url))
    transport_log = logging.getLogger("urllib3.connectionpool")
    transport_log.addFilter(redaction)
    try:
        return _post_with_retries(url, payload, tries, backoff, max_delay, timeout, sleep)
    finally:
        transport_log.removeFilter(redaction)


def _post_with_retries(
    url: str,
    payload: Mapping[str, Any],
    tries: int,
    backoff: float,
    max_delay: float,
    timeout: float,
    sleep: Callable[[float], None],
) -> int:
    import requests

    host = urlsplit(url).hostname or "the webhook host"
    secret = _secret_part(url)
    for attempt in range(1, tries + 1):
        retry_after = None
        try:
            response = requests.post(url, json=payload, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as e:
            # Never str(e): requests puts the URL, secret included, in its messages.
            problem = f"{host} did not answer ({type(e).__name__})"
        except requests.RequestException as e:
            raise NotificationError(
                f"the webhook URL is not valid ({type(e).__name__}); {CHECK_URL}"
            ) from None
        else:
            if response.status_code < 300:
                return attempt
            body = " ".join(response.text.split())
            if secret:
                body = body.replace(secret, "***")
            body = _truncate(body, BODY_LIMIT)
            problem = f"{host} answered HTTP {response.status_code}"
            if body:
                problem += f" ({body})"
            if response.status_code not in TRANSIENT_STATUS:
                raise NotificationError(f"{problem}; {_fix_for(response.status_code)}")
            retry_after = _seconds(response.headers.get("Retry-After"))
        if attempt == tries:
            raise NotificationError(
                f"{problem}, {tries} tries; check that {host} is reachable from the workers"
            )
        delay = min(max_delay, max(backoff * 2 ** (attempt - 1), retry_after or 0.0))
        log.warning(
            "Failure notification: %s (try %d of %d), retrying in %.1f s",
            problem,
            attempt,
            tries,
            delay,
        )
        sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")


class FailureNotifier(BaseNotifier):
    """Posts :func:`failure_message` to the webhook of the connection ``conn_id``; logs it at
    WARNING when that connection is not defined. Never raises (see the module docstring).

    ``tries``, ``backoff``, ``max_delay``, ``timeout`` and ``sleep`` are :func:`post_message`'s.
    """

    def __init__(
        self,
        conn_id: str = CONN_ID,
        *,
        tries: int = 4,
        backoff: float = 1.0,
        max_delay: float = 30.0,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        if tries < 1:
            raise ValueError(f"tries={tries}; at least 1")
        self.conn_id = conn_id
        self.tries, self.backoff, self.max_delay = tries, backoff, max_delay
        self.timeout, self.sleep = timeout, sleep

    def notify(self, context: Any) -> None:
        from airflow.sdk import Connection
        from airflow.sdk.exceptions import AirflowException, AirflowRuntimeError

        message = failure_message(context)
        try:
            conn = Connection.get(self.conn_id)
        except AirflowException as e:  # AirflowNotFoundException among them
            log.warning(
                "Failure notification not posted: %s. To post these, %s.\n%s",
                e,
                HOW_TO_CONFIGURE.format(conn_id=self.conn_id),
                message,
            )
            return
        except AirflowRuntimeError as e:
            log.error(
                "Failure notification not posted: the connection %r could not be read (%s); "
                "check the secrets backend and the API server.\n%s",
                self.conn_id,
                e,
                message,
            )
            return
        try:
            url = webhook_url(conn)
            _mask_url(url)
            tries = post_message(
                url,
                {"text": message},
                tries=self.tries,
                backoff=self.backoff,
                max_delay=self.max_delay,
                timeout=self.timeout,
                sleep=self.sleep,
            )
        except NotificationError as e:
            log.error(
                "Failure notification not delivered (connection %r): %s.\n%s",
                self.conn_id,
                e,
                message,
            )
            return
        log.info("Failure notification posted to %s (try %d)", urlsplit(url).hostname, tries)

    def __call__(self, *args: Any) -> None:
        # A notifier's own bug must not surface as an error of the failed task's callback: the
        # expected failures are handled in notify(), anything else is logged here.
        try:
            super().__call__(*args)
        except Exception:
            log.exception("Failure notification crashed; the task's own failure is unaffected")


failure_notifier = FailureNotifier()


def _checked(url: str) -> str:
    """``url``, if it is an http(s) URL with a host; the error never holds the URL."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError as e:  # urlsplit's messages do not quote the URL
        raise NotificationError(f"the webhook URL is not valid ({e}); {CHECK_URL}") from None
    if not valid:
        raise NotificationError(f"the webhook URL is not an http(s) URL with a host; {CHECK_URL}")
    return url


def _secret_part(url: str) -> str:
    """What follows the host: a webhook URL's path (and query) is its secret."""
    parts = urlsplit(url)
    return parts.path.strip("/") + (f"?{parts.query}" if parts.query else "")


def _mask_url(url: str) -> None:
    """Mask the URL's secret part in Airflow's logs: the password layout is masked by Airflow
    already, a complete URL in ``host`` is not."""
    from airflow.sdk.log import mask_secret

    if secret := _secret_part(url):
        mask_secret(secret)


class _Redact(logging.Filter):
    """Replaces ``secret`` in the records of the logger it is added to."""

    def __init__(self, secret: str) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in (message := record.getMessage()):
            record.msg, record.args = message.replace(self.secret, "***"), None
        return True


def _fix_for(status: int) -> str:
    if status in (401, 403, 404, 410):
        return f"the webhook URL is wrong or revoked; {CHECK_URL}"
    if status == 400:
        return "the webhook rejected the message; check that it accepts Slack's {'text': ...}"
    return "the webhook does not accept the message; check the URL and the service's status"


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to the backoff
        return None


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), "?")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
