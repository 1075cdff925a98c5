"""Jobs beyond ``training.max_concurrent_jobs`` wait in their phase's order, on a target that does
not cap them itself (SageMaker: the local executor applies the cap in its own queue).

``fmops.pipeline.submit_phase`` starts a phase's first ``cap`` jobs and gives every later plan a
``queued`` handle with its position. That plan's wait (``AwaitJobOperator``) defers to
``QuotaTrigger`` with the jobs ahead of it (the phase's earlier handles, read from the submit
task's XCom by ``ahead_of``), and the trigger sends the request only once :class:`Slots` finds a
slot: **fewer than ``cap`` of the jobs ahead are unfinished**. A job ahead is unfinished while it
runs (its latest attempt is not Completed, Failed or Stopped), and also before it started,
as long as its own wait is live (a request refused for good ends its wait, and with it its place
in the line).

Why this keeps the cap without a coordinator: a job at position p starts only when at most
``cap - 1`` of the jobs before it are unfinished, so at that moment at most ``cap`` of the jobs up
to p are. A job before p that had not started was already counted then, so its start later
changes nothing; a job after p counts p in turn. The jobs running at any time are therefore at
most ``cap``. The head of the line is the first whose count falls under ``cap``, so the jobs
start in their order as slots free up, and a long job does not hold up a slot another one freed.

Cost: each check scans the jobs ahead from the front and stops at the ``cap``-th unfinished one,
remembering the ones that ended; the describes it sends are shared by the triggers of one
triggerer for ``ttl`` seconds (:func:`job_status`), so a line of any length costs about ``cap``
describes per poll, not one per waiting job.

Limits: a capacity fallback starts its new attempt after the failed one has ended, and a job
ahead counts as ended in between (the cap may be passed by one for that moment); SageMaker's
quotas back the cap up (``ResourceLimitExceeded`` backs off in the same trigger).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from fmops.jobs.backend import MAX_ATTEMPTS, TERMINAL, describe, is_not_found, status_of
from fmops.jobs.naming import attempt_name

# Wait states in which a task instance will not run again in this DAG run.
WAIT_ENDED = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
_RETRIED = TERMINAL - {"Completed"}  # a later attempt (-aN) may follow

_described: dict[tuple[str, str, str, str], tuple[float, str | None]] = {}
_lock = threading.Lock()


def ahead_of(handles: list[dict[str, Any]], position: int) -> list[dict[str, Any]]:
    """The jobs ahead of ``position`` in its phase (its submit task's handles, in their order):
    ``{kind, name, base, map_index, target, settings}`` each, ``base`` the plan's name for attempt
    1 (None for a job of another run reused from the cache: no attempts of this run follow it).
    A request refused for good is never a job, and is left out."""
    ahead = []
    for index, handle in enumerate(handles[:position]):
        if handle.get("error"):
            continue
        base = handle.get("base_name") or (handle.get("plan") or {}).get("base_name")
        ahead.append(
            {
                "kind": handle["kind"],
                "name": handle.get("name") or base,
                "base": None if handle.get("action") == "cached" else base,
                "map_index": index,
                "target": handle["target"],
                "settings": handle.get("settings", {}),
            }
        )
    return ahead


def job_status(entry: dict[str, Any], name: str, ttl: float) -> str | None:
    """The status of the job ``name`` (``entry`` gives its kind and where it runs), None while it
    does not exist; an answer younger than ``ttl`` seconds is reused, an ended one always."""
    from fmops.pipeline import backend_for

    key = (entry["target"], json.dumps(entry["settings"], sort_keys=True), entry["kind"], name)
    with _lock:
        seen = _described.get(key)
    if seen and (seen[1] in TERMINAL or time.monotonic() - seen[0] < ttl):
        return seen[1]
    try:
        status = status_of(entry["kind"], describe(backend_for(entry), entry["kind"], name))
    except Exception as err:
        if not is_not_found(err):
            raise
        status = None
    with _lock:
        _described[key] = (time.monotonic(), status)
    return status


def latest_status(entry: dict[str, Any], ttl: float) -> str | None:
    """The status of the job's latest attempt (``name``, then ``base-a2``, ... while an attempt
    failed and a later one exists); None when no attempt exists."""
    status = job_status(entry, entry["name"], ttl)
    base = entry.get("base")
    if status not in _RETRIED or not base:
        return status
    names = [attempt_name(base, k) for k in range(1, MAX_ATTEMPTS + 1)]
    current = names.index(entry["name"]) if entry["name"] in names else 0
    for name in names[current + 1 :]:
        later = job_status(entry, name, ttl)
        if later is None:
            break
        status = later
        if status not in _RETRIED:
            break
    return status


class Slots:
    """One queued job's view of the line ahead of it (see the module docstring).

    :param ahead: ``ahead_of``'s entries.
    :param cap: ``training.max_concurrent_jobs``.
    :param wait_states: ``{map_index: state}`` of the phase's waits, for the jobs ahead that have
        not started (is their wait still live?); None where Airflow cannot be asked (``airflow
        dags test`` runs the waits one at a time: a job ahead that has not started is never
        waiting for a slot then).
    :param ttl: how long a describe's answer is reused.
    """

    def __init__(
        self,
        ahead: list[dict[str, Any]],
        cap: int,
        wait_states: Callable[[], dict[int, str | None]] | None,
        ttl: float = 5.0,
    ):
        if cap < 1:
            raise ValueError(f"cap must be at least 1, got {cap}")
        self.ahead, self.cap, self.wait_states, self.ttl = ahead, cap, wait_states, ttl
        self.ended: set[int] = set()

    def blocking(self) -> list[str]:
        """The jobs ahead that hold the slots, ``"<name> (<status>)"`` each, at most ``cap``; a slot
        is free when there are fewer than ``cap``. Blocking calls: run it in a thread."""
        holding: list[str] = []
        states: dict[int, str | None] | None = None
        for entry in self.ahead:
            index = entry["map_index"]
            if index in self.ended:
                continue
            status = latest_status(entry, self.ttl)
            if status is None:
                if states is None:
                    states = self.wait_states() if self.wait_states else {}
                if self.wait_states is None or states.get(index) in WAIT_ENDED:
                    self.ended.add(index)  # refused for good, or its run ended: out of the line
                    continue
            elif status in TERMINAL:
                self.ended.add(index)
                continue
            holding.append(f"{entry['name']} ({status or 'not started'})")
            if len(holding) >= self.cap:
                break
        return holding


def wait_states_of(task_instance: Any) -> Callable[[], dict[int, str | None]] | None:
    """A function that reads the states of ``task_instance``'s mapped siblings from Airflow
    (the task SDK's ``GetTaskStates``, which the triggerer serves); None without a task instance
    (``airflow dags test`` runs triggers inline, with none)."""
    if task_instance is None:
        return None

    def read() -> dict[int, str | None]:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        found = RuntimeTaskInstance.get_task_states(
            dag_id=task_instance.dag_id,
            task_ids=[task_instance.task_id],
            run_ids=[task_instance.run_id],
        )
        prefix = f"{task_instance.task_id}_"
        states = {}
        for key, state in (found.get(task_instance.run_id) or {}).items():
            if key.startswith(prefix) and key[len(prefix) :].isdigit():
                states[int(key[len(prefix) :])] = state
        return states

    return read
