"""The CA on disk: layout and modes, idempotent creation, the root set through a rotation, leaf contents."""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshns.errors import SystemFailure, UserError
from meshns.mtls.ca import CAError, CertAuthority, key_pem, new_key
from meshns.mtls.identity import SpiffeId

T0 = 1_700_000_000.0
WEB = SpiffeId("cluster.local", "shop", "web")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def bundle_serials(pem: str) -> list[str]:
    return [format(c.serial_number, "x") for c in x509.load_pem_x509_certificates(pem.encode())]


def test_layout_and_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "state" / "ca"
    old = os.umask(0o022)
    try:
        ca = CertAuthority.ensure(ca_dir, "example.org", 3600.0, now=T0)
    finally:
        os.umask(old)
    serial = ca.roots[0][0]
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / f"root-{serial}.key") == 0o600
    assert mode(ca_dir / f"root-{serial}.pem") == 0o644
    assert mode(ca_dir / "ca.json") == 0o644
    doc = json.loads((ca_dir / "ca.json").read_text())
    assert doc == {"trust_domain": "example.org", "workload_ttl_s": 3600.0, "generation": 1,
                   "roots": [{"serial": serial, "state": "active", "retire_at": None}]}
    assert sorted(p.name for p in ca_dir.iterdir()) == [".lock", "ca.json", f"root-{serial}.key", f"root-{serial}.pem"]
    assert (ca.trust_domain, ca.workload_ttl_s, ca.generation) == ("example.org", 3600.0, 1)
    assert ca.roots == [(serial, "active", None)]


def test_key_files_are_private_even_under_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        ca = CertAuthority.ensure(tmp_path / "ca", now=T0)
        ca.rotate_begin(now=T0)
    finally:
        os.umask(old)
    keys = list((tmp_path / "ca").glob("root-*.key"))
    assert len(keys) == 2 and all(mode(k) == 0o600 for k in keys)
    assert mode(tmp_path / "ca") == 0o700


def test_root_certificate(tmp_path: Path) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", now=T0)
    (root,) = x509.load_pem_x509_certificates(ca.bundle_pem().encode())
    serial = ca.roots[0][0]
    assert format(root.serial_number, "x") == serial
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshns"
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"meshns root {serial[:12]}"
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 1  # room for per-host intermediates
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    years = (root.not_valid_after_utc - root.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1


def test_leaf_certificate(tmp_path: Path) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", workload_ttl_s=3600.0, now=T0)
    key = new_key()
    got = ca.issue(WEB, key.public_key(), now=T0 + 0.7)
    leaf = x509.load_pem_x509_certificate(got.cert_pem.encode())
    (root,) = x509.load_pem_x509_certificates(ca.bundle_pem().encode())
    leaf.verify_directly_issued_by(root)
    assert (got.not_before, got.not_after, got.issued_at) == (T0 - 60, T0 + 3600, T0 + 0.7)
    assert leaf.not_valid_before_utc.timestamp() == got.not_before
    assert leaf.not_valid_after_utc.timestamp() == got.not_after
    assert format(leaf.serial_number, "x") == got.serial
    assert len(leaf.subject) == 0
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.UniformResourceIdentifier) == [WEB.uri]
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment and not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


@pytest.mark.parametrize(("kwargs", "nb", "na"), [
    ({"ttl_s": 10.0}, T0 - 60, T0 + 10),
    ({"ttl_s": 1.0}, T0 - 60, T0 + 1),
    ({"not_before": T0 - 7200, "not_after": T0 - 3600}, T0 - 7200, T0 - 3600),
    ({"not_after": T0 + 5}, T0 - 60, T0 + 5),
])
def test_issue_validity(tmp_path: Path, kwargs: dict[str, float], nb: float, na: float) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", now=T0)
    got = ca.issue(WEB, new_key().public_key(), now=T0, **kwargs)
    assert (got.not_before, got.not_after) == (nb, na)


@pytest.mark.parametrize("kwargs", [{"ttl_s": 0.5}, {"ttl_s": -1.0}, {"ttl_s": float("inf")},
                                    {"not_before": T0, "not_after": T0}])
def test_issue_rejects_bad_validity(tmp_path: Path, kwargs: dict[str, float]) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", now=T0)
    with pytest.raises(UserError):
        ca.issue(WEB, new_key().public_key(), now=T0, **kwargs)


