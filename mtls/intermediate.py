"""Per-host intermediate CAs: making one under the mesh root, and checking one handed to another host.

Why intermediates. In a multi-host mesh there is one trust domain and one root set, but the root
key stays on the one host that holds it; every host signs its own pods' certificates with an
intermediate the root issued to it. Peers trust only the roots, so a workload presents its chain
(leaf + intermediate) and the intermediate is never part of anybody's trust bundle.

What an intermediate carries: BasicConstraints ca, path length 0 (it signs leaves only); key usage
keyCertSign + cRLSign; subject CN ``meshns intermediate <host>``; the trust domain as a URI SAN
(``spiffe://<td>``, informational); and a critical NameConstraints permitting only URIs whose host
is the trust domain (RFC 5280 4.2.1.10 matches a URI constraint against the URI's host). OpenSSL,
which the sidecars verify with, enforces it (checked against OpenSSL 3.0: a leaf with
``spiffe://other/...`` under it fails with "permitted subtree violation"), so a stolen intermediate
cannot mint identities outside the trust domain. It can still mint any identity inside it: binding
identities to hosts is a matter for authorization, not for the chain. cryptography's own verifier
(``x509.verification``) refuses URI name constraints as unsupported: do not verify mesh chains
with it. A root made with path length 0 (before intermediates existed) cannot sign intermediates;
such a root has to be rotated first.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from meshns.errors import UserError
from meshns.mtls.certs import (
    CLOCK_SKEW_S,
    authority_key_id,
    builder,
    cert_pem,
    key_pem,
    key_usage,
    load_ec_key,
    path_length,
    same_public_key,
    serial_of,
    signed_by,
)
from meshns.mtls.identity import SCHEME

__all__ = ["CN_PREFIX", "INTERMEDIATE_VALIDITY_S", "IntermediateMaterial", "build_intermediate",
           "can_sign_intermediates", "check_material", "host_of", "validate_host"]

INTERMEDIATE_VALIDITY_S = 365 * 86400
CN_PREFIX = "meshns intermediate "
HOST_MAX = 253
MIN_RSA_BITS = 2048

_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
_SERIAL_MAX = 64  # hex digits; also what ca.json accepts


def validate_host(host: str) -> str:
    if not isinstance(host, str) or not host:
        raise UserError("host name is empty")
    if len(host) > HOST_MAX or not _HOST_RE.fullmatch(host):
        raise UserError(f"host name {host[:80]!r} is invalid: use a DNS name in lower case (letters, digits, '-', '.')")
    return host


def can_sign_intermediates(root: x509.Certificate) -> bool:
    is_ca, plen = path_length(root)
    return is_ca and (plen is None or plen >= 1)


def build_intermediate(host: str, trust_domain: str, public_key: CertificatePublicKeyTypes,
                       issuer: x509.Certificate, issuer_key: ec.EllipticCurvePrivateKey, not_before: float,
                       not_after: float) -> x509.Certificate:
    """Pure apart from the random serial: the intermediate for ``host``, signed by ``issuer``."""
    _check_public_key(public_key)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshns"),
                      x509.NameAttribute(NameOID.COMMON_NAME, CN_PREFIX + host)])
    return (
        builder(name, issuer.subject, public_key, not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SCHEME + trust_domain)]),
                       critical=False)
        .add_extension(x509.NameConstraints(permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain)],
                                            excluded_subtrees=None), critical=True)
        .add_extension(authority_key_id(issuer), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def host_of(cert: x509.Certificate) -> str:
    """The host an intermediate was issued to, from its CN ("" if it is not one of ours)."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    return cn[len(CN_PREFIX):] if isinstance(cn, str) and cn.startswith(CN_PREFIX) else ""


@dataclass(frozen=True, repr=False)
class IntermediateMaterial:
    """An intermediate that passed check_material, ready to be written into a CA directory."""

    roots: tuple[tuple[str, str], ...]  # (serial, PEM) of each root, in the order given
    cert: x509.Certificate
    cert_pem: str
    key_pem: str  # normalised to PKCS8
    serial: str
    host: str
    issuer: str  # serial of the root that signed it
    not_before: float
    not_after: float

    def __repr__(self) -> str:  # never the key
        return f"IntermediateMaterial(serial={self.serial!r}, host={self.host!r}, issuer={self.issuer!r})"


