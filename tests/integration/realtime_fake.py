"""A small fake of a realtime WebSocket API (the OpenAI Realtime API's shape), written for
the WebSocket tests: it answers client events as the real one does, in kind, and can close,
drop its TCP connection or send a large message on request."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

BIG = 10 * 2**20


@dataclass
class Seen:
    """What the fake received: handshake headers and every client message, in order."""

    headers: list[dict[str, str]] = field(default_factory=list)
    protocols: list[str | None] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    closes: list[int | None] = field(default_factory=list)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # a session has ended


def _event(kind: str, n: int, **fields: Any) -> str:
    return json.dumps({"type": kind, "event_id": f"event_srv_{n}", **fields})


def realtime_app(seen: Seen) -> web.Application:
    async def realtime(request: web.Request) -> web.StreamResponse:
        seen.headers.append(dict(request.headers))
        if request.headers.get("Authorization") == "Bearer sk-revoked":
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": "bad key"}}, status=401
            )
        ws = web.WebSocketResponse(protocols=("realtime",), max_msg_size=0, compress=True)
        await ws.prepare(request)
        seen.protocols.append(ws.ws_protocol)
        n = 0

        async def send(kind: str, **fields: Any) -> None:
            nonlocal n
            n += 1
            await ws.send_str(_event(kind, n, **fields))

        await send("session.created", session={"id": "sess_1", "model": "gpt-realtime"})
        tool_done = False
        async for msg in ws:
            if msg.type is WSMsgType.CLOSED or msg.type is WSMsgType.ERROR:
                break
            if msg.type is WSMsgType.BINARY:
                seen.messages.append(msg.data)
                await ws.send_bytes(msg.data[::-1])
                continue
            if msg.type is not WSMsgType.TEXT:
                continue
            if msg.data == "big":
                seen.messages.append(msg.data)
                await ws.send_str("x" * BIG)
                continue
            if len(msg.data) >= BIG:
                seen.messages.append(f"{len(msg.data)} chars")
                await ws.send_str(json.dumps({"type": "got", "size": len(msg.data)}))
                continue
            event = json.loads(msg.data)
            seen.messages.append(event)
            kind = event.get("type")
            if kind == "session.update":
                await send("session.updated", session=event.get("session", {}))
            elif kind == "conversation.item.create":
                item = event["item"]
                tool_done = tool_done or item.get("type") == "function_call_output"
                await send("conversation.item.created", item=item)
            elif kind == "input_audio_buffer.append":
                await send("input_audio_buffer.speech_started", audio_start_ms=0)
            elif kind == "response.create" and not tool_done:
                call = {"type": "function_call", "call_id": "call_1", "name": "get_weather"}
                await send("response.created", response={"id": "resp_1"})
                await send("response.output_item.added", item=call)
                for part in ('{"city":', '"Paris"}'):
                    await send("response.function_call_arguments.delta", delta=part)
                await send(
                    "response.function_call_arguments.done",
                    call_id="call_1",
                    name="get_weather",
                    arguments='{"city":"Paris"}',
                )
                await send("response.done", response={"id": "resp_1", "status": "completed"})
            elif kind == "response.create":
                await send("response.created", response={"id": "resp_2"})
                for part in ("It is ", "sunny in Paris."):
                    await send("response.output_text.delta", delta=part)
                await send("response.done", response={"id": "resp_2", "status": "completed"})
            elif kind == "rrtest.close":
                await ws.close(code=4000, message=b"closing as asked")
                break
            elif kind == "rrtest.drop":
                await send("rrtest.dropping")
                assert request.transport is not None
                request.transport.abort()  # no close frame: the TCP connection drops
                seen.dropped.set()
                break
        seen.closes.append(ws.close_code)
        seen.closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/v1/realtime", realtime)
    return app
