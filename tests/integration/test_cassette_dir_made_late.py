"""A cassette directory is made when a first file is written into it, not at start: a run
that records nothing leaves no empty directory; a path that cannot be a directory still
stops the start, with one line that says so."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.cassettes.file_format import SUFFIX
from tests.conftest import StartProxy, StartUpstream
from tests.proc import run_cli


async def test_the_directory_appears_with_the_first_recording(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/hello", hello)
    upstream = await start_upstream(app)
    directory = tmp_path / "not" / "yet"
    proxy = await start_proxy(upstream, mode="auto", cassette_dir=str(directory))
    assert not (tmp_path / "not").exists()  # started: nothing made yet
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy.make_url("/hello")) as resp:
            assert await resp.text() == "hello"
    await proxy.close()  # the last recordings are written on the way out
    assert [p.name for p in directory.iterdir()] == ["default" + SUFFIX]


def test_a_path_that_cannot_be_a_directory_stops_the_start(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    for where in (file, file / "under-it"):
        ran = run_cli("ls", "--cassette-dir", str(where), "--db", "r.db", cwd=tmp_path)
        assert ran.returncode == 2, ran.stderr
        assert "cannot use it as a directory (Not a directory)" in ran.stderr
