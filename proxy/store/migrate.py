"""Alembic, run from the application (and from `rrproxy db upgrade`) on a shared connection.

The migration scripts live in the top-level `migrations/` directory, installed as the
`proxy.migrations` package so that a plain `pip install .` ships them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.errors import StoreError, StoreUnreachable

log = logging.getLogger(__name__)


def migrations_dir() -> Path:
    return Path(str(files("proxy.migrations")))


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["connection"] = connection
    return config


def _check_known(connection: Connection, script: ScriptDirectory) -> str | None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None:
        try:
            script.get_revision(current)
        except Exception:
            raise StoreError(
                f"the database's schema (revision {current}) is newer than this rrproxy "
                f"understands (newest known: {script.get_current_head()}); upgrade rrproxy, "
                "or point --db at another database"
            ) from None
    return current


def _upgrade(connection: Connection) -> None:
    config = alembic_config(connection)
    script = ScriptDirectory.from_config(config)
    current = _check_known(connection, script)
    head = script.get_current_head()
    if current is None:
        log.info("creating the store (schema revision %s)", head)
    elif current != head:
        log.info("migrating the store from schema revision %s to %s", current, head)
    if current != head:
        command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


MIGRATION_LOCK = 7_272_707_278_790_001
"""PostgreSQL advisory lock held while the schema is checked and migrated: proxies started
together on an empty database migrate it once (the others wait, then find it at head)."""


def _locked_upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
    _upgrade(connection)


async def upgrade(engine: AsyncEngine, *, lock_timeout: float = 30.0) -> None:
    """Bring the schema to the newest revision; refuse a database from a newer rrproxy.

    Under a lock: PostgreSQL's advisory lock, SQLite's write lock (`BEGIN IMMEDIATE`). A
    SQLite store another process holds locked is waited for up to `lock_timeout` seconds,
    then refused naming the processes that have it open. A server that cannot be reached is
    `StoreUnreachable`, naming its host and port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lock_timeout
    said = False
    while True:
        try:
            async with engine.begin() as connection:
                await connection.run_sync(_locked_upgrade)
            return
        except StoreError:
            raise
        except (OSError, TimeoutError) as exc:
            raise unreachable(engine, exc) from exc
        except Exception as exc:
            if not _locked(exc):
                raise StoreError(f"cannot open the store at {engine.url!r}: {exc}") from exc
            who = holders(engine.url.database)
            if loop.time() >= deadline:
                raise StoreError(
                    f"the store {engine.url.database} is locked by another process "
                    f"({who}) and stayed locked for {lock_timeout:g} s; wait for it to "
                    "finish, or raise timeouts.store_lock"
                ) from exc
            if not said:
                said = True
                log.warning(
                    "the store %s is locked by another process (%s); waiting up to %g s",
                    engine.url.database,
                    who,
                    lock_timeout,
                )
            await asyncio.sleep(0.2)


def _locked(exc: Exception) -> bool:
    cause = getattr(exc, "orig", None) or exc
    return isinstance(cause, sqlite3.OperationalError) and "locked" in str(cause)


def unreachable(engine: AsyncEngine, exc: BaseException) -> StoreUnreachable:
    url = engine.url
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    return StoreUnreachable(
        f"cannot reach the database server at {where} ({exc}); start it, or check --db"
    )


def holders(database: str | None) -> str:
    """Who has a SQLite file open, from /proc (Linux): "pid 12 (python -m proxy serve)"."""
    if not database or not Path("/proc/self/fd").is_dir():
        return "unknown process"
    try:
        target = Path(database).resolve()
    except OSError:
        return "unknown process"
    wanted = {str(target), f"{target}-wal", f"{target}-shm"}
    found: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            fds = list((proc / "fd").iterdir())
            if not any(os.readlink(fd) in wanted for fd in fds):
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found.append(f"pid {proc.name} ({' '.join(command.split())[:80]})")
    return ", ".join(found) or "a process this user cannot see"


def _require_head(connection: Connection) -> None:
    script = ScriptDirectory.from_config(alembic_config(connection))
    current = _check_known(connection, script)
    if current != script.get_current_head():
        raise StoreError(
            f"the store is at schema revision {current}, this rrproxy needs "
            f"{script.get_current_head()}, and a read-only proxy never migrates: run "
            "rrproxy db upgrade --db ... once, or start a proxy that records"
        )


async def require_head(engine: AsyncEngine) -> None:
    """A read-only proxy's check: the schema is this rrproxy's, or `StoreError`."""
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_require_head)
    except StoreError:
        raise
    except (OSError, TimeoutError) as exc:
        raise unreachable(engine, exc) from exc
    except Exception as exc:
        raise StoreError(f"cannot open the store at {engine.url!r}: {exc}") from exc


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
