"""Pieces in the cassette file and in `rrproxy show`, from streams recorded through the proxy.

A stream paused inside an event, a gzip stream and a 1 MB event are recorded; the file
keeps each event's pieces (`"pieces"`, version 2) and reads back byte for byte; `show`
cuts the long event (`--full` prints it whole), decodes the gzip body for display and
prints the pieces' times with `--pieces`.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import zlib
from contextlib import closing
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.cassettes import file_format as cassette_file
from tests.conftest import StartProxy, StartUpstream
from tests.proc import run_cli

PAUSED = [b"event: a\ndata: hel", b"lo\n\n", b"data: 2\n\n"]
LONG = b"data: " + b"x" * 2**20 + b"\n\n"


def _gzip(pieces: list[bytes]) -> list[bytes]:
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in pieces]
    out[-1] += c.flush()
    return out


GZIPPED = _gzip(PAUSED)


def _upstream(received: asyncio.Event) -> web.Application:
    async def paused(request: web.Request) -> web.StreamResponse:
        gzip = request.path.endswith("gzip")
        headers = {"Content-Type": "text/event-stream"}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        pieces = GZIPPED if gzip else PAUSED
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(pieces[0])
        await asyncio.wait_for(received.wait(), timeout=10)  # the client has the first piece
        received.clear()
        for piece in pieces[1:]:
            await response.write(piece)
        await response.write_eof()
        return response

    async def long(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(LONG)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/paused", paused)
    app.router.add_post("/v1/gzip", paused)
    app.router.add_post("/v1/long", long)
    return app


async def _record(start_upstream: StartUpstream, start_proxy: StartProxy) -> None:
    received = asyncio.Event()
    upstream = await start_upstream(_upstream(received))
    proxy = await start_proxy(upstream, mode="record", cassette="timed")
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for path, first in (("/v1/paused", PAUSED[0]), ("/v1/gzip", GZIPPED[0])):
            async with client.post(proxy.make_url(path), json={}) as resp:
                assert await resp.content.readexactly(len(first)) == first
                received.set()
                await resp.read()
        async with client.post(proxy.make_url("/v1/long"), json={}) as resp:
            assert await resp.read() == LONG
    await proxy.close()  # the recorder's last batch is committed


def _cli(*args: str, cwd: Path, db: Path) -> str:
    result = run_cli(*args, "--db", str(db), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_the_file_keeps_pieces_and_reads_back_byte_for_byte(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    await _record(start_upstream, start_proxy)
    _cli("export", "timed", "-o", "timed.cassette.jsonl", cwd=tmp_path, db=db_path)
    exported = (tmp_path / "timed.cassette.jsonl").read_bytes()
    lines = [json.loads(line) for line in exported.splitlines()]
    assert lines[0]["version"] == cassette_file.VERSION == 2
    paused_events = lines[2:4]
    assert paused_events[0]["data"] == "event: a\ndata: hello\n\n"
    pieces = paused_events[0]["pieces"]
    assert [offset for offset, _ in pieces] == [0, len(PAUSED[0])]
    assert pieces[0][1] < pieces[1][1] == paused_events[0]["t"]
    assert "pieces" not in paused_events[1]  # arrived whole: the line as version 1 wrote it

    other = tmp_path / "other.db"
    _cli("import", "timed.cassette.jsonl", cwd=tmp_path, db=other)
    _cli("export", "timed", "-o", "again.cassette.jsonl", cwd=tmp_path, db=other)
    assert (tmp_path / "again.cassette.jsonl").read_bytes() == exported
    with closing(sqlite3.connect(other)) as db:
        stored = db.execute(
            "SELECT e.data, e.pieces FROM events e JOIN interactions i ON i.id = e.interaction_id"
            " WHERE i.url LIKE '%/v1/gzip' ORDER BY e.seq"
        ).fetchall()
    assert b"".join(data for data, _ in stored) == b"".join(GZIPPED)  # compressed, as sent
    assert json.loads(stored[0][1])[1][0] == len(GZIPPED[0])  # the pause, at its byte


async def test_a_large_imported_event_is_stored_in_parts(tmp_path: Path) -> None:
    event = cassette_file.Event(5.0, b"data: " + b"y" * (3 * 2**20) + b"\n\n", ((0, 1.0), (9, 5.0)))
    rec = cassette_file.Recorded(
        request=cassette_file.Request("POST", "https://api.example.com/v1/x", (), b"{}"),
        response=cassette_file.ResponseHead(200, (("Content-Type", "text/event-stream"),)),
        outcome=cassette_file.Outcome.COMPLETE,
        error=None,
        recorded_at=cassette_file.datetime(2026, 1, 1, tzinfo=cassette_file.UTC),
        ttfb_ms=1.0,
        duration_ms=6.0,
        events=(event,),
    )
    data = cassette_file.dump("big", [rec])
    (tmp_path / "big.cassette.jsonl").write_bytes(data)
    db = tmp_path / "big.db"
    _cli("import", "big.cassette.jsonl", cwd=tmp_path, db=db)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT length(data), continues FROM events ORDER BY seq").fetchall()
        assert conn.execute("SELECT event_count FROM interactions").fetchone() == (1,)
    assert [c for _, c in rows] == [0, 1, 1, 1] and max(size for size, _ in rows) <= 2**20
    assert _cli("export", "big", "-o", "-", cwd=tmp_path, db=db).encode() == data


async def test_show_cuts_long_events_decodes_compressed_bodies_and_prints_pieces(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    await _record(start_upstream, start_proxy)
    out = _cli("show", "timed", cwd=tmp_path, db=db_path)
    assert max(map(len, out.splitlines())) < 3000  # the 1 MB event is cut
    assert f"({len(LONG) - 2000} more bytes; --full shows all)" in out
    assert "(body decoded from gzip for display; stored as sent)" in out
    assert out.count("data: hello") == 2  # the plain stream and the decoded gzip one
    assert "pieces" not in out

    full = _cli("show", "timed", "--full", cwd=tmp_path, db=db_path)
    assert "x" * 2**20 in full and "more bytes" not in full

    timed = _cli("show", "timed", "--pieces", cwd=tmp_path, db=db_path)
    lines = [line for line in timed.splitlines() if "pieces (byte offset at time)" in line]
    assert len(lines) >= 2  # the paused event, plain and gzip (the 1 MB one came in pieces too)
    assert f"{len(PAUSED[0])} at " in lines[0] and f"{len(GZIPPED[0])} at " in lines[1]

    shown = json.loads(_cli("show", "timed", "--json", cwd=tmp_path, db=db_path))
    first = shown["interactions"][0]["body"][0]
    assert [offset for offset, _ in first["pieces"]] == [0, len(PAUSED[0])]
