"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright for
Python (its own browser downloads are not used: `executable_path`). Every page loads with
no console error; a click-through from the cassette list to an event; the live page shows
an event the upstream sends while it is open; compare shows the one event that differs;
a delete through the UI works and one from a page of another origin does not.

Each page's screenshot is written to `RRPROXY_UI_ARTIFACTS` (default: the test's tmp
directory, `artifacts/`). With `RRPROXY_UI_SCREENSHOTS=DIR` the same shots are also
written to DIR under stable names: that is how the README's screenshots (docs/ui/) are
made, `RRPROXY_UI_SCREENSHOTS=docs/ui python -m pytest tests/integration/test_ui_browser.py`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import StartProxy, StartUpstream
from tests.ui_support import BODY, UI, Upstream, flush, record

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = os.environ.get("RRPROXY_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
async def browser() -> AsyncIterator[object]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


class Shots:
    """Screenshots: a test artifact each, and the README's when asked."""

    def __init__(self, tmp_path: Path):
        self.dir = Path(os.environ.get("RRPROXY_UI_ARTIFACTS") or tmp_path / "artifacts")
        self.dir.mkdir(parents=True, exist_ok=True)
        wanted = os.environ.get("RRPROXY_UI_SCREENSHOTS")
        self.readme = Path(wanted) if wanted else None

    async def take(self, page: object, name: str) -> None:
        path = self.dir / f"{name}.png"
        await page.screenshot(path=str(path), full_page=False)  # type: ignore[attr-defined]
        assert path.stat().st_size > 1000
        if self.readme is not None:
            self.readme.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.readme / f"{name}.png")


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)


class Watched:
    """A page whose console errors and uncaught exceptions are collected."""

    def __init__(self, page: object):
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)  # type: ignore[attr-defined]
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))  # type: ignore[attr-defined]

    def _console(self, message: object) -> None:
        if message.type == "error":  # type: ignore[attr-defined]
            self.errors.append(f"console: {message.text}")  # type: ignore[attr-defined]


async def new_page(browser: object) -> Watched:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    return Watched(await context.new_page())


def cassette_names(db_path: Path) -> list[str]:
    with closing(sqlite3.connect(db_path)) as db:
        return [r[0] for r in db.execute("SELECT name FROM cassettes ORDER BY name")]


async def test_every_page_loads_clean_and_a_click_through_reaches_an_event(
    browser: object,
    shots: Shots,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
) -> None:
    import aiohttp

    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "hello-world")
    async with aiohttp.ClientSession() as client:  # the same request, recorded again
        async with client.post(
            proxy.make_url("/v1/responses"),
            json=BODY,
            headers={"Rrproxy-Cassette": "hello-world", "Rrproxy-Mode": "record"},
        ) as r:
            await r.read()
        for n in range(3):
            await record(proxy, "agent-run", input=f"step {n}")
        async with client.post(  # a miss, for the misses page
            proxy.make_url("/v1/responses"),
            json={**BODY, "model": "gpt-4o-mini"},
            headers={"Rrproxy-Mode": "replay", "Rrproxy-Cassette": "hello-world"},
        ) as r:
            assert r.status == 404
    await flush(proxy)
    w = await new_page(browser)
    page = w.page
    base = str(proxy.make_url(UI + "/"))
    await page.goto(base)  # type: ignore[attr-defined]
    await page.wait_for_selector("#cassettes")  # type: ignore[attr-defined]
    await shots.take(page, "cassettes")
    await page.click("a.cassette:text('hello-world')")  # type: ignore[attr-defined]
    await page.wait_for_selector("#interactions")  # type: ignore[attr-defined]
    assert "/_rrproxy/ui/cassettes/hello-world" in page.url  # type: ignore[attr-defined]
    await shots.take(page, "cassette")
    await page.click("a.interaction >> nth=0")  # type: ignore[attr-defined]
    await page.wait_for_selector("svg.timeline")  # type: ignore[attr-defined]
    await page.wait_for_selector("#summary:has-text('Hello, World!')")  # type: ignore[attr-defined]
    await shots.take(page, "interaction")
    await page.click("#copy-curl")  # type: ignore[attr-defined]
    await page.wait_for_selector("#flash:has-text('curl command')")  # type: ignore[attr-defined]
    assert "curl -N -X POST" in await page.input_value("#curl")  # type: ignore[attr-defined]
    row = page.locator("#e5")  # type: ignore[attr-defined]
    await row.locator("td.data details summary").first.click()
    assert "response.output_text.delta" in await row.inner_text()
    assert '"delta": "Hello,"' in await row.locator("pre").first.inner_text()
    await shots.take(page, "event")
    await page.click("a.compare")  # type: ignore[attr-defined]
    await page.wait_for_selector("#diff")  # type: ignore[attr-defined]
    assert "1 event(s) differ" in await page.inner_text("#differing")  # type: ignore[attr-defined]
    differing = page.locator("tr.differs")  # type: ignore[attr-defined]
    assert await differing.count() == 1
    assert "there!" in await differing.inner_text()
    await shots.take(page, "compare")
    await page.click("nav >> text=Misses")  # type: ignore[attr-defined]
    await page.wait_for_selector("article.miss")  # type: ignore[attr-defined]
    assert "gpt-4o-mini" in await page.inner_text("article.miss")  # type: ignore[attr-defined]
    await shots.take(page, "misses")
    assert w.errors == []


