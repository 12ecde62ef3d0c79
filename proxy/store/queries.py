"""Every read of the store: cassette summaries, a cassette's interactions, their events.

An interaction has one read form, `StoredInteraction` (its head: request, response head,
outcome, timings and sizes; the body is read apart, a page of events at a time). Replay's
index, the `show` command and export all read it through `interactions`.

Each function takes an engine (one short connection per call, or per page of events) or a
connection already open (the import's transaction reads what it is about to replace).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.core.messages import Kind
from proxy.core.messages import Message as MessageRecord
from proxy.core.pieces import Pieces, decode, joined
from proxy.core.records import Event as EventRecord
from proxy.core.records import Headers, Outcome, Request, ResponseHead, header_pairs
from proxy.errors import CassetteNotFound
from proxy.store.models import Cassette, Event, Interaction, Message

Source = AsyncEngine | AsyncConnection
Row = tuple[float, bytes, str | None, bool]
"""A stored part of the body: (offset in ms, bytes, pieces as stored or None, whether it
continues the event of the row before): an event, or a part of a large one
(`proxy.core.pieces`)."""
Page = list[Row]
"""Parts in order: the replay path's form, cheaper than `Event` objects."""
PAGE_BYTES = 2**20
"""A page of parts holds about this many bytes at most (one part, if it is larger)."""

_UNFINISHED = (Outcome.INCOMPLETE.value, Outcome.RECORDING.value)


@dataclass(frozen=True)
class CassetteInfo:
    name: str
    interactions: int
    events: int
    size: int  # bytes of request and response bodies
    last_recorded: datetime | None
    incomplete: int
    untimed: int = 0  # interactions imported without event timing


@dataclass(frozen=True)
class StoredInteraction:
    """One recorded interaction as the store holds it, without its body."""

    id: int
    number: int  # 1-based, in recording order within its cassette
    request: Request
    response: ResponseHead
    outcome: Outcome
    error: str | None
    recorded_at: datetime
    ttfb_ms: float
    duration_ms: float | None
    events: int  # how many
    size: int  # bytes of the response body
    untimed: bool = False  # imported without event timing (replayed at `untimed_pace`)

    @property
    def complete(self) -> bool:
        return self.outcome.complete


@asynccontextmanager
async def connected(source: Source) -> AsyncIterator[AsyncConnection]:
    if isinstance(source, AsyncConnection):
        yield source
    else:
        async with source.connect() as conn:
            yield conn


async def summaries(source: Source) -> list[CassetteInfo]:
    stmt = (
        select(
            Cassette.name,
            func.count(Interaction.id),
            func.coalesce(func.sum(Interaction.event_count), 0),
            func.coalesce(
                func.sum(Interaction.body_size + func.length(Interaction.request_body)), 0
            ),
            func.max(Interaction.started_at),
            func.count(Interaction.id).filter(Interaction.outcome.in_(_UNFINISHED)),
            func.count(Interaction.id).filter(Interaction.untimed),
        )
        .outerjoin(Interaction)
        .group_by(Cassette.id)
        .order_by(Cassette.name)
    )
    async with connected(source) as conn:
        rows = (await conn.execute(stmt)).all()
    return [CassetteInfo(r[0], r[1], int(r[2]), int(r[3]), utc(r[4]), r[5], r[6]) for r in rows]


async def cassette_id(source: Source, name: str) -> int | None:
    async with connected(source) as conn:
        found = await conn.scalar(select(Cassette.id).where(Cassette.name == name))
    return None if found is None else int(found)


async def require(source: Source, name: str) -> int:
    """The cassette's id; `CassetteNotFound` if there is none."""
    found = await cassette_id(source, name)
    if found is None:
        raise CassetteNotFound(f"no cassette named {name!r} in the store (rrproxy ls lists them)")
    return found


