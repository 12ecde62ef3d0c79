"""Settings from TOML, `RRPROXY_*` variables and flags: every key from every source, the
precedence between them, and bad values refused with the key and its source named."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.config import KEYS, KEYS_BY_NAME, VARIABLES, Mode, Pace, Settings, load_settings
from proxy.core.prices import Price
from proxy.core.redact import DEFAULT_ALLOW, DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS
from proxy.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.toml"


@dataclass(frozen=True)
class Case:
    key: str  # dotted, as in KEYS
    toml: Any  # the value as written in a TOML file
    text: str  # the same value in a variable or a flag
    expected: Any
    get: Callable[[Settings], Any]


CASES = [
    Case("host", "0.0.0.0", "0.0.0.0", "0.0.0.0", lambda s: s.host),
    Case("port", 9001, "9001", 9001, lambda s: s.port),
    Case("upstream", "http://up.test:81/", "http://up.test:81/", "http://up.test:81",
         lambda s: s.upstream),
    Case("mode", "replay", "REPLAY", Mode.REPLAY, lambda s: s.mode),
    Case("cassette", "suite-1", "suite-1", "suite-1", lambda s: s.cassette),
    Case("db", "other.db", "other.db", "other.db", lambda s: s.db),
    Case("pace", "recorded", "recorded", Pace(1.0), lambda s: s.pace),
    Case("strict", True, "true", True, lambda s: s.strict),
    Case("verbose", True, "yes", True, lambda s: s.verbose),
    Case("max_request_body", 1024, "1024", 1024, lambda s: s.max_request_body),
    Case("timeouts.connect", 1.5, "1.5", 1.5, lambda s: s.connect_timeout),
    Case("timeouts.read", 60, "60", 60.0, lambda s: s.read_timeout),
    Case("timeouts.shutdown", 0.5, "0.5", 0.5, lambda s: s.shutdown_timeout),
    Case("timeouts.request_body", 2.5, "2.5", 2.5, lambda s: s.request_body_timeout),
    Case("matching.ignore_body_fields", ["metadata.id", "user"], "metadata.id, user",
         ("metadata.id", "user"), lambda s: s.matching.ignore_body_fields),
    Case("matching.match_headers", ["OpenAI-Beta"], "OpenAI-Beta", ("OpenAI-Beta",),
         lambda s: s.matching.match_headers),
    Case("matching.ignore_query_params", ["ts", "nonce"], "ts,nonce", ("ts", "nonce"),
         lambda s: s.matching.ignore_query_params),
    # configured names are added to the built-in ones, which always apply
    Case("redact.headers", ["Authorization", "X-Custom-Token"], "Authorization,X-Custom-Token",
         DEFAULT_HEADERS | {"x-custom-token"}, lambda s: s.redact.headers),
    Case("redact.query_params", ["key", "Sig", "sess"], "key,Sig,sess",
         DEFAULT_QUERY_PARAMS | {"sess"}, lambda s: s.redact.query_params),
    Case("redact.name_contains", ["Key", "session"], "key,Session", frozenset({"key", "session"}),
         lambda s: s.redact.name_contains),  # these replace the built-in words
    Case("redact.allow", ["X-Trace-Token", "*-key-id"], "x-trace-token,*-key-id",
         DEFAULT_ALLOW | {"x-trace-token", "*-key-id"}, lambda s: s.redact.allow),
    Case("cassette_dir", "cassettes", "cassettes", "cassettes", lambda s: s.cassette_dir),
    Case("ca_dir", "/tmp/rr-ca", "/tmp/rr-ca", "/tmp/rr-ca", lambda s: s.ca_dir),
    Case("upstream_ca_bundle", "ca.pem", "ca.pem", "ca.pem", lambda s: s.upstream_ca_bundle),
    Case("passthrough_hosts", ["API.Example.com", "*.example.org"],
         "API.Example.com,*.example.org", ("api.example.com", "*.example.org"),
         lambda s: s.passthrough_hosts),
    Case("allow_hosts", ["127.0.0.1", "[::1]"], "127.0.0.1,[::1]", ("127.0.0.1", "::1"),
         lambda s: s.allow_hosts),
    Case("allow_remote", True, "on", True, lambda s: s.allow_remote),
    Case("admin_hosts", ["rrproxy.internal", "Box.lan:8080"], "rrproxy.internal,Box.lan:8080",
         ("rrproxy.internal", "box.lan:8080"), lambda s: s.admin_hosts),
    Case("routes", {"/openai": "https://api.openai.com/", "/anthropic/v1": "https://a.test"},
         "/openai=https://api.openai.com/,/anthropic/v1=https://a.test",
         (("/anthropic/v1", "https://a.test"), ("/openai", "https://api.openai.com")),
         lambda s: s.routes),
    Case("max_age", "30d", "30d", 2592000.0, lambda s: s.max_age),
    Case("prices", {"gpt-4o": {"input": 2.5, "output": 10}},
         '{"gpt-4o": {"input": 2.5, "output": 10}}',
         (("gpt-4o", Price(2.5, 10.0, 2.5)),), lambda s: s.prices),
    Case("rerecord.headers", {"X-Api-Key": "${MY_KEY}"}, "X-Api-Key=${MY_KEY}",
         (("Authorization", "Bearer ${OPENAI_API_KEY}"), ("X-Api-Key", "${MY_KEY}")),
         lambda s: s.rerecord_headers),
]  # fmt: skip
CASE_IDS = [c.key for c in CASES]


def toml_text(values: dict[str, Any]) -> str:
    """A TOML document setting the given dotted keys."""
    top: list[str] = []
    tables: dict[str, list[str]] = {}
    for dotted, value in values.items():
        section, _, name = dotted.rpartition(".")
        line = f"{name} = {_literal(value)}"
        (tables.setdefault(section, []) if section else top).append(line)
    parts = ["\n".join(top)]
    parts += [f"[{section}]\n" + "\n".join(lines) for section, lines in tables.items()]
    return "\n\n".join(parts) + "\n"


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{_literal(k)} = {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def write_toml(tmp_path: Path, values: dict[str, Any], name: str = "rrproxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(toml_text(values))
    return path


def test_the_table_covers_every_key() -> None:
    assert sorted(CASE_IDS) == sorted(KEYS_BY_NAME)


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.upstream == "https://api.openai.com"
    assert (settings.mode, settings.cassette, settings.db) == (Mode.AUTO, "default", "rrproxy.db")
    assert settings.pace == Pace(None)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_from_toml(case: Case, tmp_path: Path) -> None:
    path = write_toml(tmp_path, {case.key: case.toml})
    assert case.get(load_settings(path, environ={})) == case.expected


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_from_environment(case: Case) -> None:
    env = KEYS_BY_NAME[case.key].env
    assert env == "RRPROXY_" + case.key.replace(".", "_").upper()
    assert case.get(load_settings(environ={env: case.text})) == case.expected


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_from_flags(case: Case) -> None:
    assert case.get(load_settings(environ={}, flags={case.key: case.text})) == case.expected


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        {"mode": "record", "cassette": "file", "port": 1, "timeouts.read": 5.0, "pace": "2"},
    )
    environ = {"RRPROXY_CASSETTE": "env", "RRPROXY_PORT": "2", "RRPROXY_TIMEOUTS_READ": "6"}
    settings = load_settings(path, environ=environ, flags={"port": "3", "pace": None})
    assert settings.mode is Mode.RECORD  # file only
    assert settings.cassette == "env"  # environment over file
    assert settings.read_timeout == 6.0  # environment over file, in a table
    assert settings.port == 3  # flag over both
    assert settings.pace == Pace(2.0)  # a flag left unset (None) does not override
    assert settings.db == "rrproxy.db"  # nobody set it: the default


def test_rrproxy_config_names_the_file_and_a_flag_file_wins(tmp_path: Path) -> None:
    by_env = write_toml(tmp_path, {"cassette": "by-env"}, "env.toml")
    by_flag = write_toml(tmp_path, {"cassette": "by-flag"}, "flag.toml")
    assert load_settings(environ={"RRPROXY_CONFIG": str(by_env)}).cassette == "by-env"
    assert load_settings(by_flag, environ={"RRPROXY_CONFIG": str(by_env)}).cassette == "by-flag"


BAD = [
    ("host", "", ""),
    ("host", "  ", " "),  # blank
    ("port", "abc", "abc"),
    ("port", 70000, "70000"),
    ("port", 8080.5, "8080.5"),  # a fraction is refused, not truncated
    ("port", True, "-1"),
    ("port", 0, "0"),  # a port chosen by the system: no client could find the proxy
    ("upstream", "ftp://x", "api.openai.com"),
    ("upstream", "http://x/?q=1", "http://x/#f"),
    ("mode", "replay2", "recrod"),
    ("cassette", "../up", "a/b"),
    ("db", "", ""),
    ("db", " ", "\t"),
    ("pace", "fast", "0"),
    ("pace", -2, "inf"),
    ("strict", "maybe", "2"),
    ("verbose", 1.5, "verbose"),
    ("max_request_body", "big", "1.5"),
    ("max_request_body", 1.5, "1e3"),
    ("max_request_body", -5, "-5"),  # would refuse every body
    ("max_request_body", 0, "0"),  # would mean no limit at all to aiohttp
    ("timeouts.connect", 0, "-1"),
    ("timeouts.read", "long", "nan"),
    ("timeouts.shutdown", -1, "inf"),
    ("max_age", "30x", "-3d"),
    ("max_age", 0, "soon"),
    ("prices", {"gpt-4o": {"input": 2.5}}, '{"gpt-4o": {"input": "cheap", "output": 1}}'),
    ("prices", {"gpt-4o": {"input": -1, "output": 1}}, "not json"),
    ("prices", {"m": {"input": 1, "output": 1, "per": 1}}, '["gpt-4o"]'),
    ("rerecord.headers", ["Authorization"], "Authorization"),
    # In a variable or a flag a list is comma-separated text: any text is a list.
    ("matching.ignore_body_fields", [1, 2], None),
    ("matching.match_headers", 5, None),
    ("matching.ignore_query_params", [""], None),
    ("redact.headers", 5, None),
    ("redact.query_params", [True], None),
    ("cassette_dir", "", ""),
    ("ca_dir", 5, ""),
    ("upstream_ca_bundle", [], ""),
    ("passthrough_hosts", ["not a host"], "bad host!"),
    ("allow_hosts", [5], "a..b"),
    ("allow_remote", "sometimes", "2"),
    ("routes", {"/_rrproxy/x": "http://x"}, "/openai"),
    ("routes", {"/a": "ftp://x"}, "a=http://x"),
]
BAD_IDS = [f"{key}={toml!r}" for key, toml, _ in BAD]
BAD_TEXT = [b for b in BAD if b[2] is not None]
BAD_TEXT_IDS = [f"{key}={text!r}" for key, _, text in BAD_TEXT]


def _refused(excinfo: pytest.ExceptionInfo[ConfigError], key: str, source: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert re.search(rf"(^|\W){re.escape(key)}\W", message), message
    assert source in message, message


@pytest.mark.parametrize(("key", "toml", "text"), BAD, ids=BAD_IDS)
def test_bad_value_in_toml(key: str, toml: Any, text: str, tmp_path: Path) -> None:
    path = write_toml(tmp_path, {key: toml})
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, environ={})
    _refused(excinfo, key, str(path))


@pytest.mark.parametrize(("key", "toml", "text"), BAD_TEXT, ids=BAD_TEXT_IDS)
def test_bad_value_in_environment(key: str, toml: Any, text: str) -> None:
    env = KEYS_BY_NAME[key].env
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ={env: text})
    _refused(excinfo, key, env)


@pytest.mark.parametrize(("key", "toml", "text"), BAD_TEXT, ids=BAD_TEXT_IDS)
def test_bad_value_in_flags(key: str, toml: Any, text: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ={}, flags={key: text})
    _refused(excinfo, key, "--" + KEYS_BY_NAME[key].name.replace("_", "-"))


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_settings(environ={"RRPROXY_MODE": "nope"})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('colour = "blue"\n', "colour"),
        ("[timeouts]\nconect = 3\n", "timeouts.conect"),
        ("[tls]\ncert = 'x'\n", "tls.cert"),
        ("[matching]\n[matching.deeper]\nx = 1\n", "matching.deeper"),
    ],
)
def test_unknown_key_in_toml(text: str, named: str, tmp_path: Path) -> None:
    path = tmp_path / "rrproxy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, environ={})
    assert repr(named) in str(excinfo.value) and str(path) in str(excinfo.value)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("mode = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})


def test_variables_not_starting_with_rrproxy_are_ignored() -> None:
    environ = {"RRPROXYMODE": "x", "MODE": "replay", "rrproxy_mode": "nope", "PORT": "1"}
    assert load_settings(environ=environ) == Settings()


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("RRPROXY_MDOE", "RRPROXY_MODE"),
        ("RRPROXY_TIMEOUT_READ", "RRPROXY_TIMEOUTS_READ"),
        ("RRPROXY_CASSETTES_DIR", "RRPROXY_CASSETTE_DIR"),
        ("RRPROXY_CONFIG_FILE", "RRPROXY_CONFIG"),
        ("RRPROXY_mode", "RRPROXY_MODE"),  # variables are case-sensitive
        ("RRPROXY_UNKNOWN", None),
        ("RRPROXY_", None),
    ],
)
def test_an_unknown_rrproxy_variable_is_refused_naming_the_closest(
    name: str, closest: str | None
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(environ={name: "x", "RRPROXY_MODE": "replay"})
    message = str(excinfo.value)
    assert "\n" not in message
    assert f"unknown environment variable {name}" in message
    if closest is None:
        assert "did you mean" not in message
    else:
        assert f"(did you mean {closest}?)" in message
    assert "rename or unset it" in message


def test_every_known_variable_is_accepted_at_once(tmp_path: Path) -> None:
    """Each key's variable and RRPROXY_CONFIG, all set together: none is refused."""
    assert {k.env for k in KEYS} | {"RRPROXY_CONFIG"} == set(VARIABLES)
    environ = {KEYS_BY_NAME[c.key].env: c.text for c in CASES}
    environ["RRPROXY_CONFIG"] = str(write_toml(tmp_path, {"cassette": "from-file"}))
    settings = load_settings(environ=environ)
    assert all(c.get(settings) == c.expected for c in CASES)


