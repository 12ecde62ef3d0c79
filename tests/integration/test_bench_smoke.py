"""Smoke test of the benchmark (bench/): a quick run drives every load through every target
and every response arrives complete. No timing is asserted: the figures are noisy here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["direct", "aiohttp", "passthrough", "record", "replay"]
LOADS = ["latency", "large", "concurrency", "small_json"]


def run_quick_bench(json_out: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "bench", "--quick", "--json-out", str(json_out)]
    # Own process group: on timeout the benchmark and every server it started go together.
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"bench --quick ran over {timeout} s\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.timeout(120)
def test_quick_bench_verifies_every_target_and_load(tmp_path: Path) -> None:
    json_out = tmp_path / "results.json"

    done = run_quick_bench(json_out, timeout=100)

    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(json_out.read_text())
    assert summary["targets"] == TARGETS
    for target in TARGETS:
        for load in LOADS:
            result = summary["results"][target][load]
            assert result["verified"] is True, (target, load, result["errors"])
            assert result["runs"], (target, load)
            assert all(run["verified"] is True for run in result["runs"]), (target, load)
    for run in summary["results"]["record"]["concurrency"]["runs"]:
        assert run["recorded_ok"] is True  # the store holds every event (/_rrproxy/cassettes)


@pytest.mark.timeout(120)
def test_the_ui_bench_serves_every_page(tmp_path: Path) -> None:
    """`python -m bench.ui` on a small store: every page answers 200 (it fails otherwise)."""
    json_out = tmp_path / "ui.json"
    argv = [sys.executable, "-m", "bench.ui", "--events", "3000", "--interactions", "250"]
    argv += ["--repeat", "1", "--json-out", str(json_out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(json_out.read_text())["figures"]
    for page in ("interaction, first screen", "interaction, timeline", "cassette, last page"):
        assert figures[page]["KiB"] > 1, page
    assert figures["ui RSS peak (MiB)"] >= figures["ui RSS before (MiB)"] > 0


@pytest.mark.timeout(180)
def test_scale_loads_run_at_a_small_size(tmp_path: Path) -> None:
    """`python -m bench.scale` at a small size: every replay came back byte-exact (it stops
    at the first that does not), the miss answered 404, the directory's file held each
    recording; every figure is there."""
    json_out = tmp_path / "scale.json"
    argv = [sys.executable, "-m", "bench.scale", "--sizes", "300", "--scale-requests", "100"]
    argv += ["--dir-recordings", "20", "--json-out", str(json_out)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(json_out.read_text())
    (size,) = results["sizes"]
    assert size["interactions"] == 300
    assert all(size[key] is not None for key in ("import_mb_s", "replay_p50_ms", "miss_ms"))
    assert results["cassette_dir"]["recordings"] == 20
    assert "| replay p50 ms |" in done.stdout
