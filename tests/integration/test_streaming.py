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

from proxy.serve.recorder import Recorder
from proxy.serve.state import SERVICES
from tests.conftest import ProxyServer, StartProxy, StartUpstream
from tests.proc import eventually, serving


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


def _one_event() -> web.Application:
    async def stream(request: web.Request) -> web.Response:
        return web.Response(text="data: 1\n\n", content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    return app


async def _record_one(url: str, db: Path) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.post(url, json={"q": 1}) as resp:
            assert await resp.read() == b"data: 1\n\n"
    for _ in range(500):  # bounded: 10 s
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT count(*) FROM events").fetchone() == (1,):
                return
        await asyncio.sleep(0.02)
    raise AssertionError("the recording did not reach the store")


def _nice_of_threads(pid: int) -> dict[int, int]:
    """Each thread of a process and its nice value, as `ps -L -o tid,nice` shows them:
    field 19 of /proc/PID/task/TID/stat (proc(5)), counted after the command's parentheses."""
    nice = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        nice[int(task.name)] = int(stat.rsplit(")", 1)[1].split()[16])
    return nice


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread priorities are Linux's")
async def test_the_store_is_written_at_the_lowest_cpu_priority(
    start_upstream: StartUpstream, tmp_path: Path, db_path: Path
) -> None:
    """`rrproxy serve` writes the store from one thread at nice 19, as `ps -L` shows it: a
    batch never takes a core from a relay. Every other thread keeps the process's priority."""
    upstream = str((await start_upstream(_one_event())).make_url("")).rstrip("/")
    async with serving("--db", str(db_path), "--upstream", upstream, cwd=tmp_path) as proxy:
        await _record_one(proxy.url("/v1/stream"), db_path)
        pid = proxy.popen.pid
        nice = _nice_of_threads(pid)
    process_nice = nice.pop(pid)  # the main thread: the event loop, the relays
    if process_nice == 19:
        pytest.skip("the tests run at nice 19 already: nothing to tell apart")
    assert sorted(nice.values()).count(19) == 1, nice
    assert set(nice.values()) <= {19, process_nice}, nice


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
    proxy = await start_proxy(await start_upstream(_one_event()), mode="record")
    await _record_one(str(proxy.make_url("/v1/stream")), db_path)


def an_hour_between_batches(proxy: ProxyServer) -> Recorder:
    """The proxy's writer lets writes gather for an hour before a batch (its `linger_s`): a
    test using this passes only if the store is written at once when it must be."""
    recorder = proxy.app[SERVICES].recorder
    recorder.linger_s = 3600.0
    return recorder


def _events_in_now(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
    return int(n)


async def _events_in(db: Path) -> int:
    return _events_in_now(db)


@pytest.fixture
async def recording_three_events(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> ProxyServer:
    """The proxy, recording an upstream that answers three events (`?n=` names them), with
    an hour between batches."""

    async def stream(request: web.Request) -> web.Response:
        body = "".join(f"data: {request.query.get('n', '0')}.{i}\n\n" for i in range(3))
        return web.Response(text=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    proxy = await start_proxy(await start_upstream(app), mode="record")
    an_hour_between_batches(proxy)
    return proxy


async def test_listing_the_cassettes_writes_what_is_pending_without_waiting_for_a_batch(
    recording_three_events: ProxyServer, db_path: Path
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


async def test_a_replay_of_a_recording_just_made_does_not_wait_for_a_batch(
    recording_three_events: ProxyServer,
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


async def test_a_batch_worth_of_events_is_written_without_anyone_asking(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
) -> None:
    """A fast stream does not pile up in memory for the whole linger."""
    event = b"data: " + b"x" * 4000 + b"\n\n"
    count = 200
    proxy = await start_proxy(await start_upstream(_one_event_over(event, count)), mode="record")
    recorder = an_hour_between_batches(proxy)
    recorder.batch_bytes = 50 * len(event)
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            assert len(await resp.read()) == count * len(event)
    await eventually(lambda: _events_in_now(db_path) >= 50)


async def test_stopping_the_proxy_writes_what_is_pending_at_once(
    recording_three_events: ProxyServer, db_path: Path
) -> None:
    proxy = recording_three_events
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={"q": 1}) as resp:
            await resp.read()
    await asyncio.wait_for(proxy.close(), timeout=10)
    assert await _events_in(db_path) == 3
