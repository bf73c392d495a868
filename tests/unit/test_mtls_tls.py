"""Mesh TLS with real TLS 1.3 handshakes in memory (MemoryBIO pairs), the peer checks and the pipe message."""

from __future__ import annotations

import json
import os
import re
import ssl
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from meshns.mtls.ca import CertAuthority, key_pem, new_key
from meshns.mtls.identity import SpiffeId
from meshns.mtls.tls import (
    MESH_ALPN,
    MESH_ALPN_H2,
    PeerRejected,
    WorkloadTls,
    client_context,
    decode_identity,
    encode_identity,
    peer_identity,
    server_context,
    verify_peer,
)

WEB = SpiffeId("cluster.local", "shop", "web")
DB = SpiffeId("cluster.local", "shop", "db")


def workload(ca: CertAuthority, spiffe: SpiffeId = WEB, *, bundle: str | None = None,
             **issue: float) -> WorkloadTls:
    key = new_key()
    c = ca.issue(spiffe, key.public_key(), **issue)
    return WorkloadTls(spiffe.uri, c.cert_pem, key_pem(key), ca.bundle_pem() if bundle is None else bundle,
                       c.serial, c.not_before, c.not_after, c.issued_at)


@dataclass
class Handshake:
    client: ssl.SSLObject
    server: ssl.SSLObject
    client_error: ssl.SSLError | None
    server_error: ssl.SSLError | None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> Handshake:
    """Pump bytes between a client and a server until both finish or one fails, then exchange a
    message each way (a TLS 1.3 client finishes before the server has judged its certificate; it
    learns of a rejection only when it next reads; its read also takes the server's session
    ticket, so ``client.session`` can then be resumed). ``session``: the client offers it."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, session=session)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    sides = [(client, False), (server, False)]
    errors: list[ssl.SSLError | None] = [None, None]

    def pump() -> bool:
        a, b = c_out.read(), s_out.read()
        s_in.write(a)
        c_in.write(b)
        return bool(a or b)

    for _ in range(20):
        for i, (obj, done) in enumerate(sides):
            if done or errors[i] is not None:
                continue
            try:
                obj.do_handshake()
                sides[i] = (obj, True)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                errors[i] = exc
        if not pump() and all(d or e for (_, d), e in zip(sides, errors, strict=True)):
            break
    if errors != [None, None]:
        pump()  # the failed side's alert reaches the side that thought it had finished
        for i, (obj, done) in enumerate(sides):
            if done and errors[i] is None:
                try:
                    obj.read(1)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError as exc:
                    errors[i] = exc
    else:
        for i, (writer, reader) in enumerate([(client, server), (server, client)]):
            try:
                writer.write(b"ping")
                pump()
                assert reader.read(4) == b"ping"
            except ssl.SSLError as exc:  # the reader judged the writer's certificate and refused it
                errors[1 - i] = exc
                break
    return Handshake(client, server, errors[0], errors[1])


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority.ensure(tmp_path / "ca", workload_ttl_s=3600.0)


def test_mutual_tls_both_sides_see_the_peer_spiffe_id(ca: CertAuthority) -> None:
    web, db = workload(ca, WEB), workload(ca, DB)
    hs = handshake(client_context(web), server_context(db))
    assert hs.ok, (hs.client_error, hs.server_error)
    assert hs.client.version() == hs.server.version() == "TLSv1.3"
    assert hs.client.selected_alpn_protocol() == hs.server.selected_alpn_protocol() == MESH_ALPN
    assert peer_identity(hs.client.getpeercert()) == DB.uri
    assert peer_identity(hs.server.getpeercert()) == WEB.uri
    assert verify_peer(hs.client.getpeercert(), expected=DB.uri) == DB.uri


def test_alpn_carries_http2_between_sidecars(ca: CertAuthority) -> None:
    web, db = workload(ca, WEB), workload(ca, DB)
    hs = handshake(client_context(web, h2=True), server_context(db))
    assert hs.ok and hs.client.selected_alpn_protocol() == hs.server.selected_alpn_protocol() == MESH_ALPN_H2
    # A server that knows only "meshns" still agrees with an HTTP/2 client (which then sniffs).
    old_server = server_context(db)
    old_server.set_alpn_protocols([MESH_ALPN])
    hs = handshake(client_context(web, h2=True), old_server)
    assert hs.ok and hs.server.selected_alpn_protocol() == MESH_ALPN


def test_certificates_pass_openssl_strict_mode(ca: CertAuthority) -> None:
    cctx, sctx = client_context(workload(ca, WEB)), server_context(workload(ca, DB))
    for ctx in (cctx, sctx):
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    hs = handshake(cctx, sctx)
    assert hs.ok, (hs.client_error, hs.server_error)


def test_context_settings(ca: CertAuthority) -> None:
    w = workload(ca)
    for ctx in (client_context(w), server_context(w)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert len(ctx.get_ca_certs()) == 1


def test_contexts_leave_no_fd_behind(ca: CertAuthority) -> None:
    w = workload(ca)
    before = set(os.listdir("/proc/self/fd"))
    server_context(w)
    client_context(w)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_client_without_certificate_is_refused(ca: CertAuthority) -> None:
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=ca.bundle_pem())
    hs = handshake(bare, server_context(workload(ca, DB)))
    assert hs.server_error is not None and "certificate" in str(hs.server_error)
    assert hs.client_error is not None  # the server's alert


def test_client_offering_no_alpn_still_works(ca: CertAuthority, tmp_path: Path) -> None:
    w = workload(ca, WEB)
    # A hand-made foreign client from files; the mesh contexts themselves never write a key.
    (tmp_path / "c.pem").write_text(w.cert_pem)
    (tmp_path / "k.pem").write_text(w.key_pem)
    plain = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain.check_hostname = False
    plain.load_verify_locations(cadata=w.bundle_pem)
    plain.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    hs = handshake(plain, server_context(workload(ca, DB)))
    assert hs.ok, (hs.client_error, hs.server_error)
    assert hs.server.selected_alpn_protocol() is None
    assert peer_identity(hs.server.getpeercert()) == WEB.uri


def test_tls12_client_is_refused(ca: CertAuthority) -> None:
    cctx = client_context(workload(ca, WEB))
    cctx.minimum_version = cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    hs = handshake(cctx, server_context(workload(ca, DB)))
    assert hs.server_error is not None and hs.client_error is not None


def test_expired_client_certificate_is_refused(ca: CertAuthority) -> None:
    now = time.time()
    old = workload(ca, WEB, not_before=now - 7200, not_after=now - 3600)
    hs = handshake(client_context(old), server_context(workload(ca, DB)))
    assert isinstance(hs.server_error, ssl.SSLCertVerificationError)
    assert "expired" in hs.server_error.verify_message
    assert hs.client_error is not None


def test_expired_server_certificate_is_refused(ca: CertAuthority) -> None:
    now = time.time()
    old = workload(ca, DB, not_before=now - 7200, not_after=now - 3600)
    hs = handshake(client_context(workload(ca, WEB)), server_context(old))
    assert isinstance(hs.client_error, ssl.SSLCertVerificationError)
    assert "expired" in hs.client_error.verify_message


def test_certificate_from_another_ca_is_refused(ca: CertAuthority, tmp_path: Path) -> None:
    other = CertAuthority.ensure(tmp_path / "other-ca")  # same trust domain, different root
    # A foreign client (with a bundle that trusts our server) is refused by our server...
    intruder = workload(other, WEB, bundle=ca.bundle_pem())
    hs = handshake(client_context(intruder), server_context(workload(ca, DB)))
    assert isinstance(hs.server_error, ssl.SSLCertVerificationError)
    # ...and our client refuses a foreign server.
    hs = handshake(client_context(workload(ca, WEB)), server_context(workload(other, DB, bundle=ca.bundle_pem())))
    assert isinstance(hs.client_error, ssl.SSLCertVerificationError)


def test_verify_peer_secure_naming_and_revocation(ca: CertAuthority) -> None:
    hs = handshake(client_context(workload(ca, WEB)), server_context(workload(ca, DB)))
    assert hs.ok
    server_cert = hs.client.getpeercert()
    with pytest.raises(PeerRejected, match=re.escape(f"expected {WEB.uri}, peer presented {DB.uri}")) as exc:
        verify_peer(server_cert, expected=WEB.uri)
    assert exc.value.reason == f"expected {WEB.uri}, peer presented {DB.uri}"
    with pytest.raises(PeerRejected, match=re.escape(f"identity {DB.uri} is revoked")):
        verify_peer(server_cert, expected=DB.uri, revoked={DB.uri})
    assert verify_peer(server_cert, revoked=[WEB.uri]) == DB.uri


def test_a_resumed_session_shows_both_peers_as_a_full_handshake_does(ca: CertAuthority) -> None:
    client_ctx, server_ctx = client_context(workload(ca, WEB)), server_context(workload(ca, DB))
    assert server_ctx.num_tickets == 1
    full = handshake(client_ctx, server_ctx)
    assert full.ok and not full.client.session_reused
    session = full.client.session
    assert session is not None and session.has_ticket
    # The same ticket serves several connections (a sidecar dials many at once), and each
    # resumed connection brings a fresh ticket of its own (its session's id is new), which the
    # client sidecar keeps for the next dial (TlsStream.want_ticket tells them apart by id).
    offered = [session]
    for fresh in (False, False, True):
        hs = handshake(client_ctx, server_ctx, offered[-1] if fresh else session)
        assert hs.ok, (hs.client_error, hs.server_error)
        assert hs.client.session_reused and hs.server.session_reused
        # What the sidecars check after every handshake is still there to check.
        assert verify_peer(hs.client.getpeercert(), expected=DB.uri, valid_at=time.time()) == DB.uri
        assert verify_peer(hs.server.getpeercert(), valid_at=time.time()) == WEB.uri
        with pytest.raises(PeerRejected, match="revoked"):
            verify_peer(hs.server.getpeercert(), revoked={WEB.uri}, valid_at=time.time())
        new = hs.client.session
        assert new is not None and new.has_ticket and new.id not in {s.id for s in offered}
        offered.append(new)


def test_a_ticket_dies_with_the_server_context_that_sealed_it(ca: CertAuthority, tmp_path: Path) -> None:
    """A rotation or a bundle update builds a new server context: an old ticket cannot be opened,
    so the client is verified afresh (and one the new bundle does not trust is refused)."""
    client_ctx, db = client_context(workload(ca, WEB)), workload(ca, DB)
    session = handshake(client_ctx, server_context(db)).client.session
    hs = handshake(client_ctx, server_context(db), session)
    assert hs.ok and not hs.client.session_reused and not hs.server.session_reused
    other = CertAuthority.ensure(tmp_path / "other-ca")  # a bundle without our root
    hs = handshake(client_ctx, server_context(workload(ca, DB, bundle=other.bundle_pem())), session)
    assert isinstance(hs.server_error, ssl.SSLCertVerificationError)


def test_a_session_cannot_be_offered_on_another_client_context(ca: CertAuthority) -> None:
    """The client side's counterpart (dataplane.tls_sessions keys its cache by generation too)."""
    session = handshake(client_context(workload(ca, WEB)), server_context(workload(ca, DB))).client.session
    with pytest.raises(ValueError, match="different SSLContext"):
        handshake(client_context(workload(ca, WEB)), server_context(workload(ca, DB)), session)


