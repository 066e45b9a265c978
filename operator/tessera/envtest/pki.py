"""Throwaway certificates and keys for the local control plane, made in-process with ``cryptography``.

A serving CA and a client CA (EC P-256), the API server's serving certificate, client certificates
for users and groups (the admin is in ``system:masters``), and the service-account signing pair.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ADMIN_USER = "tessera-admin"
SERVICE_ISSUER = "https://kubernetes.default.svc.cluster.local"
DNS_SANS = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", SERVICE_ISSUER[8:])
IP_SANS = ("127.0.0.1", "10.0.0.1")


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, *, ca: bool
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(usage, critical=True)
    )


def new_ca(common_name: str) -> KeyPair:
    """A self-signed certificate authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return KeyPair(_builder(name, name, key.public_key(), ca=True).sign(key, hashes.SHA256()), key)


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    server: bool = False,
    extra_ips: Sequence[str] = (),
) -> KeyPair:
    """A leaf certificate signed by ``ca``: a client cert (CN=user, O=groups), or the API server's serving
    cert (``extra_ips`` added to its addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    subject = x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(subject, ca.cert.subject, key.public_key(), ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_SANS]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (*IP_SANS, *extra_ips)]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return KeyPair(builder.sign(ca.key, hashes.SHA256()), key)


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.write_bytes(data)
    path.chmod(0o600 if private else 0o644)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())


def write_pair(directory: Path, stem: str, pair: KeyPair) -> tuple[Path, Path]:
    """Write ``stem.crt`` and ``stem.key`` (PEM) and return their paths."""
    cert = _write(directory / f"{stem}.crt", pair.cert.public_bytes(Encoding.PEM))
    return cert, _write(directory / f"{stem}.key", _key_pem(pair.key), private=True)


@dataclasses.dataclass(frozen=True)
class Pki:
    """Paths of the PEM files the control plane is started with."""

    ca: Path
    serving_cert: Path
    serving_key: Path
    client_ca: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def write_pki(directory: Path, serving_ips: Sequence[str] = ()) -> tuple[Pki, KeyPair]:
    """Make every certificate and key; return their paths and the client CA (to sign more users)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, client_ca = new_ca("tessera-envtest-ca"), new_ca("tessera-envtest-client-ca")
    ca_file, _ = write_pair(directory, "ca", ca)
    client_ca_file, _ = write_pair(directory, "client-ca", client_ca)
    serving = write_pair(directory, "apiserver", issue(ca, "kube-apiserver", server=True, extra_ips=serving_ips))
    admin = write_pair(directory, "admin", issue(client_ca, ADMIN_USER, organizations=["system:masters"]))
    sa = ec.generate_private_key(ec.SECP256R1())
    sa_key = _write(directory / "sa.key", _key_pem(sa), private=True)
    sa_pub = _write(directory / "sa.pub", sa.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return Pki(ca_file, *serving, client_ca_file, *admin, sa_key, sa_pub), client_ca
