"""Realistic LLM answers for the ledger's tests, shaped as the APIs send them: a Chat
Completions stream with `stream_options.include_usage` (usage only on the last chunk, `null`
on the others), an Anthropic Messages stream that read from the prompt cache, and the
non-streamed JSON answers of the three APIs. (The OpenAI Responses stream is the real one
in tests/data.)"""

from __future__ import annotations

import json
from typing import Any

CHAT_MODEL = "gpt-4o-mini-2024-07-18"


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion.chunk",
        "created": 1741269112,
        "model": CHAT_MODEL,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }


CHAT_CHUNKS: list[dict[str, Any]] = [
    _chunk({"role": "assistant", "content": "", "refusal": None}),
    _chunk({"content": "Hello"}),
    _chunk({"content": ", World!"}),
    _chunk({}, "stop"),
    {
        **_chunk({}),
        "choices": [],
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 4,
            "total_tokens": 23,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    },
]


def chat_sse() -> list[bytes]:
    """Chat Completions events: `data:` lines only, then `[DONE]`."""
    return [f"data: {json.dumps(c)}\n\n".encode() for c in CHAT_CHUNKS] + [b"data: [DONE]\n\n"]


ANTHROPIC_MODEL = "claude-sonnet-4-20250514"
ANTHROPIC_CACHED: list[dict[str, Any]] = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "model": ANTHROPIC_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 12,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 2048,
                "output_tokens": 1,
                "service_tier": "standard",
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello,"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " World!"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 6},
    },
    {"type": "message_stop"},
]


def anthropic_sse(events: list[dict[str, Any]] = ANTHROPIC_CACHED) -> list[bytes]:
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


CHAT_JSON: dict[str, Any] = {
    "id": "chatcmpl-AbC124",
    "object": "chat.completion",
    "created": 1741269112,
    "model": CHAT_MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, World!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 5,
        "total_tokens": 1205,
        "prompt_tokens_details": {"cached_tokens": 1024},
    },
}

ANTHROPIC_JSON: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": ANTHROPIC_MODEL,
    "content": [{"type": "text", "text": "Hello, World!"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 7},
}

RESPONSES_JSON: dict[str, Any] = {
    "id": "resp_67c9a878139c8190",
    "object": "response",
    "created_at": 1741269112,
    "status": "completed",
    "model": "gpt-4o-2024-08-06",
    "output": [],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
}
