"""`rrproxy export --to har` and `rrproxy import --from har` as processes: a cassette recorded
from a live upstream through the proxy goes to HAR and back to the same cassette file byte
for byte; a browser-style HAR (tests/data/har/, see its README) imports, reports what it
cannot use and replays its bodies; a bad entry leaves the store as it was."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream
from tests.proc import run_cli

DATA = Path(__file__).resolve().parent.parent / "data" / "har"
EVENTS = [
    b'event: delta\ndata: {"text": "caf\xc3\xa9"}\n\n',
    b"event: delta\ndata: \xff\xfe not UTF-8\n\n",
    b"data: [DONE]\n\n",
]
MODELS = json.dumps({"data": [{"id": "m1"}, {"id": "m2"}]}).encode()


def upstream_app() -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in EVENTS:
            await response.write(event)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=gzip.compress(MODELS), headers=headers)

    app = web.Application()
    app.router.add_post("/v1/stream", stream)
    app.router.add_get("/v1/models", models)
    return app


async def record(start_upstream: StartUpstream, start_proxy: StartProxy) -> str:
    """Record three interactions as cassette c1 (SSE with text and bytes, a binary request
    body, a gzip body); returns the upstream's URL (stopped on return)."""
    upstream = await start_upstream(upstream_app())
    url = str(upstream.make_url("")).rstrip("/")
    proxy = await start_proxy(upstream, mode="record", cassette="c1")
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for body in (b'{"q": 1}', b"\x00\xffbin"):
            async with client.post(proxy.make_url("/v1/stream"), data=body) as resp:
                assert await resp.read() == b"".join(EVENTS)
        async with client.get(proxy.make_url("/v1/models?page=1")) as resp:
            assert gzip.decompress(await resp.read()) == MODELS
    await proxy.close()
    await upstream.close()
    return url


