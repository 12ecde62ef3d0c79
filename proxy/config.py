"""Settings: defaults, then a TOML file, then `RRPROXY_*` variables, then command-line flags.

Every key is declared once in `KEYS`; the three sources go through the same parser, so a bad
value fails the same way wherever it came from: one line naming the key and its source.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proxy.core.hosts import check_pattern
from proxy.core.matching import MatchRules
from proxy.core.prices import Prices, parse_prices
from proxy.core.records import check_cassette_name
from proxy.core.redact import DEFAULT_ALLOW, DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS, Redactor
from proxy.errors import ConfigError

ENV_PREFIX = "RRPROXY_"


class Mode(StrEnum):
    RECORD = "record"
    REPLAY = "replay"
    AUTO = "auto"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class Pace:
    """Replay speed: `instant`, `recorded`, or a speed factor (2 = twice as fast)."""

    factor: float | None = None  # None: as fast as the client reads

    def __str__(self) -> str:
        if self.factor is None:
            return "instant"
        return "recorded" if self.factor == 1 else f"{self.factor:g}"


DEFAULT_RERECORD_HEADERS: tuple[tuple[str, str], ...] = (
    ("Authorization", "Bearer ${OPENAI_API_KEY}"),
    ("X-Api-Key", "${ANTHROPIC_API_KEY}"),
)
"""What `rrproxy rerecord` puts in place of a redacted header: `${VAR}` is read from the
caller's environment. Only headers the recording holds (as `[REDACTED]`) are filled."""

