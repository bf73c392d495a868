"""What the init step is asked to intercept: a small, frozen, validated value.

Validation happens here, at construction, so the planner and the executor never see a bad port or
CIDR and every mistake is reported as a UserError naming the offending value before anything in the
kernel is touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from meshns import ports
from meshns.errors import UserError

T = TypeVar("T")

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, so it is not a usable id


def _check_port(what: str, value: object) -> int:
    # bool is an int subclass; True would silently become port 1.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise UserError(f"{what}: {value!r} is not a TCP port (1..65535)")
    return value


def _check_id(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
        raise UserError(f"{what}: {value!r} is not a valid id (0..{_MAX_ID})")
    if value == 0:
        # The proxy's uid/gid is the loop breaker: traffic from it is never captured. Root would
        # exempt every root process in the pod, i.e. silently disable interception.
        raise UserError(f"{what}: 0 (root) cannot be the proxy's id; root traffic would bypass the mesh")
    return value


def _check_cidr(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise UserError(f"{what}: {value!r} is not an IPv4 CIDR")
    try:
        return str(ipaddress.IPv4Network(value.strip(), strict=False))
    except ValueError as exc:
        raise UserError(f"{what}: {value!r} is not an IPv4 CIDR ({exc})") from None


def _unique(values: Iterable[T]) -> tuple[T, ...]:
    # Duplicates would install duplicate rules; keep the first occurrence, keep the user's order.
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class InterceptSpec:
    """Inputs of the rule plan. Defaults are the pod contract in meshns.ports (Istio's numbers)."""

    proxy_uid: int = ports.PROXY_UID
    proxy_gid: int = ports.PROXY_GID
    outbound_port: int = ports.OUTBOUND_PORT
    inbound_port: int = ports.INBOUND_PORT
    inbound_source_ip: str = ports.INBOUND_SOURCE_IP
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_id("proxy_uid", self.proxy_uid)
        _check_id("proxy_gid", self.proxy_gid)
        _check_port("outbound_port", self.outbound_port)
        _check_port("inbound_port", self.inbound_port)
        if self.outbound_port == self.inbound_port:
            raise UserError(f"outbound_port and inbound_port are both {self.outbound_port}; they must differ")
        try:
            src = ipaddress.IPv4Address(self.inbound_source_ip)
        except ValueError:
            raise UserError(f"inbound_source_ip: {self.inbound_source_ip!r} is not an IPv4 address") from None
        # Frozen: normalise through object.__setattr__ so equal specs compare and hash equal.
        object.__setattr__(self, "inbound_source_ip", str(src))
        object.__setattr__(
            self,
            "exclude_outbound_ports",
            _unique(_check_port("exclude_outbound_ports", p) for p in self.exclude_outbound_ports),
        )
        object.__setattr__(
            self,
            "exclude_inbound_ports",
            _unique(_check_port("exclude_inbound_ports", p) for p in self.exclude_inbound_ports),
        )
        object.__setattr__(
            self,
            "exclude_outbound_cidrs",
            _unique(_check_cidr("exclude_outbound_cidrs", c) for c in self.exclude_outbound_cidrs),
        )


def _split(text: str) -> list[str]:
    if not text.strip():
        return []
    return [item.strip() for item in text.split(",")]


def parse_port_list(text: str) -> tuple[int, ...]:
    """Parse a CLI value like ``"22,8080"``; empty means none. Raises UserError on bad items."""
    result: list[int] = []
    for item in _split(text):
        if not item.isdigit():  # also rejects "", "-1", "+22", "0x16"
            raise UserError(f"port list {text!r}: {item!r} is not a port number")
        result.append(_check_port(f"port list {text!r}", int(item)))
    return _unique(result)


def parse_cidr_list(text: str) -> tuple[str, ...]:
    """Parse a CLI value like ``"10.0.0.0/8,192.168.1.7"`` into normalised CIDRs."""
    return _unique(_check_cidr(f"CIDR list {text!r}", item) for item in _split(text))