def test_issue_refuses_a_foreign_trust_domain(tmp_path: Path) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", now=T0)
    with pytest.raises(UserError, match="trust domain"):
        ca.issue(SpiffeId("other.org", "a", "b"), new_key().public_key(), now=T0)


def test_ensure_is_idempotent_and_keeps_the_existing_ca(tmp_path: Path) -> None:
    first = CertAuthority.ensure(tmp_path / "ca", "example.org", 3600.0, now=T0)
    again = CertAuthority.ensure(tmp_path / "ca", "other.org", 60.0, now=T0 + 1)
    assert again.roots == first.roots and again.generation == 1
    assert (again.trust_domain, again.workload_ttl_s) == ("example.org", 3600.0)
    assert len(list((tmp_path / "ca").glob("root-*.key"))) == 1


def test_ensure_races_create_one_ca(tmp_path: Path) -> None:
    # flock is per open file, so threads with their own lock fds serialise like processes would.
    results: list[CertAuthority] = []
    threads = [threading.Thread(target=lambda: results.append(CertAuthority.ensure(tmp_path / "ca")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len({tuple(r.roots) for r in results}) == 1
    assert len(list((tmp_path / "ca").glob("root-*"))) == 2


def test_init(tmp_path: Path) -> None:
    ca = CertAuthority.init(tmp_path / "ca", "example.org", 3600.0, now=T0)
    assert CertAuthority.init(tmp_path / "ca", "example.org", 60.0).roots == ca.roots
    with pytest.raises(UserError, match=r"'example\.org' already exists"):
        CertAuthority.init(tmp_path / "ca", "other.org", 3600.0)


@pytest.mark.parametrize(("td", "ttl"), [("Bad Domain", 3600.0), ("", 3600.0), ("ok.org", 0.0)])
def test_ensure_validates_its_arguments(tmp_path: Path, td: str, ttl: float) -> None:
    with pytest.raises(UserError):
        CertAuthority.ensure(tmp_path / "ca", td, ttl)
    assert not CertAuthority.exists(tmp_path / "ca")


def test_exists_and_load(tmp_path: Path) -> None:
    assert not CertAuthority.exists(tmp_path / "ca")
    with pytest.raises(CAError, match=re.escape(str(tmp_path / "ca"))):
        CertAuthority.load(tmp_path / "ca")
    ca = CertAuthority.ensure(tmp_path / "ca", "example.org", now=T0)
    assert CertAuthority.exists(tmp_path / "ca")
    loaded = CertAuthority.load(tmp_path / "ca")
    assert (loaded.trust_domain, loaded.roots, loaded.generation) == ("example.org", ca.roots, 1)


@pytest.mark.parametrize("text", [
    "", "{", "[]", '{"trust_domain": "x"}',
    '{"trust_domain": "x", "workload_ttl_s": 60, "generation": 1, "roots": []}',
    '{"trust_domain": "x", "workload_ttl_s": 60, "generation": 1, "roots": [{"serial": "../etc", "state": "active", '
    '"retire_at": null}]}',
    '{"trust_domain": "x", "workload_ttl_s": 60, "generation": 1, "roots": [{"serial": "ab", "state": "retiring", '
    '"retire_at": null}]}',
    '{"trust_domain": "x", "workload_ttl_s": 60, "generation": true, "roots": [{"serial": "ab", "state": "active", '
    '"retire_at": null}]}',
    '{"trust_domain": "X", "workload_ttl_s": 60, "generation": 1, "roots": [{"serial": "ab", "state": "active", '
    '"retire_at": null}]}',
])
def test_corrupt_state_is_a_ca_error_naming_the_file(tmp_path: Path, text: str) -> None:
    ca_dir = tmp_path / "ca"
    CertAuthority.ensure(ca_dir, now=T0)
    (ca_dir / "ca.json").write_text(text)
    with pytest.raises(CAError, match=re.escape(str(ca_dir / "ca.json"))) as exc:
        CertAuthority.load(ca_dir)
    assert isinstance(exc.value, SystemFailure) and exc.value.exit_code == 3


def test_corrupt_key_error_never_shows_key_material(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca = CertAuthority.ensure(ca_dir, now=T0)
    key_file = ca_dir / f"root-{ca.roots[0][0]}.key"
    secret = key_file.read_text()
    key_file.write_text(secret[:-80] + "garbage\n-----END PRIVATE KEY-----\n")
    fresh = CertAuthority.load(ca_dir)  # a new handle has no cached key
    with pytest.raises(CAError, match=re.escape(str(key_file))) as exc:
        fresh.issue(WEB, new_key().public_key(), now=T0)
    body = secret.splitlines()[1]
    assert body not in str(exc.value) and exc.value.__suppress_context__  # parser error not chained
    assert body not in repr(exc.value.args)


def test_root_set_through_a_rotation(tmp_path: Path) -> None:
    ca = CertAuthority.ensure(tmp_path / "ca", workload_ttl_s=100.0, now=T0)
    (a, _, _), = ca.roots
    assert bundle_serials(ca.bundle_pem(T0)) == [a]

    b = ca.rotate_begin(now=T0 + 1)
    assert ca.generation == 2 and ca.roots == [(a, "active", None), (b, "pending", None)]
    assert bundle_serials(ca.bundle_pem(T0 + 1)) == [a, b]
    # The pending root does not sign yet.
    leaf = x509.load_pem_x509_certificate(ca.issue(WEB, new_key().public_key(), now=T0 + 1).cert_pem.encode())
    assert leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"meshns root {a[:12]}"
    with pytest.raises(UserError, match="already pending"):
        ca.rotate_begin(now=T0 + 2)
    assert ca.generation == 2

    assert ca.rotate_commit(now=T0 + 10) == b
    assert ca.generation == 3 and ca.roots == [(a, "retiring", T0 + 110), (b, "active", None)]
    assert bundle_serials(ca.bundle_pem(T0 + 10)) == [b, a]
    assert bundle_serials(ca.bundle_pem(T0 + 110)) == [b]  # past retire_at: no longer trusted
    leaf = x509.load_pem_x509_certificate(ca.issue(WEB, new_key().public_key(), now=T0 + 10).cert_pem.encode())
    assert leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"meshns root {b[:12]}"
    with pytest.raises(UserError, match="no root rotation is pending"):
        ca.rotate_commit(now=T0 + 11)

    assert ca.prune(now=T0 + 109) == 0 and ca.generation == 3
    assert (tmp_path / "ca" / f"root-{a}.key").exists()
    assert ca.prune(now=T0 + 110) == 1 and ca.generation == 4
    assert ca.roots == [(b, "active", None)]
    assert not (tmp_path / "ca" / f"root-{a}.key").exists() and not (tmp_path / "ca" / f"root-{a}.pem").exists()
    assert bundle_serials(ca.bundle_pem(T0 + 110)) == [b]
    assert CertAuthority.load(tmp_path / "ca").roots == ca.roots


def test_changes_by_another_handle_are_seen(tmp_path: Path) -> None:
    mine = CertAuthority.ensure(tmp_path / "ca", now=T0)
    other = CertAuthority.load(tmp_path / "ca")
    b = other.rotate_begin(now=T0)
    assert mine.generation == 1
    assert mine.refresh() is True and mine.generation == 2 and mine.refresh() is False
    other.rotate_commit(now=T0)
    assert bundle_serials(mine.bundle_pem(T0))[0] == b and mine.active_serial == b
    with pytest.raises(UserError):  # mine re-reads before deciding, so it sees nothing pending
        mine.rotate_commit(now=T0)


def test_refresh_reads_ca_json_only_when_it_was_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshns.mtls import ca as ca_mod

    mine = CertAuthority.ensure(tmp_path / "ca", now=T0)
    reads: list[Path] = []
    real = ca_mod.read_state

    def counting(ca_dir: Path) -> ca_mod.CaState:
        reads.append(ca_dir)
        return real(ca_dir)

    monkeypatch.setattr(ca_mod, "read_state", counting)
    assert mine.refresh() is False and len(reads) == 1  # the first refresh has nothing to compare with
    assert mine.refresh() is False and mine.refresh() is False and len(reads) == 1
    CertAuthority.load(tmp_path / "ca").rotate_begin(now=T0)
    before = len(reads)
    assert mine.refresh() is True and mine.generation == 2 and len(reads) == before + 1
    # A rewrite with the same bytes is still a new file: read again (and nothing changed).
    state = tmp_path / "ca" / "ca.json"
    text = state.read_text()
    tmp = state.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, state)
    assert mine.refresh() is False and len(reads) == before + 2
    assert mine.refresh() is False and len(reads) == before + 2


def test_key_pem_is_unencrypted_pkcs8() -> None:
    pem = key_pem(new_key())
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
