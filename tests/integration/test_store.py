"""The store's schema: the models and the migrations agree, SQLite runs in WAL mode, and
upgrading an up-to-date store changes nothing."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, DateTime, bindparam, text
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
async def test_0008_numbers_existing_interactions_and_can_be_undone(
    engine: AsyncEngine, store_url: str
) -> None:
    """Interactions recorded before 0008 get places 1, 2, ... per cassette, in id order;
    0008 can be undone (its columns and table dropped) and done again."""
    await migrate.upgrade(engine)
    interaction = (
        "INSERT INTO interactions (cassette_id, method, url, request_headers, request_body, "
        "status, response_headers, outcome, started_at, ttfb_ms, event_count, body_size) "
        "VALUES (:c, 'POST', 'http://u/v1', '[]', :body, 200, '[]', 'complete', "
        ":t, 1.0, 0, 0)"
    )

    when = bindparam("t", type_=DateTime(timezone=True))  # each dialect's own form

    def down_fill_up(connection: Connection) -> list[tuple[int, int, int]]:
        config = migrate.alembic_config(connection)
        command.downgrade(config, "0003")
        for name in ("a", "b"):
            connection.execute(
                text("INSERT INTO cassettes (name, created_at) VALUES (:n, :t)").bindparams(when),
                {"n": name, "t": datetime(2026, 1, 1, tzinfo=UTC)},
            )
        a, b = connection.execute(text("SELECT id FROM cassettes ORDER BY name")).scalars()
        for cassette in (b, a, b, a, a):
            connection.execute(
                text(interaction).bindparams(when),
                {"c": cassette, "body": b"{}", "t": datetime(2026, 1, 1, tzinfo=UTC)},
            )
        command.upgrade(config, "head")
        found = connection.execute(
            text("SELECT cassette_id, id, ordinal FROM interactions ORDER BY id")
        ).all()
        return [(c, i, o) for c, i, o in found]

    async with engine.begin() as connection:
        placed = await connection.run_sync(down_fill_up)
    assert await migrate.current_revision(engine) == "0008_team_store"
    by_cassette: dict[int, list[int]] = {}
    for cassette, _, ordinal in placed:
        by_cassette.setdefault(cassette, []).append(ordinal)
    assert sorted(by_cassette.values()) == [[1, 2], [1, 2, 3]]
