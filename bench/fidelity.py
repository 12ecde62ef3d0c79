"""``python -m bench fidelity``: how close in time a replay at recorded pace comes to the
recording, piece by piece.

Everything on 127.0.0.1. An upstream (in this process) sends SSE streams on a fixed
schedule: pauses between events and inside them (an event cut mid-line, a multi-byte
character split, a blank line alone), plain and compressed (gzip, br, flushed after each
piece as a streaming server does). rrproxy (its own process, ``--mode record``) records
each stream; the stream is then replayed once at instant pace (the recording committed,
its body read) and ``--repeat`` times with ``Rrproxy-Pace: recorded``.

For each piece the client notes when it had the piece's last byte, from the moment it
sent the request; Δt is the replay's time minus the live one. It prints, per stream, how
many pieces arrived on their own live and on replay, and the median and the maximum
|Δt| over every piece of every replay. The target: max |Δt| within 5 ms on an idle
machine (a loaded one adds its scheduling delays to both sides).

    .venv/bin/python -m bench fidelity [--repeat 3] [--events 21] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import brotli
from aiohttp import web

from bench import procs

TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=5)
TARGET_MS = 5.0


def schedule(events: int) -> list[tuple[float, bytes]]:
    """(pause in ms before it, bytes) of each piece: events with pauses between them, every
    third paused inside (mid-line, then before its blank line), one with a character split."""
    pieces: list[tuple[float, bytes]] = []
    for i in range(events):
        gap = 4.0 if i == 0 else 20.0 + (i * 37) % 60
        event = f'event: delta\ndata: {{"i": {i}, "text": "héllo wörld {i}"}}\n\n'.encode()
        if i % 3 == 1:
            cut = event.index(b"llo")
            pieces += [(gap, event[:cut]), (35.0, event[cut:-1]), (15.0, event[-1:])]
        elif i % 3 == 2:
            cut = event.index("é".encode()) + 1  # inside the two bytes of "é"
            pieces += [(gap, event[:cut]), (25.0, event[cut:])]
        else:
            pieces.append((gap, event))
    return pieces


def _gzip(parts: list[bytes]) -> list[bytes]:
    c = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    out = [c.compress(p) + c.flush(zlib.Z_SYNC_FLUSH) for p in parts]
    out[-1] += c.flush()
    return out


def _br(parts: list[bytes]) -> list[bytes]:
    c = brotli.Compressor()
    out = [c.process(p) + c.flush() for p in parts]
    out[-1] += c.finish()
    return out


CODINGS: dict[str, Callable[[list[bytes]], list[bytes]]] = {
    "plain": lambda parts: parts,
    "gzip": _gzip,
    "br": _br,
}


def upstream_app(streams: dict[str, tuple[list[float], list[bytes]]]) -> web.Application:
    async def stream(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        gaps, pieces = streams[kind]
        headers = {"Content-Type": "text/event-stream"}
        if kind != "plain":
            headers["Content-Encoding"] = kind
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        due = loop.time()
        for gap, piece in zip(gaps, pieces, strict=True):
            due += gap / 1000
            await asyncio.sleep(max(0.0, due - loop.time()))
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/{kind}", stream)
    return app


async def arrivals(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], ends: list[int]
) -> tuple[list[float], int, str]:
    """When the client had each piece's last byte (ms from sending the request), how many
    reads it took, and where the answer came from."""
    times: list[float] = []
    got, reads = 0, 0
    began = time.perf_counter()
    async with session.post(url, json={"bench": "fidelity"}, headers=headers) as resp:
        source = resp.headers.get("Rrproxy-Source", "")
        async for chunk in resp.content.iter_any():
            now = (time.perf_counter() - began) * 1000
            got += len(chunk)
            reads += 1
            while len(times) < len(ends) and ends[len(times)] <= got:
                times.append(now)
    if got != ends[-1]:
        raise procs.BenchError(f"{url}: {got} bytes, expected {ends[-1]}")
    return times, reads, source


async def run(events: int, repeat: int) -> dict[str, Any]:
    plan = schedule(events)
    gaps = [gap for gap, _ in plan]
    streams = {kind: (gaps, code([p for _, p in plan])) for kind, code in CODINGS.items()}
    runner = web.AppRunner(upstream_app(streams))
    await runner.setup()
    site = web.TCPSite(runner, procs.HOST, 0)
    await site.start()
    up_port = runner.addresses[0][1]
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="rrproxy-fidelity-") as tmp:
            workdir = Path(tmp)
            port = procs.free_port()
            argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST]
            argv += ["--port", str(port), "--upstream", f"http://{procs.HOST}:{up_port}"]
            argv += ["--mode", "record", "--db", str(workdir / "fidelity.db")]
            log = workdir / "proxy.log"
            async with (
                procs.server(argv, port, "/_rrproxy/health", log) as proxy,
                aiohttp.ClientSession(
                    trust_env=False, timeout=TIMEOUT, auto_decompress=False
                ) as session,
            ):
                for kind, (_, pieces) in streams.items():
                    results[kind] = await _one(session, proxy.url + f"/v1/{kind}", pieces, repeat)
    finally:
        await runner.cleanup()
    return results


async def _one(
    session: aiohttp.ClientSession, url: str, pieces: list[bytes], repeat: int
) -> dict[str, Any]:
    ends = [sum(map(len, pieces[: i + 1])) for i in range(len(pieces))]
    live, live_reads, source = await arrivals(session, url, {}, ends)
    if source != "recorded":
        raise procs.BenchError(f"{url}: live answer was {source!r}, not recorded")
    await arrivals(session, url, {"Rrproxy-Mode": "replay"}, ends)  # committed, body read
    deltas: list[float] = []
    replay_reads: list[int] = []
    paced = {"Rrproxy-Mode": "replay", "Rrproxy-Pace": "recorded"}
    for _ in range(repeat):
        times, reads, source = await arrivals(session, url, paced, ends)
        if source != "replayed":
            raise procs.BenchError(f"{url}: replay answered {source!r}")
        deltas += [r - lv for r, lv in zip(times, live, strict=True)]
        replay_reads.append(reads)
    worst = max(abs(d) for d in deltas)
    return {
        "pieces": len(pieces),
        "live_reads": live_reads,
        "replay_reads": replay_reads,
        "mean_dt_ms": round(statistics.fmean(deltas), 3),
        "median_abs_dt_ms": round(statistics.median(abs(d) for d in deltas), 3),
        "max_abs_dt_ms": round(worst, 3),
        "last_piece_live_ms": round(live[-1], 3),
        "within_target": worst <= TARGET_MS,
    }


def table(results: dict[str, Any]) -> str:
    rows = [
        (
            "stream",
            "pieces",
            "reads live",
            "reads replay",
            "mean Δt ms",
            "median |Δt| ms",
            "max |Δt| ms",
        ),
        *(
            (
                kind,
                str(r["pieces"]),
                str(r["live_reads"]),
                ",".join(map(str, r["replay_reads"])),
                f"{r['mean_dt_ms']:+.2f}",
                f"{r['median_abs_dt_ms']:.2f}",
                f"{r['max_abs_dt_ms']:.2f}",
            )
            for kind, r in results.items()
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench fidelity", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="paced replays of each stream")
    parser.add_argument("--events", type=int, default=21, help="events of each stream")
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.events < 1:
        parser.error("--repeat and --events must be at least 1")
    results = asyncio.run(run(args.events, args.repeat))
    print(table(results))
    worst = max(r["max_abs_dt_ms"] for r in results.values())
    print(f"max |Δt| per piece: {worst:.2f} ms (target: {TARGET_MS:.0f} ms on an idle machine)")
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
    return 0
