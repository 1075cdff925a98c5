"""Benchmark shim (benchmarks/fanout.py): a local job's ``train.py`` or ``evaluate.py`` becomes the
no-op job of ``benchmarks/_noop_job.py`` when its pipeline is listed in the ``bench-noop.json``
of the job's state folder.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one;
fanout.py puts this folder on ``PYTHONPATH`` for the Airflow it starts (the local executor passes
the environment on to the jobs). Every other process returns from here at once. This stands in
for a switch in the job spec that fmops does not have yet (see BENCHMARKS.md, "Fan-out").
"""

import os
import sys


def _intercept() -> None:
    if not sys.argv or not sys.argv[0].endswith(("/train.py", "/evaluate.py")):
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        import _noop_job
    finally:
        sys.path.pop(0)
    job_dir = _noop_job.job_dir_of(sys.argv[0])
    settings = _noop_job.settings_for(job_dir) if job_dir else None
    if settings is None:
        return  # not a benchmark job: the real script runs
    code = _noop_job.run(settings, sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_intercept()
