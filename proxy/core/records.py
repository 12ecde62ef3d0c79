"""The plain data that flows through rrproxy: requests, responses and events.

These types know nothing of HTTP servers or databases; the store, the replayer and the
cassette file all speak them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from proxy.core.usage import Usage

Headers = tuple[tuple[str, str], ...]
"""Header pairs in the order they were sent; a name may repeat (Set-Cookie)."""


class Outcome(StrEnum):
    """How an interaction ended."""

    RECORDING = "recording"  # still streaming (or the process died: see INCOMPLETE)
    COMPLETE = "complete"  # the whole body arrived and was recorded
    CLIENT_GONE = "client_gone"  # the client hung up; the body was still read to its end
    UPSTREAM_BROKEN = "upstream_broken"  # upstream broke the stream; replayed as the same break
    INCOMPLETE = "incomplete"  # recording stopped early (killed process, store failure)

    @property
    def complete(self) -> bool:
        """Whether the whole body was recorded (the client may have left: it still was)."""
        return self in (Outcome.COMPLETE, Outcome.CLIENT_GONE)

    @property
    def replayable(self) -> bool:
        """Whether a replay may serve this interaction (a break is replayed as a break)."""
        return self in (Outcome.COMPLETE, Outcome.CLIENT_GONE, Outcome.UPSTREAM_BROKEN)


def header_pairs(raw: list[list[str]]) -> Headers:
    """Headers as JSON stores them (lists) back to pairs."""
    return tuple((name, value) for name, value in raw)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str  # absolute upstream URL, query included (secrets already redacted when stored)
    headers: Headers
    body: bytes


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class Event:
    t_ms: float  # offset from the request's start
    data: bytes


CASSETTE_FILE_SUFFIX = ".cassette.jsonl"
MAX_FILE_NAME_BYTES = 255
"""What file systems take for one file name (ext4, APFS, NTFS...): bytes, not characters."""


def check_cassette_name(name: str) -> str:
    """Cassette names become file names (`NAME.cassette.jsonl`): no separators, no `..`, no
    control characters, real text (no lone surrogate, as a file name that is not UTF-8
    gives), and a file name of at most 255 bytes in UTF-8."""
    if (
        not name
        or len(name) > 200
        or name in (".", "..")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in name)
    ):
        raise ValueError(
            f"{name!r} is not a valid cassette name (1-200 characters; no '/', '\\', control "
            "characters or undecodable bytes, and not '.' or '..')"
        )
    size = len((name + CASSETTE_FILE_SUFFIX).encode("utf-8"))
    if size > MAX_FILE_NAME_BYTES:
        raise ValueError(
            f"{name[:20]!r}... is not a valid cassette name: its file name "
            f"{CASSETTE_FILE_SUFFIX!r} included would be {size} bytes in UTF-8, more than the "
            f"{MAX_FILE_NAME_BYTES} bytes a file name may have"
        )
    return name


@dataclass(eq=False)
class Recording:
    """One interaction being recorded. The write form of an interaction: owned by the relay; the
    writer fills in `interaction_id`."""

    cassette: str
    request: Request
    head: ResponseHead
    started_at: datetime
    ttfb_ms: float
    on_committed: Callable[[Recording], None] | None = None
    events: int = 0
    size: int = 0
    outcome: Outcome = Outcome.RECORDING
    error: str | None = None
    duration_ms: float | None = None
    interaction_id: int | None = None
    dropped: bool = False
    body_sha256: str | None = None  # of the body as it arrived, once it has ended
    usage: Usage | None = None  # tokens its answer reports, once it has ended
