"""An upstream that cannot be reached, or a replay miss whose closest recording went to
another upstream: the answer names the setting that chose this request's upstream
(`--upstream`, or the route), as `rrproxy serve` users know them."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream
from tests.proc import free_port


async def _error(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as client:
        async with client.post(url, json={"q": 1}) as resp:
            return resp.status, (await resp.json())["error"]["message"]


async def test_a_connection_error_names_upstream_or_the_route(start_proxy: StartProxy) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(nowhere, routes={"/anth": nowhere})
    status, message = await _error(str(proxy.make_url("/v1/x")))
    assert status == 502
    assert message.endswith("is it running, and is --upstream right?")
    status, message = await _error(str(proxy.make_url("/anth/v1/x")))
    assert status == 502
    assert message.endswith("is it running, and is the route '/anth' (routes) right?")


async def test_a_miss_names_the_setting_when_the_upstream_moved(
    start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/x", ok)
    upstream = await start_upstream(app)
    proxy = await start_proxy(upstream, mode="record", routes={"/anth": str(upstream.make_url(""))})
    async with aiohttp.ClientSession() as client:
        for path in ("/v1/x", "/anth/v1/x"):
            async with client.post(proxy.make_url(path), json={"q": 1}) as resp:
                assert resp.status == 200
    await proxy.close()

    elsewhere = f"http://127.0.0.1:{free_port()}"
    proxy = await start_proxy(elsewhere, mode="replay", routes={"/anth": elsewhere})
    status, message = await _error(str(proxy.make_url("/v1/x")))
    assert status == 404
    assert f"upstream: {elsewhere} != " in message
    assert message.endswith("This request's upstream is set by --upstream")
    status, message = await _error(str(proxy.make_url("/anth/v1/x")))
    assert message.endswith("This request's upstream is set by the route '/anth' (routes)")
    await proxy.close()

    # A miss for another reason (the body) says nothing of the setting.
    proxy = await start_proxy(str(upstream.make_url("")).rstrip("/"), mode="replay")
    async with aiohttp.ClientSession() as client:
        async with client.post(proxy.make_url("/v1/x"), json={"q": 2}) as resp:
            message = (await resp.json())["error"]["message"]
    assert resp.status == 404
    assert 'body field "q": 2 != 1' in message
    assert "upstream" not in message.partition(" differs: ")[2]
    assert "is set by" not in message
