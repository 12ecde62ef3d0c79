"""Tests for proxy.serve.index: what it keeps of a cassette that is recorded but not loaded."""

from __future__ import annotations

import cProfile
import pstats
import weakref
from datetime import UTC, datetime
from pathlib import Path

from proxy.cassettes import file_format, transfer
from proxy.cassettes.file_format import Recorded
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


async def test_cassettes_least_recently_used_are_let_go_and_their_counters_kept(
    tmp_path: Path,
) -> None:
    """Past `max_entries` recordings, the index lets the least recently used cassette go;
    using it again reads it again, and its run goes on where it was (the 2nd request gets
    the 2nd recording)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", writer=True)
    await migrate.upgrade(engine)
    request = Request("POST", "http://127.0.0.1:1/v1/same", (), b"{}")
    for name in ("a", "b"):
        recs = [
            Recorded(
                request,
                ResponseHead(200 + n, ()),
                Outcome.COMPLETE,
                None,
                datetime(2026, 1, 1, tzinfo=UTC),
                1.0,
                1.0,
                (),
            )
            for n in range(3)
        ]
        path = tmp_path / f"{name}.cassette.jsonl"
        path.write_bytes(file_format.dump(name, recs))
        await transfer.import_file(engine, path)
    index = Index(engine, MatchRules(), max_entries=4)

    async def status(cassette: str) -> int:
        found = await index.resolve(cassette, request, replay=True, strict=True, hurry=list)
        assert isinstance(found, Entry)
        return found.head.status

    assert await status("a") == 200
    assert len(index.entries("a")) == 3
    assert await status("b") == 200  # 6 recordings held: "a" goes
    assert (len(index.entries("a")), len(index.entries("b"))) == (0, 3)
    assert await status("a") == 201  # read again, its run goes on; now "b" goes
    assert (len(index.entries("a")), len(index.entries("b"))) == (3, 0)
    assert await status("b") == 201
    await engine.dispose()
