"""Dialling with mTLS: the client sidecar's side of secure naming.

When the destination address is a meshed pod (the snapshot gives its SPIFFE ID and what it
accepts), the upstream connection is TLS 1.3 with this pod's certificate, and the peer must
present exactly the identity the registry expects for that address: a valid mesh certificate of
another workload is refused before a single application byte is written. Anything else (an
address outside the mesh, a port whose PeerAuthentication is DISABLE, the sidecar's own hop to its
app) is dialled as plain TCP.

The check happens after the handshake and before the real protocol exists; only a verified
connection gets one (``TlsStream.attach``). TLS runs on ``TlsStream`` so FINs cross as half-closes.
Each verified connection's session is kept to resume the next one to the same peer
(dataplane.tls_sessions), and a resumed connection's fresh ticket replaces the one it used; a
resumed connection passes the same check, its certificate's validity period included, and a
failed one forgets the session.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
from collections.abc import Callable

from meshns.dataplane.connect import tcp_connect
from meshns.dataplane.decide import Forward
from meshns.dataplane.identity import MeshTls
from meshns.dataplane.snapshots import SnapshotStore
from meshns.dataplane.stats import Stats
from meshns.dataplane.tls_sessions import SessionCache
from meshns.dataplane.tls_transport import TlsStream
from meshns.mtls.tls import PeerRejected, verify_peer
from meshns.snapshot import Endpoint, Snapshot


class PeerIdentityRefused(ConnectionError):
    """The upstream's certificate was valid but not the expected workload's (or revoked).

    A ConnectionError, so every caller treats it as a failed connect (503 UF / close)."""


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
        self.sessions = SessionCache()
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
        ctx = self.tls.client_ctx_h2 if fwd.h2 else self.tls.client_ctx
        if ep is None or ctx is None:
            await tcp_connect(factory, fwd)
            return
        generation, key = self.tls.updates, (fwd.h2, fwd.target.ip, ep.identity)
        session = self.sessions.get(generation, key, time.time())
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, fwd.target.as_tuple())
            _, stream = await loop.create_connection(lambda: TlsStream(ctx, server_side=False, session=session),
                                                     sock=sock)
        except BaseException:
            sock.close()
            raise
        try:
            await stream.handshake(self.handshake_timeout_s)
            resumed = stream.resumed
            verify_peer(stream.peercert, expected=ep.identity, revoked=self.index().revoked,
                        valid_at=time.time() if resumed else None)
        except PeerRejected as exc:
            stream.abort()
            self.sessions.drop(key)
            self.stats.tls_peer_rejected += 1
            raise PeerIdentityRefused(f"mTLS peer refused ({ep.pod}): {exc.reason}") from None
        except asyncio.CancelledError:
            stream.abort()  # given up (an eager dial the request did not need): the session is fine
            raise
        except BaseException:
            stream.abort()
            self.sessions.drop(key)
            raise
        self.stats.tls_out += 1
        if resumed:
            self.stats.tls_out_resumed += 1
        stream.want_ticket(functools.partial(self.sessions.put, generation, key))
        stream.attach(factory())
