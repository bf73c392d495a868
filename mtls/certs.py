"""X.509 building blocks shared by the CA (mtls/ca.py) and its intermediates (mtls/intermediate.py).

Keys are EC P-256, certificates SHA-256. Loading never lets a parser's exception (which may hold
the input) escape: callers get a short ValueError and say which file or field was bad.
"""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes

CLOCK_SKEW_S = 60.0


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKeyTypes) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def load_ec_key(data: bytes) -> ec.EllipticCurvePrivateKey:
    """ValueError (without the input) unless ``data`` is an unencrypted PEM EC private key."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        # from None: the parser's exception must not carry the key's bytes into a traceback.
        raise ValueError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*spki) == b.public_bytes(*spki)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``issuer`` names and signed ``cert`` (signature checked; no dates, no extensions)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def builder(subject: x509.Name, issuer: x509.Name, public_key: CertificatePublicKeyTypes, not_before: float,
            not_after: float, serial: int | None = None) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number() if serial is None else serial)
            .not_valid_before(dt.datetime.fromtimestamp(not_before, tz=dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(not_after, tz=dt.UTC))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def key_usage(*, digital_signature: bool = False, key_encipherment: bool = False, key_cert_sign: bool = False,
              crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def path_length(cert: x509.Certificate) -> tuple[bool, int | None]:
    """(is a CA, its path length constraint) from BasicConstraints; (False, None) without it."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False, None
    return bc.ca, bc.path_length
