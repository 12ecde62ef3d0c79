"""What the converters from other tools' recordings share (`vcrpy`, `har`): checking a
converted interaction exactly as a cassette file's line is checked, and the one event a
recording without event timing becomes.

Pure: records in, records out; every error is a `CassetteFileError` that names the file and
the entry.
"""

from __future__ import annotations

from typing import Any

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.file_format import Recorded
from proxy.core.records import Event, Headers
from proxy.errors import CassetteFileError


def entry_error(source: str, entry: str, reason: str) -> CassetteFileError:
    return CassetteFileError(None, f"{entry}: {reason}", source)


def checked(rec: Recorded, source: str, entry: str) -> Recorded:
    """`rec` as a cassette file would give it back, or the reason it cannot be stored or
    replayed (the file format's own checks: method, URL, status, header names and values)."""
    data = cassette_file.header_line("imported", 1) + b"".join(cassette_file.interaction_lines(rec))
    try:
        _, recs = cassette_file.loads(data, source=source)
    except CassetteFileError as exc:
        raise entry_error(source, entry, exc.reason) from None
    return recs[0]


def whole_body(body: bytes, t_ms: float = 0.0) -> tuple[Event, ...]:
    """A body recorded whole: one event (none for an empty body), at `t_ms`."""
    return (Event(t_ms, body),) if body else ()


def text_pairs(pairs: list[tuple[Any, Any]], source: str, entry: str, what: str) -> Headers:
    """Header pairs whose names and values are strings (a number is written as text)."""
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(name, str) or not isinstance(value, str):
            raise entry_error(source, entry, f"{what}: a header is not a name and a text value")
        out.append((name, value))
    return tuple(out)


def source_entry(index: int, method: object, url: object) -> str:
    return f"entry {index + 1} ({method} {url})"
