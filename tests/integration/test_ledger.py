"""The ledger and the run report, with the official SDKs as clients: usage stored per
recording, replays verified by hash, tokens and money counted per run, recordings never
used listed, stale recordings warned about or refused, and a store altered behind rrproxy's
back caught as an unfaithful replay."""

from __future__ import annotations

import json
import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web

from tests.conftest import ProxyServer, StartProxy, StartUpstream, example_events, sse_event
from tests.llm_streams import ANTHROPIC_MODEL, CHAT_JSON, CHAT_MODEL, anthropic_sse, chat_sse

PRICES = {
    "gpt-4o": {"input": 2.5, "output": 10.0, "cached_input": 1.25},
    "gpt-4o-mini": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
}  # no price for Claude: said once


def llm_upstream(calls: list[str]) -> web.Application:
    """OpenAI Responses (the real stream), Chat Completions (streamed with usage, or JSON),
    Anthropic Messages (streamed, from the prompt cache), and a model list (no usage)."""

    async def stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    async def responses(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        await request.read()
        return await stream(request, [sse_event(p) for p in example_events()])

    async def chat(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        body = await request.json()
        if body.get("stream"):
            assert body["stream_options"] == {"include_usage": True}
            return await stream(request, chat_sse())
        return web.json_response(CHAT_JSON)

    async def messages(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        await request.read()
        return await stream(request, anthropic_sse())

    async def models(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    return app


async def use_the_apis(proxy: ProxyServer, *, models: bool = True) -> list[str]:
    """What an app does through the proxy with the official SDKs: the texts it got."""
    base = str(proxy.make_url("/v1"))
    texts: list[str] = []
    async with openai.AsyncOpenAI(base_url=base, api_key="sk-test", max_retries=0) as client:
        events = await client.responses.create(model="gpt-4o", input="Say hello", stream=True)
        texts.append("".join([e.delta async for e in events if e.type.endswith("text.delta")]))
        chunks = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        texts.append("".join([c.choices[0].delta.content or "" async for c in chunks if c.choices]))
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello again"}]
        )
        texts.append(completion.choices[0].message.content or "")
        if models:
            texts.append((await client.models.list()).data[0].id)
    async with anthropic.AsyncAnthropic(
        base_url=str(proxy.make_url("")), api_key="sk-ant-test", max_retries=0
    ) as claude:
        async with claude.messages.stream(
            model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hi"}]
        ) as answer:
            texts.append(await answer.get_final_text())
    return texts


def ledger_rows(db: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT i.method, i.url, u.model, u.input_tokens, u.output_tokens, u.cached_tokens "
            "FROM interactions i LEFT JOIN usage u ON u.interaction_id = i.id ORDER BY i.id"
        ).fetchall()


async def get_run(proxy: ProxyServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.make_url("/_rrproxy/run")) as resp:
            assert resp.status == 200
            return dict(await resp.json())


async def test_sdk_answers_are_metered_then_replayed_verified_and_priced(
    start_upstream: StartUpstream, start_proxy: StartProxy, db_path: Path
) -> None:
    calls: list[str] = []
    upstream = await start_upstream(llm_upstream(calls))
    recording = await start_proxy(upstream, mode="record", cassette="suite")
    recorded = await use_the_apis(recording)
    assert recorded == ["Hello, World!"] * 3 + ["gpt-4o", "Hello, World!"]
    upstream_url = str(upstream.make_url("")).rstrip("/")
    await recording.close()
    await upstream.close()

    base = upstream_url
    assert ledger_rows(db_path) == [
        ("POST", f"{base}/v1/responses", "gpt-4o-2024-07-18", 543, 478, 234),
        ("POST", f"{base}/v1/chat/completions", CHAT_MODEL, 19, 4, 0),
        ("POST", f"{base}/v1/chat/completions", CHAT_MODEL, 1200, 5, 1024),
        ("GET", f"{base}/v1/models", None, None, None, None),  # no usage: no row, no guess
        ("POST", f"{base}/v1/messages", ANTHROPIC_MODEL, 2060, 6, 2048),
    ]

    # Offline, a run that never asks for the model list.
    replaying = await start_proxy(upstream_url, mode="replay", cassette="suite", prices=PRICES)
    replayed = await use_the_apis(replaying, models=False)
    assert replayed == ["Hello, World!"] * 4
    assert len(calls) == 5  # the replay reached no upstream
    run = await get_run(replaying)
    [suite] = run["cassettes"]
    assert suite["name"] == "suite"
    assert (suite["served"], suite["missed"], suite["recorded"]) == (4, 0, 0)
    assert (suite["verified"], suite["mismatched"], suite["unverified"]) == (4, 0, 0)
    assert suite["unused"] == [{"number": 4, "method": "GET", "url": f"{base}/v1/models"}]
    usd = (
        ((543 - 234) * 2.5 + 234 * 1.25 + 478 * 10)  # gpt-4o-2024-07-18 at gpt-4o's price
        + (19 * 0.15 + 4 * 0.6)
        + ((1200 - 1024) * 0.15 + 1024 * 0.075 + 5 * 0.6)
    ) / 1e6
    totals = run["replayed"]
    assert totals["interactions"] == totals["with_usage"] == 4
    assert (totals["input_tokens"], totals["output_tokens"], totals["cached_tokens"]) == (
        543 + 19 + 1200 + 2060,
        478 + 4 + 5 + 6,
        234 + 0 + 1024 + 2048,
    )
    assert totals["usd"] == pytest.approx(usd, abs=1e-6)
    assert totals["no_price"] == [ANTHROPIC_MODEL]

    # A new run: the counters start again, and every recording is unused until asked for.
    async with aiohttp.ClientSession() as session:
        async with session.post(replaying.make_url("/_rrproxy/reset"), json={}) as resp:
            assert resp.status == 200
    run = await get_run(replaying)
    assert run["cassettes"][0]["served"] == 0
    assert [u["number"] for u in run["cassettes"][0]["unused"]] == [1, 2, 3, 4, 5]
    assert run["replayed"]["interactions"] == 0


async def test_a_store_altered_behind_rrproxys_back_is_an_unfaithful_replay_logged_loudly(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await start_upstream(llm_upstream([]))
    proxy = await start_proxy(upstream, mode="record")
    await use_the_apis(proxy, models=False)
    await proxy.close()
    with closing(sqlite3.connect(db_path)) as conn, conn:  # one byte of one event changed
        conn.execute(
            "UPDATE events SET data = CAST(replace(CAST(data AS TEXT), 'World', 'Werld') AS BLOB) "
            "WHERE interaction_id = 1"
        )
    proxy = await start_proxy(upstream, mode="replay")
    with caplog.at_level(logging.ERROR, logger="proxy.serve.pipeline"):
        texts = await use_the_apis(proxy, models=False)
    assert texts[0] != "Hello, World!"  # the client got the altered bytes
    run = await get_run(proxy)
    [default] = run["cassettes"]
    assert (default["verified"], default["mismatched"]) == (3, 1)
    [bug] = [r.getMessage() for r in caplog.records if "BUG" in r.getMessage()]
    assert "interaction 1 of cassette 'default'" in bug and "not the" in bug


def age(db: Path, interaction: int, days: int) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            f"UPDATE interactions SET started_at = datetime('now', '-{days} days') WHERE id = ?",
            (interaction,),
        )


async def test_a_recording_older_than_max_age_warns_and_under_strict_is_refused(
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await start_upstream(llm_upstream([]))
    proxy = await start_proxy(upstream, mode="record")
    await use_the_apis(proxy, models=False)
    await proxy.close()
    age(db_path, 1, 40)  # the Responses stream: 40 days old

    proxy = await start_proxy(upstream, mode="replay", max_age="30d")
    with caplog.at_level(logging.WARNING, logger="proxy.serve.pipeline"):
        texts = await use_the_apis(proxy, models=False)
    assert texts == ["Hello, World!"] * 4  # replayed anyway
    [warning] = [r.getMessage() for r in caplog.records if "max_age" in r.getMessage()]
    assert "is 40.0 days old, older than max_age (30 days)" in warning
    assert "rrproxy rerecord default" in warning
    run = await get_run(proxy)
    assert run["cassettes"][0]["stale"] == 1
    await proxy.close()

    proxy = await start_proxy(upstream, mode="replay", max_age="30d", strict=True)
    with pytest.raises(openai.NotFoundError) as refused:
        await use_the_apis(proxy, models=False)
    assert "is 40.0 days old, older than max_age (30 days)" in str(refused.value)
    assert "rrproxy rerecord default" in str(refused.value)
    run = await get_run(proxy)
    [default] = run["cassettes"]
    assert (default["stale"], default["served"]) == (1, 0)
    assert [u["number"] for u in default["unused"]] == [2, 3, 4]  # #1 was asked for


async def test_auto_mode_counts_new_recordings_as_used(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    upstream = await start_upstream(llm_upstream([]))
    proxy = await start_proxy(upstream)  # auto
    await use_the_apis(proxy)
    run = await get_run(proxy)
    [default] = run["cassettes"]
    assert (default["recorded"], default["served"], default["unused"]) == (5, 0, [])
    body = json.dumps(run)
    assert "sk-test" not in body
