"""WebSocket sessions through the proxy with real clients (aiohttp, `websockets`): relayed
and recorded per message, then replayed as a conversation with the upstream stopped."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets

from tests.conftest import StartProxy, StartUpstream
from tests.integration.realtime_fake import BIG, Seen, realtime_app

KEY = "sk-proj-websocketsecret0123456789abcdef"


def stored_messages(db: Path) -> list[tuple[int, str, int, str, int, int | None]]:
    """(interaction, direction, kind, size, code) of each stored message, in order."""
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT interaction_id, CASE from_client WHEN 1 THEN 'client' ELSE 'server' END,"
            " kind, length(data), code FROM messages ORDER BY interaction_id, seq"
        ).fetchall()


def interactions(db: Path) -> list[tuple[int, str, int, str, str, str | None]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT id, method, status, request_headers, outcome, error FROM interactions"
        ).fetchall()


def all_text(db: Path) -> bytes:
    """Everything stored, as bytes (for a secret that must not be there)."""
    with closing(sqlite3.connect(db)) as conn:
        return b"\n".join(
            str(row).encode()
            for table in ("interactions", "messages")
            for row in conn.execute(f"SELECT * FROM {table}")
        )


CONVERSATION: list[dict[str, Any]] = [
    {
        "type": "session.update",
        "session": {"instructions": "Be brief.", "tools": [{"name": "get_weather"}]},
    },
    {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather in Paris?"}],
        },
    },
    {"type": "response.create"},
    {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"sky":"sunny"}'},
    },
    {"type": "response.create"},
]


async def converse(url: str, run: str, **connect: Any) -> list[Any]:
    """The tool-call conversation with aiohttp's client: each client event gets a fresh
    `event_id` (as SDKs do); returns every server event's type (and text), in order."""
    got: list[Any] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url, **connect) as ws:
        got.append(json.loads((await ws.receive()).data)["type"])  # session.created
        for i, event in enumerate(CONVERSATION):
            await ws.send_str(json.dumps({**event, "event_id": f"evt_{run}_{i}"}))
            while True:
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.TEXT, msg
                data = json.loads(msg.data)
                got.append(data.get("delta") or data["type"])
                if data["type"] in (
                    "response.done",
                    "session.updated",
                    "conversation.item.created",
                ):
                    break
        await ws.send_bytes(b"\x00\x01audio\xff")
        got.append((await ws.receive()).data)
        await ws.close()
    return got


