"""Each flag of `rrproxy serve` reaches the proxy: the command run as a process, the flag's
effect seen from outside (the health endpoint, the port it listens on, the files it writes,
its log, how it replays)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import aiohttp
import pytest

from tests.proc import run_cli, serving, spawn

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-world.cassette.jsonl"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_host_port_upstream_mode_cassette_db_and_verbose(tmp_path: Path) -> None:
    args = ("--host", "::1", "--upstream", "http://u.test", "--mode", "passthrough")
    args += ("--cassette", "c1", "--db", "flags.db", "--verbose")
    proc = spawn(*args, cwd=tmp_path)  # and `--port P`, a free port
    port = proc.port
    try:

        async def health() -> dict[str, str] | None:
            try:
                async with aiohttp.ClientSession() as client:
                    async with client.get(f"http://[::1]:{port}/_rrproxy/health") as resp:
                        return dict(await resp.json())
            except aiohttp.ClientError:
                assert proc.popen.poll() is None, proc.stderr()
                return None

        answer = None
        for _ in range(300):  # bounded: 30 s
            if (answer := await health()) is not None:
                break
            await asyncio.sleep(0.1)
        assert answer is not None, proc.stderr()
    finally:
        await proc.kill()
    assert (answer["mode"], answer["cassette"], answer["upstream"]) == (
        "passthrough",
        "c1",
        "http://u.test",
    )
    assert (tmp_path / "flags.db").is_file()  # relative to where it runs
    assert " DEBUG " in proc.stderr()  # --verbose: the debug lines


async def test_strict_and_pace(tmp_path: Path) -> None:
    db = tmp_path / "replay.db"
    imported = run_cli("import", str(EXAMPLE), "--db", str(db), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    lines = EXAMPLE.read_text().splitlines()
    request = json.loads(lines[1])["request"]
    last_t = json.loads(lines[-1])["t"]  # ms from the request to the last event
    args = ("--db", str(db), "--mode", "replay", "--cassette", "hello-world")
    async with serving(*args, "--strict", "--pace", "2", cwd=tmp_path) as proxy:
        url = proxy.url("/v1/responses")
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with client.post(url, data=request["body"], headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            # --pace 2: the recorded gaps, halved (a lower bound: pacing only ever waits)
            assert loop.time() - started >= 0.9 * last_t / 2 / 1000
            async with client.post(url, data=request["body"], headers=headers) as resp:
                # --strict: the one recording was used; the same request again is a miss
                assert resp.status == 404
                message = (await resp.json())["error"]["message"]
    assert "strict replay" in message

    # Without --strict, the same request twice is answered twice (the last recording
    # repeats): the baseline, showing the flag made the difference. `-v` is --verbose.
    assert " DEBUG " not in proxy.stderr()
    async with serving(*args, "-v", cwd=tmp_path) as proxy:
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.post(
                    proxy.url("/v1/responses"), data=request["body"], headers=headers
                ) as resp:
                    assert resp.status == 200, await resp.text()
        assert " DEBUG " in proxy.stderr()
