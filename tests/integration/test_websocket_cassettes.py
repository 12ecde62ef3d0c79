"""Recorded WebSocket sessions as cassettes: `rrproxy show`, the admin API, export to a
file and import elsewhere (then replayed offline), auto mode and ordered repeats."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from aiohttp import WSMsgType, web

from proxy.cassettes import file_format as cassette_file
from tests.conftest import StartProxy, StartUpstream
from tests.integration.realtime_fake import Seen, realtime_app
from tests.integration.test_websocket import CONVERSATION, KEY, converse
from tests.proc import run_cli


async def record_conversation(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> tuple[list[object], str, Seen]:
    seen = Seen()
    upstream = await start_upstream(realtime_app(seen))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record", cassette="voice")
    url = str(proxy.make_url("/v1/realtime?model=gpt-realtime"))
    got = await converse(url, "one", headers={"Authorization": f"Bearer {KEY}"})
    await proxy.close()
    await upstream.close()
    return got, upstream_url, seen


async def test_show_lists_the_messages_and_export_import_replays_them(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    recorded, upstream_url, seen = await record_conversation(start_upstream, start_proxy)

    shown = run_cli("show", "voice", "--db", str(db_path), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert any(line.strip().startswith("101, 22 messages") for line in lines), shown.stdout
    sent = [line for line in lines if " -> " in line]
    received = [line for line in lines if " <- " in line]
    assert len(sent) == len(CONVERSATION) + 2 and len(received) == 15
    assert '{"type": "session.created"' in received[0]
    assert "binary 0001617564696fff" in sent[-2]
    assert sent[-1].rstrip().endswith("close 1000")

    as_json = run_cli("show", "voice", "--json", "--db", str(db_path), cwd=tmp_path)
    [session] = json.loads(as_json.stdout)["interactions"]
    assert session["status"] == 101 and len(session["messages"]) == 22
    assert session["messages"][1]["from"] == "client"
    assert json.loads(session["messages"][1]["text"])["type"] == "session.update"

    exported = run_cli("export", "voice", "-o", "-", "--db", str(db_path), cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    text = exported.stdout.encode()
    assert KEY.encode() not in text
    header, [rec] = cassette_file.loads(text)
    assert (header.name, rec.response.status, len(rec.messages), rec.events) == (
        "voice",
        101,
        22,
        (),
    )
    assert json.loads(text.splitlines()[0])["version"] == 2
    assert json.loads(text.splitlines()[1])["messages"] == 22
    assert json.loads(text.splitlines()[-1]) == {
        "t": rec.messages[-1].t_ms,
        "from": "client",
        "close": 1000,
        "reason": "",
    }
    file = tmp_path / "voice.cassette.jsonl"
    file.write_bytes(text)

    other = tmp_path / "other.db"
    imported = run_cli("import", str(file), "--db", str(other), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    again = run_cli("export", "voice", "-o", "-", "--db", str(other), cwd=tmp_path)
    assert again.stdout.encode() == text  # byte-identical round trip

    proxy = await start_proxy(upstream_url, mode="replay", cassette="voice", db=str(other))
    url = str(proxy.make_url("/v1/realtime?model=gpt-realtime"))
    assert await converse(url, "two") == recorded
    assert len(seen.headers) == 1  # the replay never reached the (stopped) upstream


async def test_the_admin_api_pages_through_a_sessions_messages(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    _, upstream_url, _ = await record_conversation(start_upstream, start_proxy)
    proxy = await start_proxy(upstream_url, mode="replay", cassette="voice")
    async with aiohttp.ClientSession() as http:
        url = proxy.make_url("/_rrproxy/messages")
        async with http.get(url, params={"interaction": "1", "limit": "10"}) as resp:
            first = await resp.json()
        async with http.get(
            url, params={"interaction": "1", "after": str(first["next_after"])}
        ) as resp:
            rest = await resp.json()
        async with http.get(url, params={"interaction": "2"}) as resp:
            missing = (resp.status, await resp.json())
    assert (first["status"], first["outcome"], len(first["messages"])) == (101, "complete", 10)
    assert first["messages"][0]["from"] == "server" and first["messages"][0]["seq"] == 0
    assert first["next_after"] == 9
    assert len(rest["messages"]) == 12 and rest["next_after"] is None
    assert rest["messages"][-1] == {
        "seq": 21,
        "t": rest["messages"][-1]["t"],
        "from": "client",
        "kind": "close",
        "size": 0,
        "code": 1000,
        "reason": "",
    }
    assert missing[0] == 404 and "has 1 interaction(s), not 2" in missing[1]["error"]["message"]


def counting_app(seen: Seen) -> web.Application:
    """Each session says which it is (1, 2, ...), then echoes the client's texts."""

    async def numbered(request: web.Request) -> web.StreamResponse:
        seen.headers.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(f"session {len(seen.headers)}")
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(f"echo {msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/live", numbered)
    return app