def check_material(trust_domain: str, roots_pem: str, intermediate_cert_pem: str, intermediate_key_pem: str,
                   now: float) -> IntermediateMaterial:
    """UserError unless the roots are CA roots, the intermediate is a CA certificate one of them
    signed for this trust domain, valid now, and the key is its key. Messages never quote the key."""
    roots = _load_roots(roots_pem)
    try:
        certs = x509.load_pem_x509_certificates(intermediate_cert_pem.encode())
    except ValueError:
        raise UserError("intermediate certificate: not a PEM certificate") from None
    if len(certs) != 1:
        raise UserError(f"intermediate certificate: expected one certificate, found {len(certs)}")
    cert = certs[0]
    serial = _serial(cert, "intermediate certificate")
    is_ca, _ = path_length(cert)
    if not is_ca or not _may_sign_certs(cert):
        raise UserError(f"intermediate {serial} is not a CA certificate (needs BasicConstraints CA and keyCertSign)")
    issuer = next(((s, c) for s, c, _ in roots if signed_by(cert, c)), None)
    if issuer is None:
        raise UserError(f"intermediate {serial} was not signed by any of the {len(roots)} root(s) given")
    if not can_sign_intermediates(issuer[1]):
        raise UserError(f"root {issuer[0]} has path length 0 and cannot sign intermediates: rotate the mesh root "
                        "(`meshns ca rotate` on the host holding it), then issue the intermediate again")
    nb, na = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
    if now >= na:
        raise UserError(f"intermediate {serial} expired at {_stamp(na)}")
    if nb > now + CLOCK_SKEW_S:
        raise UserError(f"intermediate {serial} is not valid before {_stamp(nb)} (check this host's clock)")
    _check_trust_domain(cert, serial, trust_domain)
    try:
        key = load_ec_key(intermediate_key_pem.encode())
    except ValueError as exc:
        raise UserError(f"intermediate key: {exc}") from None
    if not same_public_key(key.public_key(), cert.public_key()):
        raise UserError(f"intermediate key does not match intermediate {serial}")
    return IntermediateMaterial(tuple((s, p) for s, _, p in roots), cert, cert_pem(cert), key_pem(key), serial,
                                host_of(cert), issuer[0], nb, na)


def _load_roots(roots_pem: str) -> list[tuple[str, x509.Certificate, str]]:
    try:
        certs = x509.load_pem_x509_certificates(roots_pem.encode())
    except ValueError:
        raise UserError("roots: not PEM certificates") from None
    out: list[tuple[str, x509.Certificate, str]] = []
    for c in certs:
        serial = _serial(c, "root")
        if not path_length(c)[0] or not signed_by(c, c):
            raise UserError(f"root {serial} is not a self-signed CA certificate")
        if any(serial == s for s, _, _ in out):
            raise UserError(f"root {serial} is given twice")
        out.append((serial, c, cert_pem(c)))
    return out


def _serial(cert: x509.Certificate, what: str) -> str:
    serial = serial_of(cert)
    if cert.serial_number <= 0 or len(serial) > _SERIAL_MAX:
        raise UserError(f"{what}: unusable serial number")
    return serial


def _may_sign_certs(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False


def _check_trust_domain(cert: x509.Certificate, serial: str, trust_domain: str) -> None:
    """The intermediate must not be meant for another trust domain, by its SAN or by its name constraints."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if other := [u for u in uris if u.startswith(SCHEME) and u != SCHEME + trust_domain]:
        raise UserError(f"intermediate {serial} is for {other[0][:80]}, not trust domain {trust_domain!r}")
    try:
        nc = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return
    permitted = [g.value for g in nc.permitted_subtrees or () if isinstance(g, x509.UniformResourceIdentifier)]
    excluded = [g.value for g in nc.excluded_subtrees or () if isinstance(g, x509.UniformResourceIdentifier)]
    if (permitted and not any(_uri_constraint_matches(p, trust_domain) for p in permitted)) or any(
            _uri_constraint_matches(e, trust_domain) for e in excluded):
        raise UserError(f"intermediate {serial}: its name constraints do not permit trust domain {trust_domain!r}")


def _uri_constraint_matches(constraint: str, host: str) -> bool:
    # RFC 5280: "host" matches that host only; ".domain" matches any host under it.
    c, h = constraint.lower(), host.lower()
    return h.endswith(c) if c.startswith(".") else h == c


def _check_public_key(public_key: CertificatePublicKeyTypes) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ("secp256r1", "secp384r1"):
            raise UserError(f"EC key on curve {public_key.curve.name} is not accepted (use P-256 or P-384)")
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise UserError(f"RSA key of {public_key.key_size} bits is too small (at least {MIN_RSA_BITS})")
        return
    raise UserError(f"{type(public_key).__name__} keys are not accepted for intermediates (use EC P-256)")


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
