"""Find key-like strings before a cassette leaves the machine.

Redaction (`redact.py`) keeps the usual places clean: the `Authorization` header, `api_key`
query parameters. This is the second line of defence for everything else: a key pasted into
a prompt, echoed in a response, sent in a custom header. Plain functions over text and
records; each finding says where it is and what it looks like, showing only its first
characters.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from proxy.core.records import Event, Headers, Request, ResponseHead
from proxy.core.redact import DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS, REDACTED

_B = r"(?<![A-Za-z0-9_-])"  # not in the middle of a longer word ("task-...", "mask-...")
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("Anthropic API key", _B + r"sk-ant-[A-Za-z0-9_-]{16,}"),
        ("OpenAI-style API key", _B + r"sk-(?!ant-)[A-Za-z0-9_-]{20,}"),
        ("AWS access key id", r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
        ("GitHub token", _B + r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),
        ("Google API key", _B + r"AIza[0-9A-Za-z_-]{35}"),
        ("Slack token", _B + r"xox[abposr]-[A-Za-z0-9-]{10,}"),
        ("Stripe key", _B + r"[rs]k_live_[0-9A-Za-z]{16,}"),
        ("Hugging Face token", _B + r"hf_[A-Za-z0-9]{30,}"),
        ("bearer token", r"(?i)\bbearer\s+(?!\[REDACTED\])[A-Za-z0-9._~+/-]{16,}=*"),
        ("private key", r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
        ("JSON web token", _B + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    )
)

SHOWN_CHARS = 8
"""How much of a found secret a message shows."""


@dataclass(frozen=True)
class Finding:
    where: str  # "request header 'X-Custom'", "event 3", ...
    kind: str
    preview: str  # the first characters only
    event: int | None = None  # the event's number (from 1), for a finding in one

    def __str__(self) -> str:
        return f"{self.where}: {self.preview} ({self.kind})"


def scan_text(text: str) -> Iterator[tuple[str, str]]:
    """(kind, preview) for each key-like string in `text`."""
    for kind, pattern in PATTERNS:
        for match in pattern.finditer(text):
            yield kind, _preview(match.group())


def _preview(secret: str) -> str:
    return secret[:SHOWN_CHARS] + "…" if len(secret) > SHOWN_CHARS else secret


def _text(data: bytes) -> str:
    # Keys are ASCII: latin-1 finds them in any bytes, UTF-8 text included.
    return data.decode("latin-1")


def _headers(side: str, headers: Headers) -> Iterator[Finding]:
    for name, value in headers:
        credential = name.lower() in DEFAULT_HEADERS
        yield from _named(f"{side} header {name!r}", value, credential, "header")


def _query(url: str) -> Iterator[Finding]:
    parts = urlsplit(url)
    if parts.password and parts.password != REDACTED:
        yield Finding("request URL", "a password", _preview(parts.password))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        credential = name.lower() in DEFAULT_QUERY_PARAMS
        yield from _named(f"query parameter {name!r}", value, credential, "parameter")


def _named(where: str, value: str, credential: bool, what: str) -> Iterator[Finding]:
    """A header's or parameter's value: key-like strings in it, or, for one named like a
    credential, any value that is not redacted."""
    found = list(scan_text(value))
    if found:
        yield from (Finding(where, kind, preview) for kind, preview in found)
    elif credential and value not in ("", REDACTED):
        yield Finding(where, f"a credential {what} that is not redacted", _preview(value))


def scan_request(request: Request) -> Iterator[Finding]:
    yield from _query(request.url)
    yield from _headers("request", request.headers)
    for kind, preview in scan_text(_text(request.body)):
        yield Finding("request body", kind, preview)


def scan_response(head: ResponseHead, events: tuple[Event, ...]) -> Iterator[Finding]:
    yield from _headers("response", head.headers)
    for i, event in enumerate(events, 1):
        for kind, preview in scan_text(_text(event.data)):
            yield Finding(f"event {i}", kind, preview, event=i)
