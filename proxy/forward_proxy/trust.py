"""Trust bundles: the system's trusted CAs plus rrproxy's, for clients whose trust-store
variable (``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) replaces their
whole store. The system's CAs are found as OpenSSL finds them; where the system has none
(a slim container), ``certifi``'s bundle stands in, so the client keeps trusting the
public CAs it trusted before."""

from __future__ import annotations

import logging
import os
import re
import ssl
from pathlib import Path

import certifi

from proxy.files import write_atomically

log = logging.getLogger(__name__)

_CERT_MODE = 0o644
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


def write_bundle(path: Path, ca_pem: bytes) -> Path:
    """Write the system's trusted CAs followed by ``ca_pem`` to ``path``; return it.

    With this bundle a client trusts rrproxy without distrusting everyone else. Safe to
    regenerate when those variables already point at an older bundle (it is not read back).
    """
    path = Path(path)
    seen = {_pem_body(ca_pem)}
    blocks: list[bytes] = []
    for source in system_ca_files(exclude=path):
        try:
            data = source.read_bytes()
        except OSError as e:
            log.warning("cannot read the system CA file %s: %s", source, e)
            continue
        for match in _PEM_CERT.finditer(data):
            body = _pem_body(match.group())
            if body not in seen:
                seen.add(body)
                blocks.append(match.group().replace(b"\r\n", b"\n") + b"\n")
    if not blocks:
        log.warning("found no system CA certificates; %s trusts rrproxy's CA only", path)
    blocks.append(ca_pem)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, b"".join(blocks), _CERT_MODE)
    log.info("wrote %s: %d system CAs and rrproxy's", path, len(blocks) - 1)
    return path


def system_ca_files(*, exclude: Path) -> list[Path]:
    """The files holding the system's trusted CAs, as OpenSSL finds them (its CA file, else
    its CA directory), else ``certifi``'s bundle."""
    paths = ssl.get_default_verify_paths()
    skip = {exclude.resolve()}
    candidates: list[Path] = []
    if paths.cafile:
        candidates.append(Path(paths.cafile))
    if not _usable(candidates, skip) and paths.capath and os.path.isdir(paths.capath):
        candidates = sorted(p for p in Path(paths.capath).iterdir() if p.suffix in (".pem", ".crt"))
    if not _usable(candidates, skip):
        candidates = [Path(certifi.where())]
    # capath holds the same certificate under several names (symlinks): read each file once.
    unique: dict[Path, Path] = {}
    for candidate in candidates:
        real = candidate.resolve()
        if real not in skip and real.is_file():
            unique.setdefault(real, candidate)
    return list(unique.values())


def _usable(candidates: list[Path], skip: set[Path]) -> bool:
    return any(c.resolve() not in skip and c.is_file() for c in candidates)


def _pem_body(pem: bytes) -> bytes:
    """A PEM block's base64 without line breaks: the same certificate compares equal."""
    return b"".join(
        line.strip() for line in pem.splitlines() if line.strip() and b"-----" not in line
    )
