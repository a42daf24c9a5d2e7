"""Throwaway certificates for tests: a CA and the certificates it issues (EC P-256, one day).

Test side. Used by the HTTPS probe tests and by tests/kubeapi.py's TLS mode.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    directory: Path,
    stem: str,
    *,
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    sans: tuple[x509.GeneralName, ...] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Write `<stem>.crt` and `<stem>.key` (PEM) to `directory`: a CA when `issuer` is None,
    otherwise a leaf signed by `issuer`, with these subject alternative names and extended usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def serving_certificate(directory: Path, *, ips: tuple[str, ...] = (), dns: tuple[str, ...] = ()) -> Path:
    """A CA (`ca.crt`) and a server certificate it signed (`server.crt`, `server.key`) for these
    addresses and names, as a kube-apiserver's. Returns `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = issue(directory, "ca", cn="bgpvip-test-ca", issuer=None)
    sans = tuple(x509.IPAddress(ipaddress.ip_address(a)) for a in ips) + tuple(x509.DNSName(d) for d in dns)
    issue(
        directory, "server", cn="kube-apiserver", issuer=ca, sans=sans, usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    return directory
