"""A cassette between the store and its file: export (with the secret scan), import, check.

An export reads the store (`store.queries`) and writes the file's lines (`file_format`),
refusing key-like strings unless told otherwise. An import is one transaction of its own
(`BEGIN IMMEDIATE` on SQLite through a writer engine) and reads its file twice: once to
check every line and hash what it would store, then, inside the transaction, to redact and
insert. A file that turns out bad halfway rolls the whole import back.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.bulk import BulkInsert
from proxy.cassettes.file_format import Header, Recorded
from proxy.cassettes.files import open_regular
from proxy.core.messages import redact_handshake
from proxy.core.records import Event as EventRecord
from proxy.core.records import Outcome, Request, check_cassette_name
from proxy.core.redact import Redactor
from proxy.core.secrets_scan import Finding, scan_request, scan_response
from proxy.errors import CassetteExists, CassetteFileError, SecretsFound
from proxy.store import queries
from proxy.store.models import Cassette, Interaction

_RECORDING_ERROR = "still being recorded when the cassette was exported"


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


class ImportStatus(StrEnum):
    CREATED = "created"
    REPLACED = "replaced"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Imported:
    name: str
    status: ImportStatus
    interactions: int
    events: int
    redacted: int = 0
    """Header and query values redacted on the way in (counted for converted imports)."""


# -- export -------------------------------------------------------------------------------


async def _recorded(
    conn: AsyncConnection, name: str, *, finished_only: bool
) -> tuple[int, int, AsyncIterator[Recorded]]:
    """How many interactions there are, and each in full (events loaded one interaction
    at a time). An interaction still being recorded counts as incomplete, or is left out."""
    heads = await queries.interactions(conn, name, required=True, finished_only=finished_only)

    async def each() -> AsyncIterator[Recorded]:
        for group in _groups(heads):
            events = await queries.events_of(conn, [head.id for head in group])
            for head in group:
                outcome, error = head.outcome, head.error
                if outcome is Outcome.RECORDING:
                    outcome, error = Outcome.INCOMPLETE, _RECORDING_ERROR
                yield Recorded(
                    request=head.request,
                    response=head.response,
                    outcome=outcome,
                    error=error,
                    recorded_at=head.recorded_at,
                    ttfb_ms=head.ttfb_ms,
                    duration_ms=head.duration_ms,
                    events=tuple(events.pop(head.id)),
                    messages=(
                        tuple(await queries.messages(conn, head.id))
                        if head.response.status == 101
                        else ()
                    ),
                    untimed=head.untimed,
                )

    version = cassette_file.VERSION
    return len(heads), version, each()


_GROUP = 256
"""Interactions whose events an export reads in one query..."""
_GROUP_BYTES = 8 * 2**20
"""...holding at most this many bytes of bodies (a larger one is read alone)."""


def _groups(
    heads: Sequence[queries.StoredInteraction],
) -> Iterator[list[queries.StoredInteraction]]:
    group: list[queries.StoredInteraction] = []
    size = 0
    for head in heads:
        if group and (len(group) == _GROUP or size + head.size > _GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(head)
        size += head.size
    if group:
        yield group


async def _lines(
    conn: AsyncConnection, name: str, *, as_name: str | None = None, finished_only: bool = False
) -> AsyncIterator[tuple[int, Recorded | None, bytes]]:
    """The cassette file's lines, numbered from 1, each with the interaction it starts."""
    count, version, recs = await _recorded(conn, name, finished_only=finished_only)
    yield 1, None, cassette_file.header_line(as_name or name, count, version)
    number = 1
    async for rec in recs:
        for i, line in enumerate(cassette_file.interaction_lines(rec)):
            number += 1
            yield number, rec if i == 0 else None, line


