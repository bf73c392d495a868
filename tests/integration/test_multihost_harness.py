"""The multi-host harness itself (tests/integration/multihost.py), with what exists today: no
agent, pod CIDRs given by hand, cross-host routes and forward rules added by hand."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from multihost import ETC_NETNS, LAN_IF, Lan, SimHost, lan_fixture, netns_list, ns_id, pids_in

pytestmark = pytest.mark.root


@pytest.fixture
def lan(request: pytest.FixtureRequest) -> Iterator[Lan]:
    yield from lan_fixture(request)


def etcd_health(host: SimHost, lan: Lan) -> subprocess.CompletedProcess[str]:
    return host.run_cmd("etcdctl", "--endpoints", lan.etcd_endpoint, "--dial-timeout=2s",
                        "--command-timeout=3s", "endpoint", "health", check=False, timeout=30)


def stats(host: SimHost, pod: str) -> dict[str, dict[str, int]]:
    data = json.loads(host.run("status", pod, "-o", "json").stdout)["sidecar_stats"]
    assert isinstance(data, dict)
    return data


def route_between(host: SimHost, other: SimHost) -> None:
    """By hand, what the agent will do: a route to the other host's pods via its lan address,
    and ACCEPTs ahead of meshns's forward guard for traffic between the bridge and those pods."""
    cidr = other.test_pod_cidr
    host.run_cmd("ip", "route", "add", cidr, "via", other.address, "dev", LAN_IF)
    host.run_cmd("iptables", "-w", "-I", "FORWARD", "1", "-i", host.bridge, "-d", cidr, "-j", "ACCEPT")
    host.run_cmd("iptables", "-w", "-I", "FORWARD", "1", "-o", host.bridge, "-s", cidr, "-j", "ACCEPT")


