"""A huge event is recorded and replayed within a memory budget in bytes.

A 200 MB stream that is one SSE event (no blank line until its end) is recorded through a
real proxy process, then replayed to four clients at once. The proxy's peak resident
memory (VmHWM in /proc) must stay under a quarter of the bytes replayed: the event is
written and read in bounded parts, never held whole (it used to be held up to 32 MiB while
recording, and each replay read its whole body at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.proc import serving

SIZE = 200 * 2**20
CHUNK = 256 * 2**10
REPLAYS = 4

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the peak memory from /proc"
)


def _body() -> tuple[list[bytes], str]:
    """One SSE event of SIZE bytes: a data line without end, then the blank line."""
    head = b"data: "
    filler = bytes(range(97, 123)) * (CHUNK // 26 + 1)
    chunks = [head + filler[: CHUNK - len(head)]]
    while sum(map(len, chunks)) + CHUNK < SIZE - 2:
        chunks.append(filler[:CHUNK])
    chunks.append(filler[: SIZE - 2 - sum(map(len, chunks))] + b"\n\n")
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return chunks, h.hexdigest()


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


async def _read(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> str:
    h = hashlib.sha256()
    async with session.post(url, json={"q": "big"}, headers=headers) as resp:
        assert resp.status == 200
        async for chunk in resp.content.iter_chunked(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@pytest.mark.timeout(600)
async def test_a_200_mb_event_replayed_four_times_at_once_stays_within_a_byte_budget(
    start_upstream: StartUpstream, tmp_path: Path
) -> None:
    chunks, digest = _body()
    app = web.Application()

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
        return response

    app.router.add_post("/v1/stream", stream)
    upstream = await start_upstream(app)
    url = str(upstream.make_url("")).rstrip("/")
    db = tmp_path / "big.db"
    async with serving("--db", str(db), "--upstream", url, cwd=tmp_path) as proxy:
        timeout = aiohttp.ClientTimeout(total=540)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            target = proxy.url("/v1/stream")
            assert await _read(session, target, {"Rrproxy-Mode": "record"}) == digest
            replays = [_read(session, target, {"Rrproxy-Mode": "replay"}) for _ in range(REPLAYS)]
            assert await asyncio.gather(*replays) == [digest] * REPLAYS
        peak = _peak_rss(proxy.popen.pid)
    budget = REPLAYS * SIZE // 4
    assert peak < budget, f"peak RSS {peak / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
