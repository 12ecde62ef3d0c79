"""The replay misses of this run, as the proxy answered them: kept in memory (the latest
`MAX_MISSES`, within `MAX_BYTES` of request bodies) for the misses page, which finds the
closest recording of each as the miss itself did (`proxy.serve.nearest`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from proxy.core.headers import NOT_FORWARDED, end_to_end
from proxy.core.records import Request
from proxy.errors import ReplayMiss
from proxy.serve.pipeline import control
from proxy.serve.routing import upstream_url
from proxy.serve.state import RunState, Services

MAX_MISSES = 200
MAX_BYTES = 16 * 2**20

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Missed:
    n: int
    at: datetime
    cassette: str
    request: Request  # redacted, as it was matched
    message: str  # what the client was told


class Misses:
    def __init__(self) -> None:
        self._kept: deque[Missed] = deque()
        self._bytes = 0
        self.count = 0

    def add(self, cassette: str, request: Request, message: str) -> None:
        self.count += 1
        self._kept.append(Missed(self.count, datetime.now(UTC), cassette, request, message))
        self._bytes += len(request.body)
        while len(self._kept) > MAX_MISSES or (self._bytes > MAX_BYTES and len(self._kept) > 1):
            self._bytes -= len(self._kept.popleft().request.body)

    def latest(self) -> list[Missed]:
        return list(reversed(self._kept))

    def get(self, n: int) -> Missed | None:
        return next((m for m in self._kept if m.n == n), None)

    def clear(self) -> None:
        """A new run: none yet."""
        self._kept.clear()
        self._bytes = 0
        self.count = 0


def watching(
    handler: Handler,
    note: Callable[[str, Request, str], None],
    services: Callable[[], Services],
    run: RunState,
) -> Handler:
    """`handler` (the proxy's), noting each replay miss it answers: the request as it was
    matched (redacted), and the message."""

    async def watched(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except ReplayMiss as exc:
            s = services()
            cassette = control(request, s.settings, run).cassette
            wanted = Request(
                request.method,
                upstream_url(request, s.settings),
                end_to_end(request.headers.items(), drop=NOT_FORWARDED),
                await request.read(),  # read already: aiohttp keeps it
            )
            note(cassette, s.redactor.request(wanted), str(exc))
            raise

    return watched
