"""`--read-only`: a replay proxy that can never write to the store (CI replaying a team
store): it replays, refuses any other mode, leaves no trace (no instance row, no repair, no
migration), and its connections themselves refuse writes."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from proxy.serve.state import SERVICES
from tests.conftest import StartProxy, StartUpstream
from tests.stores import rows

pytestmark = pytest.mark.stores


async def test_a_read_only_proxy_replays_refuses_to_record_and_writes_nothing(
    start_upstream: StartUpstream, start_proxy: StartProxy, store_url: str
) -> None:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"q": (await request.json())["q"]})

    app = web.Application()
    app.router.add_post("/v1/plain", answer)
    upstream = await start_upstream(app)
    recorder = await start_proxy(upstream, mode="record", cassette="c")
    async with aiohttp.ClientSession() as client:
        async with client.post(recorder.make_url("/v1/plain"), json={"q": 1}) as resp:
            recorded = await resp.read()
        await recorder.close()
        before = rows(store_url, "SELECT id, outcome, ordinal FROM interactions")
        proxy = await start_proxy(upstream, read_only="true", cassette="c")
        url = proxy.make_url("/v1/plain")
        async with client.post(url, json={"q": 1}) as resp:
            assert resp.headers["Rrproxy-Source"] == "replayed"
            assert await resp.read() == recorded
        async with client.post(url, json={"q": 2}) as resp:
            assert resp.status == 404  # a miss; never forwarded, never recorded
        async with client.post(url, json={"q": 2}, headers={"Rrproxy-Mode": "auto"}) as resp:
            assert resp.status == 400
            assert "read-only" in (await resp.json())["error"]["message"]
        async with client.get(proxy.make_url("/_rrproxy/cassettes")) as resp:
            assert resp.status == 200
    assert rows(store_url, "SELECT id, outcome, ordinal FROM interactions") == before
    assert rows(store_url, "SELECT count(*) FROM instances") == [(0,)]
    reader = proxy.app[SERVICES].reader  # the store's connections refuse a write outright
    with pytest.raises(Exception, match=r"(?i)read.only|readonly|attempt to write"):
        async with reader.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM interactions")
    assert rows(store_url, "SELECT id, outcome, ordinal FROM interactions") == before
