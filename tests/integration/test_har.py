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
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from proxy.cassettes import file_format as cassette_file
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


def expected_body(entry: dict[str, Any], charset: str = "utf-8") -> bytes:
    """The bytes a HAR entry's tool stored: base64, or text in the charset it decoded with."""
    content = entry["response"]["content"]
    if content.get("encoding") == "base64":
        return base64.b64decode(content["text"])
    return bytes(content["text"].encode(charset))


async def replay_entries(
    start_proxy: StartProxy, cassette: str, entries: list[dict[str, Any]], charsets: list[str]
) -> list[bytes]:
    """Each entry's request through the proxy in replay mode: the response is the bytes the
    tool stored (`charsets`: what it decoded each text body with). Returns the bodies."""
    proxy = await start_proxy("https://api.example.test", mode="replay", cassette=cassette)
    bodies = []
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        for entry, charset in zip(entries, charsets, strict=True):
            request = entry["request"]
            body = request.get("postData", {}).get("text", "").encode()
            url = proxy.make_url(request["url"].removeprefix("https://api.example.test"))
            async with client.request(request["method"], url, data=body) as resp:
                assert resp.headers.get("Rrproxy-Source") == "replayed", await resp.text()
                assert resp.status == entry["response"]["status"]
                assert "Content-Encoding" not in resp.headers  # the HAR holds it decoded
                bodies.append(await resp.read())
                assert bodies[-1] == expected_body(entry, charset)
    await proxy.close()
    return bodies


