"""How `rrproxy show` prints an event: truncated unless asked for in full, a compressed
body decoded for display (only for display: the store keeps the bytes as they came), and
the times of the pieces it arrived in when asked."""

from __future__ import annotations

from collections.abc import Sequence

from proxy.cli.output import event_text
from proxy.core.decoding import decoded
from proxy.core.headers import get
from proxy.core.printable import printable
from proxy.core.records import Event, Headers

SHOWN_BYTES = 2000
"""Bytes of an event shown without `--full`."""


def shown_events(
    headers: Headers, events: Sequence[Event], *, full: bool = False, pieces: bool = False
) -> list[str]:
    """The lines `rrproxy show` prints for an interaction's events: one entry an event."""
    coding = get(headers, "content-encoding")
    plain = decoded(coding, [e.data for e in events])
    out: list[str] = []
    if plain is not None:
        out.append(f"    (body decoded from {printable(coding or '')} for display; stored as sent)")
    for i, event in enumerate(events):
        data = event.data if plain is None else plain[i]
        text = _shown(Event(event.t_ms, data), full, decoded=plain is not None)
        if pieces and event.pieces is not None:
            times = ", ".join(f"{offset} at {t:.1f} ms" for offset, t in event.pieces)
            text += f"\n                   pieces (byte offset at time): {times}"
        out.append(text)
    return out


def _shown(event: Event, full: bool, *, decoded: bool) -> str:
    data, cut = event.data, 0
    if not full and len(data) > SHOWN_BYTES:
        data, cut = data[:SHOWN_BYTES], len(data) - SHOWN_BYTES
    if decoded:  # a decoded part may end inside a character: shown, not refused
        data = data.decode("utf-8", "replace").encode("utf-8")
    elif cut:
        data = data.decode("utf-8", "ignore").encode("utf-8") if _utf8(event.data) else data
    text = event_text(Event(event.t_ms, data))
    if cut:
        text += f" ... ({cut} more bytes; --full shows all)"
    return text


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
