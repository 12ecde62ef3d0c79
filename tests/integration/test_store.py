"""The store's schema: the models and the migrations agree, SQLite runs in WAL mode, and
upgrading an up-to-date store changes nothing."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import database_url
from proxy.store import migrate
from proxy.store.engine import create_engine
from proxy.store.models import Base


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url(store_url), writer=True)
    try:
        yield engine
    finally:
        await engine.dispose()


def _sqlite(db: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.stores
async def test_models_and_migrations_agree(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)

    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    def check(connection: Connection) -> None:
        command.check(migrate.alembic_config(connection))  # raises on any difference

    async with engine.begin() as connection:
        assert await connection.run_sync(diff) == []
        await connection.run_sync(check)


async def test_the_store_is_at_head_in_wal_mode(engine: AsyncEngine, db_path: Path) -> None:
    await migrate.upgrade(engine)
    head = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()
    assert await migrate.current_revision(engine) == head
    await engine.dispose()
    # journal_mode=WAL is a property of the file: a fresh connection sees it.
    assert _sqlite(db_path, "PRAGMA journal_mode") == [("wal",)]


async def test_upgrade_twice_is_a_no_op(
    engine: AsyncEngine, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy")
    await migrate.upgrade(engine)
    assert any("creating the store" in r.getMessage() for r in caplog.records)
    await engine.dispose()
    schema = _sqlite(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name")
    (version,) = _sqlite(db_path, "PRAGMA schema_version")
    caplog.clear()

    await migrate.upgrade(engine)
    await engine.dispose()
    assert not any(" the store" in r.getMessage() for r in caplog.records)
    # schema_version counts every schema change made to the file
    assert _sqlite(db_path, "PRAGMA schema_version") == [version]
    assert _sqlite(db_path, "SELECT type, name, sql FROM sqlite_master ORDER BY name") == schema


@pytest.mark.stores
async def test_0008_can_be_undone_and_done_again(engine: AsyncEngine, store_url: str) -> None:
    """0008 can be undone (its columns and table dropped, nothing else) and redone."""
    await migrate.upgrade(engine)

    def down_and_up(connection: Connection) -> None:
        config = migrate.alembic_config(connection)
        command.downgrade(config, "0003")
        command.upgrade(config, "head")

    async with engine.begin() as connection:
        await connection.run_sync(down_and_up)
    assert await migrate.current_revision(engine) == "0008_team_store"
