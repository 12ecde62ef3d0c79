"""The recording closest to a request that missed, and how they differ: what a replay miss
says. Bounded, and off the event loop: a shortlist judged without bodies (route, the rest
of the head, sketches, sizes) of a cut of at most `MISS_NARROW` (the bodies' sketches and
sizes alone), then at most `MISS_CANDIDATES` recorded bodies, read from the
store (the parsed ones kept for the next miss, within `PARSED_BYTES`), compared until
`MISS_DEADLINE_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Iterator

from sqlalchemy.ext.asyncio import AsyncEngine

from proxy.core.matching import (
    Canonical,
    MatchRules,
    canonical,
    keyed,
    narrow,
    nearest,
    shortlist,
)
from proxy.core.records import Request
from proxy.core.redact import Redactor
from proxy.serve.entry import Entry, Row
from proxy.store import queries

MISS_CANDIDATES = 16
"""How many recorded bodies a miss compares with the request, at most."""
MISS_NARROW = 8 * MISS_CANDIDATES
"""How many recordings, the most alike by body sketch and size, `shortlist` judges."""
MISS_DEADLINE_S = 2.0
"""How long comparing them may take; past it, the closest of those compared is named."""
PARSED_BYTES = 16 * 2**20
"""Parsed recorded bodies kept for the next miss, counted by the size of the bodies."""


class _Parsed:
    """Recorded bodies as parsed for a diff, least recently used out first, within a budget
    counted in bytes of body."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._forms: OrderedDict[Row, Canonical] = OrderedDict()
        self._size = 0

    def get(self, row: Row | None) -> Canonical | None:
        if row is None or (form := self._forms.get(row)) is None:
            return None
        self._forms.move_to_end(row)
        return form

    def keep(self, row: Row, form: Canonical) -> None:
        if row in self._forms or form.size > self._max_bytes:
            return
        self._forms[row] = form
        self._size += form.size
        while self._size > self._max_bytes:
            _, dropped = self._forms.popitem(last=False)
            self._size -= dropped.size


class Closest:
    """Finds the closest recording for a miss; keeps parsed bodies for the next one.
    Recorded requests are compared as `redactor` redacts them: a recording made under older
    or narrower rules quotes no credential in a miss message."""

    def __init__(self, engine: AsyncEngine, rules: MatchRules, redactor: Redactor):
        self._engine = engine
        self.rules = rules
        self._redactor = redactor
        self._parsed = _Parsed(PARSED_BYTES)

    async def find(self, request: Request, recorded: list[Entry]) -> tuple[Entry, list[str]] | None:
        """The recording most like `request` and how they differ (None without any)."""
        if not recorded:
            return None
        deadline = time.monotonic() + MISS_DEADLINE_S
        picked = await asyncio.to_thread(_pick, request, recorded, self.rules)
        forms = await self._forms([recorded[i] for i in picked])
        if not forms:
            return None  # deleted from the store meanwhile
        i, diffs, parsed = await asyncio.to_thread(
            _compare, request, [form for _, form in forms], self.rules, deadline
        )
        for (entry, _), form in zip(forms, parsed, strict=True):
            if form is not None and entry.row is not None:
                self._parsed.keep(entry.row, form)
        return forms[i][0], diffs

    async def _forms(self, entries: list[Entry]) -> list[tuple[Entry, Canonical | Request]]:
        """Each entry as parsed before, else its request with the body (read from the store
        when this process no longer holds it)."""
        forms: list[tuple[Entry, Canonical | Request]] = []
        unread: list[Entry] = []
        for entry in entries:
            form = self._parsed.get(entry.row)
            if form is not None:
                forms.append((entry, form))
            elif entry.body is not None:
                forms.append((entry, self._redactor.request(entry.request(entry.body))))
            elif entry.interaction_id is not None:
                unread.append(entry)
        if unread:
            ids = [e.interaction_id for e in unread if e.interaction_id is not None]
            bodies = await queries.request_bodies(self._engine, ids)
            forms += [
                (e, self._redactor.request(e.request(bodies[e.interaction_id])))
                for e in unread
                if e.interaction_id in bodies
            ]
        position = {entry: i for i, entry in enumerate(entries)}
        return sorted(forms, key=lambda form: position[form[0]])  # ties: the earliest


def _pick(request: Request, recorded: list[Entry], rules: MatchRules) -> list[int]:
    """At most `MISS_CANDIDATES` recordings worth reading and comparing (run in a worker
    thread): a cheap cut by the sketch and size of the bodies, then `shortlist`."""
    heads = [e.candidate for e in recorded]
    _, want = keyed(request, rules)
    near = narrow(want, len(request.body), heads, MISS_NARROW)
    picked = shortlist(request, [heads[i] for i in near], rules, MISS_CANDIDATES)
    return [near[i] for i in picked]


def _compare(
    request: Request, forms: list[Canonical | Request], rules: MatchRules, deadline: float
) -> tuple[int, list[str], list[Canonical | None]]:
    """`nearest` over recorded requests, parsed here as needed (run in a worker thread):
    the closest one's index, how it differs, and the forms parsed on the way."""
    parsed: list[Canonical | None] = [None] * len(forms)

    def canonical_forms() -> Iterator[Canonical]:
        for i, form in enumerate(forms):
            if isinstance(form, Request):
                form = parsed[i] = canonical(form, rules)
            yield form

    found = nearest(canonical(request, rules), canonical_forms(), deadline=deadline)
    assert found is not None  # `forms` is not empty
    return (*found, parsed)
