"""Commits made through other connections (another proxy, a worker process, `rrproxy rm`),
seen by a running proxy without a restart: `watch` calls `on_change(cassette)` with the
name of a cassette that changed, or `None` for "anything may have changed".

PostgreSQL: `LISTEN` on `writes.CHANGES_CHANNEL`, to which every batch that ends recordings
and every cassette deletion sends the cassette's name (`pg_notify`, delivered at commit).
A lost connection is opened again with backoff, and reported as `None` (what was sent
meanwhile is lost). SQLite: `PRAGMA data_version` on a connection of its own, every
`poll_s`: it changes when any other connection commits (the names are not known: `None`).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from typing import Any

from sqlalchemy.engine import make_url

from proxy.store.engine import is_sqlite
from proxy.store.writes import CHANGES_CHANNEL

log = logging.getLogger(__name__)

POLL_S = 0.2
_BACKOFF_MAX_S = 5.0

OnChange = Callable[[str | None], None]


async def watch(url: str, on_change: OnChange, *, poll_s: float = POLL_S) -> None:
    """Until cancelled."""
    if is_sqlite(url):
        await _poll_sqlite(url, on_change, poll_s)
    elif make_url(url).get_backend_name() == "postgresql":
        await _listen_postgres(url, on_change)
    # other databases: a replay miss still reloads the cassette before it is declared


async def _poll_sqlite(url: str, on_change: OnChange, poll_s: float) -> None:
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    # Read on the event loop: `PRAGMA data_version` reads a counter in the connection's own
    # pager (microseconds, no lock taken in WAL mode), cheaper than a hop to a thread.
    with closing(sqlite3.connect(database, timeout=0.1)) as db:

        def version() -> int | None:
            try:
                return int(db.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:  # busy past the timeout: the next poll will do
                log.debug("cannot read the store's data version: %s", exc)
                return None

        seen = version()
        while True:
            await asyncio.sleep(poll_s)
            now = version()
            if now is not None and now != seen:
                seen = now
                on_change(None)


async def _listen_postgres(url: str, on_change: OnChange) -> None:
    import asyncpg  # type: ignore[import-untyped]  # the `postgres` extra

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    backoff = 0.1
    first = True
    while True:
        lost = asyncio.Event()
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.debug("cannot listen for the store's changes (%s); retrying", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            continue
        backoff = 0.1

        def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            on_change(payload or None)

        try:
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await conn.add_listener(CHANGES_CHANNEL, heard)
            if not first:
                on_change(None)  # notifications sent while we were away are lost
            first = False
            while not lost.is_set():  # a dead server is noticed by a query, not by waiting
                try:
                    async with asyncio.timeout(5):
                        await lost.wait()
                except TimeoutError:
                    try:
                        await conn.execute("SELECT 1", timeout=5)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                        break
        finally:
            conn.terminate()
