"""The WebSocket benchmark's servers (``python -m bench.ws_servers upstream|aiohttp --port P``).

- ``upstream``: ``GET /ws`` echoes each text message `{"n": i, ...}` as `{"echo": i, ...}`;
  a message `{"burst": M, "size": S}` is answered with M messages of about S bytes, then
  `{"burst_done": M}`. ``GET /health`` answers 200.
- ``aiohttp``: a plain aiohttp WebSocket pass-through to ``--upstream`` (both directions,
  text and binary, close passed on): what aiohttp alone costs, the yardstick for rrproxy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSMsgType, web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def health(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            continue
        data = json.loads(msg.data)
        if "burst" in data:
            pad = "x" * int(data["size"])
            for i in range(int(data["burst"])):
                await ws.send_str(f'{{"i": {i}, "pad": "{pad}"}}')
            await ws.send_str(json.dumps({"burst_done": data["burst"]}))
        else:
            await ws.send_str(json.dumps({"echo": data["n"], "pad": data.get("pad", "")}))
    return ws


def upstream_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/ws", echo)
    app.router.add_get("/health", health)
    return app


async def relay(request: web.Request) -> web.StreamResponse:
    url = request.app[UPSTREAM] + request.raw_path
    async with request.app[SESSION].ws_connect(url, max_msg_size=0) as upstream:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)

        async def pump(
            src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
            dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        ) -> None:
            async for msg in src:
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
            await dst.close()

        await asyncio.gather(pump(ws, upstream), pump(upstream, ws))
        return ws


def relay_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(trust_env=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_get("/health", health)
    app.router.add_get("/ws", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", choices=("upstream", "aiohttp"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default="")
    args = parser.parse_args()
    app = upstream_app() if args.which == "upstream" else relay_app(args.upstream)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
