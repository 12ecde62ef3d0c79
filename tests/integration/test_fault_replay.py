"""Nothing is left behind when a peer goes away or goes silent: clients hanging up during a
replay, an upstream silent before its headers (504) or in the middle of a stream. After
each, the event loop's tasks return to what they were before the traffic, no resource is
reported unclosed, and the proxy goes on serving.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.cassettes import file_format, transfer
from proxy.config import database_url
from proxy.core.records import Event, Outcome, Request, ResponseHead
from proxy.store import migrate
from proxy.store.engine import create_engine
from tests.conftest import StartProxy, StartUpstream, close_quietly, tcp_server
from tests.proc import eventually
from tests.stores import rows

MIB = 2**20
WAIT_S = 10.0
SSE_EVENTS = [f'id: {i}\nevent: delta\ndata: {{"i": {i}}}\n\n'.encode() for i in range(60)]
SSE_BODY = b"".join(SSE_EVENTS)
BLOB = bytes(range(256)) * (4 * MIB // 256)  # 4 MiB, far over the replay cache's "small"


async def settled(baseline: int) -> None:
    """Wait (bounded) until the loop runs no more tasks than `baseline`; fail naming the
    extra ones."""
    try:
        await eventually(lambda: len(asyncio.all_tasks()) <= baseline, within=WAIT_S)
    except AssertionError:
        left = "\n".join(repr(t) for t in asyncio.all_tasks())
        raise AssertionError(f"tasks still running (baseline {baseline}):\n{left}") from None


@contextmanager
def no_warnings() -> Iterator[None]:
    """Fail on any warning raised inside, ResourceWarnings from finalizers included (a
    collection at the end runs those of everything already unreachable)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [str(w.message) for w in caught] == []


def recorded_upstream() -> web.Application:
    """POST /v1/responses: a paced SSE stream (first byte late, then a gap between events).
    POST /v1/blob: 4 MiB of bytes. Each answer closes its connection, so no keep-alive
    connection (and server task) outlives a request."""

    async def sse(request: web.Request) -> web.StreamResponse:
        await request.read()
        await asyncio.sleep(0.3)  # time to first byte, replayed at pace "recorded"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        response.force_close()
        await response.prepare(request)
        for data in SSE_EVENTS:
            await response.write(data)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def blob(request: web.Request) -> web.Response:
        await request.read()
        response = web.Response(body=BLOB, content_type="application/octet-stream")
        response.force_close()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", sse)
    app.router.add_post("/v1/blob", blob)
    return app


