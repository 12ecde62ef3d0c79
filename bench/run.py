"""``python -m bench``: start the upstream, drive every load through every target, report.

Targets: ``direct`` (the floor), ``aiohttp`` (bench/passthrough.py, what aiohttp alone
costs) and rrproxy in ``passthrough``, ``record`` and ``replay`` modes. Each repeat starts
every proxy afresh with a new database; ``replay`` serves what ``record`` just stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from bench import loads, payload, procs, report, scale
from bench.loads import Figures, Sizes

TARGETS = ("direct", "aiohttp", "passthrough", "record", "replay")
CASSETTE = "bench"
# Every request is bounded: no stall longer than sock_read, no request longer than total.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=5, sock_read=15)
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    url: str
    pid: int | None  # the proxy process, if any


@contextlib.asynccontextmanager
async def started(
    name: str, upstream: str, workdir: Path, db: Path | str, workers: int = 1
) -> AsyncIterator[Target]:
    """Run one target for the duration of the block (nothing to start for ``direct``)."""
    if name == "direct":
        yield Target(name, upstream, None)
        return
    port = procs.free_port()
    if name == "aiohttp":
        argv = [sys.executable, "-m", "bench.passthrough", "--port", str(port)]
        argv += ["--upstream", upstream]
        health = payload.HEALTH_PATH  # relayed to the upstream
    else:
        argv = [sys.executable, "-m", "proxy", "serve", "--host", procs.HOST, "--port", str(port)]
        argv += ["--upstream", upstream, "--mode", name, "--db", str(db), "--cassette", CASSETTE]
        if workers > 1:
            argv += ["--workers", str(workers)]
        health = "/_rrproxy/health"
    log = workdir / f"{name}-{port}.log"
    async with procs.server(argv, port, health, log) as server:
        yield Target(name, server.url, server.pid)


async def watch_live(url: str) -> None:
    """`--ui-live`: the web UI's live page open on the proxy for the whole run (its SSE feed
    read and thrown away), as a developer watching the recordings would have it."""
    async with aiohttp.ClientSession(trust_env=False) as session:
        async with session.get(url + "/_rrproxy/ui/live/feed") as feed:
            async for _ in feed.content.iter_any():
                pass


async def run_loads(
    target: Target, sizes: Sizes, deadline: float, ui_live: bool = False
) -> dict[str, Figures]:
    """Every load against one running target; a failing load is recorded, not fatal."""
    cassette = CASSETTE if target.name == "record" else None
    results: dict[str, Figures] = {}
    live = None
    if ui_live and target.name in ("passthrough", "record", "replay"):
        live = asyncio.create_task(watch_live(target.url), name="bench-ui-live")
    try:
        return await _loads(target, sizes, deadline, cassette, results)
    finally:
        if live is not None:
            live.cancel()


async def _loads(
    target: Target, sizes: Sizes, deadline: float, cassette: str | None, results: dict[str, Figures]
) -> dict[str, Figures]:
    async with aiohttp.ClientSession(trust_env=False, timeout=REQUEST_TIMEOUT) as session:
        steps: dict[str, Callable[[], Awaitable[Figures]]] = {
            "latency": partial(loads.latency, session, target.url, sizes),
            "large": partial(loads.large, session, target.url, sizes, target.pid, cassette),
            "concurrency": partial(loads.concurrency, session, target.url, sizes, cassette),
            "small_json": partial(loads.small_json, session, target.url, sizes, cassette),
        }
        requests = {
            "latency": sizes.latency_requests,
            "large": 1,
            "concurrency": sizes.concurrent_streams,
            "small_json": sizes.small_requests,
        }
        for load, step in steps.items():
            try:
                cpu_before = procs.cpu_seconds(target.pid) if target.pid else 0.0
                async with asyncio.timeout(deadline):
                    figures = await step()  # record: until the store holds it all
                if target.pid:  # CPU is far less noisy than time on a shared machine
                    used = procs.cpu_seconds(target.pid) - cpu_before
                    figures = {**figures, "cpu_ms_per_request": used * 1000 / requests[load]}
                results[load] = {**figures, "verified": True}
            except Exception as exc:  # reported per load; the run goes on
                results[load] = {"verified": False, "error": f"{type(exc).__name__}: {exc}"}
    return results


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def fresh_database(url: str, suffix: str) -> AsyncIterator[str]:
    """A new database on the server `url` names (PostgreSQL), dropped after the block."""
    import asyncpg  # type: ignore[import-untyped]  # the `postgres` extra

    base, _, name = url.rpartition("/")
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    fresh = f"{name.split('?')[0]}_bench_{suffix}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{fresh}"')
        yield f"{base}/{fresh}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')
        await admin.close()


async def run(
    targets: Sequence[str],
    sizes: Sizes,
    repeat: int,
    db: str | None = None,
    workers: int = 1,
    ui_live: bool = False,
) -> report.Runs:
    runs: report.Runs = {name: [] for name in targets}
    # replay serves what record stored in the same repeat: record even when not reported.
    order = [t for t in TARGETS if t in targets or (t == "record" and "replay" in targets)]
    deadline = 600.0 if sizes.large_events > 2_000 else 60.0
    with tempfile.TemporaryDirectory(prefix="rrproxy-bench-") as tmp:
        workdir = Path(tmp)
        port = procs.free_port()
        argv = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
        async with procs.server(argv, port, payload.HEALTH_PATH, workdir / "upstream.log") as up:
            for index in range(repeat):
                async with contextlib.AsyncExitStack() as stack:
                    server_db = None
                    if db is not None:  # one database per repeat: replay reads what record wrote
                        server_db = await stack.enter_async_context(fresh_database(db, str(index)))
                    for name in order:
                        began = time.perf_counter()
                        store = (
                            server_db
                            or workdir / f"{index}-{'record' if name == 'replay' else name}.db"
                        )
                        try:
                            async with started(name, up.url, workdir, store, workers) as target:
                                result = await run_loads(target, sizes, deadline, ui_live)
                        except (procs.BenchError, OSError) as exc:
                            error = f"{type(exc).__name__}: {exc}"
                            result = {
                                load: {"verified": False, "error": error} for load in report.LOADS
                            }
                        ok = all(figures["verified"] for figures in result.values())
                        took = time.perf_counter() - began
                        status = "ok" if ok else "FAILED"
                        _say(f"repeat {index + 1}/{repeat} {name:<11} {status} {took:.1f} s")
                        if name in runs:
                            runs[name].append(result)
    return runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeat", type=int, help="runs of the whole set; medians (default 3)")
    parser.add_argument("--quick", action="store_true", help="small loads, repeat 1: a smoke test")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="default %(default)s")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="a PostgreSQL URL: each repeat on a new database of that server (default: SQLite)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="rrproxy serve --workers N (default 1)"
    )
    parser.add_argument(
        "--ui-live",
        action="store_true",
        help="keep the web UI's live page open on each rrproxy target (its SSE feed)",
    )
    parser.add_argument(
        "--scale",
        metavar="SIZES",
        help="then the scale loads (bench/scale.py) at these store sizes, e.g. 1000,50k,1M",
    )
    scale.add_arguments(parser)
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(TARGETS))
    if unknown or not args.targets:
        parser.error(f"unknown targets {unknown}; choose from {','.join(TARGETS)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every server is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = loads.QUICK if args.quick else loads.FULL
    targets = [t for t in TARGETS if t in args.targets]
    try:
        runs = asyncio.run(run(targets, sizes, args.repeat, args.db, args.workers, args.ui_live))
    except KeyboardInterrupt:
        _say("interrupted: servers stopped, nothing written")
        return 130
    meta: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeat": args.repeat,
        "sizes": asdict(sizes),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "store": "postgresql" if args.db else "sqlite",
        "workers": args.workers,
        "ui_live": args.ui_live,
        "ratios": "cost relative to the reference, >1 is worse (throughputs inverted)",
    }
    summary = report.summarize(runs, meta)
    if args.scale:
        _say(f"scale loads: {args.scale} interactions")
        summary["scale"] = asyncio.run(scale.run(scale.parse_sizes(args.scale), args))
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    print(report.table(summary))
    if "scale" in summary:
        print()
        print(scale.table(summary["scale"]))
    problems = report.failures(summary)
    for line in problems:
        print(f"FAILED {line}", file=sys.stderr)
    print(f"results: {args.json_out}", file=sys.stderr)
    return 1 if problems else 0
