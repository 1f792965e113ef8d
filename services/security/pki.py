"""A small certificate authority: the local PKI of ``jetledger dev``, the demo and the tests.

Everything is ECDSA P-256 (fast, and understood by gRPC's BoringSSL, Go's nats-server and
Postgres' OpenSSL). The CA signs:

- one server certificate per host name set (SAN ``localhost``, ``127.0.0.1``, ``::1`` locally;
  the Service names in a cluster), used by the gRPC servers, nats-server and Postgres;
- one client certificate per NATS identity (card, transaction, ledger, notification, the
  stream administrator, the reader of the CLI). nats-server maps a verified client certificate
  to a user by its subject (``verify_and_map``), so the certificate *is* the NATS credential.

Private keys are written readable by their owner only. In production, certificates come from the
cluster's issuer (cert-manager or the platform CA), not from here: see docs/security.md.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ORGANIZATION: Final = "jetledger"
LOCAL_NAMES: Final = ("localhost", "127.0.0.1", "::1")
CA_DAYS: Final = 3650
LEAF_DAYS: Final = 397  # the longest public CAs issue; local ones are re-made when they near it
RENEW_BEFORE: Final = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A certificate and its private key, as files."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _alt_names(names: tuple[str, ...]) -> list[x509.GeneralName]:
    found: list[x509.GeneralName] = []
    for name in names:
        try:
            found.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            found.append(x509.DNSName(name))
    return found


def fresh_enough(cert_path: Path, now: dt.datetime | None = None) -> bool:
    """Tell whether a certificate file exists and stays valid for a while yet."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    now = now or dt.datetime.now(dt.UTC)
    return cert.not_valid_after_utc - now > RENEW_BEFORE


class CertificateAuthority:
    """A CA whose certificate and key live in a directory (created on first use)."""

    def __init__(self, directory: Path, name: str = "jetledger local CA") -> None:
        self.directory = directory
        self.files = KeyPair(directory / "ca.crt", directory / "ca.key")
        if not (fresh_enough(self.files.cert) and self.files.key.exists()):
            self._create(name)
        self._key = serialization.load_pem_private_key(self.files.key.read_bytes(), None)
        self._cert = x509.load_pem_x509_certificate(self.files.cert.read_bytes())

    @property
    def cert_file(self) -> Path:
        return self.files.cert

    def _create(self, name: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.files.key, key)
        _write_cert(self.files.cert, cert)

    def issue(
        self,
        stem: str,
        common_name: str,
        *,
        names: tuple[str, ...] = (),
        server: bool = False,
        client: bool = False,
        days: int = LEAF_DAYS,
    ) -> KeyPair:
        """Sign a leaf certificate (``<stem>.crt`` / ``<stem>.key``), unless a fresh one exists."""
        files = KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        if fresh_enough(files.cert) and files.key.exists() and self._signed_by_me(files.cert):
            return files
        if not (server or client):
            raise ValueError("a certificate must be for a server, a client or both")
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        assert isinstance(self._key, ec.EllipticCurvePrivateKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(_alt_names(names)), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        _write_key(files.key, key)
        _write_cert(files.cert, cert)
        return files

    def _signed_by_me(self, cert_path: Path) -> bool:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return cert.issuer == self._cert.subject and _verifies(self._cert, cert)


def _verifies(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
