"""Several proxies on one store (SQLite file and PostgreSQL database alike): a start leaves
the others' recordings alone, ordinals follow the order recordings began whoever commits
first, what one records the others replay, what one removes the others forget, auto mode
records each answer once, and five proxies started together on an empty store all serve.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.serve.state import SERVICES
from tests.conftest import StartProxy, StartUpstream, stored
from tests.proc import run_cli, spawn
from tests.stores import rows

pytestmark = pytest.mark.stores


class Held:
    """An upstream whose streams send their head and a first event, then wait for their
    own release: POST /v1/held/NAME answers `NAME part 0`, then `NAME part 1` once
    `release(NAME)`."""

    def __init__(self) -> None:
        self.started: dict[str, asyncio.Event] = {}
        self.go: dict[str, asyncio.Event] = {}
        self.app = web.Application()
        self.app.router.add_post("/v1/held/{name}", self.held)

    def _events(self, name: str) -> tuple[asyncio.Event, asyncio.Event]:
        return (
            self.started.setdefault(name, asyncio.Event()),
            self.go.setdefault(name, asyncio.Event()),
        )

    async def held(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        started, go = self._events(name)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(f"data: {name} part 0\n\n".encode())
        started.set()
        await go.wait()
        await response.write(f"data: {name} part 1\n\n".encode())
        await response.write_eof()
        return response

    async def wait_started(self, name: str) -> None:
        await asyncio.wait_for(self._events(name)[0].wait(), 10)

    def release(self, name: str) -> None:
        self._events(name)[1].set()


def body(name: str) -> bytes:
    return f"data: {name} part 0\n\ndata: {name} part 1\n\n".encode()


async def post(
    client: aiohttp.ClientSession, url: object, **kw: object
) -> tuple[int, dict[str, str], bytes]:
    async with client.post(url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, dict(resp.headers), await resp.read()


async def test_a_proxy_starting_leaves_a_live_proxys_recording_alone(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    held = Held()
    upstream = await start_upstream(held.app)
    a = await start_proxy(upstream, mode="record", cassette="c")
    async with aiohttp.ClientSession() as client:
        async with client.post(a.make_url("/v1/held/slow"), json={}) as resp:
            assert await resp.content.readuntil(b"\n\n") == b"data: slow part 0\n\n"
            await held.wait_started("slow")
            await a.app[SERVICES].recorder.flush()  # its row is in the store, open
            assert [r[0] for r in stored(store_url)] == ["recording"]
            c = await start_proxy(upstream, mode="record", cassette="c")  # repairs at start
            assert [r[0] for r in stored(store_url)] == ["recording"]  # not A's to repair
            held.release("slow")
            assert await resp.read() == b"data: slow part 1\n\n"
        async with client.get(a.make_url("/_rrproxy/cassettes")):
            pass  # flushed
    assert stored(store_url) == [("complete", None, 2, body("slow"))]
    await c.close()


async def test_a_stopped_proxys_open_recording_is_repaired_at_the_next_start(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    """The row of an instance that is gone (here: a process that exited without cleaning
    up) no longer protects its open interactions."""
    held = Held()
    upstream = await start_upstream(held.app)
    a = await start_proxy(upstream, mode="record", cassette="c")
    async with aiohttp.ClientSession() as client:
        async with client.post(a.make_url("/v1/held/x"), json={}) as resp:
            await resp.content.readuntil(b"\n\n")
            await a.app[SERVICES].recorder.flush()
            # the interaction now belongs to a proxy whose process is gone
            dead = _dead_pid()
            _reassign(store_url, dead)
            await start_proxy(upstream, mode="record", cassette="c")
            assert [r[0] for r in stored(store_url)] == ["incomplete"]
            held.release("x")
            await resp.read()


def _dead_pid() -> int:
    """The pid of a process that has exited."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def _reassign(store_url: str, pid: int) -> None:
    """Every instance row now says it is that process (on this host)."""
    if store_url.startswith("postgresql"):
        from tests.stores import query

        query(store_url, "UPDATE instances SET pid = $1", pid)
    else:
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(store_url, timeout=5)) as db, db:
            db.execute("UPDATE instances SET pid = ?", (pid,))


