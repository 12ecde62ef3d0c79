"""A cassette directory's file kept up to date by appending: each new recording adds its
lines at the end, and the header's interaction count is rewritten in place, so the file is
byte for byte what `rrproxy export` writes, and a recording costs the same whatever the file
already holds.

The whole file is written (atomically, `files.atomic_write`) only when an append cannot
give the export's bytes: the first write of a cassette in a process, a recording that
finished before an older one still in flight (the file is in recording order), a count that
gains a digit (10, 100, 1,000...: a few times in a cassette's life), a file changed by
someone else. Which file content this store wrote is kept as a `fingerprint` (in the
`cassette_files` table): a hash of the header's hash and the rest's, which an append updates
without reading the file again.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from proxy.cassettes import file_format
from proxy.cassettes.file_format import MAX_FILE_BYTES, Recorded
from proxy.cassettes.files import open_regular
from proxy.core.records import Event as EventRecord
from proxy.core.redact import Redactor
from proxy.core.secrets_scan import Finding, scan_request, scan_response
from proxy.errors import SecretsFound
from proxy.store import queries
from proxy.store.queries import StoredInteraction


def fingerprint(header: bytes, rest: Any) -> str:
    """What identifies a file's content: sha256 of the header line's sha256 and of the
    sha256 of the rest (`rest`, a running hash, so that an append need not read the file)."""
    return hashlib.sha256(hashlib.sha256(header).digest() + rest.digest()).hexdigest()


def file_hashes(path: Path) -> tuple[str, str]:
    """A file's `fingerprint` and its plain sha256 (what older versions kept), read once
    (blocking)."""
    whole, rest = hashlib.sha256(), hashlib.sha256()
    with open_regular(path, max_bytes=MAX_FILE_BYTES) as f:
        header = f.readline(file_format.MAX_LINE_BYTES)
        whole.update(header)
        while chunk := f.read(1024 * 1024):
            whole.update(chunk)
            rest.update(chunk)
    return fingerprint(header, rest), whole.hexdigest()


def _stat(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass
class Tail:
    """What the directory knows of a file it wrote itself: enough to append to it."""

    header: bytes
    count: int  # interactions in the file
    lines: int  # lines in the file
    last_id: int  # the store's id of its last interaction (0: none)
    rest: Any  # running sha256 of the lines after the header
    stat: tuple[int, int, int]  # size, mtime, inode, as written

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.header, self.rest)

    def unchanged(self, path: Path) -> bool:
        """Whether the file is still as written (blocking; a stat, not a read)."""
        try:
            return _stat(path) == self.stat
        except OSError:
            return False


async def _heads(conn: AsyncConnection, name: str, after: int) -> list[StoredInteraction]:
    """The cassette's finished interactions with an id above `after`, in recording order."""
    return await queries.interactions(conn, name, required=True, finished_only=True, after=after)


async def _records(
    conn: AsyncConnection, heads: list[StoredInteraction]
) -> AsyncIterator[tuple[int, Recorded]]:
    """Each interaction with its events (read one interaction at a time)."""
    for head in heads:
        yield (
            head.id,
            Recorded(
                request=head.request,
                response=head.response,
                outcome=head.outcome,
                error=head.error,
                recorded_at=head.recorded_at,
                ttfb_ms=head.ttfb_ms,
                duration_ms=head.duration_ms,
                events=tuple(await queries.events(conn, head.id)),
                messages=(
                    tuple(await queries.messages(conn, head.id))
                    if head.response.status == 101
                    else ()
                ),
                untimed=head.untimed,
            ),
        )


def _body(rec: Recorded) -> Iterable[EventRecord]:
    """What the secret scan reads of a response (as `transfer.body`): its events, or a
    WebSocket session's messages."""
    if not rec.messages:
        return rec.events
    return (EventRecord(m.t_ms, m.data) for m in rec.messages)


class _Lines:
    """Interaction lines as they are written: counted, hashed, scanned for secrets."""

    def __init__(self, name: str, tail: Tail, redactor: Redactor):
        self.name = name
        self.tail = tail
        self.redactor = redactor
        self.findings: list[tuple[int, Finding]] = []

    def add(self, interaction_id: int, rec: Recorded) -> bytes:
        tail = self.tail
        found = [
            *scan_request(rec.request, self.redactor),
            *scan_response(rec.response, _body(rec), self.redactor),
        ]
        first = tail.lines + 1  # the interaction's line
        self.findings.extend((first + (f.event or 0), f) for f in found)
        data = b"".join(file_format.interaction_lines(rec))
        tail.rest.update(data)
        tail.lines += 1 + len(rec.events) + len(rec.messages)
        tail.count += 1
        tail.last_id = interaction_id
        return data

    def check(self) -> None:
        if self.findings:
            raise SecretsFound(self.name, self.findings)


async def write_all(
    conn: AsyncConnection, name: str, out: IO[bytes], redactor: Redactor
) -> tuple[int, Tail]:
    """Write the whole file to `out` (as `rrproxy export` does, finished interactions
    only); its interaction count, and its tail (its `stat` is the caller's to fill once the
    file is in place). `SecretsFound` after writing: the caller discards `out`."""
    heads = await _heads(conn, name, 0)
    header = file_format.header_line(name, len(heads))
    tail = Tail(header, 0, 1, 0, hashlib.sha256(), (0, 0, 0))
    lines = _Lines(name, tail, redactor)
    out.write(header)
    async for interaction_id, rec in _records(conn, heads):
        out.write(lines.add(interaction_id, rec))
    lines.check()
    return len(heads), tail


async def append(
    conn: AsyncConnection, name: str, path: Path, tail: Tail, redactor: Redactor
) -> Tail | None:
    """Append what was recorded after `tail` to the file; the new tail, or None when an
    append cannot give the export's bytes (the header would change length: rewrite it all).
    `SecretsFound` before anything is written."""
    new = Tail(tail.header, tail.count, tail.lines, tail.last_id, tail.rest.copy(), tail.stat)
    lines = _Lines(name, new, redactor)
    heads = await _heads(conn, name, tail.last_id)
    data = [lines.add(i, rec) async for i, rec in _records(conn, heads)]
    lines.check()
    if not data:
        return tail
    new.header = file_format.header_line(name, new.count)
    if len(new.header) != len(tail.header):
        return None
    new.stat = await asyncio.to_thread(_patch, path, tail.stat[0], b"".join(data), new.header)
    return new


def _patch(path: Path, size: int, lines: bytes, header: bytes) -> tuple[int, int, int]:
    """The lines appended at `size`, then the header rewritten in place (same length), then
    flushed to disk; the file's stat after (blocking)."""
    with open(path, "r+b") as f:
        f.seek(size)
        f.write(lines)
        f.truncate()
        f.seek(0)
        f.write(header)
        f.flush()
        os.fsync(f.fileno())
    return _stat(path)


def stat_of(path: Path) -> tuple[int, int, int]:
    return _stat(path)
