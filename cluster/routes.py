"""Routes from this host to the other hosts' pod blocks (the host's own network namespace).

Each is tagged with a route protocol number of our own, so every route meshns made can be found
and removed (by the agent when a host goes, by `host leave`, by gc after a killed agent) without
touching a route the operator made.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshns.errors import SystemFailure

RT_PROTO_MESHNS = 188  # unassigned in /etc/iproute2/rt_protos; `ip route show proto 188`


def installed() -> dict[IPv4Network, IPv4Address]:
    out: dict[IPv4Network, IPv4Address] = {}
    with IPRoute() as ipr:
        for r in ipr.get_routes(family=2, proto=RT_PROTO_MESHNS):
            dst, gw = r.get_attr("RTA_DST"), r.get_attr("RTA_GATEWAY")
            if dst and gw:
                out[IPv4Network(f"{dst}/{r['dst_len']}")] = IPv4Address(gw)
    return out


def sync(want: dict[IPv4Network, IPv4Address]) -> bool:
    """Make our routes exactly ``want``; True if anything changed."""
    have = installed()
    if have == want:
        return False
    with IPRoute() as ipr:
        for net in have.keys() - want.keys():
            try:
                ipr.route("del", dst=str(net), proto=RT_PROTO_MESHNS)
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: already gone
                    raise SystemFailure(f"cannot remove the route to {net}: {exc}") from exc
        for net, via in want.items():
            if have.get(net) == via:
                continue
            try:
                ipr.route("replace", dst=str(net), gateway=str(via), proto=RT_PROTO_MESHNS)
            except NetlinkError as exc:
                # A host whose address is not on a link here (yet): not fatal to the others.
                if exc.code not in (101, 113, 22):  # ENETUNREACH, EHOSTUNREACH, EINVAL
                    raise SystemFailure(f"cannot route {net} via {via}: {exc}") from exc
    return True


def remove_all() -> int:
    have = installed()
    sync({})
    return len(have)
