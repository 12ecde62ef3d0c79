"""The official SDKs stream through the proxy: recorded, then replayed with no upstream."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream, example_events, sse_event

pytestmark = pytest.mark.stores


def responses_upstream(calls: list[dict[str, Any]]) -> web.Application:
    """Serves the real recorded OpenAI Responses stream, with gaps between events."""

    async def responses(request: web.Request) -> web.StreamResponse:
        calls.append(await request.json())
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "x-request-id": "req_1"}
        )
        await response.prepare(request)
        for payload in example_events():
            await response.write(sse_event(payload))
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


async def collect(client: openai.AsyncOpenAI) -> list[dict[str, Any]]:
    stream = await client.responses.create(model="gpt-4o", input="Say hello", stream=True)
    return [event.to_dict() async for event in stream]


async def test_openai_responses_stream_records_then_replays_identically(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[dict[str, Any]] = []
    upstream = await start_upstream(responses_upstream(calls))
    proxy = await start_proxy(upstream, mode="record")
    base = str(proxy.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-record-key", max_retries=0) as client:
        recorded = await collect(client)
    upstream_url = str(upstream.make_url(""))
    await upstream.close()
    await proxy.close()

    proxy = await start_proxy(upstream_url, mode="replay")  # same store, upstream stopped
    base = str(proxy.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-other-key", max_retries=0) as client:
        replayed = await collect(client)

    assert len(calls) == 1
    assert replayed == recorded
    assert recorded == example_events()  # what the SDK saw is what the API sent, ids included
    assert "".join(e["delta"] for e in recorded if e["type"].endswith(".delta")) == "Hello, World!"


async def test_openai_sdk_shows_the_replay_miss_message(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(responses_upstream([]))
    proxy = await start_proxy(upstream, cassette="sdk-suite")
    base = str(proxy.make_url("/v1"))
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-x", max_retries=0) as client:
        await collect(client)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.with_options(default_headers={"Rrproxy-Mode": "replay"}).responses.create(
                model="gpt-4o-mini", input="Say hello", stream=True
            )
    message = str(caught.value)
    assert "rrproxy_replay_miss" in message or "sdk-suite" in message
    assert 'body field "model": "gpt-4o-mini" != "gpt-4o"' in message


ANTHROPIC_EVENTS: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-rrproxy-test",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello,"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " World!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 6},
    },
    {"type": "message_stop"},
]


async def test_anthropic_messages_stream_records_then_replays(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    seen_keys: list[str | None] = []

    async def messages(request: web.Request) -> web.StreamResponse:
        # the SDK sends its key as X-Api-Key or as a bearer token, by version
        seen_keys.append(request.headers.get("X-Api-Key") or request.headers.get("Authorization"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for payload in ANTHROPIC_EVENTS:
            await response.write(sse_event(payload))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream)

    async def text(api_key: str) -> tuple[str, list[str]]:
        async with anthropic.AsyncAnthropic(
            base_url=str(proxy.make_url("")), api_key=api_key, max_retries=0
        ) as client:
            async with client.messages.stream(
                model="claude-rrproxy-test",
                max_tokens=64,
                messages=[{"role": "user", "content": "Say hello"}],
            ) as stream:
                types = [event.type async for event in stream]
                message = await stream.get_final_message()
        block = message.content[0]
        assert block.type == "text"
        return block.text, types

    recorded = await text("sk-ant-recording")
    await upstream.close()
    async with aiohttp.ClientSession() as session:  # a new run: auto mode replays
        async with session.post(proxy.make_url("/_rrproxy/reset"), json={}) as resp:
            assert resp.status == 200
    replayed = await text("sk-ant-someone-else")
    assert recorded[0] == replayed[0] == "Hello, World!"
    assert recorded[1] == replayed[1]
    assert len(seen_keys) == 1  # the replay never reached the upstream
    assert "sk-ant-recording" in str(seen_keys[0])
