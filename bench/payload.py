"""What the benchmark's upstream sends, as pure functions.

The upstream builds its responses from these and the client checks what arrives against
the same functions, so every response is verified byte for byte without shipping it twice.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from functools import lru_cache

STREAM_PATH = "/v1/responses"
SMALL_PATH = "/v1/chat/completions"
HEALTH_PATH = "/health"

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 "


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """One streamed response: ``events`` SSE events of about ``size`` bytes each."""

    stream_id: str
    events: int
    size: int


@dataclass(frozen=True, slots=True)
class Expected:
    events: int
    nbytes: int
    crc32: int


@lru_cache(maxsize=64)
def _filler(n: int) -> str:
    return (_ALPHABET * (n // len(_ALPHABET) + 1))[:n]


def sse_event(spec: StreamSpec, seq: int) -> bytes:
    """The ``seq``-th event of a stream: ``event: x`` and one line of JSON, ~``size`` bytes."""
    head = (
        f'event: x\ndata: {{"type":"x","stream":{json.dumps(spec.stream_id)},"seq":{seq},"delta":"'
    )
    tail = '"}\n\n'
    return (head + _filler(max(0, spec.size - len(head) - len(tail))) + tail).encode()


@lru_cache(maxsize=4096)
def expected_stream(spec: StreamSpec) -> Expected:
    nbytes = crc = 0
    for seq in range(spec.events):
        event = sse_event(spec, seq)
        nbytes += len(event)
        crc = zlib.crc32(event, crc)
    return Expected(spec.events, nbytes, crc)


def stream_request(spec: StreamSpec) -> bytes:
    """A Responses-API-like request body; the ``bench`` field tells the upstream what to send."""
    body = {
        "model": "bench",
        "stream": True,
        "input": f"stream {spec.stream_id}",
        "bench": {"id": spec.stream_id, "events": spec.events, "size": spec.size},
    }
    return json.dumps(body).encode()


def parse_stream_request(body: bytes) -> StreamSpec:
    bench = json.loads(body)["bench"]
    return StreamSpec(str(bench["id"]), int(bench["events"]), int(bench["size"]))


def small_request(request_id: str) -> bytes:
    body = {
        "model": "bench",
        "stream": False,
        "messages": [{"role": "user", "content": request_id}],
    }
    return json.dumps(body).encode()


def parse_small_request(body: bytes) -> str:
    return str(json.loads(body)["messages"][0]["content"])


def small_response(request_id: str) -> bytes:
    """A non-streamed JSON answer of a few hundred bytes."""
    body = {
        "id": request_id,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": _filler(200)}}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 50, "total_tokens": 58},
    }
    return json.dumps(body, separators=(",", ":")).encode()
