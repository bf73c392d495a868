"""create_netns pins a fresh network namespace as `ip netns add` does (the mount point under
/run/netns, a shared mount), without pyroute2's multiprocessing child; delete_netns removes it."""

from __future__ import annotations

import os
import subprocess

import pytest

from meshns.netns.apply import delete_netns
from meshns.netns.child import create_netns, netns_path, run_in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces need root")


def _ns_id() -> str:
    return os.readlink("/proc/self/ns/net")


def test_create_enter_and_delete() -> None:
    name = f"mnstest-create-{os.getpid()}"
    try:
        create_netns(name)
        assert name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        inside = run_in_netns(name, _ns_id)
        assert inside != _ns_id()
        assert run_in_netns(name, _ns_id) == inside  # the pin holds the same namespace
        with pytest.raises(FileExistsError):
            create_netns(name)
    finally:
        delete_netns(name)
    assert not os.path.exists(netns_path(name))


def test_ip_batch_stops_at_a_failing_command_with_ips_message() -> None:
    from meshns.netns.apply import IpError, ip_batch

    with pytest.raises(IpError, match="mnstest-none"):
        ip_batch(["link show dev lo", "link set mnstest-none up", "link show dev lo"])


def test_a_failed_pin_leaves_no_mount_point(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshns.netns import child

    name = f"mnstest-fail-{os.getpid()}"

    def refuse(path: str) -> None:
        raise OSError(1, "refused for the test")

    monkeypatch.setattr(child, "_unshare_and_pin", refuse)
    try:
        with pytest.raises(OSError, match="refused for the test"):
            create_netns(name)
        assert not os.path.exists(netns_path(name))
    finally:
        delete_netns(name)


def test_ensure_bridge_twice_in_a_namespace_entered_without_its_sysfs() -> None:
    """As a multi-host test's host (``nsenter --net``): /sys still shows the root namespace's
    links, so the second ensure_bridge must find the bridge by asking the kernel, not sysfs."""
    from ipaddress import IPv4Interface

    from meshns.netns.apply import ensure_bridge

    name = f"mnstest-br-{os.getpid()}"
    bridge = f"mnbr{os.getpid() % 100000}"
    try:
        create_netns(name)
        for _ in range(2):
            run_in_netns(name, ensure_bridge, bridge, IPv4Interface("10.254.7.1/24"))
        shown = run_in_netns(name, lambda: subprocess.run(["ip", "-o", "addr", "show", "dev", bridge],
                                                          capture_output=True, text=True, check=True).stdout)
        assert "10.254.7.1/24" in shown
        assert not os.path.exists(f"/sys/class/net/{bridge}")  # not in the root namespace
    finally:
        delete_netns(name)
