"""Install the interception rules in real throwaway namespaces and prove they redirect.

Topology (both namespaces are created here and always deleted):

    pod ns  v0 10.251.N.1/24  <--veth-->  v1 10.251.N.2/24  peer ns

A listener in the pod answers on 15001 and 15006 with the SO_ORIGINAL_DST it recovered. Nothing
listens on 8080 anywhere, so a connection that is *not* redirected is refused.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshns.errors import SystemFailure
from meshns.intercept.apply import (
    apply_in_netns,
    counters_in_netns,
    read_installed_in_netns,
)
from meshns.intercept.plan import Comment, Operand, Owner, Rule, RulePlan, Target, plan_rules
from meshns.intercept.render import render_save
from meshns.intercept.spec import InterceptSpec
from meshns.netns.child import run_in_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, iptables)"),
    pytest.mark.skipif(shutil.which("iptables-legacy-save") is None, reason="needs iptables-legacy"),
]

# Runs inside the pod namespace, as root; one thread per port.
LISTENER = r"""
import socket, struct, sys, threading, time
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; Python has no constant for it
def serve(port):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(16)
    ready.append(port)
    while True:
        conn, _ = srv.accept()
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
        dport, = struct.unpack("!H", raw[2:4])
        conn.sendall(f"{port} {socket.inet_ntoa(raw[4:8])}:{dport}\n".encode()); conn.close()
