"""The UI's state changes and its pages that need a running proxy: deletes (and the
cross-origin attempts that must delete nothing), mode and cassette switches, a new run,
the misses of the run with their closest recording, compare, and the live feed over SSE
(which is never recorded)."""

from __future__ import annotations

import asyncio
import html
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import ProxyServer, StartProxy, StartUpstream
from tests.ui_support import BODY, UI, Upstream, csrf, flush, page, record


def cassettes(db_path: Path) -> list[str]:
    with closing(sqlite3.connect(db_path)) as db:
        return [r[0] for r in db.execute("SELECT name FROM cassettes ORDER BY name")]


def interactions(db_path: Path) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(db_path)) as db:
        return list(db.execute("SELECT id, url FROM interactions ORDER BY id"))


async def post(
    proxy: ProxyServer, action: str, headers: dict[str, str], **kw: Any
) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url(f"{UI}/actions/{action}"), headers=headers, **kw
        ) as r:
            return r.status, await r.text()


async def test_a_delete_needs_the_page_s_token_and_origin_and_a_cross_origin_form_deletes_nothing(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "keep-me")
    await flush(proxy)
    token = csrf(await page(proxy, UI + "/"))
    own = f"http://127.0.0.1:{proxy.port}"
    attempts = [
        # a form on another site: urlencoded, its own Origin (the browser's only way without CORS)
        ({"Origin": "http://evil.example"}, {"data": {"name": "keep-me"}}, 415),
        # the same form posted as text/plain, Origin null (sandboxed page)
        ({"Origin": "null", "Content-Type": "text/plain"}, {"data": '{"name": "keep-me"}'}, 415),
        # JSON from another origin (a preflight would stop it; here sent anyway)
        (
            {"Origin": "http://evil.example", "X-Rrproxy-Csrf": token},
            {"json": {"name": "keep-me"}},
            403,
        ),
        # JSON from the proxy's own origin, without the page's token
        ({"Origin": own}, {"json": {"name": "keep-me"}}, 403),
        ({"Origin": own, "X-Rrproxy-Csrf": "guessed"}, {"json": {"name": "keep-me"}}, 403),
        # the right token under a forged Host (DNS rebinding)
        ({"Host": "evil.example", "X-Rrproxy-Csrf": token}, {"json": {"name": "keep-me"}}, 403),
    ]
    for headers, kw, expected in attempts:
        status, text = await post(proxy, "delete-cassette", headers, **kw)
        assert status == expected, (headers, text)
        assert cassettes(db_path) == ["keep-me"]
    status, text = await post(
        proxy, "delete-cassette", {"Origin": own, "X-Rrproxy-Csrf": token}, json={"name": "keep-me"}
    )
    assert status == 200, text
    assert cassettes(db_path) == []
    status, _ = await post(
        proxy, "delete-cassette", {"X-Rrproxy-Csrf": token}, json={"name": "keep-me"}
    )
    assert status == 404


async def test_deleting_an_interaction_leaves_the_others(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    for n in range(3):
        await record(proxy, "flow", input=f"q{n}")
    await flush(proxy)
    ids = [i for i, _ in interactions(db_path)]
    token = csrf(await page(proxy, f"{UI}/interactions/{ids[1]}"))
    status, text = await post(
        proxy, "delete-interaction", {"X-Rrproxy-Csrf": token}, json={"id": ids[1]}
    )
    assert status == 200, text
    assert [i for i, _ in interactions(db_path)] == [ids[0], ids[2]]
    listing = await page(proxy, f"{UI}/cassettes/flow")
    assert re.findall(r'class="interaction" href="[^"]+">(\d+)<', listing) == ["1", "2"]
    status, _ = await post(proxy, "delete-interaction", {"X-Rrproxy-Csrf": token}, json={"id": "x"})
    assert status == 400
    for bad in (b"{not json", b"[1]"):
        status, text = await post(
            proxy,
            "delete-interaction",
            {"X-Rrproxy-Csrf": token, "Content-Type": "application/json"},
            data=bad,
        )
        assert status == 400 and "JSON object" in text
    status, _ = await post(
        proxy, "delete-interaction", {"X-Rrproxy-Csrf": token}, json={"id": 10**6}
    )
    assert status == 404


async def test_the_mode_and_the_active_cassette_switch_and_a_new_run_starts(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    token = csrf(await page(proxy, UI + "/"))
    headers = {"X-Rrproxy-Csrf": token}
    assert (await post(proxy, "cassette", headers, json={"name": "switched"}))[0] == 200
    assert (await post(proxy, "mode", headers, json={"mode": "record"}))[0] == 200
    status, text = await post(proxy, "mode", headers, json={"mode": "sideways"})
    assert status == 400 and "modes: record, replay, auto, passthrough" in text
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/health")) as r:
            health = await r.json()
    assert health["mode"] == "record" and health["cassette"] == "switched"
    for _ in range(2):  # record mode: both forwarded, both recorded
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.make_url("/v1/responses"), json=BODY) as r:
                assert r.headers["Rrproxy-Source"] == "recorded"
                await r.read()
    await flush(proxy)
    assert cassettes(db_path) == ["switched"] and len(upstream.calls) == 2
    assert (await post(proxy, "mode", headers, json={"mode": "replay"}))[0] == 200
    for expected in ("Hello, World!", " there!"):
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.make_url("/v1/responses"), json=BODY) as r:
                assert r.headers["Rrproxy-Source"] == "replayed"
                assert expected.encode() in await r.read()
    assert (await post(proxy, "reset", headers, json={}))[0] == 200
    async with aiohttp.ClientSession() as client:  # a new run: the first recording again
        async with client.post(proxy.make_url("/v1/responses"), json=BODY) as r:
            assert b"Hello, World!" in await r.read()
    assert len(upstream.calls) == 2
    text = await page(proxy, UI + "/")
    assert '<option value="replay" selected>' in text and 'value="switched"' in text