async def interactions(
    source: Source,
    cassette: str,
    *,
    required: bool = False,
    finished_only: bool = False,
    after: int = 0,
) -> list[StoredInteraction]:
    """A cassette's interactions in recording order (none for a cassette that does not
    exist, or `CassetteNotFound` when `required`). `finished_only` leaves out those still
    being recorded; `after` those whose id is not above it (`number` then counts from the
    first one returned)."""
    stmt = (
        select(
            Interaction.id,
            Interaction.method,
            Interaction.url,
            Interaction.request_headers,
            Interaction.request_body,
            Interaction.status,
            Interaction.response_headers,
            Interaction.outcome,
            Interaction.error,
            Interaction.started_at,
            Interaction.ttfb_ms,
            Interaction.duration_ms,
            Interaction.event_count,
            Interaction.body_size,
            Interaction.untimed,
        )
        .join(Cassette)
        .where(Cassette.name == cassette)
        .order_by(Interaction.ordinal, Interaction.id)
    )
    if finished_only:
        stmt = stmt.where(Interaction.outcome != Outcome.RECORDING.value)
    if after:
        stmt = stmt.where(Interaction.id > after)
    async with connected(source) as conn:
        if required:
            await require(conn, cassette)
        rows = (await conn.execute(stmt)).all()
    return [
        StoredInteraction(
            id=r.id,
            number=number,
            request=Request(r.method, r.url, header_pairs(r.request_headers), r.request_body),
            response=ResponseHead(r.status, header_pairs(r.response_headers)),
            outcome=Outcome(r.outcome),
            error=r.error,
            recorded_at=utc(r.started_at) or datetime.now(UTC),
            ttfb_ms=r.ttfb_ms,
            duration_ms=r.duration_ms,
            events=r.event_count,
            size=r.body_size,
            untimed=bool(r.untimed),
        )
        for number, r in enumerate(rows, 1)
    ]


async def counts(source: Source, cassette: str) -> tuple[int, int]:
    """How many interactions and events a cassette holds."""
    async with connected(source) as conn:
        found = (
            await conn.execute(
                select(
                    func.count(Interaction.id), func.coalesce(func.sum(Interaction.event_count), 0)
                )
                .join(Cassette)
                .where(Cassette.name == cassette)
            )
        ).one()
    return int(found[0]), int(found[1])


async def interaction_count(source: Source, cassette: str) -> int:
    """How many interactions a cassette holds, recording or not: its last ordinal (places
    are 1..n without a gap), one step down an index."""
    stmt = (
        select(Interaction.ordinal)
        .join(Cassette)
        .where(Cassette.name == cassette, Interaction.ordinal.is_not(None))
        .order_by(Interaction.ordinal.desc())
        .limit(1)
    )
    async with connected(source) as conn:
        found = await conn.scalar(stmt)
    return int(found or 0)


async def _page(
    source: Source, interaction_id: int, after: int, page: int, page_bytes: int
) -> tuple[Sequence[Any], bool]:
    """The stored parts after seq `after`: at most `page` rows and about `page_bytes` bytes
    (their sizes are read first: a large event never comes whole), and whether more follow."""
    async with connected(source) as conn:
        sizes = (
            await conn.execute(
                select(Event.seq, func.length(Event.data))
                .where(Event.interaction_id == interaction_id, Event.seq > after)
                .order_by(Event.seq)
                .limit(page)
            )
        ).all()
        if not sizes:
            return [], False
        n, total = 0, 0
        for _, size in sizes:
            if n and total + (size or 0) > page_bytes:
                break
            n, total = n + 1, total + (size or 0)
        rows = (
            await conn.execute(
                select(Event.seq, Event.t_ms, Event.data, Event.pieces, Event.continues)
                .where(
                    Event.interaction_id == interaction_id,
                    Event.seq > after,
                    Event.seq <= sizes[n - 1][0],
                )
                .order_by(Event.seq)
            )
        ).all()
    return rows, n < len(sizes) or len(sizes) == page


async def event_pages(
    source: Source, interaction_id: int, page: int = 256, page_bytes: int = PAGE_BYTES
) -> AsyncIterator[Page]:
    """An interaction's body in order, as stored parts, a page at a time (at most `page`
    rows and about `page_bytes` bytes). From an engine each page is its own short read, so
    a slow client never holds a database connection."""
    after = -1
    more = True
    while more:
        rows, more = await _page(source, interaction_id, after, page, page_bytes)
        if not rows:
            return
        yield [(r.t_ms, r.data, r.pieces, r.continues) for r in rows]
        after = rows[-1].seq


