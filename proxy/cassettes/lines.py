"""Strict JSON Lines: numbered lines of bounded length, one JSON object each, and typed
access to an object's fields. Every error is a `CassetteFileError` that names the line.
Pure: a binary stream in, values out; only `json.loads` ever sees the text."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import IO, Any, ClassVar

from proxy.core.records import Headers
from proxy.core.strict_json import reject_constant
from proxy.errors import CassetteFileError

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An RFC 9110 token (section 5.6.2): what a header name or a method may be."""
_NOT_IN_VALUE = re.compile("[\r\n\0]")
_NOT_STORABLE = re.compile("[\0\ud800-\udfff]")


class Lines:
    """Numbered lines of a binary stream, none longer than `max_line` bytes."""

    def __init__(self, stream: IO[bytes], source: str, max_line: int, version_hint: str):
        self._stream = stream
        self._source = source
        self._max = max_line
        self.version_hint = version_hint  # said of an unknown field
        self.version = 1  # the file's, once its header is read
        self.number = 0

    def error(self, reason: str, line: int | None = None) -> CassetteFileError:
        return CassetteFileError(self.number if line is None else line, reason, self._source)

    def next(self) -> str | None:
        raw = self._stream.readline(self._max + 1)
        if not raw:
            return None
        self.number += 1
        if len(raw) > self._max and not raw.endswith(b"\n"):
            raise self.error(f"longer than {self._max} bytes")
        if raw.startswith(b"\xef\xbb\xbf"):
            raise self.error("starts with a UTF-8 byte order mark; save the file without it")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(f"not UTF-8 (byte {exc.start}); bytes go in base64 fields") from None
        text = text.removesuffix("\n").removesuffix("\r")  # CRLF from a Windows checkout
        if not text.strip():
            raise self.error("empty line")
        return text


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {key!r} appears twice")
        obj[key] = value
    return obj


def parse_object(text: str, lines: Lines) -> dict[str, Any]:
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=reject_constant)
    except RecursionError:
        raise lines.error("nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError included
        raise lines.error(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise lines.error(f"expected a JSON object, found {type(obj).__name__}")
    return obj


class Fields:
    """Typed access to one JSON object's fields; unknown fields are an error."""

    KINDS: ClassVar[dict[type, str]] = {
        str: "a string",
        int: "a whole number",
        list: "a list",
        dict: "an object",
        bool: "true or false",
    }

    def __init__(self, obj: dict[str, Any], where: str, lines: Lines, known: tuple[str, ...]):
        self.obj = obj
        self.where = where
        self.lines = lines
        unknown = [k for k in obj if k not in known]
        if unknown:
            raise lines.error(
                f"{where}: unknown field {unknown[0]!r} ({lines.version_hint}; "
                f"fields: {', '.join(known)})"
            )

    def fail(self, key: str, reason: str) -> CassetteFileError:
        return self.lines.error(f"{self.where}{key!r} {reason}")

    def get(self, key: str, kind: type, *, optional: bool = False) -> Any:
        if key not in self.obj:
            if optional:
                return None
            raise self.fail(key, "is missing")
        value = self.obj[key]
        if value is None and optional:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be {self.KINDS[kind]}, not {json.dumps(value)[:40]}")
        return value

    def number(self, key: str, *, optional: bool = False) -> float | None:
        value = self.obj.get(key)
        if key not in self.obj and not optional:
            raise self.fail(key, "is missing")
        if value is None and optional:
            return None
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise self.fail(key, "must be a number of milliseconds, 0 or more")
        return float(value)

    def text(self, key: str, *, optional: bool = False) -> Any:
        """A string a database column takes: no NUL, no lone surrogate."""
        value = self.get(key, str, optional=optional)
        if value is not None and (found := _NOT_STORABLE.search(value)):
            what = "a NUL character" if found.group() == "\0" else "a lone surrogate"
            raise self.fail(key, f"holds {what} (at character {found.start()})")
        return value

    def headers(self, key: str) -> Headers:
        """`[name, value]` pairs that can be sent again: each name an HTTP token, no value
        with CR, LF or NUL (a lone surrogate in a value is kept: it stands for a byte that
        was not UTF-8, and is sent as that byte)."""
        pairs = self.get(key, list)
        for pair in pairs:
            if not (
                isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
            ):
                raise self.fail(key, 'must be a list of ["name", "value"] pairs')
            name, value = pair
            if not TOKEN.fullmatch(name):
                raise self.fail(key, f"has the name {name!r}, which is not an HTTP token")
            if _NOT_IN_VALUE.search(value):
                raise self.fail(key, f"has a value for {name!r} with CR, LF or NUL")
        return tuple((n, v) for n, v in pairs)

    def data(self, text_key: str, b64_key: str) -> bytes:
        has_text, has_b64 = text_key in self.obj, b64_key in self.obj
        if has_text == has_b64:
            raise self.lines.error(f"{self.where}needs exactly one of {text_key!r}, {b64_key!r}")
        if has_text:
            text: str = self.get(text_key, str)
            try:
                return text.encode("utf-8")
            except UnicodeEncodeError:
                raise self.fail(text_key, "holds a lone surrogate (use base64)") from None
        try:
            return base64.b64decode(self.get(b64_key, str), validate=True)
        except (binascii.Error, ValueError):
            raise self.fail(b64_key, "is not valid base64") from None
