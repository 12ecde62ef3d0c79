"""`rrproxy copy`, as a real process: record locally on SQLite, copy to the team store
(SQLite file or PostgreSQL database), replay from there; twice changes nothing; other
content under the same name is a reported conflict unless --replace; key-like strings stop
a cassette on its way out of a store; cassette directories at either end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream
from tests.proc import run_cli
from tests.stores import rows

pytestmark = pytest.mark.stores

KEY = "sk-proj-Q2xhdWRlIHdhcyBoZXJlIGJ1dCBubyBrZXk"


async def record(
    start_upstream: StartUpstream, start_proxy: StartProxy, db: Path, *bodies: bytes
) -> tuple[list[bytes], str]:
    """Record one streamed interaction per body into cassette `c` of the SQLite file `db`:
    the bodies relayed, and the upstream's URL (stopped on return: replay never calls it)."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: " + await request.read() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="record", cassette="c", db=str(db))
    got = []
    async with aiohttp.ClientSession() as client:
        for body in bodies:
            async with client.post(proxy.make_url("/v1/stream"), data=body) as resp:
                got.append(await resp.read())
    url = str(upstream.make_url("")).rstrip("/")
    await proxy.close()
    await upstream.close()
    return got, url


def copy(*args: str, cwd: Path) -> tuple[int, str, str]:
    result = run_cli("copy", *args, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


async def test_record_locally_copy_to_the_team_store_and_replay_from_it(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    local = tmp_path / "local.db"
    bodies, upstream = await record(start_upstream, start_proxy, local, b"one", b"two")
    code, out, err = await asyncio.to_thread(
        copy, "--from", str(local), "--to", store_url, cwd=tmp_path
    )
    assert code == 0, err
    assert out.startswith("copied 'c' (2 interaction(s))")
    before = rows(store_url, "SELECT id, ordinal FROM interactions ORDER BY id")
    code, out, _ = await asyncio.to_thread(
        copy, "--from", str(local), "--to", store_url, cwd=tmp_path
    )
    assert code == 0 and out.startswith("unchanged 'c'")
    assert rows(store_url, "SELECT id, ordinal FROM interactions ORDER BY id") == before

    replayer = await start_proxy(upstream, read_only="true", cassette="c")
    async with aiohttp.ClientSession() as client:
        for body, want in zip((b"one", b"two"), bodies, strict=True):
            async with client.post(replayer.make_url("/v1/stream"), data=body) as resp:
                assert resp.headers["Rrproxy-Source"] == "replayed"
                assert await resp.read() == want
    await replayer.close()

    # other content under the same name: reported, left alone, unless --replace
    await record(start_upstream, start_proxy, local, b"three")
    code, out, _ = await asyncio.to_thread(
        copy, "--from", str(local), "--to", store_url, "c", cwd=tmp_path
    )
    assert code == 1 and out.startswith("not copied 'c'") and "--replace" in out
    assert rows(store_url, "SELECT id, ordinal FROM interactions ORDER BY id") == before
    code, out, _ = await asyncio.to_thread(
        copy, "--from", str(local), "--to", store_url, "c", "--replace", cwd=tmp_path
    )
    assert code == 0 and out.startswith("replaced 'c' (3 interaction(s))")
    assert [o for (o,) in rows(store_url, "SELECT ordinal FROM interactions ORDER BY ordinal")] == [
        1,
        2,
        3,
    ]


async def test_copy_through_a_cassette_directory_and_the_secret_scan_on_the_way_out(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    local = tmp_path / "local.db"
    await record(start_upstream, start_proxy, local, b"plain")
    directory = tmp_path / "cassettes/"
    code, out, err = await asyncio.to_thread(
        copy, "--from", str(local), "--to", f"{directory}/", cwd=tmp_path
    )
    assert code == 0, err
    exported = (directory / "c.cassette.jsonl").read_bytes()
    code, out, err = await asyncio.to_thread(
        copy, "--from", str(directory), "--to", store_url, cwd=tmp_path
    )
    assert code == 0 and out.startswith("copied 'c' (1 interaction(s))"), err
    # back out of the team store into a fresh directory: byte for byte the same file
    again = tmp_path / "again"
    again.mkdir()
    code, _, err = await asyncio.to_thread(
        copy, "--from", store_url, "--to", str(again), cwd=tmp_path
    )
    assert code == 0, err
    assert (again / "c.cassette.jsonl").read_bytes() == exported

    leaky = tmp_path / "leaky.db"
    await record(start_upstream, start_proxy, leaky, f'{{"api_key": "{KEY}"}}'.encode())
    code, out, _ = await asyncio.to_thread(
        copy, "--from", str(leaky), "--to", store_url, cwd=tmp_path
    )
    assert code == 1 and "not copied 'c'" in out and "key-like" in out
    assert rows(store_url, "SELECT count(*) FROM interactions") == [(1,)]
    code, out, _ = await asyncio.to_thread(
        copy, "--from", str(leaky), "--to", store_url, "--replace", "--allow-secrets", cwd=tmp_path
    )
    assert code == 0 and out.startswith("replaced 'c'")


def test_copy_from_nowhere_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = copy(
        "--from", str(tmp_path / "missing.db"), "--to", str(tmp_path / "x.db"), cwd=tmp_path
    )
    assert code == 2 and "no store at" in err
