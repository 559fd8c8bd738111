"""The cloud database's schema versions: Alembic migrations, applied when the store opens it.

The migrations live in the package (``cloud_service/migrations/versions``), configured
here in code rather than by an ``alembic.ini``, so an installed cloud migrates its own
database: :func:`upgrade` runs on every open and does nothing when the schema is current.
The first revision is the schema that ``metadata.create_all`` made before migrations
existed; it creates only the tables that are missing, so such a database is adopted as is.

Several processes may open a new database at once (the web workers, a job process): the
upgrade is one transaction that holds a lock first, ``BEGIN IMMEDIATE`` on SQLite (DDL is
transactional there too, with a driver that leaves transactions to SQLAlchemy) and a
transaction-scoped advisory lock on PostgreSQL, so the second process waits, finds the
schema current and changes nothing. A failed upgrade leaves the previous revision intact.

``python -m edgecascade.cloud_service.migrations`` shows, checks and writes revisions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from edgecascade.device_sdk.errors import ConfigError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
FILE_TEMPLATE = "v%(rev)s_%(slug)s"  # v0002_add_x.py: module names mypy and import tools accept
_PG_LOCK = 0x6563_636C_6F75_64  # pg_advisory_xact_lock key: "eccloud"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the package's migrations (``connection``: the one to migrate)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("file_template", FILE_TEMPLATE.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = script_directory().get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated, e.g. empty)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> str:
    """Bring the database to the head revision (serialised between processes); returns it.

    A database at a revision this code does not know (a newer release migrated it) is a
    :class:`ConfigError`: running older code on it could lose data.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    if current is not None and not _known(current):
        raise ConfigError(
            f"the database schema is at revision {current}, which this release does not know "
            "(a newer release upgraded it); run that release or restore a backup"
        )
    migrator, owned = _migration_engine(engine)
    try:
        with migrator.begin() as connection:
            if migrator.dialect.name == "postgresql":
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK})
            before = MigrationContext.configure(connection).get_current_revision()
            command.upgrade(alembic_config(connection), "head")
    except CommandError as exc:
        raise ConfigError(f"cannot migrate the database schema: {exc}") from None
    finally:
        if owned:
            migrator.dispose()
    if before != head:
        logger.info("database schema upgraded from %s to %s", before or "nothing", head)
    return head


def differences(engine: Engine, metadata: sa.MetaData) -> list[Any]:
    """What autogenerate would change to make the database match ``metadata`` (empty: nothing).

    Run on a database at head, an empty list means the migrations and the table
    definitions in the code describe the same schema.
    """
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def _known(revision: str) -> bool:
    try:
        return script_directory().get_revision(revision) is not None
    except CommandError:
        return False


def _migration_engine(engine: Engine) -> tuple[Engine, bool]:
    """An engine whose transactions lock the database first; ``owned``: dispose it after use.

    SQLite's Python driver starts transactions itself and never around DDL, so a file
    database gets its own engine with the driver's transaction handling off and
    ``BEGIN IMMEDIATE`` (the write lock, waited for up to the busy timeout) at each begin.
    """
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return engine, False  # PostgreSQL locks inside the transaction; a memory database is private
    migrator = sa.create_engine(
        url, poolclass=NullPool, connect_args={"timeout": 30, "isolation_level": None}
    )

    @sa.event.listens_for(migrator, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return migrator, True
