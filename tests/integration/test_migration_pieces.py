"""Migration 0005 on a store written before it: each event row stays an event that arrived
whole (no pieces, continues nothing), read and exported as before."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from alembic import command
from sqlalchemy import Connection

from proxy.config import database_url
from proxy.core.records import Event
from proxy.store import migrate, queries
from proxy.store.engine import create_engine
from tests.integration.test_migration_ids import INTERACTION


async def test_0005_leaves_every_event_whole(db_path: Path) -> None:
    engine = create_engine(database_url(str(db_path)), writer=True)

    def to_0003(connection: Connection) -> None:
        command.upgrade(migrate.alembic_config(connection), "0003")

    async with engine.begin() as connection:
        await connection.run_sync(to_0003)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("INSERT INTO cassettes VALUES (1, 'a', '2026-01-01')")
        conn.execute(INTERACTION, (1, 1))
        conn.execute("INSERT INTO events VALUES (1, 0, 1.0, x'616263'), (1, 1, 2.0, x'0a0a')")

    await migrate.upgrade(engine)

    with closing(sqlite3.connect(db_path)) as conn:
        rows = conn.execute("SELECT pieces, continues FROM events ORDER BY seq").fetchall()
    assert rows == [(None, 0), (None, 0)]
    assert await queries.events(engine, 1) == [Event(1.0, b"abc"), Event(2.0, b"\n\n")]
    pages = [page async for page in queries.event_pages(engine, 1)]
    assert pages == [[(1.0, b"abc", None, False), (2.0, b"\n\n", None, False)]]
    await engine.dispose()
