"""The writes of one batch of recordings: one transaction, a few statements.

The recorder decides when to write and what (`proxy.serve.recorder`); this module turns a batch
into SQL. `SqliteStatements` sends the hot statements to the driver itself (multi-row
INSERTs, parameters from the column types' own bind processors), `CoreStatements` goes
through SQLAlchemy Core for any other database. Plain synchronous code: it runs in the
recorder's writer thread (SQLite) or through `AsyncConnection.run_sync`.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any, Protocol

from sqlalchemy import Connection, Dialect, Engine, Table, bindparam, insert, select, update
from sqlalchemy import exc as sa_exc

from proxy.core.records import Outcome, Recording, Request, ResponseHead
from proxy.core.usage import Usage
from proxy.store.models import Cassette, Event, Interaction
from proxy.store.models import Usage as UsageRow

_EventRow = tuple[Recording, int, float, bytes]


@dataclass
class Batch:
    begins: list[Recording] = field(default_factory=list)
    events: list[_EventRow] = field(default_factory=list)
    ends: list[Recording] = field(default_factory=list)
    size: int = 0  # bytes of event data
    sizes: dict[Recording, int] = field(default_factory=dict)
    """Bytes of event data by recording (those with events here)."""

    def __len__(self) -> int:
        return len(self.begins) + len(self.events) + len(self.ends)

    def extend(self, later: Batch) -> None:
        self.begins += later.begins
        self.events += later.events
        self.ends += later.ends
        self.size += later.size
        for rec, size in later.sizes.items():
            self.sizes[rec] = self.sizes.get(rec, 0) + size

    def apart(self) -> list[Batch]:
        """The batch as one batch per recording, in the order the recordings began."""
        parts: dict[Recording, Batch] = {}
        for rec in self.begins:
            parts.setdefault(rec, Batch()).begins.append(rec)
        for row in self.events:
            parts.setdefault(row[0], Batch()).events.append(row)
        for rec, size in self.sizes.items():
            part = parts.setdefault(rec, Batch())
            part.size, part.sizes[rec] = size, size
        for rec in self.ends:
            parts.setdefault(rec, Batch()).ends.append(rec)
        return list(parts.values())

    def drop_events(self, recs: set[Recording]) -> int:
        """Take the events of `recs` out of the batch; how many there were."""
        if not any(rec in self.sizes for rec in recs):
            return 0
        before = len(self.events)
        self.events = [row for row in self.events if row[0] not in recs]
        for rec in recs:
            self.size -= self.sizes.pop(rec, 0)
        return before - len(self.events)

    def remove(self, rec: Recording) -> int:
        """Take the recording's begin, events and end out of the batch; how many items."""
        before = len(self.begins) + len(self.ends)
        self.begins = [r for r in self.begins if r is not rec]
        self.ends = [r for r in self.ends if r is not rec]
        return before - len(self.begins) - len(self.ends) + self.drop_events({rec})


def write_batch(
    db: Statements, batch: Batch, known: dict[str, int]
) -> tuple[dict[str, int], dict[Recording, int]]:
    """One transaction: new interactions (final already if they ended in this batch), their
    events, then the ends of interactions begun earlier. Returns the cassette ids it used
    and the ids of the new interactions."""
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
    # (a recording whose begin the store refused has no row to finish)
    if late := [r for r in batch.ends if r not in new_ids and r.interaction_id is not None]:
        db.finish([(rec.interaction_id, _final(rec)) for rec in late])
    if ledger := [r for r in batch.ends if r.usage is not None and not r.dropped]:
        rows = [(r.interaction_id or new_ids.get(r), r.usage) for r in ledger]
        db.insert_usage([(i, u) for i, u in rows if i is not None and u is not None])
    return cassettes, new_ids


_Row = tuple[int, int, float, bytes]
"""An event's row: interaction id, seq, t_ms, data."""
_FINAL = ("outcome", "error", "duration_ms", "event_count", "body_size", "body_sha256")
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
"""An interaction's columns but its id (the database gives it), in the order of
`_interaction_row`."""
_EVENT_COLUMNS = ("interaction_id", "seq", "t_ms", "data")
"""An event's columns, in the order of `_Row`."""
_FINISH = f"UPDATE interactions SET {', '.join(f'{c} = ?' for c in _FINAL)} WHERE id = ?"


