"""Replay: answer a request from a recording, byte for byte, at the chosen pace.

The recorded status and headers come back as recorded, less hop-by-hop headers, with
Content-Length recomputed; the body is exactly the recorded events. A recording whose
upstream broke mid-stream is replayed the same way: its events, then a broken connection.
At recorded pace (or a factor of it) each piece of an event goes out at the time it
arrived (`proxy.core.pieces`); a large body is read a page of about a MiB at a time.
"""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from aiohttp import HttpVersion11, web
from multidict import CIMultiDict
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.config import Pace
from proxy.core.headers import end_to_end, get
from proxy.core.pieces import decode, slices
from proxy.core.records import Headers, Outcome, ResponseHead
from proxy.serve.connection import break_connection
from proxy.serve.entry import Entry
from proxy.store import queries

Page = queries.Page


READ_AHEAD = 256
"""Small bodies read at once: the one a replay needs and those recorded after it."""
READ_AHEAD_BYTES = 4 * 2**20
"""...at most this many bytes of them."""
FIRST_READ = 16_384
"""Small bodies the first replay of a cassette reads (from its first recording on), within
half the cache's bytes: all of a cassette of common size, in one query."""


class Bodies:
    """Where replayed events come from: the store, a page at a time, with small bodies kept
    in memory (least recently used out first, within `max_bytes`) so that a repeated replay
    reads nothing. The first replay of a cassette reads its first `FIRST_READ` small bodies
    (within half the cache); a small body not in memory after that is read with those
    recorded after it (`READ_AHEAD` of them, in one query): a replay run asks for them in
    that order. What is read is bounded by bytes, whatever the cassette holds."""

    def __init__(
        self, engine: AsyncEngine, *, max_bytes: int = 64 * 2**20, small: int = 256 * 2**10
    ):
        self._engine = engine
        self._max_bytes = max_bytes
        self._small = small
        self._cached: OrderedDict[int, Page] = OrderedDict()
        self._size = 0
        self._reading: dict[str, asyncio.Lock] = {}
        self._first_read: set[str] = set()

    def forget(self, interaction_id: int) -> None:
        """Drop one body: SQLite may give a deleted interaction's id to a new one."""
        dropped = self._cached.pop(interaction_id, None)
        if dropped is not None:
            self._size -= sum(len(row[1]) for row in dropped)

    def clear(self) -> None:
        """Forget every cached body (the store may have changed under this process)."""
        self._cached.clear()
        self._size = 0
        self._first_read.clear()

    def is_small(self, body_size: int) -> bool:
        return body_size <= self._small

    async def _read_ahead(self, cassette: str, interaction_id: int) -> None:
        """Read the small bodies of `cassette` from `interaction_id` on, unless a read that
        was under way meanwhile brought this one (replays of one cassette read one at a
        time: those waiting are most likely in the page being read)."""
        lock = self._reading.setdefault(cassette, asyncio.Lock())
        async with lock:
            if interaction_id in self._cached:
                return
            if cassette not in self._first_read:
                self._first_read.add(cassette)
                first, count, budget = 0, FIRST_READ, self._max_bytes // 2
            else:
                first, count = interaction_id, READ_AHEAD
                budget = min(READ_AHEAD_BYTES, self._max_bytes // 4)
            bodies = await queries.small_bodies_from(
                self._engine, cassette, self._small, first, count, budget
            )
            for read_id, events in bodies.items():
                self._keep(read_id, events, sum(len(row[1]) for row in events))
        if interaction_id not in self._cached and first == 0:
            await self._read_ahead(cassette, interaction_id)  # beyond the first read

    async def pages(
        self, cassette: str, interaction_id: int, body_size: int
    ) -> AsyncIterator[Page]:
        if body_size <= self._small:
            yield await self.small_body(cassette, interaction_id, body_size)
            return
        async for page in _read_ahead(queries.event_pages(self._engine, interaction_id, 1024)):
            yield page

    async def small_body(self, cassette: str, interaction_id: int, body_size: int) -> Page:
        """A small body's events, from memory once read (with those recorded after it)."""
        if interaction_id not in self._cached:
            await self._read_ahead(cassette, interaction_id)
        cached = self._cached.get(interaction_id)
        if cached is not None:
            self._cached.move_to_end(interaction_id)
            return cached
        events: Page = []
        async for page in queries.event_pages(self._engine, interaction_id, page=1024):
            events += page
        self._keep(interaction_id, events, body_size)
        return events

    def _keep(self, interaction_id: int, events: Page, size: int) -> None:
        if interaction_id in self._cached:
            return
        self._cached[interaction_id] = events
        self._size += size
        while self._size > self._max_bytes:
            _, dropped = self._cached.popitem(last=False)
            self._size -= sum(len(row[1]) for row in dropped)


async def _read_ahead(pages: AsyncIterator[Page], depth: int = 2) -> AsyncIterator[Page]:
    """Read the next pages while the current one is being sent (at most `depth` ahead)."""
    queue: asyncio.Queue[Page | BaseException | None] = asyncio.Queue(maxsize=depth)

    async def fill() -> None:
        try:
            async for page in pages:
                await queue.put(page)
            await queue.put(None)
        except Exception as exc:
            await queue.put(exc)

    filler = asyncio.create_task(fill())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        filler.cancel()
        await asyncio.gather(filler, return_exceptions=True)


def pace_for(entry: Entry, pace: Pace, untimed_pace: Pace) -> Pace:
    """The pace `entry` is replayed at. An interaction imported without event timing (vcrpy,
    a browser's HAR) has one event standing for a whole body whose bytes' times were never
    recorded: it goes at `untimed_pace` (instant unless the user asks otherwise), whatever
    the pace of the recordings around it."""
    return untimed_pace if entry.untimed else pace


async def replay(
    request: web.Request,
    cassette: str,
    entry: Entry,
    bodies: Bodies,
    pace: Pace,
    t0: float,
    on_sent: Callable[[bytes | memoryview], object] | None = None,
) -> tuple[web.StreamResponse, int]:
    """Serve `entry` (in the store: `entry.committed` is set); returns the response and the
    number of events sent. `on_sent` sees every body byte written to the client, in order
    (the run report hashes them)."""
    on_sent = on_sent or _nothing
    assert entry.interaction_id is not None
    loop = asyncio.get_running_loop()

    async def wait_until(t_ms: float) -> None:
        if pace.factor is not None:
            delay = t0 + t_ms / 1000 / pace.factor - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)

    head = entry.head
    if request.method == "HEAD" or head.status in (204, 304) or head.status < 200:
        return await _bodiless(request, entry), 0
    broken = entry.outcome is Outcome.UPSTREAM_BROKEN
    recorded_length = get(head.headers, "content-length")
    if pace.factor is None and not broken and bodies.is_small(entry.body_size):
        if recorded_length is not None or request.version >= HttpVersion11:
            return await _whole(
                request, cassette, entry, bodies, chunked=recorded_length is None, on_sent=on_sent
            )

    response = web.StreamResponse(status=head.status, headers=CIMultiDict(_replayed(head)))
    if recorded_length is not None:
        # complete: the true length; broken: the promise the upstream made and did not keep
        response.content_length = int(recorded_length) if broken else entry.body_size

    await wait_until(entry.ttfb_ms)
    sent = 0
    try:
        await response.prepare(request)
        async for page in bodies.pages(cassette, entry.interaction_id, entry.body_size):
            if pace.factor is None:
                joined = b"".join(row[1] for row in page)
                await response.write(joined)
                on_sent(joined)
            else:
                for t_ms, data, pieces, _ in page:
                    if pieces is None:  # it arrived in one piece
                        await wait_until(t_ms)
                        await response.write(data)
                        on_sent(data)
                        continue
                    for t, piece in slices(data, decode(pieces)):
                        await wait_until(t)
                        await response.write(piece)
                        on_sent(piece)
            sent += _events(page)
        if broken:
            break_connection(request)
        else:
            await response.write_eof()
    except ConnectionError:
        pass  # the client hung up: nothing to record, nothing to finish
    return response, sent