async def test_ordinals_follow_the_order_recordings_began_not_the_order_they_committed(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    held = Held()
    upstream = await start_upstream(held.app)
    a = await start_proxy(upstream, mode="record", cassette="c")
    b = await start_proxy(upstream, mode="record", cassette="c")
    a.app[SERVICES].recorder.linger_s = 3600.0  # A commits nothing until asked to
    async with aiohttp.ClientSession() as client:
        first = asyncio.create_task(post(client, a.make_url("/v1/held/same"), json={"q": 1}))
        await held.wait_started("same")
        held.started.pop("same")
        held.go.pop("same").set()  # A's stream may end; its recording waits in A's memory
        second = asyncio.create_task(post(client, b.make_url("/v1/held/same"), json={"q": 1}))
        await held.wait_started("same")
        held.release("same")
        assert (await first)[2] == body("same") and (await second)[2] == body("same")
        async with client.get(b.make_url("/_rrproxy/cassettes")):
            pass  # B's recording committed ...
        assert [r[0] for r in rows(store_url, "SELECT instance_id FROM interactions")] == [
            b.app[SERVICES].recorder._db.instance
        ]
        async with client.get(a.make_url("/_rrproxy/cassettes")):
            pass  # ... before A's
    placed = rows(store_url, "SELECT instance_id, ordinal FROM interactions ORDER BY ordinal")
    assert placed == [
        (a.app[SERVICES].recorder._db.instance, 1),
        (b.app[SERVICES].recorder._db.instance, 2),
    ]


async def test_what_one_proxy_records_another_replays_and_what_is_removed_is_forgotten(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    calls: list[int] = []

    async def answer(request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"n": len(calls), "q": (await request.json())["q"]})

    app = web.Application()
    app.router.add_post("/v1/plain", answer)
    upstream = await start_upstream(app)
    a = await start_proxy(upstream, mode="record", cassette="c")
    b = await start_proxy(upstream, mode="replay", cassette="c")
    url_a, url_b = a.make_url("/v1/plain"), b.make_url("/v1/plain")
    async with aiohttp.ClientSession() as client:
        one = await post(client, url_a, json={"q": 1})
        async with client.get(a.make_url("/_rrproxy/cassettes")):
            pass  # flushed
        assert (await post(client, url_b, json={"q": 1}))[2] == one[2]  # B has loaded it
        two = await post(client, url_a, json={"q": 2})
        async with client.get(a.make_url("/_rrproxy/cassettes")):
            pass
        replayed = await post(client, url_b, json={"q": 2})
        assert replayed[1]["Rrproxy-Source"] == "replayed" and replayed[2] == two[2]
        assert len(calls) == 2

        removed = await asyncio.to_thread(run_cli, "rm", "c", "--db", store_url, cwd=tmp_path)
        assert removed.returncode == 0, removed.stderr
        statuses: list[int] = []

        async def gone() -> bool:
            status = (await post(client, url_b, json={"q": 1}))[0]
            statuses.append(status)
            return status == 404

        for _ in range(100):  # a bounded wait for B to hear of it (at most 10 s)
            if await gone():
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 404, statuses


async def test_auto_mode_on_two_proxies_records_each_answer_once(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    calls: list[int] = []

    async def answer(_request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response({"n": len(calls)})

    app = web.Application()
    app.router.add_post("/v1/plain", answer)
    upstream = await start_upstream(app)
    a = await start_proxy(upstream, mode="auto", cassette="c")
    b = await start_proxy(upstream, mode="auto", cassette="c")
    sources = []
    async with aiohttp.ClientSession() as client:
        for _ in range(5):
            recorded = await post(client, a.make_url("/v1/plain"), json={"q": "same"})
            async with client.get(a.make_url("/_rrproxy/cassettes")):
                pass  # in the store
            replayed = await post(client, b.make_url("/v1/plain"), json={"q": "same"})
            sources.append((recorded[1]["Rrproxy-Source"], replayed[1]["Rrproxy-Source"]))
            assert replayed[2] == recorded[2]
    assert sources == [("recorded", "replayed")] * 5
    assert len(calls) == 5


async def test_two_proxies_recording_a_new_cassette_at_once_create_it_once(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    store_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/plain", answer)
    upstream = await start_upstream(app)
    proxies = [await start_proxy(upstream, mode="record") for _ in range(3)]
    caplog.set_level(logging.ERROR, logger="proxy")
    async with aiohttp.ClientSession() as client:
        for round_ in range(3):
            name = {"Rrproxy-Cassette": f"new-{round_}"}
            await asyncio.gather(
                *(post(client, p.make_url("/v1/plain"), json={}, headers=name) for p in proxies)
            )
        for p in proxies:
            async with client.get(p.make_url("/_rrproxy/cassettes")):
                pass
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert rows(store_url, "SELECT name FROM cassettes ORDER BY name") == [
        ("new-0",),
        ("new-1",),
        ("new-2",),
    ]
    assert rows(store_url, "SELECT count(*) FROM interactions") == [(9,)]
    # each cassette's three recordings in places 1, 2, 3, in the order they began
    placed = rows(
        store_url,
        "SELECT c.name, i.ordinal, i.started_at FROM interactions i "
        "JOIN cassettes c ON c.id = i.cassette_id ORDER BY c.name, i.ordinal",
    )
    for round_ in range(3):
        mine = [(o, t) for name, o, t in placed if name == f"new-{round_}"]
        assert [o for o, _ in mine] == [1, 2, 3]
        assert [t for _, t in mine] == sorted(t for _, t in mine)


async def test_five_proxies_started_together_on_an_empty_store_migrate_it_once(
    store_url: str, tmp_path: Path
) -> None:
    async with asyncio.TaskGroup() as group:
        starts = [group.create_task(_serving(store_url, tmp_path, f"p{i}")) for i in range(5)]
    logs = [start.result() for start in starts]
    created = [log for log in logs if "creating the store" in log]
    assert len(created) == 1, logs
    assert rows(store_url, "SELECT count(*) FROM alembic_version") == [(1,)]


async def _serving(store_url: str, tmp_path: Path, name: str) -> str:
    """Start a proxy process, check that it serves, stop it: its log. (Five Python processes
    starting at once on a loaded machine may take longer than `serving` waits: up to three
    times that, as long as the process lives.)"""
    proc = spawn("--db", store_url, "--upstream", "http://127.0.0.1:9", cwd=tmp_path, name=name)
    try:
        for attempt in range(3):
            try:
                await proc.wait_healthy()
                break
            except TimeoutError:
                if attempt == 2:
                    raise
        async with aiohttp.ClientSession() as client:
            async with client.get(proc.url("/_rrproxy/cassettes")) as resp:
                assert resp.status == 200
        return proc.stderr()
    finally:
        await proc.kill()
