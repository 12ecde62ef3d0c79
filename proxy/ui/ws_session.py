"""What the interaction page shows of a WebSocket session (an interaction whose response is
the upstream's 101): a page of its messages, each as the table shows it, and its timeline in
two lanes, one per direction. Every read is a page or an aggregate the database computes
(at most `MAX_SHOWN_BYTES` of a payload is read): memory stays flat however long the
session or large its messages.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.messages import Kind
from proxy.store.models import Message
from proxy.ui import render
from proxy.ui.reads import PAGE, TIMELINE_BUCKETS

SHOWN = render.MAX_SHOWN_BYTES
"""A payload's bytes read for the table at most (the rest is counted, not read)."""
INLINE_TEXT = 300
"""A text payload longer than this is shown cut, whole (up to `SHOWN`) when opened."""


@dataclass(frozen=True)
class MessageRow:
    n: int  # 1-based, in the order the messages crossed the proxy
    t_ms: float  # since the handshake's start, as recorded
    delta_ms: float  # since the message before (since the 101 for the first)
    from_client: bool
    kind: Kind
    size: int
    head: bytes  # the payload's first `SHOWN` bytes (a close's reason)
    code: int | None


def _columns(limit: int) -> tuple[Any, ...]:
    return (
        Message.seq,
        Message.t_ms,
        Message.from_client,
        Message.kind,
        Message.code,
        func.length(Message.data).label("size"),
        func.substr(Message.data, 1, limit).label("head"),
    )


async def messages_page(
    engine: AsyncEngine,
    interaction_id: int,
    *,
    page: int = 0,
    upgraded_ms: float = 0.0,
    per_page: int = PAGE,
) -> list[MessageRow]:
    """The `page`-th page of a session's messages. Their `seq`s count from 0 without a
    hole (the recorder and the imports number them so), so a page is a range of the
    primary key, read at the same cost at its start and at its end."""
    first = max(page, 0) * per_page
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(*_columns(SHOWN))
                .where(
                    Message.interaction_id == interaction_id,
                    Message.seq >= first - 1,  # the one before, for the first's Δ
                    Message.seq < first + per_page,
                )
                .order_by(Message.seq)
            )
        ).all()
    before = upgraded_ms
    out = []
    for r in rows:
        if r.seq >= first:
            out.append(
                MessageRow(
                    r.seq + 1,
                    r.t_ms,
                    r.t_ms - before,
                    bool(r.from_client),
                    Kind(r.kind),
                    int(r.size),
                    bytes(r.head or b""),
                    r.code,
                )
            )
        before = r.t_ms
    return out


async def payload_head(engine: AsyncEngine, interaction_id: int, n: int) -> tuple[int, bytes]:
    """Message `n`'s size and its first `SHOWN` bytes ((-1, b"") when there is none)."""
    async with engine.connect() as conn:
        r = (
            await conn.execute(
                select(*_columns(SHOWN)).where(
                    Message.interaction_id == interaction_id, Message.seq == n - 1
                )
            )
        ).first()
    return (-1, b"") if r is None else (int(r.size), bytes(r.head or b""))


def shown(m: MessageRow) -> dict[str, Any]:
    """A message as a row of the table: its direction, kind, and payload as text (JSON
    pretty-printed), or for binary only its size (its bytes are fetched when opened)."""
    row: dict[str, Any] = {
        "n": m.n,
        "t": m.t_ms,
        "delta": m.delta_ms,
        "size": m.size,
        "kind": m.kind.value,
        "up": m.from_client,
        "arrow": "→" if m.from_client else "←",
        "direction": "client → upstream" if m.from_client else "upstream → client",
        "text": None,
        "pretty": None,
        "long": False,
    }
    if m.kind is Kind.CLOSE:
        reason = m.head.decode("utf-8", "replace")
        who = "client" if m.from_client else "upstream"
        row["text"] = f"close {m.code}" + (f" {reason!r}" if reason else "") + f" (by the {who})"
    elif m.kind is Kind.TEXT:
        whole = len(m.head) >= m.size
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(m.head, final=whole)
        if not whole:
            text += f"… ({m.size - len(m.head)} more bytes)"
        row["text"] = text
        row["pretty"] = render.pretty_json(text) if whole else None
        row["long"] = len(text) > INLINE_TEXT
    return row


def escaped_payload(size: int, head: bytes) -> str:
    """A payload's bytes with escapes, as the raw view of an event."""
    more = size - len(head)
    return render.escaped(head) + (f"... ({more} more bytes)" if more > 0 else "")


async def timeline(
    engine: AsyncEngine,
    interaction_id: int,
    span_ms: float,
    upgraded_ms: float,
    width: float = 1000.0,
) -> dict[str, Any]:
    """The session on one axis (time since the handshake's start, ms) in two lanes: the
    client's messages above it, the upstream's below, one mark per slice of time (at most
    `TIMELINE_BUCKETS` a lane), its height by bytes; the 101 and each close marked."""
    async with engine.connect() as conn:
        last = await conn.scalar(
            select(func.max(Message.t_ms)).where(Message.interaction_id == interaction_id)
        )
        span = max(span_ms, float(last or 0.0), upgraded_ms, 1.0)
        slice_ms = span / TIMELINE_BUCKETS
        slot = cast(Message.t_ms / slice_ms, Integer)
        grouped = (
            await conn.execute(
                select(Message.from_client, slot, func.count(), func.sum(func.length(Message.data)))
                .where(Message.interaction_id == interaction_id)
                .group_by(Message.from_client, slot)
                .order_by(Message.from_client, slot)
            )
        ).all()
        closes = (
            await conn.execute(
                select(Message.t_ms, Message.from_client, Message.code, Message.seq)
                .where(Message.interaction_id == interaction_id, Message.kind == Kind.CLOSE.value)
                .order_by(Message.seq)
                .limit(4)
            )
        ).all()
    scale = width / span
    biggest = max((int(r[3] or 0) for r in grouped), default=1) or 1
    marks = []
    for from_client, at, count, size in grouped:
        h = round(6 + 24 * (int(size or 0) / biggest) ** 0.5, 1)
        who = "client → upstream" if from_client else "upstream → client"
        marks.append(
            {
                "x": round(at * slice_ms * scale, 2),
                "y": 32 - h if from_client else 34,
                "h": h,
                "up": bool(from_client),
                "title": f"{count} message(s) {who}, {int(size or 0)} bytes "
                f"from {at * slice_ms:.1f} ms",
            }
        )
    digits = 1 if span < 50 else 0  # a session of a few ms: ticks 0.6 ms apart
    ticks = [
        {"x": round(width * k / 5, 1), "label": f"{span * k / 5:.{digits}f} ms"} for k in range(6)
    ]
    return {
        "lanes": True,
        "width": width,
        "marks": marks,
        "ticks": ticks,
        "upgraded": round(upgraded_ms * scale, 2),
        "upgraded_ms": upgraded_ms,
        "closes": [
            {
                "x": round(t * scale, 2),
                "n": seq + 1,
                "title": f"close {code} by the {'client' if c else 'upstream'} at {t:.1f} ms",
            }
            for t, c, code, seq in closes
        ],
        "gaps": [],
    }
