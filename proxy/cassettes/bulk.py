"""Recorded interactions into the store in batches (imports): one statement for a batch's
interactions (and one to read their ids back, on SQLite), and one for all their events,
instead of two round trips an interaction. A batch is sent once it holds `MAX_ROWS` interactions or
`MAX_BYTES` of bodies, so memory is bounded by bytes, not by the cassette."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.cassettes.file_format import Recorded
from proxy.core.pieces import encode, split
from proxy.store import ledger
from proxy.store.models import Event, Interaction, Message
from proxy.store.models import Usage as UsageRow
from proxy.store.writes import usage_row

MAX_ROWS = 500
"""Interactions a batch holds at most."""
MAX_BYTES = 8 * 2**20
"""Request and response bytes a batch holds at most (one larger interaction goes alone)."""


class BulkInsert:
    """Interactions added to one cassette, sent a batch at a time (`flush` the rest)."""

    def __init__(self, conn: AsyncConnection, cassette_id: int):
        self._conn = conn
        self._cassette_id = cassette_id
        self._batch: list[Recorded] = []
        self._bytes = 0
        self.statements = 0  # sent so far (what a test counts)
        self._last: int | None = None  # SQLite: the last interaction id inserted
        self._ordinal: int | None = None  # the cassette's last place (an import appends)

    async def add(self, rec: Recorded) -> None:
        self._batch.append(rec)
        self._bytes += len(rec.request.body) + sum(len(e.data) for e in rec.events)
        self._bytes += sum(len(m.data) for m in rec.messages)
        if len(self._batch) >= MAX_ROWS or self._bytes >= MAX_BYTES:
            await self.flush()

    async def flush(self) -> None:
        batch, self._batch, self._bytes = self._batch, [], 0
        if not batch:
            return
        if self._ordinal is None:
            last = select(func.coalesce(func.max(Interaction.ordinal), 0)).where(
                Interaction.cassette_id == self._cassette_id
            )
            self._ordinal = int(await self._conn.scalar(last) or 0)
        rows = []
        for rec in batch:
            self._ordinal += 1
            rows.append(self._row(rec, self._ordinal))
        ids = await self._insert(rows)
        events = [
            row
            for interaction_id, rec in zip(ids, batch, strict=True)
            for row in _event_rows(interaction_id, rec)
        ]
        chunk: list[dict[str, Any]] = []
        size = 0
        for row in events:  # bounded statements: one interaction may be large
            chunk.append(row)
            size += len(row["data"])
            if size >= MAX_BYTES:
                await self._conn.execute(insert(Event), chunk)
                self.statements += 1
                chunk, size = [], 0
        if chunk:
            await self._conn.execute(insert(Event), chunk)
            self.statements += 1
        messages: list[dict[str, Any]] = [
            {
                "interaction_id": interaction_id,
                "seq": seq,
                "t_ms": m.t_ms,
                "from_client": m.from_client,
                "kind": m.kind.value,
                "data": m.data,
                "code": m.code,
            }
            for interaction_id, rec in zip(ids, batch, strict=True)
            for seq, m in enumerate(rec.messages)
        ]
        if messages:  # a WebSocket session's
            await self._conn.execute(insert(Message), messages)
            self.statements += 1
        usage = [
            usage_row(interaction_id, found)
            for interaction_id, rec in zip(ids, batch, strict=True)
            if rec.outcome.complete
            and (found := ledger.usage_of_body(rec.response, rec.events)) is not None
        ]
        if usage:  # what the answers report they cost (see `store.ledger`)
            await self._conn.execute(insert(UsageRow), usage)
            self.statements += 1

    async def _insert(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert the interactions; their ids, in order. SQLite returns the rows of an
        `INSERT ... RETURNING` in no set order (and SQLAlchemy then sends one row a
        statement): there, the ids are read back, this cassette's above the last ones, in
        the import's transaction (which holds SQLite's one write lock)."""
        conn = self._conn
        if conn.dialect.name != "sqlite":
            result = await conn.execute(
                insert(Interaction).returning(Interaction.id, sort_by_parameter_order=True), rows
            )
            self.statements += 1
            return [int(i) for i in result.scalars().all()]
        mine = Interaction.cassette_id == self._cassette_id
        if self._last is None:
            self._last = await conn.scalar(select(func.max(Interaction.id)).where(mine)) or 0
        await conn.execute(insert(Interaction), rows)
        found = await conn.scalars(
            select(Interaction.id).where(mine, Interaction.id > self._last).order_by(Interaction.id)
        )
        ids = [int(i) for i in found]
        assert len(ids) == len(rows), "interactions inserted meanwhile by someone else"
        self._last = ids[-1]
        self.statements += 2
        return ids

    def _row(self, rec: Recorded, ordinal: int) -> dict[str, Any]:
        return {
            "cassette_id": self._cassette_id,
            "method": rec.request.method,
            "url": rec.request.url,
            "request_headers": [list(h) for h in rec.request.headers],
            "request_body": rec.request.body,
            "status": rec.response.status,
            "response_headers": [list(h) for h in rec.response.headers],
            "outcome": rec.outcome.value,
            "error": rec.error,
            "started_at": rec.recorded_at,
            "ttfb_ms": rec.ttfb_ms,
            "duration_ms": rec.duration_ms,
            "event_count": len(rec.events) + len(rec.messages),
            "body_size": sum(len(e.data) for e in rec.events) + sum(len(m) for m in rec.messages),
            "body_sha256": ledger.body_sha256(rec.events),
            "ordinal": ordinal,
            "untimed": rec.untimed,
        }


def _event_rows(interaction_id: int, rec: Recorded) -> list[dict[str, Any]]:
    """An interaction's event rows: a large event in parts, as recording stores it."""
    rows: list[dict[str, Any]] = []
    for event in rec.events:
        for part in split(event.data, event.t_ms, event.pieces):
            rows.append(
                {
                    "interaction_id": interaction_id,
                    "seq": len(rows),
                    "t_ms": part.t_ms,
                    "data": part.data,
                    "pieces": encode(part.pieces),
                    "continues": part.continues,
                }
            )
    return rows
