"""Whole-cassette operations on the store: summaries, export, import, delete.

Recordings are written by the recorder; these are the other writes, each one transaction of
its own (`BEGIN IMMEDIATE` on SQLite through a writer engine). An import reads its file
twice: once to check every line and hash what it would store, then, inside the
transaction, to insert. A file that turns out bad halfway rolls the whole import back.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.file_format import Header, Recorded
from proxy.core.records import Event as EventRecord
from proxy.core.records import Outcome, Request, ResponseHead, check_cassette_name, header_pairs
from proxy.core.redact import Redactor
from proxy.core.secrets_scan import Finding, scan_request, scan_response
from proxy.errors import CassetteExists, CassetteFileError, CassetteNotFound, SecretsFound
from proxy.store.models import Cassette, CassetteFile, Event, Interaction

_UNFINISHED = (Outcome.INCOMPLETE.value, Outcome.RECORDING.value)
_RECORDING_ERROR = "still being recorded when the cassette was exported"


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


@dataclass(frozen=True)
class CassetteInfo:
    name: str
    interactions: int
    events: int
    size: int  # bytes of request and response bodies
    last_recorded: datetime | None
    incomplete: int


@dataclass(frozen=True)
class InteractionInfo:
    number: int  # 1-based, in recording order
    id: int
    method: str
    url: str
    status: int
    events: int
    size: int
    ttfb_ms: float
    duration_ms: float | None
    outcome: Outcome
    error: str | None
    recorded_at: datetime

    @property
    def complete(self) -> bool:
        return self.outcome.complete


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


# -- reading ------------------------------------------------------------------------------


async def summaries(engine: AsyncEngine) -> list[CassetteInfo]:
    stmt = (
        select(
            Cassette.name,
            func.count(Interaction.id),
            func.coalesce(func.sum(Interaction.event_count), 0),
            func.coalesce(
                func.sum(Interaction.body_size + func.length(Interaction.request_body)), 0
            ),
            func.max(Interaction.started_at),
            func.count(Interaction.id).filter(Interaction.outcome.in_(_UNFINISHED)),
        )
        .outerjoin(Interaction)
        .group_by(Cassette.id)
        .order_by(Cassette.name)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [CassetteInfo(r[0], r[1], int(r[2]), int(r[3]), _utc(r[4]), r[5]) for r in rows]


async def interactions(engine: AsyncEngine, name: str) -> list[InteractionInfo]:
    """A cassette's interactions in recording order; `CassetteNotFound` if there is none."""
    async with engine.connect() as conn:
        await _require(conn, name)
        rows = (
            await conn.execute(
                select(
                    Interaction.id,
                    Interaction.method,
                    Interaction.url,
                    Interaction.status,
                    Interaction.event_count,
                    Interaction.body_size,
                    Interaction.ttfb_ms,
                    Interaction.duration_ms,
                    Interaction.outcome,
                    Interaction.error,
                    Interaction.started_at,
                )
                .join(Cassette)
                .where(Cassette.name == name)
                .order_by(Interaction.id)
            )
        ).all()
    return [
        InteractionInfo(
            number=i,
            id=r.id,
            method=r.method,
            url=r.url,
            status=r.status,
            events=r.event_count,
            size=r.body_size,
            ttfb_ms=r.ttfb_ms,
            duration_ms=r.duration_ms,
            outcome=Outcome(r.outcome),
            error=r.error,
            recorded_at=_utc(r.started_at) or datetime.now(UTC),
        )
        for i, r in enumerate(rows, 1)
    ]


async def events(engine: AsyncEngine, interaction_id: int) -> list[EventRecord]:
    async with engine.connect() as conn:
        return await _events(conn, interaction_id)


async def _events(conn: AsyncConnection, interaction_id: int) -> list[EventRecord]:
    rows = await conn.execute(
        select(Event.t_ms, Event.data)
        .where(Event.interaction_id == interaction_id)
        .order_by(Event.seq)
    )
    return [EventRecord(r.t_ms, r.data) for r in rows]


async def _require(conn: AsyncConnection, name: str) -> int:
    found = await conn.scalar(select(Cassette.id).where(Cassette.name == name))
    if found is None:
        raise CassetteNotFound(f"no cassette named {name!r} in the store (rrproxy ls lists them)")
    return int(found)


