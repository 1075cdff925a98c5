"""A no-op job for the orchestration benchmarks (benchmarks/fanout.py): it sleeps a fixed time,
then writes what a real job of the same config wrote, so that everything after it (model
packing, ``describe``, the await tasks, selection, registration) runs on real artifacts.

It stands in for a training job's ``train.py`` or a processing job's ``evaluate.py``. The
settings come from the JSON file ``bench-noop.json`` in the state folder that holds the job
(``$FMOPS_HOME/bench-noop.json`` for ``$FMOPS_HOME/jobs/<job>``), keyed by the job's pipeline (its
request's ``fmops:pipeline`` tag). A file beside the job, not a variable: a local job inherits
only an allow-list of the environment (fmops.jobs.local.INHERITED_ENV)::

    {"bench-fanout-8": {"seconds": 30, "reference": "/tmp/.../reference"}}

``reference`` (optional) is a folder holding ``training/model/`` and ``training/job.log`` (the
model folder and the log of a real training job) and ``evaluation/`` (the output folder of a
real evaluation job); without it a training job writes an empty model folder. A job whose
pipeline is not in the file is not this script's: it runs its real entry point.

Two ways in: ``benchmarks/_noop/sitecustomize.py`` runs :func:`run` in place of the job's own
script (the benchmark puts that folder on ``PYTHONPATH``), or, once the job spec can name another
entry point, ``python benchmarks/_noop_job.py`` as the entry point itself.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

MARKER = "fmops-bench no-op job"
CONTROL_NAME = "bench-noop.json"


def job_dir_of(script: str) -> Path | None:
    """The local executor's job folder that holds ``script`` (its request.json), if any."""
    folder = Path(os.path.abspath(script)).parent  # not resolved: the code folder may be a link
    for _ in range(5):
        if (folder / "request.json").exists():
            return folder
        folder = folder.parent
    return None


def settings_for(job_dir: Path) -> dict | None:
    """This job's settings from the control file of its state folder, or None when it is not a
    no-op job."""
    control = job_dir.parent.parent / CONTROL_NAME
    if not control.exists():
        return None
    request = json.loads((job_dir / "request.json").read_text())
    tags = {t["Key"]: t["Value"] for t in request.get("Tags", [])}
    return json.loads(Path(control).read_text()).get(tags.get("fmops:pipeline", ""))


def run(settings: dict, arguments: list[str]) -> int:
    seconds = float(settings["seconds"])
    reference = Path(settings["reference"]) if settings.get("reference") else None
    training = "SM_MODEL_DIR" in os.environ
    print(f"{MARKER}: {'training' if training else 'processing'}, sleeping {seconds} s", flush=True)
    time.sleep(seconds)
    if training:
        model_dir = Path(os.environ["SM_MODEL_DIR"])
        model_dir.mkdir(parents=True, exist_ok=True)
        if reference is not None:
            shutil.copytree(reference / "training" / "model", model_dir, dirs_exist_ok=True)
            # The real job's progress lines: the executor's MetricDefinitions and the training
            # curves that registration logs read them.
            sys.stdout.write((reference / "training" / "job.log").read_text(errors="replace"))
    else:
        output = Path(arguments[arguments.index("--output") + 1])
        if reference is not None:
            shutil.copytree(reference / "evaluation", output, dirs_exist_ok=True)
    print(f"{MARKER}: done", flush=True)
    return 0


def main() -> int:
    job_dir = job_dir_of(sys.argv[0]) or job_dir_of(os.path.join(os.getcwd(), "x"))
    settings = settings_for(job_dir) if job_dir else None
    if settings is None:
        print(f"{MARKER}: no settings for this job ({CONTROL_NAME})", file=sys.stderr)
        return 2
    return run(settings, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
