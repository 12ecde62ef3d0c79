"""The pytest plugin with the SDKs as CI and users run them (pytester, in a subprocess):
a replay with no API key set, the Anthropic route pointed anywhere by option, ini file or
marker (and the errors naming that setting), and no empty cassette directories."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from proxy.pytest_plugin import PLACEHOLDER_KEY, placeholder_keys
from tests.conftest import example_events, sse_event
from tests.integration.test_sdk_clients import ANTHROPIC_EVENTS
from tests.threaded import ThreadedServer

pytest_plugins = ["pytester"]
# Each test runs pytest in a subprocess two or three times, each importing both SDKs: on a
# loaded 2-core machine that takes longer than the suite's default timeout.
pytestmark = pytest.mark.timeout(360)

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

CLIENTS = """
import os

import anthropic
import openai
import pytest


def ask_openai(text):
    with openai.OpenAI(max_retries=0) as client:  # key and base URL from the environment
        stream = client.responses.create(model="gpt-4o", input=text, stream=True)
        return "".join(e.delta for e in stream if e.type == "response.output_text.delta")


def ask_anthropic(text):
    with anthropic.Anthropic(max_retries=0) as client:  # ANTHROPIC_BASE_URL: /anthropic
        with client.messages.stream(
            model="claude-rrproxy-test",
            max_tokens=64,
            messages=[{"role": "user", "content": text}],
        ) as stream:
            return "".join(stream.text_stream)
"""

BOTH = (
    CLIENTS
    + """
def test_both(rrproxy):
    assert ask_openai("Say hello") == "Hello, World!"
    assert ask_anthropic("Say hello") == "Hello, World!"
    print("KEYS", os.environ["OPENAI_API_KEY"], os.environ["ANTHROPIC_API_KEY"])
"""
)

KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")


class Upstream(ThreadedServer):
    """A real aiohttp server with OpenAI's and Anthropic's streaming endpoints, on its own
    event loop in a thread (pytester runs are synchronous). Counts the calls by path and
    keeps the key each one carried."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.keys: list[str] = []
        super().__init__()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.calls[request.path] += 1
        key = request.headers.get("X-Api-Key") or request.headers.get("Authorization", "")
        self.keys.append(key)
        await request.read()
        events: list[dict[str, Any]] = (
            ANTHROPIC_EVENTS if request.path == "/v1/messages" else example_events()
        )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for payload in events:
            await response.write(sse_event(payload))
        await response.write_eof()
        return response

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self._stream)
        app.router.add_post("/v1/messages", self._stream)


def _serving() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    yield from _serving()


@pytest.fixture
def other_upstream() -> Iterator[Upstream]:
    yield from _serving()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("CI", raising=False)
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", *KEYS):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    pytester.makeini(INI)
    return pytester


def _run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(*args, "-p", "no:cacheprovider", "-s")


def test_a_ci_replay_needs_no_api_key_and_a_real_key_is_never_replaced(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_both=BOTH)
    routes = ("--rrproxy-upstream", upstream.url, "--rrproxy-route", f"anthropic={upstream.url}")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    _run(project, *routes).assert_outcomes(passed=1)  # auto: recorded with the real keys
    assert upstream.calls == {"/v1/responses": 1, "/v1/messages": 1}
    # (the anthropic SDK sends its key as X-Api-Key or as a bearer token, by version)
    assert [k.removeprefix("Bearer ") for k in upstream.keys] == ["sk-real-openai", "sk-ant-real"]
    upstream.stop()

    # CI: replay, and no key anywhere. The SDKs refuse to start without one; the plugin
    # gives them a placeholder.
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CI", "true")
    result = _run(project, *routes)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*KEYS {PLACEHOLDER_KEY} {PLACEHOLDER_KEY}*"])

    # A key that is set stays as it is.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-mine")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-mine")
    result = _run(project, *routes)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*KEYS sk-mine sk-ant-mine*"])


