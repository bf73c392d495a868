"""What must not escape a pod: traffic off the host, and state after the pod is gone."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Mesh, wait_for

pytestmark = pytest.mark.root


@pytest.fixture
def outside(mesh: Mesh) -> Iterator[tuple[str, str]]:
    """A network beyond the host that the test owns: a namespace behind a second host veth,
    with a listener that answers 'outside'. Yields (address, host interface)."""
    a, b, third = mesh.cidr.split(".")[:3]
    net = f"{a}.{b}.{(int(third) + 128) % 256}"
    host_ip, far_ip = f"{net}.1", f"{net}.2"
    ns, host_if = f"{mesh.prefix}outside", f"to{mesh.bridge[2:]}"
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    saved = forward.read_text()
    listener = None
    try:
        for cmd in (["ip", "netns", "add", ns],
                    ["ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns],
                    ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
                    ["ip", "link", "set", host_if, "up"],
                    ["ip", "-n", ns, "link", "set", "lo", "up"],
                    ["ip", "-n", ns, "addr", "add", f"{far_ip}/30", "dev", "eth0"],
                    ["ip", "-n", ns, "link", "set", "eth0", "up"],
                    ["ip", "-n", ns, "route", "add", "default", "via", host_ip]):
            subprocess.run(cmd, check=True, capture_output=True)
        listener = subprocess.Popen(["ip", "netns", "exec", ns, "socat", "TCP-LISTEN:7777,reuseaddr,fork",
                                     "SYSTEM:echo outside"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        forward.write_text("1\n")  # a host that routes (Docker hosts do): the case the guard is for
        yield far_ip, host_if
    finally:
        forward.write_text(saved)
        if listener is not None:
            listener.kill()
            listener.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_pod_traffic_does_not_leave_the_host(mesh: Mesh, outside: tuple[str, str]) -> None:
    far_ip, _ = outside
    if "-P FORWARD DROP" in subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout:
        pytest.skip("this host drops forwarded traffic itself; the control below could not pass")
    mesh.run("create", "client")

    def from_host() -> str:
        return subprocess.run(["socat", "-T", "2", "-", f"TCP:{far_ip}:7777"], input="", capture_output=True,
                              text=True, timeout=10).stdout.strip()

    def from_pod() -> str:
        return mesh.exec("client", "nc", "-d", "-w", "2", far_ip, "7777", check=False, timeout=30).stdout.strip()

    assert wait_for(from_host, what="the outside listener") == "outside"  # the network works
    assert from_pod() == ""  # ... but not from a pod
    # Control: without the guard rules the same call gets through, so they are what stops it.
    bridge = mesh.bridge
    for spec in (["-i", bridge, "!", "-o", bridge], ["!", "-i", bridge, "-o", bridge]):
        subprocess.run(["iptables", "-w", "-D", "FORWARD", *spec, "-m", "comment", "--comment",
                        f"meshns-guard:{bridge}", "-j", "DROP"], check=True)
    assert wait_for(from_pod, timeout_s=30, what="forwarding without the guard") == "outside"


def test_gc_collects_a_pod_whose_namespace_vanished(mesh: Mesh) -> None:
    # What a reboot does: every process gone, /run/netns empty, the registry still says ready.
    mesh.run("create", "web", "--", "sleep", "600")
    status = mesh.status("web")
    os.kill(int(status["supervisor_pid"]), signal.SIGKILL)
    pids = subprocess.run(["ip", "netns", "pids", mesh.netns("web")], capture_output=True, text=True).stdout.split()
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", mesh.netns("web")], check=True)
    wait_for(lambda: not os.path.exists(f"/proc/{status['sidecar_pid']}/cmdline")
             or not Path(f"/proc/{status['sidecar_pid']}/cmdline").read_bytes(), what="processes gone")
    out = mesh.run("gc").stdout
    assert "namespace no longer exists" in out
    assert mesh.leftovers() == []
