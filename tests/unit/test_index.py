"""Tests for proxy.serve.index: what it keeps of a cassette that is recorded but not loaded."""

from __future__ import annotations

import cProfile
import pstats
import weakref
from pathlib import Path

from proxy.core.matching import MatchRules
from proxy.core.records import Outcome, Request, ResponseHead
from proxy.serve.entry import Entry
from proxy.serve.index import Index
from proxy.store import migrate
from proxy.store.engine import create_engine


def entry(n: int, outcome: Outcome = Outcome.RECORDING) -> Entry:
    request = Request("POST", f"http://127.0.0.1:1/v1/{n}", (), b"")
    e = Entry.recording(request, None, ResponseHead(200, ()), 0.0)
    e.outcome = outcome
    return e


async def test_recordings_already_in_the_store_are_not_held_in_memory(tmp_path: Path) -> None:
    """Record mode never loads its cassette: the index holds the recordings in flight, and
    forgets the committed ones (amortised: not a pass over them all per recording). What it
    holds is seen from outside: the entries still alive (weak references), and a replay that
    loads the cassette later finding the ones in flight."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    await migrate.upgrade(engine)
    index = Index(engine, MatchRules())
    # Ended, not yet committed: replayable, and only in memory until the writer commits them.
    in_flight = [entry(-i, Outcome.COMPLETE) for i in range(3)]
    for e in in_flight:
        index.add("c", e, use=False)
    alive: weakref.WeakSet[Entry] = weakref.WeakSet(in_flight)
    held = []
    for n in range(5_000):
        e = entry(n)
        alive.add(e)
        index.add("c", e, use=False)
        e.committed.set()
        held.append(len(alive))  # the test holds only the three in flight, and `e`
    del e
    assert max(held) <= 2 * 256
    for e in in_flight:
        request = e.request(e.body or b"")
        e.committed.set()  # its last batch commits now: resolve need not wait for it
        found = await index.resolve("c", request, replay=True, strict=True, hurry=lambda: None)
        assert found is e
    await engine.dispose()


async def test_the_nth_repeat_of_a_key_costs_what_the_first_does(tmp_path: Path) -> None:
    """An agent loop repeats one request: the n-th replay gets the n-th recording, and the
    index judges each recording's availability once, not once per repeat (counted with the
    profiler: 2,000 repeats over 2,000 recordings judged them 2 million times before)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    await migrate.upgrade(engine)
    index = Index(engine, MatchRules())
    recordings = [entry(0, Outcome.COMPLETE) for _ in range(2_000)]
    for e in recordings:
        index.add("c", e, use=False)
    for e in recordings:  # committed once all are added (else the index leaves them to the store)
        e.committed.set()
    request = recordings[0].request(b"")
    profiler = cProfile.Profile()
    found = []
    profiler.enable()
    for _ in range(len(recordings) + 2):
        found.append(await index.resolve("c", request, replay=True, strict=False, hurry=list))
    profiler.disable()
    assert found == [*recordings, recordings[-1], recordings[-1]]
    judged = sum(
        stat[1]  # calls
        for (_, _, name), stat in pstats.Stats(profiler).stats.items()  # type: ignore[attr-defined]
        if name == "available"
    )
    assert 0 < judged <= 4 * len(recordings)  # a few times each, not 2,000 times
    await engine.dispose()
