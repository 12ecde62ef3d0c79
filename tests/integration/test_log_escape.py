"""What a client sends cannot forge a log line: CR, LF, ANSI escapes, C1 controls, DEL and
the Unicode line separators in a path, a method, a control header or an error message are
written escaped. Requests over a raw socket, to a proxy whose upstream is down (an error
that is logged) or up (the line logged for every interaction)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream, close_quietly
from tests.integration.test_forward_proxy import echo_upstream
from tests.proc import free_port

RAW_TIMEOUT_S = 10.0
FORBIDDEN = ["\r", "\n", "\x1b", "\x85", "\x7f", "\u2028", "\u2029"]


async def exchange(port: int, request: bytes) -> bytes:
    """Send one raw request; the status line of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.readline(), RAW_TIMEOUT_S)
    finally:
        await close_quietly(writer)


def proxy_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("proxy.")]


async def test_a_path_with_encoded_controls_is_logged_escaped(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    down = free_port()  # nothing listens: the 502 is logged with the path
    proxy = await start_proxy(f"http://127.0.0.1:{down}")
    path = "/v1/a%0d%0a2026-01-01%20INFO%20forged%1b%5B31mred%c2%85x%e2%80%a8y%7f"
    request = f"GET http://127.0.0.1:{down}{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    assert b" 502 " in await exchange(proxy.port, request)
    logged = [line for line in proxy_lines(caplog) if "forged" in line]
    assert len(logged) == 1
    for char in FORBIDDEN:
        assert char not in logged[0], repr(char)
    assert r"/v1/a\r\n2026-01-01 INFO forged\x1b[31mred\x85x\u2028y\x7f" in logged[0]


async def test_a_control_header_with_controls_is_logged_escaped(
    start_upstream: StartUpstream, start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    calls: list[web.Request] = []
    proxy = await start_proxy(await start_upstream(echo_upstream("up", calls)))
    request = (
        b"GET /v1/x HTTP/1.1\r\nHost: x\r\n"
        b"Rrproxy-Cassette: run\xc2\x85FAKE\xe2\x80\xa8LINE\r\nConnection: close\r\n\r\n"
    )
    assert b" 200 " in await exchange(proxy.port, request)
    logged = [line for line in proxy_lines(caplog) if "FAKE" in line]
    assert len(logged) == 1 and len(calls) == 1
    for char in FORBIDDEN:
        assert char not in logged[0], repr(char)
    assert r"run\x85FAKE\u2028LINE" in logged[0]
