"""The cassette file format: exact round trips, readable lines, and every bad line named."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.file_format import Recorded
from proxy.core.records import Event, Outcome, Request, ResponseHead, check_cassette_name
from proxy.core.secrets_scan import scan_request, scan_response, scan_text
from proxy.errors import CassetteFileError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-world.cassette.jsonl"

SSE = b'event: response.output_text.delta\ndata: {"delta":"Hello, \xc3\xa9"}\n\n'
BINARY = b"\x1f\x8b\x08\x00\xff\xfe"  # gzip bytes: not UTF-8


def recorded(
    *,
    body: bytes = b'{"model":"gpt-4o","input":"hi","stream":true}',
    events: tuple[Event, ...] = (Event(12.5, SSE), Event(13.0, BINARY)),
    outcome: Outcome = Outcome.COMPLETE,
    error: str | None = None,
    headers: tuple[tuple[str, str], ...] = (
        ("Set-Cookie", "a=1"),
        ("X-Id", "1"),
        ("Set-Cookie", "b=2"),
    ),
) -> Recorded:
    return Recorded(
        request=Request(
            "POST",
            "https://api.openai.com/v1/responses?x=1&x=2",
            (("Content-Type", "application/json"), ("Authorization", "[REDACTED]")),
            body,
        ),
        response=ResponseHead(200, headers),
        outcome=outcome,
        error=error,
        recorded_at=datetime(2025, 3, 6, 13, 50, 19, 123456, tzinfo=UTC),
        ttfb_ms=11.25,
        duration_ms=None if outcome is Outcome.INCOMPLETE else 20.0,
        events=events,
    )


SAMPLES = {
    "text events": [recorded()],
    "binary request body": [recorded(body=b"\x00\xff\x80")],
    "empty body, no events": [recorded(body=b"", events=())],
    "incomplete": [recorded(outcome=Outcome.INCOMPLETE, error="the proxy stopped")],
    "broken": [recorded(outcome=Outcome.UPSTREAM_BROKEN, error="reset")],
    "client gone": [recorded(outcome=Outcome.CLIENT_GONE)],
    "lone surrogate in a header": [recorded(headers=(("X-Odd", "caf\udce9"),))],
    "line separators in text": [recorded(events=(Event(1.0, "a\u2028b\u0085c\r\n".encode()),))],
    "several": [recorded(), recorded(body=b"second"), recorded(events=())],
    "pieces": [recorded(events=(Event(9.5, b"data: hello\n\n", ((0, 1.25), (8, 9.5))),))],
    "pieces of bytes": [recorded(events=(Event(3.0, b"\xff\xfe\x00", ((0, 1.0), (1, 2.0))),))],
    "none": [],
}


@pytest.mark.parametrize("interactions", SAMPLES.values(), ids=SAMPLES.keys())
def test_write_read_write_is_byte_identical(interactions: list[Recorded]) -> None:
    data = cassette_file.dump("my-cassette", interactions)
    header, back = cassette_file.loads(data)
    assert header.name == "my-cassette"
    assert back == interactions
    assert cassette_file.dump(header.name, back) == data


def test_the_example_round_trips() -> None:
    """The example is a version 1 file: it reads, and writes back line for line but the
    header's version (its events arrived whole: no `pieces`)."""
    data = EXAMPLE.read_bytes()
    assert data.startswith(b'{"format": "rrproxy-cassette", "version": 1,')
    header, back = cassette_file.loads(data)
    assert header.version == 1
    written = cassette_file.dump(header.name, back).split(b"\n")
    original = data.split(b"\n")
    assert written[0] == original[0].replace(b'"version": 1', b'"version": 2')
    assert written[1:] == original[1:]


def test_lines_are_readable_text() -> None:
    lines = cassette_file.dump("c", [recorded()]).decode("utf-8").split("\n")
    assert lines[0] == (
        '{"format": "rrproxy-cassette", "version": 2, "name": "c", "interactions": 1}'
    )
    head = json.loads(lines[1])
    assert head["request"]["body"] == '{"model":"gpt-4o","input":"hi","stream":true}'
    assert head["response"]["headers"] == [
        ["Set-Cookie", "a=1"],
        ["X-Id", "1"],
        ["Set-Cookie", "b=2"],
    ]
    assert head["complete"] is True and head["events"] == 2
    # an SSE event is its text, non-ASCII kept as is; only non-UTF-8 bytes are base64
    assert lines[2] == (
        '{"t": 12.5, "data": "event: response.output_text.delta\\ndata: '
        '{\\"delta\\":\\"Hello, é\\"}\\n\\n"}'
    )
    assert lines[3] == '{"t": 13.0, "b64": "H4sIAP/+"}'
    assert lines[4] == ""  # every line ends with a newline
    assert len(lines) == 5


