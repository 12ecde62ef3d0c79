"""WebSocket sessions through the proxy with real clients (aiohttp, `websockets`): relayed
and recorded per message, then replayed as a conversation with the upstream stopped."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

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
            str(row).encode() for table in ("interactions", "messages")
            for row in conn.execute(f"SELECT * FROM {table}")  # noqa: S608
        )


CONVERSATION: list[dict[str, Any]] = [
    {"type": "session.update", "session": {"instructions": "Be brief.", "tools": [{"name": "get_weather"}]}},
    {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
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
                if data["type"] in ("response.done", "session.updated", "conversation.item.created"):
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

    [(iid, method, status, headers, outcome, _)] = interactions(db_path)
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