async def event_rows(source: Source, interaction_id: int) -> AsyncIterator[Row]:
    """An interaction's stored parts in order."""
    async for page in event_pages(source, interaction_id):
        for row in page:
            yield row


async def message_pages(
    source: Source, interaction_id: int, page: int = 256
) -> AsyncIterator[list[MessageRecord]]:
    """A WebSocket session's messages in order, a page at a time (each page its own short
    read from an engine, as `event_pages`)."""
    after = -1
    while True:
        rows = await message_page(source, interaction_id, after, page)
        if not rows:
            return
        yield [m for _, m in rows]
        if len(rows) < page:
            return
        after = rows[-1][0]


async def message_page(
    source: Source, interaction_id: int, after: int, limit: int
) -> list[tuple[int, MessageRecord]]:
    """Up to `limit` messages of a session after `seq` `after`, each with its `seq`."""
    async with connected(source) as conn:
        rows = (
            await conn.execute(
                select(
                    Message.seq,
                    Message.t_ms,
                    Message.from_client,
                    Message.kind,
                    Message.data,
                    Message.code,
                )
                .where(Message.interaction_id == interaction_id, Message.seq > after)
                .order_by(Message.seq)
                .limit(limit)
            )
        ).all()
    return [
        (r.seq, MessageRecord(r.t_ms, bool(r.from_client), Kind(r.kind), r.data, r.code))
        for r in rows
    ]


async def messages(source: Source, interaction_id: int) -> list[MessageRecord]:
    """All of a WebSocket session's messages, in order."""
    return [m async for page in message_pages(source, interaction_id, 1024) for m in page]


class _Joiner:
    """Events from their stored rows: the parts of a large one joined."""

    def __init__(self) -> None:
        self.found: list[EventRecord] = []
        self._parts: list[tuple[bytes, float, Pieces | None]] = []

    def add(self, t_ms: float, data: bytes, text: str | None, continues: bool) -> None:
        if not continues:
            self.flush()
        self._parts.append((data, t_ms, None if text is None else decode(text)))

    def flush(self) -> list[EventRecord]:
        if self._parts:
            data, t_ms, pieces = joined(self._parts)
            self.found.append(EventRecord(t_ms, data, pieces))
            self._parts.clear()
        return self.found


async def events(source: Source, interaction_id: int) -> list[EventRecord]:
    """All of an interaction's events, in order (the parts of a large one joined)."""
    joiner = _Joiner()
    async for t_ms, data, text, continues in event_rows(source, interaction_id):
        joiner.add(t_ms, data, text, continues)
    return joiner.flush()


async def events_of(source: Source, ids: Sequence[int]) -> dict[int, list[EventRecord]]:
    """The events of several interactions in one query, by interaction id, in order (the
    parts of a large one joined; an interaction without events: an empty list)."""
    joiners = {i: _Joiner() for i in ids}
    stmt = (
        select(Event.interaction_id, Event.t_ms, Event.data, Event.pieces, Event.continues)
        .where(Event.interaction_id.in_(ids))
        .order_by(Event.interaction_id, Event.seq)
    )
    async with connected(source) as conn:
        for row in await conn.execute(stmt):
            joiners[row.interaction_id].add(row.t_ms, row.data, row.pieces, bool(row.continues))
    return {i: joiner.flush() for i, joiner in joiners.items()}


async def small_bodies_from(
    source: Source, cassette: str, max_size: int, first_id: int, count: int, max_bytes: int
) -> dict[int, Page]:
    """The events of finished interactions of a cassette whose body is `max_size` bytes or
    less, by interaction id, in order: from id `first_id` on, in recording order, at most
    `count` of them and `max_bytes` of bodies (at least the first)."""
    sizes = (
        select(Interaction.id, Interaction.body_size)
        .join(Cassette)
        .where(
            Cassette.name == cassette,
            Interaction.id >= first_id,
            Interaction.body_size <= max_size,
            Interaction.outcome != Outcome.RECORDING.value,
        )
        .order_by(Interaction.id)
        .limit(count)
    )
    bodies: dict[int, Page] = {}
    async with connected(source) as conn:
        ids: list[int] = []
        total = 0
        for size_row in await conn.execute(sizes):
            total += size_row.body_size
            if ids and total > max_bytes:
                break
            ids.append(size_row.id)
        if not ids:
            return bodies
        events = (
            select(Event.interaction_id, Event.t_ms, Event.data, Event.pieces, Event.continues)
            .where(Event.interaction_id.in_(ids))
            .order_by(Event.interaction_id, Event.seq)
        )
        for row in await conn.execute(events):
            bodies.setdefault(row.interaction_id, []).append(
                (row.t_ms, row.data, row.pieces, row.continues)
            )
    for interaction_id in ids:
        bodies.setdefault(interaction_id, [])  # an empty body is a body too
    return bodies


