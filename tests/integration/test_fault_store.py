"""The store failing under a live stream: locked by another process past the busy timeout,
or full. The client's stream goes on untouched, the failure is logged, and the store ends up
holding either the whole recording (written once the store is back) or an interaction
marked incomplete with the reason: never a silent loss, never a recording served as whole
when it is not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from proxy.store.engine import BUSY_TIMEOUT_S
from tests.conftest import StartProxy, StartUpstream, example_events, sse_event, stored
from tests.proc import eventually

CANNOT_WRITE = "cannot write to the store"
WRITABLE_AGAIN = "the store is writable again"

# Holds SQLite's write lock on a file until a line arrives on stdin (or 60 s pass: an
# abandoned locker never outlives the test run).
LOCKER = """
import signal, sqlite3, sys
signal.alarm(60)
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
db.close()
"""


@asynccontextmanager
async def locked(db_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process holds the store's write lock until the block ends (or it is
    released early with `release`)."""
    locker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LOCKER,
        str(db_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert locker.stdout is not None
    try:
        assert await asyncio.wait_for(locker.stdout.readline(), 10) == b"locked\n"
        yield locker
    finally:
        if locker.returncode is None:
            await release(locker)


async def release(locker: asyncio.subprocess.Process) -> None:
    assert locker.stdin is not None
    locker.stdin.write(b"\n")
    locker.stdin.close()
    assert await asyncio.wait_for(locker.wait(), 10) == 0


@pytest.fixture
def disk() -> Iterator[list[int]]:
    """A full disk, for real as far as SQLite is concerned. While `disk[0]` is 1, every
    transaction on this process's engines first sets `PRAGMA max_page_count` (a
    per-connection setting) to it, pinning the store at its current size (SQLite never
    lowers the limit below it): inserts that need a new page fail with SQLITE_FULL,
    "database or disk is full". Set `disk[0]` to a large value to give the space back
    (applied by each connection at its next transaction)."""
    limit = [2**30]

    def pin(conn: Connection) -> None:
        conn.exec_driver_sql(f"PRAGMA max_page_count = {limit[0]}")

    event.listen(Engine, "begin", pin)
    try:
        yield limit
    finally:
        event.remove(Engine, "begin", pin)


def finished(db_path: Path, n: int) -> list[tuple[str, str | None, int, bytes]] | None:
    """The stored interactions once `n` of them have ended, else None."""
    rows = stored(db_path)
    if len(rows) == n and all(outcome != "recording" for outcome, *_ in rows):
        return rows
    return None


def logged(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def streaming_upstream(events: list[bytes], big: list[bytes] | None = None) -> web.Application:
    """POST /v1/responses streams `events` (or `big`, when the request asks for it),
    yielding to the loop between them."""

    async def stream(request: web.Request) -> web.StreamResponse:
        chosen = big if (await request.json()).get("big") and big else events
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for data in chosen:
            await response.write(data)
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", stream)
    return app


async def fetch(
    proxy: TestServer, body: dict[str, Any], mode: str | None = None
) -> tuple[int, bytes]:
    headers = {"Rrproxy-Mode": mode} if mode else {}
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/responses"), json=body, headers=headers) as r:
            return r.status, await r.read()


async def test_store_locked_past_the_busy_timeout_streams_go_on_and_recording_resumes(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    events = [sse_event(e) for e in example_events()]
    body = b"".join(events)
    # just under 4 MiB: as much as the recorder queues for one recording before it holds
    # its relay (a stream that outruns a locked store is slowed: test_store_backpressure)
    big = [b"data: %04d%b\n\n" % (i, b"z" * 4080) for i in range(1024)]
    big_body = b"".join(big)
    upstream = await start_upstream(streaming_upstream(events, big))
    proxy = await start_proxy(upstream, mode="record")
    async with locked(db_path) as locker:
        # The writer waits BUSY_TIMEOUT_S on the lock before it fails: a stream does not
        # wait for it (it is over before the failure is even known)...
        assert await fetch(proxy, {"n": 1}) == (200, body)
        assert not logged(caplog, CANNOT_WRITE)
        # ... nor does a larger one that stays within what the recorder queues for one
        # recording: every byte arrives while the lock is still held ...
        assert await fetch(proxy, {"n": 2, "big": True}) == (200, big_body)
        assert locker.returncode is None
        await eventually(lambda: logged(caplog, CANNOT_WRITE) or None, within=BUSY_TIMEOUT_S + 10)
        [failure] = logged(caplog, CANNOT_WRITE)
        assert failure.levelno == logging.ERROR
        assert "database is locked" in failure.getMessage()
        # ... and a stream that starts once the store is known to be failing is not held
        assert await fetch(proxy, {"n": 3}) == (200, body)
        assert locker.returncode is None
        assert stored(db_path) == []  # nothing could be written yet
        await release(locker)
    rows = await eventually(lambda: finished(db_path, 3), within=BUSY_TIMEOUT_S + 10)
    assert rows == [
        ("complete", None, len(events), body),
        ("complete", None, len(big), big_body),
        ("complete", None, len(events), body),
    ]
    await eventually(lambda: logged(caplog, WRITABLE_AGAIN) or None, within=10)
    assert len(logged(caplog, CANNOT_WRITE)) == 1  # one failure, one line: no log flood
    # and all replay, byte for byte
    assert await fetch(proxy, {"n": 1}, mode="replay") == (200, body)
    assert await fetch(proxy, {"n": 2, "big": True}, mode="replay") == (200, big_body)
    assert await fetch(proxy, {"n": 3}, mode="replay") == (200, body)


async def test_store_full_streams_go_on_and_events_are_written_once_space_is_back(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    disk: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 1 MiB of events: far more than the free space in the store's existing pages
    events = [f"id: {i}\ndata: {i:04d}{'x' * 8000}\n\n".encode() for i in range(128)]
    body = b"".join(events)
    upstream = await start_upstream(streaming_upstream(events))
    proxy = await start_proxy(upstream, mode="record")
    disk[0] = 1  # full
    assert await fetch(proxy, {"n": 1}) == (200, body)
    await eventually(lambda: logged(caplog, CANNOT_WRITE) or None, within=10)
    [failure] = logged(caplog, CANNOT_WRITE)
    assert failure.levelno == logging.ERROR
    assert "database or disk is full" in failure.getMessage()
    assert "INSERT" not in failure.getMessage()  # one clear line, not the statement
    assert stored(db_path) == []
    # a stream that starts while the store is failing is told so in its head
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/responses"), json={"n": 2}) as r:
            assert r.headers["Rrproxy-Store"] == "failing"
            assert await r.read() == body
    disk[0] = 2**30  # space is back
    rows = await eventually(lambda: finished(db_path, 2), within=10)
    assert rows == [("complete", None, len(events), body)] * 2
    await eventually(lambda: logged(caplog, WRITABLE_AGAIN) or None, within=10)
    assert await fetch(proxy, {"n": 1}, mode="replay") == (200, body)


async def test_store_full_for_longer_than_memory_allows_marks_the_recording_incomplete(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    disk: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the recorder's memory bound (64 MiB waiting for a store that refuses writes) the
    queued events of the largest recording are dropped, with a log line naming it: the
    interaction is stored incomplete, saying why, and is never replayed as if whole, not
    even by a replay that asked for it before the store could say so."""
    chunk = b"x" * (256 * 1024 - 16)
    events = [b"data: %06d%b\n\n" % (i, chunk) for i in range(320)]  # 80 MiB
    body = b"".join(events)
    # a request body large enough that even the interaction's row needs new pages
    question = {"n": 1, "prompt": "y" * 65536}
    upstream = await start_upstream(streaming_upstream(events))
    proxy = await start_proxy(upstream, mode="auto")
    disk[0] = 1  # full
    assert await fetch(proxy, question) == (200, body)
    [dropped] = logged(caplog, "dropped the recording")
    assert "'default'" in dropped.getMessage() and "/v1/responses" in dropped.getMessage()
    # The stream ended, so the recording is in the index as complete; nothing of it can be
    # in the store yet. A replay asked for now waits for the store to take it...
    early_replay = asyncio.create_task(fetch(proxy, question, mode="replay"))
    await asyncio.sleep(0.2)  # (lets the request reach the proxy; the outcome is the same)
    assert stored(db_path) == []
    assert not early_replay.done()
    disk[0] = 2**30  # space is back
    [(outcome, error, count, stored_body)] = await eventually(
        lambda: finished(db_path, 1), within=10
    )
    assert (outcome, count) == ("incomplete", len(events))
    assert error is not None and "dropped while the store could not be written" in error
    assert len(stored_body) < len(body)
    # ... and is then told the recording is incomplete, not served part of it as whole
    status, answer = await asyncio.wait_for(early_replay, 10)
    assert status == 404
    assert "is incomplete" in json.loads(answer)["error"]["message"]
    # a later replay misses too, and auto mode records it again
    status, _ = await fetch(proxy, question, mode="replay")
    assert status == 404
    assert await fetch(proxy, question) == (200, body)
    rows = await eventually(lambda: finished(db_path, 2), within=10)
    assert rows[1] == ("complete", None, len(events), body)
    assert await fetch(proxy, question, mode="replay") == (200, body)
