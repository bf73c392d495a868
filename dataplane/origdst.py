"""Recovering the original destination of a redirected connection.

iptables REDIRECT rewrites the destination to our listener; conntrack remembers the original and
hands it back through ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` as a raw ``struct sockaddr_in``.
Decoding is pure (and tested on bytes); fetching is behind a small ``OriginalDstResolver`` protocol
so component tests can run the whole sidecar on loopback with a ``FixedResolver`` and no iptables.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from typing import Final, Protocol

from meshns.dataplane.addrs import OrigDst, orig_dst_from
from meshns.errors import SystemFailure

# Python's socket module has no constant for it; linux/netfilter_ipv4.h defines 80 (SOL_IP level).
SO_ORIGINAL_DST: Final = 80
SOL_IP: Final = getattr(socket, "SOL_IP", 0)
SOCKADDR_IN_LEN: Final = 16
_AF_INET: Final = 2  # Linux value; not socket.AF_INET so decoding does not depend on the host

log = logging.getLogger("meshns.dataplane.origdst")


class OrigDstError(SystemFailure):
    """The original destination could not be recovered or decoded."""


def decode_sockaddr_in(raw: bytes) -> OrigDst:
    """Decode a Linux ``struct sockaddr_in``: u16 family (host order), u16 port (network order),
    4 address bytes, 8 bytes of padding (ignored). The kernel insists on exactly 16 bytes for this
    option, so any other length, or a family other than AF_INET, is an OrigDstError."""
    if len(raw) != SOCKADDR_IN_LEN:
        raise OrigDstError(f"sockaddr_in must be {SOCKADDR_IN_LEN} bytes, got {len(raw)}")
    (family,) = struct.unpack_from("=H", raw, 0)
    if family != _AF_INET:
        raise OrigDstError(f"sockaddr family {family} is not AF_INET")
    (port,) = struct.unpack_from("!H", raw, 2)
    ip = socket.inet_ntoa(raw[4:8])
    return OrigDst(ip, port)


def encode_sockaddr_in(dst: OrigDst) -> bytes:
    """The inverse of decode_sockaddr_in (for tests and fakes)."""
    return struct.pack("=H", _AF_INET) + struct.pack("!H", dst.port) + socket.inet_aton(dst.ip) + bytes(8)


class SockoptCapable(Protocol):
    """What we need of a socket: both socket.socket and uvloop's PseudoSocket fit."""

    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...

    def getsockname(self) -> object: ...


class OriginalDstResolver(Protocol):
    """Find where an accepted connection was originally headed."""

    def resolve(self, sock: SockoptCapable) -> OrigDst: ...


class SockoptResolver:
    """The production resolver: asks conntrack through SO_ORIGINAL_DST.

    If the connection was not NATed (somebody dialled our listener directly, e.g. 127.0.0.1:15001,
    which interception leaves alone) the kernel answers ENOENT, or, when conntrack tracked it,
    returns the unchanged destination. Either way the honest answer is the local address the client
    reached, so ENOENT falls back to getsockname(); the decision step then rejects it as a loop.
    """

    def resolve(self, sock: SockoptCapable) -> OrigDst:
        try:
            raw = sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_LEN)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise OrigDstError(f"SO_ORIGINAL_DST failed: {exc}") from exc
            try:
                return orig_dst_from(sock.getsockname())
            except (OSError, ValueError) as exc2:
                raise OrigDstError(f"getsockname failed: {exc2}") from exc2
        return decode_sockaddr_in(raw)


class FixedResolver:
    """Always answers the same destination; lets tests run the sidecar without iptables."""

    def __init__(self, dst: OrigDst) -> None:
        self.dst = dst

    def resolve(self, sock: SockoptCapable) -> OrigDst:
        return self.dst
