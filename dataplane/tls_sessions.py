"""The client sidecar's TLS sessions to resume, one per peer sidecar, as Envoy keeps one per
upstream host (``max_session_keys: 1``).

A full mTLS handshake costs each sidecar about 1-2 ms of CPU (signatures and chain verification);
resuming a TLS 1.3 session skips both, which is most of what a new connection between sidecars
costs. What resumption must not skip is kept elsewhere: the peer identity, revocation and, since
the chain is not verified again, the certificate's validity period are checked on every
connection (``mtls.tls.verify_peer``).

A session belongs to the client context it was made with, and contexts are rebuilt on every
identity or trust-bundle update (``MeshTls.updates`` counts them). The cache is keyed by that
generation and empties when it moves on, so a session never outlives the identity and the trust
that verified its peer; the server side's tickets die with its context the same way.
"""

from __future__ import annotations

import ssl
from typing import Final

Key = tuple[bool, str, str]  # (ALPN h2 offered, peer address, expected SPIFFE ID)
LIMIT: Final = 1024  # peers remembered; past it the oldest entry goes


class SessionCache:
    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.generation = -1
        self._sessions: dict[Key, ssl.SSLSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, generation: int, key: Key, now: float) -> ssl.SSLSession | None:
        """The session to offer ``key``'s peer, if one is held for this generation and its
        ticket has not outlived the lifetime the server gave it."""
        if generation != self.generation:
            self._sessions.clear()
            self.generation = generation
            return None
        session = self._sessions.get(key)
        if session is not None and session.time + session.timeout <= now:
            del self._sessions[key]
            return None
        return session

    def put(self, generation: int, key: Key, session: ssl.SSLSession) -> None:
        """Keep ``session`` (it has a ticket); ignored if the identity changed since its connection began."""
        if generation != self.generation:
            return
        if key not in self._sessions and len(self._sessions) >= self.limit:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[key] = session

    def drop(self, key: Key) -> None:
        """Forget ``key``'s session (its connection failed: the next one starts afresh)."""
        self._sessions.pop(key, None)
