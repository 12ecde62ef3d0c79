"""Token usage read off an LLM API's answer, as it streams: model, input, output and cached
input tokens. Nothing is guessed: an answer whose usage is not in one of the known shapes
gives none.

Known shapes (the usage object, wherever it sits in the event or the body):
- OpenAI Responses: `response.completed` (and `.incomplete`, `.failed`) events, or the
  `response` object: `usage.input_tokens` (cached included), `usage.output_tokens`,
  `usage.input_tokens_details.cached_tokens`;
- OpenAI Chat Completions: the chunk with `usage` (`stream_options.include_usage`), or the
  `chat.completion` object: `prompt_tokens` (cached included), `completion_tokens`,
  `prompt_tokens_details.cached_tokens`;
- Anthropic Messages: `message_start` (`message.usage`), then `message_delta` (`usage`, whose
  counts are cumulative), or the `message` object: `input_tokens` (cache reads and writes
  not included: they are added here, so that input counts every input token as OpenAI's
  does), `output_tokens`, `cache_read_input_tokens` (the cached ones);
- Ollama (NDJSON or JSON): `prompt_eval_count`, `eval_count`.

A meter keeps a few numbers whatever the length of the stream; a JSON body (not streamed)
is kept up to `MAX_JSON_BYTES` and read at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.core.event_fields import is_json, is_ndjson, is_sse, json_object, sse_fields

MAX_JSON_BYTES = 8 * 2**20
"""A JSON body larger than this is not read for usage (it is not an LLM answer's size)."""


@dataclass(frozen=True)
class Usage:
    model: str | None
    input_tokens: int  # cached ones included
    output_tokens: int
    cached_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _sub(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def normalized(raw: dict[str, Any]) -> tuple[int, int, int] | None:
    """(input, output, cached) from a usage object in one of the known shapes, or None."""
    if "prompt_tokens" in raw or "completion_tokens" in raw:  # Chat Completions
        inp, out = _count(raw.get("prompt_tokens", 0)), _count(raw.get("completion_tokens", 0))
        cached = _count(_sub(raw, "prompt_tokens_details", "cached_tokens") or 0)
    elif "input_tokens" in raw or "output_tokens" in raw:
        inp, out = _count(raw.get("input_tokens", 0)), _count(raw.get("output_tokens", 0))
        if "cache_read_input_tokens" in raw or "cache_creation_input_tokens" in raw:  # Anthropic
            cached = _count(raw.get("cache_read_input_tokens") or 0)
            written = _count(raw.get("cache_creation_input_tokens") or 0)
            if inp is None or cached is None or written is None:
                return None
            inp += cached + written
        else:  # OpenAI Responses (and Anthropic without cache fields: the same)
            cached = _count(_sub(raw, "input_tokens_details", "cached_tokens") or 0)
    elif "prompt_eval_count" in raw or "eval_count" in raw:  # Ollama
        inp, out = _count(raw.get("prompt_eval_count", 0)), _count(raw.get("eval_count", 0))
        cached = 0
    else:
        return None
    if inp is None or out is None or cached is None:
        return None
    return inp, out, min(cached, inp)


class UsageMeter:
    """Fed each event of a response as it passes (`feed`), gives its usage at the end."""

    def __init__(self, content_type: str | None, content_encoding: str | None = None):
        encoded = (content_encoding or "identity").strip().lower() not in ("", "identity")
        self._kind = (
            None
            if encoded  # compressed as sent: not decoded here
            else "sse"
            if is_sse(content_type)
            else "ndjson"
            if is_ndjson(content_type)
            else "json"
            if is_json(content_type)
            else None
        )
        self._model: str | None = None
        self._raw: dict[str, Any] | None = None
        self._body: list[bytes] = []
        self._size = 0

    def feed(self, event: bytes) -> None:
        kind = self._kind
        if kind == "sse":
            if _has_usage(event) or (self._model is None and b'"model"' in event):
                self._payload(json_object(sse_fields(event)[1]))
        elif kind == "ndjson":
            if _has_usage(event) or b'"eval_count"' in event:
                self._payload(json_object(event.strip()))
        elif kind == "json":
            self._size += len(event)
            if self._size > MAX_JSON_BYTES:
                self._kind, self._body = None, []
            else:
                self._body.append(event)

    def _payload(self, obj: dict[str, Any] | None) -> None:
        if obj is None:
            return
        holders = [obj, obj.get("response"), obj.get("message")]
        for holder in holders:
            if isinstance(holder, dict) and isinstance(model := holder.get("model"), str):
                if model:
                    self._model = model
                break
        if "eval_count" in obj or "prompt_eval_count" in obj:
            self._raw = obj
            return
        for holder in holders:
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(usage, dict):
                if obj.get("type") == "message_delta" and self._raw is not None:
                    self._raw = {**self._raw, **usage}  # cumulative counts: the latest win
                else:
                    self._raw = usage
                return

    def result(self) -> Usage | None:
        if self._kind == "json" and self._body:
            self._payload(json_object(b"".join(self._body)))
            self._body = []
        if self._raw is None or (counts := normalized(self._raw)) is None:
            return None
        return Usage(self._model, *counts)


def _has_usage(event: bytes) -> bool:
    """A usage object in the event (not `"usage": null`, as every Chat chunk but the last
    has): most events are not parsed at all."""
    return b'"usage":{' in event or b'"usage": {' in event


def usage_of(
    content_type: str | None, content_encoding: str | None, events: list[bytes]
) -> Usage | None:
    """The usage of a whole recorded body, its events in order."""
    meter = UsageMeter(content_type, content_encoding)
    for event in events:
        meter.feed(event)
    return meter.result()
