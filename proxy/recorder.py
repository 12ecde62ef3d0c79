"""The single writer: takes recorded events off the hot path and commits them in batches.

Relaying never waits on the database. `begin`, `events` and `end` only append to in-memory
lists; one task (`run`) owns every write, taking whatever has piled up and writing it in
one transaction with a few statements (datasette's write thread, as an asyncio task).
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
import functools
import logging
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, count, repeat
from typing import Any, Protocol

from sqlalchemy import Connection, Dialect, Engine, Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from .records import Outcome, Request, ResponseHead
from .store.engine import checkpoint, create_writer_thread_engine, is_sqlite
from .store.models import Cassette, Event, Interaction

log = logging.getLogger(__name__)

_BACKOFF_MAX_S = 2.0
_GIVE_UP_AT_CLOSE_S = 5.0
_MAX_HOLD_S = 0.5
_LINGER_S = 0.05
_BATCH_BYTES = 2**20
"""A batch this big is written without lingering."""
_CHECKPOINT_BYTES = 4 * 2**20


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
    duration_ms: float | None = None
    interaction_id: int | None = None
    dropped: bool = False


_EventRow = tuple[Recording, int, float, bytes]


@dataclass
class _Batch:
    begins: list[Recording] = field(default_factory=list)
    events: list[_EventRow] = field(default_factory=list)
    ends: list[Recording] = field(default_factory=list)
    size: int = 0  # bytes of event data

    def __len__(self) -> int:
        return len(self.begins) + len(self.events) + len(self.ends)

    def extend(self, later: _Batch) -> None:
        self.begins += later.begins
        self.events += later.events
        self.ends += later.ends
        self.size += later.size


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
        self._pending = _Batch()
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
            batch, self._pending = self._pending, _Batch()
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

    async def _write(self, batch: _Batch) -> None:
        known = dict(self._cassette_ids)
        if self._thread is not None:
            assert self._thread_engine is not None
            cassettes, new_ids = await asyncio.get_running_loop().run_in_executor(
                self._thread, _write_in_thread, self._thread_engine, batch, known
            )
        else:
            async with self._engine.begin() as conn:
                cassettes, new_ids = await conn.run_sync(
                    lambda sync: _write_batch(_CoreStatements(sync), batch, known)
                )
        self._cassette_ids.update(cassettes)
        for rec, interaction_id in new_ids.items():
            rec.interaction_id = interaction_id

    async def _release_thread(self) -> None:
        if self._thread is not None and self._thread_engine is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._thread_engine.dispose)
            self._thread.shutdown(wait=False)

    def _committed(self, batch: _Batch) -> None:
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
            _write_batch(_SqliteStatements(conn), _Batch([rec], events, [rec]), {})
        finally:
            transaction.rollback()


def _write_in_thread(
    engine: Engine, batch: _Batch, known: dict[str, int]
) -> tuple[dict[str, int], dict[Recording, int]]:
    with engine.begin() as conn:
        return _write_batch(_SqliteStatements(conn), batch, known)


def _write_batch(
    db: _Statements, batch: _Batch, known: dict[str, int]
) -> tuple[dict[str, int], dict[Recording, int]]:
    """One transaction: new interactions (final already if they ended in this batch), their
    events, then the ends of interactions begun earlier. Returns the cassette ids it used
    and the ids of the new interactions. Plain synchronous code: it runs in the writer
    thread (SQLite) or through `AsyncConnection.run_sync` (other databases)."""
    ended_now = set(batch.ends)
    cassettes: dict[str, int] = {}
    new_ids: dict[Recording, int] = {}
    if batch.begins:
        names = {rec.cassette for rec in batch.begins}
        cassettes = {name: known[name] for name in names if name in known}
        for name in sorted(names - cassettes.keys()):
            cassettes[name] = db.cassette_id(name)
        rows = [
            _interaction_row(cassettes[rec.cassette], rec, rec in ended_now) for rec in batch.begins
        ]
        new_ids = dict(zip(batch.begins, db.insert_interactions(rows), strict=True))
    if batch.events:
        db.insert_events(
            [
                (rec.interaction_id or new_ids[rec], seq, t_ms, data)
                for rec, seq, t_ms, data in batch.events
            ]
        )
    if late := [rec for rec in batch.ends if rec not in new_ids]:
        db.finish([(rec.interaction_id, _final(rec)) for rec in late])
    return cassettes, new_ids


_Row = tuple[int, int, float, bytes]
"""An event's row: interaction id, seq, t_ms, data."""
_FINAL = ("outcome", "error", "duration_ms", "event_count", "body_size")
"""The interaction's columns known once it has ended (`_final`)."""
_COLUMNS = (
    "cassette_id",
    "method",
    "url",
    "request_headers",
    "request_body",
    "status",
    "response_headers",
    "started_at",
    "ttfb_ms",
    *_FINAL,
)
"""An interaction's columns but its id, in the order of `_interaction_row`."""
_INTERACTION_COLUMNS = ("id", *_COLUMNS)
_EVENT_COLUMNS = ("interaction_id", "seq", "t_ms", "data")
"""An event's columns, in the order of `_Row`."""
_FINISH = f"UPDATE interactions SET {', '.join(f'{c} = ?' for c in _FINAL)} WHERE id = ?"


