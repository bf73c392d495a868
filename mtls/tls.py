"""A workload's TLS material, its pipe encoding, the sidecar's TLS contexts and the peer identity check.

Mesh TLS works like Istio's: both sides present a certificate whose only name is a SPIFFE URI SAN,
both verify the chain against the mesh trust bundle, and host names play no part. Who the peer is
comes from ``peer_identity`` on the verified certificate, and ``verify_peer`` applies secure naming
(the server must be the identity the destination is known to run as) and revocation.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields
from typing import Final, cast

from meshns.mtls.identity import SCHEME, IdentityError, SpiffeId

MESH_ALPN: Final = "meshns"
# The HTTP/2 flavour (as Istio's "istio-h2"): the server sidecar learns the protocol from the
# handshake and runs its HTTP/2 endpoint at once, without sniffing the bytes again.
MESH_ALPN_H2: Final = "meshns-h2"
MESSAGE_TYPE: Final = "identity"


@dataclass(frozen=True, repr=False)
class WorkloadTls:
    identity: str
    cert_pem: str
    key_pem: str
    bundle_pem: str
    serial: str
    not_before: float
    not_after: float
    issued_at: float

    def __repr__(self) -> str:
        # Written by hand so that logging a WorkloadTls (or an exception holding one) never leaks the key.
        return (f"WorkloadTls(identity={self.identity!r}, serial={self.serial!r}, not_before={self.not_before!r}, "
                f"not_after={self.not_after!r}, issued_at={self.issued_at!r}, "
                f"roots={self.bundle_pem.count('BEGIN CERTIFICATE')})")


_STR_FIELDS = ("identity", "cert_pem", "key_pem", "bundle_pem", "serial")
_NUM_FIELDS = ("not_before", "not_after", "issued_at")
_KEYS = frozenset({"type", *(f.name for f in fields(WorkloadTls))})


def encode_identity(w: WorkloadTls) -> bytes:
    doc: dict[str, object] = {"type": MESSAGE_TYPE}
    doc.update({f.name: getattr(w, f.name) for f in fields(WorkloadTls)})
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def decode_identity(line: bytes) -> WorkloadTls:
    """The inverse of encode_identity. ValueError on anything else; messages never quote the line (it holds a key)."""
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("identity message is not JSON") from None  # the decode error keeps the whole document
    if not isinstance(doc, dict):
        raise ValueError("identity message is not a JSON object")
    if doc.get("type") != MESSAGE_TYPE:
        raise ValueError(f"not an identity message (type {str(doc.get('type'))[:40]!r})")
    if missing := sorted(_KEYS - doc.keys()):
        raise ValueError(f"identity message lacks {', '.join(missing)}")
    if unknown := sorted(k for k in doc if k not in _KEYS):
        raise ValueError(f"identity message has unknown keys {', '.join(k[:40] for k in unknown)}")
    for name in _STR_FIELDS:
        if not isinstance(doc[name], str) or not doc[name]:
            raise ValueError(f"identity message: {name} must be a non-empty string")
    for name in _NUM_FIELDS:
        if not isinstance(doc[name], int | float) or isinstance(doc[name], bool):
            raise ValueError(f"identity message: {name} must be a number")
    try:
        SpiffeId.parse(doc["identity"])
    except IdentityError as exc:
        raise ValueError(f"identity message: {exc}") from None
    if "BEGIN CERTIFICATE" not in doc["cert_pem"] or "BEGIN CERTIFICATE" not in doc["bundle_pem"]:
        raise ValueError("identity message: cert_pem and bundle_pem must be PEM certificates")
    if "PRIVATE KEY" not in doc["key_pem"]:
        raise ValueError("identity message: key_pem must be a PEM private key")
    return WorkloadTls(identity=doc["identity"], cert_pem=doc["cert_pem"], key_pem=doc["key_pem"],
                       bundle_pem=doc["bundle_pem"], serial=doc["serial"], not_before=float(doc["not_before"]),
                       not_after=float(doc["not_after"]), issued_at=float(doc["issued_at"]))


def server_context(w: WorkloadTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The server picks the first of its own list that the client offers.
    _configure(ctx, w, [MESH_ALPN_H2, MESH_ALPN])
    # Session resumption (TLS 1.3 stateless tickets, sealed with keys this context made at
    # random, so a ticket outlives neither this identity nor this trust bundle: both build a new
    # context). One ticket per connection, not OpenSSL's two: a client sidecar keeps one session
    # per peer (dataplane.tls_sessions), and each ticket costs the server an encryption.
    ctx.num_tickets = 1
    return ctx


def client_context(w: WorkloadTls, h2: bool = False) -> ssl.SSLContext:
    """``h2``: offer the HTTP/2 ALPN value first (an older server still picks plain "meshns")."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the peer is named by its SPIFFE ID (verify_peer), not by a host name
    _configure(ctx, w, [MESH_ALPN_H2, MESH_ALPN] if h2 else [MESH_ALPN])
    return ctx


