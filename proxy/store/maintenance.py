"""The store's upkeep outside recording: deleting a cassette, and the
cassette directory's bookkeeping (the hash of each file as last loaded or written)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.store.models import Cassette, CassetteFile, Interaction
from proxy.store.queries import Source, connected
from proxy.store.writes import notify


async def delete_cassette(conn: AsyncConnection, name: str) -> bool:
    """Remove a cassette with everything recorded in it; False if there was none."""
    await conn.execute(delete(CassetteFile).where(CassetteFile.name == name))
    found = await conn.scalar(select(Cassette.id).where(Cassette.name == name))
    if found is None:
        return False
    # Events go with their interactions (ON DELETE CASCADE), interactions with the cassette.
    await conn.execute(delete(Interaction).where(Interaction.cassette_id == found))
    await conn.execute(delete(Cassette).where(Cassette.id == found))
    await conn.run_sync(lambda sync: notify(sync, [name]))  # other proxies forget it
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
