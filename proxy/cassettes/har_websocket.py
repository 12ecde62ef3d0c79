"""A WebSocket session in a HAR entry, as Chrome DevTools (and mitmproxy) save one: the
handshake's entry (`"_resourceType": "websocket"`, its response the 101) carries
`_webSocketMessages`, each `{"type": "send" | "receive", "time": epoch seconds,
"opcode": 1 (text) | 2 (binary), "data": the text, or base64 for binary}`, and its URL is
`ws://` or `wss://` (rrproxy stores the `http://` or `https://` it forwarded to).

That list times a message to its float's precision and holds no close with its code: an
rrproxy export adds `_t` to each message (its offset in ms as recorded) and keeps the
session's closes in `_rrproxy.closes` (`{"n": its place among the messages, "t", "from",
"code", "reason"}`), so that importing the HAR gives back exactly the session that was
exported. From another tool's HAR, a message's offset is its `time` less the entry's
`startedDateTime`; a close frame (opcode 8) is a close without a code (1005, "no status"),
and pings and pongs (9, 10), which rrproxy relays but never records, are left out.

Pure: messages in, JSON out, and back; every error is a `CassetteFileError` naming the
entry.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeGuard

from proxy.cassettes.foreign import entry_error
from proxy.core.messages import NO_STATUS, Kind, Message, close_of

FIELD = "_webSocketMessages"
_OPCODES = {Kind.TEXT: 1, Kind.BINARY: 2}
_CLOSE, _PING, _PONG = 8, 9, 10
_SCHEMES = (("http://", "ws://"), ("https://", "wss://"))


def har_url(url: str) -> str:
    """The handshake's URL as a browser names it: `ws://`, `wss://` (rrproxy stores the
    `http://`, `https://` it was forwarded to)."""
    for http, ws in _SCHEMES:
        if url.startswith(http):
            return ws + url[len(http) :]
    return url


def stored_url(url: str) -> str:
    """`har_url` undone: the URL rrproxy stores and matches."""
    for http, ws in _SCHEMES:
        if url.startswith(ws):
            return http + url[len(ws) :]
    return url


def to_har(
    messages: Sequence[Message], started: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Chrome's `_webSocketMessages` of a session, and its closes (for `_rrproxy.closes`)."""
    epoch = started.timestamp()
    out: list[dict[str, Any]] = []
    closes: list[dict[str, Any]] = []
    for n, m in enumerate(messages):
        if m.kind is Kind.CLOSE:
            reason = m.data.decode("utf-8", "replace")
            closes.append({"n": n, "t": m.t_ms, "from": m.who, "code": m.code, "reason": reason})
            continue
        if m.kind is Kind.TEXT:
            data = m.data.decode("utf-8")  # a text message is UTF-8
        else:
            data = base64.b64encode(m.data).decode("ascii")
        out.append(
            {
                "type": "send" if m.from_client else "receive",
                "time": epoch + m.t_ms / 1000,
                "opcode": _OPCODES[m.kind],
                "data": data,
                "_t": m.t_ms,
            }
        )
    return out, closes


def from_har(
    raw: Any, closes: Any, started: datetime, source: str, where: str
) -> tuple[Message, ...]:
    """The session's messages from an entry's `_webSocketMessages` (and, in rrproxy's own
    HAR, `_rrproxy.closes`)."""
    if not isinstance(raw, list):
        raise entry_error(source, where, f"{FIELD} must be a list")
    epoch = started.timestamp()
    messages: list[Message] = []
    for k, item in enumerate(raw):
        at = f"{FIELD}[{k}]"
        if not isinstance(item, dict):
            raise entry_error(source, where, f"{at} must be an object")
        kind = item.get("type")
        if kind not in ("send", "receive"):
            raise entry_error(source, where, f"{at}: 'type' must be send or receive")
        opcode = item.get("opcode")
        if opcode in (_PING, _PONG):
            continue
        t = _offset(item, epoch, source, where, at)
        data = item.get("data", "")
        if not isinstance(data, str):
            raise entry_error(source, where, f"{at}: 'data' must be text")
        from_client = kind == "send"
        if opcode == 1:
            messages.append(Message(t, from_client, Kind.TEXT, _utf8(data, source, where, at)))
        elif opcode == 2:
            messages.append(Message(t, from_client, Kind.BINARY, _b64(data, source, where, at)))
        elif opcode == _CLOSE:
            messages.append(close_of(t, from_client, NO_STATUS, data))
        else:
            raise entry_error(
                source, where, f"{at}: 'opcode' must be 1 (text), 2 (binary) or 8 (close)"
            )
    for close in _closes(closes, source, where):
        n, message = close
        if not 0 <= n <= len(messages):
            raise entry_error(source, where, f"_rrproxy: a close's 'n' ({n}) is out of range")
        messages.insert(n, message)
    return tuple(messages)


def _closes(raw: Any, source: str, where: str) -> list[tuple[int, Message]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise entry_error(source, where, "_rrproxy: 'closes' must be a list of objects")
    out = []
    for c in raw:
        n, t, who, code, reason = (c.get(k) for k in ("n", "t", "from", "code", "reason"))
        if (
            not _whole(n)
            or not _number(t)
            or who not in ("client", "server")
            or not (code is None or _whole(code))
            or not isinstance(reason, str)
        ):
            raise entry_error(
                source,
                where,
                "_rrproxy: each close needs 'n', 't', 'from' (client or server), 'code' and "
                "'reason'",
            )
        out.append((n, close_of(float(t), who == "client", code, reason)))
    return sorted(out, key=lambda c: c[0])


def _offset(item: dict[str, Any], epoch: float, source: str, where: str, at: str) -> float:
    """The message's offset in ms: rrproxy's exact `_t`, else its `time` less the entry's
    start (rounded to the microsecond that rrproxy records, never before the start)."""
    exact = item.get("_t")
    if exact is not None:
        if not _number(exact) or exact < 0:
            raise entry_error(source, where, f"{at}: '_t' must be milliseconds, 0 or more")
        return float(exact)
    time = item.get("time")
    if not _number(time):
        raise entry_error(source, where, f"{at}: 'time' must be seconds since the epoch")
    return max(round((float(time) - epoch) * 1000, 3), 0.0)


def _number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _whole(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _utf8(text: str, source: str, where: str, at: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise entry_error(source, where, f"{at}: 'data' holds a lone surrogate") from None


def _b64(text: str, source: str, where: str, at: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise entry_error(source, where, f"{at}: a binary message's 'data' is not base64") from None
