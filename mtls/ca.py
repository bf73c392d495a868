"""The mesh CA on disk: root keys or an intermediate, the root set and its rotation, workload certificates.

Layout of the CA directory (mode 0700)::

    ca.json                    mode (absent: root), trust domain, workload TTL, generation,
                               roots [{serial, state, retire_at}], intermediate {serial, host, issuer, ...}
    root-<serial>.key          EC P-256 private key, PKCS8 PEM, mode 0600 (root mode only)
    root-<serial>.pem          the self-signed root certificate, mode 0644
    intermediate-<serial>.key  the signing intermediate's key, mode 0600 (when there is one)
    intermediate-<serial>.pem  its certificate, mode 0644
    .lock                      flock: writers exclusive, readers shared

Theory of operation. Exactly one root is "active" (it signs). A root rotation is two steps so that
no handshake fails on the way: ``rotate_begin`` adds a "pending" root that everybody trusts but
nobody signs with yet; once every sidecar has the new bundle, ``rotate_commit`` makes it active and
the old one "retiring", still trusted until ``retire_at`` (one workload TTL, by when every certificate
it signed has expired); ``prune`` then deletes it. ``generation`` bumps on every change of the root
set or of the signing intermediate, so a keeper can tell cheaply that it must resend the bundle or
re-issue.

Two modes (multi-host: one trust domain, the root key on one host only, see mtls/intermediate.py).
Root mode, the default and every ca.json without "mode", is the above; it signs workloads with the
active root or, after ``use_own_intermediate``, with an intermediate of its own under the active root
(re-made when a rotation commits and when half its life is gone). Intermediate mode
(``init_intermediate``) holds no root key: the roots are only trusted (state "trusted", the bundle),
and workloads are signed with the intermediate the root holder issued to this host; roots rotate on
the root holder, so ``rotate_*`` refuse here. Whenever an intermediate signs, the certificate comes
back as the chain leaf + intermediate and never outlives the intermediate.

The files themselves (ca.json as commit point, the lock, atomic writes) are mtls/ca_store.py. Key
files are created 0600, never readable by anyone else even for a moment; key material never
appears in an error.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshns.errors import ConflictError, UserError
from meshns.mtls.ca_files import CaFiles
from meshns.mtls.ca_store import (
    MIN_TTL_S,
    ROOT_STATES,
    STATE_FILE,
    TRUSTED,
    CAError,
    CaState,
    IntermediateInfo,
    RootInfo,
    fs_errors,
    locked,
    read_state,
    write_atomic,
)
from meshns.mtls.certs import (
    CLOCK_SKEW_S,
    authority_key_id,
    builder,
    cert_pem,
    key_pem,
    key_usage,
    new_key,
    serial_of,
)
from meshns.mtls.identity import DEFAULT_TRUST_DOMAIN, SpiffeId, validate_trust_domain
from meshns.mtls.intermediate import (
    INTERMEDIATE_VALIDITY_S,
    IntermediateMaterial,
    build_intermediate,
    can_sign_intermediates,
    check_material,
    validate_host,
)
from meshns.mtls.rotation import rotation_due

__all__ = ["CLOCK_SKEW_S", "INTERMEDIATE_VALIDITY_S", "ROOT_VALIDITY_S", "CAError", "CertAuthority",
           "IntermediateInfo", "IssuedCert", "RootInfo", "key_pem", "new_key"]

ROOT_VALIDITY_S = 10 * 365 * 86400
NOT_ROOT_HOLDER = "this host's CA holds an intermediate; rotate roots on the host holding the mesh root"


@dataclass(frozen=True)
class IssuedCert:
    """``cert_pem`` is the chain to present (leaf, then the intermediate if one signed); the rest
    describes the leaf."""

    cert_pem: str
    serial: str
    not_before: float
    not_after: float
    issued_at: float


class CertAuthority:
    """Handle on a CA directory. Properties show the state as of the last operation on this handle."""

    def __init__(self, ca_dir: Path, state: CaState) -> None:
        self._dir = ca_dir
        self._state = state
        self._files = CaFiles(ca_dir)
        self._refreshed_at: tuple[int, int, int, int, int] | None = None  # ca.json as refresh last read it

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

    @classmethod
    def init_intermediate(cls, ca_dir: Path, trust_domain: str, workload_ttl_s: float, roots_pem: str,
                          intermediate_cert_pem: str, intermediate_key_pem: str,
                          now: float | None = None) -> CertAuthority:
        """Create this host's CA in intermediate mode: the roots (trust bundle only) and the intermediate
        the root holder issued to this host. UserError if the material does not hold together. If a CA
        exists already it is left alone (ConflictError), unless it holds this same intermediate: then
        this is a repeated import, which only takes up a changed root set. Nothing is left on failure."""
        validate_trust_domain(trust_domain)
        _check_ttl(workload_ttl_s)
        material = check_material(trust_domain, roots_pem, intermediate_cert_pem, intermediate_key_pem, _now(now))
        ca_dir = Path(ca_dir)
        with fs_errors(ca_dir):
            made_dir = not ca_dir.exists()
            ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            with locked(ca_dir, exclusive=True):
                if cls.exists(ca_dir):
                    ca = cls(ca_dir, read_state(ca_dir))
                    ca._reimport(material, trust_domain)
                    return ca
                with fs_errors(ca_dir):
                    os.chmod(ca_dir, 0o700)
                ca = cls(ca_dir, CaState(trust_domain, float(workload_ttl_s), 1, (), "intermediate"))
                ca._install(material, ca._state)
                return ca
        except BaseException:
            if made_dir:
                _remove_uncommitted(ca_dir)
            raise

    @property
    def ca_dir(self) -> Path:
        return self._dir

    @property
    def mode(self) -> str:
        """"root" (holds the root keys) or "intermediate" (holds an intermediate the root holder issued)."""
        return self._state.mode

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
    def intermediate(self) -> IntermediateInfo | None:
        """The intermediate that signs workload certificates, if one does."""
        return self._state.intermediate

    def holds_root(self) -> bool:
        """True in root mode: this CA has the root keys (it rotates roots and issues intermediates)."""
        return self._state.mode == "root"

    def has_intermediate(self) -> bool:
        """True if an intermediate signs workload certificates (always in intermediate mode)."""
        return self._state.intermediate is not None

    @property
    def active_serial(self) -> str:
        serial = self._state.serial("active")
        if serial is None:  # _parse_state guarantees exactly one active root in root mode
            raise CAError(f"{NOT_ROOT_HOLDER} (no root signs here)")
        return serial

    @property
    def signer_serial(self) -> str:
        """Serial of what signs workload certificates now: the intermediate if any, else the active root."""
        inter = self._state.intermediate
        return inter.serial if inter is not None else self.active_serial

    @property
    def signer_not_after(self) -> float:
        """No workload certificate is valid past this (the intermediate's end; inf when a root signs)."""
        inter = self._state.intermediate
        return inter.not_after if inter is not None else math.inf

    def refresh(self) -> bool:
        """Re-read ca.json (small; root files stay cached). True if the state changed.

        Skipped when ca.json is the very file the last refresh read: every write replaces it whole
        (a new inode, new times), so an unchanged stat means unchanged content. Each pod's
        supervisor refreshes 4 times a second; taking the lock and parsing the file each time was
        most of an idle supervisor's CPU, times the number of pods on the host."""
        seen = self._stat_key()
        if seen is not None and seen == self._refreshed_at:
            return False
        with locked(self._dir, exclusive=False):
            old = self._state
            # Taken under the lock, before the read: no writer can replace the file in between.
            self._refreshed_at = self._stat_key()
            self._state = read_state(self._dir)
            return self._state != old

    def _stat_key(self) -> tuple[int, int, int, int, int] | None:
        """Which ca.json is there now (None if it cannot be told: the read will report why)."""
        try:
            st = os.stat(self._dir / STATE_FILE)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def bundle_pem(self, now: float | None = None) -> str:
        now = _now(now)
        with locked(self._dir, exclusive=False):
            self._state = read_state(self._dir)
            order = {state: i for i, state in enumerate(ROOT_STATES)}
            trusted = sorted((r for r in self._state.roots if r.retire_at is None or now < r.retire_at),
                             key=lambda r: order.get(r.state, 0))
            return "".join(self._files.root(r.serial)[1] for r in trusted)

    def issue(self, spiffe: SpiffeId, public_key: CertificatePublicKeyTypes, ttl_s: float | None = None,
              now: float | None = None, *, not_before: float | None = None,
              not_after: float | None = None) -> IssuedCert:
        now = _now(now)
        self.refresh()
        if _own_intermediate_due(self._state, now):
            self._renew_own_intermediate(now)
        with locked(self._dir, exclusive=False):
            self._state = read_state(self._dir)
            if spiffe.trust_domain != self.trust_domain:
                raise UserError(f"cannot issue {spiffe.uri}: this CA is for trust domain {self.trust_domain!r}")
            signer, key, chain_pem, cap = self._signer(now)
        ttl = self.workload_ttl_s if ttl_s is None else ttl_s
        if not_after is None:
            _check_ttl(ttl)
        # X.509 times are whole seconds; report what the certificate really says.
        nb = math.floor(now - CLOCK_SKEW_S if not_before is None else not_before)
        na = math.floor(now + ttl if not_after is None else not_after)
        if na > cap:  # a leaf never outlives the intermediate that signed it
            na = math.floor(cap)
        if na <= nb:
            raise UserError(f"certificate validity is empty (not_after {na} <= not_before {nb})")
        cert = (
            builder(x509.Name([]), signer.subject, public_key, nb, na)
            # An empty subject makes the SAN the only name, and X.509 then requires it to be critical.
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe.uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True, key_encipherment=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(authority_key_id(signer), critical=False)
            .sign(key, hashes.SHA256())
        )
        return IssuedCert(cert_pem(cert) + chain_pem, serial_of(cert), float(nb), float(na), now)

    def issue_intermediate(self, host: str, public_key: CertificatePublicKeyTypes,
                           ttl_s: float = INTERMEDIATE_VALIDITY_S, now: float | None = None) -> IssuedCert:
        """An intermediate CA certificate for ``host``'s key, signed by the active root (root mode only).
        Its lifetime is capped at the root's; ``cert_pem`` is the intermediate alone."""
        validate_host(host)
        _check_ttl(ttl_s)
        now = _now(now)
        with locked(self._dir, exclusive=False):
            st = self._state = read_state(self._dir)
            cert = self._sign_intermediate(st, host, public_key, ttl_s, now)
        return IssuedCert(cert_pem(cert), serial_of(cert), cert.not_valid_before_utc.timestamp(),
                          cert.not_valid_after_utc.timestamp(), now)

    def use_own_intermediate(self, host: str, ttl_s: float = INTERMEDIATE_VALIDITY_S,
                             now: float | None = None) -> str:
        """Root mode: sign workloads from now on with a new intermediate of this host's (key kept here),
        re-made automatically on rotate_commit and at half its life. Returns its serial."""
        validate_host(host)
        _check_ttl(ttl_s)
        now = _now(now)
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            if st.mode != "root":
                raise CAError("this host's CA already signs with the intermediate the root holder issued to it")
            return self._commit_own_intermediate(replace(st, generation=st.generation + 1), host, ttl_s, now)

    def install_intermediate(self, roots_pem: str, intermediate_cert_pem: str, intermediate_key_pem: str,
                             now: float | None = None) -> str:
        """Intermediate mode: replace the intermediate and/or the root set (a renewed intermediate, or the
        root holder's new root set). Workloads re-issue on their keeper's next tick. Returns the serial."""
        material = check_material(self.trust_domain, roots_pem, intermediate_cert_pem, intermediate_key_pem,
                                  _now(now))
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            if st.mode != "intermediate":
                raise CAError("this host's CA holds the mesh root; it does not take an intermediate from elsewhere")
            self._install(material, replace(st, generation=st.generation + 1))
            return material.serial

    def update_roots(self, roots_pem: str, now: float | None = None) -> bool:
        """Intermediate mode: take up the root holder's current root set (it must still hold the root
        that signed our intermediate). True if it changed; the keepers then resend the bundle."""
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            if st.intermediate is None or st.mode != "intermediate":
                raise CAError("this host's CA holds the mesh root; its roots change by `meshns ca rotate`")
            _, pem, key = self._files.intermediate(st.intermediate.serial)
            material = check_material(st.trust_domain, roots_pem, pem, key_pem(key), _now(now))
            if [r.serial for r in st.roots] == [s for s, _ in material.roots]:
                return False
            self._install(material, replace(st, generation=st.generation + 1))
            return True

    def rotate_begin(self, now: float | None = None) -> str:
        """Add a pending root: trusted from now on, signing only after rotate_commit. Returns its serial."""
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            if st.mode != "root":
                raise CAError(NOT_ROOT_HOLDER)
            if (pending := st.serial("pending")) is not None:
                raise ConflictError(f"a root rotation is already pending (root {pending}); commit it first")
            serial = self._new_root(_now(now))
            roots = (*st.roots, RootInfo(serial, "pending", None))
            self._commit(replace(st, generation=st.generation + 1, roots=roots))
            return serial

    def rotate_commit(self, now: float | None = None) -> str:
        """Pending root signs from now on; the old one stays trusted for one workload TTL. Returns the new serial.
        An own intermediate is re-made under the new root in the same step."""
        now = _now(now)
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            if st.mode != "root":
                raise CAError(NOT_ROOT_HOLDER)
            pending = st.serial("pending")
            if pending is None:
                raise UserError("no root rotation is pending (begin one first)")
            roots = tuple(RootInfo(r.serial, "active", None) if r.state == "pending"
                          else RootInfo(r.serial, "retiring", now + st.workload_ttl_s) if r.state == "active"
                          else r for r in st.roots)
            new = replace(st, generation=st.generation + 1, roots=roots)
            if st.intermediate is None:
                self._commit(new)
            else:
                self._commit_own_intermediate(new, st.intermediate.host, _lifetime(st.intermediate), now)
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
                self._files.forget_root(serial)
            return len(gone)

    def _commit(self, st: CaState) -> None:
        write_atomic(self._dir / STATE_FILE, st.to_json(), 0o644)
        self._state = st

    def _signer(self, now: float) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, str, float]:
        """(certificate, key, PEM to append to the leaf, latest not_after) of what signs now. Under the lock."""
        inter = self._state.intermediate
        if inter is None:
            serial = self.active_serial
            return self._files.root(serial)[0], self._files.root_key(serial), "", math.inf
        if now >= inter.not_after:
            raise CAError(f"intermediate {inter.serial} (host {inter.host or '?'}) expired at "
                          f"{_stamp(inter.not_after)}: install a renewed one")
        cert, pem, key = self._files.intermediate(inter.serial)
        return cert, key, pem, inter.not_after

    def _sign_intermediate(self, st: CaState, host: str, public_key: CertificatePublicKeyTypes, ttl_s: float,
                           now: float) -> x509.Certificate:
        if st.mode != "root":
            raise CAError("this host's CA holds an intermediate, not the mesh root; "
                          "intermediates are issued on the host holding the mesh root")
        serial = self.active_serial
        root = self._files.root(serial)[0]
        if not can_sign_intermediates(root):
            raise CAError(f"the active root {serial} was made with path length 0 and cannot sign intermediates; "
                          "rotate it first (`meshns ca rotate`): new roots can")
        nb = math.floor(now - CLOCK_SKEW_S)
        na = math.floor(min(now + ttl_s, root.not_valid_after_utc.timestamp()))
        if na <= nb:
            raise CAError(f"the active root {serial} expires too soon to sign an intermediate")
        return build_intermediate(host, st.trust_domain, public_key, root, self._files.root_key(serial), nb, na)

    def _commit_own_intermediate(self, st: CaState, host: str, ttl_s: float, now: float) -> str:
        """Root mode, under the exclusive lock: a new own intermediate under st's active root, committed with st."""
        self._state = st
        key = new_key()
        cert = self._sign_intermediate(st, host, key.public_key(), ttl_s, now)
        serial = serial_of(cert)
        self._files.add_intermediate(serial, cert, cert_pem(cert), key)
        old = st.intermediate
        info = IntermediateInfo(serial, host, self.active_serial, cert.not_valid_before_utc.timestamp(),
                                cert.not_valid_after_utc.timestamp())
        self._commit(replace(st, intermediate=info))
        if old is not None:
            self._files.forget_intermediate(old.serial)
        return serial

    def _renew_own_intermediate(self, now: float) -> None:
        with locked(self._dir, exclusive=True):
            st = self._state = read_state(self._dir)
            inter = st.intermediate
            if inter is None or not _own_intermediate_due(st, now):
                return  # another process renewed it while we waited for the lock
            self._commit_own_intermediate(replace(st, generation=st.generation + 1), inter.host, _lifetime(inter),
                                          now)

    def _install(self, m: IntermediateMaterial, st: CaState) -> None:
        """Intermediate mode, under the exclusive lock: write m's files, commit st with m's roots and
        intermediate, delete files no longer named. Files new to the directory go again on failure."""
        written = self._files.stage(m)
        try:
            self._commit(replace(st, mode="intermediate", roots=tuple(RootInfo(s, TRUSTED, None) for s, _ in m.roots),
                                 intermediate=IntermediateInfo(m.serial, m.host, m.issuer, m.not_before, m.not_after)))
        except BaseException:
            self._files.unlink(written)
            raise
        for r in st.roots:
            if r.serial not in {s for s, _ in m.roots}:
                self._files.forget_root(r.serial)
        if st.intermediate is not None and st.intermediate.serial != m.serial:
            self._files.forget_intermediate(st.intermediate.serial)

    def _reimport(self, m: IntermediateMaterial, trust_domain: str) -> None:
        """init_intermediate on an existing CA: fine if it holds the same intermediate, else ConflictError."""
        st = self._state
        inter = st.intermediate
        same = (st.mode == "intermediate" and inter is not None and inter.serial == m.serial
                and st.trust_domain == trust_domain and self._files.intermediate(inter.serial)[1] == m.cert_pem)
        if not same:
            what = (f"holding intermediate {inter.serial} for host {inter.host or '?'}"
                    if st.mode == "intermediate" and inter is not None else "holding the mesh root")
            raise ConflictError(f"a CA for trust domain {st.trust_domain!r} already exists at {self._dir} ({what}); "
                                "it was left as it is")
        if [r.serial for r in st.roots] != [s for s, _ in m.roots]:
            self._install(m, replace(st, generation=st.generation + 1))

    def _new_root(self, now: float) -> str:
        key = new_key()
        serial_no = x509.random_serial_number()
        serial = format(serial_no, "x")
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshns"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"meshns root {serial[:12]}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            builder(name, name, key.public_key(), now - CLOCK_SKEW_S, now + ROOT_VALIDITY_S, serial_no)
            # Path length 1: a root may sign per-host intermediates, which sign leaves only.
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._files.add_root(serial, cert, cert_pem(cert), key)
        return serial


def _own_intermediate_due(st: CaState, now: float) -> bool:
    """Root mode: the own intermediate must be re-made (half its life gone, or not under the active root)."""
    inter = st.intermediate
    return (st.mode == "root" and inter is not None
            and (inter.issuer != st.serial("active") or rotation_due(inter.not_before, inter.not_after, now)))


def _lifetime(inter: IntermediateInfo) -> float:
    return max(MIN_TTL_S, inter.not_after - inter.not_before - CLOCK_SKEW_S)


def _remove_uncommitted(ca_dir: Path) -> None:
    """After a failed init_intermediate that made ca_dir: take it away again unless a CA got committed there."""
    if (ca_dir / STATE_FILE).exists():
        return
    try:
        (ca_dir / ".lock").unlink(missing_ok=True)
        ca_dir.rmdir()
    except OSError:
        pass  # not empty (somebody else's files): leave it


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _check_ttl(ttl_s: float) -> None:
    if not math.isfinite(ttl_s) or ttl_s < MIN_TTL_S:
        raise UserError(f"certificate TTL must be at least {MIN_TTL_S:g} s, got {ttl_s!r}")
