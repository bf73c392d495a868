"""Keeps pod traffic on the host: no forwarding between the pod bridge and other interfaces.

Pods get no masquerade and no route off the host, but a host with ip_forward=1 (any host that
runs Docker, for one) would still route a pod's packets out of eth0. Two DROP rules in the
host's filter FORWARD chain close that; they carry a comment naming the bridge so they are found
and removed with it, and so nothing meshns adds outlives the mesh. Egress is an explicit option
for a later issue.

A host that has joined a multi-host mesh (``host join``) records the mesh's cluster CIDR; then
two ACCEPT rules sit above the DROPs so pods reach other hosts' pod blocks (and only those),
whatever the chain's policy is (Docker sets it to DROP). All four carry the same comment, so
removing the guard removes them together.

These are applied with the host's own ``iptables`` command (whichever backend, nft or legacy,
the host uses), not python-iptables: on the host we share tables with the user's firewall, and
writing the other backend is exactly the legacy/nft split that confuses operators. Inside a pod's
namespace the tables are ours alone.
"""

from __future__ import annotations

import shlex
import subprocess
from ipaddress import IPv4Network

from meshns.errors import SystemFailure


def guard_comment(bridge: str) -> str:
    return f"meshns-guard:{bridge}"


def guard_rules(bridge: str, cluster_cidr: IPv4Network | None = None) -> list[list[str]]:
    """The rule specs (arguments after the chain name) in chain order, pure."""
    c = guard_comment(bridge)
    allow: list[list[str]] = []
    if cluster_cidr is not None:
        net = str(cluster_cidr)
        allow = [
            ["-i", bridge, "!", "-o", bridge, "-d", net, "-m", "comment", "--comment", c, "-j", "ACCEPT"],
            ["!", "-i", bridge, "-o", bridge, "-s", net, "-m", "comment", "--comment", c, "-j", "ACCEPT"],
        ]
    return [
        *allow,
        ["-i", bridge, "!", "-o", bridge, "-m", "comment", "--comment", c, "-j", "DROP"],
        ["!", "-i", bridge, "-o", bridge, "-m", "comment", "--comment", c, "-j", "DROP"],
    ]


def render_guard(bridge: str, cluster_cidr: IPv4Network | None = None) -> list[str]:
    out = []
    for spec in guard_rules(bridge, cluster_cidr):
        words = [f'"{w}"' if w.startswith("meshns-guard") else w for w in spec]
        out.append("iptables -t filter -I FORWARD " + " ".join(words))
    return out


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["iptables", "-w", "5", "-t", "filter", *args],
                              capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        raise SystemFailure(f"cannot run iptables: {exc}") from exc


def ensure_guard(bridge: str, cluster_cidr: IPv4Network | None = None) -> None:
    # Inserted at the top in reverse, so the chain ends up in guard_rules' order: a missing
    # ACCEPT added later still lands above the DROPs.
    for spec in reversed(guard_rules(bridge, cluster_cidr)):
        if _iptables("-C", "FORWARD", *spec).returncode == 0:
            continue
        done = _iptables("-I", "FORWARD", *spec)
        if done.returncode != 0:
            raise SystemFailure(f"cannot install the host forward guard for {bridge}: {done.stderr.strip()}")


def remove_guard(bridge: str) -> None:
    """Remove every rule carrying this bridge's comment, whatever cluster CIDR it allowed (the
    mesh may have left its cluster since they were made)."""
    comment = guard_comment(bridge)
    for _ in range(16):
        lines = [ln for ln in _iptables("-S", "FORWARD").stdout.splitlines()
                 if comment in ln and ln.startswith("-A FORWARD ")]
        if not lines:
            return
        for line in lines:
            _iptables("-D", *shlex.split(line)[1:])  # -S quotes the comment: "meshns-guard:..."


def guard_installed(bridge: str) -> int:
    listing = _iptables("-S", "FORWARD").stdout
    return sum(1 for line in listing.splitlines() if guard_comment(bridge) in line)