def test_hosts_are_namespaces_on_the_lan_and_reach_etcd(lan: Lan) -> None:
    a, b = lan.add_host("a"), lan.add_host("b")
    assert len({a.address, b.address, lan.etcd_address}) == 3
    assert len({a.bridge, b.bridge}) == 2 and len({a.prefix, b.prefix}) == 2
    assert len({a.service_cidr, b.service_cidr}) == 2 and "MESHNS_POD_CIDR" not in a.env
    for host in (a, b):
        assert ns_id(host.netns) is not None
        assert host.run_cmd("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        health = etcd_health(host, lan)
        assert health.returncode == 0 and "is healthy" in health.stdout + health.stderr, health
    a.run_cmd("etcdctl", "--endpoints", lan.etcd_endpoint, "put", "/meshns-test/k", "from-a")
    got = b.run_cmd("etcdctl", "--endpoints", lan.etcd_endpoint, "get", "--print-value-only", "/meshns-test/k")
    assert got.stdout.strip() == "from-a"
    # Nothing of the lan is in the root namespace.
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert lan.prefix not in root_links


def test_pod_on_one_host_reaches_a_pod_on_another(lan: Lan, tmp_path: Path) -> None:
    a, b = lan.add_host("a"), lan.add_host("b")
    token = os.urandom(8).hex()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text(f"hello {token}")
    os.chmod(tmp_path, 0o755)
    os.chmod(www, 0o755)
    server = ["python3", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", str(www)]
    for host in (a, b):  # the same pod name on both hosts: their meshes do not collide
        host.run("create", "web", "--", *server, env=host.env_with_cidr(host.test_pod_cidr))
    ip_a, ip_b = a.pod_ip("web"), b.pod_ip("web")
    assert ip_a.startswith(a.test_pod_cidr.rsplit(".", 1)[0] + ".")
    assert ip_b.startswith(b.test_pod_cidr.rsplit(".", 1)[0] + ".")
    curl = ["curl", "-sS", "--max-time", "5"]

    # Without routes the other host's pods are unreachable.
    assert a.run("exec", "web", "--", *curl, f"http://{ip_b}:8080/index.html", check=False).returncode != 0

    route_between(a, b)
    route_between(b, a)
    client0, server0 = stats(a, "web"), stats(b, "web")
    out = a.run("exec", "web", "--", *curl, "--retry", "10", "--retry-all-errors", "--retry-delay", "0",
                f"http://{ip_b}:8080/index.html")
    assert out.stdout == f"hello {token}"
    client, srv = stats(a, "web"), stats(b, "web")
    assert client["outbound"]["accepted"] > client0["outbound"]["accepted"]  # through A's sidecar
    assert srv["inbound"]["accepted"] > server0["inbound"]["accepted"]  # and B's
    # And back the other way.
    back = b.run("exec", "web", "--", *curl, "--retry", "10", "--retry-all-errors", "--retry-delay", "0",
                 f"http://{ip_a}:8080/index.html")
    assert back.stdout == f"hello {token}"


def test_kill_simulates_a_host_dying(lan: Lan) -> None:
    a, b = lan.add_host("a"), lan.add_host("b")
    a.run("create", "sleeper", "--", "sleep", "600", env=a.env_with_cidr(a.test_pod_cidr))
    background = a.popen("sleep", "600")
    pod_ns = a.pod_netns()
    assert pod_ns == [f"{a.prefix}sleeper"]
    pod_id = ns_id(pod_ns[0])
    assert pod_id is not None
    assert pids_in({pod_id}), "the pod runs processes"
    assert b.run_cmd("curl", "-sS", "--max-time", "5", f"http://{lan.etcd_address}:2379/version").returncode == 0

    a.kill()

    assert background.poll() is not None
    assert a.pids() == [] and pids_in({pod_id}) == []
    lan_side = subprocess.run(["ip", "-n", lan.lan_ns, "-o", "link", "show", a.lan_peer], capture_output=True,
                              text=True, check=True).stdout
    assert "state DOWN" in lan_side
    host_side = a.run_cmd("ip", "-o", "link", "show", LAN_IF).stdout
    assert "state DOWN" in host_side
    # A cannot reach etcd any more; B is unaffected.
    assert a.run_cmd("curl", "-sS", "--max-time", "2", f"http://{lan.etcd_address}:2379/version",
                     check=False).returncode != 0
    assert etcd_health(b, lan).returncode == 0
    # What the dead host left (namespaces, state) is still there for a test to look at; the
    # fixture's cleanup (meshns delete + gc in A) removes it without force.
    assert ns_id(pod_ns[0]) is not None


def test_etcd_outage_and_return_keep_the_data(lan: Lan) -> None:
    a = lan.add_host("a")
    a.run_cmd("etcdctl", "--endpoints", lan.etcd_endpoint, "put", "/meshns-test/survives", "yes")
    lan.stop_etcd()
    assert etcd_health(a, lan).returncode != 0
    lan.start_etcd()
    assert etcd_health(a, lan).returncode == 0
    got = a.run_cmd("etcdctl", "--endpoints", lan.etcd_endpoint, "get", "--print-value-only",
                    "/meshns-test/survives")
    assert got.stdout.strip() == "yes"
    lan.stop_etcd(kill=True)  # a crash, too
    lan.start_etcd()
    assert etcd_health(a, lan).returncode == 0


def _nothing_of(prefix: str) -> None:
    assert not [ns for ns in netns_list() if ns.startswith(prefix)]
    assert not (ETC_NETNS.is_dir() and [d for d in os.listdir(ETC_NETNS) if d.startswith(prefix)])
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert prefix not in links
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert prefix not in ps


def test_cleanup_leaves_nothing(tmp_path: Path) -> None:
    with Lan() as lan:
        a, b = lan.add_host("a"), lan.add_host("b")
        for host in (a, b):
            host.run("create", "p1", "--", "sleep", "600", env=host.env_with_cidr(host.test_pod_cidr))
        b.kill()
        a.popen("sleep", "600")
        prefix, base = lan.prefix, lan.dir
    _nothing_of(prefix)
    assert not base.exists()


def test_cleanup_reports_when_force_was_needed() -> None:
    lan = Lan()
    with pytest.raises(AssertionError, match="needed force"), lan:
        a = lan.add_host("a")
        # A process in the host's namespace the harness does not know of: delete + gc cannot stop it.
        stray = subprocess.Popen(["nsenter", f"--net=/run/netns/{a.netns}", "--", "sleep", "600"],
                                 start_new_session=True)
        # Only once nsenter has entered the namespace is the process the host's to find.
        deadline = time.monotonic() + 10
        while stray.pid not in a.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert stray.wait(10) == -9
    _nothing_of(lan.prefix)
