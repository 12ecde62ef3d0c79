"""WebSocket messages: how a client's message is compared on replay, the handshake's
secrets, and message lines in the cassette file (version 2)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.file_format import Recorded
from proxy.core.canonical import MatchRules
from proxy.core.messages import (
    Kind,
    Message,
    as_json,
    close_of,
    close_reason,
    message_differences,
    offered_protocols,
    preview,
    redact_handshake,
    redact_protocols,
    with_ignored,
)
from proxy.core.records import Event, Outcome, Request, ResponseHead
from proxy.errors import CassetteFileError


def text(data: str, *, client: bool = True) -> Message:
    return Message(1.0, client, Kind.TEXT, data.encode())


COMPARED: dict[str, tuple[str, str, MatchRules, list[str]]] = {
    "same bytes": ('{"a":1}', '{"a":1}', MatchRules(), []),
    "key order": ('{"a":1,"b":2}', '{"b":2, "a":1}', MatchRules(), []),
    "event_id never compared": (
        '{"type":"response.create","event_id":"evt_1"}',
        '{"type":"response.create","event_id":"evt_2"}',
        MatchRules(),
        [],
    ),
    "a configured ignore path": (
        '{"session":{"id":"a","x":1}}',
        '{"session":{"id":"b","x":1}}',
        MatchRules(ignore_body_fields=("session.id",)),
        [],
    ),
    "a field differs": (
        '{"type":"session.update","session":{"voice":"alloy"}}',
        '{"type":"session.update","session":{"voice":"verse"}}',
        MatchRules(),
        ['message field "session.voice": "alloy" != "verse"'],
    ),
    "not JSON": (
        "hello",
        "hullo",
        MatchRules(),
        ["message: not JSON, 5 bytes != 5 bytes (first difference at byte 1): b'ello' != b'ullo'"],
    ),
}


@pytest.mark.parametrize(("got", "recorded", "rules", "found"), COMPARED.values(), ids=COMPARED)
def test_client_messages_compare_by_the_body_rules(
    got: str, recorded: str, rules: MatchRules, found: list[str]
) -> None:
    assert message_differences(text(got), text(recorded), with_ignored(rules)) == found


def test_a_binary_message_where_text_was_recorded_differs_by_kind() -> None:
    binary = Message(1.0, True, Kind.BINARY, b"hi")
    assert message_differences(binary, text("hi"), MatchRules()) == [
        "a binary message where the recording has a text message"
    ]


def test_the_key_in_a_subprotocol_is_redacted_and_the_rest_kept() -> None:
    value = "realtime, openai-insecure-api-key.sk-proj-abc_123, openai-beta.realtime-v1"
    assert redact_protocols(value) == (
        "realtime, openai-insecure-api-key.[REDACTED], openai-beta.realtime-v1"
    )
    headers = (("Sec-WebSocket-Protocol", value), ("Origin", "http://x"))
    redacted = redact_handshake(headers)
    assert redacted[1] == ("Origin", "http://x")
    assert offered_protocols(redacted) == [
        "realtime",
        "openai-insecure-api-key.[REDACTED]",
        "openai-beta.realtime-v1",
    ]


def test_a_close_reason_fits_a_close_frame() -> None:
    assert close_reason("short") == "short"
    cut = close_reason("é" * 100)
    assert len(cut.encode()) <= 123 and cut.endswith("...")


def test_previews_and_json_forms() -> None:
    close = close_of(5.0, False, 4000, "bye")
    assert preview(close) == "close 4000 'bye'"
    assert preview(text("a\nb" * 40), 10) == "a\\nba\\n..."
    assert preview(Message(0.0, True, Kind.BINARY, bytes(range(20))), 8) == "binary 0001..."
    assert as_json(close) == {
        "t": 5.0,
        "from": "server",
        "kind": "close",
        "size": 3,
        "code": 4000,
        "reason": "bye",
    }
    assert as_json(Message(0.0, True, Kind.BINARY, b"\xff"))["b64"] == "/w=="
    assert close.arrow == "<-" and text("x").arrow == "->"


SESSION = Recorded(
    request=Request("GET", "https://api.openai.com/v1/realtime?model=m", (("A", "b"),), b""),
    response=ResponseHead(101, (("Sec-WebSocket-Protocol", "realtime"),)),
    outcome=Outcome.COMPLETE,
    error=None,
    recorded_at=datetime(2026, 12, 2, 12, 0, tzinfo=UTC),
    ttfb_ms=3.0,
    duration_ms=50.0,
    events=(),
    messages=(
        Message(4.0, False, Kind.TEXT, '{"type":"session.created"} é'.encode()),
        Message(5.5, True, Kind.BINARY, b"\x00\xff"),
        close_of(9.0, True, 1000, "done"),
    ),
)
PLAIN = Recorded(
    request=Request("POST", "https://api.openai.com/v1/responses", (), b"{}"),
    response=ResponseHead(200, ()),
    outcome=Outcome.COMPLETE,
    error=None,
    recorded_at=datetime(2026, 12, 2, 12, 0, tzinfo=UTC),
    ttfb_ms=3.0,
    duration_ms=5.0,
    events=(Event(4.0, b"data: 1\n\n"),),
)


def test_a_session_round_trips_and_an_interaction_without_one_has_no_messages_field() -> None:
    data = cassette_file.dump("ws", [PLAIN, SESSION])
    lines = data.decode().splitlines()
    assert json.loads(lines[0])["version"] == 2
    assert json.loads(lines[4]) == {
        "t": 4.0,
        "from": "server",
        "text": '{"type":"session.created"} é',
    }
    assert json.loads(lines[5]) == {"t": 5.5, "from": "client", "b64": "AP8="}
    assert json.loads(lines[6]) == {"t": 9.0, "from": "client", "close": 1000, "reason": "done"}
    header, back = cassette_file.loads(data)
    assert (header.version, back) == (2, [PLAIN, SESSION])
    assert cassette_file.dump("ws", back) == data
    plain = cassette_file.dump("p", [PLAIN]).decode().splitlines()
    assert "messages" not in json.loads(plain[1])


GOOD = cassette_file.dump("ws", [SESSION]).decode().splitlines()
HEADER, HEAD, M1, M2, M3 = GOOD


def _with(line: str, **changes: object) -> str:
    obj = json.loads(line)
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


BAD: dict[str, tuple[list[str], int, str]] = {
    "messages in version 1": (
        [_with(HEADER, version=1), HEAD, M1, M2, M3],
        2,
        "needs cassette format version 2",
    ),
    "truncated": ([HEADER, HEAD, M1, M2], 4, "ends after 2 of the 3 messages"),
    "not a 101": ([HEADER, HEAD.replace('"status": 101', '"status": 200'), M1, M2, M3], 2, "101"),
    "events and messages": ([HEADER, _with(HEAD, events=1), M1, M2, M3], 2, "must be 0"),
    "two payloads": ([HEADER, HEAD, _with(M1, b64="AA=="), M2, M3], 3, "exactly one of"),
    "no payload": ([HEADER, HEAD, _with(M1, text=KeyError), M2, M3], 3, "exactly one of"),
    "bad direction": ([HEADER, HEAD, _with(M1, **{"from": "up"}), M2, M3], 3, "client or server"),
    "bad close code": ([HEADER, HEAD, M1, M2, _with(M3, close=7)], 5, "close code"),
    "reason alone": ([HEADER, HEAD, M1, _with(M2, reason="x"), M3], 4, "'reason' goes with"),
    "unknown field": ([HEADER, HEAD, _with(M1, opcode=1), M2, M3], 3, "unknown field 'opcode'"),
    "interaction too early": ([HEADER, HEAD, M1, M2, HEAD], 5, "expected a message line"),
}


@pytest.mark.parametrize(("lines", "line", "reason"), BAD.values(), ids=BAD)
def test_a_bad_message_line_is_named(lines: list[str], line: int, reason: str) -> None:
    data = "".join(f"{text}\n" for text in lines).encode()
    with pytest.raises(CassetteFileError) as caught:
        cassette_file.loads(data, source="x.cassette.jsonl")
    assert caught.value.line == line, caught.value
    assert reason in caught.value.reason


def test_the_secret_scan_reads_messages_and_names_their_lines() -> None:
    from dataclasses import replace

    from proxy.cassettes.transfer import record_secrets

    key = "sk-proj-" + "A1b2C3d4" * 5
    leaky = replace(
        SESSION,
        messages=(
            SESSION.messages[0],
            Message(5.0, True, Kind.TEXT, json.dumps({"api_key_field": key}).encode()),
            SESSION.messages[2],
        ),
    )
    [(line, finding)] = record_secrets([PLAIN, leaky])
    assert line == 6  # header, PLAIN's 2 lines, the session's line, message 1, then this one
    assert finding.kind == "OpenAI-style API key" and key not in finding.preview
    assert record_secrets([PLAIN, SESSION]) == []
