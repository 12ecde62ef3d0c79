"""What the UI's tests share: an upstream that streams the real OpenAI Responses recording
(its n-th answer differs in one event from the first), one that holds its stream on an
`asyncio.Event`, and a client for the proxy's pages."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import ProxyServer, example_events, sse_event

UI = "/_rrproxy/ui"
KEY = "sk-proj-UiTestKey0123456789abcdefghijklmnopqrstuvwxyz"
BODY = {"model": "gpt-4o", "input": "Say hello world", "stream": True}


@dataclass
class Upstream:
    """The test's upstream: how many calls it had, and the gate its held stream waits on."""

    calls: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    first_sent: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/held", self.held)
        return app

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """The recorded stream; from the second call on, the second delta says " there!"."""
        self.calls.append(request.path)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in answer(len(self.calls)):
            await response.write(sse_event(event))
        await response.write_eof()
        return response

    async def held(self, request: web.Request) -> web.StreamResponse:
        """One event, then nothing until the test opens the gate, then one more."""
        self.calls.append(request.path)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: first\ndata: {"type": "first", "n": 1}\n\n')
        self.first_sent.set()
        await self.gate.wait()
        await response.write(b'event: after-the-gate\ndata: {"type": "late", "n": 2}\n\n')
        await response.write_eof()
        return response


def answer(n: int) -> list[dict[str, Any]]:
    events = copy.deepcopy(example_events())
    if n > 1:
        deltas = [e for e in events if e["type"] == "response.output_text.delta"]
        deltas[1]["delta"] = " there!"
    return events


async def record(
    proxy: ProxyServer, cassette: str = "default", path: str = "/v1/responses", **body: Any
) -> bytes:
    """One request through the proxy (auto mode records it), its whole answer."""
    headers = {"Authorization": f"Bearer {KEY}", "Rrproxy-Cassette": cassette}
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url(path), json={**BODY, **body}, headers=headers) as r:
            assert r.status == 200, await r.text()
            return await r.read()


async def page(proxy: ProxyServer, path: str, status: int = 200) -> str:
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url(path)) as r:
            text = await r.text()
            assert r.status == status, (path, r.status, text[:500])
            return text


def csrf(html: str) -> str:
    found = re.search(r'<meta name="rrproxy-csrf" content="([^"]+)">', html)
    assert found is not None
    return found.group(1)


async def flush(proxy: ProxyServer) -> None:
    """Everything recorded so far is in the store (GET /_rrproxy/cassettes waits for it)."""
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as r:
            assert r.status == 200
            json.loads(await r.text())
