"""Which recorded request answers a new one, and why another one does not.

Plain functions over `Request`, in the spirit of vcrpy's `matchers.py` and mitmproxy's
`ServerPlayback._hash`. Both `match_key` and `differences` go through `canonical` (see
`proxy.core.canonical`), so the rules are applied in one place and identically to both
sides. For a request that matches nothing, `shortlist` picks the recorded requests worth
comparing without reading their bodies (a `Sketch` stands for each body), and `nearest`
names the closest and how it differs (`proxy.core.differences`).

Secrets are redacted before a request is stored (see `redact.py`); match the redacted
form of a live request too, so that a cassette recorded with one key replays for anyone.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from proxy.core.canonical import KEY_PARTS, Canonical, MatchRules, canonical, head, route
from proxy.core.differences import MAX_DIFFERENCES, between, between_heads, capped
from proxy.core.records import Headers, Request

__all__ = [
    "MAX_DIFFERENCES",
    "Candidate",
    "Canonical",
    "MatchRules",
    "Sketch",
    "canonical",
    "differences",
    "input_digest",
    "keyed",
    "match_key",
    "narrow",
    "nearest",
    "route",
    "shortlist",
    "similarity",
    "sketch",
]

Sketch = tuple[int, ...]
"""The smallest hashes of a body's parts (JSON: its leaves, with their paths; otherwise its
lines), for a quick estimate of how alike two bodies are (`similarity`). In-process only:
the hashes are Python's, which change from one process to the next."""

SKETCH_SIZE = 32


class Candidate(NamedTuple):
    """A recorded request as the index keeps it: everything but the body, which `sketch`
    and `size` stand for."""

    method: str
    url: str
    headers: Headers
    size: int
    sketch: Sketch


def match_key(request: Request, rules: MatchRules) -> str:
    """A stable hex sha256 of the request's canonical form under `rules`."""
    return _key(canonical(request, rules))


def _key(c: Canonical) -> str:
    h = c.head
    parts = [
        h.method,
        h.upstream,
        h.path,
        [list(p) for p in h.query],
        [[name, list(values)] for name, values in h.headers],
        "json" if c.is_json else "raw",
    ]
    digest = hashlib.sha256(KEY_PARTS.encode(parts).encode())
    digest.update(b"\n")  # then the body, hashed as it is (JSON: its canonical text)
    digest.update(c.body_text.encode("utf-8", "surrogatepass") if c.is_json else c.body_raw)
    return digest.hexdigest()


def keyed(request: Request, rules: MatchRules) -> tuple[str, Sketch]:
    """The match key and the sketch of a request, from one reading of its body."""
    c = canonical(request, rules)
    return _key(c), sketch(c)


def input_digest(request: Request, rules: MatchRules) -> bytes:
    """A digest of what `match_key` reads of a request, as it was sent. Requests equal in
    these have the same key (not the other way round), so a replay of a byte-identical
    request, the usual case, can look its key up rather than parse and canonicalise its
    body again (hashing is much cheaper than parsing)."""
    headers: list[list[str]] = []
    if rules.match_headers:
        wanted = {name.lower() for name in rules.match_headers}
        headers = [[n.lower(), v] for n, v in request.headers if n.lower() in wanted]
    head = KEY_PARTS.encode([request.method, request.url, headers])
    digest = hashlib.blake2b(head.encode(), digest_size=20)
    digest.update(b"\n")
    digest.update(request.body)
    return digest.digest()


def differences(wanted: Request, recorded: Request, rules: MatchRules) -> list[str]:
    """Short sentences naming what differs between two requests and both values.

    Empty exactly when both have the same `match_key`. At most `MAX_DIFFERENCES`
    sentences, then one saying how many more there are.
    """
    return capped(between(canonical(wanted, rules), canonical(recorded, rules)))


def nearest(
    want: Canonical,
    candidates: Iterable[Canonical],
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[int, list[str]] | None:
    """The index of the candidate most like `want`, and how they differ.

    Prefers a candidate with the same method, upstream and path, then the one with the
    fewest differences, then the nearest body size, then the earliest. None when there
    are no candidates. Past `deadline` (a `clock` time), the best of those compared so far
    (at least one).
    """
    best: tuple[tuple[bool, int, int], int, list[str]] | None = None
    for i, have in enumerate(candidates):
        found = between(want, have)
        score = (want.head.route != have.head.route, len(found), abs(want.size - have.size))
        if best is None or score < best[0]:  # strictly better: the earliest of equals stays
            best = score, i, found
        if deadline is not None and clock() >= deadline:
            break
    return None if best is None else (best[1], capped(best[2]))


def shortlist(
    wanted: Request, candidates: Sequence[Candidate], rules: MatchRules, limit: int
) -> list[int]:
    """The indices of at most `limit` candidates likely to be the closest to `wanted`,
    judged without their bodies (what `nearest` then compares): the same method, upstream
    and path first, then the fewest differences elsewhere than in the body, then the most
    alike body (`similarity` of the sketches), then the nearest body size, then the
    earliest."""
    want = canonical(wanted, rules)
    want_sketch = sketch(want)

    def score(i: int) -> tuple[bool, int, float, int, int]:
        c = candidates[i]
        have = head(c.method, c.url, c.headers, rules)
        return (
            want.head.route != have.route,
            len(between_heads(want.head, have)),
            -similarity(want_sketch, c.sketch),
            abs(want.size - c.size),
            i,
        )

    return sorted(heapq.nsmallest(limit, range(len(candidates)), key=score))


def narrow(want: Sketch, size: int, candidates: Sequence[Candidate], limit: int) -> list[int]:
    """The indices of at most `limit` candidates whose bodies look most like one with sketch
    `want` and `size` bytes (the most parts in common, then the nearest size, then the
    latest): a cheap first cut, a few operations a candidate, before `shortlist`."""
    if len(candidates) <= limit:
        return list(range(len(candidates)))
    parts = frozenset(want)

    def score(i: int) -> tuple[int, int, int]:
        c = candidates[i]
        return -len(parts.intersection(c.sketch)), abs(size - c.size), -i

    return sorted(heapq.nsmallest(limit, range(len(candidates)), key=score))


def sketch(c: Canonical) -> Sketch:
    """The `SKETCH_SIZE` smallest hashes of the body's parts."""
    parts: set[int] = set()
    if c.is_json:
        _leaf_hashes(c.body_json, (), parts)
    elif c.body_raw:
        parts = {hash(line) for line in c.body_raw.split(b"\n")}
    return tuple(heapq.nsmallest(SKETCH_SIZE, parts))


def similarity(a: Sketch, b: Sketch) -> float:
    """How alike two bodies are, from their sketches: an estimate of the share of parts
    they have in common (Jaccard index, bottom-k estimator), 1.0 for two empty bodies."""
    if not a or not b:
        return 1.0 if a == b else 0.0
    x, y = set(a), set(b)
    union = heapq.nsmallest(SKETCH_SIZE, x | y)
    return sum(1 for h in union if h in x and h in y) / len(union)


def _leaf_hashes(value: Any, path: tuple[str | int, ...], into: set[int]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _leaf_hashes(item, (*path, key), into)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _leaf_hashes(item, (*path, i), into)
    else:
        into.add(hash((path, type(value), value)))
