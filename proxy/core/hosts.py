"""Hosts for the forward proxy: request targets, host patterns and loopback, without I/O.

A client of a forward proxy names where it wants to go: `CONNECT api.openai.com:443` (the
authority form) or `GET http://host:port/path` (the absolute form, RFC 9112 §3.2). These
functions turn both into a `Target`, decide whether a host matches a configured pattern,
and whether an address is rrproxy's own. None of them looks a name up: rrproxy in replay
mode answers without DNS.

An IPv4 address has more spellings than the dotted quad: `127.1`, `0x7f000001`,
`2130706433` and `0177.0.0.1` all reach 127.0.0.1 through `inet_aton` (which curl and the
WHATWG URL parser follow), and `::ffff:127.0.0.1` reaches it over IPv6. Every one is read
as the address it reaches, so that neither the loop check nor a host pattern can be
side-stepped by another spelling.
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
    """A host pattern from the configuration: `api.openai.com`, `*.example.com`, an IP, each
    with an optional port (`api.example.com:8443`, `*.corp:443`, `[::1]:8443`)."""
    text = pattern.strip().lower()
    try:
        host, port = _split_pattern(text)
        wildcard = host.startswith("*.")
        normal = normalize_host(host[2:] if wildcard else host)
    except ValueError:
        raise ValueError(
            f"{pattern!r} is not a host pattern (a host name, '*.' and a domain, or an IP; "
            "then ':' and a port, optionally)"
        ) from None
    shown = f"*.{normal}" if wildcard else normal
    if port is None:
        return shown
    return f"[{shown}]:{port}" if ":" in shown else f"{shown}:{port}"


def host_matches(host: str, patterns: Iterable[str], port: int | None = None) -> bool:
    """Whether `host` (normalized) on `port` is one of `patterns` (from `check_pattern`): a
    name matches itself, `*.example.com` every name under example.com (not example.com
    itself); a pattern with a port matches that port only."""
    for pattern in patterns:
        name, wanted = _split_pattern(pattern)
        if wanted is not None and wanted != port:
            continue
        if name.startswith("*."):
            if host.endswith(name[1:]):
                return True
        elif host == name:
            return True
    return False


def _split_pattern(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address → (host, port or None)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text!r}: no closing bracket")
        if not port:
            return host, None
        if not port.startswith(":"):
            raise ValueError(f"{text!r} is not [host]:port")
        return host, _port(port[1:], text)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, text)
    return text, None


def is_loopback(host: str) -> bool:
    """`localhost`, 127.0.0.0/8 or ::1 (a name that needs DNS to tell is not loopback)."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES:
        return True
    ip = ip_literal(name)
    return ip is not None and ip.is_loopback


@functools.lru_cache(maxsize=256)  # asked for every request, of the same few addresses
def is_own_address(host: str, port: int, local: tuple[str, int] | None, listen_host: str) -> bool:
    """Whether `host:port` reaches this proxy: on the listening port, a loopback name, any
    loopback or unspecified address (`0.0.0.0` and `::` reach the machine itself), the
    address the request arrived on, or the configured listening host, in any spelling."""
    if local is None or port != local[1]:
        return False
    return is_local(host) or _compressed(host) in {_compressed(local[0]), _compressed(listen_host)}


def names_this_host(host: str, port: int, local: tuple[str, int] | None, listen_host: str) -> bool:
    """Whether a `Host` (or `Origin`) of `host:port` names this proxy itself: on the
    listening port, a loopback name or address in any spelling, the address the request
    arrived on, or the configured listening host. Never the unspecified address (`0.0.0.0`
    names no host) nor any other name: a name may resolve here by DNS rebinding."""
    if local is None or port != local[1]:
        return False
    name = _compressed(host)
    if name in _ANY:
        return False
    return is_loopback(name) or name in {_compressed(local[0]), _compressed(listen_host)}


def is_local(host: str) -> bool:
    """A loopback name, or a loopback or unspecified address in any spelling (IPv4-mapped
    IPv6 included): an address that reaches the machine itself."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES or name in _ANY:
        return True
    ip = ip_literal(name.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


def url_target(url: str) -> Target:
    """The target of an absolute URL (for checking where a computed upstream URL goes)."""
    return parse_absolute(url)[0]


@functools.lru_cache(maxsize=1024)
def _compressed(host: str) -> str:
    name = host.strip("[]").rstrip(".").lower()
    ip = ip_literal(name.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed if ip is not None else name


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r} does not have a valid port")
    return int(text)


def ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `name` spells (the `inet_aton` forms of IPv4 included), or None."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return _inet_aton(name)


_AT_MOST = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)  # the last part's range, for 1 to 4 parts


def _inet_aton(name: str) -> ipaddress.IPv4Address | None:
    """IPv4 as `inet_aton(3)` reads it: 1 to 4 parts, each decimal, octal (a leading 0) or
    hexadecimal (0x); the last fills the remaining bytes (`127.1`, `0x7f000001`). Stricter
    than glibc, which ignores anything after a space."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = [_number(p) for p in parts]
    if any(v is None for v in values):
        return None
    *head, last = [v for v in values if v is not None]
    if any(v > 0xFF for v in head) or last > _AT_MOST[len(head)]:
        return None
    address = 0
    for v in head:
        address = address << 8 | v
    return ipaddress.IPv4Address(address << 8 * (4 - len(head)) | last)


def _number(part: str) -> int | None:
    base, digits = 10, part
    if part[:2] in ("0x", "0X"):
        base, digits = 16, part[2:]
    elif len(part) > 1 and part.startswith("0"):
        base, digits = 8, part[1:]
    try:
        return int(digits, base) if digits.isalnum() and digits.isascii() else None
    except ValueError:
        return None
