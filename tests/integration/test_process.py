"""The proxy as a process: killed mid-stream, stopped gracefully, configured, logging, and
its store's schema refused when it is newer than this rrproxy. Each test runs the command."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from alembic.script import ScriptDirectory

from proxy import __version__
from proxy.store.migrate import alembic_config
from tests.conftest import StartUpstream
from tests.proc import (
    ProxyProcess,
    eventually,
    free_port,
    port_is_open,
    run_cli,
    serving,
    spawn,
)

N_EVENTS = 5


def tick(i: int) -> bytes:
    return f'id: {i}\nevent: tick\ndata: {{"i": {i}, "pad": "{"x" * i}"}}\n\n'.encode()


def stream_upstream(hold: asyncio.Event, *, first_held: int) -> web.Application:
    """The first call sends `first_held` events, then waits for `hold` before the rest;
    later calls send all `N_EVENTS` at once."""
    app = web.Application()
    calls: list[int] = []

    async def stream(request: web.Request) -> web.StreamResponse:
        calls.append(1)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for i in range(N_EVENTS + 1):
                if i == first_held and len(calls) == 1:
                    await asyncio.wait_for(hold.wait(), timeout=60)
                if i < N_EVENTS:
                    await response.write(tick(i))
            await response.write_eof()
        except ConnectionError:
            pass  # the proxy was killed
        return response

    app.router.add_post("/v1/stream", stream)
    return app


def read_db(db: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """A short read-only query, as another process would make it."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        return conn.execute(sql, params).fetchall()


async def test_sigkill_mid_stream_keeps_committed_events_and_marks_incomplete(
    start_upstream: StartUpstream, tmp_path: Path, db_path: Path
) -> None:
    hold = asyncio.Event()
    upstream = await start_upstream(stream_upstream(hold, first_held=N_EVENTS))
    target = str(upstream.make_url("")).rstrip("/")
    body = {"q": "killed"}
    try:
        async with serving(
            "--db", str(db_path), "--upstream", target, "--mode", "record", cwd=tmp_path
        ) as proxy:
            async with aiohttp.ClientSession() as client:
                async with client.post(proxy.url("/v1/stream"), json=body) as resp:
                    assert resp.headers["Rrproxy-Source"] == "recorded"
                    seen = [
                        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
                        for _ in range(N_EVENTS)
                    ]
                    assert seen == [tick(i) for i in range(N_EVENTS)]
                    # The writer commits in small batches: the events the client has seen
                    # reach the file without the stream ending.
                    await eventually(
                        lambda: len(read_db(db_path, "SELECT seq FROM events")) == N_EVENTS
                    )
                    (outcome,) = read_db(db_path, "SELECT outcome FROM interactions")
                    assert outcome == ("recording",)
                    proxy.send_signal(signal.SIGKILL)
                    assert await proxy.wait() == -signal.SIGKILL
                    with pytest.raises(aiohttp.ClientError):
                        await asyncio.wait_for(resp.content.read(), timeout=10)
    finally:
        hold.set()

    async with serving("--db", str(db_path), "--upstream", target, cwd=tmp_path) as proxy:
        assert read_db(db_path, "PRAGMA integrity_check") == [("ok",)]
        rows = read_db(db_path, "SELECT outcome, event_count, error FROM interactions")
        assert len(rows) == 1
        outcome, event_count, error = rows[0]
        assert outcome == "incomplete" and event_count == N_EVENTS
        assert "stopped" in str(error)
        events = read_db(db_path, "SELECT seq, data FROM events ORDER BY seq")
        assert events == [(i, tick(i)) for i in range(N_EVENTS)]
        assert "marked 1 interaction(s)" in proxy.stderr()

        # Auto mode never replays the incomplete recording: the request is recorded again.
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.url("/v1/stream"), json=body) as resp:
                assert resp.headers["Rrproxy-Source"] == "recorded"
                assert await resp.read() == b"".join(tick(i) for i in range(N_EVENTS))
            async with client.post(
                proxy.url("/v1/stream"), json=body, headers={"Rrproxy-Mode": "replay"}
            ) as resp:
                assert resp.headers["Rrproxy-Source"] == "replayed"
                assert await resp.read() == b"".join(tick(i) for i in range(N_EVENTS))
    outcomes = read_db(db_path, "SELECT outcome FROM interactions ORDER BY id")
    assert outcomes == [("incomplete",), ("complete",)]


