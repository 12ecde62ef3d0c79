"""Alembic environment, shared by the running app and the `alembic` command line.

The app passes its connection in `config.attributes["connection"]` (Alembic cookbook:
"Programmatic API use (connection sharing) With Asyncio"). From the command line the URL
comes from `-x db=...` or `RRPROXY_DB` (default `rrproxy.db`). `fileConfig` is never called,
so Alembic does not take over the application's logging (alembic#714).
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection

from proxy.config import database_url
from proxy.store.engine import create_engine
from proxy.store.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_url(url: str) -> None:
    engine = create_engine(url, writer=True)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    db = context.get_x_argument(as_dictionary=True).get("db") or os.environ.get("RRPROXY_DB")
    asyncio.run(_run_from_url(database_url(db or "rrproxy.db")))
