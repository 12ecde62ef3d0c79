"""Tests for proxy.core.sse: every chunking of a body gives the same events, which add up to it."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from proxy.core.sse import ChunkFramer, Framer, LineFramer, SSEFramer, framer_for

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "openai-responses-hello-world.jsonl"
BOM = b"\xef\xbb\xbf"
MIB = 1 << 20
SMALL = 256  # bodies up to this size are also split at every byte boundary


def chunkings(body: bytes, *, per_byte: bool = True) -> Iterator[list[bytes]]:
    """Ways of cutting ``body`` into chunks, empty chunks included in the random ones."""
    yield [body]
    if per_byte:
        yield [body[i : i + 1] for i in range(len(body))]
    if len(body) <= SMALL:
        for i in range(1, len(body)):
            yield [body[:i], body[i:]]
    rng = random.Random(20240601)
    for _ in range(20):
        cuts = sorted(rng.randrange(len(body) + 1) for _ in range(rng.randint(1, 12)))
        yield [body[i:j] for i, j in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def frame(framer: Framer, chunks: list[bytes]) -> list[bytes]:
    events = [event for chunk in chunks for event in framer.feed(chunk)]
    return events + framer.close()


def assert_frames(
    make: Callable[[], Framer], body: bytes, expected: list[bytes], *, per_byte: bool = True
) -> None:
    assert b"".join(expected) == body  # the table itself must be right
    # ... and the relay's usual chunking: each event in a chunk of its own
    for chunks in [expected, *chunkings(body, per_byte=per_byte)]:
        events = frame(make(), chunks)
        assert events == expected, [len(c) for c in chunks]
        assert b"".join(events) == body
        assert all(type(event) is bytes for event in events)


SSE_CASES = [
    pytest.param(b"", [], id="empty"),
    pytest.param(b"data: a\n\ndata: b\n\n", [b"data: a\n\n", b"data: b\n\n"], id="lf"),
    pytest.param(
        b"data: a\r\n\r\ndata: b\r\n\r\n", [b"data: a\r\n\r\n", b"data: b\r\n\r\n"], id="crlf"
    ),
    pytest.param(b"data: a\r\rdata: b\r\r", [b"data: a\r\r", b"data: b\r\r"], id="cr"),
    pytest.param(
        b"data: a\r\n\ndata: b\r\r\ndata: c\n\rdata: d\r\n\r",
        [b"data: a\r\n\n", b"data: b\r\r\n", b"data: c\n\r", b"data: d\r\n\r"],
        id="mixed",
    ),
    pytest.param(
        b"data: a\r\ndata: b\r\n\r\n", [b"data: a\r\ndata: b\r\n\r\n"], id="crlf-is-one-eol"
    ),
    pytest.param(b"data: a\n\r", [b"data: a\n\r"], id="cr-at-very-end"),
    pytest.param(b"data: a\r", [b"data: a\r"], id="cr-at-very-end-unfinished"),
    pytest.param(b"data: a\r\n\r\n\n", [b"data: a\r\n\r\n", b"\n"], id="crlf-then-lf"),
    pytest.param(
        b"event: message\ndata: line 1\ndata: line 2\nid: 7\nretry: 1000\n\n",
        [b"event: message\ndata: line 1\ndata: line 2\nid: 7\nretry: 1000\n\n"],
        id="multi-line",
    ),
    pytest.param(
        b": ping\n\ndata: a\n: note\ndata: b\n\n:\n\n",
        [b": ping\n\n", b"data: a\n: note\ndata: b\n\n", b":\n\n"],
        id="comments",
    ),
    pytest.param(BOM + b"data: a\n\ndata: b\n\n", [BOM + b"data: a\n\n", b"data: b\n\n"], id="bom"),
    pytest.param(
        BOM + b"\ndata: a\n\n", [BOM + b"\n", b"data: a\n\n"], id="bom-only-line-is-blank"
    ),
    pytest.param(BOM + b"\r", [BOM + b"\r"], id="bom-cr"),
    pytest.param(BOM, [BOM], id="bom-alone"),
    pytest.param(BOM[:2], [BOM[:2]], id="half-bom-alone"),
    pytest.param(BOM[:2] + b"\n\n", [BOM[:2] + b"\n\n"], id="half-bom-is-content"),
    pytest.param(b"\n\n" + BOM + b"\n\n", [b"\n", b"\n", BOM + b"\n\n"], id="late-bom-is-content"),
    pytest.param(b"\n\ndata: a\n\n\n", [b"\n", b"\n", b"data: a\n\n", b"\n"], id="extra-blanks"),
    pytest.param(b"data: a\n \n\n", [b"data: a\n \n\n"], id="space-line-not-blank"),
    # after a first event: a chunk that starts at the second is at a line start
    pytest.param(
        b"data: 0\n\ndata: a\n\n\ndata: b\n\n",
        [b"data: 0\n\n", b"data: a\n\n", b"\n", b"data: b\n\n"],
        id="blank-between",
    ),
    pytest.param(
        b"data: 0\n\ndata: a\r\rdata: b\n\n",
        [b"data: 0\n\n", b"data: a\r\r", b"data: b\n\n"],
        id="cr-then-lf",
    ),
    pytest.param(b"data: a\n\ndata: b\n", [b"data: a\n\n", b"data: b\n"], id="no-blank-at-close"),
    pytest.param(b"data: a\n\ndata: b", [b"data: a\n\n", b"data: b"], id="no-eol-at-close"),
    pytest.param(
        b"data: \xff\xfe\xc3\x28\n\ndata: \xe2\r\r\xed\xa0\x80\n",
        [b"data: \xff\xfe\xc3\x28\n\n", b"data: \xe2\r\r", b"\xed\xa0\x80\n"],
        id="invalid-utf8",
    ),
    pytest.param("data: héllo ✓ 🎉\n\n".encode(), ["data: héllo ✓ 🎉\n\n".encode()], id="utf8"),
]


@pytest.mark.parametrize(("body", "expected"), SSE_CASES)
def test_sse_events(body: bytes, expected: list[bytes]) -> None:
    assert_frames(SSEFramer, body, expected)


@pytest.mark.parametrize(
    ("steps", "at_close"),
    [
        pytest.param(
            [(b"data: a\n\ndata: b", [b"data: a\n\n"]), (b"\n\n", [b"data: b\n\n"])],
            [],
            id="event-returned-by-the-chunk-completing-it",
        ),
        pytest.param(
            [
                (
                    b"data: a\n\ndata: b\n\ndata: c\n\n",
                    [b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"],
                )
            ],
            [],
            id="many-in-one-chunk",
        ),
        pytest.param(
            [
                (b"data: a\r", []),
                (b"\ndata: b\r", []),
                (b"\n\r", []),
                (b"\n", [b"data: a\r\ndata: b\r\n\r\n"]),
            ],
            [],
            id="crlf-split-across-chunks",
        ),
        pytest.param(
            [(b"data: a\r\r", []), (b"data: b\n\n", [b"data: a\r\r", b"data: b\n\n"])],
            [],
            id="held-cr-resolved-by-next-byte",
        ),
        pytest.param(
            [(b"data: a\n\r", []), (b"", [])], [b"data: a\n\r"], id="held-cr-resolved-at-close"
        ),
        pytest.param([(b"data: a\n", [])], [b"data: a\n"], id="rest-at-close"),
        pytest.param(
            [(BOM[:1], []), (BOM[1:], []), (b"\n", [BOM + b"\n"])], [], id="bom-byte-by-byte"
        ),
    ],
)
def test_sse_feed_returns_completed_events(
    steps: list[tuple[bytes, list[bytes]]], at_close: list[bytes]
) -> None:
    framer = SSEFramer()
    for chunk, expected in steps:
        assert framer.feed(chunk) == expected
    assert framer.close() == at_close


def test_sse_1mib_line() -> None:
    line = b"data: " + b"x" * MIB + b"\r\n"
    body = b": start\n\n" + line + b"\r\n" + b"data: " + b"y" * MIB
    # Per byte: a million feeds, which only finishes because nothing is rescanned.
    assert_frames(SSEFramer, body, [b": start\n\n", line + b"\r\n", b"data: " + b"y" * MIB])


def test_sse_16mib_event_in_64kib_chunks() -> None:
    # Linear time: each chunk is scanned once and the event is joined once.
    event = (b"data: " + b"x" * 1017 + b"\r\n") * (16 * 1024) + b"\r\n"
    body = event + b"data: end\n\n"
    chunks = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    framer = SSEFramer()
    events = [e for chunk in chunks for e in framer.feed(chunk)] + framer.close()
    assert events == [event, b"data: end\n\n"]
    assert len(event) > 16 * MIB
    assert b"".join(events) == body


def test_sse_openai_recording() -> None:
    lines = EXAMPLE.read_bytes().splitlines()
    expected = [
        b"event: " + json.loads(line)["type"].encode() + b"\ndata: " + line + b"\n\n"
        for line in lines
    ]
    assert len(expected) == 10
    assert_frames(SSEFramer, b"".join(expected), expected)


NDJSON_CASES = [
    pytest.param(b"", [], id="empty"),
    pytest.param(b'{"a":1}\n{"b":2}\n', [b'{"a":1}\n', b'{"b":2}\n'], id="trailing-newline"),
    pytest.param(b'{"a":1}\n{"b":2}', [b'{"a":1}\n', b'{"b":2}'], id="no-trailing-newline"),
    pytest.param(b'{"a":1}\r\n{"b":2}\r\n', [b'{"a":1}\r\n', b'{"b":2}\r\n'], id="crlf-stays"),
    pytest.param(b'{"a":"x\ry"}\r', [b'{"a":"x\ry"}\r'], id="cr-is-content"),
    pytest.param(b'{"a":1}\n\n\n', [b'{"a":1}\n', b"\n", b"\n"], id="blank-lines"),
    pytest.param(b"\xff\xfe\n\xc3\x28", [b"\xff\xfe\n", b"\xc3\x28"], id="invalid-utf8"),
]


@pytest.mark.parametrize(("body", "expected"), NDJSON_CASES)
def test_ndjson_lines(body: bytes, expected: list[bytes]) -> None:
    assert_frames(LineFramer, body, expected)


def test_ndjson_1mib_line() -> None:
    line = b'{"x":"' + b"x" * MIB + b'"}\n'
    assert_frames(LineFramer, line + b"{}", [line, b"{}"])


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([], id="none"),
        pytest.param([b""], id="only-empty"),
        pytest.param([b"a"], id="one"),
        pytest.param([b"ab", b"", b"c\n\n", b"", b"\rd"], id="many-with-empties"),
        pytest.param([b"\xff", b"data: a\n\n"], id="bytes-as-they-come"),
    ],
)
def test_chunk_framer(chunks: list[bytes]) -> None:
    events = frame(ChunkFramer(), chunks)
    assert events == [chunk for chunk in chunks if chunk]
    assert b"".join(events) == b"".join(chunks)


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("text/event-stream", SSEFramer),
        ("text/event-stream; charset=utf-8", SSEFramer),
        ("Text/Event-Stream", SSEFramer),
        ("  TEXT/EVENT-STREAM ;charset=UTF-8", SSEFramer),
        ("application/x-ndjson", LineFramer),
        ("application/jsonl", LineFramer),
        ("application/json-lines", LineFramer),
        ("application/x-jsonlines", LineFramer),
        ("Application/X-NDJSON; charset=utf-8", LineFramer),
        ("application/json", ChunkFramer),
        ("text/plain; charset=utf-8", ChunkFramer),
        ("text/event-streaming", ChunkFramer),
        ("charset=utf-8; text/event-stream", ChunkFramer),
        ("", ChunkFramer),
        (None, ChunkFramer),
    ],
)
def test_framer_for(content_type: str | None, kind: type[Framer]) -> None:
    framer = framer_for(content_type)
    assert type(framer) is kind
    assert framer_for(content_type) is not framer  # a new one per body


def test_sse_framer_reusable_after_close() -> None:
    framer = SSEFramer()
    assert framer.feed(BOM[:1]) == []
    assert framer.close() == [BOM[:1]]
    assert frame(framer, [BOM + b"\n", b"data: a\n\r"]) == [BOM + b"\n", b"data: a\n\r"]


@pytest.mark.parametrize("framer", [SSEFramer(), LineFramer()], ids=["sse", "ndjson"])
def test_spill_gives_up_the_open_event_and_the_body_stays_whole(framer: Framer) -> None:
    body = b"data: no end in sight " * 10
    assert framer.feed(body) == []
    assert framer.buffered == len(body)
    assert framer.spill() == body
    assert framer.buffered == 0
    assert framer.feed(b"...\n\n") + framer.close() in ([b"...\n\n"], [b"...\n", b"\n"])


def test_after_a_spill_mid_line_an_lf_first_ends_that_line() -> None:
    framer = SSEFramer()
    assert framer.feed(b"data: " + b"x" * 100) == []
    assert framer.spill() == b"data: " + b"x" * 100
    # The line goes on: "\n\n" ends it and the event, and then an LF is a blank line.
    assert framer.feed(b"yz\n\n") == [b"yz\n\n"]
    assert framer.feed(b"\ndata: a\n\n") == [b"\n", b"data: a\n\n"]
    # Still mid-line after a spill: an LF first only ends the line.
    assert framer.feed(b"data: b") == []
    assert framer.spill() == b"data: b"
    assert framer.feed(b"\nc\n\n") == [b"\nc\n\n"]
