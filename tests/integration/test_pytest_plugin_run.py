"""The pytest plugin's run summary, run by pytester as a user runs it: the terminal summary
names each test whose cassette had recordings it never used and counts what was replayed
and saved; `--rrproxy-strict` (or the marker's `strict=True`) fails such a test."""

from __future__ import annotations

import pytest

from tests.integration.test_pytest_plugin import ASK, Upstream, project, upstream  # noqa: F401

pytest_plugins = ["pytester"]

TESTS = (
    ASK
    + """
def test_twice(rrproxy):
    assert ask("Say hello") == "Hello, World!"
    if rrproxy.mode.value == "auto":  # recording: a second answer the replay will not ask for
        assert ask("Say hello again") == "Hello, World!"


@pytest.mark.rrproxy(strict=True)
def test_marked_strict():
    assert ask("Say hello") == "Hello, World!"
"""
)

PRICES = """
[prices."gpt-4o"]
input = 2.5
output = 10.0
cached_input = 1.25
"""


def test_unused_recordings_are_summed_up_and_fail_strict_tests(
    project: pytest.Pytester,  # noqa: F811
    upstream: Upstream,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project.makepyfile(test_chat=TESTS)
    result = project.runpytest_subprocess(
        "--rrproxy-upstream", upstream.url, "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=2)  # recording: every recording is used
    assert upstream.calls == 3
    assert "unused recording" not in result.stdout.str()

    upstream.stop()
    monkeypatch.setenv("CI", "true")  # replay
    config = project.path / "rrproxy.toml"
    config.write_text(PRICES)
    result = project.runpytest_subprocess(
        "--rrproxy-upstream",
        upstream.url,
        "--rrproxy-config",
        str(config),
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)  # not strict: said, not failed
    result.stdout.fnmatch_lines(
        [
            "*= rrproxy =*",
            "test_chat.py::test_twice: cassette 'test_twice' has 1 unused recording(s): "
            "#2 POST http://127.0.0.1:*/v1/responses",
            "replayed 2 interaction(s), 2,042 tokens (1,086 in, 956 out, 468 cached); "
            "$0.0117 not spent",
        ]
    )
    assert "no price" not in result.stdout.str()

    config.write_text(PRICES.replace('"gpt-4o"', '"gpt-4.1"'))  # a table without the model
    result = project.runpytest_subprocess(
        "--rrproxy-upstream",
        upstream.url,
        "--rrproxy-strict",
        "--rrproxy-config",
        str(config),
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*rrproxy strict: cassette 'test_twice': 1 recording(s) never used in this run: #2*",
            "no price for model gpt-4o-2024-07-18 (add it to [prices])",
        ]
    )
    said = [line for line in result.stdout.lines if line.startswith("no price for model")]
    assert len(said) == 1  # two tests replayed the model: said once
