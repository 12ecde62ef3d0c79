"""vcrpy cassettes (format version 1, its YAML and JSON serializers) to rrproxy interactions.

A vcrpy cassette is `{"version": 1, "interactions": [{"request": {...}, "response": {...}}]}`;
bodies are text, bytes (YAML `!!binary`) or `{"string": ...}`, and a compressed body is kept
compressed with its `Content-Encoding` (vcrpy stores what urllib3/httpx read off the wire).
vcrpy keeps no timing: each response body becomes one event at t = 0, with ttfb and duration
0, marked `untimed` (imported without event timing): it replays at `untimed_pace`, instant
unless told otherwise. `recorded_at` is the file's modification time.

YAML is read with PyYAML's safe loader only: a Python tag (`!!python/object/apply:...`, the
code execution of vcrpy's old full loader) is refused, never constructed. The harmless
`!!python/str`, `!!python/unicode` and `!!python/tuple` that old vcrpy wrote are read as text
and lists.

A pytest-recording tree (`cassettes/test_module/test_name.yaml`) becomes one cassette per
file, named after its path below the directory given, without the suffix, with `/` written
as `SEPARATOR` (`test_module.test_name`).
"""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from proxy.cassettes.file_format import Recorded
from proxy.cassettes.files import open_regular
from proxy.cassettes.foreign import checked, entry_error, source_entry, text_pairs, whole_body
from proxy.core.records import Outcome, Request, ResponseHead, check_cassette_name
from proxy.errors import CassetteFileError, ConfigError

SUFFIXES = (".yaml", ".yml", ".json")
SEPARATOR = "."
"""Stands for `/` in the name of a cassette imported from a directory tree."""
MAX_FILE_BYTES = 256 * 1024 * 1024


def cassette_files(path: Path) -> list[tuple[str, Path]]:
    """The cassettes a file or a directory tree holds: (name, file), sorted by name."""
    if path.is_file():
        files = [(path.stem if path.suffix in SUFFIXES else path.name, path)]
    elif path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        files = [(SEPARATOR.join(p.relative_to(path).with_suffix("").parts), p) for p in found]
        if not files:
            raise ConfigError(f"{path} holds no vcrpy cassette ({', '.join(SUFFIXES)} files)")
    else:
        raise ConfigError(f"{path} is neither a file nor a directory")
    seen: dict[str, Path] = {}
    for name, file in files:
        try:
            check_cassette_name(name)
        except ValueError as exc:
            reason = f"cannot be named as a cassette: {exc}"
            raise CassetteFileError(None, reason, str(file)) from None
        if name in seen:
            raise CassetteFileError(
                None, f"would be cassette {name!r}, as {seen[name]} would", str(file)
            )
        seen[name] = file
    return sorted(files)


def read_file(path: Path) -> list[Recorded]:
    """The interactions of one vcrpy cassette file (blocking)."""
    with open_regular(path, max_bytes=MAX_FILE_BYTES) as f:
        data = f.read()
        mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    return parse(data, source=str(path), recorded_at=mtime, json_file=path.suffix == ".json")


def parse(data: bytes, *, source: str, recorded_at: datetime, json_file: bool) -> list[Recorded]:
    """A vcrpy cassette's interactions, each checked as a cassette file line is."""
    doc = _json(data, source) if json_file else _yaml(data, source)
    if not isinstance(doc, dict) or "interactions" not in doc:
        raise CassetteFileError(None, "not a vcrpy cassette (no 'interactions')", source)
    if doc.get("version") != 1:
        raise CassetteFileError(
            None, f"vcrpy cassette format version {doc.get('version')!r}; rrproxy reads 1", source
        )
    if not isinstance(doc["interactions"], list):
        raise CassetteFileError(None, "'interactions' is not a list", source)
    return [_interaction(obj, i, source, recorded_at) for i, obj in enumerate(doc["interactions"])]


