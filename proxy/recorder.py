"""The single writer: takes recorded events off the hot path and commits them in batches.

Relaying never waits on the database. `begin`, `event` and `end` only append to an
in-memory list; one task (`run`) owns every write, taking whatever has piled up since its
last commit and writing it in one transaction (datasette's write thread, as an asyncio
task). While a commit runs, the next batch gathers, so commits follow each other closely
and a killed process loses only the batch in flight.

If the store fails (locked, disk full), the writer keeps the batch and retries with
backoff; the streams are not disturbed. Should the backlog pass `max_pending_bytes`, the
events of the affected recordings are dropped and those interactions are marked
incomplete, with the reason, once the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .records import Outcome, Request, ResponseHead
from .store.models import Cassette, Event, Interaction

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 2.0


@dataclass(eq=False)
class Recording:
    """One interaction being recorded. Owned by the relay; the writer fills in `interaction_id`."""

    cassette: str
    request: Request
    head: ResponseHead
    started_at: datetime
    ttfb_ms: float
    on_committed: Callable[[Recording], None] | None = None
    events: int = 0
    size: int = 0
    outcome: Outcome = Outcome.RECORDING
    error: str | None = None
    interaction_id: int | None = None
    dropped: bool = False
    committed: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Begin:
    rec: Recording


@dataclass
class _Event:
    rec: Recording
    seq: int
    t_ms: float
    data: bytes


@dataclass
class _End:
    rec: Recording
    duration_ms: float


_Item = _Begin | _Event | _End


class Recorder:
    def __init__(self, engine: AsyncEngine, *, max_pending_bytes: int = 256 * 1024 * 1024):
        self._engine = engine
        self._max_pending = max_pending_bytes
        self._pending: list[_Item] = []
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._cassette_ids: dict[str, int] = {}
        self._failing_since: float | None = None
        self.batches = 0
        self.failures = 0
        self._pushed = 0  # items ever queued
        self._written = 0  # items ever committed (or dropped)
        self._progress = asyncio.Condition()
        self.listeners: list[Callable[[Recording], None]] = []
        """Called with each recording once its last event is committed."""

    # -- the hot path: never awaits ---------------------------------------------------------

    def begin(
        self,
        cassette: str,
        request: Request,
        head: ResponseHead,
        ttfb_ms: float,
        on_committed: Callable[[Recording], None] | None = None,
    ) -> Recording:
        rec = Recording(cassette, request, head, datetime.now(UTC), ttfb_ms, on_committed)
        self._push(_Begin(rec), len(request.body))
        return rec

    def event(self, rec: Recording, t_ms: float, data: bytes) -> None:
        seq = rec.events
        rec.events += 1
        rec.size += len(data)
        if not rec.dropped:
            self._push(_Event(rec, seq, t_ms, data), len(data))

    def end(
        self, rec: Recording, outcome: Outcome, duration_ms: float, error: str | None = None
    ) -> None:
        rec.outcome = outcome
        rec.error = error
        self._push(_End(rec, duration_ms), 0)

    def _push(self, item: _Item, size: int) -> None:
        self._pushed += 1
        self._pending.append(item)
        self._pending_bytes += size
        if self._pending_bytes > self._max_pending:
            self._shed()
        self._wakeup.set()

    def _shed(self) -> None:
        """The store has fallen too far behind: drop queued events rather than grow without
        bound. The recordings they belong to end as incomplete, saying why."""
        victims = {i.rec for i in self._pending if isinstance(i, _Event)}
        for rec in victims:
            rec.dropped = True
        kept: list[_Item] = [i for i in self._pending if not isinstance(i, _Event)]
        self._written += len(self._pending) - len(kept)
        self._pending = kept
        self._pending_bytes = 0
        log.error(
            "the store is not keeping up (more than %d MB waiting): dropped the events of %d "
            "recording(s); they will be marked incomplete",
            self._max_pending // 2**20,
            len(victims),
        )

    # -- the writer task --------------------------------------------------------------------

    async def run(self) -> None:
        backoff = 0.05
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch, self._pending, self._pending_bytes = self._pending, [], 0
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                self._pending = batch + self._pending
                self._pending_bytes += sum(len(i.data) for i in batch if isinstance(i, _Event))
                if self._failing_since is None:
                    self._failing_since = asyncio.get_running_loop().time()
                    log.error(
                        "cannot write to the store (%s: %s); streams continue, recording is "
                        "retried",
                        type(exc).__name__,
                        exc,
                    )
                if self._closing and self._give_up():
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.05
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()
            if self._failing_since is not None:
                log.warning("the store is writable again; recording resumed")
                self._failing_since = None
            self.batches += 1

    def _give_up(self) -> bool:
        assert self._failing_since is not None
        if asyncio.get_running_loop().time() - self._failing_since < 5.0:
            return False
        lost = sum(1 for i in self._pending if isinstance(i, _Event))
        log.error("shutting down with the store still failing: %d event(s) not written", lost)
        return True

    async def flush(self) -> None:
        """Wait until everything queued so far is in the store."""
        target = self._pushed
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def close(self) -> None:
        """Flush everything pending (the writer task then returns)."""
        self._closing = True
        self._wakeup.set()

    async def _write(self, batch: list[_Item]) -> None:
        new_ids: dict[Recording, int] = {}
        new_cassettes: dict[str, int] = {}
        async with self._engine.begin() as conn:
            events: list[dict[str, Any]] = []
            for item in batch:
                rec = item.rec
                if isinstance(item, _Begin):
                    cassette_id = self._cassette_ids.get(rec.cassette) or new_cassettes.get(
                        rec.cassette
                    )
                    if cassette_id is None:
                        cassette_id = await _cassette_id(conn, rec.cassette)
                        new_cassettes[rec.cassette] = cassette_id
                    new_ids[rec] = await _insert_interaction(conn, cassette_id, rec)
                elif isinstance(item, _Event):
                    events.append(
                        {
                            "interaction_id": rec.interaction_id or new_ids[rec],
                            "seq": item.seq,
                            "t_ms": item.t_ms,
                            "data": item.data,
                        }
                    )
                else:
                    if events:
                        await conn.execute(insert(Event), events)
                        events = []
                    await _finish_interaction(conn, rec.interaction_id or new_ids[rec], rec, item)
            if events:
                await conn.execute(insert(Event), events)
        self._cassette_ids.update(new_cassettes)
        for rec, interaction_id in new_ids.items():
            rec.interaction_id = interaction_id
        for item in batch:
            if isinstance(item, _End):
                item.rec.committed.set()
                if item.rec.on_committed is not None:
                    item.rec.on_committed(item.rec)
                for listener in self.listeners:
                    listener(item.rec)


async def _cassette_id(conn: AsyncConnection, name: str) -> int:
    found = await conn.scalar(select(Cassette.id).where(Cassette.name == name))
    if found is not None:
        return found
    result = await conn.execute(
        insert(Cassette).values(name=name, created_at=datetime.now(UTC)).returning(Cassette.id)
    )
    return int(result.scalar_one())


async def _insert_interaction(conn: AsyncConnection, cassette_id: int, rec: Recording) -> int:
    result = await conn.execute(
        insert(Interaction)
        .values(
            cassette_id=cassette_id,
            method=rec.request.method,
            url=rec.request.url,
            request_headers=[list(h) for h in rec.request.headers],
            request_body=rec.request.body,
            status=rec.head.status,
            response_headers=[list(h) for h in rec.head.headers],
            outcome=Outcome.RECORDING.value,
            started_at=rec.started_at,
            ttfb_ms=rec.ttfb_ms,
            event_count=0,
            body_size=0,
        )
        .returning(Interaction.id)
    )
    return int(result.scalar_one())


async def _finish_interaction(
    conn: AsyncConnection, interaction_id: int, rec: Recording, end: _End
) -> None:
    outcome, error = rec.outcome, rec.error
    if rec.dropped:
        outcome = Outcome.INCOMPLETE
        error = "events were dropped while the store could not be written" + (
            f"; {error}" if error else ""
        )
    await conn.execute(
        update(Interaction)
        .where(Interaction.id == interaction_id)
        .values(
            outcome=outcome.value,
            error=error,
            duration_ms=end.duration_ms,
            event_count=rec.events,
            body_size=rec.size,
        )
    )
