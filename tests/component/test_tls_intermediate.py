"""Multi-host identity over real sockets: sidecars whose certificates come from different hosts'
intermediates, trusting only the mesh roots, handshake with meshns's own contexts (mtls/tls.py) on
the sidecar's TLS transport (dataplane/tls_transport.py) over loopback, on uvloop."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from httpkit import uvloop_test

from meshns.dataplane.tls_transport import TlsStream
from meshns.mtls.ca import CertAuthority, key_pem, new_key
from meshns.mtls.identity import SpiffeId
from meshns.mtls.tls import WorkloadTls, client_context, server_context, verify_peer

LO = "127.0.0.1"
TD = "example.org"
WEB = SpiffeId(TD, "shop", "web")
DB = SpiffeId(TD, "shop", "db")


def host_ca(root: CertAuthority, base: Path, host: str) -> CertAuthority:
    key = new_key()
    ic = root.issue_intermediate(host, key.public_key())
    return CertAuthority.init_intermediate(base / host / "ca", TD, 3600.0, root.bundle_pem(), ic.cert_pem,
                                           key_pem(key))


def workload(ca: CertAuthority, spiffe: SpiffeId, bundle: str, *, leaf_only: bool = False) -> WorkloadTls:
    key = new_key()
    c = ca.issue(spiffe, key.public_key())
    chain = c.cert_pem
    if leaf_only:
        chain = chain[:chain.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"
    return WorkloadTls(spiffe.uri, chain, key_pem(key), bundle, c.serial, c.not_before, c.not_after, c.issued_at)


@pytest.fixture
def mesh(tmp_path: Path) -> dict[str, CertAuthority]:
    """The root holder "a" signing with its own intermediate, and host "b" with an imported one."""
    root = CertAuthority.ensure(tmp_path / "a" / "ca", TD, 3600.0)
    root.use_own_intermediate("a")
    return {"a": root, "b": host_ca(root, tmp_path, "b")}


async def connect(client: WorkloadTls, server: WorkloadTls) -> tuple[TlsStream, TlsStream, list[BaseException | None]]:
    """One connection; returns (client stream, server stream, [client error, server error])."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[TlsStream] = asyncio.Queue()

    def factory() -> TlsStream:
        stream = TlsStream(server_context(server), server_side=True)
        accepted.put_nowait(stream)
        return stream

    srv = await loop.create_server(factory, LO, 0)
    try:
        port = srv.sockets[0].getsockname()[1]
        _, c = await loop.create_connection(lambda: TlsStream(client_context(client), server_side=False), LO, port)
        s = await accepted.get()
        results = await asyncio.gather(c.handshake(5.0), s.handshake(5.0), return_exceptions=True)
        return c, s, [r if isinstance(r, BaseException) else None for r in results]
    finally:
        srv.close()


def test_chain_is_leaf_then_intermediate(mesh: dict[str, CertAuthority]) -> None:
    w = workload(mesh["b"], DB, mesh["a"].bundle_pem())
    leaf, inter = x509.load_pem_x509_certificates(w.cert_pem.encode())
    assert format(leaf.serial_number, "x") == w.serial and leaf.issuer == inter.subject
    assert w.bundle_pem.count("BEGIN CERTIFICATE") == 1  # the root only


@uvloop_test
async def test_sidecars_on_two_hosts_trusting_only_the_root(mesh: dict[str, CertAuthority]) -> None:
    bundle = mesh["a"].bundle_pem()
    client = workload(mesh["a"], WEB, bundle)
    server = workload(mesh["b"], DB, bundle)
    c, s, errors = await connect(client, server)
    assert errors == [None, None]
    # Secure naming looks at the leaf: each side sees the other's SPIFFE ID, not the intermediate's SAN.
    assert verify_peer(c.peercert, expected=DB.uri) == DB.uri
    assert verify_peer(s.peercert) == WEB.uri
    c.abort()
    s.abort()
    # And the other way round.
    c, s, errors = await connect(workload(mesh["b"], DB, bundle), workload(mesh["a"], WEB, bundle))
    assert errors == [None, None] and verify_peer(c.peercert) == WEB.uri and verify_peer(s.peercert) == DB.uri
    c.abort()
    s.abort()


@uvloop_test
async def test_an_intermediate_under_another_root_is_refused(mesh: dict[str, CertAuthority],
                                                           tmp_path: Path) -> None:
    bundle = mesh["a"].bundle_pem()
    other_root = CertAuthority.ensure(tmp_path / "other" / "ca", TD, 3600.0)
    stranger = host_ca(other_root, tmp_path / "other", "b")  # same trust domain, same host name, wrong root
    # A stranger client (it trusts our root too, so it accepts the server): the server refuses it.
    trusting = other_root.bundle_pem() + bundle
    _, _, errors = await connect(workload(stranger, WEB, trusting), workload(mesh["b"], DB, bundle))
    assert isinstance(errors[1], ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(errors[1])
    # A stranger server: the client refuses it.
    _, _, errors = await connect(workload(mesh["b"], WEB, bundle), workload(stranger, DB, other_root.bundle_pem()))
    assert isinstance(errors[0], ssl.SSLCertVerificationError)


@uvloop_test
async def test_a_leaf_without_its_intermediate_is_refused(mesh: dict[str, CertAuthority]) -> None:
    bundle = mesh["a"].bundle_pem()
    _, _, errors = await connect(workload(mesh["b"], WEB, bundle), workload(mesh["a"], DB, bundle, leaf_only=True))
    assert isinstance(errors[0], ssl.SSLCertVerificationError)


@uvloop_test
async def test_root_signed_and_intermediate_signed_sidecars_interoperate(tmp_path: Path) -> None:
    # A host upgraded in place: its root (path length 1) still signs some pods directly while
    # another host's pods are signed by an intermediate; both verify against the same bundle.
    root = CertAuthority.ensure(tmp_path / "a" / "ca", TD, 3600.0)
    b = host_ca(root, tmp_path, "b")
    bundle = root.bundle_pem()
    c, s, errors = await connect(workload(root, WEB, bundle), workload(b, DB, bundle))
    assert errors == [None, None] and verify_peer(c.peercert) == DB.uri and verify_peer(s.peercert) == WEB.uri
    c.abort()
    s.abort()
