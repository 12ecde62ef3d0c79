"""The single writer: takes recorded events off the hot path and commits them in batches.

Relaying never waits on the database. `begin`, `events` and `end` only append to in-memory
lists; one task (`run`) owns every write, taking whatever has piled up and writing it in
one transaction with a few statements (datasette's write thread, as an asyncio task; the
statements are `proxy.store.writes`).
It lets writes gather for up to `_LINGER_S` (50 ms) before a batch: a transaction costs far
more than a row, so batches stay few under any load, and a killed process loses only the
last tens of milliseconds. It writes at once when someone waits for the store (`flush`, a
replay of a recording still being written: `hurry`) or a batch reaches `_BATCH_BYTES`.
When it has nothing to write it checkpoints SQLite's WAL, which SQLite would otherwise do
inside a commit, in the middle of a stream.

Memory stays bounded. Should a healthy store fall behind a very fast stream by more than
`high_water` bytes, `room()` holds the relay until the writer has taken the backlog (real
LLM streams never get there). If the store fails (locked, disk full), streams are never
held: the writer retries with backoff, and past `max_pending_bytes` the queued events are
dropped and their interactions marked incomplete, with the reason, once the store answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from itertools import count, repeat

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.records import Outcome, Recording, Request, ResponseHead
from proxy.store.engine import checkpoint, create_writer_thread_engine, is_sqlite
from proxy.store.writes import Batch, CoreStatements, SqliteStatements, write_batch

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 2.0
_GIVE_UP_AT_CLOSE_S = 5.0
_MAX_HOLD_S = 0.5
_LINGER_S = 0.05
_BATCH_BYTES = 2**20
"""A batch this big is written without lingering."""
_CHECKPOINT_BYTES = 4 * 2**20


class Recorder:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        high_water: int = 4 * 2**20,
        max_pending_bytes: int = 64 * 2**20,
    ):
        self._engine = engine
        # SQLite: writes run in a thread of their own on a synchronous twin of the engine
        # (datasette's write thread): one hop per batch, not one per statement.
        self._thread: ThreadPoolExecutor | None = None
        self._thread_engine: Engine | None = None
        if is_sqlite(engine.url.render_as_string(hide_password=False)):
            self._thread = ThreadPoolExecutor(
                1, thread_name_prefix="rrproxy-writer", initializer=_give_way
            )
            self._thread_engine = create_writer_thread_engine(
                engine.url.render_as_string(hide_password=False)
            )
        self._high_water = high_water
        self._max_pending = max_pending_bytes
        self._pending = Batch()
        self._wakeup = asyncio.Event()  # something to write
        self._hurry = asyncio.Event()  # ... and someone waiting for it, or a batch's worth
        self._closing = False
        self._cassette_ids: dict[str, int] = {}
        self._failing_since: float | None = None
        self._stalled = False  # a write has taken longer than _MAX_HOLD_S
        self._unchecked = 0  # bytes written since the last checkpoint
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
        self._pending.begins.append(rec)
        self._queued()
        return rec

    def events(self, rec: Recording, t_ms: float, events: list[bytes]) -> None:
        """Events that arrived together (one chunk), in order."""
        seq, size = rec.events, sum(map(len, events))
        rec.events += len(events)
        rec.size += size
        if not rec.dropped:
            pending = self._pending
            if len(events) == 1:  # the usual chunk: one event
                pending.events.append((rec, seq, t_ms, events[0]))
            else:
                pending.events.extend(zip(repeat(rec), count(seq), repeat(t_ms), events))
            pending.size += size
            self._queued(len(events))
            if pending.size > _BATCH_BYTES:
                self._hurry.set()
            if pending.size > self._max_pending:
                self._shed()

    def end(
        self, rec: Recording, outcome: Outcome, duration_ms: float, error: str | None = None
    ) -> None:
        rec.outcome, rec.duration_ms, rec.error = outcome, duration_ms, error
        self._pending.ends.append(rec)
        self._queued()

    def _queued(self, items: int = 1) -> None:
        self._pushed += items
        self._wakeup.set()

    @property
    def backlogged(self) -> bool:
        """A healthy store is behind by more than `high_water`: the relay should wait."""
        return (
            self._pending.size > self._high_water
            and self._failing_since is None
            and not self._stalled
        )

    async def room(self) -> None:
        """Wait until the writer has taken the backlog. A store that is failing, or whose
        current write has not returned within `_MAX_HOLD_S` (locked, say: the driver waits
        out its busy timeout before it fails), never holds a stream: until a write
        succeeds, events queue (up to `max_pending_bytes`) instead."""
        try:
            async with self._progress, asyncio.timeout(_MAX_HOLD_S):
                await self._progress.wait_for(
                    lambda: (
                        self._pending.size <= self._high_water // 4
                        or self._failing_since is not None
                        or self._stalled
                        or self._closing
                    )
                )
        except TimeoutError:
            if not self._stalled:
                self._stalled = True
                log.warning("the store is slow to write; streams are no longer held for it")

    def _shed(self) -> None:
        """The store is failing and the backlog is too large: drop the queued events rather
        than grow without bound. Their recordings end as incomplete, saying why."""
        victims = {row[0] for row in self._pending.events}
        for rec in victims:
            rec.dropped = True
        self._written += len(self._pending.events)
        self._pending.events, self._pending.size = [], 0
        log.error(
            "the store is not keeping up (more than %d MB waiting): dropped the events of %d "
            "recording(s); they will be marked incomplete",
            self._max_pending // 2**20,
            len(victims),
        )

    # -- the writer task --------------------------------------------------------------------

    async def warm_up(self) -> None:
        """Before serving: start the writer thread and have it write a recording, rolled
        back, so that its connection is open and its statements are compiled before the
        first batch, which would otherwise pay for them (milliseconds of CPU) in the middle
        of the first streams."""
        if self._thread is None or self._thread_engine is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, _rehearse, self._thread_engine)
        except Exception as exc:  # the first batch will pay, that is all
            log.debug("the writer's warm-up failed: %s", getattr(exc, "orig", None) or exc)

    async def run(self) -> None:
        """The writer task: until `close()`, then everything pending is written."""
        try:
            await self._run()
        finally:
            await self._release_thread()

    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not len(self._pending):
                if self._closing:
                    return
                if self._unchecked > _CHECKPOINT_BYTES:
                    await self._checkpoint()
                    continue
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            if not self._closing:
                await self._linger()
            batch, self._pending = self._pending, Batch()
            async with self._progress:
                self._progress.notify_all()  # room() waiters: the backlog was taken
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._cassette_ids.clear()  # a cassette may have been deleted under us
                batch.extend(self._pending)
                self._pending = batch
                if self._failing_since is None:
                    self._failing_since = asyncio.get_running_loop().time()
                    # the driver's error, not SQLAlchemy's wrapper: that one quotes the
                    # statement with its parameters (recorded bodies) in the log line
                    cause = getattr(exc, "orig", None) or exc
                    log.error(
                        "cannot write to the store (%s: %s); streams continue, recording is "
                        "retried",
                        type(cause).__name__,
                        cause,
                    )
                    async with self._progress:
                        self._progress.notify_all()
                if self._closing and self._give_up():
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = 0.05
            self._unchecked += batch.size
            async with self._progress:
                self._written += len(batch)
                self._progress.notify_all()
            self._stalled = False
            if self._failing_since is not None:
                log.warning("the store is writable again; recording resumed")
                self._failing_since = None
            self._committed(batch)
            del batch  # its recordings hold request bodies: not kept while the writer waits

    async def _linger(self) -> None:
        """Before a batch: let the relays run first (the first bytes of a stream go to the
        client, not into a contest with the writer), and let writes gather, for up to
        `_LINGER_S` or until someone waits for them (`hurry`). A transaction costs far more
        than a row: few, large batches keep the writer's share of the machine small."""
        if not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_LINGER_S):
                    await self._hurry.wait()
        self._hurry.clear()

    async def _checkpoint(self) -> None:
        """Idle, with a long WAL behind us: move it into the database file now, between
        streams (SQLite's own checkpoints, inside a commit, are pushed far out)."""
        self._unchecked = 0
        if self._thread is None or self._thread_engine is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._thread, checkpoint, self._thread_engine)
        except Exception as exc:  # the next idle moment, or SQLite's own, will do it
            log.debug("checkpoint failed: %s", getattr(exc, "orig", None) or exc)

    def _give_up(self) -> bool:
        assert self._failing_since is not None
        if asyncio.get_running_loop().time() - self._failing_since < _GIVE_UP_AT_CLOSE_S:
            return False
        log.error(
            "shutting down with the store still failing: %d event(s) not written",
            len(self._pending.events),
        )
        return True

    def hurry(self) -> None:
        """Someone waits for what is queued (a replay of a recording still being written):
        write it now, not after the linger."""
        self._hurry.set()

    async def flush(self) -> None:
        """Wait until everything queued so far is in the store."""
        target = self._pushed
        if self._written < target:
            self._hurry.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._written >= target)

    async def close(self) -> None:
        """Ask the writer to write what is pending and stop: `run` returns when it has."""
        self._closing = True
        self._wakeup.set()
        self._hurry.set()
        async with self._progress:
            self._progress.notify_all()

    async def _write(self, batch: Batch) -> None:
        known = dict(self._cassette_ids)
        if self._thread is not None:
            assert self._thread_engine is not None
            cassettes, new_ids = await asyncio.get_running_loop().run_in_executor(
                self._thread, _write_in_thread, self._thread_engine, batch, known
            )
        else:
            async with self._engine.begin() as conn:
                cassettes, new_ids = await conn.run_sync(
                    lambda sync: write_batch(CoreStatements(sync), batch, known)
                )
        self._cassette_ids.update(cassettes)
        for rec, interaction_id in new_ids.items():
            rec.interaction_id = interaction_id

    async def _release_thread(self) -> None:
        if self._thread is not None and self._thread_engine is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._thread_engine.dispose)
            self._thread.shutdown(wait=False)

    def _committed(self, batch: Batch) -> None:
        for rec in batch.ends:
            if rec.on_committed is not None:
                rec.on_committed(rec)
            for listener in self.listeners:
                listener(rec)


