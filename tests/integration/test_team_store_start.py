"""Starting on a store that is not simply there: locked by another process (waited for,
then refused naming who holds it), a server that cannot be reached (exit 2, naming host and
port), a schema from a newer rrproxy (refused), and a URL with a password (never printed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.integration.test_fault_store import locked, release
from tests.proc import eventually, free_port, run_cli, serving, spawn
from tests.stores import postgres_database, rows

LOCK = {"RRPROXY_TIMEOUTS_STORE_LOCK": "1"}


async def test_a_start_on_a_locked_store_gives_up_after_the_timeout_naming_who_holds_it(
    db_path: Path, tmp_path: Path
) -> None:
    assert run_cli("db", "upgrade", "--db", str(db_path), cwd=tmp_path).returncode == 0
    async with locked(db_path) as locker:
        result = await asyncio.to_thread(
            run_cli, "db", "upgrade", "--db", str(db_path), cwd=tmp_path, env=LOCK
        )
    assert result.returncode == 1
    line = result.stderr.splitlines()[-1]  # after a line saying it waits, if it had time
    assert line.startswith("rrproxy: the store ")
    assert "is locked by another process" in line and f"pid {locker.pid} (" in line
    assert "timeouts.store_lock" in line


async def test_a_start_on_a_locked_store_waits_for_it_and_serves_once_it_is_released(
    db_path: Path, tmp_path: Path
) -> None:
    assert run_cli("db", "upgrade", "--db", str(db_path), cwd=tmp_path).returncode == 0
    async with locked(db_path) as locker:
        proc = spawn("--db", str(db_path), cwd=tmp_path)
        try:
            await eventually(lambda: "waiting up to 30 s" in proc.stderr(), within=30)
            assert f"pid {locker.pid} (" in proc.stderr()
            await release(locker)
            await proc.wait_healthy()
        finally:
            await proc.kill()


@pytest.mark.parametrize("command", [("serve",), ("db", "upgrade"), ("ls",)])
def test_an_unreachable_database_server_exits_2_naming_host_and_port(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there
    db = f"postgresql://postgres:hunter2@127.0.0.1:{port}/rrproxy"
    result = run_cli(*command, "--db", db, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert f"cannot reach the database server at 127.0.0.1:{port}" in line
    assert "hunter2" not in line


@pytest.mark.stores
async def test_a_schema_newer_than_this_rrproxy_is_refused(store_url: str, tmp_path: Path) -> None:
    assert run_cli("db", "upgrade", "--db", store_url, cwd=tmp_path).returncode == 0
    if store_url.startswith("postgresql"):
        rows(store_url, "UPDATE alembic_version SET version_num = '9999_future'")
    else:
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(store_url)) as db, db:
            db.execute("UPDATE alembic_version SET version_num = '9999_future'")
    result = run_cli("serve", "--db", store_url, "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 1
    assert "schema (revision 9999_future) is newer than this rrproxy understands" in (result.stderr)


async def test_a_database_url_is_printed_with_its_password_hidden(tmp_path: Path) -> None:
    async with postgres_database() as url:
        secret = url.replace("postgres@", "postgres:hunter2@", 1)  # trust auth ignores it
        upgraded = await asyncio.to_thread(run_cli, "db", "upgrade", "--db", secret, cwd=tmp_path)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "postgres:***@" in upgraded.stdout
        listed = await asyncio.to_thread(run_cli, "ls", "--db", secret, cwd=tmp_path)
        async with serving("--db", secret, "--verbose", cwd=tmp_path) as proc:
            pass
        for text in (upgraded.stdout, upgraded.stderr, listed.stdout, listed.stderr, proc.stderr()):
            assert "hunter2" not in text
        assert "postgres:***@" in proc.stderr()
