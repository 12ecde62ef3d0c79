"""The four loads. Each drives one target through a pooled ClientSession, checks every
response against ``payload`` (event count, byte count and CRC) and returns its figures.

A load raises ``BenchError`` at the first response that is wrong or incomplete. Time limits
come from the caller: the session's ``ClientTimeout`` bounds each request, and each load
as a whole runs under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import payload
from bench.procs import BenchError, RssSampler

Figures = dict[str, float | int | bool | str | None]

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {**JSON_HEADERS, "Accept": "text/event-stream"}
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Sizes:
    latency_requests: int
    latency_events: int
    large_events: int
    concurrent_streams: int
    concurrent_events: int
    small_requests: int
    small_concurrency: int
    event_size: int = 200
    large_event_size: int = 1024


FULL = Sizes(200, 20, 20_000, 64, 200, 2_000, 32)
QUICK = Sizes(20, 20, 2_000, 8, 50, 200, 32)


@dataclass(frozen=True, slots=True)
class Stream:
    events: int
    nbytes: int
    crc32: int
    first_event_s: float
    last_byte_s: float


async def fetch_stream(
    session: aiohttp.ClientSession, base: str, spec: payload.StreamSpec
) -> Stream:
    """POST one streaming request; read it to the end and check it against ``payload``."""
    body = payload.stream_request(spec)
    events = nbytes = crc = 0
    last = b""
    first_event = math.nan
    start = time.perf_counter()
    async with session.post(base + payload.STREAM_PATH, data=body, headers=SSE_HEADERS) as response:
        if response.status != 200:
            text = (await response.read())[:300].decode(errors="replace")
            raise BenchError(f"{spec.stream_id}: HTTP {response.status}: {text}")
        async for chunk in response.content.iter_any():
            nbytes += len(chunk)
            crc = zlib.crc32(chunk, crc)
            # Our events hold no blank line, so each b"\n\n" ends exactly one event.
            events += chunk.count(b"\n\n") + (last == b"\n" and chunk[:1] == b"\n")
            last = chunk[-1:]
            if events and math.isnan(first_event):
                first_event = time.perf_counter() - start
    stream = Stream(events, nbytes, crc, first_event, time.perf_counter() - start)
    want = payload.expected_stream(spec)  # after the clock stopped; cached across runs
    if (stream.events, stream.nbytes, stream.crc32) != (want.events, want.nbytes, want.crc32):
        raise BenchError(
            f"{spec.stream_id}: got {stream.events} events / {stream.nbytes} bytes"
            f" (crc {stream.crc32:08x}), want {want.events} / {want.nbytes} (crc {want.crc32:08x})"
        )
    return stream


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def latency(session: aiohttp.ClientSession, base: str, sizes: Sizes) -> Figures:
    """Sequential short streams: time to first event and to last byte."""
    first: list[float] = []
    last: list[float] = []
    for i in range(sizes.latency_requests):
        spec = payload.StreamSpec(f"lat-{i}", sizes.latency_events, sizes.event_size)
        stream = await fetch_stream(session, base, spec)
        first.append(stream.first_event_s * 1000)
        last.append(stream.last_byte_s * 1000)
    return {
        "ttfe_p50_ms": percentile(first, 50),
        "ttfe_p99_ms": percentile(first, 99),
        "ttlb_p50_ms": percentile(last, 50),
        "ttlb_p99_ms": percentile(last, 99),
    }


async def large(
    session: aiohttp.ClientSession,
    base: str,
    sizes: Sizes,
    proxy_pid: int | None,
    cassette: str | None,
) -> Figures:
    """One long stream of ~1 KB events: throughput, and the proxy's memory while relaying
    it. With ``cassette`` (record mode) the memory is watched until the store holds the
    stream, since a recorder may still hold its events after the last byte went out."""
    spec = payload.StreamSpec("large-0", sizes.large_events, sizes.large_event_size)
    flush_ms: float | None = None
    if proxy_pid is None:
        stream = await fetch_stream(session, base, spec)
        rss: Figures = {"rss_before_mib": None, "rss_peak_mib": None, "rss_growth_mib": None}
    else:
        async with RssSampler(proxy_pid) as sampler:
            stream = await fetch_stream(session, base, spec)
            if cassette is not None:
                flush_ms = await store_caught_up(session, base, cassette, recorded(sizes, "large"))
        rss = {
            "rss_before_mib": sampler.before_kib / 1024,
            "rss_peak_mib": sampler.peak_kib / 1024,
            "rss_growth_mib": (sampler.peak_kib - sampler.before_kib) / 1024,
        }
    return {
        "mb_per_s": stream.nbytes / 1e6 / stream.last_byte_s,
        "events_per_s": stream.events / stream.last_byte_s,
        **rss,
        "record_flush_ms": flush_ms,
    }


async def recorded_counts(
    session: aiohttp.ClientSession, base: str, cassette: str
) -> tuple[int, int] | None:
    """(interactions, events) of a cassette per ``GET /_rrproxy/cassettes``; None if absent."""
    async with session.get(base + "/_rrproxy/cassettes") as r:
        if r.status != 200:
            return None
        listing: Any = await r.json(content_type=None)
    if isinstance(listing, dict):
        listing = listing.get("cassettes")
    if not isinstance(listing, list):
        return None
    for item in listing:
        if isinstance(item, dict) and item.get("name") == cassette:
            return int(item["interactions"]), int(item["events"])
    return 0, 0


def recorded(sizes: Sizes, through: str) -> tuple[int, int | None]:
    """(interactions, events) a fresh cassette holds once the loads, in their order, have
    been recorded into it up to ``through``. Events are unknown (None) once small JSON
    bodies are in: a non-streamed body is stored as the chunks it happened to arrive in."""
    if through == "small_json":
        return recorded(sizes, "concurrency")[0] + sizes.small_requests, None
    loads = {
        "latency": (sizes.latency_requests, sizes.latency_requests * sizes.latency_events),
        "large": (1, sizes.large_events),
        "concurrency": (
            sizes.concurrent_streams,
            sizes.concurrent_streams * sizes.concurrent_events,
        ),
    }
    names = list(loads)[: list(loads).index(through) + 1]
    return sum(loads[n][0] for n in names), sum(loads[n][1] for n in names)


async def store_caught_up(
    session: aiohttp.ClientSession, base: str, cassette: str, want: tuple[int, int | None]
) -> float | None:
    """Poll ``/_rrproxy/cassettes`` until the cassette holds ``want`` (interactions,
    events); the milliseconds that took. None without the endpoint; BenchError after 10 s."""

    def done(got: tuple[int, int]) -> bool:
        return got[0] == want[0] and want[1] in (None, got[1])

    start = time.perf_counter()
    got = await recorded_counts(session, base, cassette)
    if got is None:
        return None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while not done(got):
                await asyncio.sleep(0.01)
                got = await recorded_counts(session, base, cassette) or got
    if not done(got):
        raise BenchError(
            f"cassette {cassette!r} holds {got} (interactions, events) ten seconds after"
            f" the streams ended; want {want}"
        )
    return (time.perf_counter() - start) * 1000


async def concurrency(
    session: aiohttp.ClientSession, base: str, sizes: Sizes, cassette: str | None
) -> Figures:
    """Many streams at once. With ``cassette`` (record mode, a fresh cassette that the
    loads before this one recorded into) also check that the store got every interaction
    and event so far."""
    specs = [
        payload.StreamSpec(f"conc-{i}", sizes.concurrent_events, sizes.event_size)
        for i in range(sizes.concurrent_streams)
    ]
    for spec in specs:
        payload.expected_stream(spec)  # warm the cache outside the timed part
    start = time.perf_counter()
    await asyncio.gather(*(fetch_stream(session, base, spec) for spec in specs))
    wall = time.perf_counter() - start
    flush_ms = None
    if cassette is not None:
        flush_ms = await store_caught_up(session, base, cassette, recorded(sizes, "concurrency"))
    return {
        "wall_ms": wall * 1000,
        "requests_per_s": len(specs) / wall,
        "events_per_s": len(specs) * sizes.concurrent_events / wall,
        "recorded_ok": None if flush_ms is None else True,
        "record_flush_ms": flush_ms,
    }


async def small_json(
    session: aiohttp.ClientSession, base: str, sizes: Sizes, cassette: str | None
) -> Figures:
    """Non-streamed JSON requests from a fixed number of workers: requests per second.
    With ``cassette`` (record mode) also wait until the store holds every one of them."""
    ids = iter(range(sizes.small_requests))

    async def worker() -> None:
        for i in ids:
            request_id = f"small-{i}"
            async with session.post(
                base + payload.SMALL_PATH,
                data=payload.small_request(request_id),
                headers=JSON_HEADERS,
            ) as response:
                body = await response.read()
                ctype = response.content_type
            if response.status != 200 or ctype != "application/json":
                raise BenchError(f"{request_id}: HTTP {response.status} {ctype}: {body[:300]!r}")
            if body != payload.small_response(request_id):
                raise BenchError(f"{request_id}: body differs ({len(body)} bytes)")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(sizes.small_concurrency)))
    wall = time.perf_counter() - start
    flush_ms = None
    if cassette is not None:
        flush_ms = await store_caught_up(session, base, cassette, recorded(sizes, "small_json"))
    return {
        "wall_ms": wall * 1000,
        "requests_per_s": sizes.small_requests / wall,
        "record_flush_ms": flush_ms,
    }
