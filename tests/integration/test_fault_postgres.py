"""A PostgreSQL store that goes away: a cluster of the test's own (`pg_cluster`, never the
machine's shared server) stopped under a recording proxy and started again.

Clients' streams go on while it is down; the writer retries with backoff and the events
reach the store once it is back. Past the memory budget the recording is dropped, said so
in the log and stored as incomplete, never as a half-written batch. And the team store's
load: 3 proxies x 50 concurrent streams recorded, replayed crosswise, nothing lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp
import pytest
from aiohttp import web

from proxy.serve.state import SERVICES
from tests.conftest import StartProxy, StartUpstream, stored
from tests.proc import eventually
from tests.stores import Cluster, rows


class Paused:
    """POST /v1/stream sends `before` events, waits for `go`, then sends `after` more."""

    def __init__(self, before: int, after: int, size: int = 32) -> None:
        self.before, self.after, self.size = before, after, size
        self.go = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/stream", self.stream)

    def event(self, i: int) -> bytes:
        return b"data: " + str(i).encode().rjust(self.size, b"x") + b"\n\n"

    def body(self) -> bytes:
        return b"".join(self.event(i) for i in range(self.before + self.after))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(self.before):
            await response.write(self.event(i))
        await self.go.wait()
        for i in range(self.before, self.before + self.after):
            await response.write(self.event(i))
            await asyncio.sleep(0)
        await response.write_eof()
        return response


async def test_a_server_restarted_mid_recording_loses_nothing(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    pg_cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream_app = Paused(before=5, after=200)
    upstream = await start_upstream(upstream_app.app)
    proxy = await start_proxy(upstream, mode="record", cassette="c", db=pg_cluster.url)
    caplog.set_level(logging.INFO, logger="proxy")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={}) as resp:
            first = b"".join([await resp.content.readuntil(b"\n\n") for _ in range(5)])
            await proxy.app[SERVICES].recorder.flush()  # the begin and 5 events are in
            await asyncio.to_thread(pg_cluster.stop)
            upstream_app.go.set()
            rest = await resp.read()  # the stream goes on while the store is down
        assert first + rest == upstream_app.body()
        await eventually(lambda: proxy.app[SERVICES].recorder.failing)
        await asyncio.to_thread(pg_cluster.start)
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as listed:
            assert listed.status == 200  # waits for the writer, which got through
    assert stored(pg_cluster.url) == [("complete", None, 205, upstream_app.body())]
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot write to the store" in m for m in messages)
    assert any("the store is writable again" in m for m in messages)


async def test_past_the_memory_budget_a_recording_is_dropped_and_stored_incomplete(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    pg_cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream_app = Paused(before=2, after=400, size=16 * 1024)  # 6.4 MB while it is down
    upstream = await start_upstream(upstream_app.app)
    proxy = await start_proxy(upstream, mode="record", cassette="c", db=pg_cluster.url)
    recorder = proxy.app[SERVICES].recorder
    recorder._max_pending = 2 * 2**20  # a small budget, so a few MB are past it
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), json={}) as resp:
            await resp.content.readuntil(b"\n\n")
            await recorder.flush()
            await asyncio.to_thread(pg_cluster.stop)
            upstream_app.go.set()
            rest = await resp.read()
        assert len(rest) == len(upstream_app.body()) - len(upstream_app.event(0))
        await asyncio.to_thread(pg_cluster.start)
        async with client.get(proxy.make_url("/_rrproxy/cassettes")):
            pass
    [(outcome, error, _, body)] = stored(pg_cluster.url)
    assert outcome == "incomplete" and "dropped" in (error or "")
    # whole events from the start (those written before the drop): never part of a batch
    kept, part = divmod(len(body), len(upstream_app.event(0)))
    assert part == 0 and body == b"".join(upstream_app.event(i) for i in range(kept))
    assert recorder.recordings_dropped == 1
    assert any("dropped the recording of POST" in r.getMessage() for r in caplog.records)


STREAMS = 50
EVENTS = 20


@pytest.mark.stores
async def test_three_proxies_record_fifty_streams_each_and_replay_them_crosswise(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    def event(n: int, i: int) -> bytes:
        return f'data: {{"stream": {n}, "i": {i}}}\n\n'.encode()

    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(EVENTS):
            await response.write(event(n, i))
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/s/{n}", stream)
    upstream = await start_upstream(app)
    recorders = [await start_proxy(upstream, mode="record", cassette="team") for _ in range(3)]
    replayers = [await start_proxy(upstream, mode="replay", cassette="team") for _ in range(3)]

    def want(n: int) -> bytes:
        return b"".join(event(n, i) for i in range(EVENTS))

    async def through(client: aiohttp.ClientSession, proxy: object, n: int) -> tuple[str, bytes]:
        async with client.post(proxy.make_url(f"/v1/s/{n}"), json={"n": n}) as resp:  # type: ignore[attr-defined]
            return resp.headers["Rrproxy-Source"], await resp.read()

    limits = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=limits) as client:
        recorded = await asyncio.gather(
            *(
                through(client, recorders[p], p * STREAMS + k)
                for p in range(3)
                for k in range(STREAMS)
            )
        )
        assert all(src == "recorded" for src, _ in recorded)
        for p in recorders:
            async with client.get(p.make_url("/_rrproxy/cassettes")):
                pass  # flushed
        # each stream through a replaying proxy other than the one that recorded it
        replayed = await asyncio.gather(
            *(
                through(client, replayers[(p + 1) % 3], p * STREAMS + k)
                for p in range(3)
                for k in range(STREAMS)
            )
        )
    for n, (src, got) in enumerate(replayed):
        assert src == "replayed" and got == want(n), n
    digest = hashlib.sha256(b"".join(want(n) for n in range(3 * STREAMS))).hexdigest()
    assert hashlib.sha256(b"".join(got for _, got in replayed)).hexdigest() == digest
    complete = [r for r in stored(store_url) if r[0] == "complete" and r[2] == EVENTS]
    assert len(complete) == 3 * STREAMS
    # 150 recordings from 3 proxies, committed in whatever order: places 1..150, no gap, no
    # duplicate, in the order the recordings began
    placed = rows(store_url, "SELECT ordinal, started_at FROM interactions ORDER BY ordinal")
    assert [o for o, _ in placed] == list(range(1, 3 * STREAMS + 1))
    assert [t for _, t in placed] == sorted(t for _, t in placed)