async def _recorded(
    conn: AsyncConnection, cassette_id: int, *, finished_only: bool
) -> tuple[int, AsyncIterator[Recorded]]:
    """How many interactions there are, and each in full (events loaded one interaction
    at a time). An interaction still being recorded counts as incomplete, or is left out."""
    stmt = select(*Interaction.__table__.c).where(Interaction.cassette_id == cassette_id)
    if finished_only:
        stmt = stmt.where(Interaction.outcome != Outcome.RECORDING.value)
    heads = (await conn.execute(stmt.order_by(Interaction.id))).all()

    async def each() -> AsyncIterator[Recorded]:
        for row in heads:
            outcome, error = Outcome(row.outcome), row.error
            if outcome is Outcome.RECORDING:
                outcome, error = Outcome.INCOMPLETE, _RECORDING_ERROR
            yield Recorded(
                request=Request(
                    row.method, row.url, header_pairs(row.request_headers), row.request_body
                ),
                response=ResponseHead(row.status, header_pairs(row.response_headers)),
                outcome=outcome,
                error=error,
                recorded_at=_utc(row.started_at) or datetime.now(UTC),
                ttfb_ms=row.ttfb_ms,
                duration_ms=row.duration_ms,
                events=tuple(await _events(conn, row.id)),
            )

    return len(heads), each()


async def _lines(
    conn: AsyncConnection, name: str, *, as_name: str | None = None, finished_only: bool = False
) -> AsyncIterator[tuple[int, Recorded | None, bytes]]:
    """The cassette file's lines, numbered from 1, each with the interaction it starts."""
    count, recs = await _recorded(conn, await _require(conn, name), finished_only=finished_only)
    yield 1, None, cassette_file.header_line(as_name or name, count)
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
) -> int:
    """Write the cassette file to `out`; returns the number of interactions. Raises
    `SecretsFound` (after writing: the caller discards `out`) unless `allow_secrets`."""
    findings: list[tuple[int, Finding]] = []
    interactions = 0
    async with engine.connect() as conn:
        async for number, rec, line in _lines(conn, name, finished_only=finished_only):
            out.write(line)
            if rec is not None:
                interactions += 1
                if not allow_secrets:
                    found = [*scan_request(rec.request), *scan_response(rec.response, rec.events)]
                    findings.extend((number + (f.event or 0), f) for f in found)
    if findings:
        raise SecretsFound(name, findings)
    return interactions


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
            h.update(cassette_file.header_line(name or item.name, item.interactions))
        else:
            for line in cassette_file.interaction_lines(item):
                h.update(line)
    assert header is not None  # `read` yields the header first or raises
    return header, h.hexdigest()


def _read(path: Path, *, max_bytes: int, max_line: int) -> Iterator[Header | Recorded]:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size  # checked before anything is read
        if size > max_bytes:
            raise CassetteFileError(
                None,
                f"{size} bytes is more than the {max_bytes} bytes a cassette file may have",
                str(path),
            )
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
) -> Imported:
    """Import a cassette file in one transaction, all or nothing. Secrets are redacted as
    they are when recording (`redactor`; the built-in lists by default): a hand-written
    file's key never reaches the store.

    The same content again changes nothing; other content under an existing name needs
    `replace` (the cassette keeps its identity; its interactions are swapped). `then` runs
    in the same transaction (the cassette directory records the file's hash with it).
    """
    header, sha = await asyncio.to_thread(check_file, path, name=name, max_bytes=max_bytes)
    target = check_cassette_name(name or header.name)
    async with engine.begin() as conn:
        existing = await conn.scalar(select(Cassette.id).where(Cassette.name == target))
        if existing is not None:
            if await digest(conn, target) == sha:
                result = await _unchanged(conn, target)
                if then is not None:
                    await then(conn, result)
                return result
            if not replace:
                raise CassetteExists(
                    f"cassette {target!r} is already in the store with other content; pass "
                    "--replace to replace it, or --as NAME to import it under another name"
                )
            await conn.execute(delete(Interaction).where(Interaction.cassette_id == existing))
            cassette_id = int(existing)
        else:
            cassette_id = await _new_cassette(conn, target)
        count = n_events = 0
        h = hashlib.sha256()
        for item in _read(path, max_bytes=max_bytes, max_line=cassette_file.MAX_LINE_BYTES):
            if isinstance(item, Header):
                h.update(cassette_file.header_line(target, item.interactions))
                continue
            for line in cassette_file.interaction_lines(item):
                h.update(line)
            await _insert(conn, cassette_id, _redacted(item, redactor or Redactor()))
            count += 1
            n_events += len(item.events)
        if h.hexdigest() != sha:
            raise CassetteFileError(None, "the file changed while it was being imported", str(path))
        status = ImportStatus.REPLACED if existing is not None else ImportStatus.CREATED
        result = Imported(target, status, count, n_events)
        if then is not None:
            await then(conn, result)
        return result


