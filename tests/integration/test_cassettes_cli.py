"""`rrproxy ls | show | export | import | rm` as real processes, on real SQLite stores, with
cassettes recorded from a live upstream through the proxy."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes import transfer as cassettes
from proxy.config import database_url
from proxy.errors import CassetteFileError
from proxy.store import migrate
from proxy.store.engine import create_engine
from tests.conftest import StartProxy, StartUpstream
from tests.proc import run_cli
from tests.stores import rows

EVENTS = [
    b'event: delta\ndata: {"text": "caf\xc3\xa9"}\n\n',
    b"event: delta\ndata: \xff\xfe not UTF-8\n\n",  # stored as base64
    b"data: [DONE]\n\n",
]
KEY = "sk-proj-Q2xhdWRlIHdhcyBoZXJlIGJ1dCBubyBrZXk"


def sse_upstream() -> web.Application:
    """Answers each POST with a short SSE stream whose first event echoes the body."""

    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Request-Id": "req_1"}
        )
        await response.prepare(request)
        await response.write(b"event: echo\ndata: " + body + b"\n\n")
        for event in EVENTS:
            await response.write(event)
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    return app


async def record(
    start_upstream: StartUpstream, start_proxy: StartProxy, *bodies: bytes, cassette: str = "c1"
) -> tuple[list[bytes], str]:
    """Record one interaction per body in the store at `db_path`: the bodies relayed, and
    the upstream's URL (stopped on return)."""
    upstream = await start_upstream(sse_upstream())
    url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record", cassette=cassette)
    relayed = []
    async with aiohttp.ClientSession() as client:
        for body in bodies:
            async with client.post(proxy.make_url("/v1/stream"), data=body) as resp:
                relayed.append(await resp.read())
    await proxy.close()  # the recorder's last batch is committed
    await upstream.close()
    return relayed, url


