"""The README's demo, run exactly as its "Try it" section documents it: `rrproxy serve` on
the example cassette, then the `openai` SDK and `curl` stream "Hello, World!" through it
with no API key and no network. The only change: a free port instead of 8080."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from tests.conftest import EXAMPLE_JSONL, example_events
from tests.proc import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEMO_SECTION = "## Try it: no API key, no network"
EXAMPLE = ROOT / "examples" / "hello-world.cassette.jsonl"
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Demo:
    port: int
    env: dict[str, str]  # the snippet's exports, on top of an offline environment
    python: str
    curl: list[str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def blocks() -> list[tuple[str, str]]:
    """The fenced code blocks of the README's demo section: (language, text)."""
    text = README.read_text()
    section = text[text.index(DEMO_SECTION) :]
    section = section[: section.index("\n## ", len(DEMO_SECTION))]
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, re.M | re.S)


def rrproxy_command() -> list[str]:
    script = Path(sys.executable).with_name("rrproxy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy"]


def offline_env() -> dict[str, str]:
    """No proxies, no keys, no rrproxy settings from the test's own environment."""
    drop = ("RRPROXY_", "OPENAI_", "ANTHROPIC_")
    proxies = ("http_proxy", "https_proxy", "all_proxy")
    return {
        k: v for k, v in os.environ.items() if not k.startswith(drop) and k.lower() not in proxies
    }


def wait_healthy(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, "rrproxy serve exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_rrproxy/health", timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"rrproxy was not healthy in {TIMEOUT_S} s")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """The snippet's server running in a copy of the repository's examples/ (its store
    lands there, not in the repository), and the snippet's client lines for its port."""
    (serve_lang, serve), (env_lang, exports), (py_lang, python), (curl_lang, curl) = blocks()
    assert (serve_lang, env_lang, py_lang, curl_lang) == ("sh", "sh", "python", "sh")
    assert serve.count("\n") == 1 and serve.startswith("rrproxy serve ")  # one line
    assert curl.count("\n") == 1 and curl.startswith("curl ")

    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "examples")
    port = free_port()
    here = f"127.0.0.1:{port}"
    env = offline_env()
    for line in exports.splitlines():
        name, value = line.removeprefix("export ").split("=", 1)
        env[name] = value.replace("127.0.0.1:8080", here)
    argv = [*rrproxy_command(), *shlex.split(serve)[1:], "--port", str(port)]
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            argv, cwd=tmp_path, env=offline_env(), stdin=subprocess.DEVNULL, stderr=log
        )
    try:
        wait_healthy(port, server)
        yield Demo(port, env, python, shlex.split(curl.replace("127.0.0.1:8080", here)))
    finally:
        server.terminate()
        server.wait(TIMEOUT_S)
    assert server.returncode == 0, (tmp_path / "serve.log").read_text()
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == [EXAMPLE.name]
    assert (tmp_path / "examples" / EXAMPLE.name).read_bytes() == EXAMPLE.read_bytes()


def test_the_sdk_snippet_prints_hello_world(demo: Demo, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", demo.python],
        cwd=tmp_path,
        env=demo.env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello, World!\n"


def test_the_sdk_receives_exactly_the_recorded_events(demo: Demo) -> None:
    client = openai.OpenAI(base_url=demo.base_url, api_key="no-key-needed", max_retries=0)
    with client:
        stream = client.responses.create(model="gpt-4o", input="Say hello world", stream=True)
        received = [event.to_dict() for event in stream]
    assert received == example_events()  # every field, the ids that differ included
    assert received[4]["item_id"] != received[6]["item_id"]


def test_curl_gets_the_recorded_bytes(demo: Demo) -> None:
    result = subprocess.run(
        demo.curl, env=demo.env, capture_output=True, timeout=TIMEOUT_S, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in EXAMPLE_JSONL.read_text().split("\n") if line]
    assert result.stdout == b"".join(
        f"event: {json.loads(line)['type']}\ndata: {line}\n\n".encode() for line in lines
    )


def test_another_question_is_a_miss_that_says_why(demo: Demo) -> None:
    client = openai.OpenAI(base_url=demo.base_url, api_key="no-key-needed", max_retries=0)
    with client, pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-4o", input="Say hi", stream=True)
    assert "cassette 'hello-world'" in caught.value.message
    assert 'body field "input": "Say hi" != "Say hello world"' in caught.value.message
