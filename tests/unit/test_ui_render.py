# ruff: noqa: E501  (the streams below are tables of events, one event a line)
"""The UI's pure parts, table-driven: SSE parts of an event, escapes, JSON folds, curl, and
the LLM summaries of OpenAI Responses, OpenAI Chat and Anthropic Messages streams."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from proxy.core.records import Request
from proxy.ui import render
from proxy.ui.llm import MAX_TEXT, Summary
from tests.conftest import example_events


@pytest.mark.parametrize(
    ("raw", "name", "data"),
    [
        (b"event: ping\ndata: {}\n\n", "ping", "{}"),
        (b"data: a\ndata: b\n\n", None, "a\nb"),
        (b"event: x\r\ndata:no-space\r\n\r\n", "x", "no-space"),
        (b": a comment\n\n", None, ": a comment"),
        (b'{"n": 1}\n', None, '{"n": 1}'),
        (b"event: only-a-name\n\n", "only-a-name", None),
        (b"", None, None),
    ],
)
def test_sse_parts(raw: bytes, name: str | None, data: str | None) -> None:
    assert render.sse_parts(raw) == (name, data)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"data: x\r\n\n", "data: x\\r\\n\\n"),
        (b"tab\there", "tab\\there"),
        (b"\x00\x1b[31m", "\\x00\\x1b[31m"),
        (b"\xff\xfe", "\\xff\\xfe"),
        ("é".encode(), "é"),
    ],
)
def test_escaped(raw: bytes, shown: str) -> None:
    assert render.escaped(raw) == shown


def test_escaped_cuts_a_huge_event() -> None:
    shown = render.escaped(b"x" * (render.MAX_SHOWN_BYTES + 5))
    assert shown.endswith("... (5 more bytes)")


def test_pretty_json_and_body_views() -> None:
    assert render.pretty_json('{"a":1}') == '{\n  "a": 1\n}'
    assert render.pretty_json("[1") is None and render.pretty_json("text") is None
    assert render.pretty_json(None) is None
    kind, tree = render.body_view(b'{"input": "<script>", "n": [1, true, null], "e": {}}')
    assert kind == "tree"
    assert "&lt;script&gt;" in tree and "<script>" not in tree  # escaped
    assert '<details class="j" open>' in tree and "3 items" in tree
    assert render.body_view(b"") == ("empty", "")
    assert render.body_view(b"plain text") == ("text", "plain text")
    assert render.body_view(b"\xff\x00") == ("text", "\\xff\\x00")
    big = json.dumps({"k": "v" * render.MAX_TREE_BYTES}).encode()
    kind, text = render.body_view(big)
    assert kind == "text" and text.startswith('{\n  "k"')


def test_curl_is_a_command_a_shell_reads_back() -> None:
    request = Request(
        "POST",
        "https://api.openai.com/v1/responses?a=1&b='x'",
        (("Authorization", "[REDACTED]"), ("Host", "h"), ("Content-Type", "application/json")),
        b'{"input": "it\'s"}',
    )
    words = shlex.split(render.curl(request))
    assert words == [
        "curl", "-N", "-X", "POST", "https://api.openai.com/v1/responses?a=1&b='x'",
        "-H", "Authorization: [REDACTED]", "-H", "Content-Type: application/json",
        "--data-binary", '{"input": "it\'s"}',
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("n", "shown"),
    [(None, ""), (0, "0 B"), (1023, "1023 B"), (2048, "2.0 KiB"), (3 * 2**20, "3.0 MiB")],
)
def test_size(n: int | None, shown: str) -> None:
    assert render.size(n) == shown


def feed(events: list[dict[str, Any] | str]) -> Summary:
    s = Summary()
    for e in events:
        s.feed(e if isinstance(e, str) else json.dumps(e))
    return s


def test_openai_responses_stream() -> None:
    s = feed(example_events())
    assert s.kind == "OpenAI Responses" and s.text == "Hello, World!"
    assert s.model == "gpt-4o-2024-07-18" and s.usage["total_tokens"] == 512
    tools = feed(
        [
            {"type": "response.output_item.added", "item": {"type": "function_call", "id": "fc_1", "name": "get_weather", "call_id": "call_1"}},
            {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": '{"city":'},
            {"type": "response.function_call_arguments.delta", "item_id": "fc_1", "delta": ' "Paris"}'},
            {"type": "response.output_item.done", "item": {"type": "function_call", "id": "fc_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ]
    )  # fmt: skip
    assert [(t.name, t.id, t.arguments) for t in tools.tools] == [
        ("get_weather", "call_1", '{"city": "Paris"}')
    ]


def test_openai_chat_stream() -> None:
    def chunk(delta: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {
            "object": "chat.completion.chunk",
            "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta}],
            **more,
        }

    s = feed(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({"tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "lookup", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": 1}'}}]}),
            {"object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
            "[DONE]",
        ]
    )  # fmt: skip
    assert s.kind == "OpenAI Chat" and s.text == "Hello" and s.model == "gpt-4o"
    assert [(t.name, t.id, t.arguments) for t in s.tools] == [("lookup", "call_9", '{"q": 1}')]
    assert s.usage == {"prompt_tokens": 9, "completion_tokens": 3}


def test_anthropic_messages_stream() -> None:
    s = feed(
        [
            {"type": "message_start", "message": {"model": "claude-sonnet-4", "usage": {"input_tokens": 25, "output_tokens": 1}}},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me check."}},
            {"type": "content_block_stop", "index": 0},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"q": '}},
            {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '"rrproxy"}'}},
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42}},
            {"type": "message_stop"},
        ]
    )  # fmt: skip
    assert s.kind == "Anthropic Messages" and s.model == "claude-sonnet-4"
    assert s.text == "Let me check."
    assert [(t.name, t.id, t.arguments) for t in s.tools] == [
        ("search", "toolu_1", '{"q": "rrproxy"}')
    ]
    assert s.usage == {"input_tokens": 25, "output_tokens": 42}


@pytest.mark.parametrize("data", [None, "", "[DONE]", "{not json", "[1, 2]", '{"type": "other"}'])
def test_what_is_not_an_llm_stream_says_nothing(data: str | None) -> None:
    s = Summary()
    s.feed(data)
    assert s.kind is None and s.text == "" and not s.tools and not s.usage


def test_the_text_is_bounded() -> None:
    delta = {"type": "response.output_text.delta", "delta": "x" * (MAX_TEXT - 1)}
    s = feed([delta, delta])
    assert len(s.text) == MAX_TEXT and s.truncated
