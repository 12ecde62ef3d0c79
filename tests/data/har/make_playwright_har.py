"""Record a HAR with Playwright driving Debian's Chromium (see README.md beside this file):
a local page fetches an SSE stream, as LLM web apps do, then JSON; the HAR is what Chromium
saved. Not run by the tests: Playwright is not one of their dependencies.

    python make_playwright_har.py OUT.har
"""

import asyncio
import json
import sys

from aiohttp import web
from playwright.async_api import async_playwright

WORDS = ["Hello", ",", " World", "!"]
EVENTS = [{"type": "response.output_text.delta", "delta": w} for w in WORDS]
KEY = "sk-test-browser-key-123456789"  # a made-up key: the import must redact it

PAGE = """<!doctype html><html><body><pre id=out></pre><script>
async function go() {
  const r = await fetch('/v1/responses', {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer KEY'},
    body: JSON.stringify({model: 'gpt-4o', input: 'Say hello world', stream: true})});
  const reader = r.body.getReader(); const dec = new TextDecoder(); let text = '';
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    text += dec.decode(value);
  }
  const j = await (await fetch('/v1/models')).json();
  document.getElementById('out').textContent = text + JSON.stringify(j);
  document.title = 'done';
}
go();
</script></body></html>""".replace("KEY", KEY)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def page(_: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


async def responses(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for e in EVENTS:
        await resp.write(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode())
        await asyncio.sleep(0.05)
    await resp.write_eof()
    return resp


async def models(_: web.Request) -> web.Response:
    return web.json_response({"data": [{"id": "gpt-4o"}]})


async def main(out: str) -> None:
    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 8765)
    await site.start()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        context = await browser.new_context(record_har_path=out, record_har_content="embed")
        tab = await context.new_page()
        await tab.goto("http://127.0.0.1:8765/")
        await tab.wait_for_function("document.title === 'done'", timeout=15000)
        await context.close()
        await browser.close()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
