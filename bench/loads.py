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
    session: aiohttp.ClientSession, base: str, sizes: Sizes, proxy_pid: int | None
) -> Figures:
    """One long stream of ~1 KB events: throughput, and the proxy's memory while relaying."""
    spec = payload.StreamSpec("large-0", sizes.large_events, sizes.large_event_size)
    if proxy_pid is None:
        stream = await fetch_stream(session, base, spec)
        rss: Figures = {"rss_before_mib": None, "rss_peak_mib": None, "rss_growth_mib": None}
    else:
        async with RssSampler(proxy_pid) as sampler:
            stream = await fetch_stream(session, base, spec)
        rss = {
            "rss_before_mib": sampler.before_kib / 1024,
            "rss_peak_mib": sampler.peak_kib / 1024,
            "rss_growth_mib": (sampler.peak_kib - sampler.before_kib) / 1024,
        }
    return {
        "mb_per_s": stream.nbytes / 1e6 / stream.last_byte_s,
        "events_per_s": stream.events / stream.last_byte_s,
        **rss,
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


async def concurrency(
    session: aiohttp.ClientSession, base: str, sizes: Sizes, cassette: str | None
) -> Figures:
    """Many streams at once. With ``cassette`` (record mode) also check that the store got
    every interaction and event, polling until it has or ten seconds have passed."""
    before = await recorded_counts(session, base, cassette) if cassette else None
    specs = [
        payload.StreamSpec(f"conc-{i}", sizes.concurrent_events, sizes.event_size)
        for i in range(sizes.concurrent_streams)
    ]
    for spec in specs:
        payload.expected_stream(spec)  # warm the cache outside the timed part
    start = time.perf_counter()
    await asyncio.gather(*(fetch_stream(session, base, spec) for spec in specs))
    wall = time.perf_counter() - start
    figures: Figures = {
        "wall_ms": wall * 1000,
        "requests_per_s": len(specs) / wall,
        "events_per_s": len(specs) * sizes.concurrent_events / wall,
        "recorded_ok": None,
        "record_flush_ms": None,
    }
    if cassette and before is not None:
        want = (before[0] + len(specs), before[1] + len(specs) * sizes.concurrent_events)
        got = await recorded_counts(session, base, cassette)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while got != want:
                    await asyncio.sleep(0.02)
                    got = await recorded_counts(session, base, cassette)
        if got != want:
            raise BenchError(
                f"cassette {cassette!r} has {got} (interactions, events) after the"
                f" concurrent streams; want {want}"
            )
        figures["recorded_ok"] = True
        figures["record_flush_ms"] = (time.perf_counter() - start - wall) * 1000
    return figures


async def small_json(session: aiohttp.ClientSession, base: str, sizes: Sizes) -> Figures:
    """Non-streamed JSON requests from a fixed number of workers: requests per second."""
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
    return {"wall_ms": wall * 1000, "requests_per_s": sizes.small_requests / wall}
