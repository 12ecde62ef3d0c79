"""Which recording answers which request: a cassette's interactions by match key, and the
per-run counters that give the n-th identical request the n-th recording.

Each cassette's heads are loaded once per run and kept in memory; recordings made by this
process join as they start. A miss reloads the cassette once (another proxy sharing the
store may have recorded it) before it is declared.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.matching import MatchRules, closest, differences, key_inputs, match_key
from proxy.core.records import Outcome, Request, ResponseHead
from proxy.core.redact import REDACTED
from proxy.store import queries


@dataclass(eq=False)
class Entry:
    """One recorded interaction as replay sees it."""

    request: Request
    key: str | None  # None until needed (record mode does not match)
    head: ResponseHead
    outcome: Outcome
    interaction_id: int | None = None
    body_size: int = 0
    ttfb_ms: float = 0.0
    committed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def available(self) -> bool:
        return self.outcome.replayable


@dataclass
class _Cassette:
    entries: list[Entry] = field(default_factory=list)
    by_key: dict[str, list[Entry]] = field(default_factory=lambda: defaultdict(list))
    used: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stale: bool = False

    def add(self, entry: Entry) -> None:
        self.entries.append(entry)
        assert entry.key is not None
        self.by_key[entry.key].append(entry)


@dataclass(frozen=True)
class Miss:
    """Why no recording answers: the message names the cassette and the closest difference."""

    message: str


_PRUNE_AT_LEAST = 256
"""Entries of a cassette not loaded yet, before the committed ones are pruned."""


class Index:
    def __init__(self, engine: AsyncEngine, rules: MatchRules):
        self._engine = engine
        self.rules = rules
        self._cassettes: dict[str, _Cassette] = {}
        self._loading: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Recordings (record mode) of cassettes not loaded yet: they join when one loads.
        # Those committed meanwhile are in the store: they are pruned as the list doubles.
        self._not_loaded: dict[str, list[Entry]] = defaultdict(list)
        self._prune_at: dict[str, int] = {}
        # The keys of the recordings held, by what the key is computed from (`key_inputs`).
        self._keys: dict[tuple[object, ...], str] = {}

    def key(self, request: Request) -> str:
        known = self._keys.get(key_inputs(request, self.rules))
        return known if known is not None else match_key(request, self.rules)

    def _keyed(self, entry: Entry) -> Entry:
        inputs = key_inputs(entry.request, self.rules)
        if entry.key is None:
            entry.key = self._keys.get(inputs) or match_key(entry.request, self.rules)
        self._keys[inputs] = entry.key
        return entry

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
        cassette = self._cassettes.get(name)
        if cassette is not None and not cassette.stale and not reload:
            return cassette  # loaded (a miss reloads it, under the lock)
        async with self._loading[name]:
            cassette = self._cassettes.get(name)
            if cassette is None or cassette.stale or reload:
                self._cassettes[name] = cassette = await self._load(name, cassette)
            return cassette

    async def _load(self, name: str, previous: _Cassette | None) -> _Cassette:
        """The cassette as stored, with this process's own entries (which may be newer than
        their rows: a recording that just ended) taking precedence."""
        rows = await queries.interactions(self._engine, name)
        # This process's entries, taken after the read: one whose recording is still being
        # written has no id yet (its row, if read, says "recording" and is left out).
        own = [*(previous.entries if previous else ()), *self._not_loaded.pop(name, ())]
        self._prune_at.pop(name, None)
        mine = {e.interaction_id: e for e in own if e.interaction_id is not None}
        in_flight = [e for e in own if e.interaction_id is None]
        merged: list[Entry] = []
        for stored in rows:
            entry = mine.pop(stored.id, None)
            if entry is None:
                if stored.outcome is Outcome.RECORDING:
                    continue  # not replayable (yet); this process's own are in `in_flight`
                entry = Entry(
                    stored.request,
                    self.key(stored.request),
                    stored.response,
                    stored.outcome,
                    stored.id,
                    stored.size,
                    stored.ttfb_ms,
                )
                entry.committed.set()
            if entry.outcome is not Outcome.INCOMPLETE:  # never replayed; auto records again
                merged.append(entry)
        merged.extend(mine.values())
        merged.extend(in_flight)  # still recording, not yet (all) in the store
        fresh = _Cassette(used=previous.used if previous else defaultdict(int))
        for entry in merged:
            fresh.add(self._keyed(entry))
        return fresh

    async def next_unused(self, cassette: str, key: str) -> Entry | None:
        """Auto mode: the next recording for this key in this run, if one is left."""
        c = await self._cassette(cassette)
        candidates = c.by_key.get(key, [])
        n = c.used[key]
        if n < len(candidates) and candidates[n].available:
            c.used[key] += 1
            return candidates[n]
        return None

    async def for_replay(
        self, cassette: str, key: str, request: Request, *, strict: bool
    ) -> Entry | Miss:
        """Replay mode: the n-th recording for the n-th request, then the last one again
        (or a miss when `strict`)."""
        for reload in (False, True):
            c = await self._cassette(cassette, reload=reload)
            candidates = [e for e in c.by_key.get(key, []) if e.available]
            n = c.used[key]
            if n < len(candidates):
                c.used[key] += 1
                return candidates[n]
            if candidates and not strict:
                return candidates[-1]
            if candidates:
                return Miss(
                    f"cassette {cassette!r} has {len(candidates)} recording(s) of this request "
                    f"and all were used in this run (strict replay); record it again, or "
                    f"POST /_rrproxy/reset to start a new run"
                )
        return await self._miss(cassette, request, c)

    async def _miss(self, cassette: str, request: Request, c: _Cassette) -> Miss:
        where = f"{request.method} {request.url}"
        recorded = [e for e in c.entries if e.available]
        found = closest(request, [e.request for e in recorded], self.rules)
        if found is None:
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
            return Miss(
                f"no recording for {where}: {why}. Record it first (mode record or auto), "
                "or choose another cassette."
            )
        # The message quotes the client's request and the closest recording as stored
        # (redacted when recorded), and no query value of a credential-like name, which a
        # recording made under older or narrower redaction rules may still hold.
        hidden = frozenset(n.lower() for n in self.rules.ignore_query_params)  # redacted ones
        wanted, near = _shown(request, hidden), _shown(recorded[found[0]].request, hidden)
        diffs = differences(wanted, near, self.rules) or [
            "only in query values that are not shown (credential-like names)"
        ]
        return Miss(
            f"no recording in cassette {cassette!r} for {wanted.method} {wanted.url}. The "
            f"closest recorded request ({near.method} {near.url}) differs: " + "; ".join(diffs)
        )

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
        if use:
            assert entry.key is not None
            c.used[entry.key] += 1


_CREDENTIAL_WORDS = ("key", "token", "secret", "signature", "password", "auth")


def _shown(request: Request, hidden: frozenset[str]) -> Request:
    """`request` as a miss message may quote it: the value of each query parameter named in
    `hidden` (lower case) or like a credential replaced by `REDACTED`."""
    base, question, query = request.url.partition("?")
    if not question:
        return request

    def shown(part: str) -> str:
        name, equals, _ = part.partition("=")
        lower = unquote_plus(name).lower()
        if equals and (lower in hidden or any(word in lower for word in _CREDENTIAL_WORDS)):
            return f"{name}={REDACTED}"
        return part

    url = base + "?" + "&".join(shown(p) for p in query.split("&"))
    return Request(request.method, url, request.headers, request.body)
