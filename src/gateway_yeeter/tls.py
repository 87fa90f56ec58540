"""Serving certificates: loading a pair, generating a self-signed one, and rotating without restart.

service-ca and cert-manager rewrite the mounted Secret in place; the kubelet swaps a ``..data``
symlink, which inotify on the files themselves does not see. So the watcher polls and compares
content, and a new pair reaches every later TLS handshake through the SNI callback, which
OpenSSL runs for each ClientHello, with or without a server name.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger(__name__)

SERVICE_NAMES = (
    "gateway-yeeter",
    "gateway-yeeter.openshift-mtv",
    "gateway-yeeter.openshift-mtv.svc",
    "gateway-yeeter.openshift-mtv.svc.cluster.local",
)
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class CertificateError(Exception):
    """A certificate pair that cannot be served; the message names the file and the fault."""


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    """A loaded pair, ready for handshakes, and the facts about it worth logging."""

    context: ssl.SSLContext
    serial_number: int
    not_after: datetime.datetime
    subject_names: tuple[str, ...]
    content: tuple[bytes, bytes]
    """The cert and key bytes it was loaded from, to tell when the files change."""


def server_context() -> ssl.SSLContext:
    """A server context with this webhook's TLS floor and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # kube-apiserver speaks HTTP/1.1 to webhooks; saying so avoids an ALPN mismatch later.
    context.set_alpn_protocols(["http/1.1"])
    return context


def read_pair(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """Read both files, naming the one that cannot be read."""
    contents = []
    for path, what in ((cert_file, "certificate"), (key_file, "private key")):
        try:
            contents.append(path.read_bytes())
        except OSError as error:
            raise CertificateError(f"cannot read TLS {what} {path}: {error.strerror}") from None
    return contents[0], contents[1]


def _subject_names(certificate: x509.Certificate) -> tuple[str, ...]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = names.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def load_pair(cert_file: Path, key_file: Path) -> ServingCertificate:
    """Load a pair into a fresh context, refusing a pair whose key does not match the leaf."""
    content = read_pair(cert_file, key_file)
    try:
        leaf = x509.load_pem_x509_certificate(content[0])
    except ValueError:
        raise CertificateError(f"{cert_file} holds no PEM certificate") from None

    context = server_context()
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        # OpenSSL names the fault (KEY_VALUES_MISMATCH, a PEM that is no key, ...) in reason
        # when it can; otherwise the library and the message are all there is.
        fault = error.reason or error.library or str(error)
        raise CertificateError(
            f"{cert_file} and {key_file} are not a matching certificate and key ({fault})"
        ) from None
    except OSError as error:
        raise CertificateError(f"cannot load {cert_file}: {error.strerror}") from None

    # OpenSSL read the files a second time; if they changed in between, what it loaded may
    # not be what was parsed above, so let the next poll try again with settled files.
    if read_pair(cert_file, key_file) != content:
        raise CertificateError(f"{cert_file} changed while it was being loaded")

    return ServingCertificate(
        context=context,
        serial_number=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
        subject_names=_subject_names(leaf),
        content=content,
    )


class CertificateStore:
    """Holds the pair in service and hands it to each new handshake."""

    def __init__(self, initial: ServingCertificate) -> None:
        self.current = initial
        self.context = server_context()
        # The outer context is only the listener's; every handshake switches to the pair in
        # service at that moment, so a reload never touches connections already open.
        self.context.sni_callback = self._select

    def _select(
        self, connection: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self.current.context


class CertificateWatcher:
    """Polls a cert and key for new content and swaps a valid new pair into the store."""

    def __init__(
        self,
        store: CertificateStore,
        *,
        cert_file: Path,
        key_file: Path,
        interval: float,
        on_reload: Callable[[ServingCertificate | None, str | None], None],
    ) -> None:
        self.store = store
        self.cert_file = cert_file
        self.key_file = key_file
        self.interval = interval
        self.on_reload = on_reload
        self._refused: tuple[bytes, bytes] | str | None = None
        """The content, or for unreadable files the reason, last refused."""

    def check(self) -> bool:
        """Load the files if their content changed; tell whether a new pair went into service."""
        try:
            content = read_pair(self.cert_file, self.key_file)
        except CertificateError as error:
            self._refuse(str(error))
            return False
        if content == self.store.current.content:
            # Back to the pair in service: a later fault is news again.
            self._refused = None
            return False
        if content == self._refused:
            return False

        try:
            loaded = load_pair(self.cert_file, self.key_file)
        except CertificateError as error:
            self._refuse(content, reason=str(error))
            return False

        self.store.current = loaded
        self._refused = None
        logger.info(
            "serving certificate reloaded: serial %x, expires %s",
            loaded.serial_number, loaded.not_after.isoformat(),
        )
        self.on_reload(loaded, None)
        return True

    def _refuse(self, refused: tuple[bytes, bytes] | str, *, reason: str | None = None) -> None:
        # One ERROR per bad content (or per reason files cannot be read), not one per poll: a
        # half-written Secret often settles by the next poll, and a broken one should not
        # flood the log every ten seconds.
        if refused == self._refused:
            return
        self._refused = refused
        reason = reason or str(refused)
        logger.error("new serving certificate refused, keeping the one in service: %s", reason)
        self.on_reload(None, reason)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()


@dataclass(frozen=True, slots=True)
class SelfSignedFiles:
    """Where a generated CA and serving pair were written."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alternative_names(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue_certificate_authority(
    common_name: str, *, valid_for: datetime.timedelta = datetime.timedelta(days=365)
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA for self-signed serving pairs (and for tests)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def issue_serving_certificate(
    authority: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: Sequence[str],
    *,
    valid_for: datetime.timedelta = datetime.timedelta(days=365),
) -> tuple[bytes, bytes]:
    """A serving pair for ``names`` (DNS names and IPs as SANs), as PEM cert chain and key."""
    ca_certificate, ca_key = authority
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_alternative_names(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain = certificate.public_bytes(serialization.Encoding.PEM) + ca_certificate.public_bytes(
        serialization.Encoding.PEM
    )
    return chain, _pem_key(key)


def write_self_signed(directory: Path | None = None) -> SelfSignedFiles:
    """Generate a CA and a pair for local and in-cluster names; write them for curl to trust."""
    # A new private folder per start unless one is named: a shared one would let a second
    # server replace the CA the first one's log pointed at.
    try:
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="gateway-yeeter-"))
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise CertificateError(f"cannot create {directory}: {error.strerror}") from None

    authority = issue_certificate_authority("gateway-yeeter self-signed CA")
    chain, key = issue_serving_certificate(authority, (*LOCAL_NAMES, *SERVICE_NAMES))

    files = SelfSignedFiles(
        ca_file=directory / "ca.crt",
        cert_file=directory / "tls.crt",
        key_file=directory / "tls.key",
    )
    try:
        files.ca_file.write_bytes(authority[0].public_bytes(serialization.Encoding.PEM))
        files.cert_file.write_bytes(chain)
        # The key is private to this user even when the directory already existed.
        descriptor = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(key)
    except OSError as error:
        raise CertificateError(f"cannot write to {directory}: {error.strerror}") from None
    return files
