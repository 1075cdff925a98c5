"""A deployment never silently shares its port with another process."""

from __future__ import annotations

import socket
import time

import pytest

from fmops.deployment.local import EndpointError, LocalEndpoint, port_free


def test_port_taken_by_a_stranger_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        assert not port_free(port)
        endpoint = LocalEndpoint("port-test")
        state = endpoint.state()
        with pytest.raises(EndpointError, match=f"port {port} on 127.0.0.1 is taken"):
            endpoint._ensure_router(state, port)
        assert state["router"] is None
    assert port_free(port)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_router_started_by_a_killed_deploy_is_adopted_not_refused(tmp_path, monkeypatch):
    """A deploy task killed between starting the router and saving it (its worker SIGKILLed:
    tests/integration/test_team_stack.py) leaves the endpoint's router running unrecorded. The
    retry finds it by the router's own record and adopts it; before, it refused the port as
    "taken by another process". Deleting the endpoint stops such a router too."""
    from fmops import processes

    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    port = free_port()
    endpoint = LocalEndpoint("adopt-test")
    assert endpoint.ensure_router(port) is True  # started, recorded, answering
    started = endpoint.state()["router"]
    with endpoint.transaction() as state:  # the killed deploy never saved it
        state["router"] = None
    assert not port_free(port)

    assert endpoint.ensure_router(port) is False  # adopted: nothing new started
    adopted = endpoint.state()["router"]
    assert (adopted["pid"], adopted["start"]) == (started["pid"], started["start"])
    assert processes.alive(adopted)

    with endpoint.transaction() as state:  # unrecorded again: delete must still stop it
        state["router"] = None
    assert endpoint.delete() is True
    deadline = time.monotonic() + 20
    while processes.alive(started):
        assert time.monotonic() < deadline, "the unrecorded router outlived delete"
        time.sleep(0.1)
    assert port_free(port)
