"""Opening the store for a command: the one place that checks what `--db` names, creates the
engines, brings the schema up to date, loads the cassette directory when one is configured,
and closes it all again. `rrproxy db upgrade` is that and nothing else.

Commands that only read or delete (`ls`, `show`, `export`, `rm`) refuse a SQLite file that
does not exist rather than create an empty store at a mistyped path; `import`, `serve` and
`db upgrade` create one, in a directory that must exist.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.cassettes.directory import CassetteDir
from proxy.config import Settings, display_db
from proxy.errors import ConfigError
from proxy.store import migrate
from proxy.store.engine import open_store

T = TypeVar("T")

CHOOSE = "check --db (or RRPROXY_DB, or db in the config file)"


@dataclass
class Store:
    writer: AsyncEngine
    reader: AsyncEngine
    dir: CassetteDir | None


def sqlite_file(settings: Settings) -> Path | None:
    """The file a SQLite store lives in; None for a server's database (PostgreSQL), an
    in-memory one, or a SQLite URI (whose options we leave to SQLite)."""
    url = make_url(settings.db_url)
    if url.get_backend_name() != "sqlite" or url.query.get("uri"):
        return None
    if url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def check_location(settings: Settings, *, create: bool) -> None:
    """Before anything is opened: refuse a store that is not there (unless the command may
    create one), or one that cannot be created where `--db` puts it."""
    path = sqlite_file(settings)
    if path is None or path.is_file():
        return
    if path.exists():
        raise ConfigError(f"the store {path} is not a file; {CHOOSE}")
    if not create:
        raise ConfigError(
            f"no store at {path}; {CHOOSE}, or create one with rrproxy import FILE "
            "(or rrproxy serve, or rrproxy db upgrade)"
        )
    if not path.parent.is_dir():
        raise ConfigError(
            f"cannot create the store {path}: the directory {path.parent} does not exist; "
            "create it first, or choose another --db"
        )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot create the store {path}: the directory {path.parent} is not writable; "
            "choose another --db"
        )


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Store]:
    """The store's engines, its schema up to date and its cassette directory loaded."""
    async with (
        open_store(
            settings.db_url,
            writer=True,
            migrate=True,
            lock_timeout=settings.store_lock_timeout,
        ) as writer,
        open_store(settings.db_url, writer=False) as reader,
    ):
        directory = None
        if settings.cassette_dir is not None:
            directory = CassetteDir(Path(settings.cassette_dir), writer, reader, settings.redact)
            await directory.load()
        yield Store(writer, reader, directory)


def run(settings: Settings, work: Callable[[Store], Awaitable[T]], *, create: bool = False) -> T:
    """Check the location, open the store, run `work` on it, close it. A cassette directory
    fills a new store, so a command given one may create the store."""
    check_location(settings, create=create or settings.cassette_dir is not None)

    async def main() -> T:
        async with opened(settings) as store:
            return await work(store)

    return asyncio.run(main())


def db_upgrade(settings: Settings, _args: argparse.Namespace) -> int:
    """`rrproxy db upgrade`: create the store or bring its schema to this rrproxy's."""

    async def revision(store: Store) -> str | None:
        return await migrate.current_revision(store.writer)

    found = run(replace(settings, cassette_dir=None), revision, create=True)
    print(f"store {display_db(settings.db)} is at schema revision {found}")
    return 0