@pytest.mark.parametrize(("at", "refused"), [
    (0.0, None),
    (-60.0, None),  # issued 60 s back-dated for clock skew
    (-61.0, "not yet valid"),
    (3600.0, None),  # the last second (whole seconds) is still valid, as OpenSSL has it
    (3601.0, "expired"),
    (86400.0, "expired"),
])
def test_verify_peer_checks_the_validity_period_when_asked(ca: CertAuthority, at: float, refused: str | None) -> None:
    """For resumed sessions, whose chain (and so period) OpenSSL does not verify again."""
    now = float(int(time.time()))
    hs = handshake(client_context(workload(ca, WEB)), server_context(workload(ca, DB, now=now, ttl_s=3600)))
    assert hs.ok
    cert = hs.client.getpeercert()
    assert verify_peer(cert) == DB.uri  # not asked: no period check
    if refused is None:
        assert verify_peer(cert, valid_at=now + at) == DB.uri
    else:
        with pytest.raises(PeerRejected, match=refused):
            verify_peer(cert, valid_at=now + at)


def test_new_root_is_trusted_only_by_contexts_with_the_new_bundle(ca: CertAuthority) -> None:
    old_bundle = ca.bundle_pem()
    ca.rotate_begin()
    new_bundle = ca.bundle_pem()
    ca.rotate_commit()
    signed_by_new = workload(ca, WEB)  # the formerly pending root signs now
    hs = handshake(client_context(signed_by_new), server_context(workload(ca, DB, bundle=new_bundle)))
    assert hs.ok, (hs.client_error, hs.server_error)
    hs = handshake(client_context(signed_by_new), server_context(workload(ca, DB, bundle=old_bundle)))
    assert isinstance(hs.server_error, ssl.SSLCertVerificationError)


