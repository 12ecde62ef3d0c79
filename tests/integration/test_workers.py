"""`rrproxy serve --workers N`, as a real process: N processes answer on one port, each
replays what another recorded, and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartUpstream
from tests.proc import eventually, run_cli, spawn
from tests.stores import rows


@pytest.mark.stores
async def test_two_workers_share_the_port_and_the_store(
    start_upstream: StartUpstream, store_url: str, tmp_path: Path
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"q": (await request.json())["q"]})

    app = web.Application()
    app.router.add_post("/v1/plain", answer)
    upstream = await start_upstream(app)
    url = str(upstream.make_url("")).rstrip("/")
    proc = spawn("--db", store_url, "--upstream", url, "--workers", "2", cwd=tmp_path)
    try:
        await proc.wait_healthy()
        async with aiohttp.ClientSession() as client:  # recorded by whichever worker
            async with client.post(proc.url("/v1/plain"), json={"q": 1}) as resp:
                assert resp.headers["Rrproxy-Source"] == "recorded"
        # in the store (the worker that recorded it commits it; either may answer a flush)
        done = [("complete",)]
        await eventually(lambda: rows(store_url, "SELECT outcome FROM interactions") == done)
        replay = {"Rrproxy-Mode": "replay"}
        pids: set[int] = set()
        sources: set[str] = set()
        for _ in range(200):  # bounded: the kernel spreads new connections between the two
            async with aiohttp.ClientSession() as client:  # a new connection each time
                async with client.post(proc.url("/v1/plain"), json={"q": 1}, headers=replay) as r:
                    assert (await r.json()) == {"q": 1}
                    sources.add(r.headers["Rrproxy-Source"])
                async with client.get(proc.url("/_rrproxy/health")) as resp:
                    pids.add((await resp.json())["pid"])
            if len(pids) == 2:
                break
        # both workers answered, and every answer came from the one recording
        assert len(pids) == 2 and proc.popen.pid not in pids
        assert sources == {"replayed"}
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        await proc.kill()
    assert "worker 1 of 2" in proc.stderr() and "worker 2 of 2" in proc.stderr()


def test_workers_that_cannot_listen_stop_the_command_with_its_status(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--workers", "2", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