def _json(data: bytes, source: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CassetteFileError(None, f"not valid JSON ({exc})", source) from None


@cache
def _loader() -> tuple[Any, type]:
    try:
        yaml = importlib.import_module("yaml")
    except ImportError:
        raise ConfigError(
            "reading vcrpy's YAML cassettes needs PyYAML: pip install 'rrproxy[vcrpy]' (or pyyaml)"
        ) from None
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader: type = type("_CassetteLoader", (base,), {})
    add = loader.add_constructor  # type: ignore[attr-defined]
    for tag in ("python/str", "python/unicode"):
        add(f"tag:yaml.org,2002:{tag}", lambda ld, node: ld.construct_scalar(node))
    add("tag:yaml.org,2002:python/tuple", lambda ld, node: ld.construct_sequence(node))
    return yaml, loader


def _yaml(data: bytes, source: str) -> Any:
    yaml, loader = _loader()
    try:
        return yaml.load(data, Loader=loader)
    except yaml.constructor.ConstructorError as exc:
        tag = getattr(exc, "problem", "") or str(exc)
        if "python/" in tag:
            raise CassetteFileError(
                None,
                f"refused: the YAML holds a Python tag ({tag.strip()}{_mark(exc)}); rrproxy "
                "reads cassettes with a safe loader and never builds Python objects from "
                "them (re-record it, or remove the tag)",
                source,
            ) from None
        raise CassetteFileError(None, f"not a cassette YAML can read ({exc})", source) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise CassetteFileError(None, f"not valid YAML ({exc})", source) from None


def _mark(exc: Any) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f", line {mark.line + 1}" if mark is not None else ""


def _interaction(obj: Any, i: int, source: str, recorded_at: datetime) -> Recorded:
    req = obj.get("request") if isinstance(obj, dict) else None
    resp = obj.get("response") if isinstance(obj, dict) else None
    if not isinstance(req, dict) or not isinstance(resp, dict):
        raise entry_error(source, f"interaction {i + 1}", "needs a 'request' and a 'response'")
    entry = source_entry(i, req.get("method"), req.get("uri"))
    if not isinstance(req.get("method"), str) or not isinstance(req.get("uri"), str):
        raise entry_error(source, entry, "the request needs a 'method' and a 'uri'")
    if "status_code" in resp:  # httpx cassettes of vcrpy before 4.x
        status, body = resp["status_code"], resp.get("content")
    else:
        head = resp.get("status")
        status = head.get("code") if isinstance(head, dict) else None
        body = resp.get("body")
    if not isinstance(status, int) or isinstance(status, bool):
        raise entry_error(source, entry, "the response needs a status code")
    rec = Recorded(
        request=Request(
            req["method"],
            req["uri"],
            _headers(req.get("headers"), source, entry, "request headers"),
            _body(req.get("body"), source, entry, "request body"),
        ),
        response=ResponseHead(status, _headers(resp.get("headers"), source, entry, "headers")),
        outcome=Outcome.COMPLETE,
        error=None,
        recorded_at=recorded_at,
        ttfb_ms=0.0,
        duration_ms=0.0,
        events=whole_body(_body(body, source, entry, "response body")),
        untimed=True,
    )
    return checked(rec, source, entry)


def _headers(raw: Any, source: str, entry: str, what: str) -> tuple[tuple[str, str], ...]:
    """vcrpy writes `{name: [value, ...]}` (older files: `{name: value}`)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise entry_error(source, entry, f"{what} are not a mapping")
    pairs: list[tuple[Any, Any]] = []
    for name, values in raw.items():
        for value in values if isinstance(values, list) else [values]:
            pairs.append((name, value))
    return text_pairs(pairs, source, entry, what)


def _body(raw: Any, source: str, entry: str, what: str) -> bytes:
    if isinstance(raw, dict):  # the `body: {string: ...}` form
        raw = raw.get("string")
    if raw is None:
        return b""
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, str):
        try:
            return raw.encode("utf-8")
        except UnicodeEncodeError:
            raise entry_error(source, entry, f"{what} holds a lone surrogate") from None
    raise entry_error(source, entry, f"{what} is neither text nor bytes")
