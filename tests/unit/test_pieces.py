"""Splitting a body into stored parts: pieces with their times, large events in parts,
compressed bodies framed on a decoded copy; and joining parts back (table-driven)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from proxy.core import decoding
from proxy.core.pieces import Part, Splitter, joined, normal, split, splitter_for
from proxy.core.sse import LineFramer, SSEFramer

SSE = "text/event-stream"


def feed_all(splitter: Splitter, chunks: list[tuple[bytes, float]]) -> list[Part]:
    parts: list[Part] = []
    for chunk, t in chunks:
        parts += splitter.feed(chunk, t)
    return parts + splitter.close()


def events_of(parts: list[Part]) -> list[tuple[bytes, float, object]]:
    """Parts joined into events, as export reads them."""
    events: list[list[Part]] = []
    for part in parts:
        if part.continues:
            events[-1].append(part)
        else:
            events.append([part])
    return [joined((p.data, p.t_ms, p.pieces) for p in event) for event in events]


CASES = {
    "whole events, one a chunk": (
        [(b"data: 1\n\n", 1.0), (b"data: 2\n\n", 2.0)],
        [(b"data: 1\n\n", 1.0, None), (b"data: 2\n\n", 2.0, None)],
    ),
    "a pause inside an event": (
        [(b"data: he", 1.0), (b"llo\n\n", 5.0)],
        [(b"data: hello\n\n", 5.0, ((0, 1.0), (8, 5.0)))],
    ),
    "an event ends inside a chunk, the next starts there": (
        [(b"data: 1\n\ndata: ", 1.0), (b"2\n\n", 3.0)],
        [(b"data: 1\n\n", 1.0, None), (b"data: 2\n\n", 3.0, ((0, 1.0), (6, 3.0)))],
    ),
    "a multi-byte character split across chunks": (
        [("data: é".encode()[:-1], 1.0), ("é\n\n".encode()[1:], 2.0)],
        [("data: é\n\n".encode(), 2.0, ((0, 1.0), (7, 2.0)))],
    ),
    "three pieces, two at one time": (
        [(b"data:", 1.0), (b" x", 1.0), (b"\n\n", 4.0)],
        [(b"data: x\n\n", 4.0, ((0, 1.0), (7, 4.0)))],
    ),
    "CRLF split across chunks": (
        [(b"data: 1\r\n\r", 1.0), (b"\n", 2.0)],
        [(b"data: 1\r\n\r\n", 2.0, ((0, 1.0), (10, 2.0)))],
    ),
    "an unterminated last event": (
        [(b"data: 1\n\ndata: 2", 1.0), (b"3", 2.0)],
        [(b"data: 1\n\n", 1.0, None), (b"data: 23", 2.0, ((0, 1.0), (7, 2.0)))],
    ),
}


@pytest.mark.parametrize(("chunks", "expected"), CASES.values(), ids=CASES.keys())
def test_events_keep_their_pieces(
    chunks: list[tuple[bytes, float]], expected: list[tuple[bytes, float, object]]
) -> None:
    parts = feed_all(splitter_for(SSE, None), chunks)
    assert events_of(parts) == expected
    assert b"".join(p.data for p in parts) == b"".join(c for c, _ in chunks)


def test_ndjson_lines_keep_their_pieces() -> None:
    parts = feed_all(Splitter(LineFramer()), [(b'{"a":', 1.0), (b"1}\n{}\n", 2.0)])
    assert events_of(parts) == [(b'{"a":1}\n', 2.0, ((0, 1.0), (5, 2.0))), (b"{}\n", 2.0, None)]


def test_an_event_larger_than_a_part_is_written_in_parts_as_it_fills() -> None:
    splitter = Splitter(SSEFramer(), part_bytes=10)
    first = splitter.feed(b"data: 0123456789", 1.0)  # 16 bytes, no end yet: a part now
    assert [(p.data, p.continues, p.ends) for p in first] == [(b"data: 0123456789", False, False)]
    second = splitter.feed(b"ab", 2.0)  # below a part's size: held
    assert second == []
    last = splitter.feed(b"\n\ndata: x\n\n", 3.0)
    assert [(p.data, p.continues, p.ends, p.pieces) for p in last] == [
        (b"ab\n\n", True, True, ((0, 2.0), (2, 3.0))),
        (b"data: x\n\n", False, True, None),
    ]
    assert events_of(first + last) == [
        (b"data: 0123456789ab\n\n", 3.0, ((0, 1.0), (16, 2.0), (18, 3.0))),
        (b"data: x\n\n", 3.0, None),
    ]


SPLITS = {
    "one piece": (b"abcdefghij", 5.0, None),
    "pieces inside parts": (b"abcdefghij", 9.0, ((0, 1.0), (2, 2.0), (7, 9.0))),
    "a piece across a part's end": (b"abcdefghij", 9.0, ((0, 1.0), (3, 9.0))),
    "a piece at a part's start": (b"abcdefghij", 9.0, ((0, 1.0), (4, 9.0))),
}


@pytest.mark.parametrize(("data", "t", "pieces"), SPLITS.values(), ids=SPLITS.keys())
def test_split_and_joined_give_the_event_back(data: bytes, t: float, pieces: object) -> None:
    parts = split(data, t, pieces, size=4)  # type: ignore[arg-type]
    assert [len(p.data) for p in parts] == [4, 4, 2]
    assert [p.continues for p in parts] == [False, True, True]
    assert joined((p.data, p.t_ms, p.pieces) for p in parts) == (data, t, pieces)


def test_normal_pieces() -> None:
    assert normal([(0, 3.0)], 3.0) is None
    assert normal([(0, 1.0)], 3.0) == ((0, 1.0),)  # arrived before the event's time
    assert normal([(0, 1.0), (4, 1.0), (6, 2.0)], 2.0) == ((0, 1.0), (6, 2.0))


def _gzip_flushed(pieces: list[bytes]) -> list[bytes]:
    """A gzip stream flushed after each piece, as a streaming server sends it."""
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    out[-1] += c.flush()
    return out


def _br_flushed(pieces: list[bytes]) -> list[bytes]:
    c = brotli.Compressor()
    out = [c.process(p) + c.flush() for p in pieces]
    out[-1] += c.finish()
    return out


def _deflate_flushed(pieces: list[bytes], wbits: int) -> list[bytes]:
    c = zlib.compressobj(wbits=wbits)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    out[-1] += c.flush()
    return out


PLAIN = [b"data: 1\n\n", b"data: he", b"llo\n\n", b"data: 3\n\n"]
CODINGS = {
    "gzip": lambda: _gzip_flushed(PLAIN),
    "br": lambda: _br_flushed(PLAIN),
    "deflate": lambda: _deflate_flushed(PLAIN, zlib.MAX_WBITS),
    "raw deflate": lambda: _deflate_flushed(PLAIN, -zlib.MAX_WBITS),
}


@pytest.mark.parametrize("coding", CODINGS.keys())
def test_a_compressed_stream_is_split_where_decoded_events_end(coding: str) -> None:
    chunks = CODINGS[coding]()
    header = "deflate" if "deflate" in coding else coding
    parts = feed_all(splitter_for(SSE, header), [(c, float(i)) for i, c in enumerate(chunks)])
    # the compressed bytes as they came, grouped by the chunk that ended a decoded event
    assert [p.data for p in parts] == [chunks[0], chunks[1] + chunks[2], chunks[3]]
    assert [p.pieces for p in parts] == [None, ((0, 1.0), (len(chunks[1]), 2.0)), None]
    assert decoding.decoded(header, [p.data for p in parts]) == [
        PLAIN[0],
        PLAIN[1] + PLAIN[2],
        PLAIN[3],
    ]


def test_a_compressed_stream_that_does_not_decode_is_split_by_chunk() -> None:
    parts = feed_all(splitter_for(SSE, "gzip"), [(b"not gzip", 1.0), (b"at all", 2.0)])
    assert [(p.data, p.t_ms) for p in parts] == [(b"not gzip", 1.0), (b"at all", 2.0)]


def test_an_unknown_coding_is_split_by_chunk() -> None:
    parts = feed_all(splitter_for(SSE, "compress"), [(b"ab", 1.0), (b"cd", 2.0)])
    assert [p.data for p in parts] == [b"ab", b"cd"]


def test_a_long_compressed_event_is_written_in_parts() -> None:
    chunks = _gzip_flushed([b"data: " + b"x" * 5000, b"y" * 5000, b"\n\n"])
    splitter = Splitter(SSEFramer(), "gzip", part_bytes=1)
    parts = feed_all(splitter, [(c, float(i)) for i, c in enumerate(chunks)])
    assert [(p.continues, p.ends) for p in parts] == [(False, False), (True, False), (True, True)]


def test_decoding_is_bounded_however_much_the_input_expands() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    decoder = decoding.decoder_for("gzip", slice_bytes=65536)
    assert decoder is not None
    sizes = [len(out) for out in decoder.feed(bomb)]
    assert max(sizes) <= 65536 and sum(sizes) == 10_000_000
    br = decoding.decoder_for("br", slice_bytes=65536)
    assert br is not None
    sizes = [len(out) for out in br.feed(brotli.compress(b"\0" * 10_000_000))]
    assert max(sizes) <= 2 * 65536 and sum(sizes) == 10_000_000  # brotli stops near the limit


def test_gzip_members_one_after_the_other() -> None:
    data = gzip.compress(b"data: 1\n\n") + gzip.compress(b"data: 2\n\n")
    assert decoding.decoded("gzip", [data[:7], data[7:]]) is not None
    assert b"".join(decoding.decoded("gzip", [data]) or []) == b"data: 1\n\ndata: 2\n\n"


def test_what_is_not_decoded() -> None:
    assert decoding.decoded(None, [b"x"]) is None
    assert decoding.decoded("identity", [b"x"]) is None
    assert decoding.decoded("gzip, br", [b"x"]) is None
    assert decoding.decoded("gzip", [b"garbage"]) is None


def test_an_empty_chunk_is_nothing() -> None:
    assert splitter_for(SSE, None).feed(b"", 1.0) == []
    assert splitter_for(SSE, "gzip").feed(b"", 1.0) == []


def test_a_long_decoded_event_is_not_held_to_find_its_end() -> None:
    """Only the end of a decoded event matters: its bytes are let go as it grows."""
    long = b"data: " + b"x" * 200_000
    chunks = _gzip_flushed([long, b"\n\n"])
    parts = feed_all(splitter_for(SSE, "gzip"), [(c, float(i)) for i, c in enumerate(chunks)])
    assert [p.data for p in parts] == [chunks[0] + chunks[1]]
    assert decoding.decoded("gzip", [parts[0].data]) == [long + b"\n\n"]


def test_deflate_whose_first_chunk_is_one_byte() -> None:
    data = zlib.compress(b"data: 1\n\n")
    assert decoding.decoded("deflate", [data[:1], data[1:]]) == [b"", b"data: 1\n\n"]


def test_bytes_after_the_end_of_a_deflate_or_br_stream_are_let_be() -> None:
    assert decoding.decoded("deflate", [zlib.compress(b"a") + b"tail", b"more"]) == [b"a", b""]
    assert decoding.decoded("br", [brotli.compress(b"a"), b""]) == [b"a", b""]


def test_br_that_does_not_decode() -> None:
    assert decoding.decoded("br", [b"\xff" * 20]) is None
