"""What the UI reads from the store, a page at a time: a cassette's interactions (filtered,
numbered in replay order), one interaction's head, a page of its events, its timeline as
buckets and its longest gaps (both computed by the database), and what is new since a
given point (the live page). No read loads a whole stream: memory stays flat however long
the recording or the cassette.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, cast, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import Subquery

from proxy.core.records import Outcome, Request, ResponseHead, header_pairs
from proxy.store.models import Cassette, Event, Interaction
from proxy.store.queries import utc

PAGE = 100
"""Rows to a page: interactions of a cassette, events of an interaction."""
TIMELINE_BUCKETS = 600
"""A timeline's marks at most, whatever the number of events (one per bucket of time)."""
LONGEST_GAPS = 5


@dataclass(frozen=True)
class Row:
    """An interaction as the cassette page lists it."""

    id: int
    number: int  # 1-based, in recording (= replay) order within its cassette
    method: str
    url: str
    status: int
    events: int
    size: int
    ttfb_ms: float
    duration_ms: float | None
    outcome: Outcome
    recorded_at: datetime | None
    first_event_ms: float | None = None  # on the cassette page: when its first event came


@dataclass(frozen=True)
class Head:
    """One interaction without its events, with its cassette and request body."""

    row: Row
    cassette: str
    request: Request
    response: ResponseHead
    error: str | None
    first_event_ms: float | None


def _numbered(cassette: str) -> Subquery:
    """A cassette's interactions with their ordinal, as a subquery."""
    return (
        select(
            Interaction.id,
            func.row_number().over(order_by=Interaction.id).label("number"),
            Interaction.method,
            Interaction.url,
            Interaction.status,
            Interaction.event_count,
            Interaction.body_size,
            Interaction.ttfb_ms,
            Interaction.duration_ms,
            Interaction.outcome,
            Interaction.started_at,
        )
        .join(Cassette)
        .where(Cassette.name == cassette)
        .subquery()
    )


def _row(r: Any) -> Row:
    return Row(
        id=r.id,
        number=r.number,
        method=r.method,
        url=r.url,
        status=r.status,
        events=r.event_count,
        size=r.body_size,
        ttfb_ms=r.ttfb_ms,
        duration_ms=r.duration_ms,
        outcome=Outcome(r.outcome),
        recorded_at=utc(r.started_at),
    )


async def interaction_rows(
    engine: AsyncEngine,
    cassette: str,
    *,
    url: str = "",
    status: int | None = None,
    page: int = 0,
    per_page: int = PAGE,
) -> tuple[int, list[Row]]:
    """How many interactions of `cassette` pass the filter (`url` a substring of the URL,
    `status` the status), and the `page`-th page of them in replay order."""
    sub = _numbered(cassette)
    where = []
    if url:
        where.append(sub.c.url.contains(url, autoescape=True))
    if status is not None:
        where.append(sub.c.status == status)
    condition = and_(True, *where)
    async with engine.connect() as conn:
        total = int(await conn.scalar(select(func.count()).select_from(sub).where(condition)) or 0)
        rows = (
            await conn.execute(
                select(sub)
                .where(condition)
                .order_by(sub.c.id)
                .limit(per_page)
                .offset(max(page, 0) * per_page)
            )
        ).all()
        ids = [r.id for r in rows]
        first = dict(
            (
                await conn.execute(
                    select(Event.interaction_id, Event.t_ms).where(
                        Event.interaction_id.in_(ids), Event.seq == 0
                    )
                )
            ).all()
        )
    return total, [replace(_row(r), first_event_ms=first.get(r.id)) for r in rows]


