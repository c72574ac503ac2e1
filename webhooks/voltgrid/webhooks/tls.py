"""The webhook's own CA and serving certificate, generated with ``cryptography``; pure decisions.

Why our own CA (and not only cert-manager): the apiserver calls webhooks over TLS and must trust the
serving certificate through the configurations' ``caBundle``. cert-manager is the chart option for
clusters that run it; without it the operator must be self-sufficient, so it keeps a small CA in a
Secret (:mod:`voltgrid.webhooks.certs`) and this module decides, without I/O, what the Secret should
hold at a given time (:func:`plan`), which makes rotation testable with a fake clock.

Rotation: a certificate is renewed once two thirds of its lifetime have passed (:func:`needs_rotation`).
A new CA goes into the bundle *beside* the previous one, which stays there until it expires, so the
apiserver trusts serving certificates of both while the new configuration and the new serving
certificate propagate; the serving certificate is re-issued from the new CA in the same step.
Keys are ECDSA P-256 (fast to generate, accepted by the apiserver's Go TLS stack).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY: Final = timedelta(days=365)
SERVING_VALIDITY: Final = timedelta(days=90)
#: Renew when less than this fraction of the lifetime is left.
RENEW_FRACTION: Final = 1 / 3
#: Certificates are back-dated by this much, so a replica with a slightly slow clock accepts them.
CLOCK_SKEW: Final = timedelta(minutes=5)

SECRET_CA_CERT: Final = "ca.crt"
SECRET_CA_KEY: Final = "ca.key"
SECRET_BUNDLE: Final = "ca-bundle.crt"
SECRET_TLS_CERT: Final = "tls.crt"
SECRET_TLS_KEY: Final = "tls.key"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("expected an EC private key")
        return key


@dataclass(frozen=True)
class CertState:
    """What the Secret holds: the CA, the serving certificate, and the bundle of trusted CAs."""

    ca: KeyPair
    serving: KeyPair
    bundle: bytes

    def secret_data(self) -> dict[str, bytes]:
        return {
            SECRET_CA_CERT: self.ca.cert_pem,
            SECRET_CA_KEY: self.ca.key_pem,
            SECRET_BUNDLE: self.bundle,
            SECRET_TLS_CERT: self.serving.cert_pem,
            SECRET_TLS_KEY: self.serving.key_pem,
        }

    @classmethod
    def from_secret_data(cls, data: Mapping[str, bytes]) -> CertState | None:
        """The state in a Secret's (decoded) data; None when a key is missing or does not parse."""
        try:
            state = cls(
                ca=KeyPair(data[SECRET_CA_CERT], data[SECRET_CA_KEY]),
                serving=KeyPair(data[SECRET_TLS_CERT], data[SECRET_TLS_KEY]),
                bundle=data[SECRET_BUNDLE],
            )
            state.ca.private_key()
            state.serving.private_key()
            _ = state.ca.cert, state.serving.cert
            x509.load_pem_x509_certificates(state.bundle)
        except (KeyError, ValueError):
            return None
        return state


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_ca(now: datetime, validity: timedelta = CA_VALIDITY) -> KeyPair:
    """A fresh self-signed CA valid from ``now`` (less CLOCK_SKEW) for ``validity``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"voltgrid-webhook-ca-{now:%Y%m%d%H%M%S}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_serving(ca: KeyPair, names: Sequence[str], now: datetime, validity: timedelta = SERVING_VALIDITY) -> KeyPair:
    """A serving certificate for ``names`` (DNS names or IP addresses) signed by ``ca``.

    It never outlives its CA.
    """
    ca_cert, ca_key = ca.cert, ca.private_key()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def service_names(service: str, namespace: str, extra: Sequence[str] = ()) -> list[str]:
    """The names the apiserver may use for ``<service>.<namespace>.svc``, plus ``extra`` (e.g. an IP)."""
    base = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    return base + [n for n in extra if n not in base]


def needs_rotation(cert: x509.Certificate, now: datetime, renew_fraction: float = RENEW_FRACTION) -> bool:
    """True once less than ``renew_fraction`` of the certificate's lifetime is left (or it expired)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= end - (end - start) * renew_fraction


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _covers(cert: x509.Certificate, names: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return {_general_name(n) for n in names} <= set(san)


def _serving_ok(state: CertState, names: Sequence[str], now: datetime) -> bool:
    serving = state.serving.cert
    return (
        _issued_by(serving, state.ca.cert)
        and _covers(serving, names)
        and serving.public_key() == state.serving.private_key().public_key()
        and not needs_rotation(serving, now)
    )


def _bundle(ca: x509.Certificate, previous: bytes, now: datetime) -> bytes:
    kept = [ca]
    for cert in x509.load_pem_x509_certificates(previous) if previous else []:
        if cert != ca and cert.not_valid_after_utc > now and cert not in kept:
            kept.append(cert)
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in kept)


def plan(current: CertState | None, names: Sequence[str], now: datetime) -> CertState:
    """What the Secret should hold at ``now``; ``current`` itself when nothing needs to change."""
    ca = current.ca if current else None
    if ca is None or needs_rotation(ca.cert, now):
        ca = generate_ca(now)
    previous = current.bundle + current.ca.cert_pem if current else b""
    bundle = _bundle(ca.cert, previous, now)
    if current is not None and current.ca == ca and _serving_ok(current, names, now):
        if bundle == current.bundle:
            return current
        return CertState(ca=ca, serving=current.serving, bundle=bundle)
    return CertState(ca=ca, serving=issue_serving(ca, names, now), bundle=bundle)
