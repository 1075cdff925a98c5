"""The local executor's concurrency cap: jobs beyond it wait, and start in submission order.

``runner.acquire_slot`` is what each job's supervisor calls. flock locks belong to an open file
description, so threads of this process stand in for the supervisors here, each with its own
files, exactly as separate processes would hold them.
"""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

import pytest

from fmops.jobs import runner

WAIT = 20.0  # seconds: generous bounds for a busy machine, never a timing assertion


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(runner, "POLL_SECONDS", 0.02)


class Waiter(threading.Thread):
    """A supervisor waiting for a slot; records when it got one in ``order``."""

    def __init__(self, slots: Path, count: int, ticket: str, order: list[str]):
        super().__init__(daemon=True)
        self.slots, self.count, self.ticket, self.order = slots, count, ticket, order
        self.stop = threading.Event()
        self.release = threading.Event()
        self.slot = None

    def run(self) -> None:
        self.slot = runner.acquire_slot(self.slots, self.count, self.stop.is_set, self.ticket)
        if self.slot is not None:
            self.order.append(self.ticket)
            self.release.wait(WAIT)
            self.slot.close()


def _hold(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")  # noqa: SIM115 (closed by the caller)
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _queued(slots: Path) -> list[str]:
    """The tickets in the queue ([] before the first waiter made the folder)."""
    queue = slots / "queue"
    if not queue.exists():
        return []
    return sorted(p.name for p in queue.iterdir() if not p.name.startswith("."))


def test_jobs_beyond_the_cap_start_in_submission_order_not_arrival_order(tmp_path):
    slots = tmp_path / ".slots"
    busy = _hold(slots / "slot-0")  # the cap (1) is taken by a running job
    order: list[str] = []
    tickets = ["0001-a", "0002-b", "0003-c"]
    waiters = {t: Waiter(slots, 1, t, order) for t in tickets}
    for ticket in reversed(tickets):  # the latest arrives first
        waiters[ticket].start()
    _until(lambda: _queued(slots) == tickets, f"all three queued: {_queued(slots)}")
    time.sleep(0.2)
    assert order == []  # nobody runs beyond the cap

    busy.close()  # the running job ends
    for done, ticket in enumerate(tickets, start=1):
        _until(lambda n=done: len(order) == n, f"{ticket} started: {order}")
        assert order == tickets[:done]  # exactly one at a time, the earliest first
        waiters[ticket].release.set()  # it ends and frees the slot
        waiters[ticket].join(WAIT)
    assert _queued(slots) == []


def test_free_slots_go_to_several_waiters_at_once(tmp_path):
    slots = tmp_path / ".slots"
    order: list[str] = []
    waiters = [Waiter(slots, 3, f"000{i}-j{i}", order) for i in range(3)]
    for waiter in waiters:
        waiter.start()
    _until(lambda: len(order) == 3, f"three slots, three jobs started: {order}")
    for waiter in waiters:
        waiter.release.set()
        waiter.join(WAIT)


def test_a_waiter_that_died_does_not_hold_up_the_queue(tmp_path):
    slots = tmp_path / ".slots"
    (slots / "queue").mkdir(parents=True)
    (slots / "queue" / "0001-dead").touch()  # a ticket nobody holds: its supervisor was killed
    order: list[str] = []
    waiter = Waiter(slots, 1, "0002-alive", order)
    waiter.start()
    _until(lambda: order == ["0002-alive"], f"the live waiter started: {order}")
    assert _queued(slots) == []  # the dead ticket was removed, and its own once it started
    waiter.release.set()
    waiter.join(WAIT)


def test_a_stop_request_while_waiting_leaves_the_queue(tmp_path):
    slots = tmp_path / ".slots"
    busy = _hold(slots / "slot-0")
    order: list[str] = []
    waiter = Waiter(slots, 1, "0001-stopped", order)
    waiter.start()
    _until(lambda: _queued(slots) == ["0001-stopped"], "queued")
    waiter.stop.set()
    waiter.join(WAIT)
    assert waiter.slot is None and order == []
    assert _queued(slots) == []
    busy.close()
