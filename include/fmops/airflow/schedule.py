"""When the DAGs run by themselves, and the assets that link them.

``fmops_finetune`` runs on a cron schedule *and* whenever its training data's asset is updated
(Airflow's ``AssetOrTimeSchedule``); ``fmops_deploy`` runs on each update of the registered-model
asset that ``fmops_finetune``'s ``register`` emits. The schedule comes from
``include/configs/schedule.toml`` (``FMOPS_SCHEDULE_FILE`` points at another file) and each of
its keys can be overridden by an environment variable (``FMOPS_FINETUNE_CRON`` and so on).

This module is imported when the DAG files are parsed, so it reads the settings with the
standard library only (``tomllib``; no pydantic model, no pipeline config).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from airflow.sdk import Asset

from fmops.paths import CONFIGS_DIR

SETTINGS_FILE = CONFIGS_DIR / "schedule.toml"
# Each key of [fmops_finetune] and the environment variable that overrides it.
ENV = {
    "cron": "FMOPS_FINETUNE_CRON",
    "timezone": "FMOPS_FINETUNE_TIMEZONE",
    "dataset_asset": "FMOPS_FINETUNE_DATASET_ASSET",
    "config_file": "FMOPS_FINETUNE_CONFIG",
}
KEYS = tuple(ENV)

# The model lineage: register (fmops_finetune) -> this asset -> fmops_deploy. Each event's extra
# names the config file, the registered model and version (and an approval override, if any).
REGISTERED_MODEL = Asset(
    name="fmops_registered_model", uri="fmops://registered-models", group="model"
)


class ScheduleError(ValueError):
    """The schedule settings are invalid; the message names the key, the source and the fix."""


@dataclass(frozen=True)
class FinetuneSchedule:
    cron: str
    timezone: str
    dataset_asset: str
    config_file: str
    source: str

    @property
    def training_data(self) -> Asset | None:
        if not self.dataset_asset:
            return None
        return Asset(name="fmops_training_data", uri=self.dataset_asset, group="dataset")

    def timetable(self):
        """The DAG's ``schedule``: cron or asset or both; None when both are turned off."""
        from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

        asset = self.training_data
        if not self.cron:
            return [asset] if asset else None
        try:
            ZoneInfo(self.timezone)  # the timetable accepts any name and fails at scheduling
            cron = CronTriggerTimetable(self.cron, timezone=self.timezone)
            cron.validate()
        except Exception as err:  # croniter's and pendulum's own errors: name the setting
            raise ScheduleError(
                f"fmops_finetune schedule: cron {self.cron!r} / timezone {self.timezone!r} "
                f"from {self.source} is invalid ({err}); set a five-field cron expression "
                "such as '0 3 * * 1' and an IANA time zone such as 'UTC'"
            ) from err
        return AssetOrTimeSchedule(timetable=cron, assets=asset) if asset else cron


def settings_file() -> Path:
    return Path(os.environ.get("FMOPS_SCHEDULE_FILE") or SETTINGS_FILE)


def finetune_schedule() -> FinetuneSchedule:
    """The file's ``[fmops_finetune]`` table, each key overridden by its environment variable."""
    path = settings_file()
    try:
        table = tomllib.loads(path.read_text()).get("fmops_finetune", {})
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ScheduleError(
            f"cannot read the schedule settings {path}: {err}; fix the file or point "
            "FMOPS_SCHEDULE_FILE at a valid one (see include/configs/schedule.toml)"
        ) from err
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ScheduleError(
            f"{path}: unknown key(s) {unknown} in [fmops_finetune]; the keys are {list(KEYS)}"
        )
    values: dict[str, str] = {}
    sources = []
    for key in KEYS:
        env = ENV[key]
        if env in os.environ:
            values[key] = os.environ[env].strip()
            sources.append(env)
        else:
            value = table.get(key, "")
            if not isinstance(value, str):
                raise ScheduleError(f"{path}: [fmops_finetune] {key} must be a string")
            values[key] = value.strip()
    if not values["timezone"]:
        values["timezone"] = "UTC"
    if not values["config_file"]:
        raise ScheduleError(
            f"{path}: [fmops_finetune] config_file is empty; name the pipeline config that "
            "scheduled runs use, e.g. include/configs/local.yaml"
        )
    source = str(path) + (f" (overridden by {', '.join(sources)})" if sources else "")
    return FinetuneSchedule(**values, source=source)
