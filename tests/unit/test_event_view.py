"""`rrproxy show`'s events: cut when long, decoded when compressed, pieces when asked."""

from __future__ import annotations

import gzip

from proxy.cli.event_view import SHOWN_BYTES, shown_events
from proxy.core.records import Event

SSE = (("Content-Type", "text/event-stream"),)


def test_a_long_event_is_cut_and_full_shows_it_whole() -> None:
    event = Event(1.0, b"data: " + "é".encode() * SHOWN_BYTES + b"\n\n")
    [cut] = shown_events(SSE, [event])
    assert cut.endswith(f"... ({len(event.data) - SHOWN_BYTES} more bytes; --full shows all)")
    assert "\ufffd" not in cut  # cut between characters, not inside one
    [whole] = shown_events(SSE, [event], full=True)
    assert "é" * SHOWN_BYTES in whole and "more bytes" not in whole


def test_a_long_event_of_bytes_is_cut_too() -> None:
    [cut] = shown_events(SSE, [Event(1.0, b"\xff" * (SHOWN_BYTES + 10))])
    assert "not UTF-8" in cut and cut.endswith("(10 more bytes; --full shows all)")


def test_a_compressed_body_is_shown_decoded_with_its_pieces() -> None:
    data = gzip.compress(b"data: hello\n\n")
    events = [Event(3.0, data[:10], ((0, 1.0), (4, 3.0))), Event(4.0, data[10:])]
    lines = shown_events((*SSE, ("Content-Encoding", "gzip")), events, pieces=True)
    assert lines[0] == "    (body decoded from gzip for display; stored as sent)"
    assert "data: hello" in "\n".join(lines[1:])
    assert lines[1].endswith("pieces (byte offset at time): 0 at 1.0 ms, 4 at 3.0 ms")
    assert "pieces" not in lines[2]


def test_a_body_that_does_not_decode_is_shown_as_stored() -> None:
    lines = shown_events((*SSE, ("Content-Encoding", "gzip")), [Event(1.0, b"data: x\n\n")])
    assert lines == ["          1.0 ms  data: x"]
