"""Splitting a streamed body into stored parts: events, the pieces they arrived in, and their
times; and joining parts back into events.

An event (`proxy.core.sse`) often arrives in several chunks (a pause mid-event, a character
split across chunks). Each chunk's share of an event is a *piece*, kept with its arrival
time, so that a replay at recorded pace sends every piece when it came. An event is stored
as one *part* (a row), or, when it grows past `PART_BYTES` before it ends, as several
parts, written as they fill: neither recording nor replay ever holds a whole large event.
The event stays the unit of matching, display and export.

A compressed body (`Content-Encoding: gzip`, `deflate`, `br`) is kept exactly as it came;
its events are found in a decoded copy (`proxy.core.decoding`). The rule: **a stored
event is the compressed bytes received up to and including the chunk whose decoded bytes
complete one or more decoded events** (several decoded events completed by one chunk are
one stored event; compressed bytes cannot be cut finer); each chunk is a piece of it. A
coding not decoded here, or bytes that fail to decode, make each chunk an event of its own.

Pieces are written `[[offset, t_ms], ...]`: where each piece starts in the event's bytes
and when it arrived (ms from the request's start). The first starts at 0; the event's `t`
is its last piece's time. An event that arrived in one piece has none (`None`).
Pure code: times are given, nothing is read from a clock.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.core.decoding import DecodeError, Decoder, coded, decoder_for
from proxy.core.sse import ChunkFramer, Framer, framer_for

Pieces = tuple[tuple[int, float], ...]
"""(offset in the event's bytes, arrival time in ms) of each piece, in order."""

PART_BYTES = 2**20
"""An event not ended past this many bytes is stored in parts of about this size."""
_SPILL_DECODED = 64 * 2**10
"""Decoded bytes of an event in progress held only to find its end (a compressed stream)."""


@dataclass(frozen=True, slots=True)
class Part:
    """What one row of the store holds: bytes of one event (all of it, or a part)."""

    data: bytes
    t_ms: float  # its last piece's time
    pieces: Pieces | None  # None: one piece, at t_ms
    continues: bool = False  # this part continues the event of the part before it
    ends: bool = True  # the event ends with this part


def normal(pieces: Sequence[tuple[int, float]], t_ms: float) -> Pieces | None:
    """Pieces as stored: consecutive pieces of the same time are one; a single piece at the
    event's time is none (`None`)."""
    out: list[tuple[int, float]] = []
    for offset, t in pieces:
        if not out or out[-1][1] != t:
            out.append((offset, t))
    if len(out) == 1 and out[0][1] == t_ms:
        return None
    return tuple(out)


def encode(pieces: Pieces | None) -> str | None:
    """The store's compact text for pieces: `[[0,1.5],[17,40.25]]`."""
    if pieces is None:
        return None
    return json.dumps([[o, t] for o, t in pieces], separators=(",", ":"))


def decode(text: str) -> Pieces:
    """Stored pieces back (`encode`)."""
    return tuple((int(o), float(t)) for o, t in json.loads(text))


def slices(data: bytes, pieces: Pieces) -> Iterable[tuple[float, memoryview]]:
    """Each piece's bytes with its time."""
    view = memoryview(data)
    for i, (offset, t) in enumerate(pieces):
        end = pieces[i + 1][0] if i + 1 < len(pieces) else len(data)
        yield t, view[offset:end]


Stored = tuple[bytes, float, Pieces | None]
"""Bytes, time and pieces: of an event, or of one of its parts."""


def joined(parts: Iterable[Stored]) -> Stored:
    """The parts of one event as one: its bytes, time and pieces."""
    data: list[bytes] = []
    pieces: list[tuple[int, float]] = []
    size, t_ms = 0, 0.0
    for part, t, ps in parts:
        pieces += [(size + o, pt) for o, pt in (ps or ((0, t),))]
        data.append(part)
        size += len(part)
        t_ms = t
    return b"".join(data), t_ms, normal(pieces, t_ms)


def split(data: bytes, t_ms: float, pieces: Pieces | None, size: int = PART_BYTES) -> list[Part]:
    """An event as parts of at most `size` bytes (one part when it is no larger); a piece
    cut by a part's end goes on at the start of the next part, with the same time."""
    if len(data) <= size:
        return [Part(data, t_ms, pieces)]
    every = pieces or ((0, t_ms),)
    parts: list[Part] = []
    for start in range(0, len(data), size):
        end = min(start + size, len(data))
        inside = [(o - start, t) for o, t in every if start <= o < end]
        if not inside or inside[0][0] != 0:  # the piece begun before this part goes on
            before = [t for o, t in every if o < start]
            inside.insert(0, (0, before[-1]))
        last = inside[-1][1]
        parts.append(Part(data[start:end], last, normal(inside, last), start > 0, end == len(data)))
    return parts


class Splitter:
    """A response body, chunk by chunk with each chunk's arrival time, as stored parts.

    `framer` finds events in the body (decoded, for a compressed one); `content_encoding` is
    the response's."""

    def __init__(
        self, framer: Framer, content_encoding: str | None = None, part_bytes: int = PART_BYTES
    ):
        self._part_bytes = part_bytes
        self._framer = framer
        self._decoder: Decoder | None = None
        self._compressed = False
        if not isinstance(framer, ChunkFramer) and coded(content_encoding):
            self._compressed = True
            self._decoder = decoder_for(content_encoding)
            if self._decoder is None:  # a coding not decoded here: each chunk an event
                self._framer = ChunkFramer()
                self._compressed = False
        self._arrived: deque[list[float]] = deque()  # [size, t] of bytes not yet in a part
        self._held: list[bytes] = []  # compressed: the chunks of the event in progress
        self._held_size = 0
        self._open = False  # parts of the event in progress were given already

    def feed(self, chunk: bytes, t_ms: float) -> list[Part]:
        """The parts `chunk` completes (events that ended, or a part of a large one)."""
        if not chunk:
            return []
        if self._compressed:
            return self._feed_compressed(chunk, t_ms)
        events = self._framer.feed(chunk)
        if not self._arrived and len(events) == 1 and events[0] is chunk and not self._open:
            return [Part(chunk, t_ms, None)]  # the usual chunk: one whole event
        self._arrived.append([len(chunk), t_ms])
        parts = [self._part(event, True) for event in events]
        if self._framer.buffered >= self._part_bytes:
            parts.append(self._part(self._framer.spill(), False))
        return parts

    def close(self) -> list[Part]:
        """What is left at the end of the body: the end of an unfinished event."""
        if self._compressed:
            return [self._take_held(True)] if self._held else []
        rest = b"".join(self._framer.close())
        return [self._part(rest, True)] if rest else []

    def _part(self, data: bytes, ends: bool) -> Part:
        """`data`, the next bytes of the body, as a part with the pieces they arrived in."""
        need = len(data)
        pieces: list[tuple[int, float]] = []
        offset = 0
        while need:
            size, t = self._arrived[0]
            take = min(int(size), need)
            pieces.append((offset, t))
            offset += take
            need -= take
            if take == size:
                self._arrived.popleft()
            else:
                self._arrived[0][0] = size - take
        t_ms = pieces[-1][1] if pieces else 0.0
        part = Part(data, t_ms, normal(pieces, t_ms), self._open, ends)
        self._open = not ends
        return part

    def _feed_compressed(self, chunk: bytes, t_ms: float) -> list[Part]:
        self._held.append(chunk)
        self._held_size += len(chunk)
        self._arrived.append([len(chunk), t_ms])
        ended = False
        if self._decoder is None:  # it failed to decode earlier: each chunk an event
            ended = True
        else:
            try:
                for decoded in self._decoder.feed(chunk):
                    ended = bool(self._framer.feed(decoded)) or ended
                    if self._framer.buffered > _SPILL_DECODED:  # only its end is needed
                        self._framer.spill()
            except DecodeError:
                self._decoder = None
                ended = True
        if ended:
            return [self._take_held(True)]
        if self._held_size >= self._part_bytes:
            return [self._take_held(False)]
        return []

    def _take_held(self, ends: bool) -> Part:
        data = b"".join(self._held)
        self._held, self._held_size = [], 0
        return self._part(data, ends)


def splitter_for(
    content_type: str | None, content_encoding: str | None, part_bytes: int = PART_BYTES
) -> Splitter:
    """The splitter for a response with these header values."""
    return Splitter(framer_for(content_type), content_encoding, part_bytes)
