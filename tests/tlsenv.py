"""Helpers for the forward-proxy tests: TLS upstreams with `trustme` certificates, the
environment `rrproxy env` prints, and real clients (curl, requests, the openai SDK) run as
subprocesses that know the proxy only through that environment."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import trustme

CLIENT_TIMEOUT_S = 60.0
PROXY_VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
)  # fmt: skip


@dataclass(frozen=True)
class UpstreamTls:
    """A server certificate for localhost and 127.0.0.1, and its CA's file."""

    server: ssl.SSLContext
    ca_file: Path


def upstream_tls(directory: Path, name: str = "upstream") -> UpstreamTls:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    ca_file = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return UpstreamTls(server, ca_file)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def run(*argv: str, env: dict[str, str], cwd: Path | None = None) -> Ran:
    """Run a command without blocking the event loop (the upstream and the proxy live in
    it), bounded by CLIENT_TIMEOUT_S."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def base_env() -> dict[str, str]:
    """This process's environment without any proxy, trust-store or rrproxy setting."""
    drop = {v.lower() for v in PROXY_VARIABLES}
    return {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in drop and not k.startswith("RRPROXY_")
    }


async def rrproxy_env(port: int, ca_dir: Path) -> dict[str, str]:
    """The variables `rrproxy env --port PORT` prints (run as the user would)."""
    env = {**base_env(), "RRPROXY_CA_DIR": str(ca_dir)}
    ran = await run(sys.executable, "-m", "proxy", "env", "--port", str(port), env=env)
    assert ran.returncode == 0, ran.stderr
    exports: dict[str, str] = {}
    for line in ran.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            (exports[name],) = shlex.split(value)
    return exports


async def client_env(port: int, ca_dir: Path, **extra: str) -> dict[str, str]:
    """A client's environment: what `rrproxy env` prints, except that NO_PROXY is emptied
    (the test upstreams are on loopback, which it exempts), plus `extra`."""
    return {
        **base_env(),
        **await rrproxy_env(port, ca_dir),
        "NO_PROXY": "",
        "no_proxy": "",
        **extra,
    }


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


async def curl(url: str, env: dict[str, str], tmp: Path, *args: str) -> Answer:
    """curl through whatever proxy the environment names; headers of the proxy's CONNECT
    answer left out."""
    head, body = tmp / "curl-head.txt", tmp / "curl-body.bin"
    ran = await run(
        "curl", "-sS", "--max-time", "30", "--suppress-connect-headers",
        "-D", str(head), "-o", str(body), *args, url, env=env,
    )  # fmt: skip
    assert ran.returncode == 0, f"curl exited {ran.returncode}: {ran.stderr}"
    lines = head.read_text().splitlines()
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Answer(int(lines[0].split()[1]), headers, body.read_bytes())


REQUESTS_SCRIPT = """
import base64, json, sys
import requests
r = requests.request(sys.argv[1], sys.argv[2], data=sys.argv[3].encode() or None, timeout=30)
print(json.dumps({"status": r.status_code, "headers": dict(r.headers),
                  "body": base64.b64encode(r.content).decode()}))
"""


async def with_requests(
    url: str, env: dict[str, str], method: str = "GET", body: str = ""
) -> Answer:
    ran = await run(sys.executable, "-c", REQUESTS_SCRIPT, method, url, body, env=env)
    assert ran.returncode == 0, ran.stderr
    data: dict[str, Any] = json.loads(ran.stdout)
    return Answer(
        data["status"],
        {k.lower(): v for k, v in data["headers"].items()},
        base64.b64decode(data["body"]),
    )


async def recorded_interactions(proxy_url: str) -> int:
    """How many interactions the proxy's store holds, over every cassette."""
    async with aiohttp.ClientSession() as client:
        async with client.get(proxy_url + "/_rrproxy/cassettes") as resp:
            data = await resp.json()
    return sum(int(c["interactions"]) for c in data["cassettes"])
