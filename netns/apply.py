"""Executes a PodNetPlan with netlink (pyroute2), and tears a pod's network down again.

Only this module and netns.teardown touch the kernel's links and namespaces. Every step is
idempotent (an object that already exists in the wanted shape is left alone), so a retried
create or a gc after a crash can run the same code. Netlink errors are mapped to SystemFailure
naming the step that failed; the caller rolls back.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Interface

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from meshns.errors import SystemFailure
from meshns.netns.child import create_netns, netns_path, run_in_netns
from meshns.netns.plan import ConfigurePod, CreateNetns, CreateVethPair, EnsureBridge, PodNetPlan, Step


def apply_plan(plan: PodNetPlan) -> None:
    for step in plan.steps:
        try:
            _apply_step(step)
        except NetlinkError as exc:
            raise SystemFailure(f"{type(step).__name__} failed: {exc.args[-1]} (errno {exc.code})") from exc
        except OSError as exc:
            raise SystemFailure(f"{type(step).__name__} failed: {exc}") from exc


def _apply_step(step: Step) -> None:
    match step:
        case EnsureBridge():
            ensure_bridge(step.name, step.address)
        case CreateNetns(name):
            if os.path.exists(netns_path(name)):
                raise SystemFailure(f"network namespace {name} already exists")
            create_netns(name)
        case CreateVethPair(host, peer, ns, bridge):
            with IPRoute() as ipr:
                ipr.link("add", ifname=host, kind="veth", peer={"ifname": peer, "net_ns_fd": ns})
                idx = ipr.link_lookup(ifname=host)[0]
                master = ipr.link_lookup(ifname=bridge)[0]
                ipr.link("set", index=idx, master=master, state="up")
        case ConfigurePod():
            run_in_netns(step.netns, _configure_inside, step.ifname, step.address, step.gateway, step.mac)


def ensure_bridge(name: str, address: IPv4Interface) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: a concurrent create made it first
                    raise
            found = ipr.link_lookup(ifname=name)
        idx = found[0]
        have = {
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx, family=2)
        }
        if (str(address.ip), address.network.prefixlen) not in have:
            try:
                ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen)
            except NetlinkError as exc:
                if exc.code != 17:
                    raise
        ipr.link("set", index=idx, state="up")


def _configure_inside(ifname: str, address: IPv4Interface, gw: IPv4Address, mac: str) -> None:
    for key in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
            f.write("1")
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, address=mac)
        ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=idx, state="up")
        ipr.route("add", dst="default", gateway=str(gw), oif=idx)


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def delete_link(name: str) -> None:
    """Delete a link if present (deleting one end of a veth pair deletes both)."""
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: gone meanwhile
                    raise SystemFailure(f"cannot delete link {name}: {exc}") from exc


def delete_netns(name: str) -> None:
    if os.path.exists(netns_path(name)):
        try:
            netns.remove(name)
        except OSError as exc:
            raise SystemFailure(f"cannot delete network namespace {name}: {exc}") from exc


def bridge_ports(bridge: str) -> list[str]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            return []
        return [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links() if
                link.get_attr("IFLA_MASTER") == found[0]]


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except FileNotFoundError:
        return []
