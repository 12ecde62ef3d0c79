"""The store's upkeep outside recording: start-up repair, deleting a cassette, and the
cassette directory's bookkeeping (the hash of each file as last loaded or written)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.core.records import Outcome
from proxy.store.models import Cassette, CassetteFile, Event, Interaction
from proxy.store.queries import Source, connected


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


async def delete_cassette(conn: AsyncConnection, name: str) -> bool:
    """Remove a cassette with everything recorded in it; False if there was none."""
    await conn.execute(delete(CassetteFile).where(CassetteFile.name == name))
    found = await conn.scalar(select(Cassette.id).where(Cassette.name == name))
    if found is None:
        return False
    # Events go with their interactions (ON DELETE CASCADE), interactions with the cassette.
    await conn.execute(delete(Interaction).where(Interaction.cassette_id == found))
    await conn.execute(delete(Cassette).where(Cassette.id == found))
    return True


async def file_hashes(source: Source) -> dict[str, str]:
    """The cassette directory's files as last loaded or written: name -> sha256."""
    async with connected(source) as conn:
        rows = await conn.execute(select(CassetteFile.name, CassetteFile.sha256))
        return {r.name: r.sha256 for r in rows}


async def set_file_hash(conn: AsyncConnection, name: str, sha256: str) -> None:
    await conn.execute(delete(CassetteFile).where(CassetteFile.name == name))
    await conn.execute(
        insert(CassetteFile).values(name=name, sha256=sha256, loaded_at=datetime.now(UTC))
    )
