"""The pytest plugin with a WebSocket session: recorded into the test's cassette file,
replayed offline, and a client message that differs fails the test with the difference."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp import WSMsgType, web

from proxy.cassettes import file_format as cassette_file
from tests.threaded import ThreadedServer

pytest_plugins = ["pytester"]

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

TEST = """
from websockets.sync.client import connect


def test_live(rrproxy):
    with connect(rrproxy.url.replace("http://", "ws://") + "/live") as ws:
        assert ws.recv() == "hello"
        ws.send('{"type": "say", "text": "TEXT", "event_id": "EVENT"}')
        assert ws.recv() == "echo TEXT"
"""


class EchoUpstream(ThreadedServer):
    """A WebSocket upstream on its own event loop in a thread (pytester's tests are sync)."""

    def __init__(self) -> None:
        self.sessions = 0
        super().__init__()

    async def _live(self, request: web.Request) -> web.StreamResponse:
        import json

        self.sessions += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello")
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str("echo " + json.loads(msg.data)["text"])
        return ws

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/live", self._live)


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    server = EchoUpstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_websocket_session_through_the_plugin(
    pytester: pytest.Pytester, upstream: EchoUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    pytester.makeini(INI)
    pytester.makepyfile(test_ws=TEST.replace("EVENT", "evt_1"))
    args = ("--rrproxy-upstream", f"http://127.0.0.1:{upstream.port}", "-p", "no:cacheprovider")
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert upstream.sessions == 1
    file = pytester.path / "cassettes" / "test_ws" / "test_live.cassette.jsonl"
    _, [rec] = cassette_file.loads(file.read_bytes())
    assert rec.response.status == 101
    assert [(m.who, m.kind.value) for m in rec.messages] == [
        ("server", "text"),
        ("client", "text"),
        ("server", "text"),
        ("client", "close"),
    ]

    upstream.stop()  # offline from here on
    monkeypatch.setenv("CI", "true")  # CI: replay by default
    pytester.makepyfile(test_ws=TEST.replace("EVENT", "evt_2"))  # a fresh event_id: no matter
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)

    pytester.makepyfile(test_ws=TEST.replace("TEXT", "other"))
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(failed=1)
    # the client sees the close (1008, its reason naming the difference); the report adds
    # the miss in full
    result.stdout.fnmatch_lines(
        [
            "*1008*rrproxy replay miss: message 1: message field*",
            "*rrproxy replay miss*",
            '*client message 1 of the WebSocket session*message field "text": "other" != "TEXT"*',
        ]
    )


@pytest.mark.timeout(120)
def test_the_websocket_benchmark_runs_and_verifies_its_sessions() -> None:
    """A smoke run of `python -m bench.websocket`: every round trip and every message of the
    long session is checked by the benchmark itself; no timing is asserted."""
    import subprocess
    import sys
    from pathlib import Path

    argv = [sys.executable, "-m", "bench.websocket", "--round-trips", "20"]
    argv += ["--session-messages", "300", "--repeat", "1"]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line.rsplit(None, 1)[0].strip() for line in done.stdout.splitlines()]
    assert "record: p50 / aiohttp" in names and "replay: p50 / direct" in names
    assert "record: RSS growth (MiB)" in names and "replay: 300 messages, time (s)" in names
