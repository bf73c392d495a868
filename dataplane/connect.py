"""Dialling the upstream of a relayed connection.

A ``Connector`` is the seam between "where to" (a ``Forward`` decision) and "how": plain TCP today,
mTLS origination later, a hanging or failing fake in tests. The relay wraps every connector in the
connect timeout, so connectors need not implement one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Final

from meshns.dataplane.decide import Forward

# Linux IP_BIND_ADDRESS_NO_PORT: bind() to a source IP without reserving a port until connect()
# knows the whole 4-tuple, so all inbound hops from 127.0.0.6 don't share one ephemeral range.
IP_BIND_ADDRESS_NO_PORT: Final = 24

# Dials ``fwd.target`` and attaches a protocol made by the factory; raises OSError on failure.
Connector = Callable[[Callable[[], asyncio.Protocol], Forward], Awaitable[None]]


async def tcp_connect(factory: Callable[[], asyncio.Protocol], fwd: Forward) -> None:
    """The default connector: plain TCP, optionally from a fixed source address."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if fwd.bind_source is not None:
            with contextlib.suppress(OSError):  # an optimisation only; older kernels lack it
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((fwd.bind_source, 0))
        await loop.sock_connect(sock, fwd.target.as_tuple())
        # uvloop takes the connected fd over (and sets TCP_NODELAY on it, as on accepted sockets).
        await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
