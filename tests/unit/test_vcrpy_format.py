"""Tests for proxy.cassettes.vcrpy on documents: what it reads, and each refusal naming why.

The end-to-end tests (tests/integration/test_import_vcrpy.py) import files that vcrpy itself
wrote; these cover the shapes a hand-edited or foreign file can take.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.cassettes import vcrpy
from proxy.errors import CassetteFileError, ConfigError

WHEN = datetime(2026, 1, 2, tzinfo=UTC)


def doc(*interactions: Any, version: Any = 1) -> bytes:
    return json.dumps({"interactions": list(interactions), "version": version}).encode()


def interaction(request: Any = None, response: Any = None) -> dict[str, Any]:
    return {
        "request": request
        if request is not None
        else {"method": "GET", "uri": "http://127.0.0.1:1/v1/x", "body": None, "headers": {}},
        "response": response
        if response is not None
        else {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": "hi"}},
    }


def parse(data: bytes) -> list[Any]:
    return vcrpy.parse(data, source="c.json", recorded_at=WHEN, json_file=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps([1, 2]).encode(), "not a vcrpy cassette"),
        (doc(version=2), "format version 2"),
        (json.dumps({"interactions": {}, "version": 1}).encode(), "'interactions' is not a list"),
        (doc(["not", "a", "dict"]), "interaction 1: needs a 'request' and a 'response'"),
        (doc(interaction(request={"uri": "http://h/"})), "needs a 'method' and a 'uri'"),
        (doc(interaction(response={"status": {}, "body": ""})), "needs a status code"),
        (doc(interaction(response={"status": {"code": True}})), "needs a status code"),
        (
            doc(interaction(request={"method": "GET", "uri": "http://h/", "headers": ["x"]})),
            "request headers are not a mapping",
        ),
        (
            doc(interaction(request={"method": "GET", "uri": "http://h/", "body": 5})),
            "request body is neither text nor bytes",
        ),
    ],
)
def test_a_bad_document_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(CassetteFileError) as caught:
        parse(data)
    assert reason in str(caught.value)
    assert "c.json" in str(caught.value)


def test_a_lone_surrogate_in_a_body_is_refused() -> None:
    # JSON can spell one (\udcff); UTF-8 cannot hold it.
    data = doc(interaction()).replace(b'"string": "hi"', b'"string": "h\\udcffi"')
    with pytest.raises(CassetteFileError, match="response body holds a lone surrogate"):
        parse(data)


def test_httpx_cassettes_of_older_vcrpy_are_read() -> None:
    old = {"status_code": 201, "headers": {"Content-Type": "text/plain"}, "content": "made"}
    [rec] = parse(doc(interaction(response=old)))
    assert rec.response.status == 201
    assert rec.response.headers == (("Content-Type", "text/plain"),)
    assert b"".join(e.data for e in rec.events) == b"made"


def test_headers_as_single_values_and_lists_both_read() -> None:
    request = {
        "method": "POST",
        "uri": "http://127.0.0.1:1/v1/x",
        "headers": {"Accept": "a", "X-Many": ["1", "2"]},
        "body": "q",
    }
    [rec] = parse(doc(interaction(request=request)))
    assert rec.request.headers == (("Accept", "a"), ("X-Many", "1"), ("X-Many", "2"))
    assert rec.request.body == b"q"
    assert rec.recorded_at == WHEN


def test_cassette_files_of_a_directory_are_named_by_their_path(tmp_path: Path) -> None:
    (tmp_path / "test_chat").mkdir()
    (tmp_path / "test_chat" / "test_one.yaml").write_text("x")
    (tmp_path / "top.json").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    names = [name for name, _ in vcrpy.cassette_files(tmp_path)]
    assert names == ["test_chat.test_one", "top"]


def test_cassette_files_refuses_an_empty_directory_and_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no vcrpy cassette"):
        vcrpy.cassette_files(tmp_path)
    with pytest.raises(ConfigError, match="neither a file nor a directory"):
        vcrpy.cassette_files(tmp_path / "absent")


def test_two_files_that_would_share_a_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.yaml").write_text("x")
    (tmp_path / "a.b.json").write_text("x")
    with pytest.raises(CassetteFileError, match=r"would be cassette 'a\.b'"):
        vcrpy.cassette_files(tmp_path)
