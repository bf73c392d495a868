"""Dialling with mTLS: the client sidecar's side of secure naming.

When the destination address is a meshed pod (the snapshot gives its SPIFFE ID and what it
accepts), the upstream connection is TLS 1.3 with this pod's certificate, and the peer must
present exactly the identity the registry expects for that address: a valid mesh certificate of
another workload is refused before a single application byte is written. Anything else (an
address outside the mesh, a port whose PeerAuthentication is DISABLE, the sidecar's own hop to its
app) is dialled as plain TCP.

The check happens in ``_Gate.connection_made``, which asyncio calls after the handshake and before
the real protocol exists; only a verified connection gets one (``transport.set_protocol``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import cast

from meshns.dataplane.connect import tcp_connect
from meshns.dataplane.decide import Forward
from meshns.dataplane.identity import MeshTls
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.mtls.tls import PeerRejected, verify_peer
from meshns.snapshot import Endpoint, Snapshot


class PeerIdentityRefused(ConnectionError):
    """The upstream's certificate was valid but not the expected workload's (or revoked).

    A ConnectionError, so every caller treats it as a failed connect (503 UF / close)."""


class _Gate(asyncio.Protocol):
    def __init__(self, factory: Callable[[], asyncio.Protocol], expected: str, revoked: frozenset[str]) -> None:
        self.factory = factory
        self.expected = expected
        self.revoked = revoked
        self.rejected: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        try:
            verify_peer(transport.get_extra_info("peercert"), expected=self.expected, revoked=self.revoked)
        except PeerRejected as exc:
            self.rejected = exc.reason
            cast(asyncio.Transport, transport).abort()
            return
        inner = self.factory()
        transport.set_protocol(inner)
        inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


class _Index:
    """Per snapshot: address -> the meshed workload there, and the revoked set."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.by_ip: dict[str, Endpoint] = {w.ip: w for w in snapshot.workloads if w.identity}
        self.revoked = frozenset(snapshot.security.revoked)


class MeshConnector:
    """A ``Connector`` (see dataplane.connect) that speaks mTLS to meshed destinations."""

    def __init__(self, store: SnapshotStore, tls: MeshTls, stats: Stats, handshake_timeout_s: float) -> None:
        self.store = store
        self.tls = tls
        self.stats = stats
        self.handshake_timeout_s = handshake_timeout_s
        self._index = _Index(store.current.snapshot)

    def index(self) -> _Index:
        snap = self.store.current.snapshot
        if self._index.snapshot is not snap:
            self._index = _Index(snap)
        return self._index

    def peer_of(self, fwd: Forward) -> Endpoint | None:
        """The meshed workload to verify at ``fwd.target``, or None for plain TCP."""
        if fwd.bind_source is not None or self.tls.client_ctx is None:
            return None  # the inbound hop to our own app, or no identity yet
        ep = self.index().by_ip.get(fwd.target.ip)
        if ep is None or ep.mtls.mode_for(fwd.target.port) == "DISABLE":
            return None
        return ep

    async def __call__(self, factory: Callable[[], asyncio.Protocol], fwd: Forward) -> None:
        ep = self.peer_of(fwd)
        ctx = self.tls.client_ctx
        if ep is None or ctx is None:
            await tcp_connect(factory, fwd)
            return
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        gate = _Gate(factory, ep.identity, self.index().revoked)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, fwd.target.as_tuple())
            # server_hostname "": no SNI and no hostname check; the SPIFFE ID is checked instead.
            await loop.create_connection(lambda: gate, sock=sock, ssl=ctx, server_hostname="",
                                         ssl_handshake_timeout=self.handshake_timeout_s)
        except BaseException:
            sock.close()
            raise
        if gate.rejected is not None:
            self.stats.tls_peer_rejected += 1
            raise PeerIdentityRefused(f"mTLS peer refused ({ep.pod}): {gate.rejected}")
        self.stats.tls_out += 1