async def _bodiless(request: web.Request, entry: Entry) -> web.StreamResponse:
    """A response without a body (to HEAD; 204, 304): its Content-Length, if any, is the
    recorded one (what a GET would have had)."""
    response = web.StreamResponse(
        status=entry.head.status, headers=CIMultiDict(_replayed(entry.head, frozenset()))
    )
    await response.prepare(request)
    await response.write_eof()
    return response


def _nothing(_data: bytes | memoryview) -> None:
    pass


async def _whole(
    request: web.Request,
    cassette: str,
    entry: Entry,
    bodies: Bodies,
    *,
    chunked: bool,
    on_sent: Callable[[bytes], object],
) -> tuple[web.StreamResponse, int]:
    """A small, complete recording answered in one write, head and body: length-delimited
    as recorded, or as one chunk when it was streamed (chunked framing is hop-by-hop)."""
    assert entry.interaction_id is not None
    events = await bodies.small_body(cassette, entry.interaction_id, entry.body_size)
    body = b"".join(row[1] for row in events)
    response = web.Response(
        status=entry.head.status, body=body, headers=CIMultiDict(_replayed(entry.head))
    )
    if chunked:
        response.enable_chunked_encoding()
    try:  # sent now, not after the handler returns: the log line is written after it
        await response.prepare(request)
        await response.write_eof()
        on_sent(body)
    except ConnectionError:
        pass  # the client hung up
    return response, _events(events)


def _events(page: Page) -> int:
    """How many events begin in `page` (a large event is several rows)."""
    return sum(not row[3] for row in page)


_LENGTH = frozenset({"content-length"})


@functools.lru_cache(maxsize=1024)
def _replayed(head: ResponseHead, drop: frozenset[str] = _LENGTH) -> Headers:
    """The headers a replay sends: the recorded end-to-end ones but `drop` (by default
    Content-Length, left to the replay), and where the answer came from."""
    return (*end_to_end(head.headers, drop=drop), ("Rrproxy-Source", "replayed"))
