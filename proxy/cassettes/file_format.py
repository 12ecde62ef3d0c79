"""The portable cassette file (`NAME.cassette.jsonl`): records ↔ lines, version 2.

UTF-8 JSON Lines, one object a line, "\\n" after each:

    {"format": "rrproxy-cassette", "version": 2, "name": "hello-world", "interactions": 1}
    {"request": {...}, "response": {...}, "complete": true, "outcome": "complete", ...}
    {"t": 380.5, "data": "event: response.created\\ndata: {...}\\n\\n"}
    {"t": 381.0, "b64": "..."}
    {"t": 402.7, "data": "data: {...}\n\n", "pieces": [[0, 390.1], [17, 402.7]]}

A header, then for each interaction one line for the request and response head followed
by one line per event. A WebSocket session (version 2) is an interaction whose response is
the upstream's `101`: its line says how many `messages` follow the (no) events, one line
each, in order:

    {"t": 2.5, "from": "server", "text": "{\"type\": \"session.created\"}"}
    {"t": 9.0, "from": "client", "b64": "AAEC"}
    {"t": 30.1, "from": "client", "close": 1000, "reason": ""}
 Text is stored as text (a body or an event that is valid UTF-8);
only bytes that are not UTF-8 are base64 (`body_b64`, `b64`). Headers are `[name, value]`
pairs, in the order sent (a name may repeat). Keys come in a fixed order and floats in
Python's shortest round-trip form, so writing what was read gives the same bytes.

The counts (`interactions` in the header, `events` on each interaction line) make a file
cut at any line boundary fail to read, as a file cut inside a line does.

`pieces` (version 2; omitted for an event that arrived in one piece at its time, so an
event line of version 1 is written as it was) says where each piece the event arrived in
starts in its bytes and when it arrived (`proxy.core.pieces`): a replay at recorded pace
sends each piece at its time. Version 1 files (no `pieces`, no messages) are read as they
are.

Reading checks every line, refuses what its version does not know (vcrpy `serialize.py`,
mitmproxy `io/compat.py`) and names the line. Only `json.loads` ever sees the text.

Version 2 adds one optional field to the interaction line, `"untimed": true`: the
interaction was imported without event timing (vcrpy, a browser's HAR) and replays at
`untimed_pace`. It is written only when true, so every other line is as version 1 wrote
it; version 1 files are still read (their interactions are timed).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import IO, Any

from proxy.cassettes.lines import TOKEN, Fields, Lines, parse_object
from proxy.core.messages import Kind, Message
from proxy.core.pieces import Pieces, normal
from proxy.core.records import (
    CASSETTE_FILE_SUFFIX,
    Event,
    Outcome,
    Request,
    ResponseHead,
    check_cassette_name,
)

FORMAT = "rrproxy-cassette"
VERSION = 2
READS = (1, 2)
"""The versions read (it writes `VERSION`): 1 has no `pieces`, messages or `untimed`."""
SUFFIX = CASSETTE_FILE_SUFFIX

MAX_FILE_BYTES = 1024 * 1024 * 1024
"""A larger file is refused before any of it is read."""
MAX_LINE_BYTES = 256 * 1024 * 1024
"""A longer line is refused without holding more of it than this."""

_OUTCOMES = {o.value: o for o in Outcome if o is not Outcome.RECORDING}
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Recorded:
    """One interaction as a cassette file holds it."""

    request: Request
    response: ResponseHead
    outcome: Outcome
    error: str | None
    recorded_at: datetime
    ttfb_ms: float
    duration_ms: float | None
    events: tuple[Event, ...]
    messages: tuple[Message, ...] = ()
    """A WebSocket session's messages (its response is a 101 and it has no events)."""

    @property
    def websocket(self) -> bool:
        return self.response.status == 101

    untimed: bool = False
    """Imported without event timing: the body is one event; replayed at `untimed_pace`."""

    @property
    def complete(self) -> bool:
        """The whole response is here (a client that hung up did not stop the recording)."""
        return self.outcome.complete


@dataclass(frozen=True)
class Header:
    name: str
    interactions: int
    version: int = VERSION


def file_name(cassette: str) -> str:
    return check_cassette_name(cassette) + SUFFIX


# -- writing -------------------------------------------------------------------------------


def header_line(name: str, interactions: int, version: int = VERSION) -> bytes:
    """The header. Files are written in the newest version (`version` is the one a file
    that is copied through was read in, so its fingerprint stays what it was)."""
    return _line({"format": FORMAT, "version": version, "name": name, "interactions": interactions})


