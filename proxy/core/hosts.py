"""Hosts for the forward proxy: request targets, host patterns and loopback, without I/O.

A client of a forward proxy names where it wants to go: `CONNECT api.openai.com:443` (the
authority form) or `GET http://host:port/path` (the absolute form, RFC 9112 §3.2). These
functions turn both into a `Target`, decide whether a host matches a configured pattern,
and whether an address is rrproxy's own. None of them looks a name up: rrproxy in replay
mode answers without DNS.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}

# A DNS name as clients send it (underscores appear in real names), or an IP literal.
_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_ANY = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class Target:
    """Where a forwarded request goes: scheme, host (lower case, IPv6 without brackets)
    and port."""

    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        """`host[:port]`, the port left out when it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.authority}"


def normalize_host(host: str) -> str:
    """Lower case, no brackets, no trailing dot; ValueError for anything not a host name."""
    name = host.strip().rstrip(".").lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    ip = ip_literal(name)
    if ip is not None:
        return ip.compressed
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{host!r} is not a valid host name") from None
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{host!r} is not a valid host name")
    return name


def parse_authority(text: str, scheme: str = "https") -> Target:
    """The target of `CONNECT host:port` (the port defaults to the scheme's)."""
    text = text.strip()
    host, port = text, DEFAULT_PORTS[scheme]
    if text.startswith("["):  # [v6] or [v6]:port
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else None
        if rest is None or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not host:port")
        host = text[: end + 1]
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, text)
    elif ":" in text:
        raise ValueError(f"{text!r}: an IPv6 address must be in brackets, as [::1]:443")
    return Target(scheme, normalize_host(host), port)


def parse_absolute(target: str) -> tuple[Target, str]:
    """`http://host[:port]/path?q` → its target and `/path?q` (raw, as sent)."""
    parts = urlsplit(target)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc:
        raise ValueError(f"{target!r} is not an absolute http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("a request target must not carry user information")
    prefix = target.index(parts.netloc) + len(parts.netloc)
    rest = target[prefix:].split("#", 1)[0]
    if not rest.startswith("/"):
        rest = "/" + rest
    return parse_authority(parts.netloc, scheme), rest


def origin_form(raw_target: str) -> str:
    """The path and query of a request target in origin form or absolute form."""
    if raw_target.startswith("/"):
        return raw_target
    return parse_absolute(raw_target)[1]


def check_pattern(pattern: str) -> str:
    """A host pattern from the configuration: `api.openai.com`, `*.example.com`, an IP."""
    text = pattern.strip().lower()
    name = text[2:] if text.startswith("*.") else text
    try:
        normal = normalize_host(name)
    except ValueError:
        raise ValueError(
            f"{pattern!r} is not a host pattern (a host name, '*.' and a domain, or an IP)"
        ) from None
    return f"*.{normal}" if text.startswith("*.") else normal


def host_matches(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` (normalized) is one of `patterns`: a name matches itself, and
    `*.example.com` matches every name under example.com (not example.com itself)."""
    for pattern in patterns:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif host == pattern:
            return True
    return False


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (a name that needs DNS to tell is not loopback)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES:
        return True
    ip = ip_literal(name)
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=256)  # asked for every request, of the same few addresses
def is_own_address(host: str, port: int, local: tuple[str, int] | None, listen_host: str) -> bool:
    """Whether `host:port` is the address this proxy listens on: the address the request
    arrived on, the configured listening host, or loopback, on the listening port."""
    if local is None or port != local[1]:
        return False
    own = {_compressed(local[0]), _compressed(listen_host)}
    name = _compressed(host)
    if own & _ANY:  # listening on every address: loopback and the arrival address are ours
        return is_loopback(name) or name in own or name in _ANY
    if name in _LOOPBACK_NAMES:
        return any(is_loopback(h) for h in own)
    return name in own


def url_target(url: str) -> Target:
    """The target of an absolute URL (for checking where a computed upstream URL goes)."""
    return parse_absolute(url)[0]


@functools.lru_cache(maxsize=1024)
def _compressed(host: str) -> str:
    name = host.strip("[]").lower()
    ip = ip_literal(name.split("%", 1)[0])
    return ip.compressed if ip is not None else name


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r} does not have a valid port")
    return int(text)


def ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None
