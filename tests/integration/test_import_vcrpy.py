"""`rrproxy import --from vcrpy`: cassettes that vcrpy and pytest-recording write in these
tests, from a live aiohttp upstream through `requests` and `httpx`, imported by the CLI (a
process) and replayed through the proxy byte for byte as vcrpy stored them."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import requests
import vcr
import yaml
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream
from tests.proc import EXIT_TIMEOUT_S, clean_env, run_cli

KEY = "Bearer sk-test-vcrpy-0123456789abcdef"
SSE = [b'event: delta\ndata: {"text": "caf\xc3\xa9"}\n\n', b"data: [DONE]\n\n"]
MODELS = {"models": ["model"] * 50}
GZIPPED = gzip.compress(json.dumps(MODELS).encode())


def upstream_app() -> web.Application:
    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in SSE:
            await response.write(event)
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=GZIPPED, headers=headers)

    async def session(_: web.Request) -> web.Response:
        headers = {"Set-Cookie": "session=s3cr3t-cookie-value; HttpOnly"}
        return web.json_response({"ok": True}, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/session", session)
    return app


def record_with_vcrpy(base: str, cassette: Path, serializer: str) -> None:
    """requests and httpx calls, recorded by vcrpy (blocking: run in a thread). JSON cannot
    hold bytes: there vcrpy stores the gzip body decoded (and drops Content-Encoding)."""
    decode = serializer == "json"
    recorder = vcr.VCR(serializer=serializer, record_mode="once", decode_compressed_response=decode)
    with recorder.use_cassette(str(cassette)):
        r = requests.post(f"{base}/v1/chat", json={"q": "hi"}, headers={"Authorization": KEY})
        assert r.content == b"".join(SSE)
        assert requests.get(f"{base}/v1/models?page=2").json() == MODELS
        with httpx.Client() as client:
            h = client.post(f"{base}/v1/chat", json={"q": "httpx"}, headers={"Authorization": KEY})
            assert h.content == b"".join(SSE)
            assert client.get(f"{base}/v1/models?page=3").json() == MODELS


def vcrpy_bodies(cassette: Path) -> list[tuple[str, str, bytes, bytes]]:
    """(method, uri, request body, response body) as vcrpy stored them, read back safely."""
    text = cassette.read_text()
    doc: Any = json.loads(text) if cassette.suffix == ".json" else yaml.safe_load(text)
    out = []
    for i in doc["interactions"]:
        body = i["response"]["body"]["string"]
        req_body = i["request"]["body"] or b""
        out.append(
            (
                i["request"]["method"],
                i["request"]["uri"],
                req_body.encode() if isinstance(req_body, str) else req_body,
                body.encode() if isinstance(body, str) else body,
            )
        )
    return out


def cli(*args: str, cwd: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--db", str(db), cwd=cwd)


def rows(db: Path) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with closing(sqlite3.connect(db)) as conn:
        return [
            *conn.execute("SELECT * FROM cassettes ORDER BY id"),
            *conn.execute("SELECT * FROM interactions ORDER BY id"),
            *conn.execute("SELECT * FROM events ORDER BY interaction_id, seq"),
        ]


async def replay_all(
    start_proxy: StartProxy,
    upstream: str,
    db: Path,
    cassette: str,
    stored: list[Any],
    **settings: str,
) -> None:
    """Each stored request, sent through the proxy in replay mode (upstream stopped), gets
    exactly the bytes vcrpy stored."""
    proxy = await start_proxy(upstream, mode="replay", cassette=cassette, db=str(db), **settings)
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for method, uri, body, expected in stored:
            path = uri.removeprefix(upstream)
            async with client.request(method, proxy.make_url(path), data=body) as resp:
                assert resp.headers.get("Rrproxy-Source") == "replayed", await resp.text()
                assert await resp.read() == expected
    await proxy.close()


async def test_vcrpy_yaml_and_json_import_and_replay_byte_identical(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    upstream = await start_upstream(upstream_app())
    base = str(upstream.make_url("")).rstrip("/")
    files = {"yaml": tmp_path / "calls.yaml", "json": tmp_path / "calls_json.json"}
    for serializer, file in files.items():
        await asyncio.to_thread(record_with_vcrpy, base, file, serializer)
    await upstream.close()
    assert b"!!binary" in files["yaml"].read_bytes()  # the gzip body, as vcrpy keeps it
    assert b"Authorization" in files["yaml"].read_bytes()

    result = cli("import", "--from", "vcrpy", str(files["yaml"]), cwd=tmp_path, db=db_path)
    assert result.returncode == 0, result.stderr
    assert "imported cassette 'calls' from vcrpy: 4 interaction(s), 4 events, " in result.stdout
    assert "2 value(s) redacted" in result.stdout  # the two Authorization headers
    assert "without event timing" in result.stdout
    result = cli("import", "--from", "vcrpy", str(files["json"]), cwd=tmp_path, db=db_path)
    assert result.returncode == 0, result.stderr
    assert "cassette 'calls_json' from vcrpy" in result.stdout

    with closing(sqlite3.connect(db_path)) as conn:
        headers = " ".join(h for (h,) in conn.execute("SELECT request_headers FROM interactions"))
        timing = set(conn.execute("SELECT ttfb_ms, duration_ms FROM interactions"))
        event_t = set(conn.execute("SELECT t_ms FROM events"))
    assert "sk-test" not in headers and "[REDACTED]" in headers
    assert timing == {(0.0, 0.0)} and event_t == {(0.0,)}  # vcrpy records no timing

    yaml_bodies = vcrpy_bodies(files["yaml"])
    assert GZIPPED in [b for *_, b in yaml_bodies]  # stored compressed: replayed compressed
    await replay_all(start_proxy, base, db_path, "calls", yaml_bodies)
    await replay_all(start_proxy, base, db_path, "calls_json", vcrpy_bodies(files["json"]))


async def test_vcrpy_cassettes_are_marked_untimed_and_replay_at_recorded_pace(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    """vcrpy records no timing: its interactions are stored marked "imported without event
    timing", say so in `show` and `ls`, keep the mark in the cassette file, and replay byte
    for byte through a proxy at recorded pace: at instant pace (untimed_pace's default), and
    paced (streamed event by event) when untimed_pace says so."""
    upstream = await start_upstream(upstream_app())
    base = str(upstream.make_url("")).rstrip("/")
    cassette = tmp_path / "paced.yaml"
    await asyncio.to_thread(record_with_vcrpy, base, cassette, "yaml")
    await upstream.close()

    result = cli("import", "--from", "vcrpy", str(cassette), cwd=tmp_path, db=db_path)
    assert result.returncode == 0, result.stderr
    assert "4 interaction(s) without event timing" in result.stdout
    with closing(sqlite3.connect(db_path)) as conn:
        assert set(conn.execute("SELECT untimed FROM interactions")) == {(1,)}
    shown = cli("show", "paced", "--json", "--no-events", cwd=tmp_path, db=db_path)
    assert [i["untimed"] for i in json.loads(shown.stdout)["interactions"]] == [True] * 4
    text = cli("show", "paced", "--no-events", cwd=tmp_path, db=db_path).stdout
    assert text.count("imported without event timing") == 4
    listed = json.loads(cli("ls", "--json", cwd=tmp_path, db=db_path).stdout)
    assert [(c["name"], c["untimed"]) for c in listed["cassettes"]] == [("paced", 4)]

    exported = cli("export", "paced", "-o", "-", cwd=tmp_path, db=db_path).stdout.splitlines()
    assert json.loads(exported[0])["version"] == 2
    heads = [json.loads(line) for line in exported if '"request"' in line]
    assert [h["untimed"] for h in heads] == [True] * 4

    stored = vcrpy_bodies(cassette)
    await replay_all(start_proxy, base, db_path, "paced", stored, pace="recorded")
    await replay_all(
        start_proxy, base, db_path, "paced", stored, pace="recorded", untimed_pace="recorded"
    )


async def test_the_summary_counts_every_value_redacted_and_none_reaches_the_store(
    start_upstream: StartUpstream, db_path: Path, tmp_path: Path
) -> None:
    """A vcrpy cassette with a key in a header, a key in the query and a cookie the server
    set: the summary counts the three values redacted, and no byte of them is stored."""
    upstream = await start_upstream(upstream_app())
    base = str(upstream.make_url("")).rstrip("/")
    cassette = tmp_path / "keys.yaml"
    secret = "sk-test-query-0123456789abcdef"

    def record() -> None:
        with vcr.VCR(record_mode="once").use_cassette(str(cassette)):
            url = f"{base}/v1/session?api_key={secret}&page=2"
            assert requests.get(url, headers={"Authorization": KEY}).json() == {"ok": True}

    await asyncio.to_thread(record)
    await upstream.close()
    assert secret.encode() in cassette.read_bytes()  # vcrpy kept them all

    result = cli("import", "--from", "vcrpy", str(cassette), cwd=tmp_path, db=db_path)
    assert result.returncode == 0, result.stderr
    assert "1 interaction(s), 1 events, 3 value(s) redacted" in result.stdout
    stored = repr(rows(db_path))
    for value in (secret, KEY.split()[1], "s3cr3t-cookie-value"):
        assert value not in stored
    assert "page=2" in stored  # what is not a credential is kept


PYTEST_PROJECT = """
import os

import httpx
import pytest
import requests

URL = os.environ["UPSTREAM"]


@pytest.mark.vcr
def test_greeting():
    r = requests.post(URL + "/v1/chat", json={"q": "hi"}, headers={"Authorization": "KEY"})
    assert r.status_code == 200


@pytest.mark.vcr
def test_models():
    assert httpx.get(URL + "/v1/models").status_code == 200
"""


async def test_pytest_recording_tree_imports_one_cassette_per_file(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    upstream = await start_upstream(upstream_app())
    base = str(upstream.make_url("")).rstrip("/")
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_chat.py").write_text(textwrap.dedent(PYTEST_PROJECT).replace("KEY", KEY))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:rrproxy"]
    proc = await asyncio.create_subprocess_exec(
        *command,
        "--record-mode=once",
        "test_chat.py",
        cwd=project,
        env=clean_env({"UPSTREAM": base}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT_S)
    assert proc.returncode == 0, out.decode()
    await upstream.close()
    tree = project / "cassettes"
    assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.yaml")) == [
        "test_chat/test_greeting.yaml",
        "test_chat/test_models.yaml",
    ]

    result = cli("import", "--from", "vcrpy", str(tree), cwd=tmp_path, db=db_path)
    assert result.returncode == 0, result.stderr
    assert "cassette 'test_chat.test_greeting' from vcrpy: 1 interaction(s)" in result.stdout
    assert "1 value(s) redacted" in result.stdout
    assert "cassette 'test_chat.test_models' from vcrpy: 1 interaction(s)" in result.stdout
    with closing(sqlite3.connect(db_path)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM cassettes ORDER BY name")]
    assert names == ["test_chat.test_greeting", "test_chat.test_models"]
    for name in ("test_greeting", "test_models"):
        stored = vcrpy_bodies(tree / "test_chat" / f"{name}.yaml")
        await replay_all(start_proxy, base, db_path, f"test_chat.{name}", stored)


EVIL = """\
version: 1
interactions:
- request:
    method: GET
    uri: http://127.0.0.1:9/x
    body: !!python/object/apply:os.system ["touch {marker}"]
    headers: {{}}
  response:
    status: {{code: 200, message: OK}}
    headers: {{}}
    body: {{string: hi}}
"""


def test_python_tags_are_refused_and_nothing_runs(db_path: Path, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.yaml"
    evil.write_text(EVIL.format(marker=marker))
    result = cli("import", "--from", "vcrpy", str(evil), cwd=tmp_path, db=db_path)
    assert result.returncode != 0
    assert str(evil) in result.stderr
    assert "Python tag" in result.stderr and "python/object/apply:os.system" in result.stderr
    assert not marker.exists()
    assert rows(db_path) == []


GOOD = """\
version: 1
interactions:
- request: {method: GET, uri: 'http://127.0.0.1:9/ok', body: null, headers: {}}
  response:
    status: {code: 200, message: OK}
    headers: {Content-Type: [text/plain]}
    body: {string: fine}
"""


def test_a_bad_entry_names_file_and_entry_and_leaves_the_store_unchanged(
    db_path: Path, tmp_path: Path
) -> None:
    tree = tmp_path / "cassettes"
    (tree / "mod").mkdir(parents=True)
    (tree / "mod" / "a_good.yaml").write_text(GOOD)
    first = cli("import", "--from", "vcrpy", str(tree), cwd=tmp_path, db=db_path)
    assert first.returncode == 0, first.stderr
    before = rows(db_path)
    assert before

    bad = GOOD + GOOD.split("interactions:\n")[1].replace("Content-Type", "Bad Header")
    (tree / "mod" / "b_bad.yaml").write_text(bad)
    result = cli("import", "--from", "vcrpy", "--replace", str(tree), cwd=tmp_path, db=db_path)
    assert result.returncode != 0
    assert str(tree / "mod" / "b_bad.yaml") in result.stderr
    assert "entry 2 (GET http://127.0.0.1:9/ok)" in result.stderr
    assert "not an HTTP token" in result.stderr
    assert rows(db_path) == before


def test_a_directory_is_one_transaction(db_path: Path, tmp_path: Path) -> None:
    """The second cassette fails in the store (other content, no --replace) after the first
    was written: nothing of the import stays."""
    first = tmp_path / "first"
    first.mkdir()
    (first / "b.yaml").write_text(GOOD)
    assert cli("import", "--from", "vcrpy", str(first), cwd=tmp_path, db=db_path).returncode == 0
    before = rows(db_path)

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.yaml").write_text(GOOD)
    (tree / "b.yaml").write_text(GOOD.replace("fine", "other"))
    result = cli("import", "--from", "vcrpy", str(tree), cwd=tmp_path, db=db_path)
    assert result.returncode != 0
    assert "'b' is already in the store with other content" in result.stderr
    assert rows(db_path) == before
