"""Secrets never reach the store: not one byte of the database files holds them, while the
upstream still receives them and a cassette recorded with one key replays for another."""

from __future__ import annotations

import asyncio
import logging
import secrets
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.core.redact import DEFAULT_HEADERS
from tests.conftest import StartProxy, StartUpstream, tcp_server

EVENTS = [b"event: delta\ndata: hello\n\n", b"event: delta\ndata: world\n\n", b"data: [DONE]\n\n"]


def store_bytes(db_path: Path) -> bytes:
    """Every byte of the SQLite files: the database, its write-ahead log and shared memory."""
    files = [db_path, *(db_path.with_name(db_path.name + s) for s in ("-wal", "-shm"))]
    return b"".join(p.read_bytes() for p in files if p.exists())


def secret_sending_upstream(canary: str) -> tuple[web.Application, list[web.Request]]:
    """An SSE stream whose response sets a cookie holding the canary."""
    app = web.Application()
    seen: list[web.Request] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Set-Cookie": f"session={canary}"}
        )
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    return app, seen


def secret_headers(canary: str, custom: bool) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer sk-{canary}",
        "X-Api-Key": canary,
        "Api-Key": canary,
        "Cookie": f"session={canary}; theme=dark",
        "Proxy-Authorization": f"Basic {canary}",
    }
    return headers | ({"X-Custom-Token": canary} if custom else {})


@pytest.mark.parametrize("custom", [False, True], ids=["defaults", "custom-header"])
async def test_no_byte_of_the_store_holds_a_secret(
    custom: bool,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy")
    canary = secrets.token_hex(16)
    trace = secrets.token_hex(16)  # not a secret: stored as sent, so the byte scan can see
    app, seen = secret_sending_upstream(canary)
    upstream = await start_upstream(app)
    settings = {"redact.headers": ",".join([*sorted(DEFAULT_HEADERS), "X-Custom-Token"])}
    proxy = await start_proxy(upstream, mode="record", **(settings if custom else {}))
    path = f"/v1/stream?key={canary}&api_key={canary}&model=m1"
    body = b'{"input": "hi", "stream": true}'
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.post(
            proxy.make_url(path),
            data=body,
            headers=secret_headers(canary, custom) | {"X-Trace": trace},
        ) as resp:
            assert resp.headers["Rrproxy-Source"] == "recorded"
            assert resp.headers["Set-Cookie"] == f"session={canary}"  # the client gets it
            assert await resp.read() == b"".join(EVENTS)
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:  # flushes
            assert (await resp.json())["cassettes"][0]["interactions"] == 1

        # While the proxy runs, the recording sits in the write-ahead log.
        stored = store_bytes(db_path)
        assert b"[REDACTED]" in stored and trace.encode() in stored
        assert canary.encode() not in stored

        # Another key, another cookie: the same recording answers.
        other = secrets.token_hex(16)
        async with client.post(
            proxy.make_url(f"/v1/stream?key={other}&api_key={other}&model=m1"),
            data=body,
            headers=secret_headers(other, custom) | {"Rrproxy-Mode": "replay"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Rrproxy-Source"] == "replayed"
            assert await resp.read() == b"".join(EVENTS)
            assert canary not in str(resp.headers)
    await proxy.close()

    # The upstream got the real secrets (a hop-by-hop Proxy-Authorization is the proxy's own).
    assert len(seen) == 1
    got = seen[0]
    assert got.headers["Authorization"] == f"Bearer sk-{canary}"
    assert got.headers["X-Api-Key"] == canary and got.headers["Api-Key"] == canary
    assert got.headers["Cookie"] == f"session={canary}; theme=dark"
    if custom:
        assert got.headers["X-Custom-Token"] == canary
    assert "Proxy-Authorization" not in got.headers
    assert got.query["key"] == canary and got.query["api_key"] == canary

    stored = store_bytes(db_path)
    assert trace.encode() in stored
    assert canary.encode() not in stored
    # rrproxy's own log lines do not show them either
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("proxy")]
    assert ours and not [m for m in ours if canary in m]


async def test_a_malformed_upstream_answer_does_not_leak_the_query_key(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's error for a bad response head quotes the request URL; the 502 body and the
    log say what went wrong without it."""

    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nBad Header Without Colon\r\n\r\n")
        await writer.drain()
        writer.close()

    canary = "sk-canary-" + secrets.token_hex(8)
    async with tcp_server(malformed) as url:
        proxy = await start_proxy(url)
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.make_url(f"/v1/x?key={canary}"), data=b"{}") as resp:
                assert resp.status == 502
                body = await resp.text()
    assert "rrproxy_upstream_error" in body
    assert canary not in body
    assert canary not in caplog.text
