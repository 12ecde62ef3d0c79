"""The admin API under /_rrproxy/ answers only requests addressed to the proxy itself: a
forged Host (DNS rebinding) or a cross-origin state change (a web page's form or fetch) is
refused, and nothing under /_rrproxy/ ever reaches the upstream. Real HTTP requests from
aiohttp's client and curl, Host and Origin forged as a browser would send them."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy, StartUpstream
from tests.integration.test_forward_proxy import echo_upstream
from tests.tlsenv import base_env, run

JSON = {"Content-Type": "application/json"}


async def ask(
    proxy: TestServer, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as client:
        async with client.request(
            method, proxy.make_url(path), headers=headers or {}, **kw
        ) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else {}, dict(resp.headers)


async def active_cassette(proxy: TestServer) -> str:
    status, body, _ = await ask(proxy, "GET", "/_rrproxy/health")
    assert status == 200
    return str(body["cassette"])


@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "evil.example", "127.0.0.1.nip.io:{port}", "0.0.0.0:{port}",
             "127.0.0.1:1", "localhost"],
)  # fmt: skip
async def test_a_foreign_host_is_refused(
    host: str, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    proxy = await start_proxy(await start_upstream(echo_upstream("up", calls)))
    forged = {"Host": host.format(port=proxy.port)}
    for method, path, extra in [
        ("GET", "/_rrproxy/cassettes", {}),
        ("GET", "/_rrproxy/health", {}),
        ("POST", "/_rrproxy/reset", {"json": {}}),
        ("PUT", "/_rrproxy/cassette", {"json": {"name": "hijacked"}}),
    ]:
        status, body, _ = await ask(proxy, method, path, forged, **extra)
        assert status == 403, (method, path)
        message = body["error"]["message"]
        assert body["error"]["type"] == "rrproxy_refused"
        assert repr(forged["Host"]) in message and "admin_hosts" in message
    assert await active_cassette(proxy) == "default" and calls == []


@pytest.mark.parametrize(
    "host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost.:{port}", "127.1:{port}",
             "0x7f000001:{port}", "[::ffff:127.0.0.1]:{port}"],
)  # fmt: skip
async def test_the_proxy_s_own_address_in_any_spelling_is_answered(
    host: str, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy("http://127.0.0.1:9")
    own = {"Host": host.format(port=proxy.port)}
    assert (await ask(proxy, "GET", "/_rrproxy/health", own))[0] == 200
    assert (await ask(proxy, "POST", "/_rrproxy/reset", own, json={}))[0] == 200


async def test_admin_hosts_names_more_hosts(start_proxy: StartProxy) -> None:
    proxy = await start_proxy("http://127.0.0.1:9", admin_hosts="rrproxy.internal,box.lan:1234")
    for host, expected in [
        ("rrproxy.internal", 200),
        ("rrproxy.internal:8000", 200),  # no port in the setting: any port
        ("box.lan:1234", 200),
        ("box.lan:4321", 403),
        ("evil.example", 403),
    ]:
        assert (await ask(proxy, "GET", "/_rrproxy/health", {"Host": host}))[0] == expected, host
    status, _, _ = await ask(
        proxy, "POST", "/_rrproxy/reset", {"Origin": "http://rrproxy.internal"}, json={}
    )
    assert status == 200


async def test_state_changes_need_json_and_the_proxy_s_own_origin(start_proxy: StartProxy) -> None:
    proxy = await start_proxy("http://127.0.0.1:9")
    own = f"http://127.0.0.1:{proxy.port}"
    body = json.dumps({"name": "hijacked"})
    # What a cross-origin form or a no-preflight fetch can send: refused, nothing changed.
    for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer, _ = await ask(proxy, "PUT", "/_rrproxy/cassette", headers, data=body)
        assert status == 415, content_type
        assert "Content-Type: application/json" in answer["error"]["message"]
        status, _, _ = await ask(proxy, "POST", "/_rrproxy/reset", headers, data="{}")
        assert status == 415
    # JSON from a foreign page (after a preflight rrproxy never grants): refused too.
    for origin in ["http://evil.example", "null", f"https://127.0.0.1:{proxy.port}",
                   "http://127.0.0.1:1", f"http://evil.example:{proxy.port}"]:  # fmt: skip
        headers = {**JSON, "Origin": origin}
        status, answer, _ = await ask(proxy, "PUT", "/_rrproxy/cassette", headers, data=body)
        assert status == 403, origin
        assert repr(origin) in answer["error"]["message"]
    assert await active_cassette(proxy) == "default"
    # The proxy's own page, and a client that sends no Origin (curl, an SDK): allowed.
    for headers in [{**JSON, "Origin": own}, JSON]:
        status, _, _ = await ask(proxy, "PUT", "/_rrproxy/cassette", headers, data=body)
        assert status == 200
    assert await active_cassette(proxy) == "hijacked"


async def test_nothing_under_rrproxy_is_forwarded(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    proxy = await start_proxy(await start_upstream(echo_upstream("up", calls)), mode="record")
    url = str(proxy.make_url("/_rrproxy/reset"))
    preflight = await run(
        "curl", "-sS", "-i", "-X", "OPTIONS", "-H", "Origin: http://evil.example",
        "-H", "Access-Control-Request-Method: POST", url, env=base_env(),
    )  # fmt: skip
    assert preflight.returncode == 0 and preflight.stdout.startswith("HTTP/1.1 405")
    assert "access-control-allow" not in preflight.stdout.lower()
    for method, path, expected in [
        ("OPTIONS", "/_rrproxy/cassettes", 405),
        ("PROPFIND", "/_rrproxy/reset", 405),
        ("DELETE", "/_rrproxy/cassette", 405),
        ("GET", "/_rrproxy/reset", 405),
        ("GET", "/_rrproxy/nothing-here", 404),
        ("POST", "/_rrproxy/nothing/here", 404),
        ("GET", "/_rrproxy", 404),
        ("GET", "/%5Frrproxy/nothing", 404),
    ]:
        status, body, headers = await ask(proxy, method, path)
        assert status == expected, (method, path)
        assert body["error"]["type"].startswith("rrproxy_")
        if expected == 405:
            assert "Allow" in headers
    status, body, _ = await ask(proxy, "GET", "/_rrproxy/cassettes")
    assert status == 200 and body == {"cassettes": []}  # nothing recorded either
    assert calls == []  # the upstream never saw any of them
    async with aiohttp.ClientSession() as client:  # the proxy itself still forwards
        async with client.get(proxy.make_url("/v1/models")) as resp:
            assert resp.status == 200
    assert len(calls) == 1


async def test_a_replay_miss_quotes_no_recorded_secret(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[web.Request] = []
    upstream = await start_upstream(echo_upstream("up", calls))
    recorder = await start_proxy(upstream, mode="record")
    async with aiohttp.ClientSession() as client:
        url = recorder.make_url("/v1/search?password=hunter2-secret&user_auth=abc123&q=cats")
        async with client.get(url) as resp:
            assert resp.status == 200
        async with client.get(recorder.make_url("/_rrproxy/cassettes")):  # flushes
            pass
    replayer = await start_proxy(upstream, mode="replay")
    async with aiohttp.ClientSession() as client:
        url = replayer.make_url("/v1/search?password=mine&q=dogs")
        async with client.get(url) as resp:
            assert resp.status == 404
            message = (await resp.json())["error"]["message"]
    assert "hunter2-secret" not in message and "abc123" not in message
    assert "mine" not in message  # not even the client's own
    assert "password=[REDACTED]" in message and "user_auth=[REDACTED]" in message
    assert 'query param "q": "dogs" != "cats"' in message  # what differs is still said
