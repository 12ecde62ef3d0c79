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
    --rrproxy-upstream  where requests are forwarded (default https://api.openai.com);
                        ini `rrproxy_upstream`
    --rrproxy-route NAME=URL  where requests under /NAME go (repeatable; default
                        anthropic=https://api.anthropic.com); ini `rrproxy_routes`
    --rrproxy-strict    fail a test whose cassette has recordings it never used (and
                        replays beyond the recordings, and stale recordings: `strict`)
    --rrproxy-config    a TOML file for the proxies: [prices], max_age, [matching]...

    @pytest.mark.rrproxy(cassette="name", ignore_body_fields=[...], match_headers=[...],
                         ignore_query_params=[...], upstream="...", routes={NAME: URL},
                         mode="...", strict=True)

Each upstream comes from the marker, else the command line, else the ini file, else the
default; an error about an upstream names the setting it came from. In replay mode an SDK
key that is not set (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) is set to a placeholder for the
test, so that the SDKs start without a real key; a real key is never replaced.

At the end of the session the terminal summary says, per test, which recordings were never
used, and for the whole run the interactions and tokens replayed and the money not spent
(with `[prices]` in `--rrproxy-config`).

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
from proxy.core.prices import Tally
from proxy.errors import ConfigError
from proxy.serve.run_report import RunSummary

DEFAULT_UPSTREAM = "https://api.openai.com"
ANTHROPIC_ROUTE = "/anthropic"
DEFAULT_ROUTES = {"anthropic": "https://api.anthropic.com"}  # one proxy for both SDKs
START_TIMEOUT_S = 60.0
MARKER_OPTIONS = (
    "cassette",
    "ignore_body_fields",
    "match_headers",
    "ignore_query_params",
    "upstream",
    "routes",
    "mode",
    "strict",
)
PLACEHOLDER_KEY = "rrproxy-placeholder-key"
# (the SDK's key variable, variables that stand for a key when set): a replay needs none,
# but the SDKs refuse to start without one
KEY_VARIABLES = (("OPENAI_API_KEY", ()), ("ANTHROPIC_API_KEY", ("ANTHROPIC_AUTH_TOKEN",)))


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
        default=None,
        metavar="URL",
        help=f"upstream the rrproxy fixture forwards to (default {DEFAULT_UPSTREAM})",
    )
    group.addoption(
        "--rrproxy-route",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="requests under /NAME go to URL (repeatable; default "
        + ", ".join(f"{n}={u}" for n, u in DEFAULT_ROUTES.items())
        + ")",
    )
    group.addoption(
        "--rrproxy-strict",
        action="store_true",
        default=False,
        help="fail tests whose cassette has recordings they never used (strict replay)",
    )
    group.addoption(
        "--rrproxy-config",
        default=None,
        metavar="FILE",
        help="rrproxy TOML configuration for the fixture's proxies ([prices], max_age, ...)",
    )
    parser.addini("rrproxy_upstream", f"rrproxy's upstream (default {DEFAULT_UPSTREAM})")
    parser.addini("rrproxy_routes", "rrproxy routes, NAME=URL a line", type="linelist")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rrproxy(cassette=None, ignore_body_fields=(), match_headers=(), "
        "ignore_query_params=(), upstream=None, routes=None, mode=None, strict=False): run "
        "the test through rrproxy with these cassette and matching options",
    )
    config.stash[_SESSION] = _Session()
    _CONFIGS.append(config)


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
    _app: web.Application | None = None

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
        app = self._app = create_app(self.settings)
        app.on_response_prepare.append(self._on_prepare)
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

    def run_summary(self) -> RunSummary:
        """What this proxy's run has done so far (asked from the test's thread)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self._summary(), self._loop).result(START_TIMEOUT_S)

    async def _summary(self) -> RunSummary:
        from proxy.serve.state import RUN, SERVICES

        assert self._app is not None
        services, state = self._app[SERVICES], self._app[RUN]
        await services.recorder.flush()  # this run's recordings count as used
        return await state.report.summary(services.reader, state.cassette, services.settings.prices)

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

    def route_url(self, name: str) -> str:
        """The base URL of a route (`--rrproxy-route NAME=URL`): requests under it go there."""
        return f"{self.url}/{name.strip('/')}"


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
_STRICT = pytest.StashKey[bool]()
_SUMMED = pytest.StashKey[bool]()


@dataclass
class _Session:
    """What the terminal summary says, gathered from each test's report (with xdist, the
    reports come to the controller: this is filled there)."""

    unused: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    priced: bool = False  # a [prices] table was given: unpriced models are named


_SESSION = pytest.StashKey[_Session]()
_PROPERTY = "rrproxy_run"


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


@dataclass(frozen=True)
class Upstreams:
    """Where the proxy forwards: `upstream`, and each route by name (requests under /NAME),
    each as (URL, the setting it came from as the user wrote it, for the errors)."""

    upstream: tuple[str, str]
    routes: dict[str, tuple[str, str]]

    def settings_flags(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream[0],
            "routes": {f"/{name}": url for name, (url, _) in self.routes.items()},
        }

    def settings_labels(self) -> tuple[tuple[str, str], ...]:
        routes = tuple((f"/{name}", label) for name, (_, label) in self.routes.items())
        return (("", self.upstream[1]), *routes)


def _route(text: str, source: str) -> tuple[str, str]:
    name, sep, url = text.partition("=")
    name = name.strip().strip("/")
    if not sep or not name or not url.strip():
        raise pytest.UsageError(f"{source}: {text!r} is not NAME=URL (anthropic=https://...)")
    return name, url.strip()


def upstreams(item: pytest.Item) -> Upstreams:
    """Each upstream from the marker, else the command line, else the ini file, else the
    default; with the setting it came from."""
    opts = _marker_options(item)
    config = item.config
    upstream = (DEFAULT_UPSTREAM, f"--rrproxy-upstream (default {DEFAULT_UPSTREAM})")
    for url, label in (
        (config.getini("rrproxy_upstream"), "rrproxy_upstream in the ini file"),
        (config.getoption("rrproxy_upstream"), "--rrproxy-upstream"),
        (opts.get("upstream"), "upstream= in the rrproxy marker"),
    ):
        if url and str(url).strip():
            upstream = (str(url).strip(), label)
    routes = {n: (u, f"--rrproxy-route {n}=URL (default {u})") for n, u in DEFAULT_ROUTES.items()}
    for line in config.getini("rrproxy_routes"):
        name, url = _route(line, "rrproxy_routes")
        routes[name] = (url, f"rrproxy_routes {name}={url} in the ini file")
    for text in config.getoption("rrproxy_route"):
        name, url = _route(text, "--rrproxy-route")
        routes[name] = (url, f"--rrproxy-route {name}={url}")
    marked = opts.get("routes") or {}
    if not isinstance(marked, Mapping):
        raise pytest.UsageError("@pytest.mark.rrproxy: routes must be a dict {NAME: URL}")
    for key, value in marked.items():
        name, url = _route(f"{key}={value}", "@pytest.mark.rrproxy(routes=...)")
        routes[name] = (url, f"routes={{{name!r}: {url!r}}} in the rrproxy marker")
    return Upstreams(upstream, routes)


def _settings(item: pytest.Item, db: Path, directory: Path) -> tuple[Settings, Mode, str]:
    opts = _marker_options(item)
    config = item.config
    mode = default_mode(opts.get("mode") or config.getoption("rrproxy_mode"), os.environ)
    name = opts.get("cassette") or cassette_name(item)
    where = upstreams(item)
    strict = bool(opts.get("strict", config.getoption("rrproxy_strict")))
    item.stash[_STRICT] = strict
    config_file = config.getoption("rrproxy_config")
    flags = {
        **where.settings_flags(),
        "mode": mode.value,
        "cassette": name,
        "db": str(db),
        "cassette_dir": str(directory),
        "strict": strict or None,  # else the config file's
    }
    path = Path(config_file) if config_file else None
    try:
        settings = load_settings(path, environ={}, flags=flags)
    except ConfigError as exc:
        raise pytest.UsageError(f"rrproxy: {exc}") from None
    settings = replace(settings, upstream_labels=where.settings_labels())
    if not opts.keys() & {"ignore_body_fields", "match_headers", "ignore_query_params"} and path:
        return settings, mode, settings.cassette  # the config file's [matching]
    rules = MatchRules(
        ignore_body_fields=tuple(opts.get("ignore_body_fields", ())),
        match_headers=tuple(opts.get("match_headers", ())),
        ignore_query_params=tuple(opts.get("ignore_query_params", ())),
    )
    settings = replace(settings, matching=rules)
    return settings, mode, settings.cassette


def placeholder_keys(environ: Mapping[str, str]) -> list[str]:
    """The SDK key variables to set to `PLACEHOLDER_KEY`: those with no key of their own."""
    return [
        name
        for name, alternatives in KEY_VARIABLES
        if not environ.get(name) and not any(environ.get(a) for a in alternatives)
    ]


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
        if mode is Mode.REPLAY:  # nothing reaches an API: no key needed, none recorded
            for variable in placeholder_keys(os.environ):
                monkeypatch.setenv(variable, PLACEHOLDER_KEY)
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
    if report.when == "call" and not item.stash.get(_SUMMED, False):
        item.stash[_SUMMED] = True
        _sum_up(item, proxy, report)
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


def _sum_up(item: pytest.Item, proxy: ProxyThread, report: pytest.TestReport) -> None:
    """After the test's call: its run (unused recordings, tokens replayed) goes with its
    report to the terminal summary; under strict, unused recordings fail it."""
    try:
        summary = proxy.run_summary()
    except Exception as exc:  # the proxy failed: its own error is reported at teardown
        report.sections.append(("rrproxy run", f"could not sum up the run: {exc}"))
        return
    unused = [
        f"{item.nodeid}: cassette {name!r} has {len(items)} unused recording(s): "
        + ", ".join(f"#{u.number} {u.method} {u.url}" for u in items)
        for name, items in summary.unused.items()
        if items
    ]
    report.user_properties.append(
        (
            _PROPERTY,
            json.dumps(
                {
                    "unused": unused,
                    "replayed": summary.tally.json(),
                    "priced": bool(proxy.settings.prices),
                }
            ),
        )
    )
    problems = summary.problems
    strict = item.stash.get(_STRICT, False)
    if strict and problems and report.passed:
        report.outcome = "failed"
        report.longrepr = "rrproxy strict: " + "\n".join(problems)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Gather each test's run for the summary (in the controller too, under xdist)."""
    for name, value in report.user_properties:
        if name != _PROPERTY:
            continue
        session = _current_session()
        if session is None:
            return
        data = json.loads(str(value))
        session.unused.extend(data["unused"])
        session.priced = session.priced or bool(data.get("priced"))
        r = data["replayed"]
        tally = Tally(
            r["interactions"],
            r["with_usage"],
            r["input_tokens"],
            r["output_tokens"],
            r["cached_tokens"],
            r["usd"],
            {m: 1 for m in r["no_price"]} or None,
        )
        session.tally.merge(tally)


_CONFIGS: list[pytest.Config] = []
"""The configs of the pytest runs in this process, innermost last (pytester runs one
inside another)."""


def pytest_unconfigure(config: pytest.Config) -> None:
    if config in _CONFIGS:
        _CONFIGS.remove(config)


def _current_session() -> _Session | None:
    return _CONFIGS[-1].stash.get(_SESSION, None) if _CONFIGS else None


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is None or (not session.unused and not session.tally.interactions):
        return
    terminalreporter.section("rrproxy")
    for line in session.unused:
        terminalreporter.write_line(line)
    tally = session.tally
    money = f"; ${tally.dollars:,.4f} not spent" if tally.with_usage else ""
    terminalreporter.write_line(
        f"replayed {tally.interactions} interaction(s), {tally.tokens:,} tokens "
        f"({tally.input_tokens:,} in, {tally.output_tokens:,} out, "
        f"{tally.cached_tokens:,} cached){money}"
    )
    for model in sorted(tally.unpriced or {}) if session.priced else ():
        terminalreporter.write_line(f"no price for model {model} (add it to [prices])")
