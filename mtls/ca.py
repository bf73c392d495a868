"""The mesh CA on disk: root keys, the root set and its rotation, workload certificate issuance.

Layout of the CA directory (mode 0700)::

    ca.json               trust domain, workload TTL, generation, roots [{serial, state, retire_at}]
    root-<serial>.key     EC P-256 private key, PKCS8 PEM, mode 0600
    root-<serial>.pem     the self-signed root certificate, mode 0644
    .lock                 flock: writers exclusive, readers shared

Theory of operation. Exactly one root is "active" (it signs). A root rotation is two steps so that
no handshake fails on the way: ``rotate_begin`` adds a "pending" root that everybody trusts but
nobody signs with yet; once every sidecar has the new bundle, ``rotate_commit`` makes it active and
the old one "retiring", still trusted until ``retire_at`` (one workload TTL, by when every certificate
it signed has expired); ``prune`` then deletes it. ``generation`` bumps on every change of the root
set, so a keeper can tell cheaply that it must resend the bundle or re-issue.

The files themselves (ca.json as commit point, the lock, atomic writes) are mtls/ca_store.py. Key
files are created 0600, never readable by anyone else even for a moment; key material never
appears in an error.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshns.errors import ConflictError, UserError
from meshns.mtls.ca_store import (
    MIN_TTL_S,
    ROOT_STATES,
    STATE_FILE,
    CAError,
    CaState,
    RootInfo,
    fs_errors,
    locked,
    read_state,
    write_atomic,
)
from meshns.mtls.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, validate_trust_domain

__all__ = ["CLOCK_SKEW_S", "ROOT_VALIDITY_S", "CAError", "CertAuthority", "IssuedCert", "RootInfo", "key_pem",
           "new_key"]

ROOT_VALIDITY_S = 10 * 365 * 86400
CLOCK_SKEW_S = 60.0


@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str
    serial: str
    not_before: float
    not_after: float
    issued_at: float


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKeyTypes) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class CertAuthority:
    """Handle on a CA directory. Properties show the state as of the last operation on this handle."""

    def __init__(self, ca_dir: Path, state: CaState) -> None:
        self._dir = ca_dir
        self._state = state
        # Root files never change under a given serial, so they are read at most once per handle.
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._certs: dict[str, tuple[x509.Certificate, str]] = {}

    @staticmethod
    def exists(ca_dir: Path) -> bool:
        path = Path(ca_dir) / STATE_FILE
        with fs_errors(path):  # EACCES (not root) is an error, not "no CA"
            return path.is_file()

    @classmethod
    def load(cls, ca_dir: Path) -> CertAuthority:
        ca_dir = Path(ca_dir)
        if not cls.exists(ca_dir):
            raise CAError(f"no CA at {ca_dir} ({STATE_FILE} is missing)")
        with locked(ca_dir, exclusive=False):
            return cls(ca_dir, read_state(ca_dir))

    @classmethod
    def ensure(cls, ca_dir: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN, workload_ttl_s: float = 86400.0,
               now: float | None = None) -> CertAuthority:
        """Load the CA, creating it first if there is none. An existing CA is never changed."""
        validate_trust_domain(trust_domain)
        _check_ttl(workload_ttl_s)
        ca_dir = Path(ca_dir)
        with fs_errors(ca_dir):
            ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Two processes racing to create: the second one waits here, then finds ca.json and loads it.
        with locked(ca_dir, exclusive=True):
            if cls.exists(ca_dir):
                return cls(ca_dir, read_state(ca_dir))
            with fs_errors(ca_dir):
                os.chmod(ca_dir, 0o700)  # mkdir's mode is narrowed by umask, and the dir may predate us
            ca = cls(ca_dir, CaState(trust_domain, float(workload_ttl_s), 1, ()))
            serial = ca._new_root(_now(now))
            ca._commit(replace(ca._state, roots=(RootInfo(serial, "active", None),)))
            return ca

    @classmethod
    def init(cls, ca_dir: Path, trust_domain: str, workload_ttl_s: float, now: float | None = None) -> CertAuthority:
        ca = cls.ensure(ca_dir, trust_domain, workload_ttl_s, now)
        if ca.trust_domain != trust_domain:
            raise ConflictError(f"a CA for trust domain {ca.trust_domain!r} already exists at {ca_dir}; "
                                f"it cannot be re-initialised for {trust_domain!r}")
        return ca

    @property
    def ca_dir(self) -> Path:
        return self._dir

    @property
    def trust_domain(self) -> str:
        return self._state.trust_domain

    @property
    def workload_ttl_s(self) -> float:
        return self._state.workload_ttl_s

    @property
    def generation(self) -> int:
        return self._state.generation

    @property
    def roots(self) -> list[RootInfo]:
        return list(self._state.roots)

    @property
    def active_serial(self) -> str:
        serial = self._state.serial("active")
        assert serial is not None  # _parse_state guarantees exactly one active root
        return serial

    def refresh(self) -> bool:
        """Re-read ca.json (small; root files stay cached). True if the state changed."""
        with locked(self._dir, exclusive=False):
            old = self._state
            self._state = read_state(self._dir)
            return self._state != old

    def bundle_pem(self, now: float | None = None) -> str:
        now = _now(now)
        with locked(self._dir, exclusive=False):
            self._state = read_state(self._dir)
            order = {state: i for i, state in enumerate(ROOT_STATES)}
            trusted = sorted((r for r in self._state.roots if r.retire_at is None or now < r.retire_at),
                             key=lambda r: order[r.state])
            return "".join(self._root(r.serial)[1] for r in trusted)

    def issue(self, spiffe: SpiffeId, public_key: CertificatePublicKeyTypes, ttl_s: float | None = None,
              now: float | None = None, *, not_before: float | None = None,
              not_after: float | None = None) -> IssuedCert:
        now = _now(now)
        with locked(self._dir, exclusive=False):
            self._state = read_state(self._dir)
            if spiffe.trust_domain != self.trust_domain:
                raise UserError(f"cannot issue {spiffe.uri}: this CA is for trust domain {self.trust_domain!r}")
            serial = self.active_serial
            key, (root, _) = self._key(serial), self._root(serial)
        ttl = self.workload_ttl_s if ttl_s is None else ttl_s
        if not_after is None:
            _check_ttl(ttl)
        # X.509 times are whole seconds; report what the certificate really says.
        nb = math.floor(now - CLOCK_SKEW_S if not_before is None else not_before)
        na = math.floor(now + ttl if not_after is None else not_after)
        if na <= nb:
            raise UserError(f"certificate validity is empty (not_after {na} <= not_before {nb})")
        ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            _builder(x509.Name([]), root.subject, public_key, nb, na)
            # An empty subject makes the SAN the only name, and X.509 then requires it to be critical.
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe.uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        return IssuedCert(pem, format(cert.serial_number, "x"), float(nb), float(na), now)

    def rotate_begin(self, now: float | None = None) -> str:
        """Add a pending root: trusted from now on, signing only after rotate_commit. Returns its serial."""
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            if (pending := st.serial("pending")) is not None:
                raise ConflictError(f"a root rotation is already pending (root {pending}); commit it first")
            serial = self._new_root(_now(now))
            roots = (*st.roots, RootInfo(serial, "pending", None))
            self._commit(replace(st, generation=st.generation + 1, roots=roots))
            return serial

    def rotate_commit(self, now: float | None = None) -> str:
        """Pending root signs from now on; the old one stays trusted for one workload TTL. Returns the new serial."""
        now = _now(now)
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            pending = st.serial("pending")
            if pending is None:
                raise UserError("no root rotation is pending (begin one first)")
            roots = tuple(RootInfo(r.serial, "active", None) if r.state == "pending"
                          else RootInfo(r.serial, "retiring", now + st.workload_ttl_s) if r.state == "active"
                          else r for r in st.roots)
            self._commit(replace(st, generation=st.generation + 1, roots=roots))
            return pending

    def prune(self, now: float | None = None) -> int:
        """Forget retiring roots past retire_at and delete their files. Returns how many."""
        now = _now(now)
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            gone = [r.serial for r in st.roots if r.retire_at is not None and now >= r.retire_at]
            if not gone:
                return 0
            self._commit(replace(st, generation=st.generation + 1,
                                 roots=tuple(r for r in st.roots if r.serial not in gone)))
            for serial in gone:
                self._keys.pop(serial, None)
                self._certs.pop(serial, None)
                for path in (self._path(serial, "key"), self._path(serial, "pem")):
                    with fs_errors(path):
                        path.unlink(missing_ok=True)
            return len(gone)

    def _path(self, serial: str, ext: str) -> Path:
        return self._dir / f"root-{serial}.{ext}"

    def _commit(self, st: CaState) -> None:
        write_atomic(self._dir / STATE_FILE, st.to_json(), 0o644)
        self._state = st

    def _new_root(self, now: float) -> str:
        key = new_key()
        serial_no = x509.random_serial_number()
        serial = format(serial_no, "x")
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshns"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"meshns root {serial[:12]}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            _builder(name, name, key.public_key(), now - CLOCK_SKEW_S, now + ROOT_VALIDITY_S, serial_no)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        write_atomic(self._path(serial, "key"), key_pem(key).encode(), 0o600)
        write_atomic(self._path(serial, "pem"), pem.encode(), 0o644)
        self._keys[serial], self._certs[serial] = key, (cert, pem)
        return serial

    def _root(self, serial: str) -> tuple[x509.Certificate, str]:
        if serial not in self._certs:
            path = self._path(serial, "pem")
            with fs_errors(path):
                pem = path.read_text()
            try:
                self._certs[serial] = (x509.load_pem_x509_certificate(pem.encode()), pem)
            except ValueError:
                raise CAError(f"{path}: not a PEM certificate") from None
        return self._certs[serial]

    def _key(self, serial: str) -> ec.EllipticCurvePrivateKey:
        if serial not in self._keys:
            path = self._path(serial, "key")
            with fs_errors(path):
                data = path.read_bytes()
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm):
                # from None: the parser's exception must not carry the file's bytes into a traceback.
                raise CAError(f"{path}: not an unencrypted PEM private key") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CAError(f"{path}: not an EC private key")
            self._keys[serial] = key
        return self._keys[serial]


def _builder(subject: x509.Name, issuer: x509.Name, public_key: CertificatePublicKeyTypes, not_before: float,
             not_after: float, serial: int | None = None) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number() if serial is None else serial)
            .not_valid_before(dt.datetime.fromtimestamp(not_before, tz=dt.UTC))
            .not_valid_after(dt.datetime.fromtimestamp(not_after, tz=dt.UTC))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False, key_cert_sign: bool = False,
               crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False, decipher_only=False)


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _check_ttl(ttl_s: float) -> None:
    if not math.isfinite(ttl_s) or ttl_s < MIN_TTL_S:
        raise UserError(f"certificate TTL must be at least {MIN_TTL_S:g} s, got {ttl_s!r}")


