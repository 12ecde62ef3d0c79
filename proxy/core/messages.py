"""WebSocket sessions as plain data: messages, the handshake's secrets, and how a client's
message is compared with the recorded one.

A recorded session is an interaction whose response head is the upstream's `101` and whose
body is its messages, in the order they crossed the proxy: each with its direction, its
kind (text, binary, or the close that ends the session), its payload and its offset in ms
from the handshake's start. The close carries its code and reason and says who closed;
a connection that dropped without a close frame is a close with code 1006 (RFC 6455
section 7.1.5), from the side that dropped it.

Pure: no I/O. The relay and the replay (`proxy.serve.websocket`), the store and the
cassette file all speak `Message`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from proxy.core.canonical import MatchRules
from proxy.core.differences import capped
from proxy.core.matching import differences
from proxy.core.records import Headers, Request
from proxy.core.redact import REDACTED

ABNORMAL = 1006
"""The close code of a connection that ended without a close frame (RFC 6455 7.1.5)."""
NO_STATUS = 1005
"""The code recorded for a close frame without one (RFC 6455 7.1.5); never sent."""
POLICY_VIOLATION = 1008
"""The close code a replay answers a client message that the recording does not hold."""
MAX_REASON_BYTES = 123
"""A close frame's reason: 125 bytes of payload less the 2-byte code."""

DEFAULT_IGNORED_FIELDS = ("event_id",)
"""Fields of a client's JSON message never compared on replay: the OpenAI Realtime API's
client events carry an `event_id` the client generates afresh each run."""

PROTOCOL_HEADER = "sec-websocket-protocol"
_KEY_PROTOCOL = re.compile(r"(openai-insecure-api-key\.)[^,\s]+", re.IGNORECASE)
"""The browser form of an API key: a subprotocol (a browser cannot set headers)."""


class Kind(StrEnum):
    TEXT = "text"
    BINARY = "binary"
    CLOSE = "close"


@dataclass(frozen=True, slots=True)
class Message:
    """One message of a session. For a close, `data` is its reason (UTF-8) and `code` its
    code."""

    t_ms: float
    from_client: bool
    kind: Kind
    data: bytes
    code: int | None = None

    def __len__(self) -> int:  # what it weighs in the recorder's queue
        return len(self.data)

    @property
    def arrow(self) -> str:
        """`->` client to upstream, `<-` upstream to client."""
        return "->" if self.from_client else "<-"

    @property
    def who(self) -> str:
        return "client" if self.from_client else "server"


def close_of(t_ms: float, from_client: bool, code: int | None, reason: str = "") -> Message:
    return Message(t_ms, from_client, Kind.CLOSE, reason.encode("utf-8"), code)


def redact_protocols(value: str) -> str:
    """`Sec-WebSocket-Protocol` with the key of an `openai-insecure-api-key.<key>`
    subprotocol replaced: the other subprotocols, which are matched, kept as sent."""
    return _KEY_PROTOCOL.sub(lambda m: m.group(1) + REDACTED, value)


def redact_handshake(headers: Headers) -> Headers:
    """The handshake's headers with the key a subprotocol may carry redacted (the
    credential headers are the `Redactor`'s, as for any request)."""
    return tuple(
        (n, redact_protocols(v) if n.lower() == PROTOCOL_HEADER else v) for n, v in headers
    )


def offered_protocols(headers: Headers) -> list[str]:
    """The subprotocols a client offers, in its order of preference."""
    return [
        p.strip()
        for n, v in headers
        if n.lower() == PROTOCOL_HEADER
        for p in v.split(",")
        if p.strip()
    ]


def with_ignored(rules: MatchRules) -> MatchRules:
    """The rules a client message is compared by: the body rules, plus the fields a
    client generates afresh (`DEFAULT_IGNORED_FIELDS`)."""
    ignored = tuple(dict.fromkeys((*DEFAULT_IGNORED_FIELDS, *rules.ignore_body_fields)))
    return replace(rules, ignore_body_fields=ignored, match_headers=())


def message_differences(got: Message, recorded: Message, rules: MatchRules) -> list[str]:
    """How a client's message differs from the recorded one (empty when it matches): the
    kind, then the payload by the canonical JSON rules (`with_ignored(rules)`)."""
    if got.kind is not recorded.kind:
        return [f"a {got.kind} message where the recording has a {recorded.kind} message"]
    if got.data == recorded.data:
        return []
    url = "ws://message/"
    found = differences(
        Request("MESSAGE", url, (), got.data), Request("MESSAGE", url, (), recorded.data), rules
    )
    return capped([f.replace("body", "message", 1) for f in found])


def close_reason(text: str) -> str:
    """`text` cut to what a close frame carries (123 bytes of UTF-8), on a character
    boundary."""
    data = text.encode("utf-8")
    if len(data) <= MAX_REASON_BYTES:
        return text
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def preview(message: Message, width: int = 60) -> str:
    """A message in one short line: its payload (text, or its size in bytes), cut to
    `width` characters; a close as its code and reason."""
    if message.kind is Kind.CLOSE:
        reason = message.data.decode("utf-8", "replace")
        return f"close {message.code}" + (f" {reason!r}" if reason else "")
    if message.kind is Kind.BINARY:
        return f"binary {message.data[: width // 4].hex()}" + (
            "..." if len(message.data) > width // 4 else ""
        )
    text = message.data.decode("utf-8", "replace").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def as_json(message: Message) -> dict[str, Any]:
    """A message as `rrproxy show --json` and the admin API give it: text as text, binary
    as base64, a close as its code and reason."""
    obj: dict[str, Any] = {
        "t": message.t_ms,
        "from": message.who,
        "kind": message.kind.value,
        "size": len(message.data),
    }
    if message.kind is Kind.CLOSE:
        obj["code"] = message.code
        obj["reason"] = message.data.decode("utf-8", "replace")
    elif message.kind is Kind.TEXT:
        obj["text"] = message.data.decode("utf-8", "replace")
    else:
        obj["b64"] = base64.b64encode(message.data).decode("ascii")
    return obj
