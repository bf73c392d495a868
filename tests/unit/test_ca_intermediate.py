"""Per-host intermediates: issuing one, a CA in intermediate mode, an own intermediate on the root
holder, what an import refuses, and the keeper's view of it. Chains are checked with `openssl verify`
(cryptography's verifier refuses the URI name constraint our intermediates carry)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from meshns.errors import ConflictError, UserError
from meshns.mtls.ca import CAError, CertAuthority, key_pem, new_key
from meshns.mtls.certs import builder, key_usage
from meshns.mtls.identity import SpiffeId
from meshns.mtls.keeper import IdentityKeeper, TickAction, decide_tick

NOW = float(int(time.time()))
TD = "example.org"
WEB = SpiffeId(TD, "shop", "web")
YEAR = 365 * 86400


def certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


def pem(c: x509.Certificate) -> str:
    return c.public_bytes(serialization.Encoding.PEM).decode()


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def openssl_verify(tmp: Path, roots_pem: str, chain_pem: str, at: float, purpose: str = "sslclient") -> str:
    """`openssl verify` of the chain's first certificate, the rest as untrusted intermediates. '' if OK."""
    leaf, *rest = certs(chain_pem)
    (tmp / "v-roots.pem").write_text(roots_pem)
    (tmp / "v-leaf.pem").write_text(pem(leaf))
    (tmp / "v-untrusted.pem").write_text("".join(pem(c) for c in rest) or pem(leaf))
    p = subprocess.run(["openssl", "verify", "-purpose", purpose, "-attime", str(int(at)), "-CAfile",
                        str(tmp / "v-roots.pem"), "-untrusted", str(tmp / "v-untrusted.pem"), str(tmp / "v-leaf.pem")],
                       capture_output=True, text=True)
    return "" if p.returncode == 0 else (p.stdout + p.stderr)


@pytest.fixture
def root(tmp_path: Path) -> CertAuthority:
    return CertAuthority.ensure(tmp_path / "root-host" / "ca", TD, 3600.0, now=NOW)


def host_ca(root: CertAuthority, base: Path, host: str, ttl_s: float = YEAR, now: float = NOW) -> CertAuthority:
    key = new_key()
    ic = root.issue_intermediate(host, key.public_key(), ttl_s, now=now)
    return CertAuthority.init_intermediate(base / host / "ca", TD, 3600.0, root.bundle_pem(now=now), ic.cert_pem,
                                           key_pem(key), now=now)