_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(v: Any) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` (or a number of seconds) to seconds."""
    text = str(v).strip().lower()
    unit = _DURATION.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    try:
        x = float(number) * (unit or 1)
    except ValueError:
        x = -1.0
    if isinstance(v, bool) or not (x > 0 and math.isfinite(x)):
        raise ValueError("must be a duration such as 30d, 12h, 90m, 45s or 2w")
    return x


UI_PORT = 8081
"""`rrproxy ui`'s port unless --port says otherwise: beside a proxy on the default 8080."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    upstream: str = "https://api.openai.com"
    mode: Mode = Mode.AUTO
    cassette: str = "default"
    db: str = "rrproxy.db"
    cassette_dir: str | None = None  # DIR/NAME.cassette.jsonl files are the cassettes
    pace: Pace = Pace()
    untimed_pace: Pace = Pace()  # of interactions imported without event timing
    strict: bool = False
    verbose: bool = False
    max_request_body: int = 64 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    shutdown_timeout: float = 30.0
    request_body_timeout: float = 30.0  # to receive a request's whole body (else 408)
    store_lock_timeout: float = 30.0  # a start waits this long for a store locked by another
    matching: MatchRules = field(default_factory=MatchRules)
    redact: Redactor = field(default_factory=Redactor)
    # forward proxy (HTTP_PROXY / HTTPS_PROXY) and routes
    ca_dir: str = "~/.rrproxy/ca"
    upstream_ca_bundle: str | None = None
    passthrough_hosts: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    allow_remote: bool = False
    read_only: bool = False  # a replay proxy that never writes to the store
    workers: int = 1  # processes serving the port together (SO_REUSEPORT)
    routes: tuple[tuple[str, str], ...] = ()  # (path prefix, upstream URL), longest first
    # What errors call the setting behind `upstream` (prefix "") or a route (its prefix),
    # for a front end with names of its own (the pytest plugin); else the config's names.
    upstream_labels: tuple[tuple[str, str], ...] = ()
    admin_hosts: tuple[str, ...] = ()  # Host names /_rrproxy/ answers, besides its own address
    # guardrails and the ledger
    max_age: float | None = None  # seconds: replaying an older recording warns (strict: fails)
    prices: Prices = ()  # US$ per million tokens, per model ([prices])
    rerecord_headers: tuple[tuple[str, str], ...] = DEFAULT_RERECORD_HEADERS
    # This proxy's name in the Rrproxy-Hops header of forwarded requests (loop detection).
    hop_id: str = field(default_factory=lambda: secrets.token_hex(4), compare=False)

    @property
    def db_url(self) -> str:
        return database_url(self.db)

    @property
    def effective_rules(self) -> MatchRules:
        """Matching never depends on redacted query parameters: a key recorded with one
        secret replays for anyone. A WebSocket handshake's subprotocols are matched."""
        ignored = (*self.matching.ignore_query_params, *sorted(self.redact.query_params))
        # A WebSocket handshake matches on its version and subprotocols too (absent from other
        # requests: a handshake never answers a plain GET, nor the other way round); a key a
        # subprotocol carries is redacted before.
        headers = (*self.matching.match_headers, "sec-websocket-version", "sec-websocket-protocol")
        return replace(
            self.matching,
            ignore_query_params=tuple(dict.fromkeys(ignored)),
            match_headers=tuple(dict.fromkeys(headers)),
        )


def display_db(db: str) -> str:
    """`--db` as it may be shown: a URL's password hidden (`***`), a path as it is."""
    if "://" not in db:
        return db
    scheme, rest = db.split("://", 1)
    authority, slash, path = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        user = user.split(":", 1)[0] + ":***"
    return f"{scheme}://{user}{at}{host}{slash}{path}"


def database_url(db: str) -> str:
    """A SQLAlchemy async URL from a file path or a URL (sync driver names are upgraded)."""
    if "://" not in db:
        return f"sqlite+aiosqlite:///{Path(db).expanduser().resolve()}"
    scheme, rest = db.split("://", 1)
    drivers = {
        "sqlite": "sqlite+aiosqlite",
        "postgresql": "postgresql+asyncpg",
        "postgres": "postgresql+asyncpg",
    }
    return f"{drivers.get(scheme, scheme)}://{rest}"


# -- parsers: each takes a TOML value or a string (environment, flags) -----------------------


def _str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string (not blank)")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError("must be a whole number")  # a TOML 1.5 is refused, not truncated
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number") from None


def _port(v: Any) -> int:
    n = _int(v)
    if not 1 <= n <= 65535:  # 0 (any free port) would leave clients no way to find the proxy
        raise ValueError("must be a port number from 1 to 65535")
    return n


def _workers(v: Any) -> int:
    """A number of processes, or `auto`: one per CPU."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return os.cpu_count() or 1
    n = _int(v)
    if not 1 <= n <= 256:
        raise ValueError("must be a number of processes from 1 to 256, or auto")
    return n


def _bytes(v: Any) -> int:
    n = _int(v)
    if n < 1:  # 0 would mean "no limit" to aiohttp, a negative size refuses every body
        raise ValueError("must be a positive number of bytes, such as 67108864 (64 MiB)")
    return n


def _positive(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds") from None
    if not (x > 0 and math.isfinite(x)):
        raise ValueError("must be a positive number of seconds")
    return x


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _names(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        v = [p for p in (s.strip() for s in v.split(",")) if p]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ValueError("must be a list of strings (comma-separated in a variable or flag)")
    return tuple(v)


def _lower_set(v: Any) -> frozenset[str]:
    return frozenset(s.lower() for s in _names(v))


def _mode(v: Any) -> Mode:
    try:
        return Mode(str(v).strip().lower())
    except ValueError:
        raise ValueError("must be one of " + ", ".join(m.value for m in Mode)) from None


def parse_pace(v: Any) -> Pace:
    text = str(v).strip().lower()
    if text == "instant":
        return Pace(None)
    if text == "recorded":
        return Pace(1.0)
    try:
        factor = float(text)
    except ValueError:
        factor = -1.0
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError("must be instant, recorded, or a positive speed factor such as 2")
    return Pace(factor)


def _upstream(v: Any) -> str:
    url = _str(v).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL such as https://api.openai.com")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry user information (send credentials as headers)")
    return url


def _host_patterns(v: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_pattern(p) for p in _names(v)))


def _routes(v: Any) -> tuple[tuple[str, str], ...]:
    """`{"/openai" = "https://api.openai.com"}` (a TOML table), or `/openai=URL,...`."""
    pairs: list[tuple[Any, Any]]
    if isinstance(v, dict):
        pairs = list(v.items())
    else:
        entries = _names(v)
        if not all("=" in e for e in entries):
            raise ValueError("must map path prefixes to URLs, as /openai=https://api.openai.com")
        pairs = [(p.strip(), u.strip()) for p, u in (e.split("=", 1) for e in entries)]
    routes: dict[str, str] = {}
    for prefix, url in pairs:
        prefix = str(prefix).rstrip("/")
        if not prefix.startswith("/") or prefix.startswith("/_rrproxy") or "?" in prefix:
            raise ValueError(
                f"route {prefix or '/'!r}: a prefix is a path such as /openai "
                "(not /, which is `upstream`, nor under /_rrproxy)"
            )
        try:
            routes[prefix] = _upstream(url)
        except ValueError as exc:
            raise ValueError(f"route {prefix!r}: {exc}") from None
    return tuple(sorted(routes.items(), key=lambda r: -len(r[0])))


def _prices(v: Any) -> Prices:
    if isinstance(v, str):  # RRPROXY_PRICES: the table as JSON
        try:
            v = json.loads(v)
        except ValueError:
            raise ValueError(
                'must be a table, or JSON such as {"gpt-4o": {"input": 2.5, "output": 10}}'
            ) from None
    return parse_prices(v)


def _header_templates(v: Any) -> tuple[tuple[str, str], ...]:
    """`{Authorization = "Bearer ${OPENAI_API_KEY}"}`: each replaces the default of that
    name (any case); the others stay."""
    if isinstance(v, str):  # RRPROXY_RERECORD_HEADERS: Name=template,Name=template
        entries = _names(v)
        if not all("=" in e for e in entries):
            raise ValueError("must map header names to templates, as X-Api-Key=${MY_KEY}")
        v = dict((n.strip(), t.strip()) for n, t in (e.split("=", 1) for e in entries))
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and k and isinstance(t, str) for k, t in v.items()
    ):
        raise ValueError(
            'must be a table of header names and templates, such as {"X-Api-Key" = "${MY_KEY}"}'
        )
    given = {k.lower() for k in v}
    kept = [(n, t) for n, t in DEFAULT_RERECORD_HEADERS if n.lower() not in given]
    return (*kept, *v.items())


def _cassette(v: Any) -> str:
    return check_cassette_name(_str(v))


@dataclass(frozen=True)
class Key:
    section: str | None  # TOML table, None for the top level
    name: str
    parse: Callable[[Any], Any]
    apply: Callable[[Settings, Any], Settings]

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dotted.replace(".", "_").upper()


def _set(attr: str) -> Callable[[Settings, Any], Settings]:
    return lambda s, v: replace(s, **{attr: v})


def _set_rule(attr: str) -> Callable[[Settings, Any], Settings]:
    return lambda s, v: replace(s, matching=replace(s.matching, **{attr: v}))


def _add_redacted(attr: str, always: frozenset[str]) -> Callable[[Settings, Any], Settings]:
    """Configured names are added to the built-in ones, which always apply: a list that
    names one custom header must not stop the redaction of API keys."""
    return lambda s, v: replace(s, redact=replace(s.redact, **{attr: always | v}))


KEYS: tuple[Key, ...] = (
    Key(None, "host", _str, _set("host")),
    Key(None, "port", _port, _set("port")),
    Key(None, "upstream", _upstream, _set("upstream")),
    Key(None, "mode", _mode, _set("mode")),
    Key(None, "cassette", _cassette, _set("cassette")),
    Key(None, "db", _str, _set("db")),
    Key(None, "cassette_dir", _str, _set("cassette_dir")),
    Key(None, "pace", parse_pace, _set("pace")),
    Key(None, "untimed_pace", parse_pace, _set("untimed_pace")),
    Key(None, "strict", _bool, _set("strict")),
    Key(None, "verbose", _bool, _set("verbose")),
    Key(None, "max_request_body", _bytes, _set("max_request_body")),
    Key("timeouts", "connect", _positive, _set("connect_timeout")),
    Key("timeouts", "read", _positive, _set("read_timeout")),
    Key("timeouts", "shutdown", _positive, _set("shutdown_timeout")),
    Key("timeouts", "request_body", _positive, _set("request_body_timeout")),
    Key("timeouts", "store_lock", _positive, _set("store_lock_timeout")),
    Key("matching", "ignore_body_fields", _names, _set_rule("ignore_body_fields")),
    Key("matching", "match_headers", _names, _set_rule("match_headers")),
    Key("matching", "ignore_query_params", _names, _set_rule("ignore_query_params")),
    Key("redact", "headers", _lower_set, _add_redacted("headers", DEFAULT_HEADERS)),
    Key("redact", "query_params", _lower_set, _add_redacted("query_params", DEFAULT_QUERY_PARAMS)),
    Key("redact", "name_contains", _lower_set, _add_redacted("name_contains", frozenset())),
    Key("redact", "allow", _lower_set, _add_redacted("allow", DEFAULT_ALLOW)),
    Key(None, "ca_dir", _str, _set("ca_dir")),
    Key(None, "upstream_ca_bundle", _str, _set("upstream_ca_bundle")),
    Key(None, "passthrough_hosts", _host_patterns, _set("passthrough_hosts")),
    Key(None, "allow_hosts", _host_patterns, _set("allow_hosts")),
    Key(None, "allow_remote", _bool, _set("allow_remote")),
    Key(None, "read_only", _bool, _set("read_only")),
    Key(None, "workers", _workers, _set("workers")),
    Key(None, "routes", _routes, _set("routes")),
    Key(None, "admin_hosts", _host_patterns, _set("admin_hosts")),
    Key(None, "max_age", parse_duration, _set("max_age")),
    Key(None, "prices", _prices, _set("prices")),
    Key("rerecord", "headers", _header_templates, _set("rerecord_headers")),
)
KEYS_BY_NAME = {k.dotted: k for k in KEYS}
CONFIG_VARIABLE = ENV_PREFIX + "CONFIG"  # names the TOML file
VARIABLES = frozenset({CONFIG_VARIABLE, *(k.env for k in KEYS)})


def _apply(settings: Settings, key: Key, value: Any, source: str) -> Settings:
    try:
        return key.apply(settings, key.parse(value))
    except ValueError as exc:
        raise ConfigError(f"{key.dotted} = {value!r} (from {source}): {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _flatten(data: Mapping[str, Any], path: Path) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict) and name not in KEYS_BY_NAME:  # a table, not a key's value
            for sub, v in value.items():
                flat[f"{name}.{sub}"] = v
        else:
            flat[name] = value
    unknown = sorted(set(flat) - set(KEYS_BY_NAME))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown key {unknown[0]!r} (config.example.toml lists every key)"
        )
    return flat


def _check_variables(environ: Mapping[str, str]) -> None:
    """A misspelled `RRPROXY_*` variable would be ignored silently (and the proxy would run in
    a mode nobody asked for): refuse it, naming the closest known one. Variables that do not
    start with `RRPROXY_` are not ours and never looked at."""
    unknown = sorted(n for n in environ if n.startswith(ENV_PREFIX) and n not in VARIABLES)
    if not unknown:
        return
    name = unknown[0]
    known = sorted(v.removeprefix(ENV_PREFIX) for v in VARIABLES)  # the shared prefix would
    close = difflib.get_close_matches(name[len(ENV_PREFIX) :].upper(), known, n=1)  # match all
    hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
    raise ConfigError(
        f"unknown environment variable {name}{hint}: rename or unset it "
        "(config.example.toml lists every key; key k is RRPROXY_K, k in [t] is RRPROXY_T_K)"
    )


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < RRPROXY_* environment < flags (keys as in `KEYS`, dotted)."""
    environ = os.environ if environ is None else environ
    _check_variables(environ)
    settings = Settings()
    if config_file is None and environ.get(CONFIG_VARIABLE):
        config_file = Path(environ[CONFIG_VARIABLE])
    if config_file is not None:
        for name, value in _flatten(_read_toml(config_file), config_file).items():
            settings = _apply(settings, KEYS_BY_NAME[name], value, str(config_file))
    for key in KEYS:
        if key.env in environ:
            settings = _apply(settings, key, environ[key.env], key.env)
    for name, value in (flags or {}).items():
        if value is not None:
            key = KEYS_BY_NAME[name]
            settings = _apply(settings, key, value, "--" + key.name.replace("_", "-"))
    return settings


__all__ = [
    "DEFAULT_HEADERS",
    "DEFAULT_QUERY_PARAMS",
    "KEYS",
    "Mode",
    "Pace",
    "Settings",
    "check_cassette_name",
    "database_url",
    "load_settings",
    "parse_pace",
]