def test_mid_rotation_old_and_new_certificates_interoperate(ca: CertAuthority) -> None:
    web_old = workload(ca, WEB)
    ca.rotate_begin()
    db_old = replace(workload(ca, DB), bundle_pem=ca.bundle_pem())  # rebundled: still the old signer
    assert handshake(client_context(web_old), server_context(db_old)).ok
    ca.rotate_commit()
    now = time.time()
    web_new = workload(ca, WEB)
    db_bundle = replace(db_old, bundle_pem=ca.bundle_pem())
    for client, server in [(web_new, db_bundle), (replace(web_old, bundle_pem=ca.bundle_pem()), workload(ca, DB))]:
        hs = handshake(client_context(client), server_context(server))
        assert hs.ok, (hs.client_error, hs.server_error)
    # Past retire_at the old root is pruned: certificates it signed are no longer accepted.
    assert ca.prune(now=now + ca.workload_ttl_s + 1) == 1
    bundle = ca.bundle_pem()
    hs = handshake(client_context(replace(web_old, bundle_pem=bundle)), server_context(replace(web_new, bundle_pem=bundle)))
    assert isinstance(hs.server_error, ssl.SSLCertVerificationError)


# --- peer_identity on getpeercert() shapes -------------------------------------------------------------------------

@pytest.mark.parametrize(("peercert", "want"), [
    ({"subjectAltName": (("URI", WEB.uri),)}, WEB.uri),
    ({"subject": (), "subjectAltName": (("DNS", "web"), ("URI", "https://x"), ("URI", WEB.uri))}, WEB.uri),
    (None, "no client certificate"),
    ({}, "no client certificate"),
    ({"subject": ((("commonName", "web"),),)}, "certificate has no SPIFFE ID"),
    ({"subjectAltName": (("DNS", "web.shop"),)}, "certificate has no SPIFFE ID"),
    ({"subjectAltName": (("URI", WEB.uri), ("URI", DB.uri))}, "certificate has several SPIFFE IDs"),
])
def test_peer_identity(peercert: dict[str, object] | None, want: str) -> None:
    if want.startswith("spiffe://"):
        assert peer_identity(peercert) == want
    else:
        with pytest.raises(PeerRejected) as exc:
            peer_identity(peercert)
        assert exc.value.reason == want