async def test_the_live_page_shows_an_event_sent_while_it_is_open(
    browser: object, shots: Shots, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    import asyncio

    upstream = Upstream()
    proxy = await start_proxy(await start_upstream(upstream.app()))
    w = await new_page(browser)
    page = w.page
    await page.goto(str(proxy.make_url(UI + "/live")))  # type: ignore[attr-defined]
    await page.wait_for_selector("#live-status:text('connected')")  # type: ignore[attr-defined]
    streaming = asyncio.create_task(record(proxy, "live", path="/v1/held"))
    await page.wait_for_selector("ol.live-events li:has-text('first')")  # type: ignore[attr-defined]
    assert await page.locator("svg.live rect.mark").count() == 1  # type: ignore[attr-defined]
    upstream.gate.set()  # the upstream sends its next event while the page is open
    await page.wait_for_selector("ol.live-events li:has-text('after-the-gate')")  # type: ignore[attr-defined]
    assert await page.locator("svg.live rect.mark").count() == 2  # type: ignore[attr-defined]
    await streaming
    await page.wait_for_selector(".live-item .state:has-text('complete')")  # type: ignore[attr-defined]
    await shots.take(page, "live")
    assert w.errors == []


async def test_a_delete_through_the_ui_works_and_one_from_another_origin_does_not(
    browser: object,
    shots: Shots,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
) -> None:
    proxy = await start_proxy(await start_upstream(Upstream().app()))
    await record(proxy, "keep")
    await record(proxy, "drop")
    await flush(proxy)
    target = str(proxy.make_url(UI + "/actions/delete-cassette"))

    # A page of another origin (another port) that posts a form, and tries fetch with JSON.
    async def evil(_request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text=f"""<!doctype html><body>
<form id="f" method="post" action="{target}"><input name="name" value="keep"></form>
<iframe name="sink"></iframe>
<script>
  fetch("{target}", {{method: "POST", mode: "cors", headers: {{"Content-Type": "application/json"}},
                      body: JSON.stringify({{name: "keep"}})}})
    .then(r => document.title = "fetch " + r.status, e => document.title = "fetch blocked");
  document.getElementById("f").target = "sink";
  document.getElementById("f").submit();
</script></body>""",
        )

    other = web.Application()
    other.router.add_get("/", evil)
    evil_server = await start_upstream(other)
    w = await new_page(browser)
    page = w.page
    await page.goto(str(evil_server.make_url("/")))  # type: ignore[attr-defined]
    await page.wait_for_function("document.title.startsWith('fetch')")  # type: ignore[attr-defined]
    assert await page.title() == "fetch blocked"  # type: ignore[attr-defined]
    frame = page.frame(name="sink")  # type: ignore[attr-defined]
    await frame.wait_for_load_state()
    assert cassette_names(db_path) == ["drop", "keep"]  # the form deleted nothing

    w = await new_page(browser)
    page = w.page
    page.on("dialog", lambda dialog: dialog.accept())  # type: ignore[attr-defined]
    await page.goto(str(proxy.make_url(UI + "/")))  # type: ignore[attr-defined]
    await page.click("tr[data-cassette='drop'] button.danger")  # type: ignore[attr-defined]
    await page.wait_for_selector("#flash:has-text('Deleted cassette drop')")  # type: ignore[attr-defined]
    assert await page.locator("tr[data-cassette='drop']").count() == 0  # type: ignore[attr-defined]
    assert cassette_names(db_path) == ["keep"]
    assert w.errors == []


async def test_a_websocket_session_shows_its_messages(
    browser: object,
    shots: Shots,
    start_upstream: StartUpstream,
    start_proxy: StartProxy,
    db_path: Path,
) -> None:
    """A session recorded through the proxy: its page loads clean, shows the messages
    both ways, and a binary message's bytes once it is opened."""
    from tests.integration.test_websocket_cassettes import record_conversation

    _, upstream_url, _ = await record_conversation(start_upstream, start_proxy)
    proxy = await start_proxy(upstream_url, mode="replay", cassette="voice")
    with closing(sqlite3.connect(db_path)) as db:
        (session,) = [r[0] for r in db.execute("SELECT id FROM interactions")]
    w = await new_page(browser)
    page = w.page
    await page.goto(str(proxy.make_url(f"{UI}/interactions/{session}")))  # type: ignore[attr-defined]
    await page.wait_for_selector("#messages")  # type: ignore[attr-defined]
    await page.wait_for_selector("svg.timeline.lanes rect.mark.up")  # type: ignore[attr-defined]
    first = page.locator("#m1")  # type: ignore[attr-defined]
    assert "←" in await first.locator("td.dir").inner_text()
    await first.locator("td.data details summary").click()
    assert '"type": "session.created"' in await first.locator("pre").inner_text()
    binary = page.locator("#m20")  # type: ignore[attr-defined]
    assert "→" in await binary.locator("td.dir").inner_text()
    await binary.locator("details summary").click()
    await page.wait_for_selector("#m20 pre:has-text('audio')")  # type: ignore[attr-defined]
    assert await binary.locator("pre").inner_text() == "\\x00\\x01audio\\xff"
    await page.evaluate("window.scrollTo(0, 0)")  # type: ignore[attr-defined]
    await shots.take(page, "websocket")
    assert w.errors == []
