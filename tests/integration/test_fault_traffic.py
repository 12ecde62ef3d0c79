"""Malformed and hostile traffic on loopback: requests the proxy must refuse, upstream
answers it must not relay, and odd but valid event streams that must go through, into the
store and back out of a replay byte for byte.

The upstreams here are bare asyncio servers: they write exactly the bytes given, one write
(and drain) at a time, which no HTTP library would let a test do.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aiohttp.http_parser
import pytest

from tests.conftest import StartProxy, close_quietly, tcp_server
from tests.proc import run_cli

MIB = 2**20
BOM = b"\xef\xbb\xbf"
WAIT_S = 10.0  # bound on every wait for a peer


@dataclass
class RawUpstream:
    """Answers every connection with `writes`, each written and drained on its own (with
    `pause` seconds after each), then closes. The requests it read are kept, raw."""

    writes: Sequence[bytes]
    pause: float = 0.0
    requests: list[bytes] = field(default_factory=list)
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.requests.append(head + await reader.readexactly(length))
            for data in self.writes:
                writer.write(data)
                await writer.drain()
                if self.pause:
                    await asyncio.sleep(self.pause)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the proxy went away: nothing more to send
        finally:
            await close_quietly(writer)


@asynccontextmanager
async def raw_upstream(writes: Sequence[bytes], pause: float = 0.0) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(writes, pause)
    async with tcp_server(upstream.serve) as upstream.url:
        yield upstream


def chunked(pieces: Sequence[bytes]) -> list[bytes]:
    """Each piece as one chunk of `Transfer-Encoding: chunked`, then the last chunk."""
    return [b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p] + [b"0\r\n\r\n"]


def sse_response(pieces: Sequence[bytes]) -> list[bytes]:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    return [head, *chunked(pieces)]


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Send `request` on a fresh connection; return everything the server answers until it
    closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        await close_quietly(writer)


def status_of(answer: bytes) -> int:
    assert answer.startswith((b"HTTP/1.0 ", b"HTTP/1.1 ")), answer[:200]
    return int(answer.split(b" ", 2)[1])


def stored(db_path: Path) -> list[tuple[str, int, list[bytes]]]:
    """(outcome, status, events) of each stored interaction, in recording order (the parts
    of an event larger than a part joined)."""
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT id, outcome, status FROM interactions ORDER BY id").fetchall()
        found = []
        for id_, outcome, status in rows:
            events: list[bytes] = []
            for data, continues in db.execute(
                "SELECT data, continues FROM events WHERE interaction_id = ? ORDER BY seq", (id_,)
            ):
                if continues:
                    events[-1] += data
                else:
                    events.append(data)
            found.append((outcome, status, events))
        return found


def digest(data: bytes) -> tuple[int, str]:
    """What to compare for large bodies (a failing `==` on 16 MiB would print them)."""
    return len(data), hashlib.sha256(data).hexdigest()


async def proxy_is_healthy(port: int) -> None:
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://127.0.0.1:{port}/_rrproxy/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"


# -- the parser in use ------------------------------------------------------------------------


def test_the_http_parser_is_the_one_the_environment_asks_for() -> None:
    """`AIOHTTP_NO_EXTENSIONS=1` (read when aiohttp is imported) selects the pure-Python
    parser; otherwise the compiled one is in use. The subprocess test below relies on it."""
    python = aiohttp.http_parser.HttpResponseParserPy
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        assert aiohttp.http_parser.HttpResponseParser is python
        assert aiohttp.http_parser.HttpRequestParser is aiohttp.http_parser.HttpRequestParserPy
    else:
        assert aiohttp.http_parser.HttpResponseParser is not python


# -- hostile requests -------------------------------------------------------------------------


async def test_request_with_content_length_and_transfer_encoding_is_refused_unforwarded(
    start_proxy: StartProxy, db_path: Path
) -> None:
    async with raw_upstream(sse_response([b"data: 1\n\n"])) as upstream:
        proxy = await start_proxy(upstream.url)
        smuggle = (
            b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n\r\nGET /v1/smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        answer = await raw_exchange(proxy.port, smuggle)
        assert status_of(answer) == 400
        assert b"/v1/smuggled" not in answer
        await proxy_is_healthy(proxy.port)
        assert upstream.requests == []  # nothing forwarded, not even the first part
        await proxy.close()
    assert stored(db_path) == []


async def test_request_with_a_100kb_header_is_refused_and_the_proxy_stays_healthy(
    start_proxy: StartProxy, db_path: Path
) -> None:
    async with raw_upstream(sse_response([b"data: 1\n\n"])) as upstream:
        proxy = await start_proxy(upstream.url)
        huge = (
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: "
            + b"a" * (100 * 1024)
            + b"\r\nConnection: close\r\n\r\n"
        )
        answer = await raw_exchange(proxy.port, huge)
        assert 400 <= status_of(answer) < 500
        assert upstream.requests == []
        # still serving: the next request goes through and is recorded
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.make_url("/v1/models")) as resp:
                assert resp.status == 200
                assert await resp.read() == b"data: 1\n\n"
        assert len(upstream.requests) == 1
        await proxy.close()
    assert stored(db_path) == [("complete", 200, [b"data: 1\n\n"])]


# -- upstream answers with ambiguous framing ------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\ndata: 1\n\n\r\n0\r\n\r\n",
            id="content-length-and-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\nConnection: close\r\n\r\nhello!",
            id="two-content-lengths",
        ),
    ],
)
async def test_upstream_answer_with_ambiguous_framing_is_a_502_and_not_recorded(
    start_proxy: StartProxy, db_path: Path, answer: bytes
) -> None:
    async with raw_upstream([answer]) as upstream:
        proxy = await start_proxy(upstream.url)
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.make_url("/v1/responses"), json={"q": 1}) as resp:
                assert resp.status == 502
                error = (await resp.json())["error"]
        assert error["type"] == "rrproxy_upstream_error"
        assert upstream.url in error["message"]
        assert len(upstream.requests) == 1
        await proxy_is_healthy(proxy.port)
        await proxy.close()
    assert stored(db_path) == []


# -- odd but valid event streams: relayed, stored and replayed exactly ------------------------

BIG_EVENT = b"data: " + b"x" * (16 * MIB) + b"\n\n"
BYTE_BY_BYTE = (
    BOM + b"event: a\r\ndata: 1\r\n\r\n",
    b"data: 2\r\r",
    b": comment\ndata: 3\n\n",
    b"data: \xe2\x82\xac\r\n\r\n",
)


@dataclass(frozen=True)
class Stream:
    pieces: tuple[bytes, ...]  # as the upstream writes them, one chunk (and drain) each
    events: tuple[bytes, ...]  # what the store must hold, per DESIGN: each event as sent
    pause: float = 0.0

    def __post_init__(self) -> None:
        assert b"".join(self.pieces) == b"".join(self.events)  # the table itself is right


STREAMS = [
    pytest.param(
        Stream(
            (b"data: a\r", b"\r: comment\r", b"data: b\r", b"\r", b"id: 3\rdata: c\r\r"),
            (b"data: a\r\r", b": comment\rdata: b\r\r", b"id: 3\rdata: c\r\r"),
        ),
        id="cr-only-line-endings",
    ),
    pytest.param(
        Stream(
            (BOM[:2], BOM[2:] + b"data: a\n", b"\ndata: b\n\n"),
            (BOM + b"data: a\n\n", b"data: b\n\n"),
        ),
        id="bom",
    ),
    pytest.param(
        Stream(
            (b": keep-alive\n\nevent: delta\n: note\ndata: 1\n", b"\n:\n\n", b"data: 2\n\n"),
            (b": keep-alive\n\n", b"event: delta\n: note\ndata: 1\n\n", b":\n\n", b"data: 2\n\n"),
        ),
        id="comments",
    ),
    pytest.param(
        Stream(
            tuple(bytes([b]) for b in b"".join(BYTE_BY_BYTE)),
            BYTE_BY_BYTE,
            pause=0.001,  # each byte reaches the proxy on its own
        ),
        id="split-at-every-byte",
    ),
    pytest.param(
        Stream(
            tuple(BIG_EVENT[i : i + MIB] for i in range(0, len(BIG_EVENT), MIB)),
            (BIG_EVENT,),
        ),
        id="one-16mib-event",
    ),
    pytest.param(
        Stream(
            (b"data: \xff\xfe\n\ndata: \xc3\x28 \xed\xa0", b"\x80\n\n", b"data: \xe2\x82\n"),
            (b"data: \xff\xfe\n\n", b"data: \xc3\x28 \xed\xa0\x80\n\n", b"data: \xe2\x82\n"),
        ),
        id="invalid-utf8-and-unterminated-last-event",
    ),
]


@pytest.mark.parametrize("stream", STREAMS)
async def test_odd_event_stream_is_relayed_stored_and_replayed_byte_exact(
    start_proxy: StartProxy, db_path: Path, stream: Stream
) -> None:
    body = b"".join(stream.pieces)
    async with raw_upstream(sse_response(stream.pieces), stream.pause) as upstream:
        proxy = await start_proxy(upstream.url)
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.make_url("/v1/responses"), json={"stream": True}) as resp:
                assert resp.status == 200
                assert resp.headers["Rrproxy-Source"] == "recorded"
                assert resp.headers["Content-Type"] == "text/event-stream"
                assert digest(await resp.read()) == digest(body)
            # the replay: no upstream contact, the same bytes
            async with client.post(
                proxy.make_url("/v1/responses"),
                json={"stream": True},
                headers={"Rrproxy-Mode": "replay"},
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Rrproxy-Source"] == "replayed"
                assert resp.headers["Content-Type"] == "text/event-stream"
                assert digest(await resp.read()) == digest(body)
        assert len(upstream.requests) == 1
        await proxy.close()
    [(outcome, status, events)] = stored(db_path)
    assert (outcome, status) == ("complete", 200)
    assert [digest(e) for e in events] == [digest(e) for e in stream.events]


# -- both HTTP parsers ------------------------------------------------------------------------

PURE_PYTHON_SUBSET = [
    "test_the_http_parser_is_the_one_the_environment_asks_for",
    "test_request_with_content_length_and_transfer_encoding_is_refused_unforwarded",
    "test_request_with_a_100kb_header_is_refused_and_the_proxy_stays_healthy",
    "test_upstream_answer_with_ambiguous_framing_is_a_502_and_not_recorded",
    "test_odd_event_stream_is_relayed_stored_and_replayed_byte_exact[cr-only-line-endings]",
    "test_odd_event_stream_is_relayed_stored_and_replayed_byte_exact[split-at-every-byte]",
    "test_odd_event_stream_is_relayed_stored_and_replayed_byte_exact[invalid-utf8-and-unterminated-last-event]",
]


def test_the_traffic_tests_pass_with_aiohttps_pure_python_parser(tmp_path: Path) -> None:
    """aiohttp's pure-Python HTTP parser (used where its C extension is not built) is not the
    compiled one: each accepts things the other refuses. Run the traffic tests with it too."""
    root = Path(__file__).resolve().parents[2]
    here = Path(__file__).resolve().relative_to(root)
    ids = [f"{here}::{name}" for name in PURE_PYTHON_SUBSET]
    result = run_cli(
        *ids,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={tmp_path / 'pytest'}",
        cwd=root,
        env={"AIOHTTP_NO_EXTENSIONS": "1"},
        executable=(sys.executable, "-m", "pytest"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b8 passed\b", result.stdout), result.stdout
