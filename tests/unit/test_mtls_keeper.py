"""Rotation scheduling and the identity keeper, with an injected clock."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from meshns.mtls.ca import CertAuthority
from meshns.mtls.identity import IdentityError, SpiffeId
from meshns.mtls.keeper import IdentityKeeper, TickAction, decide_tick
from meshns.mtls.rotation import ROTATE_AT, next_rotation, rotation_due

T0 = 1_700_000_000.0
WEB = SpiffeId("cluster.local", "shop", "web")


@pytest.mark.parametrize(("issued_at", "not_after", "fraction", "at"), [
    (1000.0, 1100.0, ROTATE_AT, 1050.0),
    (1000.0, 1100.0, 0.8, 1080.0),
    (1000.0, 1100.0, 1.0, 1100.0),
    (1000.0, 1000.0, ROTATE_AT, 1000.0),  # issued already expired: due at once
    (1000.0, 900.0, ROTATE_AT, 1000.0),
])
def test_next_rotation(issued_at: float, not_after: float, fraction: float, at: float) -> None:
    assert next_rotation(issued_at, not_after, fraction) == pytest.approx(at)


@pytest.mark.parametrize(("now", "due"), [(999.0, False), (1049.9, False), (1050.0, True), (1200.0, True)])
def test_rotation_due(now: float, due: bool) -> None:
    assert rotation_due(1000.0, 1100.0, now) is due


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_rotation_fraction_must_be_a_fraction(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        next_rotation(0.0, 10.0, fraction)


BASE = {"now": 1010.0, "issued_at": 1000.0, "not_after": 1100.0, "signer": "a", "active": "a",
        "sent_generation": 1, "generation": 1}


@pytest.mark.parametrize(("change", "action"), [
    ({}, TickAction.KEEP),
    ({"now": 1049.0}, TickAction.KEEP),
    ({"now": 1050.0}, TickAction.REISSUE),
    ({"generation": 2}, TickAction.REBUNDLE),  # rotate_begin or prune: same signer
    ({"generation": 2, "active": "b"}, TickAction.REISSUE),  # rotate_commit
    ({"active": "b"}, TickAction.REISSUE),  # the root set moved while we were issuing
    ({"generation": 2, "now": 1060.0}, TickAction.REISSUE),
])
def test_decide_tick(change: dict[str, object], action: TickAction) -> None:
    assert decide_tick(**{**BASE, **change}) is action  # type: ignore[arg-type]


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def issuer_cn(pem: str) -> str:
    attr = x509.load_pem_x509_certificate(pem.encode()).issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0]
    return str(attr.value)


def bundle_serials(pem: str) -> list[str]:
    return [format(c.serial_number, "x") for c in x509.load_pem_x509_certificates(pem.encode())]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[CertAuthority, IdentityKeeper, Clock]:
    ca = CertAuthority.ensure(tmp_path / "ca", workload_ttl_s=1000.0, now=T0)
    clock = Clock(T0)
    return ca, IdentityKeeper(tmp_path / "ca", WEB, 100.0, clock=clock), clock


def test_first_issue(setup: tuple[CertAuthority, IdentityKeeper, Clock]) -> None:
    ca, keeper, _ = setup
    w = keeper.current()
    assert w.identity == WEB.uri
    assert (w.issued_at, w.not_before, w.not_after) == (T0, T0 - 60, T0 + 100)
    assert bundle_serials(w.bundle_pem) == [ca.active_serial]
    assert "PRIVATE KEY" in w.key_pem
    assert keeper.current() is w  # no re-issue on a second call


def test_no_reissue_before_half_life_then_reissue(setup: tuple[CertAuthority, IdentityKeeper, Clock]) -> None:
    _, keeper, clock = setup
    first = keeper.current()
    for t in (1.0, 30.0, 49.9):
        clock.t = T0 + t
        assert keeper.tick() is None
    clock.t = T0 + 50.0
    second = keeper.tick()
    assert second is not None
    assert second.serial != first.serial and second.key_pem != first.key_pem
    assert (second.issued_at, second.not_after) == (T0 + 50.0, T0 + 150.0)
    assert keeper.current() is second
    clock.t = T0 + 99.0
    assert keeper.tick() is None


def test_tick_before_current_issues(setup: tuple[CertAuthority, IdentityKeeper, Clock]) -> None:
    _, keeper, _ = setup
    w = keeper.tick()
    assert w is not None and keeper.current() is w


def test_default_ttl_is_the_cas(tmp_path: Path) -> None:
    CertAuthority.ensure(tmp_path / "ca", workload_ttl_s=500.0, now=T0)
    w = IdentityKeeper(tmp_path / "ca", WEB, None, clock=lambda: T0).current()
    assert w.not_after == T0 + 500.0


def test_creates_the_ca_on_first_use(tmp_path: Path) -> None:
    w = IdentityKeeper(tmp_path / "ca", WEB, 60.0, clock=lambda: T0).current()
    assert CertAuthority.load(tmp_path / "ca").trust_domain == "cluster.local" and w.identity == WEB.uri


def test_refuses_an_identity_outside_the_trust_domain(tmp_path: Path) -> None:
    CertAuthority.ensure(tmp_path / "ca", "example.org", now=T0)
    with pytest.raises(IdentityError, match="trust domain"):
        IdentityKeeper(tmp_path / "ca", WEB, 60.0, clock=lambda: T0).current()


def test_root_rotation(setup: tuple[CertAuthority, IdentityKeeper, Clock]) -> None:
    ca, keeper, clock = setup
    assert keeper.generation == 0
    first = keeper.current()
    old_root = ca.active_serial
    assert keeper.generation == 1

    clock.t = T0 + 10
    new_root = ca.rotate_begin(now=clock.t)
    rebundled = keeper.tick()
    assert rebundled is not None
    # Same certificate and key, the pending root now trusted; the signer does not change yet.
    assert (rebundled.serial, rebundled.cert_pem, rebundled.key_pem) == (first.serial, first.cert_pem, first.key_pem)
    assert bundle_serials(rebundled.bundle_pem) == [old_root, new_root]
    assert keeper.generation == ca.generation == 2  # what `meshns ca rotate` waits for
    assert keeper.tick() is None

    clock.t = T0 + 20
    ca.rotate_commit(now=clock.t)
    fresh = keeper.tick()
    assert fresh is not None and fresh.serial != first.serial and fresh.key_pem != first.key_pem
    assert issuer_cn(fresh.cert_pem) == f"meshns root {new_root[:12]}"
    assert bundle_serials(fresh.bundle_pem) == [new_root, old_root]  # old one retiring, still trusted
    assert fresh.issued_at == T0 + 20 and keeper.generation == 3
    assert keeper.tick() is None



def test_prune_on_tick_rebundles(tmp_path: Path) -> None:
    # Past retire_at the keeper prunes the old root and sends the smaller bundle with the same cert.
    ca = CertAuthority.ensure(tmp_path / "ca", workload_ttl_s=100.0, now=T0)
    clock = Clock(T0)
    keeper = IdentityKeeper(tmp_path / "ca", WEB, 10_000.0, clock=clock)
    ca.rotate_begin(now=T0)
    ca.rotate_commit(now=T0)
    w = keeper.current()
    assert len(bundle_serials(w.bundle_pem)) == 2
    clock.t = T0 + 99
    assert keeper.tick() is None
    clock.t = T0 + 100
    pruned = keeper.tick()
    assert pruned is not None and pruned.serial == w.serial
    assert bundle_serials(pruned.bundle_pem) == [ca.active_serial]
    assert CertAuthority.load(tmp_path / "ca").generation == 4
    assert len(list((tmp_path / "ca").glob("root-*.key"))) == 1


def test_reissue_when_a_whole_rotation_happened_between_ticks(
        setup: tuple[CertAuthority, IdentityKeeper, Clock]) -> None:
    ca, keeper, clock = setup
    first = keeper.current()
    other = CertAuthority.load(ca.ca_dir)
    other.rotate_begin(now=T0)
    new_root = other.rotate_commit(now=T0)  # the keeper never saw the pending state
    clock.t = T0 + 1
    w = keeper.tick()
    assert w is not None and w.serial != first.serial
    assert issuer_cn(w.cert_pem) == f"meshns root {new_root[:12]}"
