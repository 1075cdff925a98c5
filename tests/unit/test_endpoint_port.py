"""A deployment never silently shares its port with another process."""

from __future__ import annotations

import socket

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
