"""Replay: answer a request from a recording, byte for byte, at the chosen pace.

The recorded status and headers come back as recorded, less hop-by-hop headers, with
Content-Length recomputed; the body is exactly the recorded events. A recording whose
upstream broke mid-stream is replayed the same way: its events, then a broken connection.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from .config import Pace
from .forward import break_connection
from .headers import end_to_end, get
from .index import Entry
from .records import Outcome
from .store import queries


async def replay(
    request: web.Request, entry: Entry, engine: AsyncEngine, pace: Pace, t0: float
) -> tuple[web.StreamResponse, int]:
    """Serve `entry`; returns the response and the number of events sent."""
    await entry.committed.wait()  # a recording of this very run: wait for its last batch
    assert entry.interaction_id is not None
    loop = asyncio.get_running_loop()

    async def wait_until(t_ms: float) -> None:
        if pace.factor is not None:
            delay = t0 + t_ms / 1000 / pace.factor - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    head = entry.head
    response = web.StreamResponse(status=head.status)
    for name, value in end_to_end(head.headers, drop=("content-length",)):
        response.headers.add(name, value)
    broken = entry.outcome is Outcome.UPSTREAM_BROKEN
    recorded_length = get(head.headers, "content-length")
    if recorded_length is not None:
        # complete: the true length; broken: the promise the upstream made and did not keep
        response.content_length = int(recorded_length) if broken else entry.body_size
    response.headers["Rrproxy-Source"] = "replayed"

    await wait_until(entry.ttfb_ms)
    sent = 0
    try:
        await response.prepare(request)
        async for page in queries.events(engine, entry.interaction_id):
            if pace.factor is None:
                await response.write(b"".join(data for _, data in page))
            else:
                for t_ms, data in page:
                    await wait_until(t_ms)
                    await response.write(data)
            sent += len(page)
        if broken:
            break_connection(request)
        else:
            await response.write_eof()
    except ConnectionError:
        pass  # the client hung up: nothing to record, nothing to finish
    return response, sent
