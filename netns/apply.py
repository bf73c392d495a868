"""Executes a PodNetPlan with iproute2's ``ip`` (the commands ``meshns create --dry-run`` prints),
and tears a pod's network down again (pyroute2).

Only this module and netns.teardown touch the kernel's links and namespaces. Every step is
idempotent (an object that already exists in the wanted shape is left alone), so a retried
create or a gc after a crash can run the same code. Errors are mapped to SystemFailure naming
the step that failed; the caller rolls back.

Why ``ip`` and not pyroute2 for create's steps: pyroute2's package imports all of its modules
(conntrack, ipdb, ndb, wireguard, nl80211...), 150-230 ms of CPU, and create waited for that
before its first step; a step's commands go to one ``ip -batch`` process (a few ms), which stops
at the first failing command. The teardown helpers still use pyroute2, imported when they run
(delete and gc, not create's path to the gate).
"""

from __future__ import annotations

import os
import socket
import subprocess
from ipaddress import IPv4Interface

from meshns.errors import SystemFailure
from meshns.netns.child import create_netns, netns_path, run_in_netns
from meshns.netns.plan import (
    ConfigurePod,
    CreateNetns,
    CreateVethPair,
    EnsureBridge,
    PodNetPlan,
    Step,
    bridge_commands,
    inside_commands,
    veth_commands,
)


class IpError(SystemFailure):
    """An ``ip`` command failed (its message is ip's own)."""


def apply_plan(plan: PodNetPlan) -> None:
    for step in plan.steps:
        try:
            _apply_step(step)
        except (IpError, OSError) as exc:
            raise SystemFailure(f"{type(step).__name__} failed: {exc}") from exc


def _apply_step(step: Step) -> None:
    match step:
        case EnsureBridge():
            ensure_bridge(step.name, step.address)
        case CreateNetns(name):
            if os.path.exists(netns_path(name)):
                raise SystemFailure(f"network namespace {name} already exists")
            create_netns(name)
        case CreateVethPair():
            ip_batch(veth_commands(step))
        case ConfigurePod():
            run_in_netns(step.netns, _configure_inside, step)


def ip_batch(commands: list[str]) -> None:
    """Run ``ip`` commands (without the leading ``ip``) in one ``ip -batch`` process, in the
    caller's network namespace; the first failing one stops it and raises SystemFailure."""
    try:
        done = subprocess.run(["ip", "-batch", "-"], input="\n".join(commands) + "\n", capture_output=True,
                              text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IpError(f"cannot run ip (iproute2): {exc}") from exc
    if done.returncode != 0:
        why = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        raise IpError(f"ip: {why} (commands: {'; '.join(commands)})")


def _link_present(name: str) -> bool:
    """In the caller's network namespace. Not /sys/class/net: sysfs shows the namespace of
    whoever mounted it, and meshns may run in a namespace entered with ``nsenter --net`` (a
    host of the multi-host tests), where /sys still lists the root namespace's links."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def ensure_bridge(name: str, address: IPv4Interface) -> None:
    if not _link_present(name):
        try:
            ip_batch([f"link add name {name} type bridge"])
        except IpError:
            if not _link_present(name):  # else a concurrent create made it first
                raise
    ip_batch(bridge_commands(name, address))


def _configure_inside(step: ConfigurePod) -> None:
    for key in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "w") as f:
            f.write("1")
    ip_batch(inside_commands(step))  # this child is in the pod's namespace, and so is its ip


def link_exists(name: str) -> bool:
    from pyroute2 import IPRoute  # noqa: PLC0415 - delete and gc only (module docstring)

    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def delete_link(name: str) -> None:
    """Delete a link if present (deleting one end of a veth pair deletes both)."""
    from pyroute2 import IPRoute  # noqa: PLC0415 - delete and gc only (module docstring)
    from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=name):
            try:
                ipr.link("del", index=idx)
            except NetlinkError as exc:
                if exc.code != 19:  # ENODEV: gone meanwhile
                    raise SystemFailure(f"cannot delete link {name}: {exc}") from exc


def delete_netns(name: str) -> None:
    from pyroute2 import netns  # noqa: PLC0415 - delete and gc only (module docstring)

    if os.path.exists(netns_path(name)):
        try:
            netns.remove(name)
        except OSError as exc:
            raise SystemFailure(f"cannot delete network namespace {name}: {exc}") from exc


def bridge_ports(bridge: str) -> list[str]:
    from pyroute2 import IPRoute  # noqa: PLC0415 - delete and gc only (module docstring)

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