# -- config.example.toml ------------------------------------------------------------------

needs_example = pytest.mark.skipif(
    not EXAMPLE.exists(), reason=f"{EXAMPLE.name} is not written yet (the lead writes it)"
)


@needs_example
def test_example_config_parses_to_the_defaults() -> None:
    assert load_settings(EXAMPLE, environ={}) == Settings()


@needs_example
def test_example_config_documents_every_key() -> None:
    """Each key appears in its table, set or commented out (`# key = ...`)."""
    documented: set[str] = set()
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        text = line.strip().removeprefix("#").strip()
        if m := re.fullmatch(r"\[([a-z_]+)\]", text):
            section = m.group(1)
        elif m := re.match(r"([a-z_]+)\s*=", text):
            documented.add(f"{section}.{m.group(1)}" if section else m.group(1))
    missing = [k.dotted for k in KEYS if k.dotted not in documented]
    assert missing == [], f"{EXAMPLE.name} does not document: {', '.join(missing)}"
    # and nothing it sets is unknown (load_settings would refuse it, but say which)
    with EXAMPLE.open("rb") as f:
        data = tomllib.load(f)
    flat = {f"{t}.{k}" for t, v in data.items() if isinstance(v, dict) for k in v}
    flat |= {k for k, v in data.items() if not isinstance(v, dict)}
    assert flat <= set(KEYS_BY_NAME)