async def test_a_conversation_with_tool_calls_is_recorded_and_replayed_offline(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    seen = Seen()
    upstream = await start_upstream(realtime_app(seen))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/v1/realtime?model=gpt-realtime"))
    auth = {"headers": {"Authorization": f"Bearer {KEY}"}, "protocols": ("realtime",)}
    recorded = await converse(url, "one", **auth)
    assert "It is " in recorded and recorded[-1] == b"\xffoidua\x01\x00"
    assert seen.protocols == ["realtime"]
    assert seen.headers[0]["Authorization"] == f"Bearer {KEY}"  # forwarded as sent
    await proxy.close()
    await upstream.close()

    [(_, method, status, headers, outcome, _)] = interactions(db_path)
    assert (method, status, outcome) == ("GET", 101, "complete")
    assert KEY.encode() not in all_text(db_path)
    assert ["Sec-WebSocket-Protocol", "realtime"] in json.loads(headers)
    messages = stored_messages(db_path)
    directions = [m[1] for m in messages]
    assert directions.count("client") == len(CONVERSATION) + 2  # the audio, the close
    assert messages[0][1:3] == ("server", "text")  # session.created before anything
    assert ("client", "binary") in [m[1:3] for m in messages]
    assert messages[-1][1:3] == ("client", "close") and messages[-1][4] == 1000

    proxy = await start_proxy(upstream_url, mode="replay")  # the upstream is gone
    url = str(proxy.make_url("/v1/realtime?model=gpt-realtime"))
    other = {"headers": {"Authorization": "Bearer sk-other"}, "protocols": ("realtime",)}
    replayed = await converse(url, "two", **other)
    assert replayed == recorded
    assert len(seen.messages) == len(CONVERSATION) + 1  # the replay never reached it


async def test_a_different_client_message_closes_the_replay_with_1008_naming_it(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record")
    await converse(str(proxy.make_url("/v1/realtime")), "one")
    await proxy.close()
    await upstream.close()

    proxy = await start_proxy(upstream_url, mode="replay")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(proxy.make_url("/v1/realtime")) as ws,
    ):
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        changed = {**CONVERSATION[0], "session": {"instructions": "Be verbose."}}
        await ws.send_str(json.dumps(changed))
        msg = await ws.receive()
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008
    assert msg.extra.startswith("rrproxy replay miss: message 1: message field")
    assert '"session.instructions"' in msg.extra and "Be verbose." in msg.extra
    assert "replay miss" in caplog.text and "interaction 1" in caplog.text


async def test_a_session_the_client_closes_midway_is_recorded_and_replayed_so(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")

    async def session(url: str) -> list[str]:
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            got = [json.loads((await ws.receive()).data)["type"]]
            await ws.send_str(json.dumps(CONVERSATION[2]))  # a response starts streaming...
            got.append(json.loads((await ws.receive()).data)["type"])
            await ws.close(code=4001, message=b"user hung up")  # ... and the client leaves
        return got

    proxy = await start_proxy(upstream, mode="record")
    recorded = await session(str(proxy.make_url("/v1/realtime")))
    await proxy.close()
    await upstream.close()
    assert seen.closes == [4001]  # the upstream was told, with the client's code
    closes = [m for m in stored_messages(db_path) if m[2] == "close"]
    assert [(m[1], m[4]) for m in closes] == [("client", 4001)]

    proxy = await start_proxy(upstream_url, mode="replay")
    assert await session(str(proxy.make_url("/v1/realtime"))) == recorded


async def test_an_upstream_that_drops_the_connection_is_recorded_as_broken_and_replayed_so(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")

    async def session(url: str) -> tuple[list[Any], int | None]:
        got: list[Any] = []
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            got.append(json.loads((await ws.receive()).data)["type"])
            await ws.send_str(json.dumps({"type": "rrtest.drop"}))
            async for msg in ws:  # ends when the connection does
                got.append(json.loads(msg.data)["type"])
            got.append((await ws.receive()).type.name)
        return got, ws.close_code

    proxy = await start_proxy(upstream, mode="record")
    recorded, code = await session(str(proxy.make_url("/v1/realtime")))
    await proxy.close()
    await upstream.close()
    assert recorded == ["session.created", "rrtest.dropping", "CLOSED"]
    assert code == 1006  # no close frame reached the client: its connection broke
    [(_, _, _, _, outcome, error)] = interactions(db_path)
    assert outcome == "upstream_broken" and error is not None and "without a close" in error
    assert stored_messages(db_path)[-1][1:] == ("server", "close", 0, 1006)

    proxy = await start_proxy(upstream_url, mode="replay")
    assert await session(str(proxy.make_url("/v1/realtime"))) == (recorded, 1006)


async def test_fragments_large_messages_and_audio_with_the_websockets_library(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    audio = bytes(range(256)) * 64
    chunk = json.dumps({"type": "input_audio_buffer.append", "audio": "UklGRiQAAABXQVZF" * 64})

    async def session(url: str) -> list[Any]:
        got: list[Any] = []
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            got.append(json.loads(await ws.recv())["type"])
            # one message sent as three fragments (a text frame and two continuations)
            await ws.send([chunk[:100], chunk[100:2000], chunk[2000:]])
            got.append(json.loads(await ws.recv())["type"])
            await ws.send(audio)  # raw binary audio
            got.append(await ws.recv() == audio[::-1])
            await ws.send("big")
            big = await ws.recv()
            got.append(len(big))
            await ws.send("y" * BIG)  # a 10 MB message from the client
            got.append(json.loads(await ws.recv()))
        return got

    proxy = await start_proxy(upstream, mode="record")
    recorded = await session(str(proxy.make_url("/v1/realtime").with_scheme("ws")))
    await proxy.close()
    await upstream.close()
    assert recorded == [
        "session.created",
        "input_audio_buffer.speech_started",
        True,
        BIG,
        {"type": "got", "size": BIG},
    ]
    assert seen.messages[0] == json.loads(chunk)  # reassembled, passed on whole
    sizes = [(m[1], m[2], m[3]) for m in stored_messages(db_path)]
    assert ("client", "text", len(chunk)) in sizes
    assert ("client", "binary", len(audio)) in sizes
    assert ("server", "text", BIG) in sizes and ("client", "text", BIG) in sizes

    proxy = await start_proxy(upstream_url, mode="replay")
    assert await session(str(proxy.make_url("/v1/realtime").with_scheme("ws"))) == recorded


async def test_the_key_in_a_subprotocol_is_redacted_and_the_subprotocol_still_matches(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")

    async def session(url: str, key: str) -> str | None:
        offered = ("realtime", f"openai-insecure-api-key.{key}", "openai-beta.realtime-v1")
        async with aiohttp.ClientSession() as http, http.ws_connect(url, protocols=offered) as ws:
            assert json.loads((await ws.receive()).data)["type"] == "session.created"
            return ws.protocol

    proxy = await start_proxy(upstream, mode="record")
    assert await session(str(proxy.make_url("/v1/realtime")), KEY) == "realtime"
    await proxy.close()
    await upstream.close()
    assert KEY in seen.headers[0]["Sec-WebSocket-Protocol"]  # the upstream got it
    assert KEY.encode() not in all_text(db_path)
    [(_, _, _, headers, _, _)] = interactions(db_path)
    assert [
        "Sec-WebSocket-Protocol",
        # as aiohttp sends it: no spaces
        "realtime,openai-insecure-api-key.[REDACTED],openai-beta.realtime-v1",
    ] in json.loads(headers)

    proxy = await start_proxy(upstream_url, mode="replay")
    url = str(proxy.make_url("/v1/realtime"))
    assert await session(url, "sk-someone-else") == "realtime"  # any key replays
    async with aiohttp.ClientSession() as http:  # other subprotocols: another request
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, protocols=("realtime",))
    assert refused.value.status == 404
    assert refused.value.headers is not None and refused.value.headers["Rrproxy-Miss"] == "1"


async def openai_session(base_url: str, key: str) -> list[Any]:
    """The official SDK's realtime client: a tool call, then its answer."""
    import openai

    got: list[Any] = []
    async with (
        openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0) as client,
        client.realtime.connect(model="gpt-realtime", max_retries=0) as conn,
    ):
        got.append((await conn.recv()).type)
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief."})
        got.append((await conn.recv()).type)
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Weather in Paris?"}],
            }
        )
        got.append((await conn.recv()).type)
        for follow_up in (None, "call_1"):
            if follow_up:
                await conn.conversation.item.create(
                    item={"type": "function_call_output", "call_id": follow_up, "output": "{}"}
                )
                got.append((await conn.recv()).type)
            await conn.response.create()
            async for event in conn:
                got.append(getattr(event, "delta", None) or event.type)
                if event.type == "response.done":
                    break
    return got


async def test_the_openai_sdk_realtime_client_records_then_replays_offline(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record")
    recorded = await openai_session(str(proxy.make_url("/v1")), KEY)
    await proxy.close()
    await upstream.close()
    assert recorded[:3] == ["session.created", "session.updated", "conversation.item.created"]
    assert '{"city":' in recorded and "sunny in Paris." in recorded
    assert seen.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert KEY.encode() not in all_text(db_path)

    proxy = await start_proxy(upstream_url, mode="replay")
    assert await openai_session(str(proxy.make_url("/v1")), "sk-other") == recorded


OPENAI_REALTIME_SCRIPT = """
import asyncio, json, sys
import openai

async def main():
    async with openai.AsyncOpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0) as c:
        async with c.realtime.connect(model="gpt-realtime", max_retries=0) as conn:
            print((await conn.recv()).type)
            await conn.response.create()
            async for event in conn:
                print(getattr(event, "delta", None) or event.type)
                if event.type == "response.done":
                    break

asyncio.run(main())
"""


async def test_wss_through_https_proxy_with_tls_interception_records_then_replays(
    start_proxy: StartProxy, aiohttp_server: Any, tmp_path: Path, db_path: Path
) -> None:
    import sys

    from tests.tlsenv import client_env, run, upstream_tls

    tls = upstream_tls(tmp_path)
    ca_dir = tmp_path / "ca"
    seen = Seen()
    upstream = await aiohttp_server(realtime_app(seen), host="127.0.0.1", ssl=tls.server)
    base_url = f"https://localhost:{upstream.port}/v1"
    common = {"ca_dir": str(ca_dir), "upstream_ca_bundle": str(tls.ca_file)}

    proxy = await start_proxy("https://api.openai.com", mode="record", **common)
    env = await client_env(proxy.port, ca_dir)
    recorded = await run(sys.executable, "-c", OPENAI_REALTIME_SCRIPT, base_url, KEY, env=env)
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.split() == [
        "session.created",
        "response.created",
        "response.output_item.added",
        '{"city":',
        '"Paris"}',
        "response.function_call_arguments.done",
        "response.done",
    ]
    assert seen.headers[0]["Authorization"] == f"Bearer {KEY}"
    [(_, _, status, _, _, _)] = interactions(db_path)
    assert status == 101
    with closing(sqlite3.connect(db_path)) as conn:
        [(url,)] = conn.execute("SELECT url FROM interactions").fetchall()
    assert url == f"https://localhost:{upstream.port}/v1/realtime?model=gpt-realtime"
    await upstream.close()
    await proxy.close()

    proxy = await start_proxy("https://api.openai.com", mode="replay", **common)
    env = await client_env(proxy.port, ca_dir)
    replayed = await run(sys.executable, "-c", OPENAI_REALTIME_SCRIPT, base_url, "sk-x", env=env)
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == recorded.stdout
    assert len(seen.messages) == 1


async def test_ws_in_absolute_form_through_http_proxy(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    target = str(upstream.make_url("/v1/realtime"))
    proxy = await start_proxy("https://api.openai.com", mode="record")
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(target, proxy=str(proxy.make_url(""))) as ws,
    ):
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        await ws.send_str(json.dumps(CONVERSATION[0]))
        assert json.loads((await ws.receive()).data)["type"] == "session.updated"
    await proxy.close()
    with closing(sqlite3.connect(db_path)) as conn:
        [(url, status)] = conn.execute("SELECT url, status FROM interactions").fetchall()
    assert (url, status) == (target, 101)
    assert [m[1:3] for m in stored_messages(db_path)] == [
        ("server", "text"),
        ("client", "text"),
        ("server", "text"),
        ("client", "close"),
    ]


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database of its own on the local server (dropped after); skipped
    where none runs."""
    import uuid

    asyncpg = pytest.importorskip("asyncpg")
    try:
        admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/test", timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({exc})")
    name = f"rrproxy_ws_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_a_session_recorded_in_postgresql_replays_through_another_proxy(
    start_upstream: StartUpstream, start_proxy: StartProxy, postgres_url: str
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record", db=postgres_url)
    recorded = await converse(str(proxy.make_url("/v1/realtime")), "one")
    await proxy.close()
    await upstream.close()

    proxy = await start_proxy(upstream_url, mode="replay", db=postgres_url)
    assert await converse(str(proxy.make_url("/v1/realtime")), "two") == recorded
    assert len(seen.headers) == 1


async def test_a_client_that_drops_its_connection_is_recorded_as_gone(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")

    async def session(url: str) -> str:
        async with websockets.connect(url, compression=None) as ws:
            first = json.loads(await ws.recv())["type"]
            await ws.send(json.dumps(CONVERSATION[0]))
            assert json.loads(await ws.recv())["type"] == "session.updated"
            ws.transport.abort()  # no close frame: the TCP connection drops
        return first

    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/v1/realtime").with_scheme("ws"))
    assert await session(url) == "session.created"
    async with asyncio.timeout(30):
        await seen.closed.wait()  # the proxy has seen the drop and ended the session
    await proxy.close()
    await upstream.close()
    assert seen.closes == [1001]  # the upstream session was closed: going away
    [(_, _, _, _, outcome, _)] = interactions(db_path)
    assert outcome == "client_gone"
    assert stored_messages(db_path)[-1][1:] == ("client", "close", 0, 1006)

    proxy = await start_proxy(upstream_url, mode="replay")
    url = str(proxy.make_url("/v1/realtime").with_scheme("ws"))
    assert await session(url) == "session.created"


async def test_a_refused_handshake_is_answered_and_replayed_as_refused(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    bad = {"Authorization": "Bearer sk-revoked"}

    async def refused(url: str) -> tuple[int, str | None]:
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(url, headers=bad)
        assert caught.value.headers is not None
        return caught.value.status, caught.value.headers.get("Rrproxy-Source")

    proxy = await start_proxy(upstream, mode="record")
    assert await refused(str(proxy.make_url("/v1/realtime"))) == (401, "recorded")
    await proxy.close()
    await upstream.close()
    [(_, _, status, _, outcome, _)] = interactions(db_path)
    assert (status, outcome) == (401, "complete")

    proxy = await start_proxy(upstream_url, mode="replay")
    assert await refused(str(proxy.make_url("/v1/realtime"))) == (401, "replayed")


async def test_passthrough_compression_and_ping_pong_are_passed_on(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/v1/realtime"))
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(
            url, autoping=False, compress=15, headers={"Rrproxy-Mode": "passthrough"}
        ) as ws,
    ):
        assert ws.compress == 15  # permessage-deflate, as the upstream agreed
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        await ws.ping(b"are you there")
        pong = await ws.receive()
        assert (pong.type, pong.data) == (aiohttp.WSMsgType.PONG, b"are you there")
        headers = ws._response.headers
    assert headers["Rrproxy-Source"] == "passthrough"
    assert "permessage-deflate" in headers["Sec-WebSocket-Extensions"]
    assert "Rrproxy-Mode" not in seen.headers[0]
    assert "permessage-deflate" in seen.headers[0]["Sec-WebSocket-Extensions"]
    await proxy.close()
    assert interactions(db_path) == []  # passthrough records nothing


async def test_the_agreed_extension_is_recorded_and_agreed_again_on_replay(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")

    async def session(url: str) -> tuple[str, str | None]:
        async with websockets.connect(url) as ws:  # offers permessage-deflate
            got = json.loads(await ws.recv())["type"]
            assert ws.response is not None
            return got, ws.response.headers.get("Sec-WebSocket-Extensions")

    proxy = await start_proxy(upstream, mode="record")
    recorded = await session(str(proxy.make_url("/v1/realtime").with_scheme("ws")))
    assert recorded[1] is not None and recorded[1].startswith("permessage-deflate")
    await proxy.close()
    await upstream.close()
    [(_, _, _, _, _, _)] = interactions(db_path)
    with closing(sqlite3.connect(db_path)) as conn:
        [(head,)] = conn.execute("SELECT response_headers FROM interactions").fetchall()
    assert ["Sec-WebSocket-Extensions", recorded[1]] in json.loads(head)

    proxy = await start_proxy(upstream_url, mode="replay")
    replayed = await session(str(proxy.make_url("/v1/realtime").with_scheme("ws")))
    assert replayed[0] == "session.created"
    assert replayed[1] is not None and replayed[1].startswith("permessage-deflate")


async def test_a_plain_get_never_gets_a_recorded_handshake(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record")
    await converse(str(proxy.make_url("/v1/realtime")), "one")
    await proxy.close()
    await upstream.close()

    proxy = await start_proxy(upstream_url, mode="replay")
    async with aiohttp.ClientSession() as http, http.get(proxy.make_url("/v1/realtime")) as r:
        assert r.status == 404 and r.headers["Rrproxy-Miss"] == "1"
        message = (await r.json())["error"]["message"]
    assert 'header "sec-websocket-version": (absent) != "13"' in message


async def test_server_messages_wait_for_the_client_message_they_followed(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record")
    recorded = await converse(str(proxy.make_url("/v1/realtime")), "one")
    await proxy.close()
    await upstream.close()

    proxy = await start_proxy(upstream_url, mode="replay")
    paced = {"Rrproxy-Pace": "100"}  # the recorded gaps, a hundred times faster
    url = proxy.make_url("/v1/realtime")
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=paced) as ws:
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        with pytest.raises(TimeoutError):  # nothing more until the client speaks
            await asyncio.wait_for(ws.receive(), 0.3)
        await ws.send_str(json.dumps(CONVERSATION[0]))
        assert json.loads((await ws.receive()).data)["type"] == "session.updated"
    assert await converse(str(url), "two", headers=paced) == recorded


async def test_an_upstream_that_is_not_there_is_a_502_naming_it(start_proxy: StartProxy) -> None:
    proxy = await start_proxy("http://127.0.0.1:9", mode="record")  # the discard port: closed
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await http.ws_connect(proxy.make_url("/v1/realtime"))
    assert caught.value.status == 502


async def test_stopping_the_proxy_ends_open_sessions_and_keeps_them_as_incomplete(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(Seen()))
    proxy = await start_proxy(upstream, mode="record")
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(proxy.make_url("/v1/realtime"))
        assert json.loads((await ws.receive()).data)["type"] == "session.created"
        # aiohttp waits 60 s for running handlers; an open session is not waited for
        async with asyncio.timeout(30):
            await proxy.close()
            ended = await ws.receive()
        assert ended.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
    [(_, _, status, _, outcome, error)] = interactions(db_path)
    assert (status, outcome, error) == (101, "incomplete", "the proxy stopped mid-session")


async def test_a_close_without_a_code_is_recorded_as_1005_and_replayed(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    upstream = await start_upstream(realtime_app(seen := Seen()))
    upstream_url = str(upstream.make_url("")).rstrip("/")

    async def session(url: str) -> tuple[aiohttp.WSMsgType, int]:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, autoclose=False) as ws:
            assert json.loads((await ws.receive()).data)["type"] == "session.created"
            await ws.send_frame(b"", aiohttp.WSMsgType.CLOSE)  # a close frame with no code
            answer = await ws.receive()
            return answer.type, answer.data

    proxy = await start_proxy(upstream, mode="record")
    recorded = await session(str(proxy.make_url("/v1/realtime")))
    assert recorded == (aiohttp.WSMsgType.CLOSE, 1000)
    await proxy.close()
    await upstream.close()
    assert seen.closes == [1000]
    assert stored_messages(db_path)[-1][1:] == ("client", "close", 0, 1005)

    proxy = await start_proxy(upstream_url, mode="replay")
    assert await session(str(proxy.make_url("/v1/realtime"))) == recorded
