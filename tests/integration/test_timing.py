"""Timing: every piece of a stream is replayed at its time, compressed or not.

The upstream sends a stream in pieces, pausing between events and inside them; it sends
each piece only once the client has the one before (an event it waits on), then pauses
(the recorded gap: the content of the stream, not a wait). The test compares where the
client's reads end, live and replayed at recorded pace: the same byte boundaries, in the
same order. (How close in time they come is measured by `python -m bench fidelity`.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Callable
from pathlib import Path

import aiohttp
import brotli
import pytest
from aiohttp import web

from proxy.core import decoding
from tests.conftest import StartProxy, StartUpstream
from tests.proc import eventually

GAP_S = 0.15  # the recorded pause before each piece (the stream's content)

PLAIN = [
    b"event: a\ndata: 1\n\n",  # a whole event
    b"event: b\ndata: hel",  # an event paused in its middle...
    b"lo\n",  # ... and again, at a line's end
    b"data: \xc3",  # a multi-byte character split across pieces
    b"\xa9\n\n",
    b": a comment between fields\ndata: 3\n",
    b"\n",  # the blank line alone
]


def _gzip(pieces: list[bytes]) -> list[bytes]:
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    out[-1] += c.flush()
    return out


def _deflate(pieces: list[bytes]) -> list[bytes]:
    c = zlib.compressobj()
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    out[-1] += c.flush()
    return out


def _br(pieces: list[bytes]) -> list[bytes]:
    c = brotli.Compressor()
    out = [c.process(p) + c.flush() for p in pieces]
    out[-1] += c.finish()
    return out


STREAMS: dict[str, tuple[str | None, Callable[[list[bytes]], list[bytes]]]] = {
    "plain": (None, lambda pieces: pieces),
    "gzip": ("gzip", _gzip),
    "deflate": ("deflate", _deflate),
    "br": ("br", _br),
}


def _upstream(
    pieces: list[bytes], coding: str | None, received: list[asyncio.Event]
) -> web.Application:
    app = web.Application()

    async def stream(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream"}
        if coding:
            headers["Content-Encoding"] = coding
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.wait_for(received[i - 1].wait(), timeout=10)
                await asyncio.sleep(GAP_S)
            await response.write(piece)
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    return app


async def _reads(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    received: list[asyncio.Event] | None = None,
    boundaries: list[int] | None = None,
) -> tuple[list[int], bytes, str]:
    """Where each read of the body ended (cumulative byte offsets), the body, its source.
    With `received`, tells the upstream when the client has each piece (`boundaries`)."""
    ends: list[int] = []
    body = b""
    async with session.post(url, json={"q": 1}, headers=headers) as resp:
        async for chunk in resp.content.iter_any():
            body += chunk
            ends.append(len(body))
            if received is not None and boundaries is not None:
                for event, boundary in zip(received, boundaries, strict=True):
                    if len(body) >= boundary:
                        event.set()
        return ends, body, resp.headers["Rrproxy-Source"]


@pytest.mark.parametrize("kind", STREAMS.keys())
async def test_replay_at_recorded_pace_sends_every_piece_as_it_came(
    kind: str, start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    coding, compress = STREAMS[kind]
    pieces = compress(PLAIN)
    boundaries = [sum(map(len, pieces[: i + 1])) for i in range(len(pieces))]
    received = [asyncio.Event() for _ in pieces]
    upstream = await start_upstream(_upstream(pieces, coding, received))
    proxy = await start_proxy(upstream, mode="record")
    url = str(proxy.make_url("/v1/stream"))
    # the raw bytes: a compressed body is compared as it travels
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        live, live_body, source = await _reads(session, url, {}, received, boundaries)
        assert source == "recorded"
        assert live == boundaries  # each piece arrived on its own
        # once at instant pace first: the recording is committed, its body read and kept
        _, body, _ = await _reads(session, url, {"Rrproxy-Mode": "replay"})
        assert body == live_body
        replayed, body, source = await _reads(
            session, url, {"Rrproxy-Mode": "replay", "Rrproxy-Pace": "recorded"}
        )
    assert source == "replayed"
    assert body == live_body == b"".join(pieces)
    assert replayed == live  # every piece on its own, at its time: the same boundaries

    await proxy.close()
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT data, pieces FROM events ORDER BY seq").fetchall()
    assert b"".join(data for data, _ in rows) == b"".join(pieces)  # stored as it came
    # one row an event: the events end with pieces 1, 5 and 7; the others are pieces of them
    assert [data for data, _ in rows] == [
        pieces[0],
        b"".join(pieces[1:5]),
        b"".join(pieces[5:]),
    ]
    assert [p is None for _, p in rows] == [True, False, False]


async def test_a_compressed_stream_is_written_event_by_event_while_it_streams(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    """The first event of a gzip stream reaches the store while the upstream holds the rest
    (it used to be held whole, as one event, until the end)."""
    pieces = _gzip([b"data: 1\n\n", b"data: 2\n\n"])
    release = asyncio.Event()
    app = web.Application()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
        )
        await response.prepare(request)
        await response.write(pieces[0])
        await asyncio.wait_for(release.wait(), timeout=20)
        await response.write(pieces[1])
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="record")

    def first_event_stored() -> bytes | None:
        with sqlite3.connect(db_path) as db:
            row = db.execute("SELECT data FROM events WHERE seq = 0").fetchone()
        return None if row is None else bytes(row[0])

    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(proxy.make_url("/v1/stream"), json={}) as resp,
    ):
        first = await resp.content.readexactly(len(pieces[0]))
        assert first == pieces[0]
        stored = await eventually(first_event_stored)
        release.set()
        rest = await resp.content.read()
    assert stored == pieces[0]
    assert decoding.decoded("gzip", [first + rest]) == [b"data: 1\n\ndata: 2\n\n"]
