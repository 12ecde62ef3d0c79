"""pytest plugin (installed with rrproxy): each test talks to its own proxy and cassette.

The `rrproxy` fixture starts the proxy in-process on a free loopback port, in a thread with
its own event loop (so sync tests and the sync SDK clients work as well as async ones),
points `OPENAI_BASE_URL` and `ANTHROPIC_BASE_URL` at it for the test, and stops it after.
The cassette is named after the test and lives beside the test module, as pytest-recording
lays them out: `cassettes/<module>/<test>.cassette.jsonl`, through the cassette directory
feature (loaded at start, rewritten when a recording finishes). The store is a temporary
SQLite file, one per cassette directory and pytest process (so one per xdist worker).

    --rrproxy-mode      record | replay | auto | passthrough; default replay when the CI
                        environment variable is set, auto otherwise
    --rrproxy-upstream  where requests are forwarded (default https://api.openai.com)

    @pytest.mark.rrproxy(cassette="name", ignore_body_fields=[...], match_headers=[...],
                         ignore_query_params=[...], upstream="...", mode="...")

A marked test gets the proxy without asking for the fixture. A replay miss fails the test
with the miss message (how the request differs from the closest recording), even when
the code under test swallowed the error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.cassettes.file_format import SUFFIX
from proxy.config import Mode, Settings, load_settings
from proxy.core.matching import MatchRules

DEFAULT_UPSTREAM = "https://api.openai.com"
ANTHROPIC_ROUTE = "/anthropic"
ANTHROPIC_UPSTREAM = "https://api.anthropic.com"
START_TIMEOUT_S = 60.0
MARKER_OPTIONS = (
    "cassette",
    "ignore_body_fields",
    "match_headers",
    "ignore_query_params",
    "upstream",
    "mode",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rrproxy", "record and replay HTTP APIs with rrproxy")
    group.addoption(
        "--rrproxy-mode",
        choices=[m.value for m in Mode],
        default=None,
        help="rrproxy mode for the run (default: replay if the CI variable is set, else auto)",
    )
    group.addoption(
        "--rrproxy-upstream",
        default=DEFAULT_UPSTREAM,
        metavar="URL",
        help=f"upstream the rrproxy fixture forwards to (default {DEFAULT_UPSTREAM})",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rrproxy(cassette=None, ignore_body_fields=(), match_headers=(), "
        "ignore_query_params=(), upstream=None, mode=None): run the test through rrproxy "
        "with these cassette and matching options",
    )


def default_mode(option: str | None, environ: Mapping[str, str]) -> Mode:
    """The option if given; else replay on CI (the CI variable set), auto elsewhere."""
    if option:
        return Mode(option)
    ci = environ.get("CI", "").strip().lower()
    return Mode.REPLAY if ci not in ("", "0", "false", "no") else Mode.AUTO


def cassette_name(node: pytest.Item) -> str:
    """`test_x`, `TestCase.test_x`, `test_x[param]`: usable as a file name."""
    name = node.name
    cls = getattr(node, "cls", None)
    if cls is not None:
        name = f"{cls.__name__}.{name}"
    return re.sub(r"[/\\\x00-\x1f\x7f]", "_", name)[:200]


@dataclass
class ProxyThread:
    """The proxy app on 127.0.0.1, on an event loop of its own in a background thread."""

    settings: Settings
    port: int = 0
    misses: list[str] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="rrproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"rrproxy did not start in {START_TIMEOUT_S} s")
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self) -> None:
        """Stop serving; the last recordings are committed and their files written."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test's thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from proxy.serve.app import create_app  # the proxy's modules load only when a test uses it

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        from proxy.serve.state import RUN

        app = create_app(self.settings)
        app.on_response_prepare.append(self._on_prepare)
        app[RUN].miss_listeners.append(self.misses.append)  # a WebSocket message that differs
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=False,  # as `rrproxy serve`: see `proxy.serve.app`
            shutdown_timeout=self.settings.shutdown_timeout,
        )
        try:
            await runner.setup()  # the store migrated, the cassette directory loaded
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = int(runner.addresses[0][1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    async def _on_prepare(self, _request: web.Request, response: web.StreamResponse) -> None:
        if response.headers.get("Rrproxy-Miss") and isinstance(response, web.Response):
            try:
                message = json.loads(response.text or "")["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text or "replay miss"
            self.misses.append(str(message))


@dataclass(frozen=True)
class RRProxy:
    """What a test can know about its proxy."""

    url: str  # http://127.0.0.1:PORT
    mode: Mode
    cassette: str
    cassette_file: Path
    misses: list[str]

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url + ANTHROPIC_ROUTE


class _Stores:
    """One temporary store per cassette directory, for this pytest process."""

    def __init__(self, factory: pytest.TempPathFactory):
        self._factory = factory
        self._dbs: dict[Path, Path] = {}

    def db_for(self, directory: Path) -> Path:
        if directory not in self._dbs:
            self._dbs[directory] = self._factory.mktemp("rrproxy-store") / "rrproxy.db"
        return self._dbs[directory]


_PROXY = pytest.StashKey[ProxyThread]()
_REPORTED = pytest.StashKey[int]()


@pytest.fixture(scope="session")
def _rrproxy_stores(tmp_path_factory: pytest.TempPathFactory) -> _Stores:
    return _Stores(tmp_path_factory)


def _marker_options(item: pytest.Item) -> dict[str, Any]:
    marker = item.get_closest_marker("rrproxy")
    if marker is None:
        return {}
    if marker.args:
        raise pytest.UsageError("@pytest.mark.rrproxy takes keyword arguments only")
    unknown = sorted(set(marker.kwargs) - set(MARKER_OPTIONS))
    if unknown:
        raise pytest.UsageError(
            f"@pytest.mark.rrproxy: unknown option {unknown[0]!r} "
            f"(options: {', '.join(MARKER_OPTIONS)})"
        )
    return dict(marker.kwargs)


def _settings(item: pytest.Item, db: Path, directory: Path) -> tuple[Settings, Mode, str]:
    opts = _marker_options(item)
    config = item.config
    mode = default_mode(opts.get("mode") or config.getoption("rrproxy_mode"), os.environ)
    name = opts.get("cassette") or cassette_name(item)
    flags = {
        "upstream": opts.get("upstream") or config.getoption("rrproxy_upstream"),
        "mode": mode.value,
        "cassette": name,
        "db": str(db),
        "cassette_dir": str(directory),
        # one proxy for both SDKs: Anthropic's calls arrive under their own prefix
        "routes": {ANTHROPIC_ROUTE: ANTHROPIC_UPSTREAM},
    }
    settings = load_settings(environ={}, flags=flags)
    rules = MatchRules(
        ignore_body_fields=tuple(opts.get("ignore_body_fields", ())),
        match_headers=tuple(opts.get("match_headers", ())),
        ignore_query_params=tuple(opts.get("ignore_query_params", ())),
    )
    return replace(settings, matching=rules), mode, settings.cassette


@pytest.fixture
def rrproxy(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    _rrproxy_stores: _Stores,
) -> Iterator[RRProxy]:
    """The proxy for this test, with `OPENAI_BASE_URL` and `ANTHROPIC_BASE_URL` set to it."""
    item = request.node
    assert isinstance(item, pytest.Item)
    directory = item.path.parent / "cassettes" / item.path.stem
    settings, mode, name = _settings(item, _rrproxy_stores.db_for(directory), directory)
    proxy = ProxyThread(settings)
    proxy.start()
    item.stash[_PROXY] = proxy
    try:
        monkeypatch.setenv("OPENAI_BASE_URL", proxy.url + "/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", proxy.url + ANTHROPIC_ROUTE)
        yield RRProxy(proxy.url, mode, name, directory / (name + SUFFIX), proxy.misses)
    finally:
        proxy.stop()


@pytest.fixture(autouse=True)
def _rrproxy_marked(request: pytest.FixtureRequest) -> None:
    """A test marked `rrproxy` gets the proxy without naming the fixture."""
    if request.node.get_closest_marker("rrproxy") is not None:
        request.getfixturevalue("rrproxy")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A replay miss seen during a phase fails that phase's report, with its message."""
    report = yield
    proxy = item.stash.get(_PROXY, None)
    if proxy is None:
        return report
    seen = item.stash.get(_REPORTED, 0)
    new = proxy.misses[seen:]
    item.stash[_REPORTED] = seen + len(new)
    if new:
        text = "\n\n".join(new)
        if report.passed:
            report.outcome = "failed"
            report.longrepr = f"rrproxy replay miss ({len(new)}):\n{text}"
        else:
            report.sections.append(("rrproxy replay miss", text))
    return report
