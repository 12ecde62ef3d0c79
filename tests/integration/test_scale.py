"""Costs that must not grow with the store: an import's statements (a few per batch, not
two per interaction), and what a replay miss reads again (only what was recorded since)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.cassettes import file_format, transfer
from proxy.cassettes.bulk import MAX_ROWS
from proxy.config import database_url
from proxy.core.records import Event, Outcome, Request, ResponseHead
from proxy.serve.replay import READ_AHEAD, Bodies
from proxy.serve.state import SERVICES
from proxy.store import migrate, queries
from proxy.store.engine import create_engine
from tests.conftest import StartProxy, StartUpstream

URL = "http://127.0.0.1:9/v1/chat/completions"


def recorded(n: int) -> file_format.Recorded:
    return file_format.Recorded(
        request=Request("POST", URL, (), json.dumps({"q": n}).encode()),
        response=ResponseHead(200, (("Content-Type", "application/json"),)),
        outcome=Outcome.COMPLETE,
        error=None,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        ttfb_ms=1.0,
        duration_ms=2.0,
        events=(Event(1.0, b'{"a": '), Event(2.0, f"{n}}}".encode())),
    )


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements `engine` sends meanwhile, with their parameters."""
    sent: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)


async def test_an_import_sends_two_statements_a_batch_not_two_an_interaction(
    tmp_path: Path, db_path: Path
) -> None:
    count = 2 * MAX_ROWS + 100  # three batches
    path = tmp_path / "many.cassette.jsonl"
    data = file_format.dump("many", (recorded(n) for n in range(count)))
    path.write_bytes(data)
    engine = create_engine(database_url(str(db_path)), writer=True)
    try:
        await migrate.upgrade(engine)
        with statements(engine) as sent:
            imported = await transfer.import_file(engine, path)
        assert (imported.interactions, imported.events) == (count, 2 * count)
        inserts = [s for s, _ in sent if s.lstrip().upper().startswith("INSERT")]
        assert len(inserts) == 1 + 2 * 3  # the cassette, then interactions and events a batch
        assert len(sent) <= 4 * 3 + 10  # and their ids read back: a few a batch, not one a row
        async with engine.connect() as conn:  # what it stored exports as the same bytes
            assert await transfer.digest(conn, "many") == hashlib.sha256(data).hexdigest()
    finally:
        await engine.dispose()


def answering() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"answer": (await request.json())["q"]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    return app


async def test_a_miss_reads_again_only_what_another_proxy_recorded_since(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """Two proxies share a store: a replay that misses reads the rows stored since its
    cassette was read (the other proxy's new recording), and answers with it."""
    upstream = await start_upstream(answering())
    recorder = await start_proxy(upstream, mode="record", cassette="c")
    replayer = await start_proxy(upstream, mode="replay", cassette="c")
    async with aiohttp.ClientSession() as client:

        async def ask(proxy: Any, q: int) -> tuple[str, Any]:
            url = proxy.make_url("/v1/chat/completions")
            async with client.post(url, json={"q": q}) as response:
                return response.headers["Rrproxy-Source"], await response.json()

        for q in range(5):
            assert (await ask(recorder, q))[0] == "recorded"
        async with client.get(recorder.make_url("/_rrproxy/cassettes")):
            pass  # every recording is in the store
        assert await ask(replayer, 0) == ("replayed", {"answer": 0})  # reads the cassette
        assert await ask(recorder, 5) == ("recorded", {"answer": 5})
        async with client.get(recorder.make_url("/_rrproxy/cassettes")):
            pass
        newest = max(
            s.id for s in await queries.interaction_stamps(recorder.app[SERVICES].reader, "c")
        )
        with statements(replayer.app[SERVICES].reader) as sent:
            assert await ask(replayer, 5) == ("replayed", {"answer": 5})
    stamps = [(s, p) for s, p in sent if "request_size" in s and "interactions.id IN" not in s]
    assert len(stamps) == 1  # one reload, and of the new rows only: from the newest on
    statement, parameters = stamps[0]
    assert "interactions.id >=" in statement
    assert newest in tuple(parameters)
    assert [e.request_size for e in replayer.app[SERVICES].index.entries("c")] == [8] * 6


async def test_small_bodies_are_read_in_pages_bounded_by_bytes(
    tmp_path: Path, db_path: Path, start_proxy: StartProxy
) -> None:
    """The first replay of a cassette reads its small bodies in one query, within half the
    cache's bytes (here all 1,000: 600 replays, one query); past that budget, a body is read
    with the `READ_AHEAD` recorded after it, never the whole cassette."""
    count = 1_000
    path = tmp_path / "c.cassette.jsonl"
    path.write_bytes(file_format.dump("c", (recorded(n) for n in range(count))))
    engine = create_engine(database_url(str(db_path)), writer=True)
    try:
        await migrate.upgrade(engine)
        await transfer.import_file(engine, path)
    finally:
        await engine.dispose()
    proxy = await start_proxy(URL.removesuffix("/v1/chat/completions"), mode="replay", cassette="c")
    url = proxy.make_url("/v1/chat/completions")
    async with aiohttp.ClientSession() as client:
        with statements(proxy.app[SERVICES].reader) as sent:
            for n in range(600):
                async with client.post(url, json={"q": n}) as response:
                    assert await response.read() == f'{{"a": {n}}}'.encode()
    assert [len(p) for s, p in sent if s.lstrip().startswith(EVENTS)] == [count]
    # A cache of 4,000 bytes: the first read holds 2,000 bytes of bodies, then pages.
    reader = create_engine(database_url(str(db_path)))
    try:
        bodies = Bodies(reader, max_bytes=4_000)
        ids = [e.interaction_id for e in proxy.app[SERVICES].index.entries("c")]
        with statements(reader) as sent:
            for n, interaction_id in enumerate(ids[:600]):
                assert interaction_id is not None
                events = await bodies.small_body("c", interaction_id, 10)
                assert b"".join(row[1] for row in events) == f'{{"a": {n}}}'.encode()
    finally:
        await reader.dispose()
    pages = [len(p) for s, p in sent if s.lstrip().startswith(EVENTS)]
    assert 2 < len(pages) < 20
    assert pages[0] < count
    assert all(size <= READ_AHEAD for size in pages[1:])


EVENTS = "SELECT events.interaction_id"