def make_legacy(ca: CertAuthority) -> None:
    """Turn ca's root into what meshns made before intermediates: the same root with path length 0."""
    serial = ca.active_serial
    key = serialization.load_pem_private_key((ca.ca_dir / f"root-{serial}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    old = certs((ca.ca_dir / f"root-{serial}.pem").read_text())[0]
    cert = (builder(old.subject, old.subject, key.public_key(), NOW - 60, NOW + 10 * YEAR, old.serial_number)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
            .sign(key, hashes.SHA256()))
    (ca.ca_dir / f"root-{serial}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# -- issue_intermediate ---------------------------------------------------------------------------

def test_new_roots_may_sign_one_level_of_intermediates(root: CertAuthority) -> None:
    bc = certs(root.bundle_pem())[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 1


def test_intermediate_certificate(root: CertAuthority, tmp_path: Path) -> None:
    key = new_key()
    got = root.issue_intermediate("node-b.example", key.public_key(), now=NOW + 0.5)
    (cert,) = certs(got.cert_pem)
    (root_cert,) = certs(root.bundle_pem())
    cert.verify_directly_issued_by(root_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "meshns intermediate node-b.example"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshns"
    assert (got.not_before, got.not_after, got.issued_at) == (NOW - 60, NOW + YEAR, NOW + 0.5)
    assert cert.not_valid_after_utc.timestamp() == got.not_after and format(cert.serial_number, "x") == got.serial
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert ext.get_extension_for_class(x509.SubjectKeyIdentifier).value == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    root_ski = root_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}"]
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and list(nc.value.permitted_subtrees or ()) == [x509.UniformResourceIdentifier(TD)]
    assert openssl_verify(tmp_path, root.bundle_pem(), got.cert_pem, NOW, purpose="any") == ""


def test_intermediate_lifetime_is_capped_at_the_root(root: CertAuthority) -> None:
    root_end = certs(root.bundle_pem())[0].not_valid_after_utc.timestamp()
    assert root.issue_intermediate("b", new_key().public_key(), 3600.0, now=NOW).not_after == NOW + 3600
    assert root.issue_intermediate("b", new_key().public_key(), 50 * YEAR, now=NOW).not_after == root_end


@pytest.mark.parametrize("host", ["", "Node", "a_b", "-a", "a-", "a..b", "a" * 64, "a." * 130 + "a", "ä"])
def test_issue_intermediate_refuses_bad_host_names(root: CertAuthority, host: str) -> None:
    with pytest.raises(UserError, match="host name"):
        root.issue_intermediate(host, new_key().public_key(), now=NOW)


def test_issue_intermediate_refuses_bad_ttls_and_keys(root: CertAuthority) -> None:
    for ttl in (0.0, -5.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="TTL"):
            root.issue_intermediate("b", new_key().public_key(), ttl, now=NOW)
    with pytest.raises(UserError, match="RSA key of 1024 bits"):
        root.issue_intermediate("b", rsa.generate_private_key(65537, 1024).public_key(), now=NOW)
    with pytest.raises(UserError, match="not accepted"):
        root.issue_intermediate("b", ed25519.Ed25519PrivateKey.generate().public_key(), now=NOW)
    with pytest.raises(UserError, match="secp256k1"):
        root.issue_intermediate("b", ec.generate_private_key(ec.SECP256K1()).public_key(), now=NOW)


def test_a_path_length_0_root_must_be_rotated_before_it_signs_intermediates(root: CertAuthority,
                                                                            tmp_path: Path) -> None:
    make_legacy(root)
    fresh = CertAuthority.load(root.ca_dir)  # no cached root
    with pytest.raises(CAError, match=r"path length 0.*meshns ca rotate"):
        fresh.issue_intermediate("b", new_key().public_key(), now=NOW)
    with pytest.raises(CAError, match="path length 0"):
        fresh.use_own_intermediate("a", now=NOW)
    fresh.rotate_begin(now=NOW)
    fresh.rotate_commit(now=NOW)
    b = host_ca(fresh, tmp_path, "b")
    assert openssl_verify(tmp_path, fresh.bundle_pem(now=NOW), b.issue(WEB, new_key().public_key(), now=NOW).cert_pem,
                          NOW) == ""


# -- intermediate mode ----------------------------------------------------------------------------

def test_intermediate_mode_layout(root: CertAuthority, tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        b = host_ca(root, tmp_path, "b")
    finally:
        os.umask(old)
    inter = b.intermediate
    assert inter is not None and inter.host == "b" and inter.issuer == root.active_serial
    assert (b.mode, b.holds_root(), b.has_intermediate()) == ("intermediate", False, True)
    assert (root.mode, root.holds_root(), root.has_intermediate()) == ("root", True, False)
    assert mode(b.ca_dir) == 0o700
    assert mode(b.ca_dir / f"intermediate-{inter.serial}.key") == 0o600
    assert mode(b.ca_dir / f"intermediate-{inter.serial}.pem") == 0o644
    assert sorted(p.name for p in b.ca_dir.iterdir()) == sorted(
        [".lock", "ca.json", f"root-{root.active_serial}.pem", f"intermediate-{inter.serial}.key",
         f"intermediate-{inter.serial}.pem"])  # no root key
    doc = json.loads((b.ca_dir / "ca.json").read_text())
    assert doc["mode"] == "intermediate"
    assert doc["roots"] == [{"serial": root.active_serial, "state": "trusted", "retire_at": None}]
    assert doc["intermediate"] == {"serial": inter.serial, "host": "b", "issuer": root.active_serial,
                                   "not_before": NOW - 60, "not_after": NOW + YEAR}
    assert b.bundle_pem(now=NOW) == root.bundle_pem(now=NOW)
    assert b.signer_serial == inter.serial and b.signer_not_after == NOW + YEAR
    with pytest.raises(CAError, match="holding the mesh root"):
        _ = b.active_serial


def test_intermediate_mode_issues_a_chain_that_verifies_against_the_roots(root: CertAuthority,
                                                                         tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b")
    got = b.issue(WEB, new_key().public_key(), now=NOW + 1)
    leaf, inter = certs(got.cert_pem)
    assert inter.public_bytes(serialization.Encoding.PEM).decode() == \
        (b.ca_dir / f"intermediate-{b.signer_serial}.pem").read_text()
    leaf.verify_directly_issued_by(inter)
    assert format(leaf.serial_number, "x") == got.serial
    assert (got.not_before, got.not_after) == (NOW + 1 - 60, NOW + 1 + 3600)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri]
    ski = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == ski.digest
    for purpose in ("sslclient", "sslserver"):
        assert openssl_verify(tmp_path, root.bundle_pem(), got.cert_pem, NOW + 2, purpose) == ""
    # Without the intermediate the leaf does not verify: peers trust only the roots.
    assert "unable to get local issuer" in openssl_verify(tmp_path, root.bundle_pem(),
                                                          leaf.public_bytes(serialization.Encoding.PEM).decode(),
                                                          NOW + 2)


def test_name_constraints_hold_an_intermediate_to_the_trust_domain(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b")
    (inter_cert,) = certs((b.ca_dir / f"intermediate-{b.signer_serial}.pem").read_text())
    ikey = serialization.load_pem_private_key((b.ca_dir / f"intermediate-{b.signer_serial}.key").read_bytes(), None)
    assert isinstance(ikey, ec.EllipticCurvePrivateKey)
    leaf = (builder(x509.Name([]), inter_cert.subject, new_key().public_key(), NOW - 60, NOW + 600)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://evil.org/ns/a/sa/b")]),
                           critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ikey, hashes.SHA256()))
    chain = leaf.public_bytes(serialization.Encoding.PEM).decode() + \
        inter_cert.public_bytes(serialization.Encoding.PEM).decode()
    assert "permitted subtree violation" in openssl_verify(tmp_path, root.bundle_pem(), chain, NOW)


def test_workload_certificates_never_outlive_the_intermediate(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b", ttl_s=1800.0)
    end = NOW + 1800
    assert b.issue(WEB, new_key().public_key(), now=NOW).not_after == end  # TTL 3600 cut to 1800
    assert b.issue(WEB, new_key().public_key(), ttl_s=600.0, now=NOW).not_after == NOW + 600
    assert b.issue(WEB, new_key().public_key(), now=NOW, not_after=NOW + 9999).not_after == end
    got = b.issue(WEB, new_key().public_key(), now=end - 10)
    assert got.not_after == end and certs(got.cert_pem)[0].not_valid_after_utc.timestamp() == end
    with pytest.raises(CAError, match="expired"):
        b.issue(WEB, new_key().public_key(), now=end)


def test_rotation_is_refused_in_intermediate_mode(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b")
    before = (b.ca_dir / "ca.json").read_bytes()
    for op in (b.rotate_begin, b.rotate_commit):
        with pytest.raises(CAError, match="this host's CA holds an intermediate; rotate roots on the host holding"):
            op(now=NOW)
    with pytest.raises(CAError, match="issued on the host holding the mesh root"):
        b.issue_intermediate("c", new_key().public_key(), now=NOW)
    with pytest.raises(CAError):
        b.use_own_intermediate("b", now=NOW)
    assert b.prune(now=NOW + 10 * YEAR) == 0
    assert (b.ca_dir / "ca.json").read_bytes() == before


def test_reimport_of_the_same_intermediate_is_a_no_op_and_takes_up_new_roots(root: CertAuthority,
                                                                            tmp_path: Path) -> None:
    key = new_key()
    ic = root.issue_intermediate("b", key.public_key(), now=NOW)
    args = (tmp_path / "b" / "ca", TD, 3600.0)
    b = CertAuthority.init_intermediate(*args, root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW)
    again = CertAuthority.init_intermediate(*args, root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW)
    assert (again.signer_serial, again.generation) == (b.signer_serial, 1)
    pending = root.rotate_begin(now=NOW)
    again = CertAuthority.init_intermediate(*args, root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW)
    assert again.generation == 2 and [r.serial for r in again.roots] == [root.active_serial, pending]
    assert again.bundle_pem() == root.bundle_pem()


def test_existing_ca_is_left_alone(root: CertAuthority, tmp_path: Path) -> None:
    key = new_key()
    ic = root.issue_intermediate("b", key.public_key(), now=NOW)
    before = {p.name: p.read_bytes() for p in root.ca_dir.iterdir()}
    with pytest.raises(ConflictError, match=r"holding the mesh root.*left as it is"):
        CertAuthority.init_intermediate(root.ca_dir, TD, 3600.0, root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW)
    assert {p.name: p.read_bytes() for p in root.ca_dir.iterdir()} == before
    b = host_ca(root, tmp_path, "b")
    with pytest.raises(ConflictError, match=f"holding intermediate {b.signer_serial} for host b"):
        CertAuthority.init_intermediate(b.ca_dir, TD, 3600.0, root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW)


def _refused(tmp_path: Path, match: str, roots: str, cert: str, key: str, td: str = TD,
             now: float = NOW) -> None:
    ca_dir = tmp_path / "new" / "ca"
    with pytest.raises(UserError, match=match):
        CertAuthority.init_intermediate(ca_dir, td, 3600.0, roots, cert, key, now=now)
    assert not ca_dir.exists()


def test_import_refuses_material_that_does_not_hold_together(root: CertAuthority, tmp_path: Path) -> None:
    key = new_key()
    ic = root.issue_intermediate("b", key.public_key(), now=NOW)
    roots, cert, kpem = root.bundle_pem(), ic.cert_pem, key_pem(key)
    other = CertAuthority.ensure(tmp_path / "other" / "ca", TD, now=NOW)
    okey = new_key()
    foreign = other.issue_intermediate("b", okey.public_key(), now=NOW).cert_pem
    leaf = root.issue(WEB, new_key().public_key(), now=NOW).cert_pem
    _refused(tmp_path, "does not match", roots, cert, key_pem(new_key()))
    _refused(tmp_path, "not an unencrypted PEM private key", roots, cert, "junk")
    _refused(tmp_path, "not an EC private key", roots, cert, key_pem(ed25519.Ed25519PrivateKey.generate()))
    _refused(tmp_path, "not signed by any of the 1 root", roots, foreign, key_pem(okey))
    _refused(tmp_path, "not a CA certificate", roots, leaf, kpem)
    _refused(tmp_path, "not a self-signed CA certificate", cert, cert, kpem)
    _refused(tmp_path, "roots: not PEM", "nothing", cert, kpem)
    _refused(tmp_path, "expected one certificate, found 2", roots, cert + cert, kpem)
    _refused(tmp_path, "not a PEM certificate", roots, "x", kpem)
    _refused(tmp_path, "expired", roots, cert, kpem, now=NOW + 2 * YEAR)
    _refused(tmp_path, "not valid before", roots, cert, kpem, now=NOW - 3600)
    _refused(tmp_path, "is for spiffe://example.org, not trust domain 'other.org'", roots, cert, kpem, td="other.org")
    _refused(tmp_path, "given twice", roots + roots, cert, kpem)
    make_legacy(root)
    legacy_roots = root.ca_dir.joinpath(f"root-{root.active_serial}.pem").read_text()
    _refused(tmp_path, "path length 0", legacy_roots, cert, kpem)
    # The root set may hold more roots than the one that signed (mid-rotation).
    ok = CertAuthority.init_intermediate(tmp_path / "ok" / "ca", TD, 3600.0, other.bundle_pem() + roots, cert, kpem,
                                         now=NOW)
    assert ok.intermediate is not None and ok.intermediate.issuer == root.active_serial


def test_import_into_an_existing_empty_directory_leaves_it_empty_on_failure(root: CertAuthority,
                                                                            tmp_path: Path) -> None:
    ca_dir = tmp_path / "b" / "ca"
    ca_dir.mkdir(parents=True)
    key = new_key()
    ic = root.issue_intermediate("b", key.public_key(), now=NOW)
    with pytest.raises(UserError):
        CertAuthority.init_intermediate(ca_dir, TD, 3600.0, root.bundle_pem(), ic.cert_pem, key_pem(new_key()), now=NOW)
    assert list(ca_dir.iterdir()) == []


def test_install_replaces_the_intermediate(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b")
    old = b.signer_serial
    key = new_key()
    ic = root.issue_intermediate("b", key.public_key(), now=NOW + 100)
    assert b.install_intermediate(root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW + 100) == ic.serial
    assert (b.signer_serial, b.generation) == (ic.serial, 2)
    assert not (b.ca_dir / f"intermediate-{old}.key").exists()
    assert certs(b.issue(WEB, new_key().public_key(), now=NOW + 100).cert_pem)[1].serial_number == int(ic.serial, 16)
    with pytest.raises(CAError, match="holds the mesh root"):
        root.install_intermediate(root.bundle_pem(), ic.cert_pem, key_pem(key), now=NOW)


# -- root mode ------------------------------------------------------------------------------------

def test_root_mode_without_intermediate_is_unchanged(root: CertAuthority) -> None:
    doc = json.loads((root.ca_dir / "ca.json").read_text())
    assert set(doc) == {"trust_domain", "workload_ttl_s", "generation", "roots"}  # no "mode": old readers read it
    assert len(certs(root.issue(WEB, new_key().public_key(), now=NOW).cert_pem)) == 1
    assert root.signer_serial == root.active_serial and root.intermediate is None


def test_old_ca_json_loads_as_root_mode(tmp_path: Path) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", now=NOW)
    (tmp_path / "ca" / "ca.json").write_text(json.dumps({
        "trust_domain": "cluster.local", "workload_ttl_s": 86400.0, "generation": 1,
        "roots": [{"serial": ca.active_serial, "state": "active", "retire_at": None}]}))
    assert CertAuthority.load(tmp_path / "ca").mode == "root"


@pytest.mark.parametrize(("change", "message"), [
    ({"mode": "leaf"}, "mode 'leaf'"),
    ({"mode": "intermediate"}, "state 'active' is not one of trusted"),
    ({"intermediate": {"serial": "ab", "host": "b", "issuer": "ff", "not_before": 1, "not_after": 2}},
     "issuer 'ff' is not one of the roots"),
    ({"intermediate": {"serial": "AB", "host": "b", "issuer": "ff", "not_before": 1, "not_after": 2}},
     "not lower-case hex"),
    ({"intermediate": []}, "not a JSON object"),
])
def test_corrupt_mode_or_intermediate_is_a_ca_error(root: CertAuthority, change: dict[str, object],
                                                    message: str) -> None:
    doc = json.loads((root.ca_dir / "ca.json").read_text())
    (root.ca_dir / "ca.json").write_text(json.dumps({**doc, **change}))
    with pytest.raises(CAError, match=message):
        CertAuthority.load(root.ca_dir)


def test_intermediate_mode_needs_its_intermediate(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b")
    doc = json.loads((b.ca_dir / "ca.json").read_text())
    del doc["intermediate"]
    (b.ca_dir / "ca.json").write_text(json.dumps(doc))
    with pytest.raises(CAError, match="needs its intermediate"):
        CertAuthority.load(b.ca_dir)


def test_own_intermediate_on_the_root_holder(root: CertAuthority, tmp_path: Path) -> None:
    serial = root.use_own_intermediate("a", now=NOW)
    assert root.mode == "root" and root.signer_serial == serial and root.generation == 2
    got = root.issue(WEB, new_key().public_key(), now=NOW)
    assert [format(c.serial_number, "x") for c in certs(got.cert_pem)] == [got.serial, serial]
    assert openssl_verify(tmp_path, root.bundle_pem(), got.cert_pem, NOW) == ""
    assert mode(root.ca_dir / f"intermediate-{serial}.key") == 0o600
    # A rotation: begin keeps the signer, commit re-makes the intermediate under the new root.
    pending = root.rotate_begin(now=NOW)
    assert root.signer_serial == serial
    root.rotate_commit(now=NOW + 10)
    inter = root.intermediate
    assert inter is not None and inter.serial != serial and inter.issuer == pending and inter.host == "a"
    assert not (root.ca_dir / f"intermediate-{serial}.pem").exists()
    got = root.issue(WEB, new_key().public_key(), now=NOW + 10)
    assert openssl_verify(tmp_path, root.bundle_pem(now=NOW + 10), got.cert_pem, NOW + 10) == ""
    assert openssl_verify(tmp_path, certs_pem(root, pending), got.cert_pem, NOW + 10) == ""


def certs_pem(ca: CertAuthority, serial: str) -> str:
    return (ca.ca_dir / f"root-{serial}.pem").read_text()


def test_own_intermediate_is_renewed_at_half_its_life(root: CertAuthority) -> None:
    first = root.use_own_intermediate("a", ttl_s=1000.0, now=NOW)
    assert root.issue(WEB, new_key().public_key(), now=NOW + 400).not_after == NOW + 1000  # capped, same signer
    assert root.signer_serial == first
    got = root.issue(WEB, new_key().public_key(), now=NOW + 600)
    inter = root.intermediate
    assert inter is not None and inter.serial != first and inter.not_after == NOW + 600 + 1000
    assert got.not_after == NOW + 600 + 1000  # TTL 3600 capped at the new intermediate's end


# -- the keeper -----------------------------------------------------------------------------------

BASE = {"now": 1060.0, "issued_at": 1000.0, "not_after": 1100.0, "signer": "i", "active": "i",
        "sent_generation": 1, "generation": 1}


@pytest.mark.parametrize(("change", "action"), [
    ({}, TickAction.REISSUE),  # half-life, the signer can give more
    ({"signer_not_after": 1200.0}, TickAction.REISSUE),
    ({"signer_not_after": 1100.0}, TickAction.KEEP),  # cut at the intermediate's end: nothing to gain
    ({"signer_not_after": 1100.0, "generation": 2}, TickAction.REBUNDLE),
    ({"signer_not_after": 1100.0, "active": "j"}, TickAction.REISSUE),  # a renewed intermediate
])
def test_decide_tick_with_an_intermediate(change: dict[str, object], action: TickAction) -> None:
    assert decide_tick(**{**BASE, **change}) is action  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_keeper_in_intermediate_mode(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b", ttl_s=5000.0)
    clock = Clock(NOW)
    keeper = IdentityKeeper(b.ca_dir, WEB, None, clock)
    first = keeper.current()
    assert len(certs(first.cert_pem)) == 2 and first.bundle_pem == root.bundle_pem()
    assert first.not_after == NOW + 3600
    clock.t = NOW + 1000
    assert keeper.tick() is None
    clock.t = NOW + 1900  # past half-life: a new one, cut at the intermediate's end
    second = keeper.tick()
    assert second is not None and second.not_after == NOW + 5000
    clock.t = NOW + 4000  # past half-life again, but the intermediate cannot give more
    assert keeper.tick() is None
    key = new_key()
    ic = root.issue_intermediate("b", key.public_key(), now=clock.t)
    b.install_intermediate(root.bundle_pem(), ic.cert_pem, key_pem(key), now=clock.t)
    third = keeper.tick()
    assert third is not None and certs(third.cert_pem)[1].serial_number == int(ic.serial, 16)
    assert third.not_after == NOW + 4000 + 3600
    assert keeper.tick() is None


def test_keeper_reissues_when_the_root_holder_rotates(root: CertAuthority, tmp_path: Path) -> None:
    root.use_own_intermediate("a", now=NOW)
    clock = Clock(NOW)
    keeper = IdentityKeeper(root.ca_dir, WEB, None, clock)
    first = keeper.current()
    root.rotate_begin(now=NOW)
    rebundled = keeper.tick()
    assert rebundled is not None and rebundled.cert_pem == first.cert_pem and rebundled.bundle_pem.count("BEGIN") == 2
    root.rotate_commit(now=NOW)
    fresh = keeper.tick()
    assert fresh is not None and certs(fresh.cert_pem)[1] != certs(first.cert_pem)[1]
    assert openssl_verify(tmp_path, fresh.bundle_pem, fresh.cert_pem, NOW) == ""


def test_update_roots_follows_the_root_holders_rotation(root: CertAuthority, tmp_path: Path) -> None:
    b = host_ca(root, tmp_path, "b")
    assert b.update_roots(root.bundle_pem(), now=NOW) is False and b.generation == 1
    pending = root.rotate_begin(now=NOW)
    assert b.update_roots(root.bundle_pem(), now=NOW) is True
    assert (b.generation, b.bundle_pem()) == (2, root.bundle_pem())
    # A root set without the root that signed our intermediate would strand this host's pods.
    with pytest.raises(UserError, match="not signed by any"):
        b.update_roots(certs_pem(root, pending), now=NOW)
    assert b.generation == 2 and b.bundle_pem() == root.bundle_pem()
    with pytest.raises(CAError, match="holds the mesh root"):
        root.update_roots(root.bundle_pem(), now=NOW)


def test_a_failed_write_leaves_no_half_made_ca(root: CertAuthority, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import meshns.mtls.ca_files as ca_files
    real = ca_files.write_atomic

    def failing(path: Path, data: bytes, mode_: int) -> None:
        if path.name.endswith(".pem") and path.name.startswith("intermediate-"):
            raise CAError(f"{path}: No space left on device")
        real(path, data, mode_)

    monkeypatch.setattr(ca_files, "write_atomic", failing)
    with pytest.raises(CAError, match="No space"):
        host_ca(root, tmp_path, "b")
    assert not (tmp_path / "b" / "ca").exists()
