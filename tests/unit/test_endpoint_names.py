"""An endpoint's name is a folder under the state folder: ``fmops endpoint ACTION NAME`` refuses a
name that is not one (a path would reach any ``state.json`` and act on the processes it names)."""

from __future__ import annotations

import json

import pytest

from fmops.cli import main
from fmops.deployment.local import LocalEndpoint


@pytest.mark.parametrize("action", ["status", "delete", "start", "rollback", "invoke"])
@pytest.mark.parametrize("name", ["../../victim", "/tmp/victim", "a/b", "UPPER", "x" * 40, ""])
def test_a_name_that_is_not_an_endpoint_is_refused(tmp_path, monkeypatch, capsys, action, name):
    home = tmp_path / "home"
    monkeypatch.setenv("FMOPS_HOME", str(home))
    victim = tmp_path / "victim"
    victim.mkdir()
    state = {"name": "victim", "router": {"pid": 1, "start": "0"}, "variants": {}}
    (victim / "state.json").write_text(json.dumps(state))

    assert main(["endpoint", action, name, *(["hello"] if action == "invoke" else [])]) == 2
    err = capsys.readouterr().err
    assert "lower-case letters, digits and inner hyphens" in err, err
    assert json.loads((victim / "state.json").read_text()) == state  # untouched
    assert not (home / "endpoints").exists()


def test_the_constructor_refuses_a_path_and_takes_a_name(tmp_path, monkeypatch):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="endpoint name '../x'"):
        LocalEndpoint("../x")
    assert LocalEndpoint("banking77").dir == tmp_path / "endpoints" / "banking77"