async def head(engine: AsyncEngine, interaction_id: int) -> Head | None:
    """One interaction's head (None if there is none), numbered within its cassette."""
    async with engine.connect() as conn:
        i = (
            await conn.execute(
                select(
                    Interaction.id,
                    Interaction.cassette_id,
                    Cassette.name,
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
                .where(Interaction.id == interaction_id)
            )
        ).first()
        if i is None:
            return None
        number = await conn.scalar(
            select(func.count()).where(
                Interaction.cassette_id == i.cassette_id, Interaction.id <= i.id
            )
        )
        first = await conn.scalar(
            select(Event.t_ms).where(Event.interaction_id == i.id).order_by(Event.seq).limit(1)
        )
    row = Row(
        i.id,
        int(number or 0),
        i.method,
        i.url,
        i.status,
        i.event_count,
        i.body_size,
        i.ttfb_ms,
        i.duration_ms,
        Outcome(i.outcome),
        utc(i.started_at),
    )
    return Head(
        row=row,
        cassette=i.name,
        request=Request(i.method, i.url, header_pairs(i.request_headers), i.request_body),
        response=ResponseHead(i.status, header_pairs(i.response_headers)),
        error=i.error,
        first_event_ms=first,
    )


@dataclass(frozen=True)
class EventRow:
    n: int  # 1-based
    t_ms: float
    delta_ms: float  # since the event before (since the request for the first)
    data: bytes


async def events_page(
    engine: AsyncEngine, interaction_id: int, *, page: int = 0, per_page: int = PAGE
) -> list[EventRow]:
    """The `page`-th page of an interaction's events, each with the gap since the one before."""
    skip = max(page, 0) * per_page
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(Event.t_ms, Event.data)
                .where(Event.interaction_id == interaction_id)
                .order_by(Event.seq)
                .limit(per_page + (1 if skip else 0))
                .offset(skip - 1 if skip else 0)
            )
        ).all()
    before = 0.0
    if skip and rows:
        before, rows = rows[0].t_ms, rows[1:]
    out = []
    for k, r in enumerate(rows):
        out.append(EventRow(skip + k + 1, r.t_ms, r.t_ms - before, r.data))
        before = r.t_ms
    return out


@dataclass(frozen=True)
class Bucket:
    start_ms: float
    events: int
    size: int


@dataclass(frozen=True)
class Gap:
    n: int  # the event after the gap (1-based)
    from_ms: float
    to_ms: float


async def timeline(
    engine: AsyncEngine, interaction_id: int, span_ms: float, buckets: int = TIMELINE_BUCKETS
) -> tuple[list[Bucket], list[Gap]]:
    """The events grouped into at most `buckets` slices of `span_ms`, and the longest gaps
    between two events (the first measured from the request), both computed in SQL."""
    width = max(span_ms, 1.0) / buckets
    slot = cast(Event.t_ms / width, Integer)
    grouped = (
        select(slot.label("slot"), func.count(), func.sum(func.length(Event.data)))
        .where(Event.interaction_id == interaction_id)
        .group_by(slot)
        .order_by(slot)
    )
    ordered = select(
        Event.seq,
        Event.t_ms,
        func.row_number().over(order_by=Event.seq).label("n"),
        func.lag(Event.t_ms, 1, 0.0).over(order_by=Event.seq).label("before"),
    ).where(Event.interaction_id == interaction_id)
    sub = ordered.subquery()
    gaps = (
        select(sub.c.n, sub.c.before, sub.c.t_ms)
        .order_by((sub.c.t_ms - sub.c.before).desc())
        .limit(LONGEST_GAPS)
    )
    async with engine.connect() as conn:
        marks = [Bucket(r[0] * width, r[1], int(r[2] or 0)) for r in await conn.execute(grouped)]
        longest = [Gap(r.n, r.before, r.t_ms) for r in await conn.execute(gaps)]
    return marks, longest


async def same_request(engine: AsyncEngine, h: Head, limit: int = 20) -> list[Row]:
    """Other recordings of the same method and URL in the same cassette (to compare with)."""
    sub = _numbered(h.cassette)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(sub)
                .where(sub.c.method == h.request.method, sub.c.url == h.request.url)
                .where(sub.c.id != h.row.id)
                .order_by(sub.c.id)
                .limit(limit)
            )
        ).all()
    return [_row(r) for r in rows]


