"""Engines for the store. SQLite gets WAL, a busy timeout and explicit transactions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from proxy.store import migrate as migrations

BUSY_TIMEOUT_S = 5.0
WAL_AUTOCHECKPOINT_PAGES = 16384
"""The writer's own checkpoints wait until the WAL is this long (64 MiB in 4 KiB pages): the
recorder checkpoints when it is idle instead, off the path of a stream (`checkpoint`)."""


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, writer: bool = False, read_only: bool = False) -> AsyncEngine:
    """An async engine; `writer=True` gives the single writer's engine (`BEGIN IMMEDIATE`).

    SQLite transactions are emitted by us rather than by the driver (SQLAlchemy's
    "Serializable isolation / Savepoints / Transactional DDL" recipe for aiosqlite), so the
    writer takes the write lock up front. Readers run each statement in autocommit (one
    statement is one consistent snapshot), which saves a BEGIN and a ROLLBACK per read.
    """
    if not is_sqlite(url):
        if read_only and make_url(url).get_backend_name() == "postgresql":
            settings = {"default_transaction_read_only": "on"}  # the server refuses writes
            return create_async_engine(
                url, pool_pre_ping=True, connect_args={"server_settings": settings}
            )
        return create_async_engine(url, pool_pre_ping=True)
    engine = create_async_engine(
        url,
        connect_args={"timeout": BUSY_TIMEOUT_S},
        pool_size=1 if writer else 8,
        max_overflow=0 if writer else 8,
        # Readers run single statements in autocommit: nothing to roll back on return.
        pool_reset_on_return="rollback" if writer else None,
    )

    _sqlite_setup(engine.sync_engine, writer=writer)
    if read_only:

        @event.listens_for(engine.sync_engine, "connect")
        def _query_only(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA query_only=ON")  # SQLite refuses writes

    return engine


@asynccontextmanager
async def open_store(
    url: str,
    *,
    writer: bool,
    migrate: bool = False,
    lock_timeout: float = 30.0,
    read_only: bool = False,
) -> AsyncIterator[AsyncEngine]:
    """An engine for the store, disposed of on the way out; `migrate=True` (a writer only)
    first brings the schema to the newest revision (`StoreError` if it cannot), waiting up
    to `lock_timeout` for a SQLite store another process holds locked."""
    if migrate and not writer:
        raise ValueError("only the writer's engine migrates the store")
    engine = create_engine(url, writer=writer, read_only=read_only)
    try:
        if migrate:
            await migrations.upgrade(engine, lock_timeout=lock_timeout)
        yield engine
    finally:
        await engine.dispose()


def create_writer_thread_engine(url: str) -> Engine:
    """The SQLite writer's synchronous twin (the stdlib driver), for a thread of its own:
    a batch then costs one hop between threads instead of one per statement."""
    sync_url = make_url(url).set(drivername="sqlite")
    engine = create_sync_engine(
        sync_url,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        pool_size=1,
        max_overflow=0,
    )
    _sqlite_setup(engine, writer=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")

    return engine


def checkpoint(engine: Engine) -> None:
    """Copy the WAL's pages into the database file, as far as readers allow (`PASSIVE`:
    never waits on anyone). SQLite would do this itself inside a commit every 1,000 pages,
    which puts a copy of 4 MB and an fsync in the middle of a recording."""
    connection = engine.raw_connection()  # outside a transaction, as a checkpoint must be
    try:
        connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
    finally:
        connection.close()


def _sqlite_setup(engine: Engine, *, writer: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    if writer:

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
