"""Pod address management, pure: which address the next pod gets.

The registry holds the used set inside a write transaction and calls ``allocate``; two
processes creating pods at once are serialised by that transaction, so they cannot get the same
address. The lowest free address is taken, so addresses are reused after a pod is deleted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from meshns.errors import ConflictError, UserError

MIN_PREFIX = 8
MAX_PREFIX = 29


def parse_pod_cidr(text: str) -> IPv4Network:
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise UserError(f"pod CIDR {text!r} is invalid: {exc}") from None
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise UserError(f"pod CIDR {text!r}: prefix length must be between /{MIN_PREFIX} and /{MAX_PREFIX}")
    if net.is_loopback or net.is_multicast or net.is_link_local:
        raise UserError(f"pod CIDR {text!r} is not usable for pods")
    return net


def gateway(net: IPv4Network) -> IPv4Address:
    """The bridge's address: the first host address of the pod CIDR."""
    return net.network_address + 1


def gateway_interface(net: IPv4Network) -> IPv4Interface:
    return IPv4Interface(f"{gateway(net)}/{net.prefixlen}")


def allocate(net: IPv4Network, used: Iterable[IPv4Address]) -> IPv4Address:
    taken = set(used)
    taken.add(gateway(net))
    # hosts() already leaves out the network and broadcast addresses.
    for addr in net.hosts():
        if addr not in taken:
            return addr
    raise ConflictError(f"pod CIDR {net} is exhausted ({len(taken) - 1} pods)")
