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

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.core.records import Event as EventRecord
from proxy.core.records import Headers, Outcome, Request, ResponseHead, header_pairs
from proxy.errors import CassetteNotFound
from proxy.store.models import Cassette, Event, Interaction

Source = AsyncEngine | AsyncConnection
Page = list[tuple[float, bytes]]
"""Events as (offset in ms, bytes): the replay path's form, cheaper than `Event` objects."""

_UNFINISHED = (Outcome.INCOMPLETE.value, Outcome.RECORDING.value)


@dataclass(frozen=True)
class CassetteInfo:
    name: str
    interactions: int
    events: int
    size: int  # bytes of request and response bodies
    last_recorded: datetime | None
    incomplete: int


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
        )
        .outerjoin(Interaction)
        .group_by(Cassette.id)
        .order_by(Cassette.name)
    )
    async with connected(source) as conn:
        rows = (await conn.execute(stmt)).all()
    return [CassetteInfo(r[0], r[1], int(r[2]), int(r[3]), utc(r[4]), r[5]) for r in rows]


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
        )
        .join(Cassette)
        .where(Cassette.name == cassette)
        .order_by(Interaction.id)
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


async def event_pages(source: Source, interaction_id: int, page: int = 256) -> AsyncIterator[Page]:
    """An interaction's events in order, a page at a time. From an engine each page is its
    own short read, so a slow client never holds a database connection."""
    after = -1
    while True:
        async with connected(source) as conn:
            rows = (
                await conn.execute(
                    select(Event.seq, Event.t_ms, Event.data)
                    .where(Event.interaction_id == interaction_id, Event.seq > after)
                    .order_by(Event.seq)
                    .limit(page)
                )
            ).all()
        if not rows:
            return
        yield [(r.t_ms, r.data) for r in rows]
        if len(rows) < page:
            return
        after = rows[-1].seq


async def events(source: Source, interaction_id: int) -> list[EventRecord]:
    """All of an interaction's events, in order."""
    return [
        EventRecord(t, data)
        async for page in event_pages(source, interaction_id, page=1024)
        for t, data in page
    ]


async def events_of(source: Source, ids: Sequence[int]) -> dict[int, list[EventRecord]]:
    """The events of several interactions in one query, by interaction id, in order (an
    interaction without events: an empty list)."""
    found: dict[int, list[EventRecord]] = {i: [] for i in ids}
    stmt = (
        select(Event.interaction_id, Event.t_ms, Event.data)
        .where(Event.interaction_id.in_(ids))
        .order_by(Event.interaction_id, Event.seq)
    )
    async with connected(source) as conn:
        for row in await conn.execute(stmt):
            found[row.interaction_id].append(EventRecord(row.t_ms, row.data))
    return found


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
            select(Event.interaction_id, Event.t_ms, Event.data)
            .where(Event.interaction_id.in_(ids))
            .order_by(Event.interaction_id, Event.seq)
        )
        for row in await conn.execute(events):
            bodies.setdefault(row.interaction_id, []).append((row.t_ms, row.data))
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
        .order_by(Interaction.id)
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
        )
        .join(Cassette)
        .where(Cassette.name == cassette, Interaction.id.in_(ids))
        .order_by(Interaction.id)
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
