"""The ledger's reads and writes: the token usage of recorded interactions (table `usage`),
their bodies' sha256, and their ages.

Recording writes its usage rows with the batch (`proxy.store.writes`); an import, a cassette
file loaded from a directory and `rrproxy rerecord` write theirs here, from the events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.core.headers import get
from proxy.core.records import Event, Outcome, ResponseHead
from proxy.core.usage import Usage, usage_of
from proxy.store.models import Cassette, Interaction
from proxy.store.models import Usage as UsageRow
from proxy.store.queries import Source, connected, utc
from proxy.store.writes import usage_row


def body_sha256(events: Iterable[Event]) -> str:
    digest = hashlib.sha256()
    for event in events:
        digest.update(event.data)
    return digest.hexdigest()


def usage_of_body(head: ResponseHead, events: Sequence[Event]) -> Usage | None:
    return usage_of(
        get(head.headers, "content-type"),
        get(head.headers, "content-encoding"),
        [e.data for e in events],
    )


async def write_usage(
    conn: AsyncConnection,
    interaction_id: int,
    head: ResponseHead,
    events: Sequence[Event],
    outcome: Outcome,
    *,
    replace: bool = False,
) -> None:
    """The usage row of an interaction written from whole events (import, rerecord), when
    its answer reports usage; with `replace`, an earlier row goes."""
    if replace:
        await conn.execute(delete(UsageRow).where(UsageRow.interaction_id == interaction_id))
    usage = usage_of_body(head, events) if outcome.complete else None
    if usage is not None:
        await conn.execute(insert(UsageRow), [usage_row(interaction_id, usage)])


async def usage_by_id(source: Source, ids: Sequence[int]) -> dict[int, Usage]:
    found: dict[int, Usage] = {}
    async with connected(source) as conn:
        for at in range(0, len(ids), 500):
            stmt = select(UsageRow).where(UsageRow.interaction_id.in_(ids[at : at + 500]))
            for r in (await conn.execute(stmt)).all():
                found[r.interaction_id] = Usage(
                    r.model, r.input_tokens, r.output_tokens, r.cached_tokens
                )
    return found


@dataclass(frozen=True)
class LedgerRow:
    cassette: str
    number: int  # the interaction's ordinal in its cassette
    usage: Usage | None


async def cassette_usage(source: Source, cassette: str | None) -> list[LedgerRow]:
    """Every replayable interaction (of one cassette, or of all) and its usage, if any."""
    stmt = (
        select(
            Cassette.name,
            Interaction.id,
            Interaction.outcome,
            UsageRow.model,
            UsageRow.input_tokens,
            UsageRow.output_tokens,
            UsageRow.cached_tokens,
        )
        .join(Cassette)
        .outerjoin(UsageRow, UsageRow.interaction_id == Interaction.id)
        .order_by(Cassette.name, Interaction.id)
    )
    if cassette is not None:
        stmt = stmt.where(Cassette.name == cassette)
    rows: list[LedgerRow] = []
    numbers: dict[str, int] = {}
    async with connected(source) as conn:
        for r in (await conn.execute(stmt)).all():
            numbers[r.name] = number = numbers.get(r.name, 0) + 1
            if not Outcome(r.outcome).replayable:
                continue
            usage = (
                None
                if r.input_tokens is None
                else Usage(r.model, r.input_tokens, r.output_tokens, r.cached_tokens)
            )
            rows.append(LedgerRow(r.name, number, usage))
    return rows


@dataclass(frozen=True)
class Aged:
    cassette: str
    old: int  # interactions recorded before the limit
    interactions: int
    oldest: datetime | None


async def older_than(source: Source, before: datetime) -> list[Aged]:
    """The cassettes holding interactions recorded before `before`, with how many."""
    old = func.count(Interaction.id).filter(Interaction.started_at < before)
    stmt = (
        select(Cassette.name, old, func.count(Interaction.id), func.min(Interaction.started_at))
        .join(Interaction)
        .group_by(Cassette.id)
        .having(old > 0)
        .order_by(Cassette.name)
    )
    async with connected(source) as conn:
        rows = (await conn.execute(stmt)).all()
    return [Aged(r[0], r[1], r[2], utc(r[3])) for r in rows]


@dataclass(frozen=True)
class Ordinal:
    id: int
    number: int  # 1-based, in recording order within its cassette
    method: str
    url: str
    replayable: bool
    recorded_at: datetime | None


async def ordinals(source: Source, cassette: str) -> list[Ordinal]:
    """A cassette's interactions with their ordinals, without bodies or headers."""
    stmt = (
        select(
            Interaction.id,
            Interaction.method,
            Interaction.url,
            Interaction.outcome,
            Interaction.started_at,
        )
        .join(Cassette)
        .where(Cassette.name == cassette)
        .order_by(Interaction.id)
    )
    async with connected(source) as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        Ordinal(r.id, n, r.method, r.url, Outcome(r.outcome).replayable, utc(r.started_at))
        for n, r in enumerate(rows, 1)
    ]
