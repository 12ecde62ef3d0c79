"""The command on bad input, as a real process: a reader that closes the pipe, a `--db` that
names no store or an impossible place for one, a misspelled `RRPROXY_*` variable, and values
that mean nothing. Each ends with one line that says what happened and what to do, no
traceback, and nothing created."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proxy.cassettes import file_format as cassette_file
from proxy.cassettes.file_format import Recorded
from proxy.core.records import Event, Outcome, Request, ResponseHead
from tests.proc import EXIT_TIMEOUT_S, clean_env, free_port, run_cli

EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell shows for `cat big | head -1`


def big_cassette(path: Path, name: str = "big") -> Path:
    """A cassette file of about 1 MB: far more than a pipe holds (64 kB on Linux)."""
    events = tuple(
        Event(float(i), f'data: {{"i": {i}, "pad": "{"x" * 200}"}}\n\n'.encode())
        for i in range(5000)
    )
    rec = Recorded(
        request=Request("POST", "https://api.test/v1/stream", (), b"{}"),
        response=ResponseHead(200, (("Content-Type", "text/event-stream"),)),
        outcome=Outcome.COMPLETE,
        error=None,
        recorded_at=datetime(2025, 3, 6, 13, 50, 19, tzinfo=UTC),
        ttfb_ms=1.0,
        duration_ms=5000.0,
        events=events,
    )
    path.write_bytes(cassette_file.dump(name, [rec]))
    return path


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize(
    "args", [("show", "big"), ("export", "big", "-o", "-")], ids=["show", "export"]
)
def test_a_reader_that_stops_early_ends_the_command_quietly(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    """`rrproxy show big | head -1`: no BrokenPipeError traceback, the status a Unix tool
    stopped by SIGPIPE has."""
    db = tmp_path / "rrproxy.db"
    file = big_cassette(tmp_path / "big.cassette.jsonl")
    imported = run_cli("import", str(file), "--db", str(db), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr:
        command = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args, "--db", str(db)],
            cwd=tmp_path,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        assert command.stdout is not None
        head = subprocess.Popen(["head", "-1"], stdin=command.stdout, stdout=subprocess.PIPE)
        command.stdout.close()  # head alone reads it now
        first, _ = head.communicate(timeout=EXIT_TIMEOUT_S)
        status = command.wait(timeout=EXIT_TIMEOUT_S)
    assert first.startswith(b"cassette 'big'" if args[0] == "show" else b'{"format"')
    assert stderr_path.read_text() == ""
    assert status == EXIT_PIPE


def test_serve_on_a_directory_that_does_not_exist_says_so_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "nonexistent" / "dir" / "x.db"
    result = run_cli("serve", "--db", str(db), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert str(db.parent) in lines[0] and "does not exist" in lines[0]
    assert "--db" in lines[0]  # what to do
    assert not db.parent.exists()


@pytest.mark.parametrize(
    "args",
    [("ls",), ("ls", "--json"), ("show", "c1"), ("export", "c1", "-o", "-"), ("rm", "c1")],
    ids=["ls", "ls-json", "show", "export", "rm"],
)
@pytest.mark.parametrize("where", ["typo.db", "missing/typo.db"])
def test_reading_a_store_that_does_not_exist_creates_nothing(
    args: tuple[str, ...], where: str, tmp_path: Path
) -> None:
    (tmp_path / "rrproxy.db").write_bytes(b"")  # the store the user meant, say
    before = files_under(tmp_path)
    result = run_cli(*args, "--db", where, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rrproxy: no store at {tmp_path / where}; ")
    assert "--db" in lines[0] and "rrproxy import" in lines[0]
    assert result.stdout == ""
    assert files_under(tmp_path) == before


def test_import_and_db_upgrade_still_create_a_store(tmp_path: Path) -> None:
    file = big_cassette(tmp_path / "big.cassette.jsonl")
    assert run_cli("import", str(file), "--db", "new.db", cwd=tmp_path).returncode == 0
    assert (tmp_path / "new.db").is_file()
    assert run_cli("db", "upgrade", "--db", "other.db", cwd=tmp_path).returncode == 0
    assert (tmp_path / "other.db").is_file()
    listed = run_cli("ls", "--db", "new.db", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.startswith("NAME")


@pytest.mark.parametrize(
    ("args", "env", "named", "closest"),
    [
        (["ls"], {"RRPROXY_MDOE": "replay"}, "RRPROXY_MDOE", "RRPROXY_MODE"),
        (["serve"], {"RRPROXY_TIMEOUT_READ": "6"}, "RRPROXY_TIMEOUT_READ", "RRPROXY_TIMEOUTS_READ"),
        (["env"], {"RRPROXY_CONFIG_FILE": "x.toml"}, "RRPROXY_CONFIG_FILE", "RRPROXY_CONFIG"),
        (["ls"], {"RRPROXY_COLOUR": "blue"}, "RRPROXY_COLOUR", None),
    ],
    ids=["ls-mode", "serve-timeouts", "env-config", "no-close-name"],
)
def test_a_misspelled_rrproxy_variable_stops_the_command(
    args: list[str], env: dict[str, str], named: str, closest: str | None, tmp_path: Path
) -> None:
    db = tmp_path / "x.db"
    result = run_cli(
        *args, *(["--port", str(free_port())] if args == ["serve"] else []),
        *(["--db", str(db)] if args != ["env"] else []),
        cwd=tmp_path, env={**env, "RRPROXYISH": "unrelated", "MODE": "unrelated"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    if closest is not None:
        assert f"did you mean {closest}?" in lines[0]
    else:
        assert "did you mean" not in lines[0]
    assert "rename or unset it" in lines[0]
    assert not db.exists()


@pytest.mark.parametrize(
    ("args", "env", "toml", "says"),
    [
        ([], {}, "max_request_body = -5\n", "max_request_body = -5"),
        ([], {}, "max_request_body = 0\n", "max_request_body = 0"),
        ([], {"RRPROXY_MAX_REQUEST_BODY": "-5"}, None, "RRPROXY_MAX_REQUEST_BODY"),
        ([], {}, 'host = ""\n', "host = ''"),
        ([], {}, 'host = "  "\n', "host = '  '"),
        (["--host", ""], {}, None, "--host"),
        (["--host", " "], {}, None, "--host"),
        ([], {"RRPROXY_HOST": " "}, None, "RRPROXY_HOST"),
        ([], {}, "[timeouts]\nread = -1\n", "timeouts.read = -1"),
        (["--port", "0"], {}, None, "--port"),
        (["--port", "-1"], {}, None, "--port"),
    ],
    ids=[
        "toml-body-negative",
        "toml-body-zero",
        "env-body-negative",
        "toml-host-empty",
        "toml-host-blank",
        "flag-host-empty",
        "flag-host-blank",
        "env-host-blank",
        "toml-read-negative",
        "flag-port-zero",
        "flag-port-negative",
    ],
)
def test_a_meaningless_value_stops_serve_with_one_line(
    args: list[str], env: dict[str, str], toml: str | None, says: str, tmp_path: Path
) -> None:
    if toml is not None:
        (tmp_path / "rrproxy.toml").write_text(toml)
        args = [*args, "--config", str(tmp_path / "rrproxy.toml")]
    if "--port" not in args:
        args = [*args, "--port", str(free_port())]
    result = run_cli("serve", *args, "--db", str(tmp_path / "x.db"), cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert says in lines[0]
    assert "must be" in lines[0] or "must not" in lines[0]  # and what it must be
    assert not (tmp_path / "x.db").exists()
