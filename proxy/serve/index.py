"""Which recording answers which request (`Index.resolve`: the replay policy in one place):
a cassette's interactions by match key, the per-run counters that give the n-th identical
request the n-th recording, and, when none answers, why.

Each cassette's interactions are loaded once per run and kept in memory without their
request bodies (see `entry`): the bodies are read from the store a page at a time while
their keys are computed, off the event loop, and a row seen before is not read again.
Recordings made by this process join as they start, with their request body until the
store has it. A replay miss reloads the cassette once (another proxy sharing the store may
have recorded it) before it is declared, and names the closest recording (see `nearest`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.matching import MatchRules, input_digest, match_key, route
from proxy.core.records import Outcome, Request
from proxy.core.redact import Redactor
from proxy.serve.entry import Computed, Entry, Row, compute_all, entry_of, row_of
from proxy.serve.nearest import Closest
from proxy.store import queries

log = logging.getLogger(__name__)

COMMIT_WAIT_S = 10.0
"""How long a replay waits for a recording of this run to reach the store."""
_PAGE = 64
"""Request bodies read (and keyed) at a time when a cassette loads."""


class _Recordings:
    """The recordings of one key in recording order, and those replay may serve. An entry
    whose availability is final (in the store, its outcome known) is judged once: the n-th
    repeat of a key costs what the first does, whatever the number of recordings."""

    __slots__ = ("all", "ready", "settled")

    def __init__(self) -> None:
        self.all: list[Entry] = []
        self.ready: list[Entry] = []  # the available ones of `all[:settled]`
        self.settled = 0

    def available(self) -> tuple[list[Entry], list[Entry]]:
        """The available recordings, in order: those settled, then those of the rest (this
        process's recordings still being written: a few)."""
        entries, ready = self.all, self.ready
        while self.settled < len(entries) and _final(entry := entries[self.settled]):
            if entry.available:
                ready.append(entry)
            self.settled += 1
        return ready, [e for e in entries[self.settled :] if e.available]


def _final(entry: Entry) -> bool:
    return entry.committed.is_set() and entry.outcome is not Outcome.RECORDING


Route = tuple[str, str, str]
"""Method, upstream and path: what a miss looks for first in the closest recording."""


@dataclass
class _Cassette:
    entries: list[Entry] = field(default_factory=list)
    by_key: dict[str, _Recordings] = field(default_factory=lambda: defaultdict(_Recordings))
    used: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stale: bool = False
    seen: tuple[int, int] = (0, 0)  # the change counters (all, this one's) it was loaded at
    rows: int = 0  # interactions in the store when loaded, plus those this process began since
    computed: dict[Row, Computed] = field(default_factory=dict)  # of its stored rows
    by_route: dict[Route, list[Entry]] | None = None  # made by the first miss
    # What a miss's reload need not read again: the store's rows up to `last_id` were read
    # (`read` entries), but for `pending` ones, still recording then.
    last_id: int = 0
    pending: frozenset[int] = frozenset()
    read: int = 0

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        assert entry.key is not None
        self.by_key[entry.key].all.append(entry)
        if self.by_route is not None:
            self.by_route.setdefault(route(entry.method, entry.url), []).append(entry)

    async def routes(self) -> dict[Route, list[Entry]]:
        """The entries by route, made by the first miss (in a worker thread), then kept."""
        if self.by_route is None:
            held = self.entries[:]
            by_route = await asyncio.to_thread(_by_route, held)
            if self.by_route is None:  # not made by another miss meanwhile
                for entry in self.entries[len(held) :]:  # added meanwhile
                    by_route.setdefault(route(entry.method, entry.url), []).append(entry)
                self.by_route = by_route
        return self.by_route


def _by_route(entries: list[Entry]) -> dict[Route, list[Entry]]:
    by_route: dict[Route, list[Entry]] = {}
    for entry in entries:
        by_route.setdefault(route(entry.method, entry.url), []).append(entry)
    return by_route


@dataclass(frozen=True)
class Miss:
    """No recording answers this request. Replay mode answers `message` (it names the
    cassette and, when there is one, the closest recording and how it differs); auto mode
    records the request under `key`."""

    key: str
    message: str
    log: str = "missed"  # what the log line says


_PRUNE_AT_LEAST = 256
"""Entries of a cassette not loaded yet, before the committed ones are pruned."""


INDEX_ENTRIES = 200_000
"""Recordings the index holds across cassettes; past it, the least recently used cassettes
are let go (their run's counters kept): memory bounded whatever the store holds."""


class Index:
    def __init__(
        self,
        engine: AsyncEngine,
        rules: MatchRules,
        redactor: Redactor | None = None,
        *,
        max_entries: int = INDEX_ENTRIES,
    ):
        self._engine = engine
        self._max_entries = max_entries
        self.rules = rules
        self._redactor = redactor or Redactor()  # what a miss message may not quote
        self._cassettes: dict[str, _Cassette] = {}
        self._loading: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Recordings (record mode) of cassettes not loaded yet: they join when one loads.
        # Those committed meanwhile are in the store: they are pruned as the list doubles.
        self._not_loaded: dict[str, list[Entry]] = defaultdict(list)
        self._prune_at: dict[str, int] = {}
        # The keys of the recordings held, by the digest of what the key is computed from.
        self._keys: dict[bytes, str] = {}
        self._closest = Closest(engine, rules, self._redactor)
        # Commits seen through other connections (`changed`): a cassette loaded before the
        # counters moved is read again (its counters kept) on its next use.
        self._changes_all = 0
        self._changes: dict[str, int] = defaultdict(int)

    def changed(self, cassette: str | None) -> None:
        """Another proxy (or a command) committed a change to `cassette` (None: to any):
        what it recorded becomes replayable here, what it removed is forgotten, from the
        next request on (`proxy.store.changes` calls this)."""
        if cassette is None:
            self._changes_all += 1
        else:
            self._changes[cassette] += 1

    def _generation(self, name: str) -> tuple[int, int]:
        return (self._changes_all, self._changes.get(name, 0))

    def key(self, request: Request) -> str:
        known = self._keys.get(input_digest(request, self.rules))
        return known if known is not None else match_key(request, self.rules)

    def _keyed(self, entry: Entry) -> Entry:
        """A recording that starts (its body is at hand), with its key."""
        assert entry.body is not None
        request = entry.request(entry.body)
        digest = input_digest(request, self.rules)
        if entry.key is None:
            entry.key = self._keys.get(digest) or match_key(request, self.rules)
        self._keys[digest] = entry.key
        return entry

    def entries(self, cassette: str) -> tuple[Entry, ...]:
        """The recordings of `cassette` as the index holds them, in order (empty until a
        replay has loaded it): what a run knows, for inspection."""
        loaded = self._cassettes.get(cassette)
        return tuple(loaded.entries) if loaded is not None else ()

    def reset(self) -> None:
        """Start a new run: every counter back to zero, cassettes reloaded on next use. Only
        recordings still being written are carried over: the store has the rest (or they
        were deleted meanwhile)."""
        self._keys.clear()  # the reloads fill it again
        for cassette in self._cassettes.values():
            cassette.used.clear()
            cassette.entries = [e for e in cassette.entries if not e.committed.is_set()]
            cassette.stale = True

    async def _cassette(self, name: str, *, reload: bool = False) -> _Cassette:
        cassette = self._cassettes.pop(name, None)
        current = self._generation(name)
        if cassette is not None:
            self._cassettes[name] = cassette  # the most recently used, last
            if not cassette.stale and not reload and cassette.seen == current:
                return cassette  # loaded (a miss reloads it, under the lock)
        async with self._loading[name]:
            cassette = self._cassettes.get(name)
            current = self._generation(name)
            if (
                cassette is None
                or cassette.stale
                or cassette.seen != current  # changed elsewhere (removals too): read whole
                or not await self._refresh(name, cassette)
            ):
                self._cassettes[name] = cassette = await self._load(name, cassette)
                cassette.seen = current  # a change during the load: read again next time
                self._evict(keep=name)
            return cassette

    def _evict(self, keep: str) -> None:
        """Let the least recently used cassettes go until the index holds `max_entries`
        recordings or fewer: they are read again when used (a run's counters and this
        process's recordings still in flight are kept)."""
        held = sum(len(c.entries) for c in self._cassettes.values())
        for name in list(self._cassettes):
            if held <= self._max_entries:
                break
            c = self._cassettes[name]
            if name == keep or c.stale:
                continue
            in_flight = [e for e in c.entries if not e.committed.is_set()]
            held -= len(c.entries) - len(in_flight)
            self._cassettes[name] = _Cassette(entries=in_flight, used=c.used, stale=True)
            log.debug("cassette %r let go from the replay index (read again when used)", name)
        if len(self._keys) > 2 * self._max_entries:
            self._keys.clear()  # a shortcut only: keys are computed again when not found

    async def _refresh(self, name: str, c: _Cassette) -> bool:
        """Add what the store recorded in the cassette since it was read (another proxy
        sharing the store), reading only that; False when it cannot be merged in recording
        order (a recording pending then has ended, or this process recorded meanwhile)."""
        since = min(c.pending, default=c.last_id + 1)
        stamps = await queries.interaction_stamps(self._engine, name, since=since)
        if any(s.id in c.pending and s.outcome is not Outcome.RECORDING for s in stamps):
            return False
        own = {e.interaction_id for e in c.entries[c.read :]}
        new = [s for s in stamps if s.id > c.last_id and s.id not in own]
        if not new:
            return True
        if len(c.entries) > c.read:
            return False
        heads = await queries.interaction_heads(self._engine, name, [s.id for s in new])
        found = {h.id: h for h in heads}
        entries: list[Entry] = []
        for stamp in new:
            if stamp.outcome is Outcome.INCOMPLETE or (head := found.get(stamp.id)) is None:
                continue  # never replayed, or deleted meanwhile
            entry = entry_of(head)
            if entry.outcome is Outcome.RECORDING:
                continue  # pending (below)
            entry.row = row_of(entry, stamp.started_at)
            entries.append(entry)
        await self._compute(c, entries)
        for entry in entries:
            if entry.key is not None:
                c.add(entry)
        c.read = len(c.entries)
        c.rows += len(new)
        c.last_id = max(c.last_id, new[-1].id)
        c.pending = c.pending | {s.id for s in new if s.outcome is Outcome.RECORDING}
        return True

    async def _load(self, name: str, previous: _Cassette | None) -> _Cassette:
        """The cassette as stored, with this process's own entries (which may be newer than
        their rows: a recording that just ended) taking precedence."""
        # Its entries already in the store before the read: absent from it, they were
        # removed (through another proxy, or `rrproxy rm`) and are forgotten.
        stored_before = {
            e.interaction_id
            for e in (*(previous.entries if previous else ()), *self._not_loaded.get(name, ()))
            if e.interaction_id is not None and e.committed.is_set()
        }
        stamps = await queries.interaction_stamps(self._engine, name)
        # This process's entries, taken after the read: one whose recording is still being
        # written has no id yet (its row, if read, says "recording" and is left out).
        own = [*(previous.entries if previous else ()), *self._not_loaded.pop(name, ())]
        self._prune_at.pop(name, None)
        mine = {e.interaction_id: e for e in own if e.interaction_id is not None}
        in_flight = [e for e in own if e.interaction_id is None and e.body is not None]
        # Only the interactions not held yet are read (a reload reads the new ones).
        new = [s.id for s in stamps if s.id not in mine and s.outcome is not Outcome.RECORDING]
        heads = {h.id: h for h in await queries.interaction_heads(self._engine, name, new)}
        known = previous.computed if previous else {}
        fresh = _Cassette(used=previous.used if previous else defaultdict(int), rows=len(stamps))
        merged: list[Entry] = []
        for stamp in stamps:
            entry = mine.pop(stamp.id, None)
            if entry is None:
                if (head := heads.get(stamp.id)) is None:
                    continue  # recording (this process's own are in `in_flight`), or deleted
                entry = entry_of(head)
            if entry.outcome is Outcome.INCOMPLETE:
                continue  # never replayed; auto records again
            entry.row = row_of(entry, stamp.started_at)
            merged.append(entry)
            if (done := known.get(entry.row)) is not None:
                self._computed(fresh, entry, done)
        read = len(merged)
        merged.extend(e for i, e in mine.items() if i not in stored_before)
        merged.extend(in_flight)  # still recording, not yet (all) in the store
        await self._compute(fresh, [e for e in merged if e.key is None or e.sketch is None])
        for at, entry in enumerate(merged):
            if entry.key is not None:  # else its request is gone from the store
                fresh.add(entry)
            if at + 1 == read:
                fresh.read = len(fresh.entries)
        fresh.last_id = stamps[-1].id if stamps else 0
        mine_ids = {e.interaction_id for e in own}
        fresh.pending = frozenset(
            s.id for s in stamps if s.outcome is Outcome.RECORDING and s.id not in mine_ids
        )
        return fresh

    async def _compute(self, fresh: _Cassette, entries: Sequence[Entry]) -> None:
        """Key and sketch the entries, a page at a time, off the event loop. (A page's
        bodies are read before it is computed, not during: a thread that holds the GIL
        would slow each of the many small steps of a read down to the switch interval.)"""
        for at in range(0, len(entries), _PAGE):
            page = entries[at : at + _PAGE]
            requests = await self._requests(page)
            done = await asyncio.to_thread(compute_all, requests, self.rules)
            for entry, computed in zip(page, done, strict=True):
                if computed is not None:
                    self._computed(fresh, entry, computed)

    async def _requests(self, entries: Sequence[Entry]) -> list[Request | None]:
        """Each entry's request with its body (None for one gone from the store)."""
        ids = [i for e in entries if e.body is None and (i := e.interaction_id) is not None]
        bodies = await queries.request_bodies(self._engine, ids) if ids else {}
        requests: list[Request | None] = []
        for e in entries:
            body = e.body
            if body is None and e.interaction_id is not None:
                body = bodies.get(e.interaction_id)
            requests.append(None if body is None else e.request(body))
        return requests

    def _computed(self, fresh: _Cassette, entry: Entry, computed: Computed) -> None:
        key, digest, entry.sketch = computed
        if entry.key is None:
            entry.key = key
        self._keys[digest] = key
        if entry.row is not None:
            fresh.computed[entry.row] = computed

    async def resolve(
        self,
        cassette: str,
        request: Request,
        *,
        replay: bool,
        strict: bool,
        hurry: Callable[[], None],
    ) -> Entry | Miss:
        """The recording that answers `request` (redacted) in this run, or why none does.

        Auto mode (`replay` false): the next unused recording of this key, else a miss (the
        request is recorded). Replay mode: the n-th recording for the n-th request, then the
        last one again (a miss when `strict`). A recording of this very run that is not yet
        in the store is waited for (`hurry` asks the recorder to write it now).
        """
        key = self.key(request)
        if replay:
            found = await self._for_replay(cassette, key, request, strict=strict)
        else:
            found = await self._next_unused(cassette, key) or Miss(
                key, f"no unused recording in cassette {cassette!r}"
            )
        if isinstance(found, Miss):
            return found
        return await self._ready(cassette, key, request, found, hurry)

    async def _ready(
        self, cassette: str, key: str, request: Request, entry: Entry, hurry: Callable[[], None]
    ) -> Entry | Miss:
        """`entry` once it is in the store. A recording of this run is replayable once its
        last batch is written, unless its events had to be dropped meanwhile (the store was
        failing)."""
        if entry.committed.is_set() and entry.available:
            return entry  # the usual case
        where = f"{request.method} {request.url} in cassette {cassette!r}"
        if not entry.committed.is_set():
            hurry()
            try:
                await asyncio.wait_for(entry.committed.wait(), COMMIT_WAIT_S)
            except TimeoutError:
                return Miss(
                    key,
                    f"the recording of {where} is still being written to the store, which is "
                    "slow or failing (see rrproxy's log); try again",
                    "missed (recording not in the store yet)",
                )
        if not entry.available:
            return Miss(
                key,
                f"the recording of {where} is incomplete: its events could not all be "
                "written to the store. Record it again.",
                "missed (recording incomplete)",
            )
        return entry

    async def _next_unused(self, cassette: str, key: str) -> Entry | None:
        """Auto mode: the next recording for this key in this run, if one is left. Before a
        miss (which records), a cassette that grew in the store beyond what this process
        loaded and added itself (another proxy recorded into it) is read again."""
        c = await self._cassette(cassette)
        for again in (False, True):
            recordings = c.by_key.get(key)
            candidates = recordings.all if recordings is not None else []
            n = c.used[key]
            if n < len(candidates) and candidates[n].available:
                c.used[key] += 1
                return candidates[n]
            if again or await queries.interaction_count(self._engine, cassette) <= c.rows:
                return None
            c = await self._cassette(cassette, reload=True)
        return None

    async def _for_replay(
        self, cassette: str, key: str, request: Request, *, strict: bool
    ) -> Entry | Miss:
        """Replay mode: the n-th recording for the n-th request, then the last one again
        (or a miss when `strict`). Before a miss, the cassette is read again."""
        for reload in (False, True):
            c = await self._cassette(cassette, reload=reload)
            recordings = c.by_key.get(key)
            ready, rest = recordings.available() if recordings is not None else ([], [])
            n, count = c.used[key], len(ready) + len(rest)
            if n < count:
                c.used[key] += 1
                return ready[n] if n < len(ready) else rest[n - len(ready)]
            if count and not strict:
                return rest[-1] if rest else ready[-1]
            if count:
                return Miss(
                    key,
                    f"cassette {cassette!r} has {count} recording(s) of this request "
                    f"and all were used in this run (strict replay); record it again, or "
                    f"POST /_rrproxy/reset to start a new run",
                )
        return await self._miss(cassette, key, request, c)

    async def _miss(self, cassette: str, key: str, request: Request, c: _Cassette) -> Miss:
        routes = await c.routes()
        wanted = route(request.method, request.url)
        recorded = await asyncio.to_thread(_worth_comparing, routes, wanted)
        await self._compute(c, [e for e in recorded if e.sketch is None])  # recorded here
        log.debug("miss in cassette %r: the closest of %d recordings?", cassette, len(recorded))
        found = await self._closest.find(request, recorded)
        if found is None:
            where = f"{request.method} {request.url}"
            return Miss(key, f"no recording for {where}: {await self._why_none(cassette)}")
        near, diffs = found  # `request` is redacted, and `diffs` compare redacted forms
        return Miss(
            key,
            f"no recording in cassette {cassette!r} for {request.method} {request.url}. "
            f"The closest recorded request ({near.method} {self._redactor.redact_url(near.url)})"
            " differs: " + "; ".join(diffs),
        )

    async def _why_none(self, cassette: str) -> str:
        summaries = {s.name: s for s in await queries.summaries(self._engine)}
        there = summaries.get(cassette)
        if there is None:
            names = ", ".join(sorted(summaries)) or "none yet"
            why = f"there is no cassette named {cassette!r} in the store (cassettes: {names})"
        elif there.incomplete:
            why = (
                f"cassette {cassette!r} holds only incomplete recordings "
                f"({there.incomplete}), which are never replayed"
            )
        else:
            why = f"cassette {cassette!r} is empty"
        return f"{why}. Record it first (mode record or auto), or choose another cassette."

    def add(self, cassette: str, entry: Entry, *, use: bool) -> None:
        """A recording starts: it becomes this key's next recording (and counts as used by
        the request that is making it). Never waits: a cassette not loaded yet (record
        mode) takes it when it loads; a loaded one that is stale merges it on reload."""
        c = self._cassettes.get(cassette)
        if c is None:
            # Nothing to count (auto mode loaded the cassette to look for a recording), and
            # no need to load it now; a replay that loads it before the writer has
            # committed the recording still finds it.
            entries = self._not_loaded[cassette]
            entries.append(entry)
            if len(entries) >= self._prune_at.get(cassette, _PRUNE_AT_LEAST):
                entries[:] = [e for e in entries if not e.committed.is_set()]
                self._prune_at[cassette] = max(_PRUNE_AT_LEAST, 2 * len(entries))
            return
        c.add(self._keyed(entry))
        c.rows += 1
        if use:
            assert entry.key is not None
            c.used[entry.key] += 1


MISS_SCAN = 10_000
"""Recordings a miss looks at, at most (the latest of the request's route): the cost of a
miss does not grow with the cassette."""


def _worth_comparing(routes: dict[Route, list[Entry]], wanted: Route) -> list[Entry]:
    """The recordings a miss compares with the request (run in a worker thread): the latest
    `MISS_SCAN` of its route, else the latest of each other route."""
    same = routes.get(wanted)
    if same:
        return [e for e in same[-MISS_SCAN:] if e.available]
    latest = (next((e for e in reversed(es) if e.available), None) for es in list(routes.values()))
    return [e for e in itertools.islice(latest, MISS_SCAN) if e is not None]
