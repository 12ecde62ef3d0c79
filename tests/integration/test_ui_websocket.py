"""The web UI's interaction page of a recorded WebSocket session, at the HTML level: its
messages (direction, times, size, kind, payload), paged as events are, a binary payload's
bytes read only when asked for, and the timeline in two lanes. The sessions are recorded
through the proxy from a real upstream."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from tests.conftest import StartProxy, StartUpstream
from tests.integration.test_websocket import KEY
from tests.integration.test_websocket_cassettes import record_conversation
from tests.ui_support import UI, page

ROW = re.compile(r'<tr id="m(\d+)" class="(up|down) k-(text|binary|close)">')


def session_ids(db_path: Path) -> list[int]:
    with closing(sqlite3.connect(db_path)) as db:
        return [r[0] for r in db.execute("SELECT id FROM interactions WHERE status = 101")]


def row_html(text: str, n: int) -> str:
    start = text.index(f'<tr id="m{n}"')
    return text[start : text.index("</tr>", start)]


async def test_a_session_shows_its_messages_and_their_timeline_in_two_lanes(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    _, upstream_url, _ = await record_conversation(start_upstream, start_proxy)
    proxy = await start_proxy(upstream_url, mode="replay", cassette="voice")
    (session,) = session_ids(db_path)
    text = await page(proxy, f"{UI}/interactions/{session}")
    assert KEY not in text
    rows = ROW.findall(text)
    assert [int(n) for n, _, _ in rows] == list(range(1, 23))
    assert rows[0] == ("1", "down", "text") and rows[1] == ("2", "up", "text")
    assert rows[-3:] == [("20", "up", "binary"), ("21", "down", "binary"), ("22", "up", "close")]
    assert "22 messages" in text and 'id="summary"' not in text and 'id="events"' not in text
    first = row_html(text, 1)
    assert 'title="upstream → client">←' in first and "108</td>" in first
    assert "&#34;type&#34;: &#34;session.created&#34;," in first  # pretty-printed JSON
    assert 'title="client → upstream">→' in row_html(text, 2)
    binary = row_html(text, 20)
    assert f'data-bytes="/_rrproxy/ui/interactions/{session}/messages/20"' in binary
    assert "binary, 8 B" in binary and "audio" not in binary  # the bytes: when opened
    assert "close 1000 (by the client)" in row_html(text, 22)
    assert 'class="timeline lanes"' in text
    assert text.count('class="mark up"') >= 1 and text.count('class="mark down"') >= 1
    assert 'class="close"' in text and "close 1000 by the client" in text
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url(f"{UI}/interactions/{session}/messages/20")) as r:
            assert r.status == 200 and r.content_type == "text/plain"
            assert await r.text() == "\\x00\\x01audio\\xff"
        async with client.get(proxy.make_url(f"{UI}/interactions/{session}/messages/21")) as r:
            assert await r.text() == "\\xffoidua\\x01\\x00"  # the upstream's answer
    await page(proxy, f"{UI}/interactions/{session}/messages/23", status=404)
    drawn = await page(proxy, f"{UI}/interactions/{session}/timeline")
    assert 'class="timeline lanes"' in drawn and 'class="mark up"' in drawn


def burst_app() -> web.Application:
    """An upstream that answers `"burst N"` with N text messages and `"big"` with one
    binary message of 1 MiB, then closes when the client does."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            if msg.data.startswith("burst "):
                for n in range(int(msg.data.split()[1])):
                    await ws.send_str(json.dumps({"n": n + 1}))
            elif msg.data == "big":
                await ws.send_bytes(b"\x01" * 2**20)
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", handler)
    return app


async def test_the_messages_are_paged_and_a_large_payload_is_read_in_part(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(burst_app())
    proxy = await start_proxy(upstream, mode="record")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(proxy.make_url("/v1/realtime")) as ws:
            await ws.send_str("burst 247")
            for _ in range(247):
                assert (await ws.receive()).type is WSMsgType.TEXT
            await ws.send_str("big")
            assert len((await ws.receive()).data) == 2**20
            await ws.close()  # 1 + 247 + 1 + 1 + the close: 251 messages
    await proxy.close()
    proxy = await start_proxy(upstream, mode="replay")
    (session,) = session_ids(db_path)
    url = f"{UI}/interactions/{session}"
    first = await page(proxy, url)
    assert [int(n) for n, _, _ in ROW.findall(first)] == list(range(1, 101))
    assert "page 1 of 3" in first and "251 messages" in first
    assert "&#34;n&#34;: 99" in row_html(first, 100)
    last = await page(proxy, url + "?page=2")
    assert [int(n) for n, _, _ in ROW.findall(last)] == list(range(201, 252))
    at = await page(proxy, url + "?message=150")
    assert "page 2 of 3" in at and '<tr id="m150" class="down k-text">' in at
    assert ROW.findall(last)[-2] == ("250", "down", "binary")
    assert "binary, 1.0 MiB" in row_html(last, 250)
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url(f"{url}/messages/250")) as r:
            shown = await r.text()
    assert shown.startswith("\\x01\\x01")
    assert shown.endswith(f"... ({2**20 - 64 * 1024} more bytes)")  # 64 KiB of it read
    assert "No message on this page." in await page(proxy, url + "?page=9")
