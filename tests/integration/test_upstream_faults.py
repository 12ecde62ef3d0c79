"""Upstream down, slow or broken; the client hanging up: what the user sees and the store keeps."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream, stored

pytestmark = pytest.mark.stores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_refusing_answers_502_naming_it(start_proxy: StartProxy) -> None:
    port = free_port()
    proxy = await start_proxy(f"http://127.0.0.1:{port}")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/responses"), json={}) as resp:
            assert resp.status == 502
            error = (await resp.json())["error"]
    assert error["type"] == "rrproxy_upstream_error"
    assert f"cannot connect to upstream http://127.0.0.1:{port}" in error["message"]


async def test_upstream_silent_before_headers_answers_504(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await asyncio.wait_for(never.wait(), timeout=10)
        return web.Response()

    app = web.Application()
    app.router.add_get("/slow", hang)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, **{"timeouts.read": 0.3})
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/slow")) as resp:
            assert resp.status == 504
            error = (await resp.json())["error"]
    never.set()
    assert error["type"] == "rrproxy_upstream_timeout"
    assert "did not answer in time" in error["message"]
    await proxy.close()
    assert stored(store_url) == []  # nothing to replay: nothing recorded


async def test_upstream_silent_mid_stream_breaks_the_client_and_is_recorded_as_broken(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    never = asyncio.Event()

    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await asyncio.wait_for(never.wait(), timeout=10)
        return response

    app = web.Application()
    app.router.add_get("/stall", stall)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, **{"timeouts.read": 0.3})
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/stall")) as resp:
            assert await resp.content.readuntil(b"\n\n") == b"data: 1\n\n"
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.content.read()
    never.set()
    await proxy.close()
    [(outcome, error, events, body)] = stored(store_url)
    assert (outcome, events, body) == ("upstream_broken", 1, b"data: 1\n\n")
    assert error is not None and "Timeout" in error


async def test_upstream_reset_mid_stream_is_relayed_recorded_and_replayed_as_a_break(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        await response.write(b"data: 2\n\n")
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # RST, no terminating chunk
        return response

    app = web.Application()
    app.router.add_get("/reset", reset)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)

    async def fetch(headers: dict[str, str]) -> tuple[bytes, str]:
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.make_url("/reset"), headers=headers) as resp:
                got = b""
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for chunk in resp.content.iter_any():
                        got += chunk
                return got, resp.headers["Rrproxy-Source"]

    assert await fetch({}) == (b"data: 1\n\ndata: 2\n\n", "recorded")
    assert await fetch({"Rrproxy-Mode": "replay"}) == (b"data: 1\n\ndata: 2\n\n", "replayed")
    await proxy.close()
    [(outcome, error, events, body)] = stored(store_url)
    assert (outcome, events, body) == ("upstream_broken", 2, b"data: 1\n\ndata: 2\n\n")
    assert error is not None and "upstream broke the stream" in error


async def test_client_hanging_up_still_records_the_whole_stream(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    client_gone = asyncio.Event()
    upstream_done = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 0\n\n")
        await asyncio.wait_for(client_gone.wait(), timeout=10)
        for i in range(1, 20):
            await response.write(f"data: {i}\n\n".encode())
            await asyncio.sleep(0.005)
        await response.write_eof()
        upstream_done.set()
        return response

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)
    async with aiohttp.ClientSession() as client:
        resp = await client.post(proxy.make_url("/v1/stream"), json={"q": 1})
        assert await resp.content.readuntil(b"\n\n") == b"data: 0\n\n"
        resp.close()  # hang up mid-stream
    client_gone.set()
    await asyncio.wait_for(upstream_done.wait(), timeout=10)
    full = b"".join(f"data: {i}\n\n".encode() for i in range(20))
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:
            assert (await resp.json())["cassettes"][0]["events"] == 20  # the listing flushes
        # replays of it, including clients that hang up, leave nothing behind
        for _ in range(3):
            resp = await client.post(
                proxy.make_url("/v1/stream"), json={"q": 1}, headers={"Rrproxy-Mode": "replay"}
            )
            resp.close()
        async with client.post(
            proxy.make_url("/v1/stream"), json={"q": 1}, headers={"Rrproxy-Mode": "replay"}
        ) as resp:
            assert await resp.read() == full
    await proxy.close()
    [(outcome, _, events, body)] = stored(store_url)
    assert (outcome, events, body) == ("client_gone", 20, full)
