"""The pod network plan: every kernel change ``create`` makes, as data.

Pure: built from the mesh config and the pod's registry record, printed by ``--dry-run``
(rendered as the equivalent ``ip`` commands) and golden-tested; netns.apply executes it.

The veth pair is created with its peer directly inside the pod's namespace and named eth0 there,
in one netlink request: no moment exists where a half-made pair sits in the host namespace, and
deleting the namespace deletes both ends. IPv6 is switched off inside the pod because the
interception rules are IPv4 only; a pod that could speak IPv6 link-local could bypass its sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from meshns.config import MeshConfig
from meshns.netns.ipam import gateway, gateway_interface

POD_IFNAME = "eth0"


@dataclass(frozen=True)
class EnsureBridge:
    name: str
    address: IPv4Interface


@dataclass(frozen=True)
class CreateNetns:
    name: str


@dataclass(frozen=True)
class CreateVethPair:
    host: str
    peer: str
    netns: str
    bridge: str


@dataclass(frozen=True)
class ConfigurePod:
    """Everything done inside the pod's namespace, applied in one child process."""

    netns: str
    ifname: str
    address: IPv4Interface
    gateway: IPv4Address
    mac: str


def mac_for(ip: IPv4Address) -> str:
    """The pod's MAC, derived from its address (as the CNI bridge plugin does, 0a:58:<ip>).

    Addresses are reused after a delete; with a random MAC, every other pod's neighbour cache
    would keep the old one and send the new pod's traffic into the void until the entry went
    stale (tens of seconds). Same address, same MAC: nothing is stale.
    """
    return "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)


Step = EnsureBridge | CreateNetns | CreateVethPair | ConfigurePod


@dataclass(frozen=True)
class PodNetPlan:
    pod: str
    steps: tuple[Step, ...]


def plan_pod_network(cfg: MeshConfig, pod: str, ip: IPv4Address, netns: str, veth: str) -> PodNetPlan:
    addr = IPv4Interface(f"{ip}/{cfg.pod_cidr.prefixlen}")
    return PodNetPlan(
        pod=pod,
        steps=(
            EnsureBridge(cfg.bridge, gateway_interface(cfg.pod_cidr)),
            CreateNetns(netns),
            CreateVethPair(veth, POD_IFNAME, netns, cfg.bridge),
            ConfigurePod(netns, POD_IFNAME, addr, gateway(cfg.pod_cidr), mac_for(ip)),
        ),
    )


# What netns.apply gives ``ip -batch`` for a step (the commands without the leading "ip"). The
# bridge itself is added only when missing (apply checks); the address is "replace"d, which
# leaves an address already there as it is.
def bridge_commands(name: str, address: IPv4Interface) -> list[str]:
    return [f"addr replace {address} dev {name}", f"link set {name} up"]


def veth_commands(step: CreateVethPair) -> list[str]:
    return [
        f"link add name {step.host} type veth peer name {step.peer} netns {step.netns}",
        f"link set {step.host} master {step.bridge} up",
    ]


def inside_commands(step: ConfigurePod) -> list[str]:
    """Run inside the pod's namespace (after its IPv6 is turned off)."""
    return [
        "link set lo up",
        f"link set {step.ifname} address {step.mac}",
        f"addr add {step.address} dev {step.ifname}",
        f"link set {step.ifname} up",
        f"route add default via {step.gateway} dev {step.ifname}",
    ]


def render_step(step: Step) -> list[str]:
    match step:
        case EnsureBridge(name, address):
            return [
                f"ip link add {name} type bridge    # only if missing",
                f"ip addr add {address} dev {name}    # only if missing",
                f"ip link set {name} up",
            ]
        case CreateNetns(name):
            return [f"ip netns add {name}"]
        case CreateVethPair(host, peer, ns, bridge):
            return [
                f"ip link add {host} type veth peer name {peer} netns {ns}",
                f"ip link set {host} master {bridge} up",
            ]
        case ConfigurePod(ns, ifname, address, gw, mac):
            return [
                f"ip netns exec {ns} sysctl -w net.ipv6.conf.all.disable_ipv6=1",
                f"ip netns exec {ns} sysctl -w net.ipv6.conf.default.disable_ipv6=1",
                f"ip -n {ns} link set lo up",
                f"ip -n {ns} link set {ifname} address {mac}",
                f"ip -n {ns} addr add {address} dev {ifname}",
                f"ip -n {ns} link set {ifname} up",
                f"ip -n {ns} route add default via {gw} dev {ifname}",
            ]
    raise AssertionError(step)


def render_plan(plan: PodNetPlan) -> str:
    lines = [f"# pod {plan.pod}: network namespace plan"]
    for step in plan.steps:
        lines.extend(render_step(step))
    return "\n".join(lines) + "\n"
