"""Detached processes that outlive the task that started them, found again by pid + start time.

A pid alone can be reused by the OS after its process exits; the start time from
``/proc/<pid>/stat`` makes the identity safe, so that stopping "our" process never signals a
stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def spawn_detached(
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> dict[str, object]:
    """Start ``command`` in a new session, output appended to ``log_path``; return its identity.
    ``user``: the account it runs as (a server that refuses root: PostgreSQL), when we are root.

    The log is the user's alone (0600): a server's output can carry what only its user may
    read (a generated password, a URL with a token)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(descriptor, 0o600)  # a log an older version created
    with os.fdopen(descriptor, "ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
            user=user,
        )
    return {"pid": process.pid, "start": start_time(process.pid)}


def alive(identity: dict[str, object] | None) -> bool:
    if not identity or identity.get("pid") is None:
        return False
    pid = int(identity["pid"])
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child, so it does not linger
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return not _exited(pid, fields[0]) and fields[19] == identity.get("start")


def _exited(pid: int, state: str) -> bool:
    """A zombie whose threads are all gone: exited, its parent has not reaped it yet (another
    process's child), and it holds nothing any more. A killed multi-threaded server's main
    thread is a zombie while its other threads still exit and hold its files (its listening
    socket), so the state alone is not enough."""
    if state != "Z":
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except OSError:
        return True


def stop(
    identity: dict[str, object] | None,
    grace_seconds: float = 10.0,
    first_signal: int = signal.SIGTERM,
) -> bool:
    """SIGTERM (or ``first_signal``) our process and its session, SIGKILL what of the session is
    left after the grace period. True if it ran.

    The whole session, not only the leader: a server that starts others (``airflow
    standalone``: scheduler, api-server, triggerer, their workers) may exit while one of them
    still waits (a scheduler draining its executor), and nothing must outlive the stop."""
    if not alive(identity):
        return False
    pid = int(identity["pid"])  # type: ignore[index]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, first_signal)
    for sig, wait in ((None, grace_seconds), (signal.SIGKILL, 5.0)):
        if sig is not None:
            for member in session_pids(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(member, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            alive(identity)  # reaps the leader when it is our child
            if not session_pids(pid):
                return True
            time.sleep(0.1)
    return True


def session_pids(session: int) -> list[int]:
    """The live processes (not zombies) of a session, from ``/proc``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it exited while we looked
        pid = int(stat.parent.name)
        if int(fields[3]) == session and not _exited(pid, fields[0]):
            found.append(pid)
    return found
