"""Migration 0004: a database at 0003 gains ``drift_events`` and ``hard_examples.site``, rows kept."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from edgecascade.cloud_service import drift_events, schema, unknown_groups
from edgecascade.cloud_service.store import hard_examples, metadata

assert drift_events.drift_events.metadata is metadata and unknown_groups is not None  # compared tables


def test_a_database_at_0003_upgrades_keeping_its_examples_and_downgrades_back(database_url: str) -> None:
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(database_url)
    with engine.begin() as db:
        command.upgrade(schema.alembic_config(db), "0003")
    row = {c.name: None for c in hard_examples.c if c.name != "site"} | {
        "id": "a" * 64,
        "device_id": "cam-01",
        "model_version": 1,
        "cut": "cut1",
        "encoding": "1bit",
        "reasons": "audit",
        "predicted": 1,
        "confidence": 0.5,
        "tier": "device",
        "created_at": 1.0,
        "received_at": 2.0,
        "features_path": "aa/a.features",
    }
    with engine.begin() as db:
        db.execute(sa.table("hard_examples", *(sa.column(k) for k in row)).insert(), [row])
    assert schema.upgrade(engine) == schema.head_revision()  # through 0004 and any later revision
    assert schema.differences(engine, metadata) == []
    with engine.connect() as db:
        assert db.execute(sa.select(hard_examples.c.id, hard_examples.c.site)).all() == [("a" * 64, None)]
        assert db.execute(sa.select(sa.func.count()).select_from(drift_events.drift_events)).scalar() == 0
    with engine.begin() as db:
        command.downgrade(schema.alembic_config(db), "0003")
    inspector = sa.inspect(engine)
    assert "drift_events" not in inspector.get_table_names()
    assert "site" not in {c["name"] for c in inspector.get_columns("hard_examples")}
    engine.dispose()