def test_crlf_line_ends_read_the_same() -> None:
    data = cassette_file.dump("c", [recorded()])
    _, back = cassette_file.loads(data.replace(b"\n", b"\r\n"))
    assert back == [recorded()]


GOOD = cassette_file.dump("c", [recorded()]).decode().split("\n")[:-1]
HEADER, HEAD, EV1, EV2 = GOOD


def _with(line: str, **changes: object) -> str:
    obj = json.loads(line)
    for path, value in changes.items():
        target = obj
        *parents, last = path.split("__")
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return json.dumps(obj, ensure_ascii=False)


BAD: dict[str, tuple[list[str], int, str]] = {
    "empty file": ([], 1, "the file is empty"),
    "not json": ([HEADER, "{oops", EV1, EV2], 2, "not valid JSON"),
    "not an object": ([HEADER, "[1, 2]", EV1, EV2], 2, "expected a JSON object"),
    "not a cassette": (['{"hello": 1}'], 1, "not an rrproxy cassette"),
    "newer version": ([_with(HEADER, version=3), HEAD, EV1, EV2], 1, "version 3 is newer"),
    "untimed in version 1": (
        [_with(HEADER, version=1), _with(HEAD, untimed=True), EV1, EV2],
        2,
        "'untimed' is a field of format version 2",
    ),
    "untimed not a flag": ([HEADER, _with(HEAD, untimed="yes"), EV1, EV2], 2, "'untimed' must be"),
    "bad version": ([_with(HEADER, version="1"), HEAD, EV1, EV2], 1, "'version' must be"),
    "traversal name": ([_with(HEADER, name="../etc"), HEAD, EV1, EV2], 1, "not a valid cassette"),
    "separator name": ([_with(HEADER, name="a/b"), HEAD, EV1, EV2], 1, "not a valid cassette"),
    "control char name": ([_with(HEADER, name="a\nb"), HEAD, EV1, EV2], 1, "not a valid cassette"),
    "unknown field": ([HEADER, _with(HEAD, extra=1), EV1, EV2], 2, "unknown field 'extra'"),
    "missing request": ([HEADER, _with(HEAD, request=KeyError), EV1, EV2], 2, "interaction line"),
    "bad method": ([HEADER, _with(HEAD, request__method="PO ST"), EV1, EV2], 2, "'method'"),
    "relative url": ([HEADER, _with(HEAD, request__url="/v1/x"), EV1, EV2], 2, "'url'"),
    "file url": ([HEADER, _with(HEAD, request__url="file:///etc/passwd"), EV1, EV2], 2, "'url'"),
    "bad headers": ([HEADER, _with(HEAD, request__headers={"a": "b"}), EV1, EV2], 2, "'headers'"),
    "bad pair": ([HEADER, _with(HEAD, response__headers=[["a"]]), EV1, EV2], 2, "pairs"),
    "body twice": ([HEADER, _with(HEAD, request__body_b64="AA=="), EV1, EV2], 2, "exactly one"),
    "bad status": ([HEADER, _with(HEAD, response__status=42), EV1, EV2], 2, "'status'"),
    "bool status": ([HEADER, _with(HEAD, response__status=True), EV1, EV2], 2, "'status'"),
    "bad outcome": ([HEADER, _with(HEAD, outcome="recording"), EV1, EV2], 2, "'outcome'"),
    "inconsistent": ([HEADER, _with(HEAD, complete=False), EV1, EV2], 2, "'complete' must be"),
    "naive time": ([HEADER, _with(HEAD, recorded_at="2025-03-06T13:50:19"), EV1, EV2], 2, "zone"),
    "negative ttfb": ([HEADER, _with(HEAD, ttfb_ms=-1), EV1, EV2], 2, "'ttfb_ms'"),
    "nan": ([HEADER, HEAD.replace('"ttfb_ms": 11.25', '"ttfb_ms": NaN'), EV1, EV2], 2, "NaN"),
    "duplicate key": ([HEADER, HEAD, '{"t": 1, "t": 2, "data": ""}', EV2], 3, "appears twice"),
    "bad base64": ([HEADER, HEAD, EV1, '{"t": 1.0, "b64": "***"}'], 4, "not valid base64"),
    "event without t": ([HEADER, HEAD, EV1, '{"data": "x"}'], 4, "'t' is missing"),
    "too few events": ([HEADER, HEAD, EV1, HEADER.replace("1}", "0}")], 4, "unknown field"),
    "events run out": ([HEADER, HEAD, EV1], 3, "1 of the 2 events"),
    "interaction for event": (
        [HEADER, _with(HEAD, events=3), EV1, EV2, HEAD],
        5,
        "expected an event",
    ),
    "event for interaction": ([HEADER, HEAD, EV1, EV2, EV2], 5, "expected an interaction"),
    # pieces (version 2): where each piece of an event starts, and when it arrived
    "pieces in version 1": (
        [_with(HEADER, version=1), HEAD, _with(EV1, pieces=[[0, 1.0]]), EV2],
        3,
        "unknown field 'pieces'",
    ),
    "pieces not pairs": ([HEADER, HEAD, _with(EV1, pieces=[[0]]), EV2], 3, "[offset, t_ms] pairs"),
    "pieces of text": ([HEADER, HEAD, _with(EV1, pieces=[["0", 1]]), EV2], 3, "pairs of numbers"),
    "pieces empty": ([HEADER, HEAD, _with(EV1, pieces=[]), EV2], 3, "one piece or more"),
    "piece not at 0": ([HEADER, HEAD, _with(EV1, pieces=[[2, 1.0]]), EV2], 3, "offset 0"),
    "pieces back": ([HEADER, HEAD, _with(EV1, pieces=[[0, 1], [5, 2], [3, 3]]), EV2], 3, "rise"),
    "piece past the end": ([HEADER, HEAD, _with(EV1, pieces=[[0, 1], [999, 2]]), EV2], 3, "999"),
    "piece after t": ([HEADER, HEAD, _with(EV1, pieces=[[0, 1], [3, 99]]), EV2], 3, "time 99"),
    "pieces back in time": ([HEADER, HEAD, _with(EV1, pieces=[[0, 5], [3, 1]]), EV2], 3, "rise"),
    "too many interactions": ([_with(HEADER, interactions=0), HEAD, EV1, EV2], 2, "one more"),
    "too few interactions": ([_with(HEADER, interactions=2), HEAD, EV1, EV2], 4, "announces 2"),
    "blank line": ([HEADER, "", HEAD, EV1, EV2], 2, "empty line"),
    "byte order mark": (["\ufeff" + HEADER, HEAD, EV1, EV2], 1, "byte order mark"),
    # What could never be stored or replayed:
    "name too long a file name": (
        [_with(HEADER, name="é" * 200), HEAD, EV1, EV2],
        1,
        "more than the 255 bytes",
    ),
    "interim status": ([HEADER, _with(HEAD, response__status=101), EV1, EV2], 2, "a final"),
    "body on a 204": ([HEADER, _with(HEAD, response__status=204), EV1, EV2], 2, "no body"),
    "body on a 304": ([HEADER, _with(HEAD, response__status=304), EV1, EV2], 2, "no body"),
    "body for HEAD": ([HEADER, _with(HEAD, request__method="HEAD"), EV1, EV2], 2, "HEAD has no"),
    "header name with a space": (
        [HEADER, _with(HEAD, response__headers=[["X Id", "1"]]), EV1, EV2],
        2,
        "response: 'headers' has the name 'X Id', which is not an HTTP token",
    ),
    "header name not ascii": (
        [HEADER, _with(HEAD, request__headers=[["Clé", "1"]]), EV1, EV2],
        2,
        "not an HTTP token",
    ),
    "header value with CRLF": (
        [HEADER, _with(HEAD, response__headers=[["X-Id", "1\r\nSet-Cookie: a=b"]]), EV1, EV2],
        2,
        "a value for 'X-Id' with CR, LF or NUL",
    ),
    "header value with NUL": (
        [HEADER, _with(HEAD, request__headers=[["X-Id", "1\u0000"]]), EV1, EV2],
        2,
        "CR, LF or NUL",
    ),
    "NUL in the url": (
        [HEADER, _with(HEAD, request__url="https://a.example/\u0000"), EV1, EV2],
        2,
        "'url' holds a NUL character",
    ),
    "year 10000 in UTC": (
        [HEADER, _with(HEAD, recorded_at="9999-12-31T23:59:59-01:00"), EV1, EV2],
        2,
        "between the years 1970 and 9999",
    ),
    "year 10": (
        [HEADER, _with(HEAD, recorded_at="0010-01-01T00:00:00Z"), EV1, EV2],
        2,
        "between the years 1970 and 9999",
    ),
}


