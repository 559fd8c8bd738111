"""Alembic's environment: migrate the connection :func:`~edgecascade.cloud_service.schema.upgrade` hands over.

The target metadata is every table of the cloud database (the store's, the jobs', the fleet's,
the unknown groups' and the federated runs'), which autogenerate compares with a migrated
database. Logging is left as the process configured it.
"""

from __future__ import annotations

from alembic import context

from edgecascade.cloud_service import federation_store, jobs, store, unknown_groups
from edgecascade.cloud_service.dashboard import fleet

# one metadata holds every table
assert jobs.retrain_jobs.metadata is fleet.gateway_heartbeats.metadata is store.metadata
assert unknown_groups.unknown_groups.metadata is federation_store.federated_runs.metadata is store.metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through edgecascade.cloud_service.schema, which passes a connection")
context.configure(
    connection=connection,
    target_metadata=store.metadata,
    render_as_batch=True,  # SQLite alters a table by copying it
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
