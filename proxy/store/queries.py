"""Reads (and the start-up repair) of the store; all writes of recordings go through `recorder`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.records import Headers, Outcome, ResponseHead, header_pairs
from proxy.store.models import Cassette, Event, Interaction


async def mark_unfinished(engine: AsyncEngine) -> int:
    """Interactions a killed process left open become incomplete (never replayed as complete)."""
    of_this = Event.interaction_id == Interaction.id
    async with engine.begin() as conn:
        result = await conn.execute(
            update(Interaction)
            .where(Interaction.outcome == Outcome.RECORDING.value)
            .values(
                outcome=Outcome.INCOMPLETE.value,
                error="the proxy stopped before the response ended",
                event_count=select(func.count()).where(of_this).scalar_subquery(),
                body_size=select(func.coalesce(func.sum(func.length(Event.data)), 0))
                .where(of_this)
                .scalar_subquery(),
            )
        )
        return result.rowcount


async def events(
    engine: AsyncEngine, interaction_id: int, page: int = 256
) -> AsyncIterator[list[tuple[float, bytes]]]:
    """An interaction's events in order, a page at a time; each page is its own short read,
    so a slow client never holds a database connection."""
    after = -1
    while True:
        async with engine.connect() as conn:
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


async def small_bodies(
    engine: AsyncEngine, cassette: str, max_size: int
) -> dict[int, list[tuple[float, bytes]]]:
    """The events of every finished interaction of a cassette whose body is `max_size` bytes
    or less, by interaction id, in order."""
    stmt = (
        select(Event.interaction_id, Event.t_ms, Event.data)
        .join(Interaction)
        .join(Cassette)
        .where(
            Cassette.name == cassette,
            Interaction.body_size <= max_size,
            Interaction.outcome != Outcome.RECORDING.value,
        )
        .order_by(Event.interaction_id, Event.seq)
    )
    bodies: dict[int, list[tuple[float, bytes]]] = {}
    async with engine.connect() as conn:
        for row in await conn.execute(stmt):
            bodies.setdefault(row.interaction_id, []).append((row.t_ms, row.data))
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


@dataclass(frozen=True)
class Stamp:
    """What tells a stored interaction from another, and whether it is still recording."""

    id: int
    started_at: datetime
    request_size: int
    outcome: Outcome


async def interaction_stamps(engine: AsyncEngine, cassette: str) -> list[Stamp]:
    """A cassette's interactions, in recording order, as little as tells them apart."""
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
        )
        for r in rows
    ]


async def request_bodies(engine: AsyncEngine, ids: Sequence[int]) -> dict[int, bytes]:
    """The request bodies of these interactions (those that still exist), by id."""
    stmt = select(Interaction.id, Interaction.request_body).where(Interaction.id.in_(ids))
    async with engine.connect() as conn:
        return {r.id: r.request_body for r in await conn.execute(stmt)}
