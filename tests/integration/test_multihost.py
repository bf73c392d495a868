"""A mesh across hosts on etcd: simulated hosts (network namespaces on a test lan, each with its
own state directory, bridge and agent) and a real etcd in its own namespace.

One scenario per test, because a three-host mesh takes a while to build:
- identity: host a holds the mesh root; b and c import intermediates issued by it;
- b and c join at the same time (distinct blocks); a block already held is refused;
- a pod on a calls a service whose endpoints are on b and c, by name, with mTLS and its SPIFFE
  identity, balanced over both; and a pod on b by address and by <pod>.<host>;
- config applied on c steers a's traffic; deleted on b, it stops;
- c dies: its endpoints vanish from a's view within the TTL and traffic moves to b;
- etcd stops under load: no request fails; config applied meanwhile reaches b afterwards;
- b leaves: it vanishes at once, its block is free again, nothing meshns made is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from multihost import Lan, SimHost, lan_fixture

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
TTL = "3"
TD = "mh.example"


@pytest.fixture
def lan(request: pytest.FixtureRequest) -> Iterator[Lan]:
    yield from lan_fixture(request)


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def cluster_cidr(lan: Lan) -> str:
    return f"{lan.net}.16.0/20"  # blocks 10.R.16.0/24 ... 10.R.31.0/24, clear of the lan's ranges


def join_args(lan: Lan, h: SimHost, *extra: str) -> list[str]:
    return ["host", "join", "--etcd", lan.etcd_endpoint, "--address", h.address, "--name", h.name,
            "--cluster-cidr", cluster_cidr(lan), "--ttl", TTL, *extra]


def hosts_seen(h: SimHost) -> dict[str, dict[str, Any]]:
    out = json.loads(h.run("host", "list", "-o", "json").stdout)
    return {x["name"]: x for x in out["hosts"]}


def backend(name: str) -> list[str]:
    return [PY, str(APPS / "backend.py"), "--name", name, "--port", "9080"]


def load(h: SimHost, pod: str, url: str, n: int, *extra: str) -> dict[str, Any]:
    out = h.run("exec", pod, "--", PY, str(APPS / "load.py"), url, "-n", str(n), *extra, timeout=300)
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def apply(h: SimHost, tmp_path: Path, text: str) -> None:
    f = tmp_path / f"cfg-{h.name}-{time.monotonic_ns()}.yaml"
    f.write_text(text)
    h.run("apply", "-f", str(f))


SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: on-b, labels: {host: b}}
  - {name: on-c, labels: {host: c}}
"""
ONLY_B = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - destination: {host: echo, subset: on-b}
"""
RETRIES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-retries}
spec:
  hosts: [echo]
  http:
  - retries: {attempts: 5, perTryTimeout: 2s}
    route:
    - destination: {host: echo}
"""


def identities(lan: Lan, tmp_path: Path, root: SimHost, *others: SimHost) -> None:
    root.run("ca", "init", "--trust-domain", TD)
    for h in others:
        out = tmp_path / f"ca-{h.name}"
        root.run("ca", "intermediate", "--host", h.name, "--out", str(out))
        h.run("ca", "import-intermediate", str(out))


