"""Replacing recorded answers in place (`rrproxy rerecord`): each interaction keeps its id,
so its ordinal and its place among identical requests, and its request as stored; its
response head, events, timings, hash and usage are the new ones. All in one transaction:
a process killed before the commit leaves every old recording as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.records import Event, Outcome, ResponseHead
from proxy.store import ledger
from proxy.store.models import Event as EventRow
from proxy.store.models import Interaction


@dataclass(frozen=True)
class Answer:
    """A new answer to a stored interaction's request."""

    interaction_id: int
    head: ResponseHead  # redacted
    events: Sequence[Event]
    recorded_at: datetime
    ttfb_ms: float
    duration_ms: float


async def replace_answers(writer: AsyncEngine, answers: Sequence[Answer]) -> None:
    """Put the new answers in place of the old ones, all or none."""
    async with writer.begin() as conn:
        for a in answers:
            done = await conn.execute(
                update(Interaction)
                .where(Interaction.id == a.interaction_id)
                .values(
                    status=a.head.status,
                    response_headers=[list(h) for h in a.head.headers],
                    outcome=Outcome.COMPLETE.value,
                    error=None,
                    started_at=a.recorded_at,
                    ttfb_ms=a.ttfb_ms,
                    duration_ms=a.duration_ms,
                    event_count=len(a.events),
                    body_size=sum(len(e.data) for e in a.events),
                    body_sha256=ledger.body_sha256(a.events),
                )
            )
            if done.rowcount != 1:
                raise LookupError(f"interaction {a.interaction_id} is gone from the store")
            await conn.execute(delete(EventRow).where(EventRow.interaction_id == a.interaction_id))
            if a.events:
                await conn.execute(
                    insert(EventRow),
                    [
                        {
                            "interaction_id": a.interaction_id,
                            "seq": i,
                            "t_ms": e.t_ms,
                            "data": e.data,
                        }
                        for i, e in enumerate(a.events)
                    ],
                )
            await ledger.write_usage(
                conn, a.interaction_id, a.head, a.events, Outcome.COMPLETE, replace=True
            )
