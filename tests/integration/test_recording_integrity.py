"""A recording never lands in another cassette, and one bad request never stops recording.

A cassette deleted (or replaced) while one of its interactions is being recorded loses that
recording, cleanly: the client's stream goes on, the rest of the recording is dropped with
one log line, and no event of it ever reaches another cassette (ids are never reused). A
cassette name that is not real text (a header byte that is not UTF-8, a lone surrogate in
JSON) is refused with a 400 before anything is queued.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy, StartUpstream, close_quietly
from tests.proc import eventually, run_cli
from tests.stores import rows as query

pytestmark = pytest.mark.stores

EVENTS = 40
HALF = 25


def event(name: str, i: int) -> bytes:
    return f"id: {i}\ndata: {name}-{i:03d}\n\n".encode()


def body_of(name: str) -> bytes:
    return b"".join(event(name, i) for i in range(EVENTS))


class GatedUpstream:
    """POST /v1/{name} streams EVENTS events of its own; the stream named `gated` sends
    HALF of them, then waits for `go` before the rest."""

    def __init__(self, gated: str):
        self.gated = gated
        self.go = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/{name}", self.stream)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(EVENTS):
            if name == self.gated and i == HALF:
                await asyncio.wait_for(self.go.wait(), 30)
            await response.write(event(name, i))
        await response.write_eof()
        return response


def rows(db: Path | str) -> list[tuple[str, int, str, int, bytes]]:
    """(cassette, interaction id, outcome, event count, body) of every stored interaction."""
    found = query(
        db,
        "SELECT c.name, i.id, i.outcome, i.event_count FROM interactions i "
        "JOIN cassettes c ON c.id = i.cassette_id ORDER BY i.id",
    )
    return [
        (
            cassette,
            id_,
            outcome,
            count,
            b"".join(
                bytes(data)
                for (data,) in query(
                    db, "SELECT data FROM events WHERE interaction_id = ? ORDER BY seq", id_
                )
            ),
        )
        for cassette, id_, outcome, count in found
    ]


def orphan_events(db: Path | str) -> int:
    [(n,)] = query(
        db, "SELECT count(*) FROM events WHERE interaction_id NOT IN (SELECT id FROM interactions)"
    )
    return int(n)


async def cassettes_status(proxy: TestServer) -> int:
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as r:
            return r.status


async def health(proxy: TestServer) -> dict[str, object]:
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/health")) as r:
            result: dict[str, object] = await r.json()
            return result


async def record(proxy: TestServer, name: str, cassette: str) -> bytes:
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url(f"/v1/{name}"), json={}, headers={"Rrproxy-Cassette": cassette}
        ) as r:
            assert r.status == 200
            assert r.headers["Rrproxy-Source"] == "recorded"
            return await r.read()


@pytest.mark.parametrize("how", ["rm", "import --replace"])
async def test_a_cassette_deleted_mid_recording_loses_that_recording_and_only_that(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    store_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    upstream = GatedUpstream(gated="victim")
    proxy = await start_proxy(await start_upstream(upstream.app), mode="record")
    replacement = tmp_path / "victim.cassette.jsonl"
    if how == "import --replace":  # a cassette file of the same name, other content
        await record(proxy, "other", "victim")
        assert await cassettes_status(proxy) == 200
        done = await asyncio.to_thread(
            run_cli, "export", "victim", "-o", str(replacement), "--db", store_url, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr

    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url("/v1/victim"), json={}, headers={"Rrproxy-Cassette": "victim"}
        ) as r:
            assert r.status == 200
            received = b""
            while received.count(b"\n\n") < HALF:  # the first half has reached the client
                received += await r.content.readany()
            assert await cassettes_status(proxy) == 200  # ... and the store
            victim_id = rows(store_url)[-1][1]
            args = ["rm", "victim"] if how == "rm" else ["import", str(replacement), "--replace"]
            done = await asyncio.to_thread(run_cli, *args, "--db", store_url, cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            upstream.go.set()
            received += await r.read()  # the client's stream goes on to its end
    assert received == body_of("victim")

    # recording goes on, for everyone, into the right cassette
    assert await record(proxy, "innocent", "innocent") == body_of("innocent")
    assert await cassettes_status(proxy) == 200
    stored = await eventually(lambda: [r for r in rows(store_url) if r[0] == "innocent"] or None)
    [(_, innocent_id, outcome, count, body)] = stored
    assert (outcome, count, body) == ("complete", EVENTS, body_of("innocent"))
    assert orphan_events(store_url) == 0
    victim = [r for r in rows(store_url) if r[0] == "victim"]
    if how == "rm":
        assert victim == []
    else:  # only what was imported: the imported interaction, whole
        assert [(outcome, body) for _, _, outcome, _, body in victim] == [
            ("complete", body_of("other"))
        ]
    # the id of the deleted interaction was not given again
    assert victim_id not in [id_ for _, id_, *_ in rows(store_url)]
    assert innocent_id > victim_id
    [line] = [r.getMessage() for r in caplog.records if "dropped the recording" in r.getMessage()]
    assert "'victim'" in line and "/v1/victim" in line
    report = await health(proxy)
    assert report["recordings_dropped"] == 1
    assert report["store"] == "ok"


async def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Send a request head as raw bytes (aiohttp's client would not send a non-UTF-8 header
    value); the status and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        await close_quietly(writer)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def test_a_cassette_name_that_is_not_text_is_refused_and_recording_goes_on(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    upstream = GatedUpstream(gated="")
    proxy = await start_proxy(await start_upstream(upstream.app), mode="record")
    assert proxy.port is not None
    head = (
        b"POST /v1/bad HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n"
        b"Content-Type: application/json\r\nRrproxy-Cassette: bad\xffname\r\n"
        b"Connection: close\r\n\r\n{}"
    )
    status, body = await raw_request(proxy.port, head)
    assert status == 400
    assert b"not a valid cassette name" in body
    async with aiohttp.ClientSession() as client:
        async with client.put(
            proxy.make_url("/_rrproxy/cassette"),
            data=b'{"name": "x\\udcffy"}',
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400
            assert "not a valid cassette name" in (await r.json())["error"]["message"]
        async with client.get(proxy.make_url("/_rrproxy/health")) as r:
            assert (await r.json())["cassette"] == "default"
    # nothing was queued: recording goes on, and the store answers
    assert await record(proxy, "good", "good") == body_of("good")
    assert await cassettes_status(proxy) == 200
    assert [(c, o, b) for c, _, o, _, b in rows(store_url)] == [
        ("good", "complete", body_of("good"))
    ]
