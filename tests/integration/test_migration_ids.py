"""Migration 0003 on a store written before it: every row kept (foreign keys on, nothing
cascades away), and from then on the id of a deleted interaction or cassette is never given
again."""

from __future__ import annotations

import sqlite3
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


def dump(db: Path) -> tuple[list[tuple[object, ...]], ...]:
    with closing(sqlite3.connect(db)) as conn:
        return (
            conn.execute("SELECT * FROM cassettes ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM interactions ORDER BY id").fetchall(),
            conn.execute("SELECT * FROM events ORDER BY interaction_id, seq").fetchall(),
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

    after = dump(db_path)
    # later revisions may add columns (0006: interactions.body_sha256, NULL for these rows):
    # every row keeps the columns it had, with their values
    width = [len(table[0]) for table in before]
    assert tuple([row[:w] for row in t] for t, w in zip(after, width, strict=True)) == before
    assert all(row[width[1] :] == (None,) * (len(row) - width[1]) for row in after[1])
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
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
