"""Stopping a detached process stops its whole session: what it started and left behind (a
child that outlives its parent's SIGTERM, as a scheduler draining its executor can) is killed
after the grace period, so that `make down` leaves nothing running."""

from __future__ import annotations

import os
import signal
import sys
import time

from fmops import processes
from fmops.deployment.local import free_port, port_free


def test_stop_ends_the_whole_session_even_a_member_that_ignores_sigterm(tmp_path):
    # The leader waits on a child that ignores SIGTERM: the leader dies of it, the child not.
    identity = processes.spawn_detached(
        ["sh", "-c", "(trap '' TERM; exec sleep 300) & wait"], tmp_path / "leader.log"
    )
    session = int(identity["pid"])
    deadline = time.monotonic() + 10
    while len(processes.session_pids(session)) < 2:  # the leader and its child
        assert time.monotonic() < deadline, processes.session_pids(session)
        time.sleep(0.05)

    assert processes.stop(identity, grace_seconds=1.0) is True
    assert processes.session_pids(session) == []
    assert not processes.alive(identity)
    assert processes.stop(identity) is False  # nothing left to stop


def test_a_killed_server_is_alive_until_its_threads_let_go_of_its_socket(tmp_path):
    """SIGKILL a multi-threaded server: its main thread is a zombie at once, while its other
    threads still exit and hold its listening socket. ``alive`` is True until they are gone, so
    that whoever waits for it can bind the port next (the router restarted on its port)."""
    for attempt in range(5):  # the window is short: a few tries make a regression visible
        port = free_port()
        server = (
            "import threading, time\n"
            "from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler\n"
            "for _ in range(8):\n"
            "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
            f"ThreadingHTTPServer(('127.0.0.1', {port}), BaseHTTPRequestHandler).serve_forever()\n"
        )
        identity = processes.spawn_detached(
            [sys.executable, "-c", server], tmp_path / f"server-{attempt}.log"
        )
        deadline = time.monotonic() + 30
        while port_free(port):
            assert time.monotonic() < deadline and processes.alive(identity), "never listened"
            time.sleep(0.02)
        os.kill(int(identity["pid"]), signal.SIGKILL)
        while processes.alive(identity):
            pass
        assert port_free(port), f"try {attempt}: alive() was False while the port was held"