class Statements(Protocol):
    """The writes of a batch, inside the transaction that holds them."""

    def cassette_id(self, name: str) -> int:
        """The cassette's id, created if it is new."""

    def insert_interactions(self, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert interactions (`_interaction_row`s); their ids, in order."""

    def insert_events(self, rows: list[_Row]) -> None: ...

    def finish(self, ends: list[tuple[int | None, tuple[Any, ...]]]) -> None:
        """Set the final columns (`_final`) of interactions inserted earlier, by id."""

    def insert_usage(self, rows: list[tuple[int, Usage]]) -> None:
        """The ledger rows of interactions that ended in this batch."""


class CoreStatements:
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

    def insert_usage(self, rows: list[tuple[int, Usage]]) -> None:
        if rows:
            self._conn.execute(insert(UsageRow), [usage_row(i, u) for i, u in rows])


def usage_row(interaction_id: int, usage: Usage) -> dict[str, Any]:
    return {
        "interaction_id": interaction_id,
        "model": usage.model[:200] if usage.model else None,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cached_tokens": usage.cached_tokens,
    }


class SqliteStatements(CoreStatements):
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
        # The database gives the ids (AUTOINCREMENT: never one it gave before, even to a
        # deleted row), up to 64 rows to an INSERT. A RETURNING's rows come in no promised
        # order, but the rows of a VALUES list are inserted in its order, each with a larger
        # id than any before it: the ids in ascending order are the rows' in order.
        params = self._interaction_params
        values = list(map(params, rows))
        n = _rows_per_insert(len(_COLUMNS))
        ids: list[int] = []
        for i in range(0, len(values), n):
            chunk = values[i : i + n]
            sql = _multi_row_insert("interactions", _COLUMNS, len(chunk)) + " RETURNING id"
            returned = self._db.execute(sql, tuple(chain.from_iterable(chunk))).fetchall()
            ids += sorted(id_ for (id_,) in returned)
        return ids

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
def _bind_processed(dialect: Dialect, table: Table) -> Callable[[tuple[Any, ...]], list[Any]]:
    """The function that turns a row of `_COLUMNS` into the driver's parameters through the
    column types' bind processors (JSON, DateTime, LargeBinary), as Core would."""
    procs = [
        (i, proc)
        for i, name in enumerate(_COLUMNS)
        if (proc := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]

    def params(row: tuple[Any, ...]) -> list[Any]:
        values = list(row)
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
    return (outcome.value, error, rec.duration_ms, rec.events, rec.size, rec.body_sha256)


_OPEN = (Outcome.RECORDING.value, None, None, 0, 0, None)
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


# -- the SQLite writer thread's units of work, and what a failed write means ---------------


def rehearse(engine: Engine) -> None:
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


def write_in_thread(
    engine: Engine, batch: Batch, known: dict[str, int]
) -> tuple[dict[str, int], dict[Recording, int]]:
    with engine.begin() as conn:
        return write_batch(SqliteStatements(conn), batch, known)


def refused(exc: Exception) -> bool:
    """Whether the store will refuse these rows however often they are tried (a foreign key
    to a deleted row, text that cannot be encoded), as opposed to failing for now."""
    cause = getattr(exc, "orig", None) or exc
    return isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError)) or isinstance(
        cause, (sqlite3.IntegrityError, sqlite3.DataError, UnicodeError, OverflowError)
    )


def busy(exc: Exception) -> bool:
    """Whether the store is only busy (SQLite locked by another connection): a slow store,
    for which streams are held, not a failing one."""
    cause = getattr(exc, "orig", None) or exc
    code = getattr(cause, "sqlite_errorcode", 0) & 0xFF  # the primary result code
    return isinstance(cause, sqlite3.OperationalError) and code in _BUSY_CODES


_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
