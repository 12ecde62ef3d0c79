"""Find key-like strings before a cassette leaves the machine.

Redaction (`redact.py`) keeps the usual places clean: the `Authorization` header, `api_key`
query parameters. This is the second line of defence for everything else: a key pasted into
a prompt, echoed in a response, sent in a custom header. Plain functions over text and
records; each finding says where it is and what it looks like, showing only its first
characters.

A response body is scanned as streams of text rather than event by event, so that a key a
model echoes back in several deltas is found, and said to span those events:
- the body's text, its JSON string escapes decoded (`sk-\\u0070roj...`, `\\/`);
- for each JSON path of the events' payloads (SSE `data:` lines, NDJSON lines), the
  strings found there one event after the other: the `delta`s of an OpenAI Responses
  stream, `delta.text` of Anthropic's, `choices.0.delta.content` of a chat completion...
Each stream keeps only the tail that a key in progress may still need (`MAX_HELD` chars at
most), so memory does not grow with the length of a stream.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from proxy.core.records import Event, Headers, Request, ResponseHead
from proxy.core.redact import REDACTED, Redactor

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

MAX_HELD = 4096
"""How far back (chars) a key still in progress at the end of a stream's text may start."""

MAX_PATHS = 64
"""How many JSON paths of a stream are followed at once (the least recent ones dropped)."""

_OVERLAP = 64  # chars before a new piece scanned again: "-----BEGIN ... PRIVATE KEY-----"
_PREFIX = 32  # chars before a run of key characters scanned again: "Bearer "
_STARTS = re.compile(  # how each of PATTERNS begins
    r"sk-|AKIA|ASIA|gh[pousr]_|github_pat_|AIza|xox[abposr]-|[rs]k_live_|hf_|(?i:bearer)"
    r"|-----BEGIN |eyJ"
)
_KEY_RUN_END = re.compile(r"[^A-Za-z0-9._~+/=-]")  # what ends a run of key characters
_JSON_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_JSON_SIMPLE = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_OPEN_ESCAPE = re.compile(r"(\\+)(u[0-9a-fA-F]{0,3})?\Z")
_Path = tuple[str | int, ...]  # keys and indexes into a JSON value
_EOL = re.compile(r"\r\n|\r|\n")  # SSE line ends (WHATWG HTML 9.2.6), as in `sse.py`


@dataclass(frozen=True)
class Finding:
    where: str  # "request header 'X-Custom'", "event 3", "events 3-5", ...
    kind: str
    preview: str  # the first characters only
    event: int | None = None  # the (first) event's number (from 1), for a finding in events
    last_event: int | None = None  # the last event it spans

    def __str__(self) -> str:
        return f"{self.where}: {self.preview} ({self.kind})"


def scan_text(text: str) -> Iterator[tuple[str, str]]:
    """(kind, preview) for each key-like string in `text`."""
    for kind, match in _matches(text):
        yield kind, _preview(match.group())


def _matches(text: str) -> Iterator[tuple[str, re.Match[str]]]:
    for kind, pattern in PATTERNS:
        for match in pattern.finditer(text):
            yield kind, match


def unescape_json(text: str) -> str:
    """`text` with JSON string escapes decoded (`\\u0070` is "p", `\\/` is "/")."""
    return _JSON_ESCAPE.sub(_unescape_one, text) if "\\" in text else text


def _unescape_one(m: re.Match[str]) -> str:
    return chr(int(m.group(1), 16)) if m.group(1) else _JSON_SIMPLE[m.group(2)]


def _preview(secret: str) -> str:
    return secret[:SHOWN_CHARS] + "…" if len(secret) > SHOWN_CHARS else secret


def _text(data: bytes) -> str:
    # Keys are ASCII: latin-1 finds them in any bytes, UTF-8 text included.
    return data.decode("latin-1")


# -- one stream of text, fed in pieces -----------------------------------------------------


@dataclass(frozen=True)
class _Hit:
    kind: str
    secret: str
    first: int  # event numbers
    last: int


