"""How the UI shows recorded things: an event's SSE name and data, bytes with escapes, a
JSON value as foldable HTML, a request as a curl command, sizes and times. Pure functions."""

from __future__ import annotations

import json
import shlex
from typing import Any

from markupsafe import Markup, escape

from proxy.core.records import Request

MAX_TREE_BYTES = 512 * 1024
"""A JSON body larger than this is shown as indented text, not as a tree of folds."""
MAX_SHOWN_BYTES = 64 * 1024
"""An event's data shown at most (the raw bytes are a download away)."""


def sse_parts(data: bytes) -> tuple[str | None, str | None]:
    """An SSE event's `event:` name and its `data:` lines joined (None when absent); an
    NDJSON line or a chunk has no name, and its data is the text itself."""
    text = data[:MAX_SHOWN_BYTES].decode("utf-8", errors="replace")
    name: str | None = None
    lines: list[str] = []
    sse = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        field, colon, value = line.partition(":")
        if not colon:
            continue
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            name, sse = value, True
        elif field == "data":
            lines.append(value)
            sse = True
    if sse:
        return name, "\n".join(lines) if lines else None
    return None, text.strip() or None


def pretty_json(text: str | None) -> str | None:
    """`text` indented, when it is JSON (None otherwise)."""
    if not text or text[0] not in "[{":
        return None
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return None


def escaped(data: bytes) -> str:
    """The bytes as text a reader can check byte by byte: `\\n`, `\\r`, `\\t`, `\\\\` and
    `\\xNN` for what is not printable UTF-8."""
    text = data[:MAX_SHOWN_BYTES].decode("utf-8", errors="backslashreplace")
    out = []
    for c in text:
        if c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    more = len(data) - MAX_SHOWN_BYTES
    suffix = f"... ({more} more bytes)" if more > 0 else ""
    return "".join(out) + suffix


def json_tree(value: Any, depth: int = 0) -> Markup:
    """A JSON value as nested `<details>` folds (open to depth 2), strings escaped."""
    if isinstance(value, dict):
        if not value:
            return Markup('<span class="j-p">{}</span>')
        items = Markup("").join(
            Markup('<li><span class="j-k">{}</span>: {}</li>').format(
                json.dumps(k, ensure_ascii=False), json_tree(v, depth + 1)
            )
            for k, v in value.items()
        )
        return _fold("{", "}", f"{len(value)} keys", items, depth)
    if isinstance(value, list):
        if not value:
            return Markup('<span class="j-p">[]</span>')
        items = Markup("").join(
            Markup("<li>{}</li>").format(json_tree(v, depth + 1)) for v in value
        )
        return _fold("[", "]", f"{len(value)} items", items, depth)
    kind = "s" if isinstance(value, str) else "n" if isinstance(value, int | float) else "b"
    text = json.dumps(value, ensure_ascii=False)
    return Markup('<span class="j-{}">{}</span>').format(kind, text)


def _fold(opening: str, closing: str, summary: str, items: Markup, depth: int) -> Markup:
    state = " open" if depth < 2 else ""
    return Markup(
        '<details class="j"{}><summary>{} <span class="j-c">{}</span></summary><ul>{}</ul>{}'
        "</details>"
    ).format(Markup(state), opening, summary, items, closing)


def body_view(body: bytes) -> tuple[str, Markup | str]:
    """How to show a request body: ("tree", folds) for JSON of a reasonable size,
    ("text", indented or plain text) otherwise, ("empty", "") for none."""
    if not body:
        return "empty", ""
    text = body.decode("utf-8", errors="replace")
    try:
        value = json.loads(text)
    except ValueError:
        return "text", escaped(body) if "\ufffd" in text else text[:MAX_TREE_BYTES]
    if len(body) > MAX_TREE_BYTES:
        return "text", json.dumps(value, indent=2, ensure_ascii=False)
    return "tree", json_tree(value)


def curl(request: Request) -> str:
    """The request as a curl command (credentials are redacted in the store: put yours back)."""
    parts = ["curl", "-N", "-X", request.method, request.url]
    for name, value in request.headers:
        if name.lower() in ("host", "content-length"):
            continue
        parts += ["-H", f"{name}: {value}"]
    if request.body:
        parts += ["--data-binary", request.body.decode("utf-8", errors="replace")]
    return " ".join(shlex.quote(p) for p in parts)


def size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1024  # type: ignore[assignment]
    return f"{n:.1f} GiB"  # pragma: no cover


def ms(t: float | None) -> str:
    if t is None:
        return ""
    return f"{t:,.1f}" if t < 10_000 else f"{t:,.0f}"


def safe(text: str) -> Markup:
    return Markup(escape(text))
