"""Many streams at once through one proxy into one SQLite file: every client gets every
byte, every event is stored in order, and the whole lot replays byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream
from tests.stores import rows

STREAMS = 150
EVENTS = 50


def event(stream: int, i: int) -> bytes:
    # Sizes vary by stream and event, so a mixed-up event would show.
    pad = "x" * ((stream * 7 + i * 13) % 300)
    return f'id: {i}\nevent: delta\ndata: {{"s": {stream}, "i": {i}, "p": "{pad}"}}\n\n'.encode()


def body_of(stream: int) -> bytes:
    return b"".join(event(stream, i) for i in range(EVENTS))


def many_streams_upstream(streams: int = STREAMS) -> web.Application:
    """Each stream sends its first event, then waits until every stream has started: all
    `streams` recordings are in flight at the same time."""
    app = web.Application()
    started: list[int] = []
    everyone = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        n = (await request.json())["stream"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(event(n, 0))
        started.append(n)
        if len(started) == streams:
            everyone.set()
        await asyncio.wait_for(everyone.wait(), timeout=60)
        for i in range(1, EVENTS):
            await response.write(event(n, i))
            if i % 5 == 0:
                await asyncio.sleep(0)  # let the other streams interleave
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    return app


async def fetch(
    client: aiohttp.ClientSession, url: str, n: int, headers: dict[str, str] | None = None
) -> tuple[str, bytes]:
    async with client.post(url, json={"stream": n}, headers=headers or {}) as resp:
        assert resp.status == 200
        return resp.headers["Rrproxy-Source"], await resp.read()


@pytest.mark.stores
async def test_150_concurrent_streams_recorded_then_replayed(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    store_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    upstream = await start_upstream(many_streams_upstream())
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/v1/stream"))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        recorded = await asyncio.wait_for(
            asyncio.gather(*(fetch(client, url, n) for n in range(STREAMS))), timeout=90
        )
        assert [source for source, _ in recorded] == ["recorded"] * STREAMS
        for n, (_, body) in enumerate(recorded):
            assert body == body_of(n), f"stream {n} reached its client changed"

        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:  # flushes
            (summary,) = (await resp.json())["cassettes"]
        assert summary["interactions"] == STREAMS
        assert summary["events"] == STREAMS * EVENTS
        assert summary["incomplete"] == 0
        async with client.get(proxy.make_url("/_rrproxy/health")) as resp:
            health = await resp.json()
        assert (health["store"], health["recordings_dropped"]) == ("ok", 0)

        interactions = rows(
            store_url, "SELECT id, request_body, outcome, event_count FROM interactions"
        )
        stored: dict[int, list[tuple[int, bytes]]] = {}
        for interaction_id, seq, data in rows(
            store_url, "SELECT interaction_id, seq, data FROM events ORDER BY interaction_id, seq"
        ):
            stored.setdefault(interaction_id, []).append((seq, bytes(data)))
        assert len(interactions) == STREAMS
        assert sum(len(v) for v in stored.values()) == STREAMS * EVENTS
        streams = set()
        for interaction_id, request_body, outcome, event_count in interactions:
            n = json.loads(request_body)["stream"]
            streams.add(n)
            assert (outcome, event_count) == ("complete", EVENTS)
            assert stored[interaction_id] == [(i, event(n, i)) for i in range(EVENTS)]
        assert streams == set(range(STREAMS))

        await upstream.close()
        replay = {"Rrproxy-Mode": "replay"}
        replayed = await asyncio.wait_for(
            asyncio.gather(*(fetch(client, url, n, replay) for n in range(STREAMS))), timeout=90
        )
    assert [source for source, _ in replayed] == ["replayed"] * STREAMS
    for n, (_, body) in enumerate(replayed):
        assert body == body_of(n), f"stream {n} replayed changed"

    problems = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING or "locked" in r.getMessage().lower()
    ]
    assert problems == []
    interaction_lines = [r for r in caplog.records if r.name == "proxy.serve.pipeline"]
    assert len(interaction_lines) == 2 * STREAMS


async def test_replay_right_after_recording_while_the_store_lags(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client has the whole response before the writer commits it (relaying never waits
    on the store); a replay asked for at that moment waits for the commit instead of
    missing."""
    caplog.set_level(logging.INFO)
    upstream = await start_upstream(many_streams_upstream(streams=1))
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/v1/stream"))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/health")) as resp:
            assert resp.status == 200
        lock = sqlite3.connect(db_path, timeout=5, isolation_level=None)
        try:
            lock.execute("BEGIN IMMEDIATE")  # another writer holds the store for a while
            assert await fetch(client, url, 0) == ("recorded", body_of(0))
            replay = asyncio.create_task(fetch(client, url, 0, {"Rrproxy-Mode": "replay"}))
            done, _ = await asyncio.wait({replay}, timeout=1.0)
            if done:  # answered without the recording: show what it was
                await replay
            assert not done, "the replay did not wait for the recording being committed"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert await asyncio.wait_for(replay, timeout=30) == ("replayed", body_of(0))
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
