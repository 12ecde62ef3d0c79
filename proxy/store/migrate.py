"""Alembic, run from the application (and from `rrproxy db upgrade`) on a shared connection.

The migration scripts live in the top-level `migrations/` directory, installed as the
`proxy.migrations` package so that a plain `pip install .` ships them.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.errors import StoreError

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


async def upgrade(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; refuse a database from a newer rrproxy."""
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"cannot open the store at {engine.url!r}: {exc}") from exc


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(_current)
