"""The injector's own certificate authority and serving certificates (ECDSA P-256).

The kube-apiserver calls the webhook over HTTPS and trusts only the webhook configuration's
``caBundle``. The injector makes a CA once (kept in a Secret: injector/tls.py) and issues each
replica its own short-lived leaf for the Service's names from it, in memory. Never Helm's
``genCA``, which makes a new CA at every ``helm template`` and so at every GitOps sync.
"""

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
# A leaf is valid from a little before it is made, for nodes whose clocks run behind.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class CertificateError(ValueError):
    """A stored CA that cannot be used; the message says what is wrong, never the key."""


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class Leaf:
    cert_pem: bytes
    key_pem: bytes
    not_before: datetime.datetime
    not_after: datetime.datetime
    serial: int

    def renew_at(self) -> datetime.datetime:
        """Two thirds into its lifetime: a failed renewal has a third left to be retried."""
        return self.not_before + (self.not_after - self.not_before) * 2 / 3


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @classmethod
    def new(cls, now: datetime.datetime, common_name: str = "kamus-injector-ca") -> "Authority":
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, now: datetime.datetime) -> "Authority":
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except ValueError:
            raise CertificateError("ca.crt or ca.key is not PEM") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertificateError("ca.key is not an EC private key")
        if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
            raise CertificateError("ca.key does not belong to ca.crt")
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            raise CertificateError(f"the CA is not valid now (until {cert.not_valid_after_utc})")
        return cls(cert, key)

    def issue(self, hosts: list[str], now: datetime.datetime, validity: datetime.timedelta) -> Leaf:
        """A serving certificate for ``hosts``, never valid past the CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        not_before = now - min(CLOCK_SKEW, validity / 10)
        not_after = min(now + validity, self.cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
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
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return Leaf(
            cert.public_bytes(serialization.Encoding.PEM),
            _key_pem(key),
            not_before,
            not_after,
            serial,
        )
