"""The live page's feed: recordings as they stream, pushed to the browser over SSE.

The feed reads the store, where the recorder puts each event within its linger (50 ms):
it never touches the recording path, and what it reads does not grow with a stream (each
look at a stream: its new events grouped into 50 ms marks by the database, and its latest
ten), so an open page costs the proxy a few small reads a second. It is served under
`/_rrproxy/`, which the proxy never forwards nor records. It ends when the browser leaves
or the server stops.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from proxy.core.records import Outcome
from proxy.serve.admin import UI_PREFIX
from proxy.ui import reads, render, templating
from proxy.ui.context import UI

POLL_S = 0.5
"""How often the feed looks for new recordings and events."""
BACKLOG = 10
"""Recordings already in the store that a new page is shown first."""
FOLLOWED = 20
"""Streams followed at once, event by event (the latest ones)."""

STOPPING = web.AppKey("rrproxy_ui_stopping", asyncio.Event)


async def page(request: web.Request) -> web.Response:
    return templating.page("live.html", request, {"title": "Live"})


def _send(name: str, payload: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def feed(request: web.Request) -> web.StreamResponse:
    ui = request.app[UI]
    stopping = request.app[STOPPING]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    await response.prepare(request)
    await response.write(b": rrproxy live feed\n\n")
    last_id = max(await reads.latest_id(ui.reader) - BACKLOG, 0)
    followed: dict[int, int] = {}  # interaction id -> last seq sent
    try:
        while not stopping.is_set():
            out: list[bytes] = []
            for live in await reads.live_interactions(ui.reader, last_id):
                last_id = live.id
                out.append(_send("interaction", _interaction(live)))
                followed[live.id] = -1
                while len(followed) > FOLLOWED:
                    followed.pop(next(iter(followed)))
            states = await reads.outcomes(ui.reader, list(followed))
            gains = await reads.progress(ui.reader, followed)
            for interaction_id in list(followed):
                gained = gains.get(interaction_id)
                if gained is not None:
                    followed[interaction_id] = gained.last_seq
                    out.append(_send("events", _progress(interaction_id, gained)))
                state = states.get(interaction_id)
                if state is None or (state[0] != Outcome.RECORDING.value and gained is None):
                    followed.pop(interaction_id)
                    out.append(
                        _send(
                            "end",
                            {
                                "id": interaction_id,
                                "outcome": state[0] if state else "deleted",
                                "events": state[1] if state else 0,
                            },
                        )
                    )
            if out:
                await response.write(b"".join(out))
            try:
                await asyncio.wait_for(stopping.wait(), POLL_S)
            except TimeoutError:
                pass
    except ConnectionError:
        pass  # the page was closed
    return response


def _interaction(live: reads.Live) -> dict[str, Any]:
    return {
        "id": live.id,
        "cassette": live.cassette,
        "method": live.method,
        "url": live.url,
        "status": live.status,
        "outcome": live.outcome,
        "link": f"{UI_PREFIX}/interactions/{live.id}",
    }


def _progress(interaction_id: int, gained: reads.Progress) -> dict[str, Any]:
    latest = []
    for seq, t, size, head in gained.latest:
        name, data = render.sse_parts(head)
        latest.append(
            {"n": seq + 1, "t": t, "size": size, "name": name, "data": (data or "")[:120]}
        )
    return {
        "id": interaction_id,
        "marks": [{"t": t, "events": n, "size": size} for t, n, size in gained.marks],
        "latest": latest,
        "total": gained.last_seq + 1,
    }


async def stop(app: web.Application) -> None:
    """On shutdown: end every feed, so that the server does not wait for them."""
    app[STOPPING].set()
