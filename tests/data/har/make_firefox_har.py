"""Record a HAR with Firefox's own exporter (Debian's firefox-esr, headless; see README.md
beside this file): a local page fetches an SSE stream, as LLM web apps do, then JSON, and
Firefox's network monitor writes the HAR itself when the page has loaded
(`devtools.netmonitor.har.enableAutoExportToFile`, which needs the toolbox: `--devtools`).
Not run by the tests: Firefox is not one of their dependencies.

    python make_firefox_har.py OUT.har

The first page waits 5 s for the toolbox to open, then goes to the page that fetches: the
export covers one page load, from "will-navigate" to "dom-complete". That page's load event
waits for an image that the server answers only once the JSON was served, so the export
holds the stream and the JSON.
"""

import asyncio
import json
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

WORDS = ["Hello", ",", " Wörld", "!"]
EVENTS = [{"type": "response.output_text.delta", "delta": w} for w in WORDS]
KEY = "sk-test-firefox-key-123456789"  # a made-up key: the import must redact it
GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c000000000100010000020144003b"
)

PAGE = """<!doctype html><html><head><meta charset=utf-8></head><body><pre id=out></pre>
<script>
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
}
go();
</script><img src="/done.gif"></body></html>""".replace("KEY", KEY)

START = """<!doctype html><html><body>waiting for the toolbox
<script>setTimeout(() => { location.href = '/page'; }, 5000);</script></body></html>"""

PREFS = {
    "devtools.netmonitor.har.enableAutoExportToFile": True,
    "devtools.netmonitor.har.defaultFileName": "firefox",
    "devtools.netmonitor.har.includeResponseBodies": True,
    "devtools.netmonitor.har.compress": False,
    "devtools.netmonitor.har.forceExport": True,
    "devtools.toolbox.selectedTool": "netmonitor",
    "devtools.netmonitor.persistlog": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.auto": False,
    "network.proxy.type": 0,
}


async def main(out: str) -> None:
    served = asyncio.Event()

    async def start(_: web.Request) -> web.Response:
        return web.Response(text=START, content_type="text/html", charset="utf-8")

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8")

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
        served.set()
        return web.json_response({"data": [{"id": "gpt-4o"}]})

    async def done(_: web.Request) -> web.Response:
        await asyncio.wait_for(served.wait(), 30)
        await asyncio.sleep(0.5)  # the JSON body read by the page first
        return web.Response(body=GIF, content_type="image/gif")

    app = web.Application()
    app.router.add_get("/", start)
    app.router.add_get("/page", page)
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/done.gif", done)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()

    profile = Path(tempfile.mkdtemp(prefix="ff-har-"))
    logs = profile / "har-logs"
    prefs = {**PREFS, "devtools.netmonitor.har.defaultLogDir": str(logs)}
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
    )
    firefox = await asyncio.create_subprocess_exec(
        shutil.which("firefox-esr") or "firefox",
        "--headless",
        "--no-remote",
        "--profile",
        str(profile),
        "--devtools",
        f"http://127.0.0.1:{port}/",
    )
    try:
        for _ in range(600):
            found = sorted(logs.glob("*.har")) if logs.exists() else []
            if found:
                await asyncio.sleep(1)  # let the write finish
                await asyncio.to_thread(shutil.copyfile, found[0], out)
                print("HAR written by Firefox:", found[0], "->", out)
                break
            await asyncio.sleep(0.1)
        else:
            raise SystemExit("Firefox wrote no HAR within 60 s")
    finally:
        firefox.terminate()
        await firefox.wait()
        await runner.cleanup()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