def cli(*args: str, cwd: Path, db: Path) -> tuple[int, str, str]:
    result = run_cli(*args, "--db", str(db), cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def rows(db: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return [
            *conn.execute("SELECT * FROM cassettes ORDER BY id"),
            *conn.execute("SELECT * FROM interactions ORDER BY id"),
            *conn.execute("SELECT * FROM events ORDER BY interaction_id, seq"),
        ]


def check_har_1_2(doc: dict[str, Any]) -> None:
    """The fields HAR 1.2 requires (what Chrome's network panel reads)."""
    log = doc["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "rrproxy"
    for entry in log["entries"]:
        assert isinstance(entry["startedDateTime"], str) and entry["time"] >= 0
        assert entry["cache"] == {}
        timings = entry["timings"]
        assert {"send", "wait", "receive"} <= set(timings)
        assert entry["time"] == timings["send"] + timings["wait"] + timings["receive"]
        for part in ("request", "response"):
            message = entry[part]
            assert message["httpVersion"] and message["cookies"] == []
            assert all(set(h) == {"name", "value"} for h in message["headers"])
            assert message["headersSize"] == -1 and message["bodySize"] >= 0
        assert isinstance(entry["request"]["queryString"], list)
        content = entry["response"]["content"]
        assert {"size", "mimeType", "text"} <= set(content)


async def test_har_round_trip_gives_back_the_same_cassette_file(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    await record(start_upstream, start_proxy)
    assert cli("export", "c1", "-o", "c1.cassette.jsonl", cwd=tmp_path, db=db_path)[0] == 0
    code, _, err = cli("export", "--to", "har", "c1", cwd=tmp_path, db=db_path)
    assert code == 0, err
    doc = json.loads((tmp_path / "c1.har").read_text())
    check_har_1_2(doc)
    sse, binary, models = doc["log"]["entries"]
    assert sse["response"]["content"]["mimeType"] == "text/event-stream"
    assert base64.b64decode(sse["response"]["content"]["text"]) == b"".join(EVENTS)
    times = [e["t"] for e in sse["_rrproxy_events"]]
    assert times == sorted(times) and times[-1] > times[0]  # each event's timing kept
    assert sse["_rrproxy"]["outcome"] == "complete"
    assert binary["_rrproxy"]["request_body_b64"] == base64.b64encode(b"\x00\xffbin").decode()
    assert models["response"]["content"]["text"] == MODELS.decode()  # decoded, as browsers save
    assert models["request"]["queryString"] == [{"name": "page", "value": "1"}]

    other = tmp_path / "other.db"
    code, out, err = cli("import", "--from", "har", "c1.har", cwd=tmp_path, db=other)
    assert code == 0, err
    assert "imported cassette 'c1' from har: 3 interaction(s)" in out
    assert "without event timing" not in out
    code, _, err = cli("export", "c1", "-o", "again.cassette.jsonl", cwd=tmp_path, db=other)
    assert code == 0, err
    original = (tmp_path / "c1.cassette.jsonl").read_bytes()
    assert (tmp_path / "again.cassette.jsonl").read_bytes() == original

    code, out, _ = cli("import", "--from", "har", "c1.har", cwd=tmp_path, db=other)
    assert code == 0 and out.startswith("unchanged (already in the store): cassette 'c1'")


async def test_a_browser_har_imports_skips_what_it_cannot_use_and_replays(
    start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    har = DATA / "browser.har"
    code, out, err = cli("import", "--from", "har", str(har), cwd=tmp_path, db=db_path)
    assert code == 0, err
    assert "skipped entry 4 (GET https://api.example.test/v1/files/f1)" in err
    assert "body was not saved" in err
    assert "skipped entry 5 (GET https://api.example.test/v1/blocked)" in err
    assert "status 0" in err
    assert "imported cassette 'browser' from har: 3 interaction(s), 3 events" in out
    assert "1 value(s) redacted" in out  # the Authorization header
    assert "2 entries skipped" in out

    entries = json.loads(har.read_text())["log"]["entries"][:3]
    proxy = await start_proxy("https://api.example.test", mode="replay", cassette="browser")
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for entry in entries:
            request, content = entry["request"], entry["response"]["content"]
            body = request.get("postData", {}).get("text", "").encode()
            expected = content["text"].encode()
            if content.get("encoding") == "base64":
                expected = base64.b64decode(content["text"])
            url = proxy.make_url(request["url"].removeprefix("https://api.example.test"))
            async with client.request(request["method"], url, data=body) as resp:
                assert resp.headers.get("Rrproxy-Source") == "replayed", await resp.text()
                assert "Content-Encoding" not in resp.headers  # the HAR holds it decoded
                assert await resp.read() == expected


async def test_a_bad_har_entry_names_file_and_entry_and_changes_nothing(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    await record(start_upstream, start_proxy)
    assert cli("export", "--to", "har", "c1", cwd=tmp_path, db=db_path)[0] == 0
    doc = json.loads((tmp_path / "c1.har").read_text())
    doc["log"]["entries"][2]["response"]["headers"].append({"name": "Bad Header", "value": "x"})
    (tmp_path / "bad.har").write_text(json.dumps(doc))
    before = rows(db_path)
    code, _, err = cli(
        "import", "--from", "har", "--as", "c1", "--replace", "bad.har", cwd=tmp_path, db=db_path
    )
    assert code != 0
    assert "bad.har" in err and "entry 3 (GET " in err and "not an HTTP token" in err
    assert rows(db_path) == before


async def test_a_har_saved_by_chromium_imports_and_replays_its_stream(
    start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    """A HAR that Playwright had Chromium save (tests/data/har/README.md says how): the SSE
    stream a page fetched, and the JSON after it, replay as Chromium saved them; the page's
    Authorization header never reaches the store."""
    har = DATA / "playwright-chromium.har"
    code, out, err = cli("import", "--from", "har", str(har), cwd=tmp_path, db=db_path)
    assert code == 0, err
    assert "imported cassette 'playwright-chromium' from har: 3 interaction(s)" in out
    assert "1 value(s) redacted" in out
    with closing(sqlite3.connect(db_path)) as conn:
        [(headers,)] = conn.execute(
            "SELECT request_headers FROM interactions WHERE method = 'POST'"
        )
    assert "sk-test-browser-key" not in headers and "[REDACTED]" in headers

    entries = json.loads(har.read_text())["log"]["entries"]
    stream = entries[1]["response"]["content"]["text"]
    assert stream.count("event: response.output_text.delta") == 4  # what Chromium saved
    proxy = await start_proxy(
        "https://api.example.test", mode="replay", cassette="playwright-chromium"
    )
    async with aiohttp.ClientSession() as client:
        for entry in entries:
            request = entry["request"]
            body = request.get("postData", {}).get("text", "").encode()
            url = proxy.make_url(request["url"].removeprefix("https://api.example.test"))
            async with client.request(request["method"], url, data=body) as resp:
                assert resp.headers.get("Rrproxy-Source") == "replayed", await resp.text()
                assert await resp.read() == entry["response"]["content"]["text"].encode()
