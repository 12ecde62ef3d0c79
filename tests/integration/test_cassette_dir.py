"""A cassette directory as the source of truth: files loaded at start when they changed,
rewritten when a recording finishes, a corrupt one reported and skipped."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.cassettes import file_format as cassette_file
from tests.conftest import StartProxy, StartUpstream
from tests.proc import eventually, run_cli


def counting_upstream() -> web.Application:
    """The n-th call streams `answer n`."""
    calls = 0

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for part in range(2):
            await response.write(f"data: answer {calls} part {part}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    return app


async def ask(proxy_url: object, q: str) -> tuple[str, bytes]:
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy_url, json={"q": q}) as resp:  # type: ignore[arg-type]
            return resp.headers.get("Rrproxy-Source", f"{resp.status}"), await resp.read()


def interactions(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT id, cassette_id, request_body FROM interactions").fetchall()


async def test_recordings_are_written_to_the_directory_and_an_edited_file_is_loaded(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, db_path: Path
) -> None:
    cassettes = tmp_path / "cassettes"  # created on start
    upstream = await start_upstream(counting_upstream())
    url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="auto", cassette="team", cassette_dir=str(cassettes))
    file = cassettes / "team.cassette.jsonl"

    source, body = await ask(proxy.make_url("/v1/stream"), "one")
    assert (source, body) == ("recorded", b"data: answer 1 part 0\n\ndata: answer 1 part 1\n\n")
    # written as soon as the recording is committed, while the proxy runs
    await eventually(lambda: file.exists())
    _, recs = cassette_file.loads(file.read_bytes())
    assert [r.request.body for r in recs] == [b'{"q": "one"}']
    assert b"".join(e.data for e in recs[0].events) == body
    await proxy.close()
    assert sorted(p.name for p in cassettes.iterdir()) == ["team.cassette.jsonl"]  # no temp

    # A teammate edits the file (git pull): the next start loads it; replay serves the edit.
    file.write_bytes(file.read_bytes().replace(b"answer 1 part 1", b"edited by a human"))
    proxy = await start_proxy(url, mode="replay", cassette="team", cassette_dir=str(cassettes))
    source, body = await ask(proxy.make_url("/v1/stream"), "one")
    assert source == "replayed"
    assert body == b"data: answer 1 part 0\n\ndata: edited by a human\n\n"
    await proxy.close()

    # Auto mode records what is new and writes the file back with both.
    proxy = await start_proxy(upstream, mode="auto", cassette="team", cassette_dir=str(cassettes))
    assert await ask(proxy.make_url("/v1/stream"), "one") == ("replayed", body)
    source, _ = await ask(proxy.make_url("/v1/stream"), "two")
    assert source == "recorded"
    await proxy.close()
    _, recs = cassette_file.loads(file.read_bytes())
    assert [r.request.body for r in recs] == [b'{"q": "one"}', b'{"q": "two"}']
    assert recs[0].events[1].data == b"data: edited by a human\n\n"
    assert b"".join(e.data for e in recs[1].events) == (
        b"data: answer 2 part 0\n\ndata: answer 2 part 1\n\n"
    )


async def test_unchanged_files_are_not_loaded_again(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="proxy")
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_upstream())
    proxy = await start_proxy(upstream, mode="record", cassette="c", cassette_dir=str(cassettes))
    await ask(proxy.make_url("/v1/stream"), "one")
    await proxy.close()
    before = interactions(db_path)
    caplog.clear()

    proxy = await start_proxy(upstream, mode="replay", cassette="c", cassette_dir=str(cassettes))
    # The directory loads in the background: a request waits for it rather than missing.
    assert (await ask(proxy.make_url("/v1/stream"), "one"))[0] == "replayed"
    await proxy.close()
    assert "0 loaded, 1 unchanged, 0 removed, 0 skipped" in caplog.text
    assert interactions(db_path) == before  # same rows, same ids


async def test_a_corrupt_file_is_reported_by_name_and_the_others_load(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_upstream())
    url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record", cassette="good", cassette_dir=str(cassettes))
    _, recorded = await ask(proxy.make_url("/v1/stream"), "one")
    await proxy.close()
    good = (cassettes / "good.cassette.jsonl").read_bytes()

    (cassettes / "broken.cassette.jsonl").write_bytes(good[: len(good) // 2])
    (cassettes / "mangled.cassette.jsonl").write_bytes(good.replace(b'"version": ', b'"v": ', 1))
    (cassettes / "notes.txt").write_text("not a cassette, not looked at")
    fresh = tmp_path / "fresh.db"  # a new teammate: nothing loaded yet
    caplog.set_level(logging.INFO, logger="proxy")
    proxy = await start_proxy(
        url, mode="replay", cassette="good", cassette_dir=str(cassettes), db=str(fresh)
    )
    assert await ask(proxy.make_url("/v1/stream"), "one") == ("replayed", recorded)
    async with aiohttp.ClientSession() as client:
        async with client.post(
            proxy.make_url("/v1/stream"), json={"q": "one"}, headers={"Rrproxy-Cassette": "broken"}
        ) as resp:
            assert resp.status == 404  # skipped: not in the store
    await proxy.close()

    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert "broken.cassette.jsonl skipped: " in errors[0] and "line 2: " in errors[0]
    assert "mangled.cassette.jsonl skipped: " in errors[1] and "line 1: " in errors[1]
    assert "1 loaded, 0 unchanged, 0 removed, 2 skipped" in caplog.text


async def test_a_removed_file_removes_its_cassette(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, db_path: Path
) -> None:
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_upstream())
    url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record", cassette="gone", cassette_dir=str(cassettes))
    await ask(proxy.make_url("/v1/stream"), "one")
    await proxy.close()
    assert len(interactions(db_path)) == 1

    (cassettes / "gone.cassette.jsonl").unlink()  # to record it afresh
    proxy = await start_proxy(url, mode="replay", cassette="gone", cassette_dir=str(cassettes))
    source, _ = await ask(proxy.make_url("/v1/stream"), "one")
    await proxy.close()
    assert source == "404"
    assert interactions(db_path) == []


async def test_the_cassette_commands_see_the_directory(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_upstream())
    proxy = await start_proxy(upstream, mode="record", cassette="mine", cassette_dir=str(cassettes))
    await ask(proxy.make_url("/v1/stream"), "one")
    await proxy.close()

    db = ("--db", str(tmp_path / "cli.db"), "--cassette-dir", str(cassettes))
    listed = run_cli("ls", *db, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:3] == ["mine", "1", "2"]

    data = (cassettes / "mine.cassette.jsonl").read_bytes()
    (tmp_path / "x.cassette.jsonl").write_bytes(data)
    imported = run_cli("import", "x.cassette.jsonl", "--as", "theirs", *db, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    written = (cassettes / "theirs.cassette.jsonl").read_bytes()  # joins the team's files
    assert written == data.replace(b'"name": "mine"', b'"name": "theirs"')

    removed = run_cli("rm", "mine", *db, cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in cassettes.iterdir()) == ["theirs.cassette.jsonl"]


async def test_a_file_changed_on_disk_is_not_overwritten_by_a_new_recording(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_upstream())
    proxy = await start_proxy(upstream, mode="auto", cassette="team", cassette_dir=str(cassettes))
    file = cassettes / "team.cassette.jsonl"
    await ask(proxy.make_url("/v1/stream"), "one")
    await eventually(lambda: file.exists())
    pulled = file.read_bytes().replace(b"answer 1 part 1", b"a teammate's recording")
    file.write_bytes(pulled)  # a git pull while rrproxy runs
    await ask(proxy.make_url("/v1/stream"), "two")
    await eventually(lambda: "changed on disk" in caplog.text)
    await proxy.close()
    assert file.read_bytes() == pulled


async def test_a_stream_still_running_at_shutdown_gets_into_its_file(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path
) -> None:
    started = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: 1\n\n")
        started.set()
        await asyncio.sleep(0.5)
        await response.write(b"data: 2\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/stream", slow)
    upstream = await start_upstream(app)
    cassettes = tmp_path / "cassettes"
    proxy = await start_proxy(upstream, mode="record", cassette="late", cassette_dir=str(cassettes))
    async with aiohttp.ClientSession() as client:
        resp = await client.post(proxy.make_url("/v1/stream"), json={"q": 1})
        await asyncio.wait_for(started.wait(), timeout=10)
        resp.close()  # the client leaves; the stream is still being recorded
    await proxy.close()  # shuts down while the stream runs
    _, recs = cassette_file.loads((cassettes / "late.cassette.jsonl").read_bytes())
    assert [b"".join(e.data for e in r.events) for r in recs] == [b"data: 1\n\ndata: 2\n\n"]


async def test_each_recording_is_appended_and_the_file_stays_what_export_writes(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    tmp_path: Path,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The k-th recording of a cassette costs what the first does: its lines are appended
    and the header's count rewritten in place. The whole file is written only for the first
    recording after start and when the count gains a digit (10): 2 of 25. The file is then
    byte for byte what `rrproxy export` writes."""
    caplog.set_level(logging.INFO, logger="proxy.cassettes.directory")
    cassettes = tmp_path / "cassettes"
    upstream = await start_upstream(counting_upstream())
    proxy = await start_proxy(upstream, mode="record", cassette="c", cassette_dir=str(cassettes))
    file = cassettes / "c.cassette.jsonl"
    sizes = []
    for k in range(1, 26):
        await ask(proxy.make_url("/v1/stream"), f"question {k}")
        await eventually(lambda k=k: file.exists() and f'"interactions": {k}}}' in _head(file))
        sizes.append(file.stat().st_size)
    await proxy.close()
    how = [r.getMessage().split()[2:4] for r in caplog.records if "cassette 'c'" in r.getMessage()]
    assert how.count(["written", "to"]) == 2
    assert how.count(["appended", "to"]) == 23
    grown = [b - a for a, b in itertools.pairwise(sizes)]
    assert max(grown) < 1.1 * min(grown)  # a recording's lines (times vary), never the file
    result = run_cli("export", "c", "-o", "-", "--db", str(db_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert file.read_text() == result.stdout
    _, recs = cassette_file.loads(file.read_bytes())
    assert [r.request.body for r in recs] == [
        f'{{"q": "question {k}"}}'.encode() for k in range(1, 26)
    ]


def _head(file: Path) -> str:
    with file.open() as f:
        return f.readline()