@pytest.mark.parametrize("lines, line, reason", BAD.values(), ids=BAD.keys())
def test_a_bad_file_names_the_line(lines: list[str], line: int, reason: str) -> None:
    data = "".join(f"{text}\n" for text in lines).encode()
    with pytest.raises(CassetteFileError) as caught:
        cassette_file.loads(data, source="x.cassette.jsonl")
    assert caught.value.line == line, caught.value
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"x.cassette.jsonl, line {line}: ")


def test_a_lone_surrogate_in_a_url_names_the_line() -> None:
    head = _with(HEAD, request__url="https://a.example/x").replace("/x", "/\\udcff")
    data = f"{HEADER}\n{head}\n{EV1}\n{EV2}\n".encode()
    with pytest.raises(CassetteFileError) as caught:
        cassette_file.loads(data)
    assert caught.value.line == 2
    assert "'url' holds a lone surrogate" in caught.value.reason


CASSETTE_NAMES = {
    "plain": ("checkout-flow", True),
    "200 characters": ("a" * 200, True),
    "201 characters": ("a" * 201, False),
    "120 two-byte characters: 255 bytes with the suffix": ("é" * 120, True),
    "121 two-byte characters: 257 bytes": ("é" * 121, False),
    "200 two-byte characters": ("é" * 200, False),
    "a byte that is not UTF-8 (from a file name)": ("caf\udce9", False),
    "separator": ("a/b", False),
    "dot dot": ("..", False),
    "control character": ("a\tb", False),
}


