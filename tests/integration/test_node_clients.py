"""The `openai` npm package on the machine's Node.js, through the proxy: the base-URL route
(always works), and the HTTPS_PROXY route with what `rrproxy env` prints, which Node's
`fetch` honours only from Node 24 and 22.21 on (NODE_USE_ENV_PROXY); on an older Node the
test shows the client going around the proxy, as the comment `rrproxy env` prints says.

The client (tests/node: package.json, its lock file and stream.mjs) is installed with
`npm ci` into a temporary directory once per session."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.cli.env import node_honours_proxy, node_version
from tests.conftest import StartProxy, StartUpstream, example_events, sse_event
from tests.tlsenv import (
    CLIENT_TIMEOUT_S,
    base_env,
    client_env,
    recorded_interactions,
    upstream_tls,
)

NODE_DIR = Path(__file__).parent.parent / "node"
INSTALL_TIMEOUT_S = 300.0


@pytest.fixture(scope="session")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with stream.mjs and the locked `openai` npm package installed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not on PATH: the npm openai client cannot run here")
    directory = tmp_path_factory.mktemp("node-client")
    for name in ("package.json", "package-lock.json", "stream.mjs"):
        shutil.copy(NODE_DIR / name, directory / name)
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return directory


def held_responses(release: asyncio.Event, calls: list[web.Request]) -> web.Application:
    """The real recorded OpenAI Responses stream: its first event, then the rest only once
    `release` is set (the client has shown that first event: it streams)."""

    async def responses(request: web.Request) -> web.StreamResponse:
        calls.append(request)
        await request.read()
        events = example_events()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(sse_event(events[0]))
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            await release.wait()
        for payload in events[1:]:
            await response.write(sse_event(payload))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/responses", responses)
    return app


async def stream_with_node(
    directory: Path, env: dict[str, str], release: asyncio.Event | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Run stream.mjs; set `release` once its first event is printed. The event types, and
    its last line (`source`: the Rrproxy-Source header, `text`)."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        "stream.mjs",
        "Say hello",
        cwd=directory,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            while line := await proc.stdout.readline():
                lines.append(json.loads(line))
                if release is not None:
                    release.set()
            err = await proc.stderr.read()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err.decode(errors="replace")
    return [line["event"] for line in lines[:-1]], lines[-1]


async def test_the_npm_openai_client_streams_through_the_base_url_route(
    node_client: Path, start_upstream: StartUpstream, start_proxy: StartProxy
) -> None:
    release = asyncio.Event()
    calls: list[web.Request] = []
    upstream = await start_upstream(held_responses(release, calls))
    proxy = await start_proxy(upstream, mode="record")
    env = {**base_env(), "OPENAI_BASE_URL": str(proxy.make_url("/v1"))}
    expected = [e["type"] for e in example_events()]

    # The first event reaches the Node client while the upstream holds the rest.
    types, last = await stream_with_node(node_client, env, release)
    assert types == expected
    assert last == {"source": "recorded", "text": "Hello, World!"}
    assert len(calls) == 1
    assert calls[0].headers["Authorization"] == "Bearer sk-node-test-key"
    upstream_url = str(upstream.make_url("")).rstrip("/")
    await upstream.close()
    await proxy.close()

    proxy = await start_proxy(upstream_url, mode="replay")  # the same store, no upstream
    env = {**base_env(), "OPENAI_BASE_URL": str(proxy.make_url("/v1"))}
    types, last = await stream_with_node(node_client, env)
    assert types == expected
    assert last == {"source": "replayed", "text": "Hello, World!"}
    assert len(calls) == 1


async def test_the_npm_openai_client_and_https_proxy_as_rrproxy_env_says(
    node_client: Path,
    start_proxy: StartProxy,
    aiohttp_server: Any,
    tmp_path: Path,
) -> None:
    version = node_version()
    assert version is not None
    tls = upstream_tls(tmp_path)
    ca_dir = tmp_path / "ca"
    release = asyncio.Event()
    release.set()
    calls: list[web.Request] = []
    upstream = await aiohttp_server(
        held_responses(release, calls), host="127.0.0.1", ssl=tls.server
    )
    proxy = await start_proxy(
        "https://api.openai.com",
        mode="record",
        ca_dir=str(ca_dir),
        upstream_ca_bundle=str(tls.ca_file),
    )
    env = await client_env(proxy.port, ca_dir)
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert env["NODE_EXTRA_CA_CERTS"] == str(ca_dir / "rrproxy-ca.pem")
    # The client trusts rrproxy's CA (what `rrproxy env` sets) and, should it go around the
    # proxy, the upstream's own: either way it gets an answer, and the test sees which way.
    both = tmp_path / "node-extra-ca.pem"
    both.write_bytes((ca_dir / "rrproxy-ca.pem").read_bytes() + tls.ca_file.read_bytes())
    env |= {
        "NODE_EXTRA_CA_CERTS": str(both),
        "OPENAI_BASE_URL": f"https://localhost:{upstream.port}/v1",
    }

    types, last = await stream_with_node(node_client, env)
    assert types == [e["type"] for e in example_events()]
    assert len(calls) == 1
    proxy_url = str(proxy.make_url("")).rstrip("/")
    if node_honours_proxy(version):
        assert last["source"] == "recorded"
        assert "Rrproxy-Hops" in calls[0].headers
        assert await recorded_interactions(proxy_url) == 1
    else:  # what the README and `rrproxy env` say: this Node's fetch goes around the proxy
        assert last["source"] is None
        assert "Rrproxy-Hops" not in calls[0].headers
        assert await recorded_interactions(proxy_url) == 0
