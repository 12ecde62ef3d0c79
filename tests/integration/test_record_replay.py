"""Record, then replay: byte-identical answers, ordinals, misses, modes and control headers."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from tests.conftest import StartProxy, StartUpstream
from tests.proc import run_cli
from tests.stores import rows

pytestmark = pytest.mark.stores


def counting_upstream() -> tuple[web.Application, list[web.Request]]:
    """Each call answers differently (as an LLM does): the n-th answer says n."""
    app = web.Application()
    seen: list[web.Request] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        n = len(seen)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Call": str(n)}
        )
        await response.prepare(request)
        for i in range(3):
            await response.write(f"data: answer {n} part {i}\n\n".encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def plain(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"n": len(seen)}, status=201, headers={"X-Call": str(len(seen))})

    app.router.add_post("/v1/stream", stream)
    app.router.add_route("*", "/v1/plain", plain)
    return app, seen


async def post(
    client: aiohttp.ClientSession, url: object, **kw: object
) -> tuple[int, dict[str, str], bytes]:
    async with client.post(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, dict(resp.headers), await resp.read()


async def test_identical_requests_replay_in_recording_order(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, seen = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="record")
    url = proxy.make_url("/v1/stream")
    async with aiohttp.ClientSession() as client:
        first = await post(client, url, json={"q": "same"})
        second = await post(client, url, json={"q": "same"})
        assert first[2] != second[2]
        await upstream.close()
        replay = {"Rrproxy-Mode": "replay"}
        again = [await post(client, url, json={"q": "same"}, headers=replay) for _ in range(3)]
    assert again[0][2] == first[2] and again[0][1]["X-Call"] == "1"
    assert again[1][2] == second[2] and again[1][1]["X-Call"] == "2"
    assert again[2][2] == second[2]  # used up: the last one again
    assert len(seen) == 2


async def test_strict_replay_misses_beyond_the_recordings(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, _ = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="record")
    url = proxy.make_url("/v1/stream")
    async with aiohttp.ClientSession() as client:
        await post(client, url, json={"q": 1})
        await proxy.close()
    proxy = await start_proxy(upstream, mode="replay", strict=True)
    url = proxy.make_url("/v1/stream")
    async with aiohttp.ClientSession() as client:
        assert (await post(client, url, json={"q": 1}))[0] == 200
        status, headers, body = await post(client, url, json={"q": 1})
        assert status == 404 and headers["Rrproxy-Miss"] == "1"
        assert "all were used in this run" in json.loads(body)["error"]["message"]
        async with client.post(proxy.make_url("/_rrproxy/reset"), json={}) as resp:
            assert resp.status == 200
        assert (await post(client, url, json={"q": 1}))[0] == 200  # a new run


async def test_auto_mode_replays_unused_recordings_then_records(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, seen = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)  # auto is the default
    url = proxy.make_url("/v1/plain")
    async with aiohttp.ClientSession() as client:
        a = await post(client, url, json={"q": 1})
        assert a[1]["Rrproxy-Source"] == "recorded"
        async with client.post(proxy.make_url("/_rrproxy/reset"), json={}):
            pass
        b = await post(client, url, json={"q": 1})
        assert b[1]["Rrproxy-Source"] == "replayed" and b[2] == a[2]
        c = await post(client, url, json={"q": 1})  # the recording is used: record another
        assert c[1]["Rrproxy-Source"] == "recorded" and c[2] != a[2]
    assert len(seen) == 2


async def test_replay_is_byte_identical_status_and_headers_included(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    body = gzip.compress(b'{"hello": "world"}' * 100)
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            status=203,
            body=body,
            headers={
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
                "X-Request-Id": "req_123",
                "Keep-Alive": "timeout=5",
                "X-Hop": "drop me",
                "Connection": "X-Hop",
            },
        )

    app.router.add_get("/v1/thing", handler)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        async with client.get(proxy.make_url("/v1/thing?b=2&a=1")) as resp:
            recorded = (resp.status, await resp.read(), resp.headers.copy())
        await upstream.close()
        async with client.get(
            proxy.make_url("/v1/thing?a=1&b=2"), headers={"Rrproxy-Mode": "replay"}
        ) as resp:
            replayed = (resp.status, await resp.read(), resp.headers.copy())
    for status, raw, headers in (recorded, replayed):
        assert status == 203
        assert raw == body  # relayed and replayed without decompression
        assert headers["Content-Encoding"] == "gzip"
        assert headers["Content-Length"] == str(len(body))
        assert headers["X-Request-Id"] == "req_123"
        assert "X-Hop" not in headers and "Keep-Alive" not in headers
    assert recorded[2]["Rrproxy-Source"] == "recorded"
    assert replayed[2]["Rrproxy-Source"] == "replayed"
    assert recorded[2]["Date"] == replayed[2]["Date"]


async def test_miss_names_the_cassette_and_the_difference(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, _ = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, cassette="my-suite")
    async with aiohttp.ClientSession() as client:
        await post(client, proxy.make_url("/v1/plain"), json={"model": "gpt-4o", "input": "hi"})
        status, headers, body = await post(
            client,
            proxy.make_url("/v1/plain"),
            json={"input": "hi", "model": "gpt-4o-mini"},
            headers={"Rrproxy-Mode": "replay"},
        )
    assert status == 404 and headers["Rrproxy-Miss"] == "1"
    error = json.loads(body)["error"]
    assert error["type"] == "rrproxy_replay_miss"
    assert "'my-suite'" in error["message"]
    assert 'body field "model": "gpt-4o-mini" != "gpt-4o"' in error["message"]


async def test_json_key_order_and_query_order_do_not_matter(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, _seen = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)
    async with aiohttp.ClientSession() as client:
        await post(client, proxy.make_url("/v1/plain?x=1&y=2"), data=b'{"a": 1, "b": [1, 2]}')
        _, headers, _ = await post(
            client,
            proxy.make_url("/v1/plain?y=2&x=1"),
            data=b'{"b":[1,2],"a":1}',
            headers={"Rrproxy-Mode": "replay"},
        )
    assert headers["Rrproxy-Source"] == "replayed"


async def test_ignored_body_fields_and_matched_headers(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    from proxy.core.matching import MatchRules

    app, _ = counting_upstream()
    upstream = await start_upstream(app)
    rules = MatchRules(ignore_body_fields=("metadata.trace",), match_headers=("OpenAI-Beta",))
    proxy = await start_proxy(upstream, matching=rules)
    url = proxy.make_url("/v1/plain")
    replay = {"Rrproxy-Mode": "replay"}
    async with aiohttp.ClientSession() as client:
        beta = {"OpenAI-Beta": "v2"}
        await post(client, url, json={"q": 1, "metadata": {"trace": "a"}}, headers=beta)
        hit = await post(
            client, url, json={"q": 1, "metadata": {"trace": "b"}}, headers=replay | beta
        )
        assert hit[0] == 201
        miss = await post(
            client,
            url,
            json={"q": 1, "metadata": {"trace": "b"}},
            headers=replay | {"OpenAI-Beta": "v1"},
        )
    assert miss[0] == 404
    assert 'header "openai-beta"' in json.loads(miss[2])["error"]["message"]


async def test_control_headers_are_stripped_and_choose_the_cassette(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    app, seen = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)
    async with aiohttp.ClientSession() as client:
        _, headers, _ = await post(
            client,
            proxy.make_url("/v1/plain"),
            json={},
            headers={"Rrproxy-Cassette": "other", "Rrproxy-Pace": "2", "Rrproxy-Mode": "record"},
        )
        assert headers["Rrproxy-Source"] == "recorded"
        bad = await post(client, proxy.make_url("/v1/plain"), headers={"Rrproxy-Mode": "nope"})
        assert bad[0] == 400 and "nope" in bad[2].decode()
        bad = await post(client, proxy.make_url("/v1/plain"), headers={"Rrproxy-Cassette": "../x"})
        assert bad[0] == 400
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:
            listed = (await resp.json())["cassettes"]
    sent = [h.lower() for h in seen[0].headers if h.lower().startswith("rrproxy-")]
    assert sent == ["rrproxy-hops"]  # loop detection; no control header
    assert [(c["name"], c["interactions"]) for c in listed] == [("other", 1)]
    await proxy.close()
    [(stored,)] = rows(store_url, "SELECT request_headers FROM interactions")
    assert "rrproxy" not in str(stored).lower()


async def test_passthrough_records_nothing(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, _seen = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="passthrough")
    async with aiohttp.ClientSession() as client:
        _, headers, _ = await post(client, proxy.make_url("/v1/stream"), json={})
        assert headers["Rrproxy-Source"] == "passthrough"
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:
            assert (await resp.json())["cassettes"] == []


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_path_and_query_is_forwarded(
    method: str, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"method": request.method, "path_qs": request.raw_path, "body": (await request.text())}
        )

    app.router.add_route("*", "/{tail:.*}", echo)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="passthrough")
    async with aiohttp.ClientSession() as client:
        raw = URL(f"{proxy.make_url('')}/a/b%20c?x=1&x=2&y=%2F", encoded=True)
        async with client.request(method, raw, data=b"payload") as resp:
            got = await resp.json()
    assert got == {"method": method, "path_qs": "/a/b%20c?x=1&x=2&y=%2F", "body": "payload"}


async def test_a_miss_on_a_misspelt_cassette_names_the_ones_there_are(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, _ = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, cassette="checkout-flow")
    async with aiohttp.ClientSession() as client:
        await post(client, proxy.make_url("/v1/plain"), json={"q": 1})
        async with client.get(proxy.make_url("/_rrproxy/cassettes")):  # flushes the recorder
            pass
        status, _, body = await post(
            client,
            proxy.make_url("/v1/plain"),
            json={"q": 1},
            headers={"Rrproxy-Mode": "replay", "Rrproxy-Cassette": "chekout-flow"},
        )
    assert status == 404
    message = json.loads(body)["error"]["message"]
    assert "no cassette named 'chekout-flow'" in message
    assert "cassettes: checkout-flow" in message


async def test_head_replays_with_the_recorded_content_length(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    async def thing(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1234, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/v1/thing", thing)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)
    seen = []
    async with aiohttp.ClientSession() as client:
        for mode in ("record", "replay"):
            async with client.head(
                proxy.make_url("/v1/thing"), headers={"Rrproxy-Mode": mode}
            ) as resp:
                seen.append((resp.status, resp.headers.get("Content-Length"), await resp.read()))
    assert seen == [(200, "1234", b""), (200, "1234", b"")]


async def test_a_streamed_recording_replays_chunked_and_to_http_1_0_until_close(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    app, _ = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)
    body = b'{"q": 1}'
    want = b"".join(f"data: answer 1 part {i}\n\n".encode() for i in range(3))
    async with aiohttp.ClientSession() as client:
        _, _, recorded = await post(client, proxy.make_url("/v1/stream"), data=body)
        replay = {"Rrproxy-Mode": "replay"}
        _, headers, replayed = await post(
            client, proxy.make_url("/v1/stream"), data=body, headers=replay
        )
    assert recorded == replayed == want
    # A streamed answer had no length: replayed whole, it keeps chunked framing
    assert headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in headers
    # which HTTP/1.0 does not have: the body then ends with the connection
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(
        b"POST /v1/stream HTTP/1.0\r\nRrproxy-Mode: replay\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert rest == want


async def test_a_cassette_removed_under_a_running_proxy_never_replays_stale_bodies(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    app, _ = counting_upstream()
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, cassette="c")
    replay = {"Rrproxy-Mode": "replay"}
    async with aiohttp.ClientSession() as client:
        first = await post(client, proxy.make_url("/v1/plain"), json={"q": 1})
        assert (await post(client, proxy.make_url("/v1/plain"), json={"q": 1}, headers=replay))[
            2
        ] == first[2]  # now in the body cache
        async with client.get(proxy.make_url("/_rrproxy/cassettes")):
            pass  # flushed
        result = run_cli("rm", "c", "--db", store_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        # no reset: SQLite gives the new recording the deleted one's id
        second = await post(client, proxy.make_url("/v1/plain"), json={"q": 1})
        assert second[1]["Rrproxy-Source"] == "recorded" and second[2] != first[2]
        again = await post(client, proxy.make_url("/v1/plain"), json={"q": 1}, headers=replay)
    assert again[2] == second[2]