ready = []
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
while len(ready) < len(sys.argv) - 1: time.sleep(0.01)
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass(frozen=True)
class Pod:
    ns: str
    peer: str
    ip: str
    peer_ip: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def pod() -> Iterator[Pod]:
    tag = secrets.token_hex(3)
    subnet = f"10.251.{secrets.randbelow(254) + 1}"
    pod = Pod(f"mtst-ic-{tag}", f"mtst-ic-{tag}-p", f"{subnet}.1", f"{subnet}.2")
    try:
        ip("netns", "add", pod.ns)
        ip("netns", "add", pod.peer)
        ip("-n", pod.ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", pod.peer)
        for ns, dev, addr in ((pod.ns, "v0", pod.ip), (pod.peer, "v1", pod.peer_ip)):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield pod
    finally:
        for ns in (pod.ns, pod.peer):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def listener(pod: Pod) -> Iterator[None]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", pod.ns, sys.executable, "-c", LISTENER, "15001", "15006"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield
    finally:
        proc.kill()  # our own child, by its Popen handle
        proc.wait()


def _connect(host: str, port: int, uid: int | None, source: str | None) -> str:
    """Runs inside a namespace (forked child): connect and return what happened."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    with socket.socket() as sock:
        sock.settimeout(3)
        if source is not None:
            sock.bind((source, 0))
        try:
            sock.connect((host, port))
            return sock.makefile().readline().strip()
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "timeout"


def connect(ns: str, host: str, port: int, *, uid: int | None = None, source: str | None = None) -> str:
    return run_in_netns(ns, _connect, host, port, uid, source)


def counter(ns: str, comment: str) -> int:
    return sum(n for _, c, n in counters_in_netns(ns) if c == comment)


def saved_rules(ns: str) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "nat"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith(("-A", ":"))]


def assert_installed(ns: str, plan: RulePlan) -> None:
    rendered = render_save(plan)
    assert read_installed_in_netns(ns) == rendered
    expected = [line for line in rendered.splitlines() if line.startswith(("-A", ":"))]
    saved = saved_rules(ns)
    for line in expected:
        assert saved.count(line) == 1, line
    # Nothing else of ours, and in the same order as iptables-legacy-save prints it.
    assert [line for line in saved if "MESHNS_" in line] == expected


def test_apply_is_idempotent_and_reads_back(pod: Pod) -> None:
    plan = plan_rules(InterceptSpec())
    apply_in_netns(pod.ns, plan)
    apply_in_netns(pod.ns, plan)
    assert_installed(pod.ns, plan)


def test_replan_replaces_and_keeps_foreign_rules(pod: Pod) -> None:
    ip("netns", "exec", pod.ns, "iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
    wide = plan_rules(InterceptSpec(exclude_outbound_ports=(5432,), exclude_outbound_cidrs=("10.9.0.0/16",)))
    apply_in_netns(pod.ns, wide)
    assert_installed(pod.ns, wide)
    default = plan_rules(InterceptSpec())
    apply_in_netns(pod.ns, default)
    assert_installed(pod.ns, default)
    assert "-A OUTPUT -p udp -j RETURN" in saved_rules(pod.ns)


@pytest.mark.usefixtures("listener")
def test_traffic_is_redirected(pod: Pod) -> None:
    plan = plan_rules(InterceptSpec())
    apply_in_netns(pod.ns, plan)
    apply_in_netns(pod.ns, plan)
    out_rule, in_rule = "meshns: to outbound listener", "meshns: to inbound listener"
    assert counter(pod.ns, out_rule) == 0

    # Sanity: without interception nothing listens on 8080 in the peer.
    assert connect(pod.ns, pod.peer_ip, 8080, uid=1337) == "refused"

    # The app's outbound connection lands on 15001, which recovers the original destination.
    assert connect(pod.ns, pod.peer_ip, 8080) == f"15001 {pod.peer_ip}:8080"
    assert counter(pod.ns, out_rule) == 1

    # The sidecar (uid 1337) is not captured: loop breaker. Neither is plain localhost.
    assert connect(pod.ns, pod.peer_ip, 8080, uid=1337) == "refused"
    assert connect(pod.ns, "127.0.0.1", 8080) == "refused"
    assert connect(pod.ns, "127.0.0.1", 8080, uid=1337) == "refused"
    assert counter(pod.ns, out_rule) == 1

    # Inbound from outside the pod lands on 15006.
    assert connect(pod.peer, pod.ip, 8080) == f"15006 {pod.ip}:8080"
    assert counter(pod.ns, in_rule) == 1

    # The app calling its own address over lo is left alone; the sidecar doing so (app calls its
    # own service) goes to the inbound listener; the inbound hop from 127.0.0.6 is not recaptured.
    assert connect(pod.ns, pod.ip, 8080) == "refused"
    assert connect(pod.ns, pod.ip, 8080, uid=1337) == f"15006 {pod.ip}:8080"
    assert connect(pod.ns, pod.ip, 8080, source="127.0.0.6") == "refused"
    assert counter(pod.ns, in_rule) == 2
    assert counter(pod.ns, out_rule) == 1


@pytest.mark.usefixtures("listener")
def test_exclusions_are_not_redirected(pod: Pod) -> None:
    spec = InterceptSpec(
        exclude_inbound_ports=(22,),
        exclude_outbound_ports=(5432,),
        exclude_outbound_cidrs=(f"{pod.peer_ip}/32",),
    )
    apply_in_netns(pod.ns, plan_rules(spec))
    assert connect(pod.peer, pod.ip, 22) == "refused"
    assert connect(pod.peer, pod.ip, 23) == f"15006 {pod.ip}:23"
    assert connect(pod.ns, pod.peer_ip, 8080) == "refused"  # excluded CIDR

    spec = InterceptSpec(exclude_outbound_ports=(5432,))
    apply_in_netns(pod.ns, plan_rules(spec))
    assert connect(pod.ns, pod.peer_ip, 5432) == "refused"
    assert connect(pod.ns, pod.peer_ip, 5433) == f"15001 {pod.peer_ip}:5433"
    assert counter(pod.ns, "meshns: outbound port 5432 excluded") == 1


def test_refused_commit_is_a_system_failure_and_changes_nothing(pod: Pod) -> None:
    good = plan_rules(InterceptSpec())
    apply_in_netns(pod.ns, good)
    # The owner match is only valid in OUTPUT-hook chains: the kernel refuses it in PREROUTING at
    # commit time, after libiptc accepted it. Nothing of the bad plan may stay behind.
    bad_rule = Rule(
        "PREROUTING",
        Target("MESHNS_INBOUND"),
        protocol=Operand("tcp"),
        matches=(Owner("uid", 1337), Comment("meshns: bad")),
    )
    bad = RulePlan(good.table, good.chains, (*good.rules, bad_rule))
    with pytest.raises(SystemFailure, match="installing interception rules"):
        apply_in_netns(pod.ns, bad)
    assert_installed(pod.ns, good)
