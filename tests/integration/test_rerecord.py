"""`rrproxy rerecord` as a real process against a real upstream: the drift report, the
answers replaced in place (ordinals kept, usage and hash anew), `--dry-run` writing nothing,
secrets filled from the environment, and the failures that change nothing: an upstream that
is down, a key that is not set, and a process killed halfway."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import openai
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import StartProxy, StartUpstream, example_events, sse_event, stored
from tests.proc import EXIT_TIMEOUT_S, clean_env

KEY = "sk-live-from-the-environment"


class Api:
    """The upstream: the real Responses stream (v1), then the same API after a change (v2:
    an event renamed, a usage field added and one gone, more tokens). It records the key it
    was sent, and can hold an answer until the test lets it go."""

    def __init__(self) -> None:
        self.version = 1
        self.keys: list[str | None] = []
        self.hold_request: int | None = None  # the n-th request (1-based) is held...
        self.held = asyncio.Event()  # ... after its first event, which sets this
        self.release = asyncio.Event()

    def payloads(self) -> list[dict[str, Any]]:
        events = example_events()
        if self.version == 1:
            return events
        changed = [
            {**e, "type": "response.queued"} if e["type"] == "response.in_progress" else e
            for e in events
        ]
        last = json.loads(json.dumps(changed[-1]))
        usage = last["response"]["usage"]
        usage["output_tokens_details"]["audio_tokens"] = 0
        del usage["input_tokens_details"]
        usage["input_tokens"], usage["output_tokens"] = 600, 500
        return [*changed[:-1], last]

    async def responses(self, request: web.Request) -> web.StreamResponse:
        self.keys.append(request.headers.get("Authorization"))
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        payloads = self.payloads()
        await response.write(sse_event(payloads[0]))
        if len(self.keys) == self.hold_request:
            self.held.set()
            await self.release.wait()
        for payload in payloads[1:]:
            await response.write(sse_event(payload))
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/responses", self.responses)
        return app


async def record(start_upstream: StartUpstream, start_proxy: StartProxy, api: Api) -> TestServer:
    """Three interactions in cassette `suite`: the same question twice, then another."""
    upstream = await start_upstream(api.app())
    proxy = await start_proxy(upstream, mode="record", cassette="suite")
    async with openai.AsyncOpenAI(
        base_url=str(proxy.make_url("/v1")), api_key="sk-recording", max_retries=0
    ) as client:
        for question in ("Say hello", "Say hello", "Say hi"):
            stream = await client.responses.create(model="gpt-4o", input=question, stream=True)
            [e async for e in stream]
    await proxy.close()
    return upstream


async def rerecord(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    proc = await start_rerecord(*args, cwd=cwd, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), EXIT_TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def start_rerecord(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    environ = clean_env({"OPENAI_API_KEY": KEY} if env is None else env)
    if env is not None and "OPENAI_API_KEY" not in env:
        environ.pop("OPENAI_API_KEY", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "rerecord",
        *args,
        "--db",
        str(cwd / "rrproxy.db"),
        cwd=cwd,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def snapshot(db: Path) -> tuple[Any, ...]:
    with closing(sqlite3.connect(db)) as conn:
        return (
            stored(db),
            conn.execute(
                "SELECT id, started_at, body_sha256 FROM interactions ORDER BY id"
            ).fetchall(),
            conn.execute("SELECT * FROM usage ORDER BY interaction_id").fetchall(),
        )


async def test_drift_report_dry_run_then_one_interaction_replaced_in_place(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, db_path: Path
) -> None:
    api = Api()
    await record(start_upstream, start_proxy, api)
    before = snapshot(db_path)

    same = await rerecord("suite", "--dry-run", cwd=tmp_path)
    assert same[0] == 0, same[2]
    assert same[1].count("same shape") == 3
    assert "dry run: nothing written; 0 of 3 answer(s) changed shape" in same[1]
    assert api.keys[3:] == [f"Bearer {KEY}"] * 3  # the redacted key, from the environment

    api.version = 2
    status, out, err = await rerecord("suite", "--dry-run", cwd=tmp_path)
    assert status == 3, err
    assert "#1 POST" in out and "shape changed" in out
    assert "event names: response.created, response.in_progress" in out
    assert "-> response.created, response.queued" in out
    assert "key paths added: response.usage.output_tokens_details.audio_tokens" in out
    assert "key paths removed: response.usage.input_tokens_details" in out
    assert "events: 10 -> 10" in out and "first event:" in out
    assert snapshot(db_path) == before  # a dry run writes nothing

    status, out, err = await rerecord("suite", "--interaction", "2", cwd=tmp_path)
    assert status == 0, err
    assert "rerecorded 1 interaction(s) of cassette 'suite'; 1 changed shape" in out
    after = snapshot(db_path)
    assert [row[0] for row in after[1]] == [row[0] for row in before[1]]  # ids: ordinals kept
    assert after[0][0] == before[0][0] and after[0][2] == before[0][2]  # #1, #3 as they were
    assert b"response.queued" in after[0][1][3] and b"response.queued" not in before[0][1][3]
    assert after[1][1][2] != before[1][1][2]  # its body's hash is the new one's
    assert [u[2:] for u in after[2]] == [(543, 478, 234), (600, 500, 0), (543, 478, 234)]
    assert after[1][1][1] > before[1][1][1]  # recorded now


async def test_an_upstream_that_is_down_or_a_missing_key_changes_nothing(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, db_path: Path
) -> None:
    api = Api()
    upstream = await record(start_upstream, start_proxy, api)
    before = snapshot(db_path)

    status, _, err = await rerecord("suite", env={}, cwd=tmp_path)  # no OPENAI_API_KEY
    assert status == 1
    assert "its Authorization header was redacted, and ${OPENAI_API_KEY}" in err
    assert "nothing was sent" in err
    assert len(api.keys) == 3  # nothing reached the upstream

    status, _, err = await rerecord("suite", "--match", "*/v1/nothing", cwd=tmp_path)
    assert status == 1 and "no interaction of cassette 'suite' matches" in err

    status, _, err = await rerecord("suite", "--interaction", "9", cwd=tmp_path)
    assert status == 1 and "has no finished interaction #9 (it has 3" in err

    # an explicit header fills the redacted one
    status, _, err = await rerecord(
        "suite", "--interaction", "3", "-H", "Authorization: Bearer sk-given", cwd=tmp_path, env={}
    )
    assert status == 0, err
    assert api.keys[-1] == "Bearer sk-given"
    before = snapshot(db_path)

    await upstream.close()  # its port now refuses connections
    status, _, err = await rerecord("suite", cwd=tmp_path)
    assert status == 1
    assert "cannot connect to upstream" in err and "nothing was changed" in err
    assert snapshot(db_path) == before


async def test_a_rerecord_killed_halfway_leaves_the_old_recordings(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, db_path: Path
) -> None:
    api = Api()
    await record(start_upstream, start_proxy, api)
    before = snapshot(db_path)
    api.version = 2
    api.hold_request = 5  # the rerecord's second request (3 were recorded): held mid-answer
    proc = await start_rerecord("suite", cwd=tmp_path)
    try:
        await asyncio.wait_for(api.held.wait(), EXIT_TIMEOUT_S)  # the first answer is in hand
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT_S) == -signal.SIGKILL
    finally:
        api.release.set()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(api.keys) == 5  # two of three sent
    assert snapshot(db_path) == before
    status, out, err = await rerecord("suite", cwd=tmp_path)  # and it can be run again
    assert status == 0, err
    assert "rerecorded 3 interaction(s)" in out


async def test_with_a_cassette_directory_the_file_is_rewritten(
    start_upstream: StartUpstream, start_proxy: StartProxy, tmp_path: Path, db_path: Path
) -> None:
    api = Api()
    upstream = await start_upstream(api.app())
    directory = tmp_path / "cassettes"
    directory.mkdir()
    proxy = await start_proxy(
        upstream, mode="record", cassette="suite", cassette_dir=str(directory)
    )
    async with openai.AsyncOpenAI(
        base_url=str(proxy.make_url("/v1")), api_key="sk-recording", max_retries=0
    ) as client:
        stream = await client.responses.create(model="gpt-4o", input="Say hello", stream=True)
        [e async for e in stream]
    await proxy.close()
    file = directory / "suite.cassette.jsonl"
    assert b"response.in_progress" in file.read_bytes()

    api.version = 2
    status, _, err = await rerecord("suite", "--cassette-dir", str(directory), cwd=tmp_path)
    assert status == 0, err
    text = file.read_text()
    assert "response.queued" in text and "response.in_progress" not in text
    assert "[REDACTED]" in text and KEY not in text  # the key sent is never written
