"""The export scan finds key-like strings however a stream carries them: split across
events, JSON-escaped, in a header named like a credential; and it says which events."""

from __future__ import annotations

import itertools
import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.core.records import Event, Request, ResponseHead
from proxy.core.redact import REDACTED, Redactor
from proxy.core.secrets_scan import Finding, scan_request, scan_response
from tests.conftest import example_events, sse_event

OPENAI_KEY = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF"
ANTHROPIC_KEY = "sk-ant-api03-" + "x7Yq2Lm9Nc4Rt8Vb1Kd6Hs3Jf5Gp0Wz"
SSE = ResponseHead(200, (("Content-Type", "text/event-stream"),))


def events(*payloads: bytes) -> tuple[Event, ...]:
    return tuple(Event(float(i), p) for i, p in enumerate(payloads))


def pieces(text: str, *cuts: int) -> list[str]:
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def openai_responses(deltas: list[str]) -> list[bytes]:
    """An OpenAI Responses stream whose output text comes in `deltas`."""
    head = [sse_event({"type": "response.created", "response": {"id": "resp_1"}})]
    return head + [
        sse_event(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "delta": d,
                "obfuscation": "Qx7",
            }
        )
        for d in deltas
    ]


def anthropic_messages(deltas: list[str]) -> list[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    return [event("message_start", {"type": "message_start", "message": {"id": "msg_1"}})] + [
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}},
        )
        for d in deltas
    ]


def chat_completions(deltas: list[str]) -> list[bytes]:
    return [
        b"data: "
        + json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": d}}]}).encode()
        + b"\n\n"
        for d in deltas
    ] + [b"data: [DONE]\n\n"]


def ollama_ndjson(deltas: list[str]) -> list[bytes]:
    return [
        json.dumps({"message": {"role": "assistant", "content": d}}).encode() + b"\n"
        for d in deltas
    ]


def kinds(found: list[Finding]) -> list[tuple[str, str, int | None, int | None]]:
    return [(f.where, f.kind, f.event, f.last_event) for f in found]


@pytest.mark.parametrize(
    ("stream", "key", "kind", "first"),
    [
        (openai_responses, OPENAI_KEY, "OpenAI-style API key", 2),
        (anthropic_messages, ANTHROPIC_KEY, "Anthropic API key", 2),
        (chat_completions, OPENAI_KEY, "OpenAI-style API key", 1),
        (ollama_ndjson, OPENAI_KEY, "OpenAI-style API key", 1),
    ],
    ids=["openai-responses", "anthropic", "chat-completions", "ollama-ndjson"],
)
def test_a_key_split_across_deltas_is_found_with_its_event_range(
    stream: Any, key: str, kind: str, first: int
) -> None:
    text = "Your key is " + key + ", keep it safe."
    payloads = stream(pieces(text, 14, 30))  # "...sk", "-proj-Ab3dE5gH7j", ...: none a key
    found = list(scan_response(SSE, events(*payloads)))
    assert kinds(found) == [(f"events {first}-{first + 2}", kind, first, first + 2)]
    assert found[0].preview == key[:8] + "…"
    assert str(found[0]) == f"events {first}-{first + 2}: {key[:8]}… ({kind})"


def test_a_key_split_across_plain_chunks_is_found() -> None:
    body = f"log line one\nthe key: {OPENAI_KEY}\nlast line\n".encode()
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    found = list(
        scan_response(ResponseHead(200, (("Content-Type", "text/plain"),)), events(*chunks))
    )
    start = body.index(b"sk-") // 7 + 1
    end = (body.index(b"sk-") + len(OPENAI_KEY) - 1) // 7 + 1
    assert kinds(found) == [(f"events {start}-{end}", "OpenAI-style API key", start, end)]


def test_a_json_escaped_key_is_found_in_one_event() -> None:
    escaped = OPENAI_KEY.replace("p", "\\u0070", 1)  # sk-\u0070roj-...
    payload = b'data: {"delta": "here: ' + escaped.encode() + b'"}\n\n'
    assert b"sk-proj" not in payload
    found = list(scan_response(SSE, events(b": ping\n\n", payload)))
    assert kinds(found) == [("event 2", "OpenAI-style API key", 2, 2)]


