"""Reading back a ``dag.test()`` run for the end-to-end tests: task states, tries and XComs."""

from __future__ import annotations

from typing import Any


def task_states(run: Any) -> dict[str, list[str]]:
    """Each task's states (one per map index) in ``run``."""
    from airflow.utils.session import create_session

    states: dict[str, list[str]] = {}
    with create_session() as session:
        for ti in run.get_task_instances(session=session):
            states.setdefault(ti.task_id, []).append(str(ti.state))
    return states


def try_numbers(run: Any, task_id: str) -> list[int]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            ti.try_number for ti in run.get_task_instances(session=session) if ti.task_id == task_id
        ]


def xcom(run: Any, task_id: str) -> Any:
    """The return values of a task of ``run`` (a list for a mapped task, by map index)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(
        run_id=run.run_id, key="return_value", task_ids=task_id, dag_ids=run.dag_id
    )
    with create_session() as session:
        rows = session.scalars(query).all()
        values = {row.map_index: XComModel.deserialize_value(row) for row in rows}
    return values[-1] if list(values) == [-1] else [values[i] for i in sorted(values)]


def xcom_key(run: Any, task_id: str, key: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=run.run_id, key=key, task_ids=task_id, dag_ids=run.dag_id)
    with create_session() as session:
        (row,) = session.scalars(query).all()
        return XComModel.deserialize_value(row)


def model_card(client: Any, version: Any) -> str:
    """A registered version's whole model card (``model_card.md`` on its source run), after
    checking the version's description: at most MLflow's 5,000 characters, and the card itself
    or some of its sections, with a line naming the whole."""
    import tempfile
    from pathlib import Path

    from fmops.registry.card import CARD_ARTIFACT, MAX_DESCRIPTION

    with tempfile.TemporaryDirectory() as folder:
        card = Path(client.download_artifacts(version.run_id, CARD_ARTIFACT, folder)).read_text()
    description = version.description
    assert len(description) <= MAX_DESCRIPTION, len(description)
    if description != card:
        kept, note = description.split("\n\n_Left out here (an MLflow description holds")
        for section in kept.split("\n## "):
            assert section.strip() in card, f"not in the card: {section[:80]!r}"
        assert CARD_ARTIFACT in note
    return card
