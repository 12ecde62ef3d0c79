"""Streaming is the product: the client gets each event while the upstream holds the rest."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.serve import recorder
from tests.conftest import StartProxy, StartUpstream


async def _first_event_then_rest(
    start_upstream: StartUpstream, release: asyncio.Event
) -> web.Application:
    app = web.Application()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: first\ndata: 1\n\n")
        # Held back until the test has the first event through the proxy.
        await asyncio.wait_for(release.wait(), timeout=10)
        for i in range(2, 5):
            await response.write(f"event: more\ndata: {i}\n\n".encode())
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    return app


async def test_first_event_arrives_while_upstream_holds_the_rest(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    release = asyncio.Event()
    upstream = await start_upstream(await _first_event_then_rest(start_upstream, release))
    proxy = await start_proxy(upstream, mode="record")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            assert resp.headers["Rrproxy-Source"] == "recorded"
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
            assert first == b"event: first\ndata: 1\n\n"
            release.set()
            rest = await resp.content.read()
    assert rest == b"".join(f"event: more\ndata: {i}\n\n".encode() for i in range(2, 5))

    await proxy.close()  # flushes the recorder
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT seq, data FROM events ORDER BY seq").fetchall()
        outcome = db.execute("SELECT outcome FROM interactions").fetchone()[0]
    assert [r[1] for r in rows] == [
        b"event: first\ndata: 1\n\n",
        *(f"event: more\ndata: {i}\n\n".encode() for i in range(2, 5)),
    ]
    assert outcome == "complete"


async def test_replay_streams_first_event_before_the_client_reads_the_rest(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """With recorded pace, the replayed first event arrives before later ones are due."""
    release = asyncio.Event()
    upstream = await start_upstream(await _first_event_then_rest(start_upstream, release))
    proxy = await start_proxy(upstream, mode="record")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            await resp.content.readuntil(b"\n\n")
            await asyncio.sleep(0.3)  # the recorded gap between the first event and the rest
            release.set()
            recorded = await resp.content.read()
        headers = {"Rrproxy-Mode": "replay", "Rrproxy-Pace": "recorded"}
        async with client.post(
            proxy.make_url("/v1/stream"), json={"q": 1}, headers=headers
        ) as resp:
            assert resp.headers["Rrproxy-Source"] == "replayed"
            first = await resp.content.readuntil(b"\n\n")
            # the rest is not there yet: it is due 0.3 s after the first event
            assert not resp.content.is_eof() and resp.content.total_bytes == len(first)
            rest = await resp.content.read()
    assert first == b"event: first\ndata: 1\n\n"
    assert rest == recorded


def _file_size(path: Path) -> int:
    return path.stat().st_size


def _one_event_over(event: bytes, count: int) -> web.Application:
    """An upstream streaming `event`, `count` times, as fast as it can."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for _ in range(count):
            await response.write(event)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    return app


async def test_a_long_recording_moves_from_the_wal_into_the_database_file_once_idle(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    """SQLite's own checkpoints are pushed out (they would copy and fsync inside a commit,
    mid-stream): the recorder checkpoints when it has nothing to write. 6 MB recorded
    must not stay in the WAL until SQLite's raised threshold."""
    event = b"data: " + b"x" * 2000 + b"\n\n"
    proxy = await start_proxy(await start_upstream(_one_event_over(event, 3000)), mode="record")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            assert len(await resp.read()) == 3000 * len(event)
        for _ in range(500):  # bounded: 10 s
            if _file_size(db_path) > 3000 * len(event):
                break
            await asyncio.sleep(0.02)
        assert _file_size(db_path) > 3000 * len(event), "the events are still in the WAL"
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT count(*), sum(length(data)) FROM events").fetchone() == (
                3000,
                3000 * len(event),
            )


