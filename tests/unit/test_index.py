"""Tests for proxy.serve.index: what it keeps of a cassette that is recorded but not loaded."""

from __future__ import annotations

from pathlib import Path

from proxy.core.matching import MatchRules
from proxy.core.records import Request, ResponseHead
from proxy.serve.entry import Entry
from proxy.serve.index import Index
from proxy.store.engine import create_engine


def entry(n: int) -> Entry:
    request = Request("POST", f"http://127.0.0.1:1/v1/{n}", (), b"")
    return Entry.recording(request, None, ResponseHead(200, ()), 0.0)


async def test_recordings_already_in_the_store_are_not_held_in_memory(tmp_path: Path) -> None:
    """Record mode never loads its cassette: the index holds the recordings in flight, and
    forgets the committed ones (amortised: not a pass over them all per recording)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'never-read.db'}")
    index = Index(engine, MatchRules())
    in_flight = [entry(-i) for i in range(3)]
    for e in in_flight:
        index.add("c", e, use=False)
    held = []
    for n in range(5_000):
        e = entry(n)
        index.add("c", e, use=False)
        held.append(len(index._not_loaded["c"]))
        e.committed.set()
    assert max(held) <= 2 * 256
    assert all(e in index._not_loaded["c"] for e in in_flight)
    await engine.dispose()
