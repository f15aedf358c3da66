"""TLS for the vault: a self-signed certificate for demos and pinning, and its fingerprint."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def fingerprint_pem(pem: bytes) -> str:
    """SHA-256 of the certificate's DER encoding, as 64 hex digits."""
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def fingerprint_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def format_fingerprint(fp: str) -> str:
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()


def normalise_pin(pin: str) -> str:
    p = pin.strip().lower().replace(":", "")
    if p.startswith("sha256/"):
        p = p[len("sha256/"):]
    if len(p) != 64 or any(c not in "0123456789abcdef" for c in p):
        raise ValueError("a certificate pin is 64 hex digits (SHA-256), colons allowed")
    return p


def generate_self_signed(cert_path: Path, key_path: Path, hostnames: tuple[str, ...], now: dt.datetime,
                         days: int = 3650) -> str:
    """Write a new EC P-256 key and self-signed certificate; returns the fingerprint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0] if hostnames else "rempart-vault")])
    sans: list[x509.GeneralName] = []
    for h in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=False,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    return fingerprint_pem(pem)


def ensure_certificate(cert_path: Path, key_path: Path, hostnames: tuple[str, ...], now: dt.datetime,
                       *, self_signed: bool) -> str:
    if cert_path.exists() and key_path.exists():
        return fingerprint_pem(cert_path.read_bytes())
    if not self_signed:
        from rempart.core.errors import ConfigError

        raise ConfigError(f"TLS certificate {cert_path} or key {key_path} is missing",
                          hint="set [tls] self_signed = true to generate one, or provide them")
    return generate_self_signed(cert_path, key_path, hostnames, now)
