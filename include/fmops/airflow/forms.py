"""The trigger forms' shared fields: what both DAGs ask the same way.

Imported when the DAG files are parsed: ``airflow.sdk`` only.
"""

from __future__ import annotations

from airflow.sdk import Param

from fmops.paths import config_file_choices

# How a drop-down shows its choices; "null" is the empty choice (the UI looks values up by
# String(value)), which otherwise reads as the word "null".
TARGETS = {"null": "the config's target", "local": "local", "sagemaker": "sagemaker (AWS)"}
APPROVAL_CHOICES = {
    "manual": "manual: a reviewer approves in Airflow",
    "auto": "auto: approve without review (local target only)",
}


def config_file_param(default: str | None, description: str, section: str) -> Param:
    """A pipeline YAML; the shipped configs are suggested, any other path may be typed."""
    return Param(
        default,
        type="string" if default else ["null", "string"],
        title="Pipeline config",
        description=description,
        examples=config_file_choices(),
        pattern=r"\.ya?ml$",
        section=section,
        **({"minLength": 1} if default else {}),
    )


def target_param(description: str, section: str) -> Param:
    return Param(
        None,
        type=["null", "string"],
        enum=[None, "local", "sagemaker"],
        values_display=TARGETS,
        title="Target",
        description=description,
        section=section,
    )


def approval_param(description: str, empty: str, section: str) -> Param:
    """The approval override; ``empty`` says what the empty choice means."""
    return Param(
        None,
        type=["null", "string"],
        enum=[None, "manual", "auto"],
        values_display={"null": empty, **APPROVAL_CHOICES},
        title="Approval",
        description=description,
        section=section,
    )