@pytest.mark.parametrize("name, ok", CASSETTE_NAMES.values(), ids=CASSETTE_NAMES.keys())
def test_a_cassette_name_is_a_file_name_every_file_system_takes(name: str, ok: bool) -> None:
    if ok:
        assert check_cassette_name(name) == name
    else:
        with pytest.raises(ValueError, match="not a valid cassette name"):
            check_cassette_name(name)


def test_bytes_that_are_not_utf8_name_the_line() -> None:
    data = (HEADER + "\n" + HEAD + "\n").encode() + b'{"t": 1.0, "data": "\xff"}\n'
    with pytest.raises(CassetteFileError, match="line 3: not UTF-8"):
        cassette_file.loads(data)


def test_a_line_longer_than_the_limit_is_refused_without_reading_it_all() -> None:
    data = cassette_file.dump("c", [recorded(events=(Event(1.0, b"x" * 5000),))])
    stream = io.BytesIO(data)
    with pytest.raises(CassetteFileError, match="line 3: longer than 1000 bytes"):
        list(cassette_file.read(stream, max_line=1000))
    assert stream.tell() < len(data)


def test_every_truncation_fails_with_a_line_number() -> None:
    data = cassette_file.dump("c", [recorded(), recorded(body=b"\xff"), recorded(events=())])
    # Any cut but the last newline loses content; each must fail (never read as less).
    for cut in range(len(data) - 1):
        with pytest.raises(CassetteFileError) as caught:
            cassette_file.loads(data[:cut])
        assert caught.value.line is not None and caught.value.line >= 1, cut
    _, back = cassette_file.loads(data[:-1])  # only the final newline gone: all there
    assert len(back) == 3


SECRETS = {
    "openai": "sk-proj-abcdefghijklmnopqrstuvwxyz0123",
    "anthropic": "sk-ant-api03-abcdefghijklmnopqrstuv",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "bearer": "Bearer abc.def-ghi_jkl~mno+pqr/stu",
    "google": "AIzaSyA-abcdefghijklmnopqrstuvwxyz12345",
    "private key": "-----BEGIN RSA PRIVATE KEY-----",
}


@pytest.mark.parametrize("secret", SECRETS.values(), ids=SECRETS.keys())
def test_key_like_strings_are_found(secret: str) -> None:
    found = list(scan_text(f'{{"note": "use {secret} here"}}'))
    assert found, secret
    assert all(secret[:8] in preview and secret not in preview for _, preview in found)


@pytest.mark.parametrize(
    "text",
    [
        "[REDACTED]",
        "Bearer [REDACTED]",
        "task-abcdefghijklmnopqrstuvwxyz",  # sk- inside a word
        "resp_67c9a81b6a048190a9ee441c5755a4e8",
        "msg_67c9a81dea8c8190b79651a2b3adf91e",
        "sk-short",
    ],
)
def test_ordinary_text_is_not_a_secret(text: str) -> None:
    assert list(scan_text(text)) == []


def test_the_scan_says_where() -> None:
    key = "sk-ant-api03-abcdefghijklmnopqrstuv"
    request = Request(
        "POST",
        f"https://h/x?api_key=plain&q={key}",
        (("X-Api-Key", "not-redacted"), ("Authorization", "[REDACTED]")),
        b'{"k": "' + key.encode() + b'"}',
    )
    where = [f.where for f in scan_request(request)]
    assert where == [
        "query parameter 'api_key'",
        "query parameter 'q'",
        "request header 'X-Api-Key'",
        "request body",
    ]
    head = ResponseHead(200, (("Set-Cookie", "[REDACTED]"),))
    found = list(scan_response(head, (Event(1.0, b"ok"), Event(2.0, key.encode()))))
    assert [f.where for f in found] == ["event 2"]


def test_the_example_holds_no_secrets() -> None:
    _, recs = cassette_file.loads(EXAMPLE.read_bytes())
    for rec in recs:
        assert list(scan_request(rec.request)) == []
        assert list(scan_response(rec.response, rec.events)) == []
