"""Usage read off answers (table-driven), the price table and the tally."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from proxy.core.prices import Price, Tally, cost, parse_prices, price_for
from proxy.core.usage import MAX_JSON_BYTES, Usage, UsageMeter, usage_of
from tests.conftest import example_events, sse_event
from tests.llm_streams import (
    ANTHROPIC_CACHED,
    ANTHROPIC_JSON,
    ANTHROPIC_MODEL,
    CHAT_JSON,
    CHAT_MODEL,
    RESPONSES_JSON,
    anthropic_sse,
    chat_sse,
)

SSE = "text/event-stream; charset=utf-8"
JSON = "application/json"


def responses_sse() -> list[bytes]:
    return [sse_event(p) for p in example_events()]


def split_in_two(events: list[bytes]) -> list[bytes]:
    """The same body cut elsewhere: a JSON body arrives in chunks."""
    body = b"".join(events)
    return [body[: len(body) // 2], body[len(body) // 2 :]]


CASES = [
    # the real OpenAI Responses stream: its numbers as sent (they do not add up)
    ("responses stream", SSE, None, responses_sse(), Usage("gpt-4o-2024-07-18", 543, 478, 234)),
    ("chat stream, include_usage", SSE, None, chat_sse(), Usage(CHAT_MODEL, 19, 4, 0)),
    # Anthropic: cache reads are input too (as OpenAI counts them), and are the cached ones
    ("anthropic stream, cache read", SSE, None, anthropic_sse(),
     Usage(ANTHROPIC_MODEL, 12 + 2048, 6, 2048)),
    ("chat JSON", JSON, None, split_in_two([json.dumps(CHAT_JSON).encode()]),
     Usage(CHAT_MODEL, 1200, 5, 1024)),
    ("anthropic JSON", "application/json", None, [json.dumps(ANTHROPIC_JSON).encode()],
     Usage(ANTHROPIC_MODEL, 10, 7, 0)),
    ("responses JSON", "application/json; charset=utf-8", None,
     [json.dumps(RESPONSES_JSON).encode()], Usage("gpt-4o-2024-08-06", 36, 87, 0)),
    ("ollama NDJSON", "application/x-ndjson", None,
     [b'{"model":"llama3.2","response":"Hi","done":false}\n',
      b'{"model":"llama3.2","response":"","done":true,"prompt_eval_count":26,"eval_count":3}\n'],
     Usage("llama3.2", 26, 3, 0)),
    # no usage: no guess
    ("chat stream without include_usage", SSE, None, chat_sse()[:4] + chat_sse()[-1:], None),
    ("plain text", "text/plain", None, [b'{"usage": {"input_tokens": 1}}'], None),
    ("JSON without usage", JSON, None, [b'{"data": [{"id": "gpt-4o"}]}'], None),
    ("not JSON", JSON, None, [b"<html>"], None),
    ("gzip, as sent", JSON, "gzip", [gzip.compress(json.dumps(CHAT_JSON).encode())], None),
    ("negative count", JSON, None, [b'{"model":"m","usage":{"prompt_tokens":-1}}'], None),
    ("count as text", JSON, None, [b'{"model":"m","usage":{"input_tokens":"5"}}'], None),
    ("boolean count", JSON, None, [b'{"usage":{"input_tokens":true,"output_tokens":1}}'], None),
    ("usage not an object", SSE, None, [b'data: {"usage": [1, 2]}\n\n'], None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("content_type", "encoding", "events", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_usage_of(
    content_type: str, encoding: str | None, events: list[bytes], expected: Usage | None
) -> None:
    assert usage_of(content_type, encoding, events) == expected


def test_a_json_body_past_the_bound_is_not_read() -> None:
    meter = UsageMeter(JSON)
    body = json.dumps({**CHAT_JSON, "pad": "x" * MAX_JSON_BYTES}).encode()
    meter.feed(body)
    assert meter.result() is None


def test_anthropic_message_delta_counts_are_cumulative() -> None:
    """Two deltas, 3 then 9 tokens so far: 9 were sent, not 12."""
    delta = ANTHROPIC_CACHED[-2]
    events = [
        *ANTHROPIC_CACHED[:-2],
        {**delta, "usage": {"output_tokens": 3}},
        {**delta, "usage": {"output_tokens": 9}},
        ANTHROPIC_CACHED[-1],
    ]
    usage = usage_of(SSE, None, anthropic_sse(events))
    assert usage is not None and (usage.output_tokens, usage.input_tokens) == (9, 2060)


PRICES = parse_prices(
    {
        "gpt-4o": {"input": 2.5, "output": 10, "cached_input": 1.25},
        "gpt-4o-mini": {"input": 0.15, "output": 0.6},
    }
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", Price(2.5, 10, 1.25)),
        ("gpt-4o-2024-08-06", Price(2.5, 10, 1.25)),
        ("gpt-4o-mini-2024-07-18", Price(0.15, 0.6, 0.15)),  # the longest prefix wins
        ("gpt-4", None),
        ("gpt-4oX", None),  # a prefix needs its "-"
        (None, None),
    ],
)
def test_price_for(model: str | None, expected: Price | None) -> None:
    assert price_for(PRICES, model) == expected


def test_cost_prices_cached_input_apart() -> None:
    usage = Usage("gpt-4o", 1_000_000, 100_000, 400_000)
    assert cost(usage, Price(2.5, 10, 1.25)) == pytest.approx(0.6 * 2.5 + 0.4 * 1.25 + 1.0)


def test_a_tally_names_a_model_without_price_once() -> None:
    tally = Tally()
    for _ in range(3):
        tally.add(Usage("llama3.2", 10, 5, 0), PRICES)
    tally.add(Usage("gpt-4o", 1000, 0, 0), PRICES, times=2)
    tally.add(None, PRICES)
    assert (tally.interactions, tally.with_usage, tally.tokens) == (6, 5, 2045)
    assert tally.dollars == pytest.approx(2 * 1000 * 2.5 / 1e6)
    assert tally.no_price_lines() == [
        "no price for model llama3.2 (3 interaction(s) not counted in the money; add it to "
        "[prices])"
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"m": {"output": 1}}, "model 'm': input (US$ per million tokens) is missing"),
        ({"m": {"input": -1, "output": 1}}, "model 'm': input must be zero or more"),
        ({"m": {"input": "1", "output": 1}}, "model 'm': input must be a number"),
        ({"m": {"input": 1, "output": 1, "cache": 1}}, "unknown field 'cache'"),
        ({"m": 3}, "model 'm': must be a table"),
        ([1], "must be a table of models"),
    ],
)
def test_bad_price_tables_name_the_model(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_prices(table)


def test_the_example_price_table_parses_once_uncommented() -> None:
    """config.example.toml ships a dated price table, commented out: it must work as is."""
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "config.example.toml").read_text()
    table = text[text.index('# [prices."gpt-4o"]') :]
    uncommented = "\n".join(line.removeprefix("# ") for line in table.splitlines())
    prices = parse_prices(tomllib.loads(uncommented)["prices"])
    assert price_for(prices, "gpt-4o-2024-08-06") == Price(2.5, 10.0, 1.25)
    assert price_for(prices, "claude-sonnet-4-20250514") == Price(3.0, 15.0, 0.3)
    assert "June 2025" in text  # dated
