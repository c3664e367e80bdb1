"""Test certificates for IEC 62351-3 (TLS) links, made with ``cryptography``.

`make_pki(directory)` writes a CA and, signed by it, a server certificate naming
127.0.0.1 (subjectAltName IP), a client certificate, a server certificate with no
subjectAltName, one naming another host, and a second CA with a certificate of its own:
everything a test of the good case and of the refusals needs. Keys are EC P-256 (what
the IEC 62351-3 ECDHE-ECDSA suites expect); nothing here is for production use.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@attrs.frozen
class Issued:
    """A certificate and key written as PEM files."""

    cert: str
    key: str
    fingerprint: str  #: SHA-256 of the DER certificate, hex


@attrs.frozen
class Pki:
    """The files of `make_pki`."""

    ca: str
    other_ca: str
    server: Issued
    client: Issued
    server_no_san: Issued
    server_wrong_name: Issued
    client_other_ca: Issued
    server_other_ca: Issued


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _ca(directory: str, label: str) -> tuple[Any, Any, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"PyDataColl test CA {label}"))
        .issuer_name(_name(f"PyDataColl test CA {label}"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    path = _write(
        os.path.join(directory, f"ca-{label}.pem"), cert.public_bytes(serialization.Encoding.PEM)
    )
    return cert, key, path


def _issue(
    directory: str,
    label: str,
    ca: tuple[Any, Any, str],
    san: list[x509.GeneralName] | None,
    usage: Any,
) -> Issued:
    ca_cert, ca_key, _ = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"pydatacoll {label}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path = _write(
        os.path.join(directory, f"{label}.pem"), cert.public_bytes(serialization.Encoding.PEM)
    )
    key_path = _write(
        os.path.join(directory, f"{label}.key"),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
    )
    return Issued(cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex())


def make_pki(directory: str, host: str = "127.0.0.1") -> Pki:
    """Write the test certificates into ``directory`` (see the module docstring)."""
    os.makedirs(directory, exist_ok=True)
    ca = _ca(directory, "main")
    other = _ca(directory, "other")
    server_auth, client_auth = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host))]
    return Pki(
        ca=ca[2],
        other_ca=other[2],
        server=_issue(directory, "server", ca, names, server_auth),
        client=_issue(directory, "client", ca, names, client_auth),
        server_no_san=_issue(directory, "server-no-san", ca, None, server_auth),
        server_wrong_name=_issue(
            directory,
            "server-wrong-name",
            ca,
            [x509.DNSName("elsewhere.example"), x509.IPAddress(ipaddress.ip_address("10.9.9.9"))],
            server_auth,
        ),
        client_other_ca=_issue(directory, "client-other", other, names, client_auth),
        server_other_ca=_issue(directory, "server-other", other, names, server_auth),
    )
