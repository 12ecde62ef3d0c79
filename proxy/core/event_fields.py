"""An event's fields as the stream's reader sees them: an SSE event's `event:` name and its
`data:` joined (the WHATWG rules: lines end at CR, LF or CRLF; one space after the colon is
dropped; several `data:` lines join with LF), or an NDJSON line / a JSON body as data."""

from __future__ import annotations

import json
import re
from typing import Any

_LINES = re.compile(rb"\r\n|\r|\n")


def sse_fields(event: bytes) -> tuple[str | None, bytes | None]:
    """The `event:` name (None when the event names none) and the joined `data:` (None when
    the event carries none: a comment, a retry)."""
    name: str | None = None
    data: list[bytes] = []
    for line in _LINES.split(event):
        field, colon, value = line.partition(b":")
        if not colon:
            field, value = line, b""
        elif value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value)
    return name, (b"\n".join(data) if data else None)


def json_object(data: bytes | None) -> dict[str, Any] | None:
    """`data` as a JSON object, or None (not JSON, not an object, `[DONE]`)."""
    if not data or data.lstrip()[:1] != b"{":
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def is_sse(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "text/event-stream"


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def is_ndjson(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media in ("application/x-ndjson", "application/jsonl", "application/json-lines")
