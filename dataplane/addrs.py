"""Typed socket addresses, so the three addresses of a relayed connection cannot be mixed up.

A relayed connection carries three (ip, port) pairs that look identical as tuples: where the client
came from, where it meant to go (recovered from conntrack), and which of our listeners accepted it.
Passing the wrong one is the classic transparent-proxy bug (connecting upstream to our own listener
loops forever), so each gets its own type, as linkerd2-proxy's ``addrs.rs`` does. mypy then rejects
``Forward(target=client_addr)``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class _IpPort:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"

    def as_tuple(self) -> tuple[str, int]:
        """The form socket calls want."""
        return (self.ip, self.port)


@dataclass(frozen=True, slots=True)
class ClientAddr(_IpPort):
    """The peer address of an accepted connection (who connected to us)."""


@dataclass(frozen=True, slots=True)
class OrigDst(_IpPort):
    """The destination the client dialled before interception redirected it to us."""


@dataclass(frozen=True, slots=True)
class ListenAddr(_IpPort):
    """An address one of the sidecar's own listeners is bound to."""


def _from_sockaddr(addr: object) -> tuple[str, int]:
    # asyncio hands out sockaddrs as tuples of 2 (IPv4) or 4 (IPv6); anything else is a bug upstream.
    if isinstance(addr, tuple) and len(addr) >= 2 and isinstance(addr[0], str) and isinstance(addr[1], int):
        return addr[0], addr[1]
    raise ValueError(f"not an inet sockaddr: {addr!r}")


def client_addr_from(peername: object) -> ClientAddr:
    return ClientAddr(*_from_sockaddr(peername))


def listen_addr_from(sockname: object) -> ListenAddr:
    return ListenAddr(*_from_sockaddr(sockname))


def orig_dst_from(sockname: object) -> OrigDst:
    return OrigDst(*_from_sockaddr(sockname))