WRITER_NICENESS = 19


def _give_way() -> None:
    """In the writer thread, on Linux: the lowest CPU priority (nice 19), so that the
    relays, and the clients and upstreams sharing the machine, are never kept waiting by
    a batch. A core that nothing else wants still writes at full speed. Where the system
    refuses, the writer writes at the process's priority: it must not fail over this."""
    if sys.platform == "linux":  # elsewhere a thread id is not a `setpriority` target
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        except OSError as exc:
            log.debug("the writer thread keeps the process's CPU priority: %s", exc)


def _rehearse(engine: Engine) -> None:
    """Write a recording of two events in a transaction that is rolled back."""
    request = Request("POST", "http://rehearsal.invalid/", (("Accept", "*/*"),), b"{}")
    head = ResponseHead(200, (("Content-Type", "text/event-stream"),))
    rec = Recording("rrproxy warm-up", request, head, datetime.now(UTC), 0.0, events=2, size=18)
    rec.outcome = Outcome.COMPLETE
    events = [(rec, seq, 0.0, b"data: 1\n\n") for seq in range(2)]
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            write_batch(SqliteStatements(conn), Batch([rec], events, [rec]), {})
        finally:
            transaction.rollback()


def _write_in_thread(
    engine: Engine, batch: Batch, known: dict[str, int]
) -> tuple[dict[str, int], dict[Recording, int]]:
    with engine.begin() as conn:
        return write_batch(SqliteStatements(conn), batch, known)
