"""Migration 0005: a database at 0004 gains ``federated_runs`` and ``federated_rounds``, rows kept."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

from edgecascade.cloud_service import drift_events, federation_store, schema
from edgecascade.cloud_service.store import metadata

assert federation_store.federated_runs.metadata is drift_events.drift_events.metadata is metadata


def test_a_database_at_0004_upgrades_keeping_its_rows_and_downgrades_back(database_url: str) -> None:
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(database_url)
    with engine.begin() as db:
        command.upgrade(schema.alembic_config(db), "0004")
    event = {
        "site": "site-a",
        "device_id": "cam-01",
        "model_version": 1,
        "detected_at": 1.0,
        "received_at": 2.0,
        "example_id": "e" * 64,
    }
    with engine.begin() as db:
        db.execute(drift_events.drift_events.insert(), [event])
    assert schema.upgrade(engine) == "0005"
    assert schema.differences(engine, metadata) == []
    store = federation_store.FederationStore(engine)
    run = store.start_run(strategy="fedavg", rounds=1, base_version=1)
    assert store.run(run) is not None
    with engine.connect() as db:
        assert db.execute(sa.select(drift_events.drift_events.c.site)).scalars().all() == ["site-a"]
    with engine.begin() as db:
        command.downgrade(schema.alembic_config(db), "0004")
    tables = set(sa.inspect(engine).get_table_names())
    assert "drift_events" in tables and not tables & {"federated_runs", "federated_rounds"}
    engine.dispose()
