"""What the forward proxy refuses, tunnels blind or routes: allow-list, pass-through hosts,
loops, upstream certificates, remote listening, path-prefix routes, and shutdown with
tunnels open. Real servers on loopback; clients through the proxy variables or raw HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import ssl
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.config import load_settings
from proxy.serve.app import create_app
from tests.conftest import StartProxy, StartUpstream
from tests.integration.test_forward_proxy import echo_upstream, url_of
from tests.proc import free_port
from tests.tlsenv import base_env, client_env, curl, recorded_interactions, run, upstream_tls

RAW_TIMEOUT_S = 10.0


async def raw_exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one raw request to the proxy; return the status and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RAW_TIMEOUT_S)
        lengths = [
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        body = await asyncio.wait_for(reader.readexactly(sum(lengths)), RAW_TIMEOUT_S)
        return int(head.split()[1]), head + body
    finally:
        writer.close()
        await writer.wait_closed()


async def test_hosts_outside_the_allow_list_are_refused(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    calls: list[web.Request] = []
    upstream = await start_upstream(echo_upstream("up", calls))
    proxy = await start_proxy(
        "https://api.openai.com",
        ca_dir=str(tmp_path / "ca"),
        allow_hosts="*.allowed.test,127.0.0.1",
    )
    env = await client_env(proxy.port, tmp_path / "ca")

    refused = await curl(f"http://localhost:{upstream.port}/v1/x", env, tmp_path)
    assert refused.status == 403
    error = json.loads(refused.body)["error"]
    assert (
        error["type"] == "rrproxy_refused" and "localhost is not in allow_hosts" in error["message"]
    )

    tunnel = await run("curl", "-sS", "--max-time", "30", "https://localhost:1/v1/x", env=env)
    assert tunnel.returncode != 0 and "403" in tunnel.stderr
    assert calls == []

    allowed = await curl(f"http://127.0.0.1:{upstream.port}/v1/x", env, tmp_path)
    assert allowed.status == 200 and len(calls) == 1


async def test_pass_through_hosts_are_tunnelled_blind_and_not_recorded(
    start_proxy: StartProxy, aiohttp_server: Any, tmp_path: Path
) -> None:
    tls = upstream_tls(tmp_path)
    calls: list[web.Request] = []
    upstream = await aiohttp_server(echo_upstream("up", calls), host="127.0.0.1", ssl=tls.server)
    ca_dir = tmp_path / "ca"
    proxy = await start_proxy(
        "https://api.openai.com", ca_dir=str(ca_dir), passthrough_hosts="localhost"
    )
    # The client trusts the upstream's own CA, not rrproxy's: only a blind tunnel works.
    env = await client_env(proxy.port, ca_dir, CURL_CA_BUNDLE=str(tls.ca_file))

    answer = await curl(f"https://localhost:{upstream.port}/v1/x", env, tmp_path)

    assert answer.status == 200 and json.loads(answer.body)["path"] == "/v1/x"
    assert "rrproxy-source" not in answer.headers
    assert await recorded_interactions(url_of(proxy)) == 0
    assert len(calls) == 1


async def test_replay_mode_refuses_pass_through_hosts(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens there: replay must not even try
    proxy = await start_proxy(
        "https://api.openai.com", mode="replay", passthrough_hosts="localhost"
    )
    status, answer = await raw_exchange(
        proxy.port, f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()
    )
    assert status == 403 and b"replay mode never contacts the network" in answer


@pytest.mark.parametrize(
    "target",
    [
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n",
        "GET http://localhost:{port}/v1/x HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n",
        # every spelling of a local address reaches the proxy itself
        "GET http://0.0.0.0:{port}/v1/x HTTP/1.1\r\nHost: 0.0.0.0:{port}\r\n\r\n",
        "GET http://[::ffff:127.0.0.1]:{port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://0x7f000001:{port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://2130706433:{port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://127.1:{port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://0177.0.0.1:{port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET http://[::]:{port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT 0.0.0.0:{port} HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT 0x7f000001:{port} HTTP/1.1\r\nHost: x\r\n\r\n",
        "CONNECT [::ffff:127.0.0.1]:{port} HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["connect-ip", "connect-name", "absolute-form", "unspecified", "v4-mapped", "hex",
         "decimal", "short", "octal", "v6-unspecified", "connect-unspecified", "connect-hex",
         "connect-v4-mapped"],
)  # fmt: skip
async def test_requests_aimed_at_the_proxy_itself_are_refused(
    target: str, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy("https://api.openai.com")
    status, answer = await raw_exchange(proxy.port, target.format(port=proxy.port).encode())
    assert status == 403 and b"it would loop" in answer


@pytest.mark.parametrize("host", ["localhost", "0.0.0.0", "127.1", "[::ffff:127.0.0.1]"])
async def test_an_upstream_pointing_at_the_proxy_is_refused(
    host: str, serve_proxy: Any, db_path: Path
) -> None:
    port = free_port()  # not the configured port (8080): found out on the first request
    settings = load_settings(
        environ={}, flags={"upstream": f"http://{host}:{port}", "db": str(db_path)}
    )
    proxy = await serve_proxy(create_app(settings), port=port)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/v1/models")) as resp:
            assert resp.status == 403
            assert "it would loop" in (await resp.json())["error"]["message"]


async def test_an_upstream_with_a_wrong_certificate_answers_502_and_records_nothing(
    start_proxy: StartProxy, aiohttp_server: Any, tmp_path: Path
) -> None:
    trusted = upstream_tls(tmp_path, "trusted")
    impostor = upstream_tls(tmp_path, "impostor")  # signed by a CA rrproxy does not trust
    calls: list[web.Request] = []
    upstream = await aiohttp_server(
        echo_upstream("up", calls), host="127.0.0.1", ssl=impostor.server
    )
    origin = f"https://localhost:{upstream.port}"
    proxy = await start_proxy(
        origin, ca_dir=str(tmp_path / "ca"), upstream_ca_bundle=str(trusted.ca_file)
    )
    env = await client_env(proxy.port, tmp_path / "ca")

    through_connect = await curl(origin + "/v1/x", env, tmp_path)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/v1/x")) as resp:  # reverse-proxied
            reverse = (resp.status, await resp.json())

    for status, error in ((through_connect.status, json.loads(through_connect.body)), reverse):
        assert status == 502
        assert "TLS certificate verification failed" in error["error"]["message"]
    assert calls == []
    assert await recorded_interactions(url_of(proxy)) == 0


async def test_routes_send_path_prefixes_to_their_upstreams(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    default, openai, anthropic = [
        await start_upstream(echo_upstream(name, calls))
        for name in ("default", "openai", "anthropic")
    ]
    routes = {"/openai": url_of(openai), "/anthropic": url_of(anthropic) + "/"}
    proxy = await start_proxy(default, routes=routes)
    seen = {}
    async with aiohttp.ClientSession() as client:
        for path in (
            "/openai/v1/responses?x=1",
            "/anthropic/v1/messages",
            "/openai",
            "/openaix/v1",
        ):
            async with client.post(url_of(proxy) + path, data=b"{}") as resp:
                echoed = await resp.json()
                seen[path] = (echoed["upstream"], echoed["path"])
    assert seen == {
        "/openai/v1/responses?x=1": ("openai", "/v1/responses?x=1"),
        "/anthropic/v1/messages": ("anthropic", "/v1/messages"),
        "/openai": ("openai", "/"),
        "/openaix/v1": ("default", "/openaix/v1"),
    }


async def test_listening_beyond_loopback_needs_the_flag(tmp_path: Path) -> None:
    env = {**base_env(), "RRPROXY_DB": str(tmp_path / "rrproxy.db")}
    ran = await run(
        sys.executable, "-m", "proxy", "serve", "--host", "0.0.0.0", env=env, cwd=tmp_path
    )
    assert ran.returncode == 2 and "--allow-remote" in ran.stderr


async def test_a_remote_listener_forwards_only_with_an_allow_list(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    upstream = await start_upstream(echo_upstream("up", calls))
    # Listening on all addresses is the setting; the test server itself stays on loopback.
    proxy = await start_proxy(upstream, host="0.0.0.0", allow_remote=True)
    request = f"GET http://localhost:{upstream.port}/v1/x HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    status, answer = await raw_exchange(proxy.port, request)
    assert status == 403 and b"allow_hosts" in answer
    async with aiohttp.ClientSession() as client:  # reverse proxying goes on
        async with client.get(proxy.make_url("/v1/x")) as resp:
            assert resp.status == 200
    assert len(calls) == 1


async def test_blind_tunnels_copy_both_ways_and_shutdown_ends_every_tunnel(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    handlers_done: list[asyncio.Event] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        done = asyncio.Event()
        handlers_done.append(done)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            done.set()

    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    echo_port = echo_server.sockets[0].getsockname()[1]
    ca_dir = tmp_path / "ca"
    proxy = await start_proxy(
        "https://api.openai.com", ca_dir=str(ca_dir), passthrough_hosts="localhost"
    )
    try:
        blind = await _connect(proxy, f"localhost:{echo_port}")
        intercepted = await _connect(proxy, "api.example.test:443")
        context = ssl.create_default_context(cafile=str(ca_dir / "rrproxy-ca.pem"))
        await asyncio.wait_for(
            intercepted[1].start_tls(context, server_hostname="api.example.test"), RAW_TIMEOUT_S
        )

        payload = os.urandom(4 * 1024 * 1024)  # far more than any buffer on the way

        async def send() -> None:
            blind[1].write(payload)
            await blind[1].drain()

        _, echoed = await asyncio.wait_for(
            asyncio.gather(send(), blind[0].readexactly(len(payload))), 30
        )
        assert echoed == payload

        await asyncio.wait_for(proxy.close(), 20)  # does not wait out the shutdown timeout
        for reader, writer in (blind, intercepted):
            assert await asyncio.wait_for(reader.read(), RAW_TIMEOUT_S) == b""  # closed for us
            writer.close()
            await writer.wait_closed()
        for done in handlers_done:
            await asyncio.wait_for(done.wait(), RAW_TIMEOUT_S)
    finally:
        echo_server.close()
        await echo_server.wait_closed()


async def _connect(
    proxy: TestServer, authority: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RAW_TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return reader, writer


async def test_one_tunnel_carries_several_requests(
    start_proxy: StartProxy, aiohttp_server: Any, tmp_path: Path
) -> None:
    tls = upstream_tls(tmp_path)
    calls: list[web.Request] = []
    upstream = await aiohttp_server(echo_upstream("up", calls), host="127.0.0.1", ssl=tls.server)
    ca_dir = tmp_path / "ca"
    proxy = await start_proxy(
        "https://api.openai.com", ca_dir=str(ca_dir), upstream_ca_bundle=str(tls.ca_file)
    )
    env = await client_env(proxy.port, ca_dir)
    urls = [f"https://localhost:{upstream.port}/v1/{n}" for n in (1, 2, 3)]
    transfers = [arg for url in urls for arg in (url, "-o", "/dev/null")]
    ran = await run(
        "curl", "-sS", "--max-time", "30", "-w", "%{num_connects} ", *transfers, env=env
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["1", "0", "0"]  # one CONNECT, then the same tunnel
    assert [c.path for c in calls] == ["/v1/1", "/v1/2", "/v1/3"]


async def test_a_client_that_does_not_trust_the_ca_is_told_where_it_is(
    start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = upstream_tls(tmp_path, "other")
    ca_dir = tmp_path / "ca"
    proxy = await start_proxy("https://api.openai.com", ca_dir=str(ca_dir), mode="replay")
    env = await client_env(proxy.port, ca_dir, CURL_CA_BUNDLE=str(other.ca_file))
    with caplog.at_level(logging.WARNING, logger="proxy.forward_proxy.connect"):
        ran = await run("curl", "-sS", "--max-time", "30", "https://api.example.test/", env=env)
        assert ran.returncode == 60  # curl: peer certificate cannot be authenticated
        await _eventually_logged(caplog, str(ca_dir / "rrproxy-ca.pem"))
    async with aiohttp.ClientSession() as client:  # and the proxy carries on
        async with client.get(proxy.make_url("/_rrproxy/health")) as resp:
            assert resp.status == 200


async def _eventually_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    for _ in range(100):  # the proxy logs after curl has given up: a bounded wait
        if any(text in r.getMessage() for r in caplog.records):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} was never logged: {caplog.text}")


async def test_an_upstream_that_is_the_proxy_itself_is_refused_at_start(tmp_path: Path) -> None:
    port = str(free_port())
    env = {**base_env(), "RRPROXY_DB": str(tmp_path / "rrproxy.db")}
    ran = await run(
        sys.executable, "-m", "proxy", "serve", "--port", port,
        "--upstream", f"http://0.0.0.0:{port}", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 2
    assert f"upstream = 'http://0.0.0.0:{port}' is rrproxy's own address" in ran.stderr


async def test_two_proxies_pointed_at_each_other_stop_at_the_hop_check(
    serve_proxy: Any, db_path: Path
) -> None:
    port_a, port_b = free_port(), free_port()

    def proxy_to(port: int) -> web.Application:
        flags = {"upstream": f"http://127.0.0.1:{port}", "db": str(db_path), "mode": "record"}
        return create_app(load_settings(environ={}, flags=flags))

    a = await serve_proxy(proxy_to(port_b), port=port_a)
    await serve_proxy(proxy_to(port_a), port=port_b)
    async with aiohttp.ClientSession() as client:
        async with client.get(a.make_url("/v1/models")) as resp:
            assert resp.status == 508
            error = (await resp.json())["error"]
        async with client.get(a.make_url("/_rrproxy/cassettes")) as resp:  # flushes
            assert resp.status == 200
    assert error["type"] == "rrproxy_loop_detected"
    assert "come back to the rrproxy that forwarded it" in error["message"]
    # B recorded what A sent it (and its 508), without the hop header: it is never recorded
    with closing(sqlite3.connect(db_path)) as db:
        recorded = db.execute("SELECT status, request_headers FROM interactions").fetchall()
    assert recorded and all("rrproxy-hops" not in headers.lower() for _, headers in recorded)


async def test_a_chain_of_two_proxies_forwards_with_the_hop_header(
    start_upstream: StartUpstream, serve_proxy: Any, db_path: Path
) -> None:
    calls: list[web.Request] = []
    upstream = await start_upstream(echo_upstream("up", calls))
    port_b = free_port()
    settings = [
        load_settings(environ={}, flags={"upstream": url, "db": str(db_path)})
        for url in (f"http://127.0.0.1:{port_b}", url_of(upstream))
    ]
    a = await serve_proxy(create_app(settings[0]))
    await serve_proxy(create_app(settings[1]), port=port_b)
    async with aiohttp.ClientSession() as client:
        async with client.get(a.make_url("/v1/models")) as resp:
            assert resp.status == 200
    assert calls[0].headers["Rrproxy-Hops"] == f"{settings[0].hop_id}, {settings[1].hop_id}"
