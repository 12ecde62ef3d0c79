"""rrproxy's certificate authority: its files, its leaves, and real TLS on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import certifi
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import CertificateError
from proxy.forward_proxy.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the CA's files ----------------------------------------------------------------------


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "ca"
    ca = CertificateAuthority.load_or_create(directory)
    assert ca.cert_path == directory / CA_CERT_FILE
    assert mode(directory) == 0o700
    assert mode(directory / CA_KEY_FILE) == 0o600
    assert mode(directory / CA_CERT_FILE) == 0o644
    assert sorted(p.name for p in directory.iterdir()) == sorted([CA_CERT_FILE, CA_KEY_FILE])


def test_existing_directory_is_made_private(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    CertificateAuthority.load_or_create(directory)
    assert mode(directory) == 0o700
    directory.chmod(0o755)
    CertificateAuthority.load_or_create(directory)
    assert mode(directory) == 0o700


def test_created_once_then_reused(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    cert_bytes = first.cert_path.read_bytes()
    key_bytes = (tmp_path / "ca" / CA_KEY_FILE).read_bytes()
    second = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert second.certificate == first.certificate
    assert second.cert_path.read_bytes() == cert_bytes
    assert (tmp_path / "ca" / CA_KEY_FILE).read_bytes() == key_bytes


def test_ca_certificate(ca: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert cert.subject == cert.issuer
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert str(cn.value).startswith("rrproxy CA")
    (org,) = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert org.value == "rrproxy"
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 3650 <= lifetime.days <= 3652


def _other_key_pem(tmp_path: Path) -> bytes:
    return (
        CertificateAuthority.load_or_create(tmp_path / "other").cert_path.parent / CA_KEY_FILE
    ).read_bytes()


@pytest.mark.parametrize(
    ("damage", "blamed", "words"),
    [
        pytest.param(
            lambda d, t: (d / CA_KEY_FILE).write_bytes(b"not a key\n"),
            CA_KEY_FILE,
            "private key",
            id="corrupt-key",
        ),
        pytest.param(
            lambda d, t: (d / CA_KEY_FILE).write_bytes(b""),
            CA_KEY_FILE,
            "private key",
            id="empty-key",
        ),
        pytest.param(
            lambda d, t: (d / CA_CERT_FILE).write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            CA_CERT_FILE,
            "certificate",
            id="corrupt-cert",
        ),
        pytest.param(
            lambda d, t: (d / CA_KEY_FILE).write_bytes(_other_key_pem(t)),
            CA_KEY_FILE,
            "does not belong",
            id="mismatched-pair",
        ),
        pytest.param(
            lambda d, t: (d / CA_KEY_FILE).unlink(),
            CA_KEY_FILE,
            "missing",
            id="missing-key",
        ),
    ],
)
def test_unusable_files_raise(
    tmp_path: Path, damage: Callable[[Path, Path], object], blamed: str, words: str
) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.load_or_create(directory)
    damage(directory, tmp_path)
    with pytest.raises(CertificateError) as info:
        CertificateAuthority.load_or_create(directory)
    message = str(info.value)
    assert str(directory / blamed) in message
    assert words in message
    assert "delete the directory" in message
    assert isinstance(info.value, ValueError)


# -- leaves, over real TLS on loopback ---------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(100)
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@asynccontextmanager
async def tls_server(context: ssl.SSLContext) -> AsyncIterator[int]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def handshake(
    port: int, client: ssl.SSLContext, server_hostname: str
) -> tuple[x509.Certificate, str | None, bytes]:
    """Connect, send a few bytes; the leaf the server presented, the ALPN, the reply."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client, server_hostname=server_hostname
    )
    try:
        tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        writer.write(b"ping")
        await writer.drain()
        reply = await reader.read()
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol(), reply
    finally:
        writer.close()
        await writer.wait_closed()


def trusting(cafile: Path) -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=cafile)
    # What Python 3.13 clients do by default; the leaves must pass it too.
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    client.set_alpn_protocols(["h2", "http/1.1"])
    return client


async def test_end_to_end_verification(ca: CertificateAuthority) -> None:
    async with tls_server(ca.ssl_context_for("localhost")) as port:
        _, alpn, reply = await handshake(port, trusting(ca.cert_path), "localhost")
    assert reply == b"echo:ping"
    assert alpn == "http/1.1"


LONG_NAME = "a" * 60 + ".example.com"