@asynccontextmanager
async def recording_a_held_stream(
    start_upstream: StartUpstream, db_path: Path, cwd: Path
) -> AsyncIterator[tuple[ProxyProcess, asyncio.Event]]:
    """`rrproxy serve` recording an upstream whose first stream sends two events and holds
    the rest until the event is set (set at the end in any case)."""
    hold = asyncio.Event()
    upstream = await start_upstream(stream_upstream(hold, first_held=2))
    target = str(upstream.make_url("")).rstrip("/")
    try:
        async with serving(
            "--db", str(db_path), "--upstream", target, "--mode", "record", cwd=cwd
        ) as proxy:
            yield proxy, hold
    finally:
        hold.set()


async def test_sigterm_lets_the_stream_in_flight_finish(
    start_upstream: StartUpstream, tmp_path: Path, db_path: Path
) -> None:
    async with recording_a_held_stream(start_upstream, db_path, tmp_path) as (proxy, hold):
        async with aiohttp.ClientSession() as client:
            async with client.post(proxy.url("/v1/stream"), json={"q": 1}) as resp:
                first = [
                    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), timeout=10)
                    for _ in range(2)
                ]
                proxy.send_signal(signal.SIGTERM)
                # Shutting down: the proxy stops listening, the stream stays open.
                await eventually(lambda: not port_is_open(proxy.port))
                # The upstream keeps the rest back a while into the shutdown (a slow
                # stream, well within the default 30 s shutdown timeout).
                await asyncio.sleep(1.0)
                assert proxy.popen.poll() is None
                hold.set()
                rest = await asyncio.wait_for(resp.content.read(), timeout=10)
        assert await proxy.wait() == 0, proxy.stderr()
    assert b"".join(first) + rest == b"".join(tick(i) for i in range(N_EVENTS))
    assert read_db(db_path, "SELECT outcome, event_count FROM interactions") == [
        ("complete", N_EVENTS)
    ]
    events = read_db(db_path, "SELECT seq, data FROM events ORDER BY seq")
    assert events == [(i, tick(i)) for i in range(N_EVENTS)]


ENDED = "SELECT outcome, event_count FROM interactions WHERE outcome != 'recording'"


