"""Admin endpoints under `/_rrproxy/` on the proxy's own port."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from proxy import __version__
from proxy.cassettes.file_format import format_time
from proxy.core.records import check_cassette_name
from proxy.errors import BadRequest, StoreError
from proxy.serve.state import RUN, SERVICES, SETTINGS
from proxy.store import queries

PREFIX = "/_rrproxy"


async def health(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    recorder = request.app[SERVICES].recorder
    return web.json_response(
        {
            "status": "ok",
            "version": __version__,
            "mode": settings.mode.value,
            "cassette": request.app[RUN].cassette,
            "upstream": settings.upstream,
            "store": "failing" if recorder.failing else "ok",
            "recordings_dropped": recorder.recordings_dropped,
        }
    )


async def cassettes(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    try:  # list what was recorded, up to now
        await asyncio.wait_for(services.recorder.flush(), timeout=5)
    except TimeoutError:
        raise StoreError(
            "the store has not taken the latest recordings within 5 s (locked, or full?); "
            "see rrproxy's log"
        ) from None
    summaries = await queries.summaries(services.reader)
    return web.json_response(
        {
            "cassettes": [
                {
                    "name": s.name,
                    "interactions": s.interactions,
                    "events": s.events,
                    "size": s.size,
                    "incomplete": s.incomplete,
                    "last_recorded": format_time(s.last_recorded) if s.last_recorded else None,
                }
                for s in summaries
            ]
        }
    )


async def reset(request: web.Request) -> web.Response:
    """Start a new replay run: every counter back to zero, cassettes and bodies read again
    from the store (which `rrproxy import`/`rm` may have changed meanwhile)."""
    request.app[SERVICES].index.reset()
    request.app[SERVICES].bodies.clear()
    return web.json_response({"status": "reset", "cassette": request.app[RUN].cassette})


async def set_cassette(request: web.Request) -> web.Response:
    """Make another cassette the active one (and start a new run)."""
    body = await _json(request)
    try:
        name = check_cassette_name(str(body.get("name", "")))
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    request.app[RUN].cassette = name
    request.app[SERVICES].index.reset()
    request.app[SERVICES].bodies.clear()
    return web.json_response({"status": "ok", "cassette": name})


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        raise BadRequest('the body must be JSON, such as {"name": "my-cassette"}') from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_get(f"{PREFIX}/cassettes", cassettes)
    app.router.add_post(f"{PREFIX}/reset", reset)
    app.router.add_put(f"{PREFIX}/cassette", set_cassette)
