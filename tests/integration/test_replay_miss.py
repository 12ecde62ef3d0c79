"""A replay miss against a big cassette: explained off the event loop (the proxy answers
other requests meanwhile), still naming the closest recording and what differs."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from proxy.cassettes import file_format
from proxy.core.records import Event, Outcome, Request, ResponseHead
from proxy.serve.state import SERVICES
from tests.conftest import StartProxy, StartUpstream
from tests.proc import clean_env

RECORDINGS = 2_000
BODY_BYTES = 50_000
URL = "http://127.0.0.1:9/v1/chat/completions"  # never contacted: replay mode


def chat(n: int) -> dict[str, object]:
    """A chat of ~1 KB messages, about BODY_BYTES in all, unique by `n`."""
    messages = [
        {"role": "user" if i % 2 else "assistant", "content": f"{n}:{i} " + "lorem ipsum " * 80}
        for i in range(BODY_BYTES // 1000)
    ]
    return {"model": "m", "messages": messages}


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one cassette, `big`: RECORDINGS recordings of BODY_BYTES requests,
    imported from a cassette file."""
    tmp = tmp_path_factory.mktemp("big")
    head = ResponseHead(200, (("Content-Type", "application/json"),))
    recordings = (
        file_format.Recorded(
            request=Request("POST", URL, (), json.dumps(chat(n)).encode()),
            response=head,
            outcome=Outcome.COMPLETE,
            error=None,
            recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
            ttfb_ms=1.0,
            duration_ms=1.0,
            events=(Event(1.0, json.dumps({"n": n}).encode()),),
        )
        for n in range(RECORDINGS)
    )
    path = tmp / "big.cassette.jsonl"
    path.write_bytes(file_format.dump("big", recordings))
    # `run_cli`'s timeout is for commands that end quickly; this one imports 100 MB
    command = [sys.executable, "-m", "proxy", "import", str(path), "--db", str(tmp / "big.db")]
    result = subprocess.run(
        command, cwd=tmp, env=clean_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    return tmp / "big.db"


@pytest.fixture
def explaining() -> asyncio.Event:
    """Set when the proxy starts looking for the recording closest to a miss (its log)."""
    started = asyncio.Event()

    class Hook(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "the closest of" in record.getMessage():
                started.set()

    logger = logging.getLogger("proxy.serve.index")
    hook, level = Hook(), logger.level
    logger.addHandler(hook)
    logger.setLevel(logging.DEBUG)
    yield started
    logger.removeHandler(hook)
    logger.setLevel(level)


async def test_a_miss_against_a_big_cassette_lets_the_proxy_answer_meanwhile(
    big_store: Path, db_path: Path, start_proxy: StartProxy, explaining: asyncio.Event
) -> None:
    shutil.copy(big_store, db_path)
    proxy = await start_proxy(URL.removesuffix("/v1/chat/completions"), mode="replay")
    url = proxy.make_url("/v1/chat/completions")
    headers = {"Rrproxy-Cassette": "big"}
    health = proxy.make_url("/_rrproxy/health")
    async with aiohttp.ClientSession() as client, aiohttp.ClientSession() as prober:
        async with client.post(url, json=chat(7), headers=headers) as hit:  # loads the cassette
            assert hit.headers["Rrproxy-Source"] == "replayed"
            assert json.loads(await hit.read()) == {"n": 7}
        async with prober.get(health):
            pass  # its connection stays open: a probe is one round trip
        wanted = chat(1234)
        wanted["messages"][3]["content"] = "changed"  # type: ignore[index]
        miss = asyncio.create_task(client.post(url, json=wanted, headers=headers))
        await explaining.wait()
        # The proxy and this test share one event loop: were the miss explained on it,
        # nothing here would run until the miss had been answered.
        async with prober.get(health) as probe:
            assert probe.status == 200
        assert not miss.done()
        async with await miss as response:
            assert response.status == 404
            assert response.headers["Rrproxy-Miss"] == "1"
            message = (await response.json())["error"]["message"]
    assert "cassette 'big'" in message
    closest = f"The closest recorded request (POST {URL}) differs: "
    assert closest in message
    # one difference: the closest of all 2,000 was found
    why = message.split(closest)[1]
    assert why.startswith('body field "messages.3.content": "changed" != "1234:3 lorem ipsum')
    assert "; " not in why


async def test_the_index_keeps_no_request_body_once_it_is_stored(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    """Auto mode records unique big requests: the store has their bodies, the index not
    (nor after a miss has read them back to explain itself)."""
    app = web.Application()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"n": len((await request.json())["messages"])})

    app.router.add_post("/v1/chat/completions", answer)
    proxy = await start_proxy(await start_upstream(app), cassette="c")
    url = proxy.make_url("/v1/chat/completions")
    async with aiohttp.ClientSession() as client:
        for n in range(20):
            async with client.post(url, json=chat(n)) as response:
                assert response.headers["Rrproxy-Source"] == "recorded"
        async with client.get(proxy.make_url("/_rrproxy/cassettes")):
            pass  # every recording is in the store
        index = proxy.app[SERVICES].index
        assert [e.body for e in index.entries("c")] == [None] * 20
        async with client.post(url, json=chat(99), headers={"Rrproxy-Mode": "replay"}) as miss:
            assert miss.status == 404
    entries = index.entries("c")
    assert [e.body for e in entries] == [None] * 20
    assert all(e.sketch for e in entries)
