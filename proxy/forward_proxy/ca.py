"""rrproxy's own certificate authority, for terminating TLS as an HTTPS forward proxy.

A client that sends ``CONNECT api.openai.com:443`` through rrproxy gets a TLS server
certificate for ``api.openai.com`` signed by this CA. The client accepts it once it trusts
the CA: its certificate file (``cert_path``), or a bundle of the system's CAs plus ours
(``bundle_with_system_cas``, made in ``trust.py``) for ``SSL_CERT_FILE`` /
``REQUESTS_CA_BUNDLE``, which replace a client's whole trust store.

The CA lives in one private directory (mode 0o700) as two PEM files, created on first use
and reused afterwards. Leaf certificates are made in memory on demand; they all share one
key per CA instance (as mitmproxy does) so that issuing one costs a signature only, and the
resulting ``ssl.SSLContext`` is cached per host.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.core.hosts import ip_literal, normalize_host
from proxy.errors import CertificateError
from proxy.files import write_atomically
from proxy.forward_proxy.trust import write_bundle

logger = logging.getLogger(__name__)

CA_CERT_FILE = "rrproxy-ca.pem"
CA_KEY_FILE = "rrproxy-ca-key.pem"

_DIR_MODE = 0o700
_CERT_MODE = 0o644
_KEY_MODE = 0o600

_CA_VALIDITY = datetime.timedelta(days=3650)
# Browsers refuse TLS server certificates valid for more than 398 days.
_LEAF_VALIDITY = datetime.timedelta(days=397)
# Backdated so that a client whose clock is a little behind still accepts them.
_BACKDATE = datetime.timedelta(days=1)

_CONTEXT_CACHE_SIZE = 512
# How long to wait for another process that is creating the CA in the same directory.
_CREATION_WAIT_S = 2.0
# X.509's upper bound for a commonName (RFC 5280, ub-common-name); cryptography enforces it.
_MAX_CN = 64

_ISSUER_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class CertificateAuthority:
    """A CA that issues TLS server certificates for the hosts clients CONNECT to."""

    def __init__(
        self,
        *,
        cert_path: Path,
        certificate: x509.Certificate,
        key: CertificateIssuerPrivateKeyTypes,
    ) -> None:
        """Wrap an already-loaded CA; use ``load_or_create`` to get one from a directory."""
        self.cert_path = cert_path
        self.certificate = certificate
        self._key = key
        self._ca_pem = certificate.public_bytes(serialization.Encoding.PEM)
        # One key for every leaf: issuing then costs a signature, not a key generation.
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()

    # -- the CA itself ---------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, directory: Path) -> CertificateAuthority:
        """Load the CA kept in ``directory``, creating the directory and the CA on first use.

        Raises ``CertificateError`` when the files there cannot be used; its message names
        the file and says to delete the directory so that a new CA is made.
        """
        directory = Path(directory)
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(directory, _DIR_MODE)  # mkdir honours the umask, and the directory may be old
        cert_path = directory / CA_CERT_FILE
        key_path = directory / CA_KEY_FILE
        if not cert_path.exists() and not key_path.exists():
            try:
                return cls._create(cert_path, key_path)
            except FileExistsError:
                pass  # another process created the key in the meantime: load its CA
        if not cert_path.exists():
            # The certificate is written last: a key alone is a creation in progress elsewhere,
            # or one that was interrupted.
            _wait_for(cert_path, _CREATION_WAIT_S)
        return cls._load(cert_path, key_path)

    @classmethod
    def _create(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = _make_ca_certificate(key)
        # The key first, created private (never world-readable, not even for a moment), then
        # the certificate, atomically: a certificate on disk means its key is complete.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_MODE)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _KEY_MODE)
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            f.flush()
            os.fsync(f.fileno())
        write_atomically(
            cert_path, certificate.public_bytes(serialization.Encoding.PEM), _CERT_MODE
        )
        logger.info("created a new rrproxy CA; clients must trust %s", cert_path)
        return cls(cert_path=cert_path, certificate=certificate, key=key)

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        remedy = (
            f"delete the directory {cert_path.parent} to make a new CA"
            f" (clients must then trust the new {CA_CERT_FILE})"
        )
        if not cert_path.exists():
            raise CertificateError(
                f"{cert_path}: missing, though the CA key {key_path.name} is there; {remedy}"
            )
        if not key_path.exists():
            raise CertificateError(
                f"{key_path}: missing, so {cert_path.name} is unusable; {remedy}"
            )
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as e:
            raise CertificateError(f"{cert_path}: not a PEM certificate ({e}); {remedy}") from e
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:
            raise CertificateError(
                f"{key_path}: not an unencrypted PEM private key ({e}); {remedy}"
            ) from e
        if not isinstance(key, _ISSUER_KEY_TYPES):
            raise CertificateError(
                f"{key_path}: a {type(key).__name__} cannot sign certificates; {remedy}"
            )
        if _spki(key.public_key()) != _spki(certificate.public_key()):
            raise CertificateError(
                f"{key_path}: does not belong to the certificate {cert_path.name}; {remedy}"
            )
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            certificate.verify_directly_issued_by(certificate)
        except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature) as e:
            raise CertificateError(
                f"{cert_path}: not a self-signed CA certificate ({e}); {remedy}"
            ) from e
        if not constraints.value.ca:
            raise CertificateError(f"{cert_path}: not a CA certificate; {remedy}")
        if _now() >= certificate.not_valid_after_utc:
            raise CertificateError(
                f"{cert_path}: expired on {certificate.not_valid_after_utc:%Y-%m-%d}; {remedy}"
            )
        if os.stat(key_path).st_mode & 0o077:
            logger.warning("%s was readable by others; restricting it to its owner", key_path)
            os.chmod(key_path, _KEY_MODE)
        logger.debug("loaded the rrproxy CA from %s", cert_path)
        return cls(cert_path=cert_path, certificate=certificate, key=key)

    # -- leaves ----------------------------------------------------------------------------

    def ssl_context_for(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for ``host``, signed by the CA.

        ``host`` is a DNS name or an IP literal (IPv6 with or without brackets). Contexts are
        cached per host. Issuing a new one writes and deletes a small temporary file (the
        ``ssl`` module loads certificates from files only): from a busy event loop, call it
        through ``asyncio.to_thread``.
        """
        name = _normalize_host(host)
        with self._lock:
            context = self._contexts.get(name)
            if context is not None:
                self._contexts.move_to_end(name)
                return context
            context = self._make_context(name)
            self._contexts[name] = context
            if len(self._contexts) > _CONTEXT_CACHE_SIZE:
                self._contexts.popitem(last=False)
            return context

    def _make_context(self, name: str) -> ssl.SSLContext:
        leaf = self._make_leaf_certificate(name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        # mkdtemp makes the directory 0o700; it and the key inside are gone once loaded.
        with tempfile.TemporaryDirectory(prefix="rrproxy-leaf-") as tmp:
            chain = Path(tmp) / "leaf.pem"
            fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _KEY_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(leaf.public_bytes(serialization.Encoding.PEM) + self._leaf_key_pem)
            context.load_cert_chain(chain)
        logger.debug("issued a TLS certificate for %s", name)
        return context

    def _make_leaf_certificate(self, name: str) -> x509.Certificate:
        ip = ip_literal(name)
        san: x509.GeneralName = x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
        # A long name cannot be a commonName; clients only look at the subjectAltName anyway.
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, name)] if len(name) <= _MAX_CN else []
        )
        now = _now()
        ca = self.certificate
        ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - _BACKDATE, ca.not_valid_before_utc))
            .not_valid_after(min(now + _LEAF_VALIDITY, ca.not_valid_after_utc))
            # An empty subject makes the subjectAltName critical (RFC 5280, 4.2.1.6).
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()),
                critical=False,
            )
            .sign(self._key, _hash_for(self._key))
        )

    # -- trust bundles ---------------------------------------------------------------------

    def bundle_with_system_cas(self, path: Path) -> Path:
        """Write the system's trusted CAs followed by rrproxy's CA to ``path``; return it
        (`trust.write_bundle`)."""
        return write_bundle(path, self._ca_pem)


def _make_ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    hostname = socket.gethostname()
    cn = f"rrproxy CA {hostname}"[:_MAX_CN].strip() if hostname else "rrproxy CA"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rrproxy"),
        ]
    )
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _normalize_host(host: str) -> str:
    """The name a certificate for ``host`` carries (`hosts.normalize_host`'s form)."""
    if not host.strip().strip("[].").strip():
        raise ValueError(f"cannot issue a certificate for the empty host name {host!r}")
    try:
        return normalize_host(host)
    except ValueError as e:
        raise ValueError(f"cannot issue a certificate for {host!r}: {e}") from None


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519 and Ed448 sign without a separate hash; cryptography then wants None.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
