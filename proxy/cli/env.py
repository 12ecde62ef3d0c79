"""`rrproxy ca` and `rrproxy env`: where rrproxy's CA certificate is, and the shell lines
that send the usual HTTP clients through the proxy and make them trust it.

`eval "$(rrproxy env)"` is the whole set-up. Variables that replace a client's entire trust
store (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`) name a bundle of the
system's CAs plus rrproxy's, so the client still trusts everyone else;
`NODE_EXTRA_CA_CERTS` adds to Node's store, so it names rrproxy's certificate alone.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.config import Settings
from proxy.errors import CertificateError, ConfigError

if TYPE_CHECKING:
    from proxy.forward_proxy.ca import CertificateAuthority

BUNDLE_FILE = "rrproxy-ca-bundle.pem"
NO_PROXY = "localhost,127.0.0.1,::1"  # loopback: rrproxy's own port, local services


def proxy_url(settings: Settings) -> str:
    """The URL clients reach the proxy at (a wildcard listening address means loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(settings.host, settings.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def variables(proxy: str, bundle: Path, ca_cert: Path) -> list[tuple[str, str]]:
    """The variables, in the order printed (lower-case proxy names too: curl reads only
    `http_proxy` in lower case)."""
    return [
        ("HTTP_PROXY", proxy),
        ("HTTPS_PROXY", proxy),
        ("http_proxy", proxy),
        ("https_proxy", proxy),
        ("NO_PROXY", NO_PROXY),
        ("no_proxy", NO_PROXY),
        ("SSL_CERT_FILE", str(bundle)),
        ("REQUESTS_CA_BUNDLE", str(bundle)),
        ("CURL_CA_BUNDLE", str(bundle)),
        ("NODE_EXTRA_CA_CERTS", str(ca_cert)),
    ]


def _load_ca(settings: Settings) -> CertificateAuthority:
    from proxy.forward_proxy.ca import CertificateAuthority  # cryptography: only when needed

    try:
        return CertificateAuthority.load_or_create(Path(settings.ca_dir).expanduser())
    except (CertificateError, OSError) as exc:
        raise ConfigError(f"ca_dir = {settings.ca_dir!r}: {exc}") from exc


def ca_command(settings: Settings, _args: argparse.Namespace) -> int:
    print(_load_ca(settings).cert_path)
    return 0


def env_command(settings: Settings, args: argparse.Namespace) -> int:
    if args.unset:
        names = (name for name, _ in variables("", Path(), Path()))
        print("unset " + " ".join(names))
        return 0
    ca = _load_ca(settings)
    bundle = ca.bundle_with_system_cas(ca.cert_path.parent / BUNDLE_FILE)
    pairs = variables(proxy_url(settings), bundle, ca.cert_path)
    print(f'# rrproxy at {proxy_url(settings)}; apply with: eval "$(rrproxy env)"')
    for name, value in pairs:
        print(f"export {name}={shlex.quote(value)}")
    return 0
