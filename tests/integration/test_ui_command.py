"""`rrproxy ui` as a real process: the UI over a directory of cassette files or a store,
proxying nothing, read-only unless --writable, and guarded like the proxy's."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.proc import STARTUP_TIMEOUT_S, clean_env, free_port, run_cli
from tests.ui_support import UI, csrf

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def spawn(args: tuple[str, ...], cwd: Path, port: int | None, log: Path) -> subprocess.Popen[bytes]:
    """`python -m proxy ui ARGS --port PORT` (no --port when None: its default)."""
    listen = ("--port", str(port)) if port is not None else ()
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "proxy", "ui", *args, *listen],
            cwd=cwd,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


@asynccontextmanager
async def ui_process(*args: str, cwd: Path) -> AsyncIterator[str]:
    """`python -m proxy ui ARGS --port P` until the block ends; its base URL once it answers."""
    port = free_port()
    log = cwd / f"ui-{port}.stderr"
    popen = spawn(args, cwd, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        async with aiohttp.ClientSession() as client:
            while True:
                assert popen.poll() is None, log.read_text()
                try:
                    async with client.get(base + UI + "/") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert loop.time() < deadline, log.read_text()
                await asyncio.sleep(0.05)
        yield base
    finally:
        popen.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(popen.wait, 30)
        except subprocess.TimeoutExpired:
            popen.kill()
    assert popen.returncode == 0, log.read_text()
    assert "read-only" in log.read_text() or "changes allowed" in log.read_text()


async def get(base: str, path: str, **kw: object) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        async with client.get(base + path, **kw) as r:  # type: ignore[arg-type]
            return r.status, await r.text()


async def test_browsing_a_cassette_directory_read_only(tmp_path: Path) -> None:
    files = tmp_path / "cassettes"
    shutil.copytree(EXAMPLES, files)
    async with ui_process("--cassette-dir", str(files), cwd=tmp_path) as base:
        status, text = await get(base, UI + "/")
        assert status == 200 and 'data-cassette="hello-world"' in text
        assert "read-only" in text and "data-delete-cassette" not in text
        status, text = await get(base, UI + "/cassettes/hello-world")
        assert status == 200 and "api.openai.com/v1/responses" in text
        status, _ = await get(base, "/v1/responses")  # nothing is proxied
        assert status == 404
        status, _ = await get(base, UI + "/", headers={"Host": "evil.example"})
        assert status == 403
        async with aiohttp.ClientSession() as client:
            async with client.post(
                base + UI + "/actions/delete-cassette",
                json={"name": "hello-world"},
                headers={"X-Rrproxy-Csrf": csrf(text)},
            ) as r:
                assert r.status == 403 and "read-only" in await r.text()
            async with client.post(
                base + UI + "/actions/mode",
                json={"mode": "replay"},
                headers={"X-Rrproxy-Csrf": csrf(text)},
            ) as r:
                assert r.status == 400 and "runs no proxy" in await r.text()
    assert (files / "hello-world.cassette.jsonl").is_file()


async def test_a_writable_store_allows_deletes(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    done = run_cli(
        "import", str(EXAMPLES / "hello-world.cassette.jsonl"), "--db", str(db), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    async with ui_process("--db", str(db), "--writable", cwd=tmp_path) as base:
        status, text = await get(base, UI + "/")
        assert status == 200 and 'data-delete-cassette="hello-world"' in text
        async with aiohttp.ClientSession() as client:
            async with client.post(
                base + UI + "/actions/delete-cassette",
                json={"name": "hello-world"},
                headers={"X-Rrproxy-Csrf": csrf(text)},
            ) as r:
                assert r.status == 200, await r.text()
        status, text = await get(base, UI + "/")
        assert "hello-world" not in text


def test_a_missing_store_or_both_sources_are_refused(tmp_path: Path) -> None:
    done = run_cli("ui", "--db", str(tmp_path / "nothing.db"), cwd=tmp_path)
    assert done.returncode == 2 and "no store at" in done.stderr
    done = run_cli("ui", "--db", "x.db", "--cassette-dir", str(EXAMPLES), cwd=tmp_path)
    assert done.returncode == 2 and "not both" in done.stderr
    done = run_cli("ui", "--cassette-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert done.returncode == 2 and "no such directory" in done.stderr
    done = run_cli("ui", "--host", "0.0.0.0", "--cassette-dir", str(EXAMPLES), cwd=tmp_path)
    assert done.returncode == 2 and "--allow-remote" in done.stderr


async def test_the_help_names_the_port_the_command_listens_on(tmp_path: Path) -> None:
    """`rrproxy ui --help` gives the default port; started without --port, the command
    listens there (or, when something else holds that port, says it cannot: either way
    its log names the port it used)."""
    helped = run_cli("ui", "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    found = re.search(r"--port PORT\s+[^(]*\(default (\d+)\)", helped.stdout)
    assert found is not None, helped.stdout
    (tmp_path / "empty").mkdir()
    log = tmp_path / "ui.stderr"
    popen = spawn(("--cassette-dir", str(tmp_path / "empty")), tmp_path, None, log)
    said = re.compile(
        r"rrproxy ui on http://127\.0\.0\.1:(\d+)/|cannot listen on 127\.0\.0\.1:(\d+)"
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_S
        while (line := said.search(log.read_text())) is None:
            assert loop.time() < deadline, log.read_text()
            if popen.poll() is not None:  # ended: what it said is all in the log now
                line = said.search(log.read_text())
                assert line is not None, log.read_text()
                break
            await asyncio.sleep(0.05)
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(popen.wait, 30)
        except subprocess.TimeoutExpired:
            popen.kill()
    assert (line.group(1) or line.group(2)) == found.group(1), log.read_text()
