"""`rrproxy env` and `rrproxy serve` print the `eval "$(rrproxy env ...)"` command that
matches the running proxy, and that command, run in a shell that knows nothing else,
prints the same variables; and what `rrproxy env` says about the Node.js here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.cli.env import node_comment, node_honours_proxy, node_version
from tests.proc import EXIT_TIMEOUT_S, clean_env, free_port, run_cli, serving

EVAL = re.compile(r'eval "\$\((?P<command>.+)\)"')


def shell(command: str, cwd: Path) -> str:
    """Run a command line in bash, with the `rrproxy` script on PATH and no RRPROXY_*
    variable: only what the line says reaches it."""
    env = clean_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    ran = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return ran.stdout


def the_command(text: str) -> str:
    found = EVAL.search(text)
    assert found is not None, text
    return found["command"]


@pytest.mark.parametrize("where", ["port", "host-and-port", "ca-dir", "config"])
def test_env_prints_the_command_for_its_own_proxy(where: str, tmp_path: Path) -> None:
    port = str(free_port())
    ca_dir = tmp_path / "the ca"  # a space: the command quotes it
    env = {"RRPROXY_CA_DIR": str(ca_dir)}
    args = {
        "port": ["--port", port],
        "host-and-port": ["--host", "127.0.0.2", "--port", port],
        "ca-dir": [],
        "config": ["--config", "rrproxy.toml"],
    }[where]
    if where == "config":
        (tmp_path / "rrproxy.toml").write_text(f'port = {port}\nca_dir = "{ca_dir}"\n')
        env = {}
    printed = run_cli("env", *args, cwd=tmp_path, env=env)
    assert printed.returncode == 0, printed.stderr
    command = the_command(printed.stdout.splitlines()[0])
    assert command.startswith(("rrproxy env", "RRPROXY_CA_DIR="))
    # Run elsewhere, with no RRPROXY_* variable: the same proxy, the same CA.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert shell(command, elsewhere) == printed.stdout
    exported = shell(f'eval "$({command})"; printf %s "$HTTPS_PROXY"', elsewhere)
    host = "127.0.0.2" if where == "host-and-port" else "127.0.0.1"
    assert exported == f"http://{host}:{port if where != 'ca-dir' else 8080}"


async def test_serve_logs_the_env_command_for_its_port(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    config = tmp_path / "rrproxy.toml"
    config.write_text(f'ca_dir = "{ca_dir}"\n')
    args = ("--config", str(config), "--db", str(tmp_path / "r.db"))
    async with serving(*args, cwd=tmp_path) as proc:
        log = proc.stderr()
    command = the_command(log)
    assert f"--port {proc.port}" in command
    exported = shell(
        f'eval "$({command})"; printf %s "$HTTPS_PROXY $NODE_EXTRA_CA_CERTS"', tmp_path
    )
    assert exported == f"http://127.0.0.1:{proc.port} {ca_dir / 'rrproxy-ca.pem'}"


def test_env_says_when_the_node_here_ignores_https_proxy(tmp_path: Path) -> None:
    port = free_port()
    printed = run_cli("env", "--port", str(port), cwd=tmp_path, env={"RRPROXY_CA_DIR": "ca"})
    assert printed.returncode == 0, printed.stderr
    assert "export NODE_USE_ENV_PROXY=1" in printed.stdout.splitlines()
    version = node_version()
    comments = [line for line in printed.stdout.splitlines()[1:] if line.startswith("#")]
    if version is None or node_honours_proxy(version):
        assert comments == []
    else:
        (comment,) = comments
        assert f"node v{'.'.join(map(str, version))}" in comment
        assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" in comment


@pytest.mark.parametrize(
    "version, honours",
    [
        ((18, 20, 0), False),
        ((20, 20, 2), False),
        ((22, 20, 0), False),
        ((22, 21, 0), True),
        ((22, 22, 1), True),
        ((23, 11, 0), False),
        ((24, 0, 0), True),
        ((26, 1, 0), True),
    ],
)
def test_which_node_versions_honour_the_proxy_variables(
    version: tuple[int, int, int], honours: bool
) -> None:
    assert node_honours_proxy(version) is honours
    comment = node_comment("http://127.0.0.1:9000", version)
    assert (comment is None) is honours


def test_no_node_no_comment(tmp_path: Path) -> None:
    assert node_version(str(tmp_path / "no-node-here")) is None
    assert node_comment("http://127.0.0.1:9000", None) is None
