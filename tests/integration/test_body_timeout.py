"""A client that sends its headers and then trickles its body does not hold a connection
for good: after `timeouts.request_body` it gets 408 with a JSON error saying what to do,
and the connection is closed. Raw sockets, a real upstream that counts what reaches it."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.conftest import StartProxy, StartUpstream, close_quietly
from tests.integration.test_forward_proxy import echo_upstream

RAW_TIMEOUT_S = 10.0


async def trickle(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send `head` and one byte of a longer body, then nothing: the answer's head and body,
    read until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"{")
        answer = await asyncio.wait_for(reader.read(), RAW_TIMEOUT_S)  # to EOF: closed
    finally:
        await close_quietly(writer)
    status_and_headers, _, body = answer.partition(b"\r\n\r\n")
    return status_and_headers, body


async def test_a_trickled_body_is_answered_408_and_the_connection_closed(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    upstream = await start_upstream(echo_upstream("up", calls))
    proxy = await start_proxy(upstream, **{"timeouts.request_body": "0.2"})
    for path in ("/v1/responses", "/_rrproxy/cassette"):
        method = "PUT" if path.startswith("/_rrproxy") else "POST"
        head, body = await trickle(
            proxy.port,
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode(),
        )
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"connection: close" in head.lower()
        error = json.loads(body)["error"]
        assert error["type"] == "rrproxy_request_timeout"
        assert "timeouts.request_body" in error["message"]
    assert calls == []  # nothing half-received is forwarded


async def test_a_body_sent_in_time_goes_through(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    upstream = await start_upstream(echo_upstream("up", calls))
    proxy = await start_proxy(upstream, **{"timeouts.request_body": "30"})
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(
            b"POST /v1/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{"
        )
        await writer.drain()
        writer.write(b"}")
        answer = await asyncio.wait_for(reader.read(), RAW_TIMEOUT_S)
    finally:
        await close_quietly(writer)
    assert answer.startswith(b"HTTP/1.1 200 ") and len(calls) == 1
