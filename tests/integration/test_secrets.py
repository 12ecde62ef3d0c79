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
from tests.conftest import StartProxy, StartUpstream, sse_event, tcp_server
from tests.proc import eventually

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


# The providers' credential headers and query parameters, and names caught by the rule.
PROVIDER_HEADERS = [
    "x-goog-api-key",
    "X-Amz-Security-Token",
    "X-Auth-Token",
    "Private-Token",
    "Ocp-Apim-Subscription-Key",
    "xi-api-key",
    "X-Custom-Secret",
]
PROVIDER_PARAMS = [
    "key",
    "api-key",
    "subscription-key",
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "password",
    "auth",
    "session_token",
]
RATE_LIMITS = {"x-ratelimit-remaining-tokens": "39990", "anthropic-ratelimit-tokens-remaining": "7"}


def echoing_upstream(canary: str) -> tuple[web.Application, list[web.Request]]:
    """An SSE stream whose response carries rate-limit metadata and a credential header."""
    app = web.Application()
    seen: list[web.Request] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        await request.read()
        headers = {"Content-Type": "text/event-stream", **RATE_LIMITS}
        headers["X-Auth-Token"] = f"response header-{canary}"
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    return app, seen


async def test_provider_credentials_reach_neither_the_store_nor_the_cassette_dir(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    canary = secrets.token_hex(16)
    app, seen = echoing_upstream(canary)
    upstream = await start_upstream(app)
    cassettes = tmp_path / "cassettes"
    proxy = await start_proxy(upstream, mode="auto", cassette="team", cassette_dir=str(cassettes))
    file = cassettes / "team.cassette.jsonl"

    def url(secret: str) -> str:
        return "/v1/stream?model=m1&" + "&".join(f"{p}={p}-{secret}" for p in PROVIDER_PARAMS)

    def headers(secret: str) -> dict[str, str]:
        return {h: f"{h}-{secret}" for h in PROVIDER_HEADERS} | {"Cache-Control": "no-cache"}

    def leaked(data: bytes) -> list[str]:
        names = [*PROVIDER_HEADERS, *PROVIDER_PARAMS, "response header"]
        return [n for n in names if f"{n}-{canary}".encode() in data] + (
            ["the canary"] if canary.encode() in data else []
        )

    body = b'{"input": "hi", "stream": true}'
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url(url(canary)), data=body, headers=headers(canary)
        ) as r:
            assert r.headers["Rrproxy-Source"] == "recorded"
            assert await r.read() == b"".join(EVENTS)
        await eventually(lambda: file.exists())

        written = file.read_bytes()
        assert leaked(written) == []
        for name in [*PROVIDER_HEADERS, *PROVIDER_PARAMS, *RATE_LIMITS]:
            assert name.encode() in written  # the names are kept, only the values go
        stored = store_bytes(db_path)
        assert b"[REDACTED]" in stored and b"Cache-Control" in stored
        assert leaked(stored) == []

        # Other credentials: the same recording answers, rate-limit metadata as recorded.
        other = secrets.token_hex(16)
        replay = headers(other) | {"Rrproxy-Mode": "replay"}
        async with client.post(proxy.make_url(url(other)), data=body, headers=replay) as r:
            assert r.headers["Rrproxy-Source"] == "replayed"
            assert await r.read() == b"".join(EVENTS)
            assert {k: r.headers[k] for k in RATE_LIMITS} == RATE_LIMITS
            assert r.headers["X-Auth-Token"] == "[REDACTED]"
    await proxy.close()

    assert len(seen) == 1  # and it got the real values
    assert all(seen[0].headers[h] == f"{h}-{canary}" for h in PROVIDER_HEADERS)
    assert all(seen[0].query[p] == f"{p}-{canary}" for p in PROVIDER_PARAMS)


def key_echoing_upstream(key: str) -> web.Application:
    """An OpenAI Responses stream whose output text echoes `key` across three deltas."""

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse_event({"type": "response.created", "response": {"id": "r1"}}))
        for delta in ["Your key: sk", key[2:14], key[14:] + "."]:
            await response.write(sse_event({"type": "response.output_text.delta", "delta": delta}))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", stream)
    return app


async def test_a_key_echoed_across_deltas_keeps_the_cassette_file_from_being_written(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "sk-proj-" + secrets.token_hex(20)
    upstream = await start_upstream(key_echoing_upstream(key))
    cassettes = tmp_path / "cassettes"
    proxy = await start_proxy(upstream, mode="record", cassette="team", cassette_dir=str(cassettes))
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/responses"), json={"input": "echo"}) as r:
            assert key.encode() not in await r.read()  # split: no one piece holds it
        await eventually(lambda: "not written" in caplog.text)
    await proxy.close()
    assert not (cassettes / "team.cassette.jsonl").exists()
    assert "line 4: events 2-4: sk-proj-… (OpenAI-style API key)" in caplog.text
    assert key not in caplog.text


async def test_a_name_the_allow_list_spares_is_kept_and_exported(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    """The export scan follows the configured allow-list: what the recorder was told to
    keep does not stop the cassette file from being written."""
    app, _ = secret_sending_upstream("cookie-value")
    upstream = await start_upstream(app)
    cassettes = tmp_path / "cassettes"
    proxy = await start_proxy(
        upstream, cassette="team", cassette_dir=str(cassettes), **{"redact.allow": "x-trace-token"}
    )
    async with aiohttp.ClientSession() as client:
        headers = {"X-Trace-Token": "trace-1234", "X-Other-Token": "other-5678"}
        async with client.post(proxy.make_url("/v1/stream"), data=b"{}", headers=headers) as r:
            assert r.status == 200
            await r.read()
    file = cassettes / "team.cassette.jsonl"
    await eventually(lambda: file.exists())
    await proxy.close()
    written = file.read_bytes()
    assert b'["X-Trace-Token", "trace-1234"]' in written
    assert b"other-5678" not in written and b"cookie-value" not in written