class _Statements(Protocol):
    """The writes of a batch, inside the transaction that holds them."""

    def cassette_id(self, name: str) -> int:
        """The cassette's id, created if it is new."""

    def insert_interactions(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert interactions (`_interaction_row`s); their ids, in order."""

    def insert_events(self, rows: list[_Row]) -> None: ...

    def finish(self, ends: list[tuple[int | None, tuple[Any, ...]]]) -> None:
        """Set the final columns (`_final`) of interactions inserted earlier, by id."""


class _CoreStatements:
    """Any database, through SQLAlchemy Core."""

    def __init__(self, conn: Connection):
        self._conn = conn

    def cassette_id(self, name: str) -> int:
        found = self._conn.scalar(select(Cassette.id).where(Cassette.name == name))
        if found is not None:
            return found
        created = insert(Cassette).values(name=name, created_at=datetime.now(UTC))
        return self._conn.execute(created.returning(Cassette.id)).scalar_one()

    def insert_interactions(self, rows: list[tuple[Any, ...]]) -> list[int]:
        statement = insert(Interaction).returning(Interaction.id, sort_by_parameter_order=True)
        values = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
        return list(self._conn.execute(statement, values).scalars().all())

    def insert_events(self, rows: list[_Row]) -> None:
        values = [dict(zip(_EVENT_COLUMNS, row, strict=True)) for row in rows]
        self._conn.execute(insert(Event), values)

    def finish(self, ends: list[tuple[int | None, tuple[Any, ...]]]) -> None:
        statement = (
            update(Interaction)
            .where(Interaction.id == bindparam("b_id"))
            .values({c: bindparam(f"b_{c}") for c in _FINAL})
        )
        keys = [f"b_{c}" for c in _FINAL]
        rows = [{"b_id": id_, **dict(zip(keys, final, strict=True))} for id_, final in ends]
        self._conn.execute(statement, rows)


class _SqliteStatements(_CoreStatements):
    """SQLite, in the writer thread: the hot statements go to the driver's own connection,
    inside SQLAlchemy's transaction. Core's work per statement and per row was a quarter
    of the writer's CPU (690 against 500 us for a batch of 10 recordings of 20 events),
    and the writer's CPU is taken from the relays that share the machine. Rows are turned
    into parameters by the column types' own bind processors (JSON, DateTime), as Core
    would."""

    def __init__(self, conn: Connection):
        super().__init__(conn)
        self._db: sqlite3.Connection = conn.connection.driver_connection  # type: ignore[assignment]
        self._interaction_params = _bind_processed(conn.dialect, Interaction.__table__)

    def insert_interactions(self, rows: list[tuple[Any, ...]]) -> list[int]:
        # The writer holds the write lock (BEGIN IMMEDIATE), so the ids after the largest
        # are its to give: multi-row INSERTs, where a RETURNING in order costs a statement
        # per row (SQLite does not promise the order of a multi-row RETURNING).
        (largest,) = self._db.execute("SELECT max(id) FROM interactions").fetchone()
        ids = range((largest or 0) + 1, (largest or 0) + 1 + len(rows))
        params = self._interaction_params
        self._insert("interactions", _INTERACTION_COLUMNS, list(map(params, ids, rows)))
        return list(ids)

    def insert_events(self, rows: list[_Row]) -> None:
        self._insert("events", _EVENT_COLUMNS, rows)

    def _insert(self, table: str, columns: tuple[str, ...], rows: Sequence[Sequence[Any]]) -> None:
        """Multi-row INSERTs: a statement's step releases the GIL and has to win it back
        from the relays, so one step per many rows (`_rows_per_insert`) rather than per row
        keeps the writer from queueing behind the event loop row after row."""
        n = _rows_per_insert(len(columns))
        full = len(rows) - len(rows) % n
        if full:
            chunks = [tuple(chain.from_iterable(rows[i : i + n])) for i in range(0, full, n)]
            self._db.executemany(_multi_row_insert(table, columns, n), chunks)
        if rest := rows[full:]:
            sql = _multi_row_insert(table, columns, len(rest))
            self._db.execute(sql, tuple(chain.from_iterable(rest)))

    def finish(self, ends: list[tuple[int | None, tuple[Any, ...]]]) -> None:
        self._db.executemany(_FINISH, [(*final, id_) for id_, final in ends])


@functools.cache
def _bind_processed(dialect: Dialect, table: Table) -> Callable[[int, tuple[Any, ...]], list[Any]]:
    """The function that turns an id and a row of `_COLUMNS` into the driver's parameters
    through the column types' bind processors (JSON, DateTime, LargeBinary), as Core
    would."""
    procs = [
        (i, proc)
        for i, name in enumerate(_INTERACTION_COLUMNS)
        if (proc := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]

    def params(id_: int, row: tuple[Any, ...]) -> list[Any]:
        values = [id_, *row]
        for i, proc in procs:
            values[i] = proc(values[i])
        return values

    return params


def _rows_per_insert(columns: int) -> int:
    """At most 64 rows to a statement, and at most 999 bound values (SQLite's limit before
    3.32)."""
    return min(64, 999 // columns)


@functools.cache
def _multi_row_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    row = f"({', '.join('?' * len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)}"


def _final(rec: Recording) -> tuple[Any, ...]:
    """The `_FINAL` columns' values."""
    outcome, error = rec.outcome, rec.error
    if rec.dropped:
        outcome = Outcome.INCOMPLETE
        reason = "events were dropped while the store could not be written"
        error = f"{reason}; {error}" if error else reason
    return (outcome.value, error, rec.duration_ms, rec.events, rec.size)


_OPEN = (Outcome.RECORDING.value, None, None, 0, 0)
"""The `_FINAL` columns of an interaction still being recorded."""


def _interaction_row(cassette_id: int, rec: Recording, ended: bool) -> tuple[Any, ...]:
    """The `_COLUMNS` values of a new interaction (header pairs are stored as JSON arrays)."""
    request, head = rec.request, rec.head
    return (
        cassette_id,
        request.method,
        request.url,
        request.headers,
        request.body,
        head.status,
        head.headers,
        rec.started_at,
        rec.ttfb_ms,
        *(_final(rec) if ended else _OPEN),
    )
