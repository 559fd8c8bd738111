"""Schema migrations on SQLite and PostgreSQL: new databases, databases made before them, races."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa
from alembic import command

from edgecascade.cloud_service import federation_store, schema
from edgecascade.cloud_service.dashboard import fleet
from edgecascade.cloud_service.jobs import JobStore, retrain_jobs
from edgecascade.cloud_service.migrations.__main__ import main as migrations_main
from edgecascade.cloud_service.store import connect, metadata, model_versions, open_engine
from edgecascade.device_sdk.errors import ConfigError

assert fleet.fleet_devices.metadata is metadata  # every table is in the metadata compared
assert federation_store.federated_rounds.metadata is metadata


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_a_new_database_is_migrated_to_head_and_matches_the_code(database_url: str) -> None:
    engine = open_engine(database_url)
    assert schema.current_revision(engine) == schema.head_revision() == "0005"
    assert tables(engine) == {"alembic_version", "hard_examples", "model_versions", "retrain_jobs"} | {
        "gateway_heartbeats",
        "fleet_devices",
        "unknown_groups",
        "unknown_group_members",
        "named_classes",
        "drift_events",
        "federated_runs",
        "federated_rounds",
    }
    assert schema.differences(engine, metadata) == []  # `alembic check`: the code needs no new revision
    with engine.begin() as db:  # the downgrade undoes the baseline, and it applies again
        command.downgrade(schema.alembic_config(db), "base")
    assert tables(engine) == {"alembic_version"} and schema.current_revision(engine) is None
    assert schema.upgrade(engine) == "0005" and schema.differences(engine, metadata) == []
    engine.dispose()


def test_a_database_made_before_migrations_is_adopted_with_its_rows(database_url: str) -> None:
    before = connect(database_url)  # what open_engine did then: create_all, no revision
    with before.begin() as db:  # the tables as they were then: the baseline's, without its record
        command.upgrade(schema.alembic_config(db), "0001")
        db.execute(sa.text("DROP TABLE alembic_version"))
        db.execute(sa.text("DROP TABLE retrain_jobs"))  # jobs came later
    with before.begin() as db:
        db.execute(
            model_versions.insert().values(
                version=3, name="m", num_classes=10, spec="{}", first_served_at=1.0
            )
        )
    assert schema.current_revision(before) is None
    before.dispose()

    engine = open_engine(database_url)
    assert schema.current_revision(engine) == schema.head_revision()
    assert schema.differences(engine, metadata) == []  # the missing table was made, nothing else changed
    with engine.connect() as db:
        assert db.execute(sa.select(model_versions.c.version, model_versions.c.name)).all() == [(3, "m")]
    assert JobStore(engine).create("cli") is not None
    engine.dispose()


def test_processes_opening_a_new_database_at_once_migrate_it_once(database_url: str) -> None:
    """Web workers and a job process may all open an empty database in the same moment."""
    start = time.time() + 3.0  # every process has imported SQLAlchemy and Alembic by then
    code = textwrap.dedent(
        f"""
        import time
        from edgecascade.cloud_service.store import open_engine
        time.sleep(max(0.0, {start} - time.time()))
        open_engine({database_url!r}).dispose()
        """
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0, 0], errors
    engine = connect(database_url)
    assert schema.current_revision(engine) == schema.head_revision()
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()


def test_a_database_migrated_by_a_newer_release_is_refused(database_url: str) -> None:
    engine = open_engine(database_url)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(ConfigError, match="revision 9999, which this release does not know"):
        open_engine(database_url)


def test_the_migrations_command_checks_a_database_against_the_code(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert migrations_main(["--database-url", database_url, "check"]) == 1  # empty: not at head
    assert migrations_main(["--database-url", database_url, "upgrade"]) == 0
    assert migrations_main(["--database-url", database_url, "current"]) == 0
    assert "database at 0005; newest known 0005" in capsys.readouterr().out
    assert migrations_main(["--database-url", database_url, "check"]) == 0
    engine = connect(database_url)
    with engine.begin() as db:  # a change made by hand, not by a migration
        db.execute(sa.text(f"ALTER TABLE {retrain_jobs.name} ADD COLUMN note VARCHAR(20)"))
    engine.dispose()
    assert migrations_main(["--database-url", database_url, "check"]) == 1
    assert "note" in capsys.readouterr().out


def test_writing_a_revision_when_the_code_matches_the_head_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert migrations_main(["revision", "-m", "nothing"]) == 2
    assert "nothing to migrate" in capsys.readouterr().err


def test_an_unreachable_database_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot migrate the database"):
        open_engine("postgresql+psycopg://ec@127.0.0.1:1/none")
    with pytest.raises(ConfigError, match="cannot open the database"):
        open_engine("nosuchdialect://x")


def test_a_connection_that_loses_the_race_to_switch_a_new_file_to_wal_tries_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two processes switching one new file at once: SQLite fails one at once ("database is locked")."""
    import sqlite3

    from edgecascade.cloud_service import store

    class Cursor:
        def __init__(self, failures: int) -> None:
            self.failures, self.executed = failures, []

        def execute(self, sql: str) -> None:
            self.executed.append(sql)
            if sql.endswith("WAL") and self.failures:
                self.failures -= 1
                raise sqlite3.OperationalError("database is locked")

        def close(self) -> None:
            pass

    class Connection:
        def __init__(self, failures: int) -> None:
            self.cur = Cursor(failures)

        def cursor(self) -> Cursor:
            return self.cur

    monkeypatch.setattr(store.time, "sleep", lambda seconds: None)
    lucky = Connection(failures=3)
    store._sqlite_pragmas(lucky, None)
    assert lucky.cur.executed == ["PRAGMA busy_timeout=30000"] + ["PRAGMA journal_mode=WAL"] * 4
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # not for ever
        store._sqlite_pragmas(Connection(failures=store.WAL_ATTEMPTS), None)
