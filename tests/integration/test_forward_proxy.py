"""rrproxy as HTTP_PROXY / HTTPS_PROXY: real clients (the openai SDK, requests, curl) that
know the proxy only through the variables `rrproxy env` prints, a real TLS upstream on
loopback (certificates from trustme), and the proxy on a real port."""

from __future__ import annotations

import asyncio
import json
import ssl
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy, StartUpstream, example_events, sse_event
from tests.tlsenv import (
    Answer,
    base_env,
    client_env,
    curl,
    recorded_interactions,
    run,
    upstream_tls,
    with_requests,
)

OPENAI_SCRIPT = """
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-test-key", max_retries=0)
for event in client.responses.create(model="gpt-4o", input="Say hello", stream=True):
    print(event.to_json(indent=None))
"""


def responses_upstream(calls: list[web.Request]) -> web.Application:
    """Serves the real recorded OpenAI Responses stream."""

    async def responses(request: web.Request) -> web.StreamResponse:
        calls.append(request)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for payload in example_events():
            await response.write(sse_event(payload))
            await asyncio.sleep(0.002)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


def echo_upstream(name: str, calls: list[web.Request]) -> web.Application:
    """Answers what it was asked: method, path and query, Host, body; each call numbered."""

    async def echo(request: web.Request) -> web.Response:
        calls.append(request)
        body = await request.text()
        return web.json_response(
            {
                "upstream": name,
                "n": len(calls),
                "method": request.method,
                "path": request.path_qs,
                "host": request.host,
                "body": body,
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def _certificates_in(path: str) -> int:
    return Path(path).read_text().count("BEGIN CERTIFICATE")


def url_of(proxy: TestServer) -> str:
    return str(proxy.make_url("")).rstrip("/")


async def test_openai_sdk_through_https_proxy_records_then_replays_offline(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    aiohttp_server: Any,
    tmp_path: Path,
) -> None:
    tls = upstream_tls(tmp_path)
    ca_dir = tmp_path / "ca"
    calls: list[web.Request] = []
    upstream = await aiohttp_server(responses_upstream(calls), host="127.0.0.1", ssl=tls.server)
    base_url = f"https://localhost:{upstream.port}/v1"
    common = {"ca_dir": str(ca_dir), "upstream_ca_bundle": str(tls.ca_file)}

    proxy = await start_proxy("https://api.openai.com", mode="record", **common)
    env = await client_env(proxy.port, ca_dir)
    assert _certificates_in(env["SSL_CERT_FILE"]) > 1  # the system's CAs and rrproxy's
    recorded = await run(sys.executable, "-c", OPENAI_SCRIPT, base_url, env=env)
    assert recorded.returncode == 0, recorded.stderr
    assert await recorded_interactions(url_of(proxy)) == 1
    assert len(calls) == 1 and calls[0].headers["Authorization"] == "Bearer sk-test-key"
    ca_cert = (ca_dir / "rrproxy-ca.pem").read_bytes()
    await upstream.close()
    await proxy.close()

    proxy = await start_proxy("https://api.openai.com", mode="replay", **common)
    env = await client_env(proxy.port, ca_dir)
    replayed = await run(sys.executable, "-c", OPENAI_SCRIPT, base_url, env=env)
    assert replayed.returncode == 0, replayed.stderr

    assert replayed.stdout == recorded.stdout
    events = [json.loads(line) for line in recorded.stdout.splitlines()]
    assert events == example_events()  # what the SDK saw is what the upstream sent
    assert len(calls) == 1
    assert (ca_dir / "rrproxy-ca.pem").read_bytes() == ca_cert  # the CA was reused


@pytest.mark.parametrize("client", ["curl", "requests"])
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_clients_through_proxy_variables(
    client: str,
    scheme: str,
    start_proxy: StartProxy,
    aiohttp_server: Any,
    tmp_path: Path,
) -> None:
    tls = upstream_tls(tmp_path)
    calls: list[web.Request] = []
    server_tls = tls.server if scheme == "https" else None
    upstream = await aiohttp_server(echo_upstream("up", calls), host="127.0.0.1", ssl=server_tls)
    proxy = await start_proxy(
        "https://api.openai.com",
        ca_dir=str(tmp_path / "ca"),
        upstream_ca_bundle=str(tls.ca_file),
    )
    env = await client_env(proxy.port, tmp_path / "ca")
    url = f"{scheme}://localhost:{upstream.port}/v1/echo?b=2&a=1"

    answers: list[Answer] = []
    for _ in range(2):
        if client == "curl":
            answers.append(await curl(url, env, tmp_path, "-X", "POST", "-d", "hi"))
        else:
            answers.append(await with_requests(url, env, "POST", "hi"))
        await _reset(proxy)  # the second call replays the first (auto mode)

    first, second = answers
    assert first.status == 200 and first.headers["rrproxy-source"] == "recorded"
    assert second.headers["rrproxy-source"] == "replayed"
    assert second.body == first.body
    echoed = json.loads(first.body)
    assert echoed["path"] == "/v1/echo?b=2&a=1" and echoed["body"] == "hi"
    assert echoed["host"] == f"localhost:{upstream.port}"
    assert len(calls) == 1


async def test_absolute_form_requests_are_told_apart_by_host(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    calls_a: list[web.Request] = []
    calls_b: list[web.Request] = []
    a = await start_upstream(echo_upstream("a", calls_a))
    b = await start_upstream(echo_upstream("b", calls_b))
    proxy = await start_proxy("https://api.openai.com", ca_dir=str(tmp_path / "ca"))
    env = await client_env(proxy.port, tmp_path / "ca")
    url_a = f"http://localhost:{a.port}/v1/same"
    url_b = f"http://127.0.0.1:{b.port}/v1/same"
    recorded = [await with_requests(url_a, env), await with_requests(url_b, env)]
    await a.close()
    await b.close()
    await _reset(proxy)
    replayed = [await with_requests(url_b, env), await with_requests(url_a, env)]

    assert [json.loads(r.body)["upstream"] for r in recorded] == ["a", "b"]
    assert [r.headers["rrproxy-source"] for r in replayed] == ["replayed", "replayed"]
    assert [r.body for r in replayed] == [recorded[1].body, recorded[0].body]


async def test_the_ca_is_private_and_its_certificates_name_the_host(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    ca_dir = tmp_path / "state" / "ca"
    proxy = await start_proxy("https://api.openai.com", ca_dir=str(ca_dir), mode="replay")
    assert not ca_dir.exists()  # created on first use, not before

    cert = await _peer_certificate(proxy.port, "api.example.test", ca_dir)

    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "rrproxy-ca-key.pem").stat().st_mode) == 0o600
    assert ("DNS", "api.example.test") in cert["subjectAltName"]
    issuer = dict(pair[0] for pair in cert["issuer"])
    assert issuer["organizationName"] == "rrproxy"

    env = {**base_env(), "RRPROXY_CA_DIR": str(ca_dir)}
    ran = await run(sys.executable, "-m", "proxy", "ca", env=env)
    assert ran.returncode == 0 and ran.stdout.strip() == str(ca_dir / "rrproxy-ca.pem")


async def test_replay_answers_connect_without_dns_or_upstream(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    """`.invalid` never resolves (RFC 6761): a replay that looked it up would fail."""
    proxy = await start_proxy("https://api.openai.com", ca_dir=str(tmp_path / "ca"), mode="replay")
    env = await client_env(proxy.port, tmp_path / "ca")
    answer = await curl("https://api.rrproxy.invalid/v1/models", env, tmp_path)
    assert answer.status == 404 and answer.headers["rrproxy-miss"] == "1"
    error = json.loads(answer.body)["error"]
    assert error["type"] == "rrproxy_replay_miss"


async def _reset(proxy: TestServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.make_url("/_rrproxy/reset"), json={}) as resp:
            assert resp.status == 200


async def _peer_certificate(port: int, host: str, ca_dir: Path) -> dict[str, Any]:
    """CONNECT through the proxy by hand and return the certificate it presents for host."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200 ")
        context = ssl.create_default_context(cafile=str(ca_dir / "rrproxy-ca.pem"))
        await asyncio.wait_for(writer.start_tls(context, server_hostname=host), 10)
        cert = writer.get_extra_info("peercert")
        assert isinstance(cert, dict)
        return cert
    finally:
        writer.close()
        await writer.wait_closed()
