"""Split a streamed response body into events, the unit rrproxy records and replays.

For ``text/event-stream`` an event is one SSE event exactly as sent (the blank line that
ends it included); for newline-delimited JSON, one line; otherwise, a chunk as it arrived.
Whatever the chunking, the events concatenated are the body, byte for byte.
Pure code: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import re
from typing import Protocol

__all__ = ["ChunkFramer", "Framer", "LineFramer", "SSEFramer", "framer_for"]

SSE_TYPE = "text/event-stream"
NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/jsonl",
        "application/json-lines",
        "application/x-jsonlines",
    }
)

# WHATWG HTML, 9.2.6 "Interpreting an event stream"
# (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
# a line ends with CRLF, a lone LF or a lone CR; a blank line dispatches the event; the UTF-8
# decoding strips one leading BOM.
_EOL = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


class Framer(Protocol):
    """Turns the chunks of one response body into events."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the events completed by ``chunk``, in order."""
        ...

    def close(self) -> list[bytes]:
        """Return what is left at the end of the body (an unterminated event), if anything."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes held for the event in progress."""
        ...

    def spill(self) -> bytes:
        """Give up the event in progress as it is so far (it goes on as another event): for
        a stream that never ends its events, memory must not grow with it."""
        ...


class _Buffered:
    """The bytes of the event in progress, kept as pieces and joined once, when it completes."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0

    @property
    def buffered(self) -> int:
        return self._size

    def _keep(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._size += len(piece)

    def _take(self, tail: bytes) -> bytes:
        """Return the event in progress ending with ``tail``, and start a new one."""
        if not self._pieces:  # the whole event came in one chunk
            return tail
        event = b"".join([*self._pieces, tail])
        self._pieces = []
        self._size = 0
        return event

    def spill(self) -> bytes:
        return self._take(b"")

    def close(self) -> list[bytes]:
        rest = self._take(b"")
        return [rest] if rest else []


class SSEFramer(_Buffered):
    """One event per SSE event: its raw bytes up to and including the blank line ending it."""

    def __init__(self) -> None:
        super().__init__()
        self._head: bytes | None = b""  # first bytes, held until we know if they are a BOM
        self._line_empty = True  # the current line has no bytes in earlier chunks
        self._cr = False  # the last chunk ended in CR: an LF next belongs to that line end
        self._cr_ends_event = False  # ... and that CR ended a blank line, so the event

    def feed(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []
        if self._head is None:
            if not self._pieces and self._line_empty and not self._cr:
                # The usual chunk, at a line's start: one whole event with LF line ends, its
                # first blank line at its end (an LF first would be a blank line too).
                end = chunk.find(b"\n\n")
                if end > 0 and end == len(chunk) - 2 and chunk[0] != 10 and b"\r" not in chunk:
                    return [chunk]
            return self._scan(chunk, 0)
        # A line holding only the leading BOM is blank; the BOM stays in the event's bytes.
        chunk = self._head + chunk
        if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
            self._head = chunk
            return []
        self._head = None
        return self._scan(chunk, len(_BOM) if chunk.startswith(_BOM) else 0)

    def close(self) -> list[bytes]:
        rest = self._take(self._head or b"")  # a held head means nothing else was kept
        self._head, self._line_empty, self._cr, self._cr_ends_event = b"", True, False, False
        return [rest] if rest else []

    def _scan(self, chunk: bytes, pos: int) -> list[bytes]:
        """Frame ``chunk``, whose line content starts at ``pos``; earlier chunks are not read."""
        if not self._cr and b"\r" not in chunk:
            return self._scan_lf(chunk, pos)
        events: list[bytes] = []
        start = 0  # where the event in progress begins in this chunk
        if self._cr:
            self._cr = False
            if chunk.startswith(b"\n"):  # CRLF split across chunks: one line end, not two
                pos = 1
            if self._cr_ends_event:
                self._cr_ends_event = False
                events.append(self._take(chunk[:pos]))
                start = pos
        line_start = pos
        for eol in _EOL.finditer(chunk, pos):
            blank = self._line_empty and eol.start() == line_start
            line_start = eol.end()
            self._line_empty = True
            if eol.end() == len(chunk) and eol.group() == b"\r":
                # CR or CRLF? Only the next byte (or the end of the body) will tell.
                self._cr = True
                self._cr_ends_event = blank
            elif blank:
                events.append(self._take(chunk[start : eol.end()]))
                start = eol.end()
        if line_start < len(chunk):
            self._line_empty = False
        if start < len(chunk):
            self._keep(chunk[start:])
        return events

    def _scan_lf(self, chunk: bytes, pos: int) -> list[bytes]:
        """The common case, LF line endings only, framed with C-speed searches: an event
        ends at an LF that starts a line, or at the second LF of a pair."""
        events: list[bytes] = []
        start = 0  # where the event in progress begins in this chunk (a BOM included)
        at_line_start = self._line_empty
        i = pos
        while True:
            if at_line_start and chunk.startswith(b"\n", i):
                end = i + 1
            else:
                j = chunk.find(b"\n\n", i)
                if j == -1:
                    break
                end = j + 2
            events.append(self._take(chunk[start:end]))
            start = i = end
            at_line_start = True
        if pos < len(chunk):
            self._line_empty = chunk.endswith(b"\n")
        if start < len(chunk):
            self._keep(chunk[start:])
        return events


class LineFramer(_Buffered):
    """One event per line of newline-delimited JSON, its ``\\n`` included (CR is content)."""

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        start = 0
        end = chunk.find(b"\n")
        while end != -1:
            events.append(self._take(chunk[start : end + 1]))
            start = end + 1
            end = chunk.find(b"\n", start)
        if start < len(chunk):
            self._keep(chunk[start:])
        return events


class ChunkFramer:
    """One event per chunk, as it arrived; empty chunks are dropped."""

    buffered = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        return [chunk] if chunk else []

    def close(self) -> list[bytes]:
        return []

    def spill(self) -> bytes:
        return b""


def framer_for(content_type: str | None) -> Framer:
    """Return a new framer for a response with this ``Content-Type`` header value."""
    media_type = (content_type or "").partition(";")[0].strip().lower()
    if media_type == SSE_TYPE:
        return SSEFramer()
    if media_type in NDJSON_TYPES:
        return LineFramer()
    return ChunkFramer()
