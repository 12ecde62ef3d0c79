"""A slow store slows the stream that outruns it, and only that one; a recording that cannot
be kept is said so (log, health), never lost in silence.

"Slow" is a real second process holding SQLite's write lock: the store is busy, not failing.
"Full" is a real small tmpfs under the SQLite file.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.store.engine import BUSY_TIMEOUT_S
from tests.conftest import StartProxy, StartUpstream
from tests.integration.test_fault_store import locked, logged, release
from tests.proc import eventually

SMALL = 20
SMALL_EVENTS = 5
FAST_EVENT = b"data: " + b"f" * (64 * 1024) + b"\n\n"
FAST_EVENTS = 1280  # 80 MiB: more than the recorder's whole memory bound (64 MiB)


def small_event(n: int, i: int) -> bytes:
    return f'data: {{"stream": {n}, "i": {i}}}\n\n'.encode()


def small_body(n: int) -> bytes:
    return b"".join(small_event(n, i) for i in range(SMALL_EVENTS))


class Upstream:
    """POST /v1/fast streams FAST_EVENTS big events as fast as it can; POST /v1/small/N
    sends one small event, then the rest once `go` is set."""

    def __init__(self) -> None:
        self.fast_started = asyncio.Event()
        self.fast_done = asyncio.Event()
        self.small_started: set[int] = set()
        self.all_small_started = asyncio.Event()
        self.go = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/fast", self.fast)
        self.app.router.add_post("/v1/small/{n}", self.small)

    async def fast(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.fast_started.set()
        for _ in range(FAST_EVENTS):
            await response.write(FAST_EVENT)
        await response.write_eof()
        self.fast_done.set()
        return response

    async def small(self, request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(small_event(n, 0))
        self.small_started.add(n)
        if len(self.small_started) == SMALL:
            self.all_small_started.set()
        await asyncio.wait_for(self.go.wait(), 60)
        for i in range(1, SMALL_EVENTS):
            await response.write(small_event(n, i))
        await response.write_eof()
        return response


async def fetch(proxy: TestServer, path: str) -> tuple[int, str, str, bytes]:
    """Status, Rrproxy-Source, Rrproxy-Store (or ""), and the body (whole)."""
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url(path), json={}) as r:
            body = await r.read()
            return r.status, r.headers["Rrproxy-Source"], r.headers.get("Rrproxy-Store", ""), body


async def health(proxy: TestServer) -> dict[str, object]:
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/_rrproxy/health")) as r:
            result: dict[str, object] = await r.json()
            return result


def stored_digests(db: Path) -> dict[str, tuple[str, int, str]] | None:
    """URL path -> (outcome, event count, sha256 of the body), once nothing is recording."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT id, url, outcome, event_count FROM interactions").fetchall()
        if any(outcome == "recording" for _, _, outcome, _ in rows):
            return None
        result = {}
        for id_, url, outcome, count in rows:
            h = hashlib.sha256()
            for (data,) in conn.execute(
                "SELECT data FROM events WHERE interaction_id = ? ORDER BY seq", (id_,)
            ):
                h.update(data)
            result[url.split("/v1", 1)[1]] = (outcome, count, h.hexdigest())
        return result


async def test_a_busy_store_slows_the_fast_stream_and_keeps_every_small_one(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app), mode="record")
    fast_body = FAST_EVENT * FAST_EVENTS
    async with locked(db_path) as locker:
        fast = asyncio.create_task(fetch(proxy, "/v1/fast"))
        await asyncio.wait_for(upstream.fast_started.wait(), 10)
        smalls = [asyncio.create_task(fetch(proxy, f"/v1/small/{n}")) for n in range(SMALL)]
        await asyncio.wait_for(upstream.all_small_started.wait(), 10)
        # the writer has waited out its busy timeout on the lock: the store is still locked
        await eventually(
            lambda: logged(caplog, "cannot write to the store") or None, within=BUSY_TIMEOUT_S + 10
        )
        upstream.go.set()
        # every small stream goes through, whole, while the store is locked ...
        for n, task in enumerate(smalls):
            assert await asyncio.wait_for(task, 30) == (200, "recorded", "", small_body(n))
        # ... and the fast one is held back: its upstream cannot finish sending
        assert not upstream.fast_done.is_set()
        assert not fast.done()
        report = await health(proxy)
        assert report["recordings_dropped"] == 0
        assert locker.returncode is None
        await release(locker)
    assert await asyncio.wait_for(fast, 60) == (200, "recorded", "", fast_body)
    digests = await eventually(lambda: stored_digests(db_path), within=30)
    expected = {f"/small/{n}": small_body(n) for n in range(SMALL)} | {"/fast": fast_body}
    assert digests == {
        path: ("complete", body.count(b"\n\n"), hashlib.sha256(body).hexdigest())
        for path, body in expected.items()
    }
    assert not logged(caplog, "dropped")
    report = await health(proxy)
    assert (report["recordings_dropped"], report["store"]) == (0, "ok")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only), unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=256m", str(mount)], check=True)


async def test_a_full_disk_drops_the_recording_it_cannot_keep_and_says_so(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    small_disk: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = small_disk / "rrproxy.db"
    upstream = Upstream()
    upstream.go.set()
    proxy = await start_proxy(await start_upstream(upstream.app), mode="record", db=str(db))
    # more than the disk holds, and more than memory may hold while the store refuses it
    status, source, _, body = await fetch(proxy, "/v1/fast")
    assert (status, source, len(body)) == (200, "recorded", len(FAST_EVENT) * FAST_EVENTS)
    [failure] = logged(caplog, "cannot write to the store")
    assert "database or disk is full" in failure.getMessage()
    [dropped] = await eventually(lambda: logged(caplog, "dropped the recording") or None)
    assert "'default'" in dropped.getMessage() and "/v1/fast" in dropped.getMessage()
    assert (await health(proxy))["recordings_dropped"] == 1
    grow(small_disk)  # space is back: recording goes on
    status, source, _, body = await fetch(proxy, "/v1/small/0")
    assert (status, source, body) == (200, "recorded", small_body(0))
    digests = await eventually(
        lambda: (found := stored_digests(db)) and "/small/0" in found and found, within=30
    )
    assert digests["/small/0"] == (
        "complete",
        SMALL_EVENTS,
        hashlib.sha256(small_body(0)).hexdigest(),
    )
    assert digests["/fast"][0] == "incomplete"
    report = await health(proxy)
    assert (report["recordings_dropped"], report["store"]) == (1, "ok")