def interaction_lines(rec: Recorded) -> Iterator[bytes]:
    """The interaction's head line, then one line per event."""
    request: dict[str, Any] = {
        "method": rec.request.method,
        "url": rec.request.url,
        "headers": [[n, v] for n, v in rec.request.headers],
    }
    request.update(_bytes_field("body", "body_b64", rec.request.body))
    untimed = {"untimed": True} if rec.untimed else {}
    yield _line(
        {
            "request": request,
            "response": {
                "status": rec.response.status,
                "headers": [[n, v] for n, v in rec.response.headers],
            },
            "complete": rec.complete,
            "outcome": rec.outcome.value,
            "error": rec.error,
            "recorded_at": format_time(rec.recorded_at),
            "ttfb_ms": rec.ttfb_ms,
            "duration_ms": rec.duration_ms,
            **untimed,
            "events": len(rec.events),
            **({"messages": len(rec.messages)} if rec.websocket else {}),
        }
    )
    for event in rec.events:
        yield event_line(event)
    for message in rec.messages:
        yield _line(_message_json(message))


def event_line(event: Event) -> bytes:
    obj: dict[str, Any] = {"t": event.t_ms, **_bytes_field("data", "b64", event.data)}
    if event.pieces is not None:
        obj["pieces"] = [[offset, t] for offset, t in event.pieces]
    return _line(obj)


def _message_json(message: Message) -> dict[str, Any]:
    line: dict[str, Any] = {"t": message.t_ms, "from": message.who}
    if message.kind is Kind.CLOSE:
        line["close"] = message.code
        line["reason"] = message.data.decode("utf-8", "replace")
    elif message.kind is Kind.TEXT:
        line["text"] = message.data.decode("utf-8")  # a text message is UTF-8
    else:
        line["b64"] = base64.b64encode(message.data).decode("ascii")
    return line


def dump(name: str, interactions: Iterable[Recorded]) -> bytes:
    """A whole cassette file in memory (for small cassettes and tests)."""
    recs = list(interactions)
    lines = [header_line(name, len(recs))]
    for rec in recs:
        lines.extend(interaction_lines(rec))
    return b"".join(lines)


