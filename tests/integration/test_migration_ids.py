"""Migration 0003 on a store written before it: every row kept (foreign keys on, nothing
cascades away), and from then on the id of a deleted interaction or cassette is never given
again."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from alembic import command
from sqlalchemy import Connection

from proxy.config import database_url
from proxy.store import migrate
from proxy.store.engine import create_engine

INTERACTION = (
    "INSERT INTO interactions (id, cassette_id, method, url, request_headers, request_body, "
    "status, response_headers, outcome, started_at, ttfb_ms, event_count, body_size) "
    "VALUES (?, ?, 'POST', 'http://u/v1', '[]', x'7b7d', 200, '[]', 'complete', "
    "'2026-01-01 00:00:00', 1.0, 2, 6)"
)


COLUMNS_0001 = (
    "id, cassette_id, method, url, request_headers, request_body, status, response_headers, "
    "outcome, error, started_at, ttfb_ms, duration_ms, event_count, body_size"
)


def dump(db: Path) -> tuple[list[tuple[object, ...]], ...]:
    with closing(sqlite3.connect(db)) as conn:
        return (
            conn.execute("SELECT * FROM cassettes ORDER BY id").fetchall(),
            conn.execute(f"SELECT {COLUMNS_0001} FROM interactions ORDER BY id").fetchall(),
            conn.execute(
                "SELECT interaction_id, seq, t_ms, data FROM events ORDER BY interaction_id, seq"
            ).fetchall(),
        )


async def test_0003_keeps_every_row_and_ids_are_never_given_again(db_path: Path) -> None:
    engine = create_engine(database_url(str(db_path)), writer=True)

    def to_0002(connection: Connection) -> None:
        command.upgrade(migrate.alembic_config(connection), "0002")

    async with engine.begin() as connection:
        await connection.run_sync(to_0002)
    await engine.dispose()
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("INSERT INTO cassettes VALUES (1, 'a', '2026-01-01'), (2, 'b', '2026-01-01')")
        for id_ in (1, 2, 3):
            conn.execute(INTERACTION, (id_, 1 + id_ % 2))
            conn.execute(
                "INSERT INTO events VALUES (?, 0, 1.0, x'616263'), (?, 1, 2.0, x'0a0a')", (id_, id_)
            )
    before = dump(db_path)

    await migrate.upgrade(engine)
    await engine.dispose()

    # later revisions add columns (0004 `untimed`, 0006 `body_sha256`, 0008 `ordinal`...):
    # every row keeps the columns it had, with their values
    assert dump(db_path) == before
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        # 0008 numbered each cassette's interactions in id order
        ordinals = conn.execute("SELECT id, ordinal FROM interactions ORDER BY id").fetchall()
        assert ordinals == [(1, 1), (2, 1), (3, 2)]
        # the newest interaction and cassette deleted: their ids do not come back
        conn.execute("DELETE FROM interactions WHERE id = 3")
        conn.execute("DELETE FROM cassettes WHERE id = 2")
        conn.execute("INSERT INTO cassettes (name, created_at) VALUES ('c', '2026-01-02')")
        (cassette,) = conn.execute("SELECT id FROM cassettes WHERE name = 'c'").fetchone()
        assert cassette == 3
        new = conn.execute(
            INTERACTION.replace("(id, ", "(").replace("VALUES (?, ", "VALUES ("), (cassette,)
        ).lastrowid
        assert new == 4


async def test_0004_marks_no_stored_interaction_untimed_and_goes_back(db_path: Path) -> None:
    """0004 adds `interactions.untimed` in place (no table copy, no cascade): rows stored
    before it were recorded by rrproxy, so they are timed; a downgrade drops the column and
    keeps every row."""
    engine = create_engine(database_url(str(db_path)), writer=True)

    def to(revision: str, *, down: bool = False) -> Callable[[Connection], None]:
        def run(connection: Connection) -> None:
            move = command.downgrade if down else command.upgrade
            move(migrate.alembic_config(connection), revision)

        return run

    async with engine.begin() as connection:
        await connection.run_sync(to("0003"))
    await engine.dispose()
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("INSERT INTO cassettes VALUES (1, 'a', '2026-01-01')")
        conn.execute(INTERACTION, (1, 1))
        conn.execute("INSERT INTO events VALUES (1, 0, 1.0, x'616263')")
    before = dump(db_path)

    await migrate.upgrade(engine)
    await engine.dispose()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("SELECT id, untimed FROM interactions").fetchall() == [(1, 0)]
    assert dump(db_path)[2] == before[2]

    async with engine.begin() as connection:
        await connection.run_sync(to("0003", down=True))
    await engine.dispose()
    assert dump(db_path) == before