async def session(url: str, say: str = "hi") -> list[str]:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        got = [(await ws.receive()).data]
        await ws.send_str(say)
        got.append((await ws.receive()).data)
    return got


async def test_auto_mode_records_what_is_missing_and_repeats_replay_in_order(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    seen = Seen()
    upstream = await start_upstream(counting_app(seen))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/live"))
    assert await session(url) == ["session 1", "echo hi"]
    assert await session(url) == ["session 2", "echo hi"]
    await proxy.close()

    proxy = await start_proxy(upstream, mode="auto")
    url = str(proxy.make_url("/live"))
    assert await session(url) == ["session 1", "echo hi"]  # the n-th recording, in order
    assert await session(url) == ["session 2", "echo hi"]
    assert len(seen.headers) == 2
    assert await session(url) == ["session 3", "echo hi"]  # none left: recorded
    await proxy.close()
    await upstream.close()

    proxy = await start_proxy(upstream_url, mode="replay")
    url = str(proxy.make_url("/live"))
    assert [await session(url) for _ in range(4)] == [
        ["session 1", "echo hi"],
        ["session 2", "echo hi"],
        ["session 3", "echo hi"],
        ["session 3", "echo hi"],  # used up: the last one again
    ]


async def test_a_cassette_directory_holds_the_session_and_replays_it_from_the_file(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_app(seen := Seen()))
    url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="auto", cassette="live", cassette_dir=str(cassettes))
    assert await session(str(proxy.make_url("/live"))) == ["session 1", "echo hi"]
    await proxy.close()
    file = cassettes / "live.cassette.jsonl"
    header, [rec] = cassette_file.loads(file.read_bytes())
    assert (header.version, rec.response.status, len(rec.messages)) == (2, 101, 4)

    # A teammate edits the file: the replay, from a fresh store, sends the edit.
    file.write_bytes(file.read_bytes().replace(b'"echo hi"', b'"echo edited"'))
    fresh = str(tmp_path / "fresh.db")
    proxy = await start_proxy(
        url, mode="replay", cassette="live", cassette_dir=str(cassettes), db=fresh
    )
    assert await session(str(proxy.make_url("/live"))) == ["session 1", "echo edited"]
    assert len(seen.headers) == 1


def hand_written(url: str, *messages: dict[str, object]) -> bytes:
    """A cassette file with one WebSocket session, as a person would write it."""
    head = {
        "request": {
            "method": "GET",
            "url": url,
            "headers": [["Sec-WebSocket-Version", "13"]],
            "body": "",
        },
        "response": {"status": 101, "headers": []},
        "complete": True,
        "outcome": "complete",
        "error": None,
        "recorded_at": "2026-12-02T12:00:00.000000Z",
        "ttfb_ms": 1.0,
        "duration_ms": 10.0,
        "events": 0,
        "messages": len(messages),
    }
    header = {"format": "rrproxy-cassette", "version": 2, "name": "hand", "interactions": 1}
    return b"".join(json.dumps(line).encode() + b"\n" for line in (header, head, *messages))


async def test_a_hand_written_session_is_replayed_and_its_end_enforced(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    upstream = "http://127.0.0.1:9"  # nothing listens: replay never forwards
    (cassettes / "hand.cassette.jsonl").write_bytes(
        hand_written(
            upstream + "/chat",
            {"t": 2.0, "from": "server", "text": "welcome"},
            {"t": 3.0, "from": "client", "text": '{"q": 1}'},
            {"t": 4.0, "from": "server", "b64": "AAE="},
        )  # and no close: the session ends when the client's messages run out
    )
    proxy = await start_proxy(upstream, mode="replay", cassette="hand", cassette_dir=str(cassettes))
    async with aiohttp.ClientSession() as http, http.ws_connect(proxy.make_url("/chat")) as ws:
        assert (await ws.receive()).data == "welcome"
        await ws.send_str('{ "q" : 1 }')  # the same JSON, spaced otherwise
        assert (await ws.receive()).data == b"\x00\x01"
        await ws.send_str("one more")
        closed = await ws.receive()
    assert (closed.type, ws.close_code) == (WSMsgType.CLOSE, 1008)
    assert (
        closed.extra == "rrproxy replay miss: message 2: the recording has no more client messages"
    )