@dataclass(frozen=True)
class Live:
    """An interaction as the live page shows it."""

    id: int
    cassette: str
    method: str
    url: str
    status: int
    outcome: str
    events: int


async def live_interactions(engine: AsyncEngine, after_id: int, limit: int = 50) -> list[Live]:
    """Interactions recorded after `after_id`, oldest first."""
    stmt = (
        select(
            Interaction.id,
            Cassette.name,
            Interaction.method,
            Interaction.url,
            Interaction.status,
            Interaction.outcome,
            Interaction.event_count,
        )
        .join(Cassette)
        .where(Interaction.id > after_id)
        .order_by(Interaction.id)
        .limit(limit)
    )
    async with engine.connect() as conn:
        return [Live(*r) for r in await conn.execute(stmt)]


async def outcomes(engine: AsyncEngine, ids: list[int]) -> dict[int, tuple[str, int]]:
    """The outcome and event count of these interactions (those that still exist)."""
    if not ids:
        return {}
    stmt = select(Interaction.id, Interaction.outcome, Interaction.event_count).where(
        Interaction.id.in_(ids)
    )
    async with engine.connect() as conn:
        return {r.id: (r.outcome, r.event_count) for r in await conn.execute(stmt)}


@dataclass(frozen=True)
class Progress:
    """What a stream being watched gained since the last look: its marks on the timeline
    (events grouped by `LIVE_SLOT_MS`) and its latest few events, never all of them."""

    last_seq: int
    marks: list[tuple[float, int, int]]  # (slot start ms, events, bytes)
    latest: list[tuple[int, float, int, bytes]]  # (seq, t ms, size, first bytes)


LIVE_SLOT_MS = 50.0
LIVE_LATEST = 10


async def progress(engine: AsyncEngine, after: dict[int, int]) -> dict[int, Progress]:
    """For each interaction id in `after`, the events after that seq as the live page draws
    them (absent: none yet): two small queries for all of them, whose answers do not grow
    with the streams."""
    if not after:
        return {}
    newer = or_(*(and_(Event.interaction_id == i, Event.seq > seq) for i, seq in after.items()))
    rank = func.row_number().over(partition_by=Event.interaction_id, order_by=Event.seq.desc())
    ranked = (
        select(
            Event.interaction_id,
            Event.seq,
            Event.t_ms,
            func.length(Event.data).label("size"),
            func.substr(Event.data, 1, 200).label("head"),
            rank.label("rank"),
        )
        .where(newer)
        .subquery()
    )
    slot = cast(Event.t_ms / LIVE_SLOT_MS, Integer)
    async with engine.connect() as conn:
        latest = (
            await conn.execute(
                select(ranked.c.interaction_id, ranked.c.seq, ranked.c.t_ms, ranked.c.size,
                       ranked.c.head)
                .where(ranked.c.rank <= LIVE_LATEST)
                .order_by(ranked.c.interaction_id, ranked.c.seq)
            )
        ).all()  # fmt: skip
        if not latest:
            return {}
        marks = (
            await conn.execute(
                select(Event.interaction_id, slot, func.count(), func.sum(func.length(Event.data)))
                .where(newer)
                .group_by(Event.interaction_id, slot)
                .order_by(Event.interaction_id, slot)
            )
        ).all()
    found: dict[int, Progress] = {}
    for r in latest:
        p = found.setdefault(r[0], Progress(-1, [], []))
        p.latest.append((r[1], r[2], int(r[3]), bytes(r[4])))
    for r in marks:
        if r[0] in found:
            found[r[0]].marks.append((r[1] * LIVE_SLOT_MS, r[2], int(r[3] or 0)))
    return {i: replace(p, last_seq=p.latest[-1][0]) for i, p in found.items()}


async def latest_id(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.max(Interaction.id))) or 0)