def test_mesh_across_three_hosts(lan: Lan, tmp_path: Path) -> None:
    a, b, c, d = (lan.add_host(n) for n in "abcd")
    identities(lan, tmp_path, a, b, c, d)

    # -- joining: a first (it records the cluster), then b and c at the same moment.
    a.run(*join_args(lan, a))
    racers = [h.popen("meshns", *join_args(lan, h), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for h in (b, c)]
    for p in racers:
        out, err = p.communicate(timeout=90)
        assert p.returncode == 0, (out, err)
    seen = wait_for(lambda: set(hosts_seen(a)) == {"a", "b", "c"}, "a to see three hosts")
    blocks = {n: x["pod_cidr"] for n, x in hosts_seen(a).items()}
    assert len(set(blocks.values())) == 3, blocks
    print(f"\njoined: blocks {blocks}; a saw all three after {seen:.2f} s")

    # A block someone holds is refused, naming the holder, and nothing is left of the attempt.
    taken = d.run(*join_args(lan, d, "--block", blocks["b"]), check=False)
    assert taken.returncode != 0 and "b" in taken.stderr, taken
    assert not (d.state_dir / "host" / "settings.json").exists()
    assert "d" not in hosts_seen(a)

    # -- pods: the echo service on b and c, a client on a.
    for h in (b, c):
        h.run("create", "echo", "--service", "echo:9080", "--label", f"host={h.name}", "--", *backend(f"echo-{h.name}"))
    a.run("create", "client", "--", "sleep", "3600")
    assert a.pod_ip("client").startswith(blocks["a"].rsplit(".", 1)[0] + ".")
    wait_for(lambda: len(json.loads(a.run("service", "show", "echo", "-o", "json").stdout)["endpoints"]) == 2,
             "a to see echo's two endpoints on b and c")

    # By service name: balanced over both hosts, with mTLS carrying the client's identity.
    got = load(a, "client", "http://echo:9080/whoami", 40)
    assert got["status"] == {"200": 40} and set(got["backends"]) == {"echo-b", "echo-c"}, got
    headers = a.run("exec", "client", "--", "curl", "-sS", "--max-time", "5", "http://echo:9080/headers").stdout
    assert f"x-meshns-client-id: spiffe://{TD}/ns/default/sa/client" in headers.lower(), headers
    # Each host signs with its own intermediate under the one root.
    for h in (b, c):
        cert = json.loads(h.run("cert", "show", "echo", "-o", "json").stdout)
        assert cert["identity"] == f"spiffe://{TD}/ns/default/sa/echo"
        assert f"intermediate {h.name}" in cert["issuer"] and cert["chain"] == 2, cert

    # Pod to pod across hosts: by address, and by <pod>.<host>.
    ip_b = b.pod_ip("echo")
    for target in (ip_b, "echo.b"):
        out = a.run("exec", "client", "--", "curl", "-sS", "--max-time", "5", f"http://{target}:9080/whoami").stdout
        assert out == "echo-b", (target, out)

    # -- config applied on c reaches a; deleted on b, it is gone from a too.
    apply(c, tmp_path, SUBSETS)
    apply(c, tmp_path, ONLY_B)
    wait_for(lambda: set(load(a, "client", "http://echo:9080/whoami", 10)["backends"]) == {"echo-b"},
             "c's VirtualService to steer a's traffic to b")
    b.run("delete", "-f", str(_write(tmp_path, ONLY_B)))
    wait_for(lambda: set(load(a, "client", "http://echo:9080/whoami", 20)["backends"]) == {"echo-b", "echo-c"},
             "the VirtualService deleted on b to be gone from a")
    assert "kind: VirtualService" not in c.run("get").stdout

    # A revocation made on a reaches every host (b's sidecars refuse that identity too).
    ghost = f"spiffe://{TD}/ns/default/sa/ghost"
    a.run("identity", "revoke", ghost)
    wait_for(lambda: ghost in b.run("identity", "list").stdout and ghost in c.run("identity", "list").stdout,
             "a's revocation to reach b and c")

    # -- c dies: within the TTL its endpoints vanish from a's view; traffic moves to b.
    c.kill()
    gone = wait_for(lambda: "c" not in hosts_seen(a), "c to vanish from a's view", timeout=20)
    wait_for(lambda: len(json.loads(a.run("service", "show", "echo", "-o", "json").stdout)["endpoints"]) == 1,
             "c's endpoint to leave a's snapshot", timeout=10)
    print(f"c killed: gone from a's view after {gone:.2f} s (TTL {TTL} s)")
    got = load(a, "client", "http://echo:9080/whoami", 30)
    assert got["status"] == {"200": 30} and got["backends"] == {"echo-b": 30}, got

    # -- b is cut off longer than its TTL: it vanishes, then comes back by itself once the lan
    # heals (its agent finds its lease expired, registers again and republishes its pods).
    lan_link(lan, b, "down")
    wait_for(lambda: "b" not in hosts_seen(a), "partitioned b to vanish from a's view", timeout=20)
    lan_link(lan, b, "up")
    back = wait_for(lambda: hosts_seen(a).get("b", {}).get("pods") == 1, "b and its pod to come back", timeout=30)
    print(f"b partitioned past its TTL: back in a's view {back:.2f} s after the lan healed")
    wait_for(lambda: load(a, "client", "http://echo:9080/whoami", 5)["status"] == {"200": 5},
             "a to reach b's echo again")

    # -- etcd stops under load: sidecars keep their snapshots, nothing fails.
    runner = a.popen("meshns", "exec", "client", "--", PY, str(APPS / "load.py"), "http://echo:9080/whoami",
                     "-n", "100000", "--duration", "9", "--pace", "0.01", stdout=subprocess.PIPE)
    time.sleep(2)
    lan.stop_etcd()
    time.sleep(1)
    apply(a, tmp_path, RETRIES)  # local change while etcd is away: must reach b afterwards
    time.sleep(2)
    down = json.loads(a.run("host", "list", "-o", "json").stdout)
    lan.start_etcd()
    out, _ = runner.communicate(timeout=60)
    during = json.loads(out)
    assert not during["failures"] and set(during["status"]) == {"200"}, during
    print(f"etcd outage under load: {sum(during['status'].values())} requests, 0 failed; "
          f"a's agent said connected={down['connected']}")
    assert down["connected"] is False
    wait_for(lambda: "echo-retries" in b.run("get", "virtualservice").stdout,
             "the config applied during the outage to reach b", timeout=30)
    wait_for(lambda: json.loads(a.run("host", "list", "-o", "json").stdout)["connected"], "a to reconnect")
    # Caught up without duplicates: exactly one key per live pod and host.
    keys = lan.etcdctl("get", "--prefix", "--keys-only", "/meshns/default/").stdout.split()
    assert sorted(k for k in keys if "/pods/" in k) == ["/meshns/default/pods/a/client", "/meshns/default/pods/b/echo"]
    assert sorted(k for k in keys if "/hosts/" in k) == ["/meshns/default/hosts/a", "/meshns/default/hosts/b"]

    # etcd holds public certificates only: no key of the root, an intermediate or a workload.
    everything = lan.etcdctl("get", "--prefix", "/").stdout
    assert "PRIVATE KEY" not in everything and "BEGIN CERTIFICATE" in everything

    # -- b leaves: gone from a at once (not after a TTL), its block free again.
    b.run("delete", "echo")
    b.run("host", "leave")
    wait_for(lambda: "b" not in hosts_seen(a), "b to vanish after leaving", timeout=5)
    keys = lan.etcdctl("get", "--prefix", "--keys-only", "/meshns/default/blocks/").stdout.split()
    assert not any(blocks["b"].replace("/", "-") in k for k in keys), keys
    assert b.run_cmd("ip", "route", "show", "proto", "188").stdout.strip() == ""


def lan_link(lan: Lan, h: SimHost, state: str) -> None:
    """Unplug (or plug back) a host at the lan's side: its own link stays up, as when a switch
    port or cable fails."""
    subprocess.run(["ip", "-n", lan.lan_ns, "link", "set", h.lan_peer, state], check=True)


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / f"doc-{time.monotonic_ns()}.yaml"
    f.write_text(text)
    return f


def test_host_commands_refuse_bad_input_and_leave_nothing(lan: Lan) -> None:
    h = lan.add_host("e")
    settings = h.state_dir / "host" / "settings.json"
    bad = [
        (["--etcd", "ftp://x", "--address", h.address], "expected http://"),
        (["--etcd", lan.etcd_endpoint, "--address", "not-an-ip"], "not-an-ip"),
        (["--etcd", lan.etcd_endpoint, "--address", h.address, "--name", "Bad_Name"], "Bad_Name"),
        (["--etcd", lan.etcd_endpoint, "--address", h.address, "--cluster-cidr", cluster_cidr(lan),
          "--block", "192.168.7.0/24"], "not inside"),
    ]
    for args, words in bad:
        done = h.run("host", "join", *args, check=False)
        assert done.returncode == 2 and words in done.stderr, (args, done)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert not settings.exists()
    for args in (["host", "list"], ["host", "leave"]):
        done = h.run(*args, check=False)
        assert done.returncode == 2 and "not joined" in done.stderr, done

    # Nothing listens on the lan's own address: the agent cannot join; the command says so,
    # stops it and forgets the attempt.
    nowhere = f"http://{lan.net}.0.1:2379"
    done = h.run("host", "join", "--etcd", nowhere, "--address", h.address, "--wait", "3", check=False)
    assert done.returncode == 3 and "did not join" in done.stderr, done
    assert not settings.exists()
    assert not [p for p in h.pids() if b"meshns.cluster.agent" in Path(f"/proc/{p}/cmdline").read_bytes()]

    # Joining twice with the same settings is a no-op; with others it is refused.
    h.run(*join_args(lan, h))
    again = h.run(*join_args(lan, h))
    assert "already joined" in again.stdout
    other = h.run(*join_args(lan, h, "--ttl", "7"), check=False)
    assert other.returncode == 2 and "other settings" in other.stderr, other
    h.run("host", "leave")
    assert not settings.exists()