def cli(*args: str, cwd: Path, db: Path | str) -> tuple[int, str, str]:
    result = run_cli(*args, "--db", str(db), cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def table_rows(db: Path) -> list[tuple[object, ...]]:
    """Everything in the store's cassette tables, for before/after comparisons."""
    with closing(sqlite3.connect(db)) as conn:
        return [
            *conn.execute("SELECT * FROM cassettes ORDER BY id"),
            *conn.execute("SELECT * FROM interactions ORDER BY id"),
            *conn.execute("SELECT * FROM events ORDER BY interaction_id, seq"),
        ]


@pytest.mark.stores
async def test_export_import_export_is_byte_identical_and_replays_the_same_bytes(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    bodies = (b'{"q": 1}', b'{"q": 2}', b"\x00bin")
    relayed, upstream = await record(start_upstream, start_proxy, *bodies)
    code, _, err = cli("export", "c1", "-o", "c1.cassette.jsonl", cwd=tmp_path, db=store_url)
    assert code == 0, err
    exported = (tmp_path / "c1.cassette.jsonl").read_bytes()
    assert b'"b64": "' in exported and "café".encode() in exported  # text as text

    other = tmp_path / "other.db"
    code, out, err = cli("import", "c1.cassette.jsonl", cwd=tmp_path, db=other)
    assert code == 0, err
    assert out.strip() == "imported cassette 'c1': 3 interaction(s), 12 events"
    again = run_cli("export", "c1", "-o", "-", "--db", str(other), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.encode() == exported  # standard output: the same bytes

    code, _, err = cli("export", "c1", "-o", "again.cassette.jsonl", cwd=tmp_path, db=other)
    assert code == 0, err
    assert (tmp_path / "again.cassette.jsonl").read_bytes() == exported

    # The imported store replays what the live stream relayed, byte for byte, offline.
    proxy = await start_proxy(upstream, mode="replay", cassette="c1", db=str(other))
    async with aiohttp.ClientSession() as client:
        for body, expected in zip(bodies, relayed, strict=True):
            async with client.post(proxy.make_url("/v1/stream"), data=body) as resp:
                assert resp.headers.get("Rrproxy-Source") == "replayed", await resp.text()
                assert await resp.read() == expected


@pytest.mark.stores
async def test_import_twice_changes_nothing_and_other_content_needs_replace(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    await record(start_upstream, start_proxy, b'{"q": 1}')
    assert cli("export", "c1", cwd=tmp_path, db=store_url)[0] == 0  # default: NAME.cassette.jsonl
    file = tmp_path / "c1.cassette.jsonl"
    target = tmp_path / "target.db"
    assert cli("import", str(file), cwd=tmp_path, db=target)[0] == 0
    before = table_rows(target)

    code, out, _ = cli("import", str(file), cwd=tmp_path, db=target)
    assert code == 0
    assert out.startswith("unchanged (already in the store): cassette 'c1'")
    assert table_rows(target) == before

    edited = file.read_text().replace("[DONE]", "[FINISHED]")
    (tmp_path / "edited.cassette.jsonl").write_text(edited)
    code, _, err = cli("import", "edited.cassette.jsonl", cwd=tmp_path, db=target)
    assert code == 1
    assert "already in the store with other content" in err and "--replace" in err
    assert table_rows(target) == before

    code, out, err = cli("import", "edited.cassette.jsonl", "--replace", cwd=tmp_path, db=target)
    assert code == 0, err
    assert out.startswith("replaced cassette 'c1'")
    assert cli("export", "c1", "-o", "back.jsonl", cwd=tmp_path, db=target)[0] == 0
    assert (tmp_path / "back.jsonl").read_text() == edited

    code, out, err = cli("import", str(file), "--as", "copy", cwd=tmp_path, db=target)
    assert code == 0, err
    assert out.startswith("imported cassette 'copy'")


async def test_a_truncated_file_fails_with_its_line_and_leaves_the_store_as_it_was(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    await record(start_upstream, start_proxy, b'{"q": 1}', b'{"q": 2}')
    assert cli("export", "c1", cwd=tmp_path, db=db_path)[0] == 0
    data = (tmp_path / "c1.cassette.jsonl").read_bytes()
    before = table_rows(db_path)

    # In-process over every line end and a spread of cuts inside lines, replacing the
    # cassette it came from: each import must fail and roll back.
    ends = [i for i, b in enumerate(data) if b == ord("\n")]
    cuts = {0, *ends, *(e + 1 for e in ends), *range(3, len(data), 97)}
    cuts = {c for c in cuts if c < len(data) - 1}  # all but "the final newline alone is gone"
    engine = create_engine(database_url(str(db_path)), writer=True)
    try:
        await migrate.upgrade(engine)
        for cut in cuts:
            path = tmp_path / "cut.cassette.jsonl"
            path.write_bytes(data[:cut])
            with pytest.raises(CassetteFileError) as caught:
                await cassettes.import_file(engine, path, name="c1", replace=True)
            assert caught.value.line is not None, cut
            assert f"line {caught.value.line}: " in str(caught.value)
    finally:
        await engine.dispose()
    assert table_rows(db_path) == before

    # And as a command: the message names the file and the line.
    (tmp_path / "cut.cassette.jsonl").write_bytes(data[: ends[2] + 1])
    code, _, err = cli("import", "cut.cassette.jsonl", "--replace", cwd=tmp_path, db=db_path)
    assert code == 1
    assert "cut.cassette.jsonl, line 3: the file ends after 1 of the 4 events" in err
    assert table_rows(db_path) == before


def test_traversal_names_are_refused(tmp_path: Path, db_path: Path) -> None:
    for args in (
        ("export", "../evil"),
        ("export", "a/b"),
        ("show", ".."),
        ("rm", "x\\y"),
        ("import", "f.jsonl", "--as", "../../etc/x"),
    ):
        code, _, err = cli(*args, cwd=tmp_path, db=db_path)
        assert code == 2, args
        assert "not a valid cassette name" in err, args

    header = cassette_file.header_line("ok", 0).replace(b'"ok"', b'"../../outside"')
    (tmp_path / "evil.cassette.jsonl").write_bytes(header)
    code, _, err = cli("import", "evil.cassette.jsonl", cwd=tmp_path, db=db_path)
    assert code == 1
    assert "line 1: header: 'name' is not usable" in err
    assert not (tmp_path.parent / "outside.cassette.jsonl").exists()


@pytest.mark.stores
async def test_export_refuses_a_planted_key_and_says_where(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    body = json.dumps({"input": f"my key is {KEY}"}).encode()
    await record(start_upstream, start_proxy, b'{"q": "clean"}', body)
    code, out, err = cli("export", "c1", cwd=tmp_path, db=store_url)
    assert code == 1
    assert "refusing to export cassette 'c1'" in err
    assert "line 7: request body: sk-proj-… (OpenAI-style API key)" in err
    assert "line 8: event 1: sk-proj-…" in err  # the upstream echoed it
    assert KEY not in err + out  # the message never shows the key itself
    assert "--allow-secrets" in err
    assert sorted(p.name for p in tmp_path.iterdir() if "jsonl" in p.name) == []  # noqa: ASYNC240

    code, _, err = cli("export", "c1", "-o", "-", cwd=tmp_path, db=store_url)
    assert code == 1 and "refusing" in err

    code, _, err = cli("export", "c1", "--allow-secrets", cwd=tmp_path, db=store_url)
    assert code == 0, err
    assert KEY in (tmp_path / "c1.cassette.jsonl").read_text()


@pytest.mark.stores
async def test_ls_show_and_rm(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    await record(start_upstream, start_proxy, b'{"q": 1}', b'{"q": 2}', cassette="alpha")
    await record(start_upstream, start_proxy, b"{}", cassette="beta")

    code, out, err = cli("ls", cwd=tmp_path, db=store_url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "INTERACTIONS",
        "EVENTS",
        "SIZE",
        "LAST",
        "RECORDED",
        "INCOMPLETE",
    ]
    assert lines[1].split()[:3] == ["alpha", "2", "8"]
    assert lines[2].split()[:3] == ["beta", "1", "4"]
    assert lines[1].split()[-1] == "0"

    code, out, _ = cli("ls", "--json", cwd=tmp_path, db=store_url)
    listed = json.loads(out)["cassettes"]
    assert [(c["name"], c["interactions"], c["events"], c["incomplete"]) for c in listed] == [
        ("alpha", 2, 8, 0),
        ("beta", 1, 4, 0),
    ]
    assert listed[0]["size"] > 0 and listed[0]["last_recorded"].endswith("Z")

    code, out, err = cli("show", "alpha", cwd=tmp_path, db=store_url)
    assert code == 0, err
    assert out.startswith("cassette 'alpha': 2 interaction(s), 8 events, ")
    assert "#1  POST http://127.0.0.1:" in out and "#2  POST" in out
    assert "200, 4 events" in out and "complete; recorded" in out
    # the events, in order, as text a person reads
    first = out.index('data: {"q": 1}')
    assert first < out.index('data: {"text": "café"}') < out.index("data: [DONE]")
    assert "(33 bytes, not UTF-8)" in out

    code, out, _ = cli("show", "alpha", "--json", cwd=tmp_path, db=store_url)
    shown = json.loads(out)["interactions"]
    assert [i["number"] for i in shown] == [1, 2]
    assert shown[0]["complete"] is True and shown[0]["status"] == 200
    assert shown[0]["ttfb_ms"] >= 0 and shown[0]["duration_ms"] >= shown[0]["ttfb_ms"]
    assert shown[0]["body"][0]["data"] == 'event: echo\ndata: {"q": 1}\n\n'
    assert "b64" in shown[0]["body"][2]

    code, _, err = cli("rm", "alpha", "nope", cwd=tmp_path, db=store_url)
    assert code == 1 and "'nope'" in err and "nothing was deleted" in err
    code, out, _ = cli("rm", "alpha", cwd=tmp_path, db=store_url)
    assert code == 0 and out.strip() == "deleted cassette 'alpha'"
    code, out, _ = cli("ls", "--json", cwd=tmp_path, db=store_url)
    assert [c["name"] for c in json.loads(out)["cassettes"]] == ["beta"]
    assert rows(store_url, "SELECT count(*) FROM events") == [(4,)]  # the events went with it
    code, _, err = cli("show", "alpha", cwd=tmp_path, db=store_url)
    assert code == 1 and "no cassette named 'alpha'" in err


@pytest.mark.stores
async def test_last_recorded_reads_the_same_in_ls_json_the_admin_endpoint_and_the_file(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str, tmp_path: Path
) -> None:
    upstream = await start_upstream(sse_upstream())
    proxy = await start_proxy(upstream, mode="record", cassette="c1")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/stream"), data=b"{}") as resp:
            await resp.read()
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:  # flushes
            (admin,) = (await resp.json())["cassettes"]
    await proxy.close()

    code, out, err = cli("ls", "--json", cwd=tmp_path, db=store_url)
    assert code == 0, err
    (listed,) = json.loads(out)["cassettes"]
    code, out, err = cli("export", "c1", "-o", "-", cwd=tmp_path, db=store_url)
    assert code == 0, err
    in_file = json.loads(out.splitlines()[1])["recorded_at"]  # the only interaction's line

    # ISO 8601, UTC, to the microsecond, with Z: the cassette file's form, everywhere
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", in_file), in_file
    assert admin["last_recorded"] == listed["last_recorded"] == in_file


async def test_import_redacts_credentials_and_a_directory_import_refuses_keys_first(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    await record(start_upstream, start_proxy, b'{"q": "clean"}')
    code, _, err = cli(
        "export", "c1", "-o", str(tmp_path / "c1.cassette.jsonl"), cwd=tmp_path, db=db_path
    )
    assert code == 0, err
    # A hand-edited file carrying live credentials in headers and the query:
    text = (tmp_path / "c1.cassette.jsonl").read_text()
    text = text.replace("/v1/stream", f"/v1/stream?key={KEY}", 1).replace(
        '["X-Request-Id", "req_1"]', f'["X-Request-Id", "req_1"], ["Set-Cookie", "s={KEY}"]', 1
    )
    text = text.replace('"headers": [', f'"headers": [["Authorization", "Bearer {KEY}"], ', 1)
    planted = tmp_path / "planted.cassette.jsonl"
    planted.write_text(text)
    other_db = tmp_path / "other.db"
    code, _, err = cli("import", str(planted), "--as", "planted", cwd=tmp_path, db=other_db)
    assert code == 0, err
    assert KEY.encode() not in other_db.read_bytes()
    wal = other_db.with_name(other_db.name + "-wal")
    assert not wal.exists() or KEY.encode() not in wal.read_bytes()

    # Into a cassette directory, a file whose body holds a key is refused before the store
    # changes (the directory would get that file).
    body_key = text.replace('"body": "{\\"q\\": \\"clean\\"}"', f'"body": "my key {KEY}"', 1)
    assert body_key != text
    planted.write_text(body_key)
    before = table_rows(other_db)
    code, _, err = cli(
        "import",
        str(planted),
        "--as",
        "leak",
        "--cassette-dir",
        str(tmp_path / "dir"),
        cwd=tmp_path,
        db=other_db,
    )
    assert code == 1 and "key-like" in err
    assert table_rows(other_db)[: len(before)] == before
    assert not (tmp_path / "dir" / "leak.cassette.jsonl").exists()
