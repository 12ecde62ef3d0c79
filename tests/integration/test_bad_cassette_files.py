"""Cassette files that cannot be stored or replayed, on disk: a directory start skips each
with one log line (and serves the good one), `rrproxy import` names the file and the line,
and nothing that is not a regular file is ever read (a FIFO, a device behind a symlink)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.file_format import Recorded
from proxy.core.records import Event, Outcome, Request, ResponseHead
from tests.proc import run_cli, serving

UPSTREAM = "http://127.0.0.1:9"  # never contacted: replay only
BODY = b"data: recorded\n\n"


def recorded(
    *,
    url: str = f"{UPSTREAM}/v1/hello",
    status: int = 200,
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/event-stream"),),
    events: tuple[Event, ...] = (Event(1.0, BODY),),
) -> Recorded:
    return Recorded(
        request=Request("GET", url, (), b""),
        response=ResponseHead(status, headers),
        outcome=Outcome.COMPLETE,
        error=None,
        recorded_at=datetime(2025, 3, 6, 13, 50, 19, tzinfo=UTC),
        ttfb_ms=1.0,
        duration_ms=2.0,
        events=events,
    )


def edited(name: str, change: Callable[[dict[str, object]], None]) -> bytes:
    """A cassette file of one interaction whose head line (line 2) is changed as JSON: what
    a hand edit, or a crafted file, can hold."""
    header, head, *events = cassette_file.dump(name, [recorded()]).splitlines()
    obj = json.loads(head)
    change(obj)
    head = json.dumps(obj).encode()  # ASCII escapes: a lone surrogate survives as \udcff
    return b"\n".join([header, head, *events]) + b"\n"


def _set(path: str, value: object) -> Callable[[dict[str, object]], None]:
    def change(obj: dict[str, object]) -> None:
        *parents, last = path.split(".")
        target: object = obj
        for p in parents:
            target = target[p]  # type: ignore[index]
        target[last] = value  # type: ignore[index]

    return change


# name -> (content, the reason the log and the import give)
CONTENT_BAD: dict[str, tuple[bytes, str]] = {
    "far-future": (
        edited("far-future", _set("recorded_at", "9999-12-31T23:59:59-01:00")),
        "'recorded_at' must be a time between the years 1970 and 9999",
    ),
    "surrogate-url": (
        edited("surrogate-url", _set("request.url", f"{UPSTREAM}/v1/\udcff")),
        "request: 'url' holds a lone surrogate",
    ),
    "switching": (
        edited("switching", _set("response.status", 101)),
        "response: 'status' must be a final HTTP status from 200 to 999",
    ),
    "spaced-header": (
        edited("spaced-header", _set("response.headers", [["X Bad", "1"]])),
        "response: 'headers' has the name 'X Bad', which is not an HTTP token",
    ),
    "split-header": (
        edited("split-header", _set("response.headers", [["X-Ok", "a\r\nSet-Cookie: b"]])),
        "response: 'headers' has a value for 'X-Ok' with CR, LF or NUL",
    ),
    "no-content-body": (
        edited("no-content-body", _set("response.status", 204)),
        "a 204 response has no body, this one has 1 event(s)",
    ),
}


def write_bad_directory(cassettes: Path) -> None:
    cassettes.mkdir()
    (cassettes / "good.cassette.jsonl").write_bytes(cassette_file.dump("good", [recorded()]))
    for name, (content, _) in CONTENT_BAD.items():
        (cassettes / f"{name}.cassette.jsonl").write_bytes(content)
    # A name that is not UTF-8 (it could never be a cassette's name), with good content.
    latin1 = os.path.join(os.fsencode(cassettes), b"caf\xe9.cassette.jsonl")
    with open(latin1, "wb") as f:
        f.write(cassette_file.dump("cafe", [recorded()]))
    os.mkfifo(cassettes / "fifo.cassette.jsonl")  # open() would wait for a writer forever
    (cassettes / "zero.cassette.jsonl").symlink_to("/dev/zero")  # endless, and size 0
    (cassettes / "dangling.cassette.jsonl").symlink_to(cassettes / "nowhere")
    (cassettes / "dir.cassette.jsonl").mkdir()
    # A symbolic link to a regular file is read like the file (kept elsewhere, say).
    elsewhere = cassettes.parent / "elsewhere.jsonl"
    elsewhere.write_bytes(cassette_file.dump("linked", [recorded()]))
    (cassettes / "linked.cassette.jsonl").symlink_to(elsewhere)


async def test_serve_skips_each_bad_file_with_one_line_and_serves_the_good_one(
    tmp_path: Path,
) -> None:
    cassettes = tmp_path / "cassettes"
    write_bad_directory(cassettes)
    args = ("--cassette-dir", str(cassettes), "--mode", "replay", "--cassette", "good")
    # Bounded: `serving` gives up (and kills the process) if it is not healthy in time.
    async with serving(*args, "--upstream", UPSTREAM, "--db", "s.db", cwd=tmp_path) as proxy:
        async with aiohttp.ClientSession() as client:
            for name in ("good", "linked"):
                headers = {"Rrproxy-Cassette": name}
                async with client.get(proxy.url("/v1/hello"), headers=headers) as resp:
                    assert resp.headers["Rrproxy-Source"] == "replayed", name
                    assert await resp.read() == BODY
            for name in CONTENT_BAD:
                headers = {"Rrproxy-Cassette": name}
                async with client.get(proxy.url("/v1/hello"), headers=headers) as resp:
                    assert resp.status == 404, name  # skipped: never in the store
        log = proxy.stderr()

    assert "Traceback" not in log
    skipped = [line for line in log.splitlines() if " skipped: " in line]
    expected = {
        **{f"{name}.cassette.jsonl": reason for name, (_, reason) in CONTENT_BAD.items()},
        "caf\\xe9.cassette.jsonl": "not a valid cassette name",
        "fifo.cassette.jsonl": "not a regular file (a FIFO)",
        "zero.cassette.jsonl": "not a regular file (a character device)",
        "dangling.cassette.jsonl": "No such file or directory",
        "dir.cassette.jsonl": "not a regular file (a directory)",
    }
    assert len(skipped) == len(expected), "\n".join(skipped)
    for file, reason in expected.items():
        [line] = [s for s in skipped if f"{file} skipped: " in s]
        assert reason in line, line
    assert f"2 loaded, 0 unchanged, 0 removed, {len(expected)} skipped" in log


@pytest.mark.parametrize("name", CONTENT_BAD)
def test_import_names_the_file_and_the_line(tmp_path: Path, name: str) -> None:
    content, reason = CONTENT_BAD[name]
    file = tmp_path / f"{name}.cassette.jsonl"
    file.write_bytes(content)
    result = run_cli("import", file.name, "--db", "s.db", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{file.name}, line 2: " in result.stderr
    assert reason in result.stderr


def test_import_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.cassette.jsonl")
    (tmp_path / "zero.cassette.jsonl").symlink_to("/dev/zero")
    for file in ("fifo.cassette.jsonl", "zero.cassette.jsonl"):
        result = run_cli("import", file, "--db", "s.db", cwd=tmp_path)  # bounded by a timeout
        assert result.returncode != 0, file
        assert "Traceback" not in result.stderr
        assert "not a regular file" in result.stderr or "is not a file" in result.stderr


def test_a_name_whose_file_name_is_too_long_is_refused(tmp_path: Path) -> None:
    name = "é" * 200  # 200 characters, 400 bytes: no file system takes it as a file name
    file = tmp_path / "long.cassette.jsonl"
    content = cassette_file.dump("x", [recorded()])
    file.write_bytes(content.replace(b'"x"', json.dumps(name).encode(), 1))
    result = run_cli("import", file.name, "--db", "s.db", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "long.cassette.jsonl, line 1: header: 'name' is not usable" in result.stderr
    assert "255 bytes" in result.stderr
    # The same name on the command line
    result = run_cli("export", name, "--db", "s.db", cwd=tmp_path)
    assert result.returncode == 2
    assert "255 bytes" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
async def test_a_fifo_or_a_device_never_holds_up_the_start(tmp_path: Path, kind: str) -> None:
    """Each alone beside a good file (the start used to wait on it for ever, deaf to SIGTERM):
    the proxy starts, serves the good one, and stops on SIGTERM."""
    cassettes = tmp_path / "cassettes"
    cassettes.mkdir()
    (cassettes / "good.cassette.jsonl").write_bytes(cassette_file.dump("good", [recorded()]))
    bad = cassettes / "bad.cassette.jsonl"
    if kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.symlink_to("/dev/zero")
    args = ("--cassette-dir", str(cassettes), "--mode", "replay", "--cassette", "good")
    async with serving(*args, "--upstream", UPSTREAM, "--db", "s.db", cwd=tmp_path) as proxy:
        async with aiohttp.ClientSession() as client:
            async with client.get(proxy.url("/v1/hello")) as resp:
                assert await resp.read() == BODY
        proxy.send_signal(signal.SIGTERM)
        assert await proxy.wait() == 0
    assert "bad.cassette.jsonl skipped: not a regular file" in proxy.stderr()
