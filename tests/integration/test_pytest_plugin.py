"""The pytest plugin, run by pytester as a user runs it: record against a real upstream,
replay offline with the upstream gone, and a replay miss failing the test with the diff."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp import web

from proxy.cassettes import file_format as cassette_file
from proxy.config import Mode
from proxy.pytest_plugin import default_mode
from tests.conftest import example_events, sse_event
from tests.threaded import ThreadedServer

pytest_plugins = ["pytester"]

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

ASK = """
import openai
import pytest


def ask(text, **extra):
    client = openai.OpenAI(api_key="sk-test-key", max_retries=0)  # OPENAI_BASE_URL: the proxy
    with client:
        stream = client.responses.create(model="gpt-4o", input=text, stream=True, **extra)
        return "".join(e.delta for e in stream if e.type == "response.output_text.delta")
"""


class Upstream(ThreadedServer):
    """A real aiohttp server streaming the recorded OpenAI Responses events, on its own
    event loop in a thread (the tests here are sync, as pytester is)."""

    def __init__(self) -> None:
        self.calls = 0
        super().__init__()

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for payload in example_events():
            await response.write(sse_event(payload))
        await response.write_eof()
        return response

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/responses", self._responses)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("CI", raising=False)
    for name in ("OPENAI_BASE_URL", "ANTHROPIC_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    pytester.makeini(INI)
    return pytester


def test_record_then_replay_offline_then_a_miss_fails_with_the_diff(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(
        test_chat=ASK
        + """
def test_hello(rrproxy):
    assert ask("Say hello") == "Hello, World!"
    assert rrproxy.mode.value in ("auto", "replay")
"""
    )
    result = project.runpytest_subprocess(
        "--rrproxy-upstream", upstream.url, "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    assert upstream.calls == 1
    file = project.path / "cassettes" / "test_chat" / "test_hello.cassette.jsonl"
    header, recs = cassette_file.loads(file.read_bytes())
    assert header.name == "test_hello"
    assert [r.request.url for r in recs] == [f"{upstream.url}/v1/responses"]
    # (aiohttp's pure-Python parser keeps the name's case as sent; the C parser normalises it)
    headers = [(name.lower(), value) for name, value in recs[0].request.headers]
    assert ("authorization", "[REDACTED]") in headers
    recorded = file.read_bytes()

    upstream.stop()  # offline from here on
    monkeypatch.setenv("CI", "true")  # CI: replay by default
    result = project.runpytest_subprocess(
        "--rrproxy-upstream", upstream.url, "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    assert file.read_bytes() == recorded  # replay writes nothing

    project.makepyfile(
        test_chat=ASK
        + """
def test_hello(rrproxy):
    assert ask("Say goodbye") == "Hello, World!"
"""
    )
    result = project.runpytest_subprocess(
        "--rrproxy-upstream", upstream.url, "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(['*body field "input": "Say goodbye" != "Say hello"*'])

    # Even when the code under test swallows the error, the miss fails the test.
    project.makepyfile(
        test_chat=ASK
        + """
def test_hello(rrproxy):
    try:
        ask("Say goodbye")
    except openai.NotFoundError:
        pass
"""
    )
    result = project.runpytest_subprocess(
        "--rrproxy-upstream", upstream.url, "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*rrproxy replay miss (1):*",
            "*no recording in cassette 'test_hello'*",
            '*body field "input": "Say goodbye" != "Say hello"*',
        ]
    )


def test_the_marker_names_the_cassette_and_sets_the_matching(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = (
        ASK
        + """
@pytest.mark.rrproxy(cassette="shared-hello", ignore_body_fields=["metadata.run"])
def test_marked():  # no fixture named: the marker is enough
    assert ask("Say hello", metadata={"run": "RUN"}) == "Hello, World!"


class TestGroup:
    def test_in_class(self, rrproxy):
        assert rrproxy.cassette == "TestGroup.test_in_class"
        assert ask("Say hello") == "Hello, World!"


@pytest.mark.parametrize("who", ["a/b"])
def test_param(rrproxy, who):
    assert rrproxy.cassette_file.name == "test_param[a_b].cassette.jsonl"
    assert ask(f"Say hello {who}") == "Hello, World!"


@pytest.mark.asyncio
async def test_async(rrproxy):  # the proxy has its own loop: an async client works too
    async with openai.AsyncOpenAI(api_key="sk-test-key", max_retries=0) as client:
        stream = await client.responses.create(model="gpt-4o", input="Async hi", stream=True)
        assert [e.type async for e in stream][-1] == "response.completed"
"""
    )
    project.makepyfile(test_marks=template.replace("RUN", "first"))
    args = (
        "--rrproxy-upstream",
        upstream.url,
        "--rrproxy-mode",
        "record",
        "-p",
        "no:cacheprovider",
    )
    project.runpytest_subprocess(*args).assert_outcomes(passed=4)
    names = sorted(p.name for p in (project.path / "cassettes" / "test_marks").iterdir())
    assert names == [
        "TestGroup.test_in_class.cassette.jsonl",
        "shared-hello.cassette.jsonl",
        "test_async.cassette.jsonl",
        "test_param[a_b].cassette.jsonl",
    ]
    assert upstream.calls == 4

    upstream.stop()
    project.makepyfile(test_marks=template.replace("RUN", "second"))  # an ignored field
    args = (
        "--rrproxy-upstream",
        upstream.url,
        "--rrproxy-mode",
        "replay",
        "-p",
        "no:cacheprovider",
    )
    project.runpytest_subprocess(*args).assert_outcomes(passed=4)

    project.makepyfile(
        test_bad="""
import pytest

@pytest.mark.rrproxy(casette="typo")
def test_x():
    pass
"""
    )
    result = project.runpytest_subprocess("test_bad.py", *args)
    assert result.ret != 0
    assert "unknown option 'casette'" in result.stdout.str() + result.stderr.str()


def test_xdist_workers_each_run_their_own_proxy(
    project: pytest.Pytester, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    tests = "".join(
        f"""
def test_{i}(rrproxy):
    assert ask("Say hello {i}") == "Hello, World!"
"""
        for i in range(6)
    )
    project.makepyfile(test_many=ASK + tests)
    args = ("--rrproxy-upstream", upstream.url, "-p", "no:cacheprovider", "-n", "2")
    project.runpytest_subprocess(*args, "--rrproxy-mode", "auto").assert_outcomes(passed=6)
    assert upstream.calls == 6
    files = sorted((project.path / "cassettes" / "test_many").iterdir())
    assert [f.name for f in files] == [f"test_{i}.cassette.jsonl" for i in range(6)]
    for f in files:
        cassette_file.loads(f.read_bytes())  # each file whole

    upstream.stop()
    monkeypatch.setenv("CI", "1")
    project.runpytest_subprocess(*args).assert_outcomes(passed=6)


@pytest.mark.parametrize(
    "option, ci, expected",
    [
        (None, None, Mode.AUTO),
        (None, "true", Mode.REPLAY),
        (None, "1", Mode.REPLAY),
        (None, "false", Mode.AUTO),
        (None, "", Mode.AUTO),
        ("record", "true", Mode.RECORD),
        ("auto", "true", Mode.AUTO),
    ],
)
def test_the_default_mode_is_replay_on_ci(
    option: str | None, ci: str | None, expected: Mode
) -> None:
    assert default_mode(option, {} if ci is None else {"CI": ci}) is expected