async def test_the_misses_page_shows_the_miss_and_its_closest_recording(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "default")
    await flush(proxy)
    assert "No replay miss in this run." in await page(proxy, UI + "/misses")
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url("/v1/responses"),
            json={**BODY, "model": "gpt-4o-mini"},
            headers={"Rrproxy-Mode": "replay"},
        ) as r:
            assert r.status == 404
            message = (await r.json())["error"]["message"]
    text = html.unescape(await page(proxy, UI + "/misses"))
    assert message in text  # in the same words
    ((interaction_id, _),) = interactions(db_path)
    assert f'href="/_rrproxy/ui/interactions/{interaction_id}"' in text
    assert '<li>body field "model": "gpt-4o-mini" != "gpt-4o"</li>' in text


async def test_a_new_run_from_the_admin_api_empties_the_misses(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """`POST /_rrproxy/reset` starts a new run: the misses page and `GET /_rrproxy/run`
    list none of the last run's misses."""
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "default")
    await flush(proxy)

    async def run_missed() -> int:
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.make_url("/_rrproxy/run")) as r:
                run = await r.json()
        return sum(c["missed"] for c in run["cassettes"])

    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url("/v1/responses"),
            json={**BODY, "model": "gpt-4o-mini"},
            headers={"Rrproxy-Mode": "replay"},
        ) as r:
            assert r.status == 404
    listed = await page(proxy, UI + "/misses")
    assert listed.count('<article class="miss">') == 1 and "1 miss(es) in this run" in listed
    assert await run_missed() == 1
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/_rrproxy/reset"), json={}) as r:
            assert r.status == 200, await r.text()
    emptied = await page(proxy, UI + "/misses")
    assert '<article class="miss">' not in emptied and "No replay miss in this run." in emptied
    assert await run_missed() == 0


async def test_compare_shows_the_one_event_that_differs(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "twice")
    async with aiohttp.ClientSession() as client:  # the same request again, recorded again
        async with client.post(
            proxy.make_url("/v1/responses"),
            json=BODY,
            headers={"Rrproxy-Cassette": "twice", "Rrproxy-Mode": "record"},
        ) as r:
            await r.read()
    await flush(proxy)
    first, second = (i for i, _ in interactions(db_path))
    detail = await page(proxy, f"{UI}/interactions/{first}")
    assert f"/_rrproxy/ui/compare?a={first}&amp;b={second}" in detail
    text = await page(proxy, f"{UI}/compare?a={first}&b={second}")
    assert "1 event(s) differ" in text
    assert text.count('class="differs"') == 1 and "there!" in text
    every = await page(proxy, f"{UI}/compare?a={first}&b={second}&all=1")
    assert every.count('class="same"') == 9
    assert "No such interaction." in await page(proxy, f"{UI}/compare?a={first}&b=999999")


async def test_the_live_feed_pushes_an_event_while_it_streams_and_is_never_recorded(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    async with aiohttp.ClientSession() as client:
        feed = await client.get(proxy.make_url(UI + "/live/feed"))
        assert feed.headers["Content-Type"] == "text/event-stream"
        streaming = asyncio.create_task(record(proxy, "live", path="/v1/held"))
        await upstream.first_sent.wait()
        seen = b""
        while b'"type": "first"' not in seen and b"first" not in seen:
            seen += await asyncio.wait_for(feed.content.readany(), 30)
        assert b"event: interaction" in seen and b"/v1/held" in seen
        upstream.gate.set()  # the upstream sends its second event now
        while b"after-the-gate" not in seen:
            seen += await asyncio.wait_for(feed.content.readany(), 30)
        await streaming
        while b"event: end" not in seen:
            seen += await asyncio.wait_for(feed.content.readany(), 30)
        feed.close()
    await flush(proxy)
    (recorded,) = interactions(db_path)  # the held stream, and nothing of the feed
    assert recorded[1].endswith("/v1/held")