async def test_a_har_saved_by_mitmproxy_imports_and_replays_what_it_stored(
    start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    """mitmproxy's own HAR export (tests/data/har/README.md says how it was made): an SSE
    stream, a gzip JSON body, a binary download. mitmproxy decodes a body without a charset
    as Latin-1 (JSON as UTF-8), so the SSE text it saved holds "Ã¶" for the "ö" sent: the
    import gives back the bytes, and the replayed stream is the UTF-8 the upstream sent."""
    har = DATA / "mitmproxy.har"
    code, out, err = cli("import", "--from", "har", str(har), cwd=tmp_path, db=db_path)
    assert code == 0, err
    assert "imported cassette 'mitmproxy' from har: 3 interaction(s), 3 events" in out
    assert "2 value(s) redacted" in out  # the two Authorization headers
    with closing(sqlite3.connect(db_path)) as conn:
        headers = " ".join(h for (h,) in conn.execute("SELECT request_headers FROM interactions"))
    assert "sk-test-mitmproxy" not in headers and "[REDACTED]" in headers

    doc = json.loads(har.read_text())
    assert doc["log"]["creator"]["name"] == "mitmproxy"
    entries = doc["log"]["entries"]
    assert "WÃ¶rld" in entries[0]["response"]["content"]["text"]  # as mitmproxy saved it
    stream, models, blob = await replay_entries(
        start_proxy, "mitmproxy", entries, ["latin-1", "utf-8", "latin-1"]
    )
    assert stream.decode("utf-8").count("event: response.output_text.delta") == 4
    assert " Wörld" in stream.decode("utf-8")
    assert json.loads(models)["data"][0]["name"] == "modèle"
    assert blob == bytes(range(256)) * 4  # what make_mitmproxy_har.py served


async def test_a_har_saved_by_firefox_imports_and_replays_what_it_stored(
    start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    """A HAR that Debian's Firefox ESR wrote itself, headless, from its network monitor
    (tests/data/har/README.md): a page, the SSE stream it fetched, the JSON after it, an
    image (saved base64) and the favicon's 404, each replayed as Firefox saved it."""
    har = DATA / "firefox.har"
    code, out, err = cli("import", "--from", "har", str(har), cwd=tmp_path, db=db_path)
    assert code == 0, err
    assert "imported cassette 'firefox' from har: 5 interaction(s), 5 events" in out
    assert "1 value(s) redacted" in out
    entries = json.loads(har.read_text())["log"]["entries"]
    assert [e["response"]["content"].get("encoding") for e in entries].count("base64") == 1
    bodies = await replay_entries(start_proxy, "firefox", entries, ["utf-8"] * 5)
    stream = next(
        b for b, e in zip(bodies, entries, strict=True) if e["request"]["method"] == "POST"
    )
    assert stream.decode("utf-8").count("event: response.output_text.delta") == 4


async def test_imported_without_event_timing_replays_at_instant_pace_unless_told(
    start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    """Firefox's HAR with the stream's wait made ten minutes: at recorded pace the stream
    still comes at once (its events' times were never recorded), the admin API counts it
    untimed; `Rrproxy-Untimed-Pace` (here a factor of 100) makes it wait its recorded
    time to first byte, scaled."""
    doc = json.loads((DATA / "firefox.har").read_text())
    entries = doc["log"]["entries"]
    [sse] = [e for e in entries if e["request"]["method"] == "POST"]
    sse["timings"]["wait"] = 600_000
    sse["time"] = sum(v for v in sse["timings"].values() if v > 0)
    (tmp_path / "slow.har").write_text(json.dumps(doc))
    code, _, err = cli("import", "--from", "har", "slow.har", cwd=tmp_path, db=db_path)
    assert code == 0, err
    expected = sse["response"]["content"]["text"].encode()

    proxy = await start_proxy(
        "https://api.example.test", mode="replay", cassette="slow", pace="recorded"
    )
    url = proxy.make_url("/v1/responses")
    body = sse["request"]["postData"]["text"].encode()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as client:
        async with client.post(url, data=body) as resp:  # ten minutes if it were paced
            assert resp.headers["Rrproxy-Source"] == "replayed"
            assert await resp.read() == expected
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:
            listed = await resp.json()
        assert [(c["name"], c["untimed"]) for c in listed["cassettes"]] == [("slow", 5)]

        async def fetch(pace: str) -> bytes:
            headers = {"Rrproxy-Untimed-Pace": pace}
            async with client.post(url, data=body, headers=headers) as resp:
                return await resp.read()

        paced = asyncio.create_task(fetch("100"))  # ten minutes at 100x: six seconds
        done, _ = await asyncio.wait({paced}, timeout=1)
        assert not done  # waiting for its recorded (scaled) time to first byte
        assert await paced == expected


async def test_the_untimed_mark_survives_a_har_round_trip(db_path: Path, tmp_path: Path) -> None:
    """Firefox's HAR imported, exported by rrproxy as HAR, imported into another store: the
    same cassette file, byte for byte, every interaction still marked untimed. (The page's
    own HTML holds the made-up key it sends: bodies are not redacted, so the exports need
    --allow-secrets.)"""
    har = DATA / "firefox.har"
    assert cli("import", "--from", "har", str(har), cwd=tmp_path, db=db_path)[0] == 0
    code, _, err = cli(
        "export",
        "--allow-secrets",
        "firefox",
        "-o",
        "first.cassette.jsonl",
        cwd=tmp_path,
        db=db_path,
    )
    assert code == 0, err
    code, _, err = cli(
        "export",
        "--to",
        "har",
        "--allow-secrets",
        "firefox",
        "-o",
        "ours.har",
        cwd=tmp_path,
        db=db_path,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "ours.har").read_text())
    check_har_1_2(doc)
    assert [e["_rrproxy"]["untimed"] for e in doc["log"]["entries"]] == [True] * 5

    other = tmp_path / "other.db"
    code, out, err = cli(
        "import", "--from", "har", "--as", "firefox", "ours.har", cwd=tmp_path, db=other
    )
    assert code == 0, err
    assert "imported cassette 'firefox' from har: 5 interaction(s)" in out
    assert "without event timing" in out  # the mark, not the source, says so
    code, _, err = cli(
        "export", "--allow-secrets", "firefox", "-o", "again.cassette.jsonl", cwd=tmp_path, db=other
    )
    assert code == 0, err
    first = (tmp_path / "first.cassette.jsonl").read_bytes()
    assert (tmp_path / "again.cassette.jsonl").read_bytes() == first
    assert first.count(b'"untimed": true') == 5


async def test_a_websocket_session_goes_to_har_as_chrome_writes_it_and_comes_back(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path, tmp_path: Path
) -> None:
    """A session recorded through the proxy: its HAR entry carries the messages in Chrome's
    `_webSocketMessages`; rrproxy's HAR imports back to the same cassette file, and the
    same HAR without rrproxy's own fields (as Chrome would have saved it) gives back every
    message, in order, to the microsecond."""
    from tests.integration.test_websocket import converse
    from tests.integration.test_websocket_cassettes import record_conversation

    recorded_replies, upstream_url, seen = await record_conversation(start_upstream, start_proxy)
    assert cli("export", "voice", "-o", "voice.cassette.jsonl", cwd=tmp_path, db=db_path)[0] == 0
    code, _, err = cli("export", "--to", "har", "voice", cwd=tmp_path, db=db_path)
    assert code == 0, err
    doc = json.loads((tmp_path / "voice.har").read_text())
    check_har_1_2(doc)
    [entry] = doc["log"]["entries"]
    assert entry["response"]["status"] == 101 and entry["_resourceType"] == "websocket"
    assert entry["request"]["url"].startswith("ws://127.0.0.1:")  # as a browser names it
    messages = entry["_webSocketMessages"]
    assert len(messages) == 21  # the 22 less the close, which Chrome's list has no place for
    start = datetime.fromisoformat(entry["_rrproxy"]["recorded_at"]).timestamp()
    first = messages[0]
    assert (first["type"], first["opcode"]) == ("receive", 1)
    assert json.loads(first["data"])["type"] == "session.created"
    assert abs(first["time"] - (start + first["_t"] / 1000)) < 1e-5  # epoch seconds
    assert messages[1]["type"] == "send"
    sent, answer = messages[-2:]
    assert (sent["type"], sent["opcode"]) == ("send", 2)
    assert base64.b64decode(sent["data"]) == b"\x00\x01audio\xff"
    assert (answer["type"], base64.b64decode(answer["data"])) == ("receive", b"\xffoidua\x01\x00")
    [close] = entry["_rrproxy"]["closes"]
    assert (close["n"], close["from"], close["code"]) == (21, "client", 1000)

    other = tmp_path / "other.db"
    code, out, err = cli("import", "--from", "har", "voice.har", cwd=tmp_path, db=other)
    assert code == 0, err
    assert "imported cassette 'voice' from har: 1 interaction(s)" in out and "skipped" not in err
    code, _, err = cli("export", "voice", "-o", "again.cassette.jsonl", cwd=tmp_path, db=other)
    assert code == 0, err
    original = (tmp_path / "voice.cassette.jsonl").read_bytes()
    assert (tmp_path / "again.cassette.jsonl").read_bytes() == original

    for m in messages:  # what Chrome writes: no rrproxy field
        del m["_t"]
    for field in ("_rrproxy", "_rrproxy_events"):
        del entry[field]
    (tmp_path / "chrome.har").write_text(json.dumps(doc))
    third = tmp_path / "third.db"
    code, out, err = cli("import", "--from", "har", "chrome.har", cwd=tmp_path, db=third)
    assert code == 0, err
    code, out, err = cli("show", "chrome", "--json", cwd=tmp_path, db=third)
    assert code == 0, err
    [session] = json.loads(out)["interactions"]
    _, [recorded] = cassette_file.loads(original)
    got = session["messages"]
    assert len(got) == 21
    data = [m for m in recorded.messages if m.kind.value != "close"]
    for mine, theirs in zip(got, data, strict=True):
        assert (mine["from"], mine["kind"]) == (theirs.who, theirs.kind.value)
        payload = mine["text"].encode() if "text" in mine else base64.b64decode(mine["b64"])
        assert payload == theirs.data
        # startedDateTime keeps milliseconds: the offset is off by under 1 ms, never more
        assert abs(mine["t"] - theirs.t_ms) < 1.0
    proxy = await start_proxy(upstream_url, mode="replay", cassette="chrome", db=str(third))
    url = str(proxy.make_url("/v1/realtime?model=gpt-realtime"))
    assert await converse(url, "two") == recorded_replies  # offline: the upstream is stopped
    assert len(seen.headers) == 1
