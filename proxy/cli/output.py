"""What the cassette commands print: tables and lines for people, JSON shapes for scripts,
and the files they write.

Times in JSON are the cassette file's form (`format_time`: ISO 8601, UTC, microseconds, `Z`),
the form `GET /_rrproxy/cassettes` uses too; tables show the same form to the second.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from proxy.cassettes.file_format import format_time
from proxy.core.messages import Message, as_json, preview
from proxy.core.records import Event
from proxy.errors import ConfigError
from proxy.files import atomic_write

if TYPE_CHECKING:
    from proxy.store.queries import CassetteInfo, StoredInteraction


T = TypeVar("T")


def write_out(target: str, produce: Callable[[IO[bytes]], T]) -> T:
    """Run `produce` on the output `target` names: standard output for "-" (spooled first:
    nothing reaches it unless all went well), else a file that appears whole or not at all."""
    if target == "-":
        with tempfile.TemporaryFile() as spool:
            result = produce(spool)
            spool.seek(0)
            shutil.copyfileobj(spool, sys.stdout.buffer)
            sys.stdout.flush()
        return result
    path = Path(target)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: the directory {path.parent} does not exist")
    with atomic_write(path) as f:
        return produce(f)


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def json_time(t: datetime | None) -> str | None:
    return format_time(t) if t else None


def table_time(t: datetime | None) -> str:
    return format_time(t)[:19] + "Z" if t else "-"  # YYYY-MM-DDTHH:MM:SSZ


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError  # unreachable


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def printable(text: str) -> str:
    """Text safe for a terminal: control characters shown as escapes, never obeyed."""
    return "".join(c if c.isprintable() or c == "\t" else f"\\x{ord(c):02x}" for c in text)


# -- ls ---------------------------------------------------------------------------------------


def cassettes_table(infos: Sequence[CassetteInfo]) -> str:
    return table(
        ("NAME", "INTERACTIONS", "EVENTS", "SIZE", "LAST RECORDED", "INCOMPLETE"),
        [
            (
                i.name,
                str(i.interactions),
                str(i.events),
                size(i.size),
                table_time(i.last_recorded),
                str(i.incomplete),
            )
            for i in infos
        ],
    )


def cassette_json(i: CassetteInfo) -> dict[str, Any]:
    return {
        "name": i.name,
        "interactions": i.interactions,
        "events": i.events,
        "size": i.size,
        "last_recorded": json_time(i.last_recorded),
        "incomplete": i.incomplete,
        "untimed": i.untimed,
    }


# -- show -------------------------------------------------------------------------------------


def interaction_json(
    i: StoredInteraction, evs: list[Event], no_events: bool, msgs: Sequence[Message] = ()
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "number": i.number,
        "method": i.request.method,
        "url": i.request.url,
        "status": i.response.status,
        "events": i.events,
        "size": i.size,
        "ttfb_ms": i.ttfb_ms,
        "duration_ms": i.duration_ms,
        "complete": i.complete,
        "outcome": i.outcome.value,
        "error": i.error,
        "recorded_at": json_time(i.recorded_at),
        "untimed": i.untimed,
    }
    if not no_events:
        obj["body"] = [event_json(e) for e in evs]
        if i.response.status == 101:  # a WebSocket session: its messages
            obj["messages"] = [as_json(m) for m in msgs]
    return obj


def message_text(message: Message) -> str:
    """`   12.5 ms  <- 1.2 kB  {"type": "session.created", ...` (-> client to upstream)."""
    return (
        f"    {message.t_ms:>9.1f} ms  {message.arrow} {size(len(message.data)):>8}  "
        + printable(preview(message, 72))
    )


def event_json(event: Event) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = {"t": event.t_ms, "data": event.data.decode("utf-8")}
    except UnicodeDecodeError:
        obj = {"t": event.t_ms, "b64": base64.b64encode(event.data).decode("ascii")}
    if event.pieces is not None:  # as the cassette file has them
        obj["pieces"] = [[offset, t] for offset, t in event.pieces]
    return obj


def interaction_text(i: StoredInteraction) -> str:
    took = f"took {i.duration_ms:.0f} ms" if i.duration_ms is not None else "no end"
    state = "complete" if i.complete else i.outcome.value.replace("_", " ")
    websocket = i.response.status == 101
    lines = [
        f"#{i.number}  {i.request.method} {printable(i.request.url)}",
        f"    {i.response.status}, {i.events} {'messages' if websocket else 'events'}, "
        f"{size(i.size)}, "
        f"first byte {i.ttfb_ms:.0f} ms, {took}, {state}; recorded {table_time(i.recorded_at)}",
    ]
    if i.error:
        lines.append(f"    {printable(i.error)}")
    if i.untimed:
        lines.append(f"    {UNTIMED}")
    return "\n".join(lines)


UNTIMED = "imported without event timing: the body is one event, replayed at untimed_pace"


def event_text(event: Event) -> str:
    stamp = f"    {event.t_ms:>9.1f} ms  "
    pad = " " * len(stamp)
    try:
        text = event.data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{stamp}({len(event.data)} bytes, not UTF-8) {event.data[:48]!r}"
    lines = text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n").split("\n")
    return "\n".join((stamp if i == 0 else pad) + printable(line) for i, line in enumerate(lines))
