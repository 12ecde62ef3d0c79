"""The stores a test runs on: the machine's PostgreSQL (a database per test), a throwaway
PostgreSQL cluster of the test's own (for faults: stopped, restarted, refused), and plain
synchronous reads of either kind for assertions.

The machine runs PostgreSQL 15 at 127.0.0.1:5432 (trust auth, user `postgres`, database
`test`); `RRPROXY_TEST_PG` names another server. Unreachable, the PostgreSQL half of the suite
skips with one line saying so; under `CI=true` it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

KINDS = ("sqlite", "postgresql")
ADMIN_URL = os.environ.get("RRPROXY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
PG_BIN = Path(os.environ.get("RRPROXY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
ENABLE = (
    "PostgreSQL unreachable at {url} ({error}): start it (trust auth, user postgres, database "
    "test) or set RRPROXY_TEST_PG to a server's URL to run the PostgreSQL half of the suite"
)


def is_postgres(db: object) -> bool:
    return isinstance(db, str) and db.startswith(("postgresql", "postgres:"))


def _dsn(url: str) -> str:
    """asyncpg's form of a URL (no `+driver`)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def _in_thread(coro: Any) -> Any:
    """Run a coroutine to its end on a loop of its own (callable from sync code and from
    inside a running loop alike)."""
    result: dict[str, Any] = {}

    def main() -> None:
        try:
            result["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(60)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement against a PostgreSQL database (`?` placeholders, as sqlite3's)."""
    n = iter(range(1, 1000))
    statement = re.sub(r"\?", lambda _m: f"${next(n)}", sql)

    async def run() -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(_dsn(url), timeout=10)
        try:
            return [tuple(r) for r in await conn.fetch(statement, *args)]
        finally:
            await conn.close()

    return list(_in_thread(run()))


_reachable: str | None = None  # None: not tried yet; "": reachable; else why not


async def _admin() -> Any:
    import asyncpg

    return await asyncpg.connect(_dsn(ADMIN_URL), timeout=5)


def _unreachable(why: str) -> None:
    line = ENABLE.format(url=ADMIN_URL, error=why)
    if os.environ.get("CI") == "true":
        pytest.fail(line, pytrace=False)
    pytest.skip(line)


@asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A database of its own on the machine's server for the block: its URL."""
    global _reachable
    if _reachable:
        _unreachable(_reachable)
    try:
        admin = await _admin()
    except (OSError, TimeoutError) as exc:
        _reachable = f"{type(exc).__name__}: {exc}"
        _unreachable(_reachable)
        raise  # not reached
    _reachable = ""
    name = f"rrtest_{uuid.uuid4().hex[:16]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Cluster:
    """A PostgreSQL cluster of the test's own, in a temporary directory, on a free port:
    it can be stopped and restarted under a proxy (never the machine's shared server)."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.data = root / "data"
        self.port = port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(PG_BIN / args[0]), *args[1:]]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-l",
            str(self.root / "log"),
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return query(self.url, sql, *args)


def cluster_tools() -> bool:
    return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()


def rows(db: str | Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement against a test's store, whichever kind (`?` placeholders)."""
    if is_postgres(db):
        return query(str(db), sql, *args)
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db, timeout=5)) as conn:
        return conn.execute(sql, args).fetchall()
