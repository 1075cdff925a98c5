"""A team-stack server that exits during start is started again (as compose's `restart: always`
would), a bounded number of times, and the start then fails with the end of its log."""

from __future__ import annotations

import sys

import pytest

from fmops import team_stack

# Exits with its output the first `fail` times it starts, then stays up; counts its starts.
SERVER = """
import pathlib, sys, time
count = pathlib.Path(sys.argv[1])
starts = int(count.read_text()) + 1 if count.exists() else 1
count.write_text(str(starts))
if starts <= int(sys.argv[2]):
    print(f"boom on start {starts}", flush=True)
    sys.exit(1)
time.sleep(120)
"""


def server(tmp_path, fail: int) -> team_stack.Process:
    count = tmp_path / "starts"
    return team_stack.Process(
        name="flaky",
        service="flaky",
        command=[sys.executable, "-c", SERVER, str(count), str(fail)],
        env={},
        healthy=lambda: count.exists() and int(count.read_text()) > fail,
    )


@pytest.fixture
def team_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path / "fmops"))
    monkeypatch.setattr(team_stack, "START_RETRY_PAUSE_SECONDS", 0.1)
    yield tmp_path
    team_stack.stop()


def test_a_server_that_exits_during_start_is_started_again(team_home, caplog):
    item = server(team_home, fail=team_stack.START_RETRIES)
    team_stack.spawn(item)
    team_stack.wait_healthy([item], timeout=60)
    assert (team_home / "starts").read_text() == str(team_stack.START_RETRIES + 1)
    assert team_stack.running()
    warnings = [r.getMessage() for r in caplog.records if r.name == "fmops.team_stack"]
    assert len(warnings) == team_stack.START_RETRIES
    assert "flaky exited during start; starting it again (1 of" in warnings[0]
    assert "boom on start 1" in warnings[0]


def test_a_server_that_keeps_exiting_fails_the_start_with_its_log(team_home):
    item = server(team_home, fail=99)
    team_stack.spawn(item)
    with pytest.raises(team_stack.StackError) as err:
        team_stack.wait_healthy([item], timeout=60)
    starts = team_stack.START_RETRIES + 1
    assert f"flaky exited during start, {starts} times" in str(err.value)
    assert f"boom on start {starts}" in str(err.value)
    assert (team_home / "starts").read_text() == str(starts)
