"""The benchmark's upstream: an aiohttp server that streams SSE and answers small JSON.

It runs in its own process (``python -m bench.upstream --port P``) so it never shares a
CPU or an event loop with the client, and it sends without any artificial delay: what the
benchmark measures is the overhead of whatever sits between client and upstream.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from bench import payload


async def stream(request: web.Request) -> web.StreamResponse:
    spec = payload.parse_stream_request(await request.read())
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    for seq in range(spec.events):
        await response.write(payload.sse_event(spec, seq))
    await response.write_eof()
    return response


async def small(request: web.Request) -> web.Response:
    request_id = payload.parse_small_request(await request.read())
    return web.Response(body=payload.small_response(request_id), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_post(payload.STREAM_PATH, stream)
    app.router.add_post(payload.SMALL_PATH, small)
    app.router.add_get(payload.HEALTH_PATH, health)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