class _Stream:
    """Key-like strings in a text that arrives in pieces (one per event), a key that spans
    pieces included. Only the tail that a key in progress may need is kept; a key is
    reported once it has ended (or the stream has), with the events it spans."""

    def __init__(self) -> None:
        self._text = ""
        self._base = 0  # stream offset of _text[0]
        self._scan_from = 0  # stream offset where the next scan starts
        self._run_from = 0  # stream offset where the trailing run of key characters starts
        self._pieces: deque[tuple[int, int]] = deque()  # (stream offset, event number)
        self._seen: set[tuple[str, int]] = set()  # (kind, stream offset) reported

    def feed(self, event: int, text: str) -> list[_Hit]:
        if not text:
            return []
        end = self._base + len(self._text)
        self._pieces.append((end, event))
        self._text += text
        run_end = _KEY_RUN_END.search(text[::-1])
        if run_end is not None:
            self._run_from = end + len(text) - run_end.start()
        hits = self._scan(final=False)
        self._trim()
        return hits

    def close(self) -> list[_Hit]:
        return self._scan(final=True)

    def _scan(self, final: bool) -> list[_Hit]:
        end = len(self._text)
        pos = self._scan_from - self._base
        floor = max(pos, end - MAX_HELD)  # a key in progress from here on may still grow
        resume = max(floor, end - _OVERLAP)
        hits: list[_Hit] = []
        first = _STARTS.search(self._text, pos)
        if first is None:  # every pattern starts with one of these: nothing to match
            self._scan_from = self._base + resume
            return hits
        # A key in progress at the end starts in the trailing run of key characters.
        run = max(floor, self._run_from - self._base - _PREFIX)
        in_run = first if first.start() >= run else _STARTS.search(self._text, run)
        if in_run is not None:
            resume = min(resume, in_run.start())
        for kind, pattern in PATTERNS:
            for m in pattern.finditer(self._text, first.start()):
                start = self._base + m.start()
                if (kind, start) in self._seen:
                    continue
                if m.end() == end and not final and m.start() >= floor:
                    resume = min(resume, m.start())  # look again with the next piece
                    continue
                self._seen.add((kind, start))
                last = self._event_at(self._base + m.end() - 1)
                hits.append(_Hit(kind, m.group(), self._event_at(start), last))
        self._scan_from = self._base + max(floor, resume)
        return hits

    def _trim(self) -> None:
        keep_from = self._scan_from - 1  # one character before: what a lookbehind reads
        if keep_from - self._base > len(self._text) // 2:
            self._text = self._text[keep_from - self._base :]
            self._base = keep_from
            while len(self._pieces) > 1 and self._pieces[1][0] <= keep_from:
                self._pieces.popleft()
            self._seen = {s for s in self._seen if s[1] >= self._scan_from}

    def _event_at(self, offset: int) -> int:
        for start, event in reversed(self._pieces):
            if start <= offset:
                return event
        return self._pieces[0][1]


class _BodyText:
    """The body's text with JSON escapes decoded (an escape cut by an event boundary is
    decoded with the next event), and each event's on its own."""

    def __init__(self) -> None:
        self._stream = _Stream()
        self._open = ""  # the start of an escape that the last event cut

    def feed(self, event: int, text: str) -> list[_Hit]:
        text = self._open + text
        cut = _OPEN_ESCAPE.search(text) if "\\" in text[-6:] else None
        self._open = ""
        if cut is not None and len(cut.group(1)) % 2 == 1:  # "\\" is a whole escape
            self._open = text[cut.end(1) - 1 :]
            text = text[: cut.end(1) - 1]
        piece = unescape_json(text)
        hits = self._stream.feed(event, piece)
        if _STARTS.search(piece):  # and on its own: a key glued to the previous event's end
            hits += [_Hit(k, m.group(), event, event) for k, m in _matches(piece)]
        return hits

    def close(self, event: int) -> list[_Hit]:
        return self._stream.feed(event, self._open) + self._stream.close()


