"""`rrproxy ca` and `rrproxy env`: where rrproxy's CA certificate is, and the shell lines
that send the usual HTTP clients through the proxy and make them trust it.

`eval "$(rrproxy env)"` is the whole set-up. Variables that replace a client's entire trust
store (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `CURL_CA_BUNDLE`) name a bundle of the
system's CAs plus rrproxy's, so the client still trusts everyone else;
`NODE_EXTRA_CA_CERTS` adds to Node's store, so it names rrproxy's certificate alone.

Node's built-in `fetch` (the `openai` npm package's) ignores `HTTPS_PROXY` unless
`NODE_USE_ENV_PROXY=1`, which Node 24 and 22.21 introduced (older versions ignore it, so it
is always exported); when the `node` on PATH is older, a comment says so and what to do.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from proxy.config import CONFIG_VARIABLE, KEYS_BY_NAME, Settings
from proxy.errors import CertificateError, ConfigError

if TYPE_CHECKING:
    from proxy.forward_proxy.ca import CertificateAuthority

BUNDLE_FILE = "rrproxy-ca-bundle.pem"
NO_PROXY = "localhost,127.0.0.1,::1"  # loopback: rrproxy's own port, local services
# The first releases whose fetch has NODE_USE_ENV_PROXY (Node's changelogs: 24.0.0, and
# the backport in 22.21.0)
NODE_ENV_PROXY_MAJOR = 24
NODE_ENV_PROXY_BACKPORT = (22, 21)
NODE_VERSION_TIMEOUT_S = 10.0


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
        ("NODE_USE_ENV_PROXY", "1"),
    ]


def command_line(settings: Settings, config: str | Path | None) -> str:
    """The `rrproxy env` command that prints the variables for the proxy these settings
    describe: its configuration file, host, port and CA directory, when not the defaults
    (the log line of `rrproxy serve` and the comment of `rrproxy env` print it)."""
    default = Settings()
    words = ["rrproxy", "env"]
    if config:
        words += ["--config", str(Path(config).absolute())]
    if settings.host != default.host:
        words += ["--host", settings.host]
    if settings.port != default.port:
        words += ["--port", str(settings.port)]
    line = " ".join(shlex.quote(w) for w in words)
    if settings.ca_dir != default.ca_dir:  # no flag for it: its variable
        line = f"{KEYS_BY_NAME['ca_dir'].env}={shlex.quote(settings.ca_dir)} {line}"
    return line


def node_version(node: str | None = None) -> tuple[int, int, int] | None:
    """The version of the `node` on PATH; None when there is none (or it does not answer)."""
    node = node or shutil.which("node")
    if node is None:
        return None
    try:
        out = subprocess.run(
            [node, "--version"],
            capture_output=True,
            text=True,
            timeout=NODE_VERSION_TIMEOUT_S,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.match(r"v(\d+)\.(\d+)\.(\d+)", out.strip())
    return None if found is None else (int(found[1]), int(found[2]), int(found[3]))


def node_honours_proxy(version: tuple[int, int, int]) -> bool:
    """Whether this Node's `fetch` goes through HTTPS_PROXY with NODE_USE_ENV_PROXY=1."""
    major, minor, _patch = version
    backport_major, backport_minor = NODE_ENV_PROXY_BACKPORT
    return major >= NODE_ENV_PROXY_MAJOR or (major == backport_major and minor >= backport_minor)


def node_comment(proxy: str, version: tuple[int, int, int] | None) -> str | None:
    """A comment when the `node` here ignores the proxy variables in `fetch`."""
    if version is None or node_honours_proxy(version):
        return None
    shown = ".".join(map(str, version))
    return (
        f"# node v{shown} here: its fetch ignores HTTPS_PROXY (Node 24+ and 22.21+ honour it "
        f"with NODE_USE_ENV_PROXY=1); for Node apps use a base URL: "
        f"OPENAI_BASE_URL={proxy}/v1"
    )


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
    proxy = proxy_url(settings)
    pairs = variables(proxy, bundle, ca.cert_path)
    config = args.config or os.environ.get(CONFIG_VARIABLE)
    print(f'# rrproxy at {proxy}; apply with: eval "$({command_line(settings, config)})"')
    for name, value in pairs:
        print(f"export {name}={shlex.quote(value)}")
    comment = node_comment(proxy, node_version())
    if comment is not None:
        print(comment)
    return 0