def test_a_json_escaped_key_split_across_deltas_is_found() -> None:
    escaped = [json.dumps(p)[1:-1] for p in pieces("key " + OPENAI_KEY, 6, 18)]
    payloads = [f'data: {{"delta": "{e}"}}\n\n'.encode() for e in escaped]
    payloads[1] = payloads[1].replace(b"p", b"\\u0070", 1)
    found = list(scan_response(SSE, events(*payloads)))
    assert kinds(found) == [("events 1-3", "OpenAI-style API key", 1, 3)]


def test_escaped_slashes_do_not_hide_a_token() -> None:
    token = "Bearer abcdEFGH/ijklMNOP/qrstUVWX"
    body = json.dumps({"note": token}).replace("/", "\\/").encode()
    assert b"abcdEFGH/" not in body
    found = list(scan_request(Request("POST", "https://h/v1", (), body)))
    assert [(f.where, f.kind) for f in found] == [("request body", "bearer token")]


def test_a_key_in_one_event_is_reported_once() -> None:
    payloads = openai_responses(["key: " + OPENAI_KEY])
    found = list(scan_response(SSE, events(*payloads)))
    assert kinds(found) == [("event 2", "OpenAI-style API key", 2, 2)]


def test_the_real_openai_stream_holds_nothing() -> None:
    payloads = [sse_event(e) for e in example_events()]
    assert list(scan_response(SSE, events(*payloads))) == []


@pytest.mark.parametrize(
    "deltas",
    [
        ["We ask-for ", "the task-list, a risk-", "assessment of the mask-making desk"],
        ["Whi", "sk-ingredients-", "thoroughly_beforehand"],  # "whisk-...": not "sk-..."
        ["Whisk", "-ingredients-thoroughly_beforehand"],
    ],
)
def test_ordinary_text_split_across_deltas_is_not_a_key(deltas: list[str]) -> None:
    payloads = openai_responses(deltas)
    assert list(scan_response(SSE, events(*payloads))) == []
    chunks = [d.encode() for d in deltas]
    assert list(scan_response(ResponseHead(200, ()), events(*chunks))) == []


@pytest.mark.parametrize(
    ("headers", "where"),
    [
        ((("X-Auth-Token", "abc123"),), ["response header 'X-Auth-Token'"]),
        ((("X-Custom-Secret", "abc123"),), ["response header 'X-Custom-Secret'"]),
        ((("x-ratelimit-remaining-tokens", "4999"),), []),
        ((("anthropic-ratelimit-tokens-remaining", "4999"),), []),
        ((("X-Auth-Token", REDACTED), ("Content-Type", "text/plain")), []),
    ],
)
def test_a_header_named_like_a_credential_is_flagged_unless_redacted(
    headers: tuple[tuple[str, str], ...], where: list[str]
) -> None:
    assert [f.where for f in scan_response(ResponseHead(200, headers), ())] == where


def test_the_scan_follows_the_configured_allow_list() -> None:
    headers = (("X-Trace-Token", "t-1"),)
    request = Request("GET", "https://h/p?trace_token=t-1", headers, b"")
    assert len(list(scan_request(request))) == 2
    allowing = Redactor(allow=frozenset({"x-trace-token", "trace_token"}))
    assert list(scan_request(request, allowing)) == []


@pytest.mark.parametrize(
    "url",
    [
        "https://h/o?X-Amz-Signature=abc&X-Amz-Credential=AK%2F2025",
        "https://h/o?subscription-key=abc",
        "https://h/o?api-key=abc",
        "https://h/o?password=abc",
    ],
)
def test_a_credential_param_that_is_not_redacted_is_flagged(url: str) -> None:
    found = list(scan_request(Request("GET", url, (), b"")))
    assert found and all(f.where.startswith("query parameter") for f in found)


def long_stream(total: int, key_at: int) -> Iterator[Event]:
    """`total` bytes of deltas, a key split across two of them near `key_at` (lazily)."""
    filler = sse_event({"type": "response.output_text.delta", "delta": "lorem ipsum " * 80})
    sent = 0
    while sent < total:
        if key_at <= sent < key_at + len(filler):
            for part in pieces(OPENAI_KEY, 10):
                yield Event(0.0, sse_event({"type": "response.output_text.delta", "delta": part}))
        yield Event(0.0, filler)
        sent += len(filler)


def test_memory_stays_bounded_over_a_long_stream() -> None:
    total = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        found = list(scan_response(SSE, long_stream(total, key_at=total // 2)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [f.kind for f in found] == ["OpenAI-style API key"]
    assert peak < 256 * 1024  # a 4 MiB stream (never held whole), scanned in a small window
