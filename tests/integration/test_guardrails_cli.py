"""The guardrails from the command line, as real processes: `rrproxy serve --mode replay
--strict` failing a run that left recordings unused (and passing one that used them all,
verified), `rrproxy ls --older-than`, and `rrproxy stats` with and without prices."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import aiohttp
import openai

from tests.proc import run_cli, serving

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-world.cassette.jsonl"
PRICES = """
[prices."gpt-4o"]
input = 2.5
output = 10.0
cached_input = 1.25
"""


def imported(tmp_path: Path) -> Path:
    db = tmp_path / "rrproxy.db"
    done = run_cli("import", str(EXAMPLE), "--db", str(db), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return db


async def test_strict_replay_exits_non_zero_when_recordings_went_unused(tmp_path: Path) -> None:
    db = imported(tmp_path)
    args = ("--mode", "replay", "--cassette", "hello-world", "--db", str(db), "--strict")
    async with serving(*args, cwd=tmp_path, name="unused") as proc:
        async with aiohttp.ClientSession() as session:
            async with session.get(proc.url("/_rrproxy/run")) as resp:
                run = await resp.json()
        [cassette] = run["cassettes"]
        assert cassette["unused"] == [
            {"number": 1, "method": "POST", "url": "https://api.openai.com/v1/responses"}
        ]
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 1
    log = proc.stderr()
    assert "cassette 'hello-world': 1 recording(s) never used in this run: #1 POST" in log
    assert "strict: the run had 1 problem(s)" in log

    async with serving(*args, cwd=tmp_path, name="used") as proc:
        async with openai.AsyncOpenAI(
            base_url=proc.url("/v1"), api_key="sk-none", max_retries=0
        ) as client:
            stream = await client.responses.create(
                model="gpt-4o", input="Say hello world", stream=True
            )
            text = "".join([e.delta async for e in stream if e.type.endswith("text.delta")])
        assert text == "Hello, World!"
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    log = proc.stderr()
    assert "run: 1 replay(s), 1 verified; replayed 1 interaction(s), 1,021 tokens" in log
    assert "never used" not in log


def test_ls_older_than_lists_cassettes_with_old_recordings(tmp_path: Path) -> None:
    db = imported(tmp_path)  # recorded 2025-03-06
    old = run_cli("ls", "--older-than", "30d", "--db", str(db), cwd=tmp_path)
    assert old.returncode == 0, old.stderr
    assert old.stdout.splitlines()[0].split() == ["NAME", "OLDER", "INTERACTIONS", "OLDEST"]
    assert old.stdout.splitlines()[1].split() == ["hello-world", "1", "1", "2025-03-06T13:51:52Z"]
    as_json = run_cli("ls", "--older-than", "30d", "--json", "--db", str(db), cwd=tmp_path)
    [found] = json.loads(as_json.stdout)["cassettes"]
    assert (found["name"], found["old"], found["oldest"]) == (
        "hello-world",
        1,
        "2025-03-06T13:51:52.104000Z",
    )
    young = run_cli("ls", "--older-than", "36500d", "--db", str(db), cwd=tmp_path)
    assert young.returncode == 0 and young.stdout.startswith("no recordings older than")
    bad = run_cli("ls", "--older-than", "soon", "--db", str(db), cwd=tmp_path)
    assert bad.returncode == 2 and "30d, 12h" in bad.stderr


def test_stats_counts_tokens_and_money_and_names_an_unpriced_model_once(tmp_path: Path) -> None:
    db = imported(tmp_path)
    config = tmp_path / "rrproxy.toml"
    config.write_text(PRICES)
    priced = run_cli(
        "stats", "hello-world", "--json", "--db", str(db), "--config", str(config), cwd=tmp_path
    )
    assert priced.returncode == 0, priced.stderr
    total = json.loads(priced.stdout)["total"]
    assert (total["input_tokens"], total["output_tokens"], total["cached_tokens"]) == (
        543,
        478,
        234,
    )
    assert total["usd"] == round(((543 - 234) * 2.5 + 234 * 1.25 + 478 * 10) / 1e6, 6)
    assert total["no_price"] == []

    config.write_text(PRICES.replace('"gpt-4o"', '"gpt-4.1"'))
    unpriced = run_cli("stats", "--db", str(db), "--config", str(config), cwd=tmp_path)
    assert unpriced.returncode == 0, unpriced.stderr
    lines = unpriced.stdout.splitlines()
    assert lines[1].split()[:6] == ["hello-world", "1", "1", "543", "478", "234"]
    assert [line for line in lines if "no price" in line] == [
        "no price for model gpt-4o-2024-07-18 (1 interaction(s) not counted in the money; "
        "add it to [prices])"
    ]
    missing = run_cli("stats", "nope", "--db", str(db), cwd=tmp_path)
    assert missing.returncode == 1 and "no cassette named 'nope'" in missing.stderr
