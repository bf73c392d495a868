"""A mixed soak: HTTP/1.1, gRPC (HTTP/2) and TCP traffic through the mesh for MESHNS_SOAK_S seconds
(default 600, the issue's ten minutes) while the config changes and backends restart, then three
verdicts:

(a) no lost request that a restart does not explain. HTTP and gRPC unary calls have retries on
    connect-failure, refused-stream, unavailable, reset and 503, over endpoints that do not all
    restart at once, so a restart must be invisible to them: none of their failures is excused. A
    TCP connection cannot be retried: a TCP failure is explained when it happened while the TCP
    service's only backend was being restarted (from the delete starting, ``GRACE_BEFORE_S``
    earlier, to its re-creation returning, plus ``GRACE_AFTER_S`` for the sidecars to learn the
    new endpoint). A gRPC server stream that already delivered a message cannot be retried either:
    its failure is explained by a restart window of a gRPC backend in the same way.
(b) no growth: every sidecar that lived through the whole soak is compared at rest (clients
    stopped, pools past their idle timeout) with itself at rest after a warm-up phase run the same
    way: descriptors and tasks within a small slack, RSS within ``RSS_GROWTH_LIMIT``. Sidecars of
    restarted pods are compared with a fresh sidecar at rest.
(c) every pod still serves: both HTTP backends, both gRPC backends and the TCP backend answer.

Topology: b1, b2 nginx (service web:9080; subsets "all" = both, "v1" = b1: the weight split
flips between them, and b2 restarts, so subset v1 never loses its endpoint), g1, g2 grpc_app.py
(service greeter:50051), t1 manyconns.py echo server (service tcpecho:7000, plaintext by a
port-level PeerAuthentication: the one path without mTLS), and one client pod running
tests/integration/apps/soak_client.py (about 100 requests, calls and connections a second: a
soak on 2 CPUs, not a stress test). Events every ``event_every_s``: weight flips, retry policy and
timeout changes, and `meshns delete` + `meshns create` of b2, g2 and t1.

The summary table (requests per kind, failures, explained; per sidecar fds, tasks and RSS at
both rest points) goes to stdout: run with ``pytest -s`` to see it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Mesh, nginx_conf, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
GRPC_APP = str(APPS / "grpc_app.py")
MANY = str(APPS / "manyconns.py")
SOAK_CLIENT = str(APPS / "soak_client.py")

SOAK_S = float(os.environ.get("MESHNS_SOAK_S", "600"))
GRACE_BEFORE_S = 1.0
GRACE_AFTER_S = 5.0
FD_SLACK = 8
TASK_SLACK = 2
# RSS growth allowed between the two rest points of a sidecar that lived through the whole soak.
# Measured in a 600 s run (45,000 requests, calls and connections; the client's sidecar accepted
# ~9,500 new client connections and dialled an mTLS connection for each HTTP one): client +7.3 MB,
# b1 +3.7 MB, g1 +1.9 MB (allocator high-water marks and closed TLS connections the cyclic
# collector had not freed yet). 25 MB leaves room for that, not for a leak per connection: 3 KB
# left behind by each of those ~9,500 connections would already exceed it, and a leaked TLS
# connection weighs ~40 KB.
RSS_GROWTH_LIMIT = 25 * 2**20
# Pools close idle upstream connections after this (DestinationRules below), so "at rest" comes
# quickly after the clients stop.
POOL_IDLE_S = 5
SETTLE_TIMEOUT_S = 90.0

RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,reset,503"
KINDS = ("http-keepalive", "http-newconn", "grpc-unary", "grpc-stream", "tcp-newconn", "tcp-longlived")
# Which restarted pods may explain a failure of each kind (none: every failure counts).
EXPLAINED_BY: dict[str, tuple[str, ...]] = {
    "http-keepalive": (), "http-newconn": (), "grpc-unary": (),
    "grpc-stream": ("g2",), "tcp-newconn": ("t1",), "tcp-longlived": ("t1",),
}
RESTARTED = ("b2", "g2", "t1")
LIVED_THROUGH = ("client", "b1", "g1")
PODS = (*LIVED_THROUGH, *RESTARTED)


def web_conf(tmp_path: Path, pod: str) -> Path:
    return nginx_conf(tmp_path / f"nginx-{pod}", 9080, pod, worker_connections=4096, backlog=1024)


def pod_specs(tmp_path: Path) -> dict[str, list[str]]:
    """`meshns create` arguments per pod, so that a restart re-creates it exactly."""
    return {
        "b1": ["--service", "web:9080", "--label", "app=web", "--label", "version=v1", "--",
               "nginx", "-c", str(web_conf(tmp_path, "b1"))],
        "b2": ["--service", "web:9080", "--label", "app=web", "--label", "version=v2", "--",
               "nginx", "-c", str(web_conf(tmp_path, "b2"))],
        "g1": ["--service", "greeter:50051", "--", PY, GRPC_APP, "server", "--port", "50051", "--name", "g1"],
        "g2": ["--service", "greeter:50051", "--", PY, GRPC_APP, "server", "--port", "50051", "--name", "g2"],
        "t1": ["--service", "tcpecho:7000", "--label", "app=tcpecho", "--", PY, MANY, "server", "--port", "7000"],
        "client": [],
    }


DESTINATION_RULES = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web}}
spec:
  host: web
  trafficPolicy:
    connectionPool:
      http: {{idleTimeout: {POOL_IDLE_S}s}}
  subsets:
  - name: all
    labels: {{app: web}}
  - name: v1
    labels: {{version: v1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: greeter}}
spec:
  host: greeter
  trafficPolicy:
    connectionPool:
      http: {{idleTimeout: {POOL_IDLE_S}s}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: tcpecho-plaintext, namespace: default}}
spec:
  selector: {{matchLabels: {{app: tcpecho}}}}
  mtls: {{mode: PERMISSIVE}}
  portLevelMtls:
    7000: {{mode: DISABLE}}
"""