async def _unchanged(conn: AsyncConnection, name: str) -> Imported:
    count, n_events = (
        await conn.execute(
            select(func.count(Interaction.id), func.coalesce(func.sum(Interaction.event_count), 0))
            .join(Cassette)
            .where(Cassette.name == name)
        )
    ).one()
    return Imported(name, ImportStatus.UNCHANGED, int(count), int(n_events))


async def _new_cassette(conn: AsyncConnection, name: str) -> int:
    result = await conn.execute(
        insert(Cassette).values(name=name, created_at=datetime.now(UTC)).returning(Cassette.id)
    )
    return int(result.scalar_one())


def _redacted(rec: Recorded, redactor: Redactor) -> Recorded:
    return replace(
        rec,
        request=redactor.request(rec.request),
        response=redactor.head(rec.response),
    )


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
        found = [*scan_request(rec.request), *scan_response(rec.response, rec.events)]
        findings.extend((line + (f.event or 0), f) for f in found)
        line += len(item.events)
    return findings


async def _insert(conn: AsyncConnection, cassette_id: int, rec: Recorded) -> None:
    result = await conn.execute(
        insert(Interaction)
        .values(
            cassette_id=cassette_id,
            method=rec.request.method,
            url=rec.request.url,
            request_headers=[list(h) for h in rec.request.headers],
            request_body=rec.request.body,
            status=rec.response.status,
            response_headers=[list(h) for h in rec.response.headers],
            outcome=rec.outcome.value,
            error=rec.error,
            started_at=rec.recorded_at,
            ttfb_ms=rec.ttfb_ms,
            duration_ms=rec.duration_ms,
            event_count=len(rec.events),
            body_size=sum(len(e.data) for e in rec.events),
        )
        .returning(Interaction.id)
    )
    interaction_id = int(result.scalar_one())
    if rec.events:
        await conn.execute(
            insert(Event),
            [
                {"interaction_id": interaction_id, "seq": i, "t_ms": e.t_ms, "data": e.data}
                for i, e in enumerate(rec.events)
            ],
        )


# -- delete and the cassette directory's bookkeeping -----------------------------------------


async def delete_cassette(conn: AsyncConnection, name: str) -> bool:
    """Remove a cassette with everything recorded in it; False if there was none."""
    await conn.execute(delete(CassetteFile).where(CassetteFile.name == name))
    found = await conn.scalar(select(Cassette.id).where(Cassette.name == name))
    if found is None:
        return False
    # Events go with their interactions (ON DELETE CASCADE), interactions with the cassette.
    await conn.execute(delete(Interaction).where(Interaction.cassette_id == found))
    await conn.execute(delete(Cassette).where(Cassette.id == found))
    return True


async def file_hashes(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(select(CassetteFile.name, CassetteFile.sha256))
    return {r.name: r.sha256 for r in rows}


async def set_file_hash(conn: AsyncConnection, name: str, sha256: str) -> None:
    await conn.execute(delete(CassetteFile).where(CassetteFile.name == name))
    await conn.execute(
        insert(CassetteFile).values(name=name, sha256=sha256, loaded_at=datetime.now(UTC))
    )


def _utc(t: datetime | None) -> datetime | None:
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=UTC)  # SQLite hands back naive datetimes; they were stored as UTC