# --- the supervisor -> sidecar message -------------------------------------------------------------------------------

def test_identity_message_round_trip(ca: CertAuthority) -> None:
    w = workload(ca)
    line = encode_identity(w)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line)["type"] == "identity"
    assert decode_identity(line) == w
    assert decode_identity(line.rstrip(b"\n")) == w


def test_key_never_in_repr_or_str(ca: CertAuthority) -> None:
    w = workload(ca)
    body = w.key_pem.splitlines()[1]
    for text in (repr(w), str(w), f"{w}", repr([w])):
        assert body not in text and "PRIVATE KEY" not in text
    assert WEB.uri in repr(w) and w.serial in repr(w)


def _doc(w: WorkloadTls) -> dict[str, object]:
    return dict(json.loads(encode_identity(w)))


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d.update(type="snapshot"), "not an identity message"),
    (lambda d: d.pop("key_pem"), "lacks key_pem"),
    (lambda d: d.update(extra=1), "unknown keys extra"),
    (lambda d: d.update(identity="spiffe://cluster.local/x"), "identity message: SPIFFE ID"),
    (lambda d: d.update(cert_pem=""), "cert_pem must be a non-empty string"),
    (lambda d: d.update(serial=5), "serial must be a non-empty string"),
    (lambda d: d.update(not_after="soon"), "not_after must be a number"),
    (lambda d: d.update(issued_at=True), "issued_at must be a number"),
    (lambda d: d.update(bundle_pem="x"), "PEM certificates"),
    (lambda d: d.update(key_pem="x"), "PEM private key"),
])
def test_decode_rejects_malformed_messages(ca: CertAuthority, mutate: object, reason: str) -> None:
    w = workload(ca)
    doc = _doc(w)
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(ValueError, match=reason) as exc:
        decode_identity(json.dumps(doc).encode() + b"\n")
    assert w.key_pem.splitlines()[1] not in str(exc.value)


@pytest.mark.parametrize("line", [b"", b"\n", b"not json\n", b"[1]\n", b"\xff\xfe\n", b'"identity"\n'])
def test_decode_rejects_non_messages(line: bytes) -> None:
    with pytest.raises(ValueError):
        decode_identity(line)


def test_decode_error_does_not_carry_the_key(ca: CertAuthority) -> None:
    w = workload(ca)
    broken = encode_identity(w)[:-5]  # truncated JSON: the parser's error would hold the whole document
    with pytest.raises(ValueError) as exc:
        decode_identity(broken)
    assert exc.value.__suppress_context__ and w.key_pem.splitlines()[1] not in str(exc.value)
