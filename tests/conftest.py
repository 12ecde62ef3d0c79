"""Shared fixtures: a real upstream server, the proxy on a real port, a real store.

The store is a SQLite file under `tmp_path`, or, for a test marked `stores`, that and a
PostgreSQL database of its own on the machine's server (`store_url`, see `tests/stores.py`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from proxy.config import KEYS_BY_NAME, load_settings
from proxy.serve.app import create_app
from tests import stores
from tests.proc import free_port

EXAMPLE_JSONL = Path(__file__).resolve().parent / "data" / "openai-responses-hello-world.jsonl"

StartUpstream = Callable[[web.Application], Awaitable[TestServer]]
StartProxy = Callable[..., Awaitable["ProxyServer"]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def tcp_server(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP upstream on loopback for the block (for answers aiohttp would not send):
    its `http://127.0.0.1:PORT` URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close our side; the proxy may have reset the connection already."""
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:
        pass


def example_events() -> list[dict[str, Any]]:
    """The real OpenAI Responses stream in tests/data (one event's JSON a line)."""
    return [json.loads(line) for line in EXAMPLE_JSONL.read_text().splitlines() if line]


def sse_event(payload: dict[str, Any]) -> bytes:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()


def stored(db_path: Path | str) -> list[tuple[str, str | None, int, bytes]]:
    """(outcome, error, event count, body) of each stored interaction, in order, read
    straight from the SQLite file (or the PostgreSQL database a `store_url` names)."""
    if stores.is_postgres(db_path):
        rows = stores.query(
            str(db_path), "SELECT id, outcome, error, event_count FROM interactions ORDER BY id"
        )
        return [
            (
                outcome,
                error,
                count,
                b"".join(
                    bytes(data)
                    for (data,) in stores.query(
                        str(db_path),
                        "SELECT data FROM events WHERE interaction_id = ? ORDER BY seq",
                        id_,
                    )
                ),
            )
            for id_, outcome, error, count in rows
        ]
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute(
            "SELECT id, outcome, error, event_count FROM interactions ORDER BY id"
        ).fetchall()
        return [
            (
                outcome,
                error,
                count,
                b"".join(
                    data
                    for (data,) in db.execute(
                        "SELECT data FROM events WHERE interaction_id = ? ORDER BY seq", (id_,)
                    )
                ),
            )
            for id_, outcome, error, count in rows
        ]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "rrproxy.db"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `stores` runs once on SQLite and once on PostgreSQL."""
    if "store_kind" in metafunc.fixturenames and metafunc.definition.get_closest_marker("stores"):
        metafunc.parametrize("store_kind", stores.KINDS, indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """`sqlite` unless the test is marked `stores` (then each of `stores.KINDS`)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
async def store_url(store_kind: str, db_path: Path) -> AsyncIterator[str]:
    """What `--db` takes for this test's store: the SQLite file `db_path`, or a PostgreSQL
    database created for this test alone and dropped after it (so `-n` workers never meet).
    PostgreSQL unreachable: the test skips, saying how to enable it (fails under CI=true)."""
    if store_kind == "sqlite":
        yield str(db_path)
        return
    async with stores.postgres_database() as url:
        yield url


@pytest.fixture
def pg_cluster() -> Iterator[stores.Cluster]:
    """A PostgreSQL cluster of this test's own (initdb into a temporary directory, pg_ctl on
    a free port), started; the test may stop and start it. Removed afterwards."""
    if not stores.cluster_tools():
        line = f"initdb/pg_ctl not found in {stores.PG_BIN}: set RRPROXY_TEST_PG_BIN"
        if os.environ.get("CI") == "true":
            pytest.fail(line, pytrace=False)
        pytest.skip(line)
    root = Path(tempfile.mkdtemp(prefix="rrproxy-pg-"))  # not under tmp_path: the server's
    cluster = stores.Cluster(root, free_port())  # user must reach it
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def start_upstream(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> StartUpstream:
    async def start(app: web.Application) -> TestServer:
        return await aiohttp_server(app, host="127.0.0.1")

    return start


class ProxyServer:
    """The proxy app served as `rrproxy serve` serves it, through aiohttp's public runner
    API: a client that hangs up does not cancel its handler (`handler_cancellation=False`,
    aiohttp's default, which its `TestServer` turns around). `make_url` and `close` as
    `TestServer`'s."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner = web.AppRunner(app, handler_cancellation=False)
        self._closed = False

    async def start_server(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the one bound, when 0 asked for any

    def make_url(self, path: str) -> URL:
        return URL(f"http://{self.host}:{self.port}").join(URL(path))

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()


@pytest.fixture
async def serve_proxy() -> AsyncIterator[Callable[..., Awaitable[ProxyServer]]]:
    """Serve a proxy app on 127.0.0.1 (`port`: a given one) until the test ends."""
    servers: list[ProxyServer] = []

    async def serve(app: web.Application, port: int | None = None) -> ProxyServer:
        server = ProxyServer(app, host="127.0.0.1", port=port or 0)
        await server.start_server()
        servers.append(server)
        return server

    yield serve
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def start_proxy(
    serve_proxy: Callable[..., Awaitable[ProxyServer]], store_url: str
) -> AsyncIterator[StartProxy]:
    """Start the proxy app in-process on a real port. Keyword arguments are config keys
    (parsed as the CLI parses them) or Settings fields (objects such as MatchRules)."""

    async def start(upstream: TestServer | str, **overrides: Any) -> ProxyServer:
        url = upstream if isinstance(upstream, str) else str(upstream.make_url("")).rstrip("/")
        flags = {k: v for k, v in overrides.items() if k in KEYS_BY_NAME}
        objects = {k: v for k, v in overrides.items() if k not in KEYS_BY_NAME}
        settings = load_settings(environ={}, flags={"upstream": url, "db": store_url, **flags})
        settings = replace(settings, **objects)
        return await serve_proxy(create_app(settings))

    yield start