@dataclass(frozen=True)
class StoredHead:
    """An interaction as the replay index keeps it: all but the bodies (`request_bodies`
    reads the request's when it is needed)."""

    id: int
    method: str
    url: str
    request_headers: Headers
    request_size: int
    started_at: datetime
    head: ResponseHead
    outcome: Outcome
    body_size: int
    ttfb_ms: float
    body_sha256: str | None = None  # of the body as recorded (None before revision 0006)
    untimed: bool = False


@dataclass(frozen=True)
class Stamp:
    """What tells a stored interaction from another, and whether it is still recording."""

    id: int
    started_at: datetime
    request_size: int
    outcome: Outcome


async def interaction_stamps(engine: AsyncEngine, cassette: str, since: int = 0) -> list[Stamp]:
    """A cassette's interactions (those from id `since` on), in recording order, as little
    as tells them apart."""
    stmt = (
        select(
            Interaction.id,
            Interaction.started_at,
            func.length(Interaction.request_body).label("request_size"),
            Interaction.outcome,
        )
        .join(Cassette)
        .where(Cassette.name == cassette)
        .order_by(Interaction.ordinal, Interaction.id)
    )
    if since:
        stmt = stmt.where(Interaction.id >= since)
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [Stamp(r.id, r.started_at, r.request_size or 0, Outcome(r.outcome)) for r in rows]


async def interaction_heads(
    engine: AsyncEngine, cassette: str, ids: Sequence[int]
) -> list[StoredHead]:
    """These interactions of a cassette without their bodies, in recording order."""
    heads: list[StoredHead] = []
    for at in range(0, len(ids), 500):
        heads += await _heads(engine, cassette, ids[at : at + 500])
    return heads


async def _heads(engine: AsyncEngine, cassette: str, ids: Sequence[int]) -> list[StoredHead]:
    stmt = (
        select(
            Interaction.id,
            Interaction.method,
            Interaction.url,
            Interaction.request_headers,
            func.length(Interaction.request_body).label("request_size"),
            Interaction.started_at,
            Interaction.status,
            Interaction.response_headers,
            Interaction.outcome,
            Interaction.body_size,
            Interaction.ttfb_ms,
            Interaction.body_sha256,
            Interaction.untimed,
        )
        .join(Cassette)
        .where(Cassette.name == cassette, Interaction.id.in_(ids))
        .order_by(Interaction.ordinal, Interaction.id)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        StoredHead(
            id=r.id,
            method=r.method,
            url=r.url,
            request_headers=header_pairs(r.request_headers),
            request_size=r.request_size or 0,
            started_at=r.started_at,
            head=ResponseHead(r.status, header_pairs(r.response_headers)),
            outcome=Outcome(r.outcome),
            body_size=r.body_size,
            ttfb_ms=r.ttfb_ms,
            body_sha256=r.body_sha256,
            untimed=bool(r.untimed),
        )
        for r in rows
    ]


async def request_bodies(engine: AsyncEngine, ids: Sequence[int]) -> dict[int, bytes]:
    """The request bodies of these interactions (those that still exist), by id."""
    stmt = select(Interaction.id, Interaction.request_body).where(Interaction.id.in_(ids))
    async with engine.connect() as conn:
        return {r.id: r.request_body for r in await conn.execute(stmt)}


def utc(t: datetime | None) -> datetime | None:
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=UTC)  # SQLite hands back naive datetimes; they were stored as UTC
