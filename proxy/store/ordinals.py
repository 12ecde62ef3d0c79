"""Each interaction's place in its cassette (`Interaction.ordinal`: 1, 2, ...), given in the
order recordings began, by whichever proxy commits them, in whatever order.

A batch inserts its interactions without a place, then `place` puts them, inside the same
transaction, holding the cassette's row (PostgreSQL `SELECT ... FOR UPDATE`; SQLite has one
writer at a time): after every interaction of the cassette that began no later, before
those that began later (another proxy's batch, committed first, that began after). Those
later ones move up by as many places. The places stay 1..n without a gap, and the unique
index on (cassette, ordinal) makes a duplicate impossible rather than unlikely. Usually the
new interactions simply go at the end: one short read and one update.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, select, update

from proxy.store.models import Cassette, Interaction

_TAIL_PAGE = 64


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def lock(conn: Connection, cassette_ids: Sequence[int]) -> None:
    """Hold these cassettes' rows until the transaction ends (in id order: two writers
    never wait on each other crosswise). SQLite's write lock holds them already."""
    if conn.dialect.name == "sqlite" or not cassette_ids:
        return
    conn.execute(
        select(Cassette.id)
        .where(Cassette.id.in_(sorted(cassette_ids)))
        .order_by(Cassette.id)
        .with_for_update()
    )


def place(conn: Connection, cassette_id: int, new: Sequence[tuple[int, datetime]]) -> None:
    """Give the interactions `new` ((id, started_at), inserted in this transaction without a
    place) their places in the cassette, in the order they began."""
    if not new:
        return
    new = sorted(new, key=lambda row: (_aware(row[1]), row[0]))
    first = _aware(new[0][1])
    ids = {id_ for id_, _ in new}
    # The placed interactions that began after the first new one: from the end backwards.
    later: list[tuple[int, datetime, int]] = []
    before = 0
    offset = 0
    while True:
        page = conn.execute(
            select(Interaction.id, Interaction.started_at, Interaction.ordinal)
            .where(Interaction.cassette_id == cassette_id, Interaction.ordinal.is_not(None))
            .order_by(Interaction.ordinal.desc())
            .limit(_TAIL_PAGE)
            .offset(offset)
        ).all()
        for id_, started_at, place in page:
            ordinal = int(place or 0)  # never null: the query says so
            if id_ in ids:
                continue
            if _aware(started_at) <= first:
                before = ordinal
                break
            later.append((id_, _aware(started_at), ordinal))
        else:
            if len(page) == _TAIL_PAGE:
                offset += _TAIL_PAGE
                continue
        break
    later.reverse()  # in place order
    merged = _merge(later, new)
    targets = [(id_, before + i) for i, id_ in enumerate(merged, 1)]
    moved = {id_: ordinal for id_, _, ordinal in later}
    changes = [(id_, n) for id_, n in targets if moved.get(id_) != n]
    if not changes:
        return
    stmt = (
        update(Interaction)
        .where(Interaction.id == bindparam("b_id"))
        .values(ordinal=bindparam("b_ordinal"))
    )
    if not later:  # nothing moves: straight to their places
        conn.execute(stmt, [{"b_id": i, "b_ordinal": n} for i, n in changes])
        return
    # Through negative places first: the unique index holds at every row, not at the end.
    conn.execute(stmt, [{"b_id": i, "b_ordinal": -n} for i, n in changes])
    conn.execute(
        update(Interaction)
        .where(Interaction.cassette_id == cassette_id, Interaction.ordinal < 0)
        .values(ordinal=-Interaction.ordinal)
    )


def _merge(later: list[tuple[int, datetime, int]], new: list[tuple[int, datetime]]) -> list[int]:
    """The ids of `later` (in place order) and `new` (in start order), merged by start."""
    merged: list[int] = []
    i = j = 0
    while i < len(later) or j < len(new):
        if j == len(new) or (i < len(later) and later[i][1] <= _aware(new[j][1])):
            merged.append(later[i][0])
            i += 1
        else:
            merged.append(new[j][0])
            j += 1
    return merged