def format_time(t: datetime) -> str:
    if t.tzinfo is None:  # SQLite hands back naive datetimes; they were stored as UTC
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _bytes_field(text_key: str, b64_key: str, data: bytes) -> dict[str, str]:
    try:
        return {text_key: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {b64_key: base64.b64encode(data).decode("ascii")}


def _line(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    # A header value aiohttp decoded with surrogateescape may hold lone surrogates, which
    # UTF-8 cannot carry: write those (only ever inside strings) as JSON escapes.
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.encode("utf-8") + b"\n"


# -- reading -------------------------------------------------------------------------------


def read(
    stream: IO[bytes], *, source: str = "cassette file", max_line: int = MAX_LINE_BYTES
) -> Iterator[Header | Recorded]:
    """The header, then each interaction with its events; raises `CassetteFileError` at the
    first wrong line (an interaction is yielded only once all its events are read)."""
    hint = f"this rrproxy reads cassette format versions 1 to {VERSION}"
    lines = Lines(stream, source, max_line, hint)
    first = lines.next()
    if first is None:
        raise lines.error("the file is empty; a cassette starts with a header line", line=1)
    header = _header(parse_object(first, lines), lines)
    lines.version = header.version
    yield header
    count = 0
    while (text := lines.next()) is not None:
        at = lines.number
        obj = parse_object(text, lines)
        if "request" not in obj:
            what = "an event line" if "t" in obj else "a line without 'request'"
            raise lines.error(f"expected an interaction line (with 'request'), found {what}")
        if count == header.interactions:
            raise lines.error(
                f"the header (line 1) announces {header.interactions} interaction(s); "
                "this line starts one more"
            )
        head, expected, n_messages = _interaction(obj, lines, header.version)
        events: list[Event] = []
        while len(events) < expected:
            text = lines.next()
            if text is None:
                raise lines.error(
                    f"the file ends after {len(events)} of the {expected} events that the "
                    f"interaction on line {at} announces (a truncated file?)"
                )
            events.append(_event(parse_object(text, lines), lines, header.version))
        messages: list[Message] = []
        while len(messages) < n_messages:
            text = lines.next()
            if text is None:
                raise lines.error(
                    f"the file ends after {len(messages)} of the {n_messages} messages that "
                    f"the interaction on line {at} announces (a truncated file?)"
                )
            messages.append(_message(parse_object(text, lines), lines))
        count += 1
        yield replace(head, events=tuple(events), messages=tuple(messages))
    if count < header.interactions:
        raise lines.error(
            f"the header (line 1) announces {header.interactions} interaction(s), the file has "
            f"{count} (a truncated file?)"
        )


def loads(data: bytes, *, source: str = "cassette file") -> tuple[Header, list[Recorded]]:
    """A whole cassette file from memory."""
    items = list(read(io.BytesIO(data), source=source))
    header = items[0]
    assert isinstance(header, Header)
    return header, [i for i in items[1:] if isinstance(i, Recorded)]


def _header(obj: dict[str, Any], lines: Lines) -> Header:
    if obj.get("format") != FORMAT:
        raise lines.error(
            f'not an rrproxy cassette: the first line must be the header {{"format": "{FORMAT}",'
            f' "version": {VERSION}, ...}}'
        )
    version = obj.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise lines.error(
            f"cassette format version {version} is newer than this rrproxy reads ({VERSION}); "
            "upgrade rrproxy"
        )
    f = Fields(obj, "header: ", lines, ("format", "version", "name", "interactions"))
    version = f.get("version", int)
    if version not in READS:
        raise f.fail("version", f"must be one of {', '.join(map(str, READS))}")
    try:
        name = check_cassette_name(f.get("name", str))
    except ValueError as exc:
        raise f.fail("name", f"is not usable: {exc}") from None
    interactions = f.get("interactions", int)
    if interactions < 0:
        raise f.fail("interactions", "must be 0 or more")
    return Header(name, interactions, version)


def _interaction(obj: dict[str, Any], lines: Lines, version: int) -> tuple[Recorded, int, int]:
    """The interaction without its events yet, how many events follow, and how many
    WebSocket messages after them."""
    known: tuple[str, ...] = (
        "request",
        "response",
        "complete",
        "outcome",
        "error",
        "recorded_at",
        "ttfb_ms",
        "duration_ms",
        "events",
        "messages",
    )
    if version >= 2:
        known += ("untimed",)
    elif "untimed" in obj:
        raise lines.error("'untimed' is a field of format version 2; the header says version 1")
    f = Fields(obj, "", lines, known)
    request = _request(Fields(f.get("request", dict), "request: ", lines, _REQUEST_FIELDS))
    events = f.get("events", int)
    if events < 0:
        raise f.fail("events", "must be 0 or more")
    messages = f.get("messages", int, optional=True)
    if messages is not None and lines.version < 2:
        raise f.fail("messages", "needs cassette format version 2 (the header says 1)")
    resp = Fields(f.get("response", dict), "response: ", lines, ("status", "headers"))
    if messages is None:
        status = _status(resp, request.method, events)
    else:
        status = _websocket_status(resp, f, request.method, events, messages)
    response = ResponseHead(status, resp.headers("headers"))
    outcome_text = f.get("outcome", str)
    outcome = _OUTCOMES.get(outcome_text)
    if outcome is None:
        raise f.fail("outcome", f"must be one of {', '.join(_OUTCOMES)}")
    complete = f.get("complete", bool)
    if complete != outcome.complete:
        raise f.fail("complete", f"must be {str(not complete).lower()} for outcome {outcome_text}")
    ttfb_ms = f.number("ttfb_ms")
    assert ttfb_ms is not None
    head = Recorded(
        request=request,
        response=response,
        outcome=outcome,
        error=f.text("error", optional=True),
        recorded_at=_recorded_at(f),
        ttfb_ms=ttfb_ms,
        duration_ms=f.number("duration_ms", optional=True),
        events=(),
        untimed=f.get("untimed", bool, optional=True) or False,
    )
    return head, events, messages or 0


def _websocket_status(resp: Fields, f: Fields, method: str, events: int, messages: int) -> int:
    """A WebSocket session's: a 101 to a GET, with messages and no events."""
    status: int = resp.get("status", int)
    if status != 101:
        raise resp.fail("status", "must be 101 for an interaction with 'messages'")
    if method != "GET":
        raise f.fail("messages", "belong to a WebSocket handshake, which is a GET")
    if messages < 0:
        raise f.fail("messages", "must be 0 or more")
    if events:
        raise f.fail("events", "must be 0 for a WebSocket session (its body is its messages)")
    return status


_REQUEST_FIELDS = ("method", "url", "headers", "body", "body_b64")


def _request(req: Fields) -> Request:
    method = req.get("method", str)
    if len(method) > 16 or not TOKEN.fullmatch(method):  # an RFC 9110 token, as the store holds
        raise req.fail("method", "must be an HTTP method such as POST")
    url = req.text("url")
    if not re.match(r"(?i)https?://[^/?#\s]+", url):
        raise req.fail("url", "must be an absolute http:// or https:// URL")
    return Request(method, url, req.headers("headers"), req.data("body", "body_b64"))


def _status(resp: Fields, method: str, events: int) -> int:
    """A status that can be replayed: a final one (a 1xx is an interim answer; a 101 would
    hand the connection over and leave the client waiting), and no body where HTTP allows
    none (RFC 9110 sections 6.4.1, 15.3.5, 15.4.5), which would never reach the client."""
    status: int = resp.get("status", int)
    if not 200 <= status <= 999:
        raise resp.fail("status", "must be a final HTTP status from 200 to 999")
    if events and (status in (204, 304) or method == "HEAD"):
        what = "a response to HEAD" if method == "HEAD" else f"a {status} response"
        raise resp.lines.error(f"{what} has no body, this one has {events} event(s)")
    return status


def _recorded_at(f: Fields) -> datetime:
    try:
        t = datetime.fromisoformat(f.get("recorded_at", str))
    except ValueError:
        raise f.fail("recorded_at", "must be a time such as 2025-03-06T13:50:19.000000Z") from None
    if t.tzinfo is None:
        raise f.fail("recorded_at", "must say its time zone (end it with Z for UTC)")
    try:
        utc: datetime | None = t.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00:00-02:00 falls in the year 10000 in UTC
        utc = None
    if utc is None or utc.year < 1970:  # what every store and the file's format can hold
        raise f.fail("recorded_at", "must be a time between the years 1970 and 9999 (UTC)")
    return utc


def _event(obj: dict[str, Any], lines: Lines, version: int = VERSION) -> Event:
    if "request" in obj:
        raise lines.error(
            "expected an event line, found an interaction line (the previous interaction "
            "announces more events than it has)"
        )
    f = Fields(obj, "event: ", lines, ("t", "data", "b64", "pieces")[: 3 if version < 2 else 4])
    t = f.number("t")
    assert t is not None
    data = f.data("data", "b64")
    raw = f.get("pieces", list, optional=True)
    return Event(t, data, None if raw is None else _pieces(f, raw, t, len(data)))


def _pieces(f: Fields, raw: list[Any], t: float, size: int) -> Pieces | None:
    """`[[offset, t_ms], ...]`: offsets from 0, rising, inside the event's bytes; times
    rising, none after the event's `t`."""
    pieces: list[tuple[int, float]] = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], int)
            and not isinstance(item[0], bool)
            and isinstance(item[1], int | float)
            and not isinstance(item[1], bool)
            and math.isfinite(item[1])
        ):
            raise f.fail("pieces", "must be a list of [offset, t_ms] pairs of numbers")
        offset, at = item[0], float(item[1])
        if not pieces and offset != 0:
            raise f.fail("pieces", "must start with a piece at offset 0")
        if pieces and not pieces[-1][0] < offset < size:
            raise f.fail("pieces", f"has offset {offset}: offsets rise, within the event's bytes")
        if at < (pieces[-1][1] if pieces else 0) or at > t:
            raise f.fail("pieces", f"has time {at}: times rise, from 0 to the event's 't'")
        pieces.append((offset, at))
    if not pieces:
        raise f.fail("pieces", "must hold one piece or more (or be left out)")
    return normal(pieces, t)