# (weight of subset "all", weight of subset "v1")
WEIGHTS = ((100, 0), (50, 50), (20, 80), (80, 20))
# (attempts, perTryTimeout or None, route timeout or None)
RETRY_POLICIES = ((4, None, None), (5, "3s", "20s"), (3, "5s", None), (4, None, "30s"))


def virtual_services(weights: tuple[int, int], policy: tuple[int, str | None, str | None]) -> str:
    attempts, per_try, timeout = policy
    retries = f"{{attempts: {attempts}, retryOn: \"{RETRY_ON}\"" + (f", perTryTimeout: {per_try}" if per_try else "") + "}"
    extra = f"\n    timeout: {timeout}" if timeout else ""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web}}
spec:
  hosts: [web]
  http:
  - route:
    - destination: {{host: web, subset: all}}
      weight: {weights[0]}
    - destination: {{host: web, subset: v1}}
      weight: {weights[1]}
    retries: {retries}{extra}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: greeter}}
spec:
  hosts: [greeter]
  http:
  - route:
    - destination: {{host: greeter}}
    retries: {retries}{extra}
"""


@dataclass
class Window:
    pod: str
    start: float
    end: float

    def covers(self, t: float) -> bool:
        return self.start - GRACE_BEFORE_S <= t <= self.end + GRACE_AFTER_S


def explained(failure: dict[str, Any], windows: list[Window]) -> bool:
    """A failure is explained when its kind may be broken by a restart (``EXPLAINED_BY``) and it
    happened inside the restart window of one of those pods."""
    pods = EXPLAINED_BY.get(failure["loop"], ())
    return any(w.pod in pods and w.covers(float(failure["t"])) for w in windows)


@pytest.mark.parametrize(("failure", "want"), [
    ({"loop": "tcp-newconn", "t": 105.0}, True),
    ({"loop": "tcp-newconn", "t": 99.5}, True),  # grace before: the delete began at 100
    ({"loop": "tcp-newconn", "t": 98.9}, False),
    ({"loop": "tcp-longlived", "t": 114.9}, True),  # grace after: re-created at 110
    ({"loop": "tcp-longlived", "t": 115.1}, False),
    ({"loop": "grpc-stream", "t": 105.0}, False),  # t1's window does not excuse gRPC
    ({"loop": "grpc-stream", "t": 205.0}, True),
    ({"loop": "grpc-unary", "t": 205.0}, False),  # unary calls are retried: never excused
    ({"loop": "http-keepalive", "t": 105.0}, False),
    ({"loop": "http-newconn", "t": 305.0}, False),  # b2 restarting excuses nothing: retries hide it
])
def test_what_a_restart_explains(failure: dict[str, Any], want: bool) -> None:
    windows = [Window("t1", 100.0, 110.0), Window("g2", 200.0, 210.0), Window("b2", 300.0, 310.0)]
    assert explained(failure, windows) is want


def apply(mesh: Mesh, tmp_path: Path, text: str) -> None:
    f = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
    f.write_text(text)
    mesh.run("apply", "-f", str(f))


def figures(mesh: Mesh, pod: str) -> dict[str, Any]:
    s = mesh.stats(pod)
    proc = dict(s["process"])
    proc.update(active=s["active"], pid=s["pid"])
    return proc


def at_rest(mesh: Mesh) -> dict[str, dict[str, Any]]:
    """Every sidecar's figures once none has a connection left (clients stopped, pooled upstream
    connections past their idle timeout)."""
    wait_for(lambda: all(figures(mesh, pod)["active"] == 0 for pod in PODS), timeout_s=SETTLE_TIMEOUT_S,
             what="every sidecar without connections")
    time.sleep(1.0)  # the last closes' callbacks
    return {pod: figures(mesh, pod) for pod in PODS}


class Load:
    """soak_client.py running in the client pod until ``stop``."""

    def __init__(self, mesh: Mesh, tmp_path: Path, name: str) -> None:
        self.stop_file = tmp_path / f"stop-{name}"
        self.proc = mesh.popen("exec", "client", "--", PY, SOAK_CLIENT, "--stop-file", str(self.stop_file),
                               "--http", "http://web:9080/", "--grpc", "greeter:50051", "--tcp", "tcpecho:7000")
        self.started = time.time()

    def stop(self) -> dict[str, Any]:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err.decode()[-3000:]
        result = json.loads(out)
        assert isinstance(result, dict)
        return result


def create(mesh: Mesh, specs: dict[str, list[str]], pod: str) -> None:
    mesh.run("create", pod, *specs[pod], timeout=120)


def restart(mesh: Mesh, specs: dict[str, list[str]], pod: str) -> Window:
    start = time.time()
    mesh.run("delete", pod, timeout=120)
    create(mesh, specs, pod)
    return Window(pod, start, time.time())


def serves(mesh: Mesh, tmp_path: Path) -> None:
    """(c): every backend answers through the mesh, seen from the client."""
    seen: set[str] = set()

    def web() -> bool:
        out = mesh.exec("client", "curl", "-sS", "--max-time", "5", "http://web:9080/", check=False)
        if out.returncode == 0:
            seen.add(out.stdout.strip())
        return seen >= {"b1", "b2"}

    wait_for(web, timeout_s=30, what="both web backends answering")
    done = json.loads(mesh.exec("client", PY, GRPC_APP, "client", "--target", "greeter:50051", "unary",
                                "-n", "40").stdout)
    assert done["failed"] == 0 and set(done["servers"]) == {"g1", "g2"}, done
    go = tmp_path / "go-final"
    go.touch()
    tcp = json.loads(mesh.exec("client", PY, MANY, "client", "--target", "tcpecho:7000", "-n", "5", "--batch", "5",
                               "--held-file", str(tmp_path / "held-final.json"), "--go-file", str(go)).stdout)
    assert tcp["second_ok"] == 5 and not tcp["failures"], tcp


def mb(n: float) -> str:
    return f"{n / 2**20:.1f}"


def summary(result: dict[str, Any], windows: list[Window], events: list[tuple[float, str]],
            rest0: dict[str, dict[str, Any]], rest1: dict[str, dict[str, Any]],
            fresh: dict[str, dict[str, Any]], seconds: float) -> tuple[list[dict[str, Any]], str]:
    """The unexplained failures, and the table for stdout."""
    unexplained = [f for f in result["failures"] if not explained(f, windows)]
    lines = [f"\n== soak: {seconds:.0f} s of load with {len(events)} events "
             f"({sum(1 for _, e in events if e.startswith('restart'))} restarts)"]
    lines.append(f"   {'kind':16} {'ok':>8} {'failed':>7} {'explained':>9} {'unexplained':>11}")
    for kind in KINDS:
        failed = [f for f in result["failures"] if f["loop"] == kind]
        bad = [f for f in unexplained if f["loop"] == kind]
        lines.append(f"   {kind:16} {result['ok'].get(kind, 0):>8} {result['failed'].get(kind, 0):>7} "
                     f"{len(failed) - len(bad):>9} {len(bad):>11}")
    lines.append(f"   {'sidecar':8} {'compared with':14} {'fds':>9} {'tasks':>7} {'rss MB':>13} {'pid':>15}")
    for pod in PODS:
        before = rest0[pod] if pod in LIVED_THROUGH else fresh[pod]
        after = rest1[pod]
        lines.append(f"   {pod:8} {'warm-up rest' if pod in LIVED_THROUGH else 'fresh sidecar':14} "
                     f"{before['open_fds']:>4}>{after['open_fds']:<4} {before['asyncio_tasks']:>3}>{after['asyncio_tasks']:<3} "
                     f"{mb(before['rss_bytes']):>6}>{mb(after['rss_bytes']):<6} {before['pid']:>7}>{after['pid']:<7}")
    lines.append("   restart windows: " + ", ".join(f"{w.pod} {w.end - w.start:.1f}s" for w in windows))
    for f in unexplained[:20]:
        lines.append(f"   UNEXPLAINED {f}")
    return unexplained, "\n".join(lines)


@pytest.mark.timeout(SOAK_S + 900)
def test_mixed_soak(mesh: Mesh, tmp_path: Path) -> None:
    specs = pod_specs(tmp_path)
    for pod in PODS:
        create(mesh, specs, pod)
    apply(mesh, tmp_path, DESTINATION_RULES)
    apply(mesh, tmp_path, virtual_services(WEIGHTS[0], RETRY_POLICIES[0]))
    time.sleep(1.5)  # applied config reaches the sidecars within a second
    fresh = {pod: figures(mesh, pod) for pod in PODS}

    # Warm-up: the same load, no events; then the first rest point.
    warmup_s = max(20.0, min(60.0, SOAK_S / 10))
    load = Load(mesh, tmp_path, "warmup")
    time.sleep(warmup_s)
    warm = load.stop()
    assert not warm["failures"], f"failures in the warm-up, with no event at all: {warm['failures'][:10]}"
    rest0 = at_rest(mesh)

    # The soak: load, and an event every event_every_s.
    event_every_s = max(10.0, min(45.0, SOAK_S / 12))
    plan = ["weights", "restart b2", "retries", "restart g2", "weights", "restart t1", "retries"]
    windows: list[Window] = []
    events: list[tuple[float, str]] = []
    load = Load(mesh, tmp_path, "soak")
    begin = time.monotonic()
    k = weight_i = policy_i = 0
    try:
        while (next_at := begin + event_every_s * (k + 1)) < begin + SOAK_S:
            time.sleep(max(0.0, next_at - time.monotonic()))
            event = plan[k % len(plan)]
            events.append((time.time(), event))
            if event == "weights":
                weight_i += 1
            elif event == "retries":
                policy_i += 1
            if event in ("weights", "retries"):
                apply(mesh, tmp_path, virtual_services(WEIGHTS[weight_i % len(WEIGHTS)],
                                                       RETRY_POLICIES[policy_i % len(RETRY_POLICIES)]))
            else:
                windows.append(restart(mesh, specs, event.split()[1]))
            k += 1
        time.sleep(max(0.0, begin + SOAK_S - time.monotonic()))
    finally:
        result = load.stop()
    rest1 = at_rest(mesh)
    serves(mesh, tmp_path)

    unexplained, table = summary(result, windows, events, rest0, rest1, fresh, SOAK_S)
    print(table)
    # (a) nothing lost that a restart does not explain, and the load really ran
    assert not unexplained, f"{len(unexplained)} unexplained failures, first: {unexplained[:5]}"
    for kind in KINDS:
        assert result["ok"].get(kind, 0) > 0, f"no successful {kind} at all"
    assert {w.pod for w in windows} == set(RESTARTED) or event_every_s * 7 > SOAK_S, windows
    # (b) no growth, for the sidecars that lived through it all ...
    for pod in LIVED_THROUGH:
        before, after = rest0[pod], rest1[pod]
        assert after["pid"] == before["pid"], f"{pod}'s sidecar restarted during the soak"
        assert after["open_fds"] <= before["open_fds"] + FD_SLACK, (pod, before, after)
        assert after["asyncio_tasks"] <= before["asyncio_tasks"] + TASK_SLACK, (pod, before, after)
        assert after["rss_bytes"] - before["rss_bytes"] <= RSS_GROWTH_LIMIT, (pod, mb(before["rss_bytes"]),
                                                                              mb(after["rss_bytes"]))
    # ... and the re-created ones hold no more than a fresh sidecar does
    for pod in RESTARTED:
        assert rest1[pod]["open_fds"] <= fresh[pod]["open_fds"] + FD_SLACK, (pod, fresh[pod], rest1[pod])
        assert rest1[pod]["asyncio_tasks"] <= fresh[pod]["asyncio_tasks"] + TASK_SLACK, (pod, rest1[pod])
