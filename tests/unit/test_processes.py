"""Stopping a detached process stops its whole session: what it started and left behind (a
child that outlives its parent's SIGTERM, as a scheduler draining its executor can) is killed
after the grace period, so that `make down` leaves nothing running."""

from __future__ import annotations

import time

from fmops import processes


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