@pytest.mark.parametrize(
    ("host", "server_hostname", "expected"),
    [
        ("localhost", "localhost", x509.DNSName("localhost")),
        ("api.openai.com", "api.openai.com", x509.DNSName("api.openai.com")),
        ("API.OpenAI.com.", "api.openai.com", x509.DNSName("api.openai.com")),
        ("127.0.0.1", "127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("::1", "::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("[::1]", "::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("bücher.example", "xn--bcher-kva.example", x509.DNSName("xn--bcher-kva.example")),
        (LONG_NAME, LONG_NAME, x509.DNSName(LONG_NAME)),
    ],
)
async def test_leaf_for_host(
    ca: CertificateAuthority, host: str, server_hostname: str, expected: x509.GeneralName
) -> None:
    # The client checks the name it asked for, whatever address it dialled: 127.0.0.1 here.
    async with tls_server(ca.ssl_context_for(host)) as port:
        leaf, _, reply = await handshake(port, trusting(ca.cert_path), server_hostname)
    assert reply == b"echo:ping"

    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [expected]
    common_names = [a.value for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    assert common_names == ([] if len(server_hostname) > 64 else [server_hostname])
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.issuer == ca.certificate.subject
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 397 <= lifetime.days <= 398


async def test_leaves_share_one_key_and_have_distinct_serials(ca: CertificateAuthority) -> None:
    leaves = []
    for host in ("one.example", "two.example"):
        async with tls_server(ca.ssl_context_for(host)) as port:
            leaf, _, _ = await handshake(port, trusting(ca.cert_path), host)
        leaves.append(leaf)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    keys = {c.public_key().public_bytes(serialization.Encoding.DER, spki) for c in leaves}
    assert len(keys) == 1
    assert leaves[0].serial_number != leaves[1].serial_number


async def test_client_trusting_another_ca_rejects(ca: CertificateAuthority, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    async with tls_server(ca.ssl_context_for("localhost")) as port:
        with pytest.raises(ssl.SSLCertVerificationError):
            await handshake(port, trusting(stranger), "localhost")


async def test_certificate_for_another_host_rejects(ca: CertificateAuthority) -> None:
    async with tls_server(ca.ssl_context_for("localhost")) as port:
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await handshake(port, trusting(ca.cert_path), "api.openai.com")


async def test_a_reloaded_ca_issues_leaves_the_old_trust_accepts(tmp_path: Path) -> None:
    trusted = CertificateAuthority.load_or_create(tmp_path / "ca").cert_path
    reloaded = CertificateAuthority.load_or_create(tmp_path / "ca")
    async with tls_server(reloaded.ssl_context_for("localhost")) as port:
        _, _, reply = await handshake(port, trusting(trusted), "localhost")
    assert reply == b"echo:ping"


def test_contexts_are_cached_per_host(ca: CertificateAuthority) -> None:
    context = ca.ssl_context_for("localhost")
    assert ca.ssl_context_for("localhost") is context
    assert ca.ssl_context_for("LOCALHOST") is context
    assert ca.ssl_context_for("::1") is ca.ssl_context_for("[::1]")
    assert ca.ssl_context_for("api.openai.com") is not context


@pytest.mark.parametrize("host", ["", "[]", "   "])
def test_empty_host_is_refused(ca: CertificateAuthority, host: str) -> None:
    with pytest.raises(ValueError, match="empty host"):
        ca.ssl_context_for(host)


# -- the trust bundle --------------------------------------------------------------------


def _certs_in(path: Path) -> list[bytes]:
    # ssl rather than cryptography: some system CAs have serials cryptography warns about.
    pems = re.findall(
        r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", path.read_text(), re.S
    )
    return [ssl.PEM_cert_to_DER_cert(pem) for pem in pems]


def _ours(ca: CertificateAuthority) -> bytes:
    return ca.certificate.public_bytes(serialization.Encoding.DER)


def test_bundle_has_system_cas_then_ours(ca: CertificateAuthority, tmp_path: Path) -> None:
    path = tmp_path / "out" / "bundle.pem"
    assert ca.bundle_with_system_cas(path) == path
    certs = _certs_in(path)
    assert certs[-1] == _ours(ca)
    assert certs.count(_ours(ca)) == 1
    system = ssl.create_default_context().get_ca_certs(binary_form=True)
    if system:
        assert set(system) <= set(certs)
        assert len(certs) > 1


async def test_bundle_verifies_our_leaves(ca: CertificateAuthority, tmp_path: Path) -> None:
    bundle = ca.bundle_with_system_cas(tmp_path / "bundle.pem")
    async with tls_server(ca.ssl_context_for("localhost")) as port:
        _, _, reply = await handshake(port, trusting(bundle), "localhost")
    assert reply == b"echo:ping"


def test_bundle_regenerated_from_itself_does_not_grow(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user who already exported SSL_CERT_FILE=<bundle> and writes the bundle again.
    path = ca.bundle_with_system_cas(tmp_path / "bundle.pem")
    first = _certs_in(path)
    monkeypatch.setenv("SSL_CERT_FILE", str(path))
    assert _certs_in(ca.bundle_with_system_cas(path)) == first
    assert mode(path) == 0o644


def test_bundle_from_a_ca_directory(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenSSL's environment variables pick the system CAs: no file, a directory of them.
    first, second = trustme.CA(), trustme.CA()
    capath = tmp_path / "certs"
    capath.mkdir()
    first.cert_pem.write_to_path(str(capath / "first.pem"))
    second.cert_pem.write_to_path(str(capath / "second.crt"))
    (capath / "first-again.pem").symlink_to(capath / "first.pem")
    (capath / "README").write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "absent.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(capath))

    certs = _certs_in(ca.bundle_with_system_cas(tmp_path / "bundle.pem"))
    expected = [ssl.PEM_cert_to_DER_cert(c.cert_pem.bytes().decode()) for c in (first, second)]
    assert sorted(certs[:-1]) == sorted(expected)
    assert certs[-1] == _ours(ca)


def test_bundle_without_system_cas_falls_back_to_certifi(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slim container: OpenSSL finds neither a CA file nor a CA directory.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "absent.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "absent"))

    certs = _certs_in(ca.bundle_with_system_cas(tmp_path / "bundle.pem"))
    public = _certs_in(Path(certifi.where()))
    assert len(public) > 50  # certifi's bundle: the public CAs
    assert certs[:-1] == public
    assert certs[-1] == _ours(ca)