async def _record_one(start_upstream: StartUpstream, start_proxy: StartProxy, db: Path) -> None:
    async def stream(request: web.Request) -> web.Response:
        return web.Response(text="data: 1\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    proxy = await start_proxy(await start_upstream(app), mode="record")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            assert await resp.read() == b"data: 1\n\n"
    for _ in range(500):  # bounded: 10 s
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT count(*) FROM events").fetchone() == (1,):
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the recording did not reach the store")


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
async def test_the_store_is_written_at_the_lowest_cpu_priority(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    """The writer thread gives way (nice 19): a batch never takes a core from a relay."""
    await _record_one(start_upstream, start_proxy, db_path)
    writers = [t for t in threading.enumerate() if t.name.startswith("rrproxy-writer")]
    assert writers, "no writer thread"
    for thread in writers:
        assert thread.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == 19


def _writer_threads() -> set[threading.Thread]:
    """The writer threads alive now (the objects: a new thread may reuse an old one's id)."""
    return {t for t in threading.enumerate() if t.name.startswith("rrproxy-writer")}


async def test_the_writer_is_warmed_up_before_the_first_request_and_leaves_no_trace(
    start_proxy: StartProxy, db_path: Path
) -> None:
    """The first batch does not pay for the writer's connection and statements in the
    middle of the first streams: they are made ready at start, in a rolled-back write."""
    before = _writer_threads()
    await start_proxy("http://127.0.0.1:9", mode="record")  # no request is made
    assert _writer_threads() - before, "no writer thread before the first request"
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM cassettes").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM interactions").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)


async def test_a_system_refusing_the_lower_priority_still_gets_its_recordings(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse, raising=False)
    await _record_one(start_upstream, start_proxy, db_path)


@pytest.fixture
def an_hour_between_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer lets writes gather for an hour before a batch: a test using this passes
    only if the store is written at once when it must be."""
    monkeypatch.setattr(recorder, "_LINGER_S", 3600.0)


async def _events_in(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(n)


@pytest.fixture
async def recording_three_events(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> TestServer:
    """The proxy, recording an upstream that answers three events (`?n=` names them)."""

    async def stream(request: web.Request) -> web.Response:
        body = "".join(f"data: {request.query.get('n', '0')}.{i}\n\n" for i in range(3))
        return web.Response(text=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    return await start_proxy(await start_upstream(app), mode="record")


@pytest.mark.usefixtures("an_hour_between_batches")
async def test_listing_the_cassettes_writes_what_is_pending_without_waiting_for_a_batch(
    recording_three_events: TestServer, db_path: Path
) -> None:
    proxy = recording_three_events
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            assert resp.status == 200
            await resp.read()
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:
            assert resp.status == 200, await resp.text()
            [listed] = (await resp.json())["cassettes"]
    assert (listed["interactions"], listed["events"]) == (1, 3)
    assert await _events_in(db_path) == 3


@pytest.mark.usefixtures("an_hour_between_batches")
async def test_a_replay_of_a_recording_just_made_does_not_wait_for_a_batch(
    recording_three_events: TestServer,
) -> None:
    proxy = recording_three_events
    url = proxy.make_url("/v1/stream?n=7")
    async with aiohttp.ClientSession() as client:
        async with client.post(url, json={"q": 1}) as resp:
            recorded = await resp.read()
        replay = {"Rrproxy-Mode": "replay"}
        async with client.post(url, json={"q": 1}, headers=replay) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Rrproxy-Source"] == "replayed"
            assert await resp.read() == recorded == b"data: 7.0\n\ndata: 7.1\n\ndata: 7.2\n\n"


@pytest.mark.usefixtures("an_hour_between_batches")
async def test_a_batch_worth_of_events_is_written_without_anyone_asking(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
) -> None:
    """A fast stream does not pile up in memory for the whole linger."""
    event = b"data: " + b"x" * 4000 + b"\n\n"
    count = 2 * recorder._BATCH_BYTES // len(event)
    proxy = await start_proxy(await start_upstream(_one_event_over(event, count)), mode="record")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            assert len(await resp.read()) == count * len(event)
        for _ in range(500):  # bounded: 10 s
            if await _events_in(db_path) >= recorder._BATCH_BYTES // len(event):
                break
            await asyncio.sleep(0.02)
    assert await _events_in(db_path) >= recorder._BATCH_BYTES // len(event)


@pytest.mark.usefixtures("an_hour_between_batches")
async def test_stopping_the_proxy_writes_what_is_pending_at_once(
    recording_three_events: TestServer, db_path: Path
) -> None:
    proxy = recording_three_events
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            await resp.read()
    await asyncio.wait_for(proxy.close(), timeout=10)
    assert await _events_in(db_path) == 3