class _JsonPaths:
    """For each JSON path of the events' payloads, the stream of strings found there."""

    def __init__(self) -> None:
        self._streams: dict[_Path, _Stream] = {}

    def feed(self, event: int, text: str) -> list[_Hit]:
        payload = _payload(text)
        if payload is None:
            return []
        hits: list[_Hit] = []
        for path, string in _strings(payload, ()):
            stream = self._streams.pop(path, None) or _Stream()
            self._streams[path] = stream  # the most recent last
            hits += stream.feed(event, string)
            if len(self._streams) > MAX_PATHS:
                hits += self._streams.pop(next(iter(self._streams))).close()
        return hits

    def close(self) -> list[_Hit]:
        return [hit for stream in self._streams.values() for hit in stream.close()]


def _payload(text: str) -> Any:
    """The JSON of an SSE event's data (or of an NDJSON line); None if it has none."""
    lines = _EOL.split(text)
    data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
    candidate = ("\n".join(data) if data else text).strip()
    if not candidate.startswith(("{", "[", '"')):
        return None
    try:
        return json.loads(candidate)
    except (ValueError, RecursionError):
        return None


def _strings(
    value: Any, path: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        yield path, value
    elif len(path) >= 32:
        return
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, (*path, i))


def _merged(hits: list[_Hit]) -> list[_Hit]:
    """One hit per key: a key seen both in the body's text and along a JSON path (maybe
    only its first part, in the text) is reported once, with the widest range of events."""
    kept: list[_Hit] = []
    for hit in sorted(hits, key=lambda h: (h.first, -h.last, -len(h.secret))):
        if not any(
            k.kind == hit.kind and k.first == hit.first and k.secret.startswith(hit.secret)
            for k in kept
        ):
            kept.append(hit)
    order = {kind: i for i, (kind, _) in enumerate(PATTERNS)}
    return sorted(kept, key=lambda h: (h.first, h.last, order[h.kind]))


# -- records -------------------------------------------------------------------------------


def _headers(side: str, headers: Headers, redactor: Redactor) -> Iterator[Finding]:
    for name, value in headers:
        credential = redactor.redacts_header(name)
        yield from _named(f"{side} header {name!r}", value, credential, "header")


def _query(url: str, redactor: Redactor) -> Iterator[Finding]:
    parts = urlsplit(url)
    if parts.password and parts.password != REDACTED:
        yield Finding("request URL", "a password", _preview(parts.password))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        credential = redactor.redacts_param(name)
        yield from _named(f"query parameter {name!r}", value, credential, "parameter")


def _named(where: str, value: str, credential: bool, what: str) -> Iterator[Finding]:
    """A header's or parameter's value: key-like strings in it, or, for one named like a
    credential, any value that is not redacted."""
    found = list(scan_text(value))
    if found:
        yield from (Finding(where, kind, preview) for kind, preview in found)
    elif credential and value not in ("", REDACTED):
        yield Finding(where, f"a credential {what} that is not redacted", _preview(value))


def scan_request(request: Request, redactor: Redactor | None = None) -> Iterator[Finding]:
    """Findings in a request. `redactor` says which names are credentials (the defaults
    unless given): one of them with a value that is not `[REDACTED]` is a finding."""
    redactor = redactor or Redactor()
    yield from _query(request.url, redactor)
    yield from _headers("request", request.headers, redactor)
    for kind, preview in scan_text(unescape_json(_text(request.body))):
        yield Finding("request body", kind, preview)


def scan_response(
    head: ResponseHead, events: Iterable[Event], redactor: Redactor | None = None
) -> Iterator[Finding]:
    """Findings in a response: its headers, then its body's events, read once, in order
    (a lazy iterable is never held whole)."""
    yield from _headers("response", head.headers, redactor or Redactor())
    body, paths = _BodyText(), _JsonPaths()
    hits: list[_Hit] = []
    number = 0
    for number, event in enumerate(events, 1):
        text = _text(event.data)
        hits += body.feed(number, text)
        hits += paths.feed(number, text)
    if number:
        hits += body.close(number) + paths.close()
    for hit in _merged(hits):
        where = f"event {hit.first}" if hit.first == hit.last else f"events {hit.first}-{hit.last}"
        yield Finding(where, hit.kind, _preview(hit.secret), hit.first, hit.last)
