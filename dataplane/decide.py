"""What to do with one accepted connection: a pure function of where it was going.

Kept free of I/O so every case is a row in a table test. Later layers (protocol detection, routes,
authorization) add inputs and outcomes here rather than branches in the byte pump.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshns.dataplane.addrs import OrigDst
from meshns.dataplane.config import SidecarConfig


class Direction(enum.Enum):
    """Which listener accepted the connection: the pod calling out, or someone calling the pod."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"


@dataclass(frozen=True, slots=True)
class Forward:
    """Relay bytes to ``target``; bind the upstream socket to ``bind_source`` first if set.
    ``h2``: the connection will carry HTTP/2 (mTLS offers ALPN meshns-h2)."""

    target: OrigDst
    bind_source: str | None
    h2: bool = False


@dataclass(frozen=True, slots=True)
class AnswerProbe:
    """Reply ``text`` and close: the init step's validation proving interception works end to end."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """Close without connecting anywhere; ``reason`` goes to the log."""

    reason: str


Decision = Forward | AnswerProbe | Reject


def probe_answer(direction: Direction, dst: OrigDst) -> bytes:
    return f"meshns-probe {direction.value} {dst}\n".encode("ascii")


def decide(direction: Direction, dst: OrigDst, config: SidecarConfig) -> Decision:
    """``config`` must carry the ports the listeners are really bound to (the server substitutes
    them when the configured ports were 0), otherwise loop detection would compare against 0."""
    if dst.port == config.probe_port:
        return AnswerProbe(probe_answer(direction, dst))
    if dst.port in (config.outbound_port, config.inbound_port):
        # Either someone dialled the listener directly (uncaptured, e.g. 127.0.0.1:15001 from the
        # app) or a rule sent our own traffic back to us. Forwarding would connect to ourselves.
        return Reject(f"original destination {dst} is a sidecar listener port; would loop")
    if direction is Direction.INBOUND and dst.port == config.admin_port:
        # The admin endpoint (drain, log levels, config_dump) listens on the pod's loopback only;
        # forwarding from outside to <pod ip>:15000 would hand it to anything bound there.
        return Reject(f"original destination {dst} is the sidecar's admin port; only the pod may use it")
    if direction is Direction.INBOUND:
        # The hop to the app must not be captured again; interception exempts this source address.
        return Forward(dst, config.inbound_source_ip)
    return Forward(dst, None)