_WHO = {"client": True, "server": False}


def _message(obj: dict[str, Any], lines: Lines) -> Message:
    if "request" in obj:
        raise lines.error(
            "expected a message line, found an interaction line (the previous interaction "
            "announces more messages than it has)"
        )
    f = Fields(obj, "message: ", lines, ("t", "from", "text", "b64", "close", "reason"))
    t = f.number("t")
    assert t is not None
    who = _WHO.get(f.get("from", str))
    if who is None:
        raise f.fail("from", "must be client or server")
    if sum(k in obj for k in ("text", "b64", "close")) != 1:
        raise lines.error("message: needs exactly one of 'text', 'b64', 'close'")
    if ("reason" in obj) != ("close" in obj):
        raise lines.error("message: 'reason' goes with 'close', and only with it")
    if "close" in obj:
        code = f.get("close", int)
        if not 1000 <= code <= 4999:
            raise f.fail("close", "must be a close code from 1000 to 4999")
        reason = f.text("reason")
        return Message(t, who, Kind.CLOSE, reason.encode("utf-8"), code)
    if "text" in obj:
        try:
            data = f.get("text", str).encode("utf-8")
        except UnicodeEncodeError:
            raise f.fail("text", "holds a lone surrogate (a text message is UTF-8)") from None
        return Message(t, who, Kind.TEXT, data)
    return Message(t, who, Kind.BINARY, f.data("unused", "b64"))