async def replay(
    client: aiohttp.ClientSession, proxy_url: str, path: str, pace: str = "instant"
) -> bytes:
    headers = {"Rrproxy-Mode": "replay", "Rrproxy-Pace": pace}
    async with client.post(proxy_url + path, json={"q": path}, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Rrproxy-Source"] == "replayed"
        return await resp.read()


async def test_clients_hanging_up_mid_replay_leave_nothing_behind(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(recorded_upstream())
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("")).rstrip("/")
    baseline = len(asyncio.all_tasks())
    with no_warnings():
        async with aiohttp.ClientSession() as client:
            for path in ("/v1/responses", "/v1/blob"):
                async with client.post(url + path, json={"q": path}) as resp:
                    assert resp.headers["Rrproxy-Source"] == "recorded"
                    await resp.read()
        await settled(baseline)

        # Hang up after the first chunk: a paced stream (the handler is between events), a
        # large body (the handler is writing it) and, for the paced one, before the
        # headers came (the handler is waiting out the recorded time to first byte).
        for path, pace in [("/v1/responses", "recorded"), ("/v1/blob", "instant")] * 3:
            async with aiohttp.ClientSession() as client:
                resp = await client.post(
                    url + path,
                    json={"q": path},
                    headers={"Rrproxy-Mode": "replay", "Rrproxy-Pace": pace},
                )
                assert resp.headers["Rrproxy-Source"] == "replayed"
                assert await resp.content.readany()
                resp.close()
        for _ in range(3):
            async with aiohttp.ClientSession() as client:
                early = asyncio.create_task(replay(client, url, "/v1/responses", pace="recorded"))
                await asyncio.sleep(0.1)  # sent; the replay waits 0.3 s to answer
                early.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await early
        await settled(baseline)

        # and the proxy goes on serving: the next 100 replays are whole
        async with aiohttp.ClientSession() as client:
            for i in range(100):
                if i % 20 == 0:
                    assert await replay(client, url, "/v1/blob") == BLOB
                else:
                    assert await replay(client, url, "/v1/responses") == SSE_BODY
        await settled(baseline)


# -- an upstream that goes silent ------------------------------------------------------------


@dataclass
class SilentUpstream:
    """Reads a request, sends `first` (if any), then says nothing more until the other side
    closes the connection; `closed` counts the connections the proxy closed (FIN or RST)."""

    first: bytes
    closed: int = 0
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            if self.first:
                writer.write(self.first)
                await writer.drain()
            await asyncio.wait_for(reader.read(), WAIT_S)  # returns at the proxy's FIN
            self.closed += 1
        except ConnectionError:  # the proxy's RST
            self.closed += 1
        except (asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            await close_quietly(writer)


@asynccontextmanager
async def silent_upstream(first: bytes = b"") -> AsyncIterator[SilentUpstream]:
    upstream = SilentUpstream(first)
    async with tcp_server(upstream.serve) as upstream.url:
        yield upstream


def outcomes(store_url: str) -> list[tuple[str, int]]:
    found = rows(store_url, "SELECT outcome, event_count FROM interactions ORDER BY ordinal")
    return [(outcome, count) for outcome, count in found]


@pytest.mark.stores
async def test_upstream_silent_before_its_headers_504_leaves_nothing_behind(
    start_proxy: StartProxy, store_url: str
) -> None:
    async with silent_upstream() as upstream:
        proxy = await start_proxy(upstream.url, **{"timeouts.read": 0.3})
        baseline = len(asyncio.all_tasks())
        with no_warnings():
            async with aiohttp.ClientSession() as client:
                for _ in range(3):
                    async with client.post(proxy.make_url("/v1/responses"), json={}) as resp:
                        assert resp.status == 504
                        assert (await resp.json())["error"]["type"] == "rrproxy_upstream_timeout"
            await settled(baseline)
            # the proxy let go of each upstream connection
            await eventually(lambda: upstream.closed == 3, within=WAIT_S)
        await proxy.close()
    assert outcomes(store_url) == []


@pytest.mark.stores
async def test_upstream_silent_mid_stream_leaves_nothing_behind(
    start_proxy: StartProxy, store_url: str
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n"
    )
    async with silent_upstream(head) as upstream:
        proxy = await start_proxy(upstream.url, **{"timeouts.read": 0.3})
        baseline = len(asyncio.all_tasks())
        with no_warnings():
            async with aiohttp.ClientSession() as client:
                for _ in range(3):
                    async with client.post(proxy.make_url("/v1/responses"), json={}) as resp:
                        assert resp.status == 200
                        assert await resp.content.readuntil(b"\n\n") == b"data: 1\n\n"
                        with pytest.raises(aiohttp.ClientPayloadError):
                            await resp.content.read()
            await settled(baseline)
            await eventually(lambda: upstream.closed == 3, within=WAIT_S)
        await proxy.close()
    assert outcomes(store_url) == [("upstream_broken", 1)] * 3


LARGE = 5_000
"""Recordings in the large cassette (all of one route, alike but for a number)."""


def chat(n: int) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": f"question {n} " + "ab " * 60}]}


@pytest.fixture
async def large_store(db_path: Path, tmp_path: Path) -> Path:
    """The store with cassette `large`, imported from a file of LARGE recordings."""
    head = ResponseHead(200, (("Content-Type", "application/json"),))
    recs = (
        file_format.Recorded(
            request=Request("POST", LARGE_URL, (), json.dumps(chat(n)).encode()),
            response=head,
            outcome=Outcome.COMPLETE,
            error=None,
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
            ttfb_ms=1.0,
            duration_ms=1.0,
            events=(Event(1.0, json.dumps({"n": n}).encode()),),
        )
        for n in range(LARGE)
    )
    path = tmp_path / "large.cassette.jsonl"
    path.write_bytes(file_format.dump("large", recs))
    engine = create_engine(database_url(str(db_path)), writer=True)
    try:
        await migrate.upgrade(engine)
        await transfer.import_file(engine, path)
    finally:
        await engine.dispose()
    return db_path


LARGE_URL = "http://127.0.0.1:9/v1/chat/completions"  # never contacted: replay mode


async def test_a_miss_on_a_large_cassette_does_not_stall_concurrent_replays(
    large_store: Path, start_proxy: StartProxy
) -> None:
    """While a miss looks for the closest of 5,000 recordings (the event: its log line),
    replays of other requests are answered, before the miss is: the miss's work is off the
    event loop. The miss still names the closest recording and the one difference."""
    explaining = asyncio.Event()

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "the closest of" in record.getMessage():
                explaining.set()

    logger = logging.getLogger("proxy.serve.index")
    hook, level = Hook(), logger.level
    logger.addHandler(hook)
    logger.setLevel(logging.DEBUG)
    try:
        proxy = await start_proxy(LARGE_URL.removesuffix("/v1/chat/completions"), mode="replay")
        url = proxy.make_url("/v1/chat/completions")
        headers = {"Rrproxy-Cassette": "large"}
        async with aiohttp.ClientSession() as client, aiohttp.ClientSession() as other:

            async def hit(n: int) -> None:
                async with other.post(url, json=chat(n), headers=headers) as response:
                    assert response.headers["Rrproxy-Source"] == "replayed"
                    assert await response.json() == {"n": n}

            await hit(0)  # reads the cassette
            wanted = chat(4321)
            wanted["model"] = "changed"
            miss = asyncio.create_task(client.post(url, json=wanted, headers=headers))
            await explaining.wait()
            answered_meanwhile = 0
            for n in range(1, 200):  # bounded: until the miss is answered
                await hit(n)
                if miss.done():
                    break
                answered_meanwhile += 1
            async with await miss as response:
                assert response.status == 404
                message = (await response.json())["error"]["message"]
        assert answered_meanwhile >= 1
        assert message.endswith('differs: body field "model": "changed" != "m"')
        await proxy.close()
    finally:
        logger.removeHandler(hook)
        logger.setLevel(level)
