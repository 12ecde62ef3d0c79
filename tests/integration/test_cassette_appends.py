"""The cassette directory's appends, against a real store and file: an append that would
write a key-like string writes nothing (the file stays as it was, and says why), and a file
someone else touched is written whole, never appended to."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.cassettes import file_format, transfer
from proxy.cassettes.bulk import BulkInsert
from proxy.cassettes.directory import CassetteDir
from proxy.config import database_url
from proxy.core.records import Event, Outcome, Request, ResponseHead
from proxy.errors import SecretsFound
from proxy.store import migrate, queries
from proxy.store.engine import create_engine

KEY = "sk-proj-" + "Ab3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF"


def recorded(body: str) -> file_format.Recorded:
    return file_format.Recorded(
        request=Request("POST", "http://127.0.0.1:9/v1/x", (), body.encode()),
        response=ResponseHead(200, ()),
        outcome=Outcome.COMPLETE,
        error=None,
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        ttfb_ms=1.0,
        duration_ms=1.0,
        events=(Event(1.0, b"ok"),),
    )


async def test_an_append_with_a_secret_writes_nothing_and_a_touched_file_is_written_whole(
    tmp_path: Path, db_path: Path
) -> None:
    engine = create_engine(database_url(str(db_path)), writer=True)
    try:
        await migrate.upgrade(engine)
        source = tmp_path / "c.cassette.jsonl"
        source.write_bytes(file_format.dump("c", [recorded("one")]))
        await transfer.import_file(engine, source)
        directory = CassetteDir(tmp_path / "dir", engine, engine)
        await directory.prepare()
        await directory.write("c")  # whole: the first write
        file = directory.file("c")
        written = file.read_bytes()
        cassette_id = await queries.cassette_id(engine, "c")
        assert cassette_id is not None

        async def add(body: str) -> int:
            async with engine.begin() as conn:
                bulk = BulkInsert(conn, cassette_id)
                await bulk.add(recorded(body))
                await bulk.flush()
            return max(s.id for s in await queries.interaction_stamps(engine, "c"))

        newest = await add(f"my key is {KEY}")
        with pytest.raises(SecretsFound, match="line 4"):
            await directory.write("c", newest)
        assert file.read_bytes() == written
        assert directory.rewritten == 1

        async with engine.begin() as conn:  # the secret goes; a clean one comes
            await conn.exec_driver_sql("DELETE FROM interactions WHERE id = ?", (newest,))
        newest = await add("two")
        await directory.write("c", newest)  # whole: the refused append let the file go
        assert directory.rewritten == 2
        newest = await add("three")
        await directory.write("c", newest)  # appended
        assert directory.rewritten == 2
        newest = await add("four")
        stat = file.stat()
        file.touch()  # someone else's hand on it (same content): not appended to
        assert file.stat().st_mtime_ns != stat.st_mtime_ns
        await directory.write("c", newest)
        assert directory.rewritten == 3
        exported = tmp_path / "exported.jsonl"
        with exported.open("wb") as out:
            await transfer.export(engine, "c", out, finished_only=True)
        assert file.read_bytes() == exported.read_bytes()
    finally:
        await engine.dispose()