def test_without_the_placeholder_the_sdk_refuses_to_start(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the placeholder is for, and why only replay gets one: in auto mode (which may
    reach the API and record its answer) a missing key stays missing."""
    project.makepyfile(test_both=BOTH)
    result = _run(project, "--rrproxy-upstream", upstream.url, "--rrproxy-mode", "auto")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*OPENAI_API_KEY*"])
    assert upstream.calls == {}


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]),
        ({"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}, ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]),
        ({"OPENAI_API_KEY": "sk-x"}, ["ANTHROPIC_API_KEY"]),
        ({"ANTHROPIC_API_KEY": "sk-ant-x"}, ["OPENAI_API_KEY"]),
        ({"ANTHROPIC_AUTH_TOKEN": "token"}, ["OPENAI_API_KEY"]),  # its other credential
        ({"OPENAI_API_KEY": "a", "ANTHROPIC_API_KEY": "b"}, []),
    ],
)
def test_placeholders_go_only_where_no_key_is(environ: dict[str, str], expected: list[str]) -> None:
    assert placeholder_keys(environ) == expected


def test_the_anthropic_route_is_set_by_option_ini_or_marker(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    project.makepyfile(test_both=BOTH)
    record = ("--rrproxy-mode", "record", "--rrproxy-upstream", upstream.url)

    _run(project, *record, "--rrproxy-route", f"anthropic={upstream.url}").assert_outcomes(passed=1)
    assert upstream.calls == {"/v1/responses": 1, "/v1/messages": 1}

    project.path.joinpath("pytest.ini").write_text(
        INI + f"rrproxy_upstream = {upstream.url}\nrrproxy_routes =\n    anthropic={upstream.url}\n"
    )
    _run(project, "--rrproxy-mode", "record").assert_outcomes(passed=1)
    assert upstream.calls == {"/v1/responses": 2, "/v1/messages": 2}

    project.makeini(INI)
    project.makepyfile(
        test_both=CLIENTS
        + f"""
@pytest.mark.rrproxy(upstream="{upstream.url}", routes={{"anthropic": "{upstream.url}"}})
def test_marked(rrproxy):
    assert rrproxy.route_url("anthropic") == rrproxy.anthropic_base_url
    assert ask_anthropic("Say hello") == "Hello, World!"
    assert ask_openai("Say hello") == "Hello, World!"
"""
    )
    _run(project, "--rrproxy-mode", "record").assert_outcomes(passed=1)
    assert upstream.calls == {"/v1/responses": 3, "/v1/messages": 3}


def test_a_route_of_ones_own_reaches_its_upstream(
    project: pytest.Pytester, upstream: Upstream
) -> None:
    project.makepyfile(
        test_own="""
import httpx


def test_own(rrproxy):
    url = rrproxy.route_url("local") + "/v1/responses"
    with httpx.stream("POST", url, json={"model": "m", "input": "hi"}) as response:
        body = b"".join(response.iter_bytes())
    assert response.headers["Rrproxy-Source"] == "recorded"
    assert body.count(b"event: ") > 3
"""
    )
    _run(project, "--rrproxy-route", f"/local={upstream.url}").assert_outcomes(passed=1)
    assert upstream.calls == {"/v1/responses": 1}


def test_a_connection_error_names_the_setting_that_chose_the_upstream(
    project: pytest.Pytester, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    project.makepyfile(
        test_anthropic=CLIENTS
        + """
def test_anthropic(rrproxy):
    assert ask_anthropic("Say hello") == "Hello, World!"
"""
    )
    nowhere = f"http://127.0.0.1:{closed_port}"

    # An upstream that cannot be reached: the connection error names the route's option,
    # not --upstream.
    result = _run(project, "--rrproxy-route", f"anthropic={nowhere}")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert f"is it running, and is --rrproxy-route anthropic={nowhere} right?" in out
    assert "--upstream right" not in out

    project.makepyfile(
        test_anthropic=CLIENTS
        + f"""
@pytest.mark.rrproxy(routes={{"anthropic": "{nowhere}"}})
def test_anthropic():
    ask_anthropic("Say hello")
"""
    )
    result = _run(project)
    result.assert_outcomes(failed=1)
    marker = f"routes={{'anthropic': '{nowhere}'}} in the rrproxy marker"
    assert f"is it running, and is {marker} right?" in result.stdout.str()


def test_a_miss_names_the_setting_that_moved_the_upstream(
    project: pytest.Pytester,
    upstream: Upstream,
    other_upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recorded from one upstream, replayed with the route pointing at another: the miss
    says which setting chose this request's upstream."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-real")
    project.makepyfile(
        test_anthropic=CLIENTS
        + """
def test_anthropic(rrproxy):
    assert ask_anthropic("Say hello") == "Hello, World!"
"""
    )
    _run(project, "--rrproxy-route", f"anthropic={upstream.url}").assert_outcomes(passed=1)
    assert upstream.calls == {"/v1/messages": 1}
    moved = ("--rrproxy-mode", "replay", "--rrproxy-route", f"anthropic={other_upstream.url}")
    result = _run(project, *moved)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*upstream: {other_upstream.url} != {upstream.url}*"
            f"This request's upstream is set by --rrproxy-route anthropic={other_upstream.url}*"
        ]
    )
    assert other_upstream.calls == {}


def test_bad_routes_are_usage_errors(project: pytest.Pytester) -> None:
    project.makepyfile(test_x="def test_x(rrproxy):\n    pass\n")
    result = _run(project, "--rrproxy-route", "anthropic")
    assert result.ret != 0
    assert "--rrproxy-route: 'anthropic' is not NAME=URL" in result.stdout.str() + (
        result.stderr.str()
    )
    result = _run(project, "--rrproxy-route", "anthropic=ftp://x")
    assert result.ret != 0
    assert "routes" in result.stdout.str() + result.stderr.str()
    project.makepyfile(
        test_x="""
import pytest

@pytest.mark.rrproxy(routes=["anthropic=http://127.0.0.1:1"])
def test_x():
    pass
"""
    )
    result = _run(project)
    assert result.ret != 0
    assert "routes must be a dict {NAME: URL}" in result.stdout.str() + result.stderr.str()


def test_a_replay_that_records_nothing_leaves_no_cassette_directory(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_quiet="""
import pytest


def test_no_requests(rrproxy):
    assert rrproxy.cassette_file.parent.name == "test_quiet"


@pytest.mark.rrproxy(cassette="marked")
def test_marked():
    pass
"""
    )
    monkeypatch.setenv("CI", "1")  # a CI run: replay
    _run(project, "--rrproxy-upstream", upstream.url).assert_outcomes(passed=2)
    assert not (project.path / "cassettes").exists()
    monkeypatch.delenv("CI")
    _run(project, "--rrproxy-upstream", upstream.url).assert_outcomes(passed=2)  # auto
    assert not (project.path / "cassettes").exists()
