"""The live page's feed: recordings as they stream, pushed to the browser over SSE.

The feed reads the store, where the recorder puts each event within its linger (50 ms):
it never touches the recording path, so an open page costs the proxy nothing but a few
small reads a second on a connection of its own. It is served under `/_rrproxy/`, which
the proxy never forwards nor records. It ends when the browser leaves or the server stops.
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

POLL_S = 0.2
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
            for interaction_id in list(followed):
                after = followed[interaction_id]
                events = await reads.events_after(ui.reader, interaction_id, after)
                if events:
                    followed[interaction_id] = events[-1][0]
                    out.append(_send("events", {"id": interaction_id, "events": _events(events)}))
                state = states.get(interaction_id)
                if state is None or (state[0] != Outcome.RECORDING.value and len(events) < 500):
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


def _events(events: list[tuple[int, float, int, bytes]]) -> list[dict[str, Any]]:
    out = []
    for seq, t, size, head in events:
        name, data = render.sse_parts(head)
        out.append({"n": seq + 1, "t": t, "size": size, "name": name, "data": (data or "")[:120]})
    return out


async def stop(app: web.Application) -> None:
    """On shutdown: end every feed, so that the server does not wait for them."""
    app[STOPPING].set()