async def export(
    engine: AsyncEngine,
    name: str,
    out: Writer,
    *,
    allow_secrets: bool = False,
    finished_only: bool = False,
    redactor: Redactor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Write the cassette file to `out`; returns the number of interactions. Raises
    `SecretsFound` (after writing: the caller discards `out`) unless `allow_secrets`.
    `redactor` says which header and query names are credentials (the defaults if None).
    `progress(done, total)` is told of each interaction written."""
    findings: list[tuple[int, Finding]] = []
    interactions = 0
    async with engine.connect() as conn:
        total = (await queries.counts(conn, name))[0] if progress is not None else 0
        async for number, rec, line in _lines(conn, name, finished_only=finished_only):
            out.write(line)
            if rec is not None:
                interactions += 1
                if progress is not None:
                    progress(interactions, total)
                if not allow_secrets:
                    found = [
                        *scan_request(rec.request, redactor),
                        *scan_response(rec.response, body(rec), redactor),
                    ]
                    findings.extend((number + (f.event or 0), f) for f in found)
    if findings:
        raise SecretsFound(name, findings)
    return interactions


async def records(engine: AsyncEngine, name: str, *, allow_secrets: bool = False) -> list[Recorded]:
    """The cassette's interactions as `export` writes them (for other formats: HAR), after
    the same secret scan; `SecretsFound` names lines of the cassette file it would be."""
    async with engine.connect() as conn:
        _, _, each = await _recorded(conn, name, finished_only=False)
        recs = [rec async for rec in each]
    findings = [] if allow_secrets else record_secrets(recs)
    if findings:
        raise SecretsFound(name, findings)
    return recs


def record_secrets(recs: Sequence[Recorded]) -> list[tuple[int, Finding]]:
    """Key-like strings in `recs`, by the line of the cassette file they would be on."""
    findings: list[tuple[int, Finding]] = []
    line = 1
    for rec in recs:
        line += 1
        found = [*scan_request(rec.request), *scan_response(rec.response, body(rec))]
        findings.extend((line + (f.event or 0), f) for f in found)
        line += len(rec.events) + len(rec.messages)
    return findings


async def digest(conn: AsyncConnection, name: str, *, as_name: str | None = None) -> str:
    """sha256 of the cassette file the store would write (as `as_name`)."""
    h = hashlib.sha256()
    async for _, _, line in _lines(conn, name, as_name=as_name):
        h.update(line)
    return h.hexdigest()


# -- import -------------------------------------------------------------------------------


def check_file(
    path: Path,
    *,
    name: str | None = None,
    max_bytes: int = cassette_file.MAX_FILE_BYTES,
    max_line: int = cassette_file.MAX_LINE_BYTES,
) -> tuple[Header, str]:
    """Validate a whole file without storing it (blocking): its header, and the sha256 of
    the file the store would export after importing it (as `name`)."""
    h = hashlib.sha256()
    header: Header | None = None
    for item in _read(path, max_bytes=max_bytes, max_line=max_line):
        if isinstance(item, Header):
            header = item
            h.update(cassette_file.header_line(name or item.name, item.interactions, item.version))
        else:
            for line in cassette_file.interaction_lines(item):
                h.update(line)
    assert header is not None  # `read` yields the header first or raises
    return header, h.hexdigest()


def _header(path: Path, max_bytes: int) -> Header:
    """A cassette file's header line, checked (blocking; the rest is not read)."""
    with open_regular(path, max_bytes=max_bytes) as f:
        header = next(cassette_file.read(f, source=str(path)))
    assert isinstance(header, Header)  # `read` yields the header first or raises
    return header


def _read(path: Path, *, max_bytes: int, max_line: int) -> Iterator[Header | Recorded]:
    with open_regular(path, max_bytes=max_bytes) as f:
        yield from cassette_file.read(f, source=str(path), max_line=max_line)


async def import_file(
    engine: AsyncEngine,
    path: Path,
    *,
    name: str | None = None,
    replace: bool = False,
    max_bytes: int = cassette_file.MAX_FILE_BYTES,
    then: Callable[[AsyncConnection, Imported], Awaitable[None]] | None = None,
    redactor: Redactor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Imported:
    """Import a cassette file in one transaction, all or nothing. Secrets are redacted as
    they are when recording (`redactor`; the built-in lists by default): a hand-written
    file's key never reaches the store.

    The same content again changes nothing; other content under an existing name needs
    `replace` (the cassette keeps its identity; its interactions are swapped). `then` runs
    in the same transaction (the cassette directory records the file's hash with it).
    `progress(done, total)` is told of each interaction stored.

    A cassette new to the store is read once, inside the transaction (a bad line rolls it
    back); one already there is first checked and hashed outside it, to tell whether the
    file holds anything new.
    """
    header = await asyncio.to_thread(_header, path, max_bytes)
    target = check_cassette_name(name or header.name)
    sha: str | None = None
    if await queries.cassette_id(engine, target) is not None:
        header, sha = await asyncio.to_thread(check_file, path, name=name, max_bytes=max_bytes)
    async with engine.begin() as conn:
        existing = await queries.cassette_id(conn, target)
        if existing is not None and sha is None:  # made meanwhile
            header, sha = await asyncio.to_thread(check_file, path, name=name, max_bytes=max_bytes)
        if existing is not None and await digest(conn, target) == sha:
            count, n_events = await queries.counts(conn, target)
            result = Imported(target, ImportStatus.UNCHANGED, count, n_events)
            if then is not None:
                await then(conn, result)
            return result
        cassette_id = await _emptied(conn, target, existing, replace, "--as NAME")
        count = n_events = 0
        h = hashlib.sha256()
        bulk = BulkInsert(conn, cassette_id)
        for item in _read(path, max_bytes=max_bytes, max_line=cassette_file.MAX_LINE_BYTES):
            if isinstance(item, Header):
                h.update(cassette_file.header_line(target, item.interactions, item.version))
                continue
            if sha is not None:  # to compare with the first reading
                for line in cassette_file.interaction_lines(item):
                    h.update(line)
            await bulk.add(_redacted(item, redactor or Redactor()))
            count += 1
            n_events += len(item.events)
            if progress is not None:
                progress(count, header.interactions)
        await bulk.flush()
        if sha is not None and h.hexdigest() != sha:
            raise CassetteFileError(None, "the file changed while it was being imported", str(path))
        status = ImportStatus.REPLACED if existing is not None else ImportStatus.CREATED
        result = Imported(target, status, count, n_events)
        if then is not None:
            await then(conn, result)
        return result


async def _emptied(
    conn: AsyncConnection, target: str, existing: int | None, replace: bool, other: str = ""
) -> int:
    """The id of cassette `target`, empty, for an import's interactions: a new one, or the
    existing one (whose content differs) emptied when `replace` allows it."""
    if existing is None:
        return await _new_cassette(conn, target)
    if not replace:
        raise CassetteExists(
            f"cassette {target!r} is already in the store with other content; pass "
            "--replace to replace it"
            + (f", or {other} to import it under another name" if other else "")
        )
    await conn.execute(delete(Interaction).where(Interaction.cassette_id == existing))
    return existing


async def _new_cassette(conn: AsyncConnection, name: str) -> int:
    result = await conn.execute(
        insert(Cassette).values(name=name, created_at=datetime.now(UTC)).returning(Cassette.id)
    )
    return int(result.scalar_one())


def _redacted(rec: Recorded, redactor: Redactor) -> Recorded:
    request = redactor.request(rec.request)
    if rec.websocket:  # a key in a subprotocol, as recording redacts it
        request = Request(
            request.method, request.url, redact_handshake(request.headers), request.body
        )
    return replace(rec, request=request, response=redactor.head(rec.response))


async def import_records(
    engine: AsyncEngine,
    cassettes: Sequence[tuple[str, Sequence[Recorded]]],
    *,
    replace: bool = False,
    redactor: Redactor | None = None,
    refuse_secrets: bool = False,
) -> list[Imported]:
    """Import recordings converted from another tool (`vcrpy`, `har`): every cassette in
    one transaction, all or nothing, redacted as recording redacts. A cassette already in
    the store with the same content is left as it is; other content needs `replace`.
    `refuse_secrets`: raise `SecretsFound` if a key-like string is left after redaction (a
    cassette directory would refuse to write the file)."""
    redactor = redactor or Redactor()
    prepared = []
    for name, recs in cassettes:
        clean = [_redacted(rec, redactor) for rec in recs]
        if refuse_secrets and (found := record_secrets(clean)):
            raise SecretsFound(name, found)
        count = sum(_redactions(a, b) for a, b in zip(recs, clean, strict=True))
        prepared.append((check_cassette_name(name), clean, count))
    results: list[Imported] = []
    async with engine.begin() as conn:
        for target, recs, redacted in prepared:
            results.append(await _store_records(conn, target, recs, redacted, replace=replace))
    return results


async def _store_records(
    conn: AsyncConnection, target: str, recs: list[Recorded], redacted: int, *, replace: bool
) -> Imported:
    n_events = sum(len(rec.events) for rec in recs)
    existing = await queries.cassette_id(conn, target)
    if existing is not None:
        sha = hashlib.sha256(cassette_file.dump(target, recs)).hexdigest()
        if await digest(conn, target) == sha:
            return Imported(target, ImportStatus.UNCHANGED, len(recs), n_events, redacted)
    cassette_id = await _emptied(conn, target, existing, replace)
    bulk = BulkInsert(conn, cassette_id)
    for rec in recs:
        await bulk.add(rec)
    await bulk.flush()
    status = ImportStatus.REPLACED if existing is not None else ImportStatus.CREATED
    return Imported(target, status, len(recs), n_events, redacted)


def _redactions(before: Recorded, after: Recorded) -> int:
    """How many header and query values redaction replaced."""
    pairs = [
        *zip(before.request.headers, after.request.headers, strict=True),
        *zip(before.response.headers, after.response.headers, strict=True),
    ]
    query = zip(_query_parts(before.request.url), _query_parts(after.request.url), strict=False)
    changed_url = before.request.url.partition("?")[0] != after.request.url.partition("?")[0]
    return sum(a != b for a, b in pairs) + sum(a != b for a, b in query) + changed_url


def _query_parts(url: str) -> list[str]:
    return url.partition("#")[0].partition("?")[2].split("&")


def find_secrets(
    path: Path, *, redactor: Redactor | None = None, max_bytes: int = cassette_file.MAX_FILE_BYTES
) -> list[tuple[int, Finding]]:
    """Key-like strings a file would still hold once imported (blocking), by line."""
    redactor = redactor or Redactor()
    findings: list[tuple[int, Finding]] = []
    line = 1
    for item in _read(path, max_bytes=max_bytes, max_line=cassette_file.MAX_LINE_BYTES):
        if isinstance(item, Header):
            continue
        line += 1
        rec = _redacted(item, redactor)
        found = [
            *scan_request(rec.request, redactor),
            *scan_response(rec.response, body(rec), redactor),
        ]
        findings.extend((line + (f.event or 0), f) for f in found)
        line += len(item.events) + len(item.messages)
    return findings


def body(rec: Recorded) -> Iterable[EventRecord]:
    """What the secret scan reads of a response: its events, or a WebSocket session's
    messages (each counted as an event, on the line after the one before)."""
    if not rec.messages:
        return rec.events
    return (EventRecord(m.t_ms, m.data) for m in rec.messages)
