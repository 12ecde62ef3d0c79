"""Smoke test of `python -m bench fidelity`: it records and replays every stream, and every
piece arrives on replay. No timing is asserted: the figures are noisy here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_fidelity_entry_measures_every_piece_of_every_stream(tmp_path: Path) -> None:
    out = tmp_path / "fidelity.json"
    argv = [sys.executable, "-m", "bench", "fidelity", "--repeat", "1", "--events", "3"]
    done = subprocess.run(
        [*argv, "--json-out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "max |Δt| per piece:" in done.stdout
    results = json.loads(out.read_text())
    assert sorted(results) == ["br", "gzip", "plain"]
    for figures in results.values():
        assert figures["pieces"] == 6  # 3 events: whole, in 3 pieces, in 2
