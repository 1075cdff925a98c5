"""State files survive a kill at any instant: the local endpoint's state (which is also the
router's routing) is one atomic replace per change, and a torn label-drift reference is reported
and left out instead of breaking every later validation."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time

from fmops.deployment.local import LocalEndpoint
from fmops.pipeline import _drift_reference

WRITER = """
import sys
from fmops.deployment.local import LocalEndpoint

endpoint = LocalEndpoint("kill-test")
print("ready", flush=True)
while True:
    with endpoint.transaction() as state:
        state["generation"] += 1
        blue = state["generation"] % 2
        state["variants"] = {
            "blue": {"port": 1, "weight": 100 * blue, "version": "1", "pad": "x" * 20000},
            "green": {"port": 2, "weight": 100 * (1 - blue), "version": "2"},
        }
"""


def test_endpoint_state_is_whole_after_a_kill_at_any_instant(tmp_path, monkeypatch):
    monkeypatch.setenv("FMOPS_HOME", str(tmp_path))
    endpoint = LocalEndpoint("kill-test")
    rng = random.Random(7)
    generation = 0
    for _ in range(25):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "FMOPS_HOME": str(tmp_path)},
        )
        assert writer.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.15))  # somewhere in a write, a rename or between them
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        state = json.loads(endpoint.state_file.read_text())  # never torn
        assert state == endpoint.state()
        assert state["generation"] >= generation  # never an older generation
        generation = state["generation"]
        if generation:
            weights = {c: v["weight"] for c, v in state["variants"].items()}
            assert weights == {"blue": 100 * (generation % 2), "green": 100 * (1 - generation % 2)}
    assert generation > 0, "the writer never got to write: the test proved nothing"


def test_a_torn_drift_reference_is_reported_and_left_out(tmp_path, caplog):
    path = tmp_path / "last_passed.json"
    path.write_text('{"digest": "abc", "labels": {"card_ar')  # cut off mid-write
    with caplog.at_level(logging.WARNING):
        assert _drift_reference(path) is None
    assert "cannot be read" in caplog.text and "delete the file" in caplog.text
    path.write_text(json.dumps({"digest": "abc", "labels": {"a": 0.5, "b": 0.5}}))
    assert _drift_reference(path) == {"a": 0.5, "b": 0.5}
    assert _drift_reference(tmp_path / "none.json") is None