async def test_a_client_hanging_up_leaves_the_stream_to_be_recorded_to_its_end(
    start_upstream: StartUpstream, tmp_path: Path, db_path: Path
) -> None:
    """The command's server does not cancel a handler whose client left."""
    async with recording_a_held_stream(start_upstream, db_path, tmp_path) as (proxy, hold):
        async with aiohttp.ClientSession() as client:
            resp = await client.post(proxy.url("/v1/stream"), json={"q": 1})
            assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10) == tick(0)
            resp.close()  # hang up, two events in
        hold.set()
        ended = await eventually(lambda: read_db(db_path, ENDED) or None)
    assert ended == [("client_gone", N_EVENTS)]
    events = read_db(db_path, "SELECT seq, data FROM events ORDER BY seq")
    assert events == [(i, tick(i)) for i in range(N_EVENTS)]


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "toml", "named"),
    [
        (["--mode", "replay2"], {}, None, "mode"),
        ([], {"RRPROXY_PORT": "abc"}, None, "RRPROXY_PORT"),
        (["--pace", "fast"], {}, None, "pace"),
        ([], {}, 'pace = "fast"\n', "pace"),
        ([], {}, 'mode = "record"\ncolour = "blue"\n', "colour"),
        ([], {}, "[timeouts]\nconect = 3\n", "timeouts.conect"),
    ],
    ids=["flag-mode", "env-port", "flag-pace", "toml-pace", "toml-unknown", "toml-unknown-nested"],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_key(
    args: list[str], env: dict[str, str], toml: str | None, named: str, tmp_path: Path
) -> None:
    if toml is not None:
        (tmp_path / "rrproxy.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "rrproxy.toml")]
    result = run_cli(
        "serve", *args, "--db", str(tmp_path / "x.db"), "--port", str(free_port()),
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert not (tmp_path / "x.db").exists()  # nothing was started


async def test_precedence_toml_then_env_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "rrproxy.toml"
    config.write_text(
        'mode = "record"\nupstream = "http://toml.example:1"\ncassette = "from-toml"\nport = 1\n'
    )
    env = {
        "RRPROXY_UPSTREAM": "http://env.example:2",
        "RRPROXY_CASSETTE": "from-env",
        "RRPROXY_PORT": "2",
    }
    args = ("--config", str(config), "--db", str(tmp_path / "p.db"), "--cassette", "from-flag")
    async with serving(*args, cwd=tmp_path, env=env) as proxy:  # --port P: a flag too
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.url("/_rrproxy/health")) as resp:
                health = await resp.json()
    assert health["mode"] == "record"  # the file alone
    assert health["upstream"] == "http://env.example:2"  # the environment over the file
    assert health["cassette"] == "from-flag"  # the flag over both


# -- logs ---------------------------------------------------------------------------------


async def test_one_log_line_per_interaction(
    start_upstream: StartUpstream, tmp_path: Path, db_path: Path
) -> None:
    hold = asyncio.Event()
    hold.set()
    upstream = await start_upstream(stream_upstream(hold, first_held=0))
    target = str(upstream.make_url("")).rstrip("/")
    expected = [
        r"record logs POST 127\.0\.0\.1:\d+/v1/stream -> 200 recorded, 5 events, \d+ ms$",
        r"replay logs POST 127\.0\.0\.1:\d+/v1/stream -> 200 replayed, 5 events, \d+ ms$",
        r"replay logs POST 127\.0\.0\.1:\d+/v1/stream -> 404 missed, 0 events, \d+ ms$",
    ]
    async with serving(
        "--db", str(db_path), "--upstream", target, "--cassette", "logs", cwd=tmp_path
    ) as proxy:
        async with aiohttp.ClientSession() as client:
            for mode, q, status in (("record", 1, 200), ("replay", 1, 200), ("replay", 2, 404)):
                async with client.post(
                    proxy.url("/v1/stream"), json={"q": q}, headers={"Rrproxy-Mode": mode}
                ) as resp:
                    text = await resp.text()
                    assert resp.status == status, text

        def interaction_lines() -> list[str] | None:
            lines = [line for line in proxy.stderr().splitlines() if "/v1/stream -> " in line]
            return lines if len(lines) >= len(expected) else None

        lines = await eventually(interaction_lines)
    assert len(lines) == len(expected), lines
    for pattern, line in zip(expected, lines, strict=True):
        assert re.search(pattern, line), (pattern, line)


# -- the store's schema -------------------------------------------------------------------


def test_db_upgrade_creates_the_schema_and_says_the_revision(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    result = run_cli("db", "upgrade", "--db", str(db), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert head in result.stdout
    tables = {r[0] for r in read_db(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"cassettes", "interactions", "events", "alembic_version"} <= tables
    assert read_db(db, "SELECT version_num FROM alembic_version") == [(head,)]


def test_serve_refuses_a_store_newer_than_it_understands(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    assert run_cli("db", "upgrade", "--db", str(db), cwd=tmp_path).returncode == 0
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'f00dfeed9999'")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("future")) == [
        "future.db"
    ]
    before = hashlib.sha256(db.read_bytes()).hexdigest()

    result = run_cli("serve", "--db", str(db), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode != 0
    assert "newer than this rrproxy understands" in result.stderr
    assert "f00dfeed9999" in result.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert read_db(db, "SELECT version_num FROM alembic_version") == [("f00dfeed9999",)]


# -- the command itself -------------------------------------------------------------------


def test_python_m_proxy_help(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: rrproxy")
    assert "serve" in result.stdout and "db" in result.stdout


def test_rrproxy_version(tmp_path: Path) -> None:
    script = shutil.which("rrproxy", path=str(Path(sys.executable).parent))
    assert script is not None, "the rrproxy console script is not installed next to python"
    result = run_cli("--version", cwd=tmp_path, executable=(script,))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"rrproxy {__version__}"


async def test_serve_health_answers_and_the_process_stops_on_sigint(
    tmp_path: Path, db_path: Path
) -> None:
    proc = spawn("--db", str(db_path), "--upstream", "http://127.0.0.1:9", cwd=tmp_path)
    try:
        await proc.wait_healthy()
        async with aiohttp.ClientSession() as client:
            async with client.get(proc.url("/_rrproxy/health")) as resp:
                health = json.loads(await resp.read())
        assert health["status"] == "ok" and health["version"] == __version__
        proc.send_signal(signal.SIGINT)
        assert await proc.wait() == 0, proc.stderr()
    finally:
        await proc.kill()
