"""The web UI's pages at the HTML level, served by the real proxy on a real port over a real
SQLite store, the recordings made through it from a real upstream: what each page shows,
its filters, sorting and paging, the LLM summary, the download, and that nothing under
/_rrproxy/ui/ is ever forwarded or recorded."""

from __future__ import annotations

import html
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp

from tests.conftest import StartProxy, StartUpstream
from tests.ui_support import KEY, UI, Upstream, flush, page, record


def ids(db_path: Path) -> list[int]:
    with closing(sqlite3.connect(db_path)) as db:
        return [r[0] for r in db.execute("SELECT id FROM interactions ORDER BY id")]


async def test_the_cassette_list_filters_and_sorts_by_any_column(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    await record(proxy, "alpha")
    for n in range(3):
        await record(proxy, "beta-run", input=f"question {n}")
    await flush(proxy)
    text = await page(proxy, UI + "/")
    assert "alpha" in text and "beta-run" in text
    rows = re.findall(r'<tr data-cassette="([^"]+)">', text)
    assert rows == ["alpha", "beta-run"]  # by name
    by_count = await page(proxy, UI + "/?sort=interactions&desc=1")
    assert re.findall(r'<tr data-cassette="([^"]+)">', by_count) == ["beta-run", "alpha"]
    filtered = await page(proxy, UI + "/?q=BETA")
    assert re.findall(r'<tr data-cassette="([^"]+)">', filtered) == ["beta-run"]
    assert "No cassette matches." in await page(proxy, UI + "/?q=nothing-like-it")
    # `/_rrproxy/ui` leads to the list
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/ui")) as r:
            assert r.status == 200 and str(r.url).endswith("/_rrproxy/ui/")


async def test_a_cassette_lists_its_interactions_in_replay_order_with_a_filter(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    for n in range(3):
        await record(proxy, "flow", input=f"question {n}")
    await record(proxy, "flow", path="/v1/responses?stage=last")
    await flush(proxy)
    text = await page(proxy, UI + "/cassettes/flow")
    numbers = re.findall(
        r'<a class="interaction" href="/_rrproxy/ui/interactions/(\d+)">(\d+)</a>', text
    )
    assert [int(n) for _, n in numbers] == [1, 2, 3, 4]
    assert [int(i) for i, _ in numbers] == ids(db_path)
    assert text.count(">complete<") == 4 and "stage=last" in text
    only = await page(proxy, UI + "/cassettes/flow?url=stage%3Dlast")
    assert re.findall(r'class="interaction" href="[^"]+">(\d+)<', only) == ["4"]  # its ordinal
    assert re.findall(r'class="interaction"', await page(proxy, UI + "/cassettes/flow?status=200"))
    assert "No interaction matches" in await page(proxy, UI + "/cassettes/flow?status=500")
    assert 'id="cassette-input" value="default"' in text  # the run's, not this page's
    await page(proxy, UI + "/cassettes/no-such-one", status=404)


async def test_an_interaction_shows_request_response_timeline_events_and_summary(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    await record(proxy, "hello")
    await flush(proxy)
    (interaction_id,) = ids(db_path)
    text = await page(proxy, f"{UI}/interactions/{interaction_id}")
    assert KEY not in text and "[REDACTED]" in text  # the headers as stored
    assert '<details class="j" open>' in text and "Say hello world" in text  # foldable JSON
    assert 'class="timeline' in text and text.count('class="mark"') >= 1
    assert 'class="ttfb"' in text and 'class="first"' in text
    events = re.findall(r'<tr id="e(\d+)">', text)
    assert events == [str(n) for n in range(1, 11)]
    assert "response.output_text.delta" in text
    assert html.escape("curl -N -X POST") in text or "curl -N -X POST" in text
    assert "/_rrproxy/ui/cassettes/hello/download" in text
    summary = await page(proxy, f"{UI}/interactions/{interaction_id}/summary")
    assert "OpenAI Responses" in summary and "Hello, World!" in summary
    assert "input_tokens" in summary and "total_tokens" in summary
    assert summary == await page(proxy, f"{UI}/interactions/{interaction_id}/summary")  # kept
    await page(proxy, f"{UI}/interactions/999999", status=404)
    await page(proxy, f"{UI}/interactions/not-a-number", status=404)


async def test_the_events_table_is_paged(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    from aiohttp import web

    async def many(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(1, 251):
            await response.write(f"data: {n}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", many)
    proxy = await start_proxy(await start_upstream(app))
    await record(proxy, "long")
    await flush(proxy)
    (interaction_id,) = ids(db_path)
    first = await page(proxy, f"{UI}/interactions/{interaction_id}")
    assert re.findall(r'<tr id="e(\d+)">', first) == [str(n) for n in range(1, 101)]
    assert "page 1 of 3" in first
    third = await page(proxy, f"{UI}/interactions/{interaction_id}?page=2")
    assert re.findall(r'<tr id="e(\d+)">', third) == [str(n) for n in range(201, 251)]
    at = await page(proxy, f"{UI}/interactions/{interaction_id}?event=150")
    assert "page 2 of 3" in at and '<tr id="e150">' in at


async def test_a_long_stream_s_timeline_is_drawn_after_the_first_screen(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    from aiohttp import web

    async def long(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"".join(f"data: {n}\n\n".encode() for n in range(10_001)))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", long)
    proxy = await start_proxy(await start_upstream(app))
    await record(proxy, "long")
    await flush(proxy)
    (interaction_id,) = ids(db_path)
    first = await page(proxy, f"{UI}/interactions/{interaction_id}")
    assert f'data-src="/_rrproxy/ui/interactions/{interaction_id}/timeline"' in first
    assert 'class="mark"' not in first and "page 1 of 101" in first
    drawn = await page(proxy, f"{UI}/interactions/{interaction_id}/timeline")
    assert drawn.count('class="mark"') >= 1 and 'class="ttfb"' in drawn
    assert drawn == await page(proxy, f"{UI}/interactions/{interaction_id}/timeline")  # kept
    await page(proxy, f"{UI}/interactions/0/timeline", status=404)


async def test_the_download_is_the_cassette_file(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    await record(proxy, "hello")
    await flush(proxy)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url(UI + "/cassettes/hello/download")) as r:
            assert r.status == 200
            assert "hello.cassette.jsonl" in r.headers["Content-Disposition"]
            lines = (await r.read()).splitlines()
    assert b'"format": "rrproxy-cassette"' in lines[0] and len(lines) == 1 + 1 + 10
    listing = await page(proxy, UI + "/")
    assert ">clean<" in listing  # the download's scan, shown in the list


async def test_the_secret_scan_and_a_download_that_would_leak_a_key(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "clean-one")
    await record(proxy, "leaky", input=f"my key is {KEY}")  # a key in the body: not redacted
    await flush(proxy)
    assert ">clean<" not in await page(proxy, UI + "/cassettes/clean-one")
    scanned = await page(proxy, UI + "/cassettes/clean-one/scan")  # redirected to the page
    assert ">clean<" in scanned
    found = await page(proxy, UI + "/cassettes/leaky/scan")
    assert "1 key-like string(s) found" in found
    refused = await page(proxy, UI + "/cassettes/leaky/download", status=409)
    assert "key-like" in refused and "allow_secrets=1" in refused
    async with aiohttp.ClientSession() as client:
        async with client.get(
            proxy.make_url(UI + "/cassettes/leaky/download?allow_secrets=1")
        ) as r:
            assert r.status == 200 and KEY.encode() in await r.read()
    listing = await page(proxy, UI + "/")
    assert ">clean<" in listing and "key-like strings found" in listing
    await page(proxy, UI + "/cassettes/nothing/download", status=404)


async def test_nothing_under_the_ui_is_forwarded_or_recorded(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    for path in ("/_rrproxy/ui/no-such-page", "/_rrproxy/ui/cassettes", "/_rrproxy/nope"):
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.make_url(path)) as r:
                assert r.status == 404, path
            async with client.post(proxy.make_url(path), json={}) as r:
                assert r.status in (404, 405), path
    assert upstream.calls == [] and ids(db_path) == []


async def test_the_ui_answers_only_its_own_host(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    async with aiohttp.ClientSession() as client:
        for host in ("evil.example", f"rebound.example:{proxy.port}"):
            async with client.get(proxy.make_url(UI + "/"), headers={"Host": host}) as r:
                assert r.status == 403
                assert "DNS rebinding" in await r.text()
        async with client.get(
            proxy.make_url(UI + "/"), headers={"Host": f"localhost:{proxy.port}"}
        ) as r:
            assert r.status == 200