def _configure(ctx: ssl.SSLContext, w: WorkloadTls, alpn: list[str]) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=w.bundle_pem)
    # A server that finds no common protocol (or none offered) carries on without ALPN.
    ctx.set_alpn_protocols(alpn)
    _load_identity(ctx, w)


def _load_identity(ctx: ssl.SSLContext, w: WorkloadTls) -> None:
    # ssl can only load a key from a path. Every pod's sidecar runs as uid 1337, so a key file (even
    # 0600, even briefly) would be readable by every other pod's sidecar; an anonymous memfd is
    # reachable only through this process's own fd table, and it is gone when the fd is closed.
    fd = os.memfd_create("meshns-identity", os.MFD_CLOEXEC)
    try:
        view = memoryview((w.cert_pem.rstrip("\n") + "\n" + w.key_pem).encode())
        while view:
            view = view[os.write(fd, view):]
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


class PeerRejected(Exception):
    """The peer's verified certificate does not name an acceptable identity. ``reason`` is for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def peer_identity(peercert: Mapping[str, object] | None) -> str:
    """The one SPIFFE URI SAN of a verified peer certificate, as ``SSLObject.getpeercert()`` shows it."""
    if not peercert:
        raise PeerRejected("no client certificate")
    san = peercert.get("subjectAltName", ())
    uris = [value for kind, value in san if kind == "URI"] if isinstance(san, tuple) else []
    ids = [u for u in uris if isinstance(u, str) and u.startswith(SCHEME)]
    if not ids:
        raise PeerRejected("certificate has no SPIFFE ID")
    if len(ids) > 1:
        raise PeerRejected("certificate has several SPIFFE IDs")
    return ids[0]


def verify_peer(peercert: Mapping[str, object] | None, *, expected: str | None = None,
                revoked: Collection[str] = (), valid_at: float | None = None) -> str:
    """The peer's SPIFFE URI if it is acceptable, else PeerRejected saying why.

    ``valid_at``: check the certificate's validity period at this time. A resumed session skips
    chain verification, and with it the period, so a sidecar whose supervisor stopped renewing its
    certificate would otherwise stay reachable on old tickets after the certificate expired."""
    peer = peer_identity(peercert)
    if valid_at is not None:
        _check_period(cast(Mapping[str, object], peercert), valid_at)
    if peer in revoked:
        raise PeerRejected(f"identity {peer} is revoked")
    if expected is not None and peer != expected:
        raise PeerRejected(f"expected {expected}, peer presented {peer}")
    return peer


def _check_period(peercert: Mapping[str, object], now: float) -> None:
    try:
        not_before = ssl.cert_time_to_seconds(str(peercert["notBefore"]))
        not_after = ssl.cert_time_to_seconds(str(peercert["notAfter"]))
    except (KeyError, ValueError):
        raise PeerRejected("certificate has no readable validity period") from None
    if now > not_after:  # as OpenSSL: the last second is still valid
        raise PeerRejected("certificate expired (resumed session)")
    if now < not_before:
        raise PeerRejected("certificate not yet valid (resumed session)")
