"""The client sidecar's mTLS dialler (dataplane.mesh_connect) resuming sessions, on uvloop over
loopback: the second dial to a peer resumes the first one's session and brings a fresh ticket,
which the third dial offers; a dial given up (an eager connection the request did not need) keeps
the session; a failed or refused one forgets it; an identity update forgets them all."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from httpkit import until, uvloop_test, workload

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.decide import Forward
from meshns.dataplane.identity import MeshTls
from meshns.dataplane.mesh_connect import MeshConnector, PeerIdentityRefused
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.dataplane.tls_transport import TlsStream
from meshns.mtls.ca import CertAuthority
from meshns.mtls.identity import SpiffeId
from meshns.mtls.tls import server_context
from meshns.snapshot import Endpoint, Security, Snapshot

LO = "127.0.0.1"
TD = "example.org"


class Quiet(asyncio.Protocol):
    """The app protocol above a dialled connection: nothing to say."""


@asynccontextmanager
async def peer(ca: CertAuthority) -> AsyncIterator[tuple[int, list[TlsStream]]]:
    """A server sidecar's TLS side on loopback: its port and the streams it accepted."""
    ctx = server_context(workload(ca, "server"))
    accepted: list[TlsStream] = []

    def factory() -> TlsStream:
        accepted.append(TlsStream(ctx, server_side=True))
        return accepted[-1]

    srv = await asyncio.get_running_loop().create_server(factory, LO, 0)
    try:
        yield srv.sockets[0].getsockname()[1], accepted
    finally:
        srv.close()
        for stream in accepted:
            stream.abort()


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority.ensure(tmp_path / "ca", TD, 3600.0)


@uvloop_test
async def test_dials_resume_and_only_a_failure_forgets_the_session(ca: CertAuthority) -> None:
    tls = MeshTls()
    tls.update(workload(ca, "client"))
    store = SnapshotStore("client")
    server_id = SpiffeId(TD, "default", "server").uri
    snapshot = Snapshot(version=1, pod="client", workloads=(Endpoint(pod="server", ip=LO, identity=server_id),))
    store.set(snapshot)
    stats = Stats()
    connector = MeshConnector(store, tls, stats, handshake_timeout_s=5.0)

    def cached() -> ssl.SSLSession:
        session = connector.sessions.get(tls.updates, (False, LO, server_id), time.time())
        assert session is not None
        return session

    silent = socket.create_server((LO, 0))  # accepts (the kernel does) and never answers a ClientHello
    try:
        async with peer(ca) as (port, accepted):
            fwd = Forward(OrigDst(LO, port), None)
            await connector(Quiet, fwd)
            await until(lambda: len(connector.sessions) == 1)  # the ticket came after the handshake
            assert (stats.tls_out, stats.tls_out_resumed) == (1, 0)
            first = cached()
            await connector(Quiet, fwd)
            assert (stats.tls_out, stats.tls_out_resumed) == (2, 1)
            await until(lambda: len(accepted) == 2 and accepted[1].handshaken)
            assert accepted[1].resumed and not accepted[0].resumed
            # The resumed connection's fresh ticket replaces the one it used, and resumes too.
            await until(lambda: cached().id != first.id)
            second = cached()
            await connector(Quiet, fwd)
            assert (stats.tls_out, stats.tls_out_resumed) == (3, 2)
            await until(lambda: cached().id not in {first.id, second.id})

            # Given up mid-handshake (same peer address, so the same session is offered): kept.
            to_silent = Forward(OrigDst(LO, silent.getsockname()[1]), None)
            dial = asyncio.ensure_future(connector(Quiet, to_silent))
            await asyncio.sleep(0.05)
            dial.cancel()
            with pytest.raises(asyncio.CancelledError):
                await dial
            assert len(connector.sessions) == 1
            await connector(Quiet, fwd)
            assert stats.tls_out_resumed == 3

            # A handshake that fails (times out): forgotten, the next dial is a full one.
            connector.handshake_timeout_s = 0.1
            with pytest.raises(TimeoutError):
                await connector(Quiet, to_silent)
            assert len(connector.sessions) == 0
            connector.handshake_timeout_s = 5.0
            await connector(Quiet, fwd)
            assert (stats.tls_out, stats.tls_out_resumed) == (5, 3)
            await until(lambda: len(connector.sessions) == 1)

            # The peer, now revoked, is refused on a resumed session too, and the session forgotten.
            store.set(replace(snapshot, version=2, security=Security(revoked=(server_id,))))
            with pytest.raises(PeerIdentityRefused, match="revoked"):
                await connector(Quiet, fwd)
            await until(lambda: accepted[-1].handshaken)
            assert accepted[-1].resumed  # the session was resumed, and refused all the same
            assert stats.tls_out_resumed == 3 and stats.tls_peer_rejected == 1
            assert len(connector.sessions) == 0
            store.set(replace(snapshot, version=3))
            await connector(Quiet, fwd)  # full again
            await until(lambda: len(connector.sessions) == 1)

            # An identity update (rotation, new bundle): every session forgotten.
            tls.update(workload(ca, "client"))
            await connector(Quiet, fwd)
            assert (stats.tls_out, stats.tls_out_resumed) == (7, 3)
    finally:
        silent.close()
