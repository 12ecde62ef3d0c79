"""Record a HAR with mitmproxy's own exporter (`mitmdump --set hardump=...`, mitmproxy 10.1
and later; see README.md beside this file): a client sends an SSE request, a gzip JSON
request and a binary download through mitmdump to a local aiohttp upstream; the HAR is what
mitmproxy wrote when it stopped. Not run by the tests: mitmproxy is not one of their
dependencies.

    python make_mitmproxy_har.py PATH/TO/mitmdump OUT.har
"""

import asyncio
import gzip
import json
import signal
import socket
import sys

import aiohttp
from aiohttp import web

WORDS = ["Hello", ",", " Wörld", "!"]  # not ASCII: mitmproxy saves it Latin-1 decoded
EVENTS = [{"type": "response.output_text.delta", "delta": w} for w in WORDS]
KEY = "sk-test-mitmproxy-key-123456789"  # a made-up key: the import must redact it
MODELS = {"data": [{"id": "gpt-4o", "name": "modèle"}, {"id": "gpt-4o-mini"}]}
BLOB = bytes(range(256)) * 4  # not UTF-8: mitmproxy saves it base64


async def responses(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for e in EVENTS:
        data = json.dumps(e, ensure_ascii=False)
        await resp.write(f"event: {e['type']}\ndata: {data}\n\n".encode())
        await asyncio.sleep(0.05)
    await resp.write_eof()
    return resp


async def models(_: web.Request) -> web.Response:
    body = gzip.compress(json.dumps(MODELS, ensure_ascii=False).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    return web.Response(body=body, headers=headers)


async def blob(_: web.Request) -> web.Response:
    return web.Response(body=BLOB, content_type="application/octet-stream")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_for_port(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise SystemExit(f"mitmdump did not listen on {port} within 30 s")


async def main(mitmdump: str, out: str) -> None:
    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/files/f1/content", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    proxy_port = free_port()
    mitm = await asyncio.create_subprocess_exec(
        mitmdump,
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(proxy_port),
        "--set",
        f"hardump={out}",
        "-q",
    )
    await wait_for_port(proxy_port)
    base = f"http://127.0.0.1:{upstream_port}"
    proxy = f"http://127.0.0.1:{proxy_port}"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as client:
        body = {"model": "gpt-4o", "input": "Say hello world", "stream": True}
        async with client.post(
            f"{base}/v1/responses", json=body, headers=headers, proxy=proxy
        ) as r:
            print(len(await r.read()), "bytes of SSE")
        async with client.get(f"{base}/v1/models?limit=2", headers=headers, proxy=proxy) as r:
            print(await r.json())
        async with client.get(f"{base}/v1/files/f1/content", proxy=proxy) as r:
            assert await r.read() == BLOB
    mitm.send_signal(signal.SIGINT)  # mitmproxy writes the HAR as it shuts down
    await mitm.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
