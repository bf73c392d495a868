"""Load: thousands of concurrent connections held through ONE sidecar, every one of them answering
twice, and the leak check after they close (the sidecar's connections, descriptors and tasks back
to what they were before).

Clients and servers are tests/integration/apps/manyconns.py (an asyncio client that ramps up in
batches, holds, echoes again and closes; an asyncio line echo server) and nginx, run unmodified in
pods. The sidecar's own figures come from its /stats ``process`` section (open fds, RSS, asyncio
tasks, live connections), read through ``meshns status``.

What bounds the sizes here, measured on the 2-core test machine:

* Descriptors. A relayed TCP connection costs its sidecar two (client side, upstream side), so
  10,000 held TCP connections need 20,000 plus the sidecar's own ~20. The supervisor raises the
  sidecar's limit to 2^20 where the machine lets it (CAP_SYS_RESOURCE); where it cannot (a
  container without that capability, like the one these tests were written on: hard limit 20,000)
  the TCP test holds as many as the limit allows and says so. 10,000 concurrent client
  connections through one sidecar are then shown over HTTP/1.1 keep-alive, where upstream
  connections are pooled and shared.
* mTLS memory. OpenSSL 3 keeps 30-40 KB per TLS connection (the client sidecar measured 207 MB
  for 4,000 held mTLS connections against 64 MB for 4,000 plaintext ones), so 10,000 mTLS
  connections would hold ~450 MB on each of the two sidecars; the handshakes themselves are
  affordable (4,000 in ~16-25 s, both sidecars on 2 cores). The 10,000-class runs are therefore
  plaintext (PeerAuthentication DISABLE) and mTLS gets its own run of 1,000.

RSS is reported and bounded by ``RSS_CEILING`` as a leak guard (issue 7 aims at 150 MB for 10,000
idle connections; the printed figures say where we are). No duration is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PLAINTEXT, Mesh, nginx_conf, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
MANY = str(APPS / "manyconns.py")

TARGET_CONNS = 10_000
TLS_CONNS = 1_000
# Connections opened at once, per batch: well under the sidecar's listen backlog (1024) and the
# kernel's somaxconn (4096 in a pod), so the ramp never drops a SYN.
BATCH = 250
TLS_BATCH = 100  # each is a handshake on both sidecars
RSS_CEILING = 300 * 2**20
# After the clients closed: what may remain above the baseline taken before (the listing's own
# descriptor, an admin connection in flight, a task of the moment).
FD_SLACK = 8
TASK_SLACK = 2
# Descriptors a sidecar keeps for itself beyond two per relayed connection (admin requests, the
# snapshot directory, log pipes...), when sizing the TCP run to its limit.
FD_RESERVE = 64
OPEN_TIMEOUT_S = 240.0



def apply(mesh: Mesh, tmp_path: Path, text: str) -> None:
    f = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
    f.write_text(text)
    mesh.run("apply", "-f", str(f))
    time.sleep(1.5)  # applied config reaches the sidecars within a second


def figures(mesh: Mesh, pod: str) -> dict[str, Any]:
    """The sidecar's process section plus the counters this file looks at."""
    s = mesh.stats(pod)
    proc = dict(s["process"])
    proc.update(active=s["active"], tls_in=s["tls_in"], tls_out=s["tls_out"],
                accepted=s["outbound"]["accepted"] + s["inbound"]["accepted"])
    return proc


def mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def check_room(mesh: Mesh, pod: str, n: int) -> None:
    """The kernel limits a run of n connections meets in the client pod: ephemeral ports (the
    client's sidecar dials n upstream connections from one address), conntrack entries (about two
    per connection in this namespace) and the accept backlog of a batch."""
    out = mesh.exec(pod, "cat", "/proc/sys/net/ipv4/ip_local_port_range", "/proc/sys/net/netfilter/nf_conntrack_max",
                    "/proc/sys/net/core/somaxconn").stdout.split()
    low, high, ct_max, somaxconn = (int(v) for v in out)
    assert high - low + 1 >= n + 1000, f"ephemeral port range {low}-{high} too small for {n} connections"
    assert ct_max >= 3 * n, f"nf_conntrack_max {ct_max} too small for {n} connections"
    assert somaxconn >= BATCH, f"somaxconn {somaxconn} below the batch size {BATCH}"


class Run:
    """One manyconns.py client run in a pod: open and hold, then (``release``) echo again and close."""

    def __init__(self, mesh: Mesh, tmp_path: Path, client: str, target: str, n: int, batch: int,
                 *extra: str) -> None:
        self.held_file, self.go_file = tmp_path / f"held-{n}.json", tmp_path / f"go-{n}"
        self.proc: subprocess.Popen[bytes] = mesh.popen(
            "exec", client, "--", PY, MANY, "client", "--target", target, "-n", str(n), "--batch", str(batch),
            "--held-file", str(self.held_file), "--go-file", str(self.go_file), *extra)

    def wait_held(self) -> dict[str, Any]:
        proc, held_file = self.proc, self.held_file
        wait_for(lambda: held_file.exists() or proc.poll() is not None, timeout_s=OPEN_TIMEOUT_S,
                 what="connections opened")
        if not held_file.exists():
            raise AssertionError(f"client exited early: {proc.communicate()[1].decode()[-2000:]}")
        held = json.loads(held_file.read_text())
        assert isinstance(held, dict)
        return held

    def release(self) -> dict[str, Any]:
        self.go_file.touch()
        out, err = self.proc.communicate(timeout=OPEN_TIMEOUT_S)
        assert self.proc.returncode == 0, err.decode()[-2000:]
        result = json.loads(out)
        assert isinstance(result, dict)
        return result

    def stop(self) -> None:
        self.go_file.touch()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def settled(mesh: Mesh, pod: str, base: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """The sidecar's figures once its connections are gone and its descriptors and tasks are back
    within the slack of ``base``; fails with the last figures if that does not happen."""
    last: dict[str, Any] = {}

    def back() -> bool:
        last.clear()
        last.update(figures(mesh, pod))
        return (last["active"] == 0 and last["open_fds"] <= base["open_fds"] + FD_SLACK
                and last["asyncio_tasks"] <= base["asyncio_tasks"] + TASK_SLACK)

    try:
        wait_for(back, timeout_s=timeout_s, what=f"{pod}'s sidecar back to its baseline")
    except AssertionError:
        raise AssertionError(f"{pod}'s sidecar did not come back to its baseline: before {base}, now {last}") from None
    return last


def report(title: str, rows: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]],
           result: dict[str, Any]) -> None:
    print(f"\n== {title}")
    print(f"   client: {json.dumps({k: result[k] for k in ('wanted', 'opened', 'second_ok', 'closed_clean')})} "
          f"seconds {result['seconds']} failures {result['failures'] or '-'}")
    print(f"   {'sidecar':8} {'phase':7} {'active':>7} {'fds':>7} {'tasks':>6} {'rss':>10}")
    for pod, before, peak, after in rows:
        for phase, f in (("before", before), ("peak", peak), ("after", after)):
            print(f"   {pod:8} {phase:7} {f['active']:>7} {f['open_fds']:>7} {f['asyncio_tasks']:>6} "
                  f"{mb(f['rss_bytes']):>10}")


Figures = dict[str, dict[str, Any]]


def hold(mesh: Mesh, run: Run, base: Figures, title: str, settle_s: float = 60.0) -> tuple[Figures, Any, Figures]:
    """Open the run's connections and hold them, take every pod's figures at the peak, have each
    answer again and close, wait for each sidecar to settle back; print the report."""
    try:
        run.wait_held()
        peak = {pod: figures(mesh, pod) for pod in base}
        result = run.release()
    finally:
        run.stop()
    after = {pod: settled(mesh, pod, base[pod], timeout_s=settle_s) for pod in base}
    report(title, [(pod, base[pod], peak[pod], after[pod]) for pod in base], result)
    return peak, result, after


def assert_all_answered(result: dict[str, Any], n: int) -> None:
    assert result["failures"] == {}, f"{result['failures']}: {result['examples']}"
    assert (result["opened"], result["second_ok"], result["closed_clean"]) == (n, n, n), result


def echo_pods(mesh: Mesh) -> None:
    mesh.run("create", "server", "--service", "echo:7000", "--", PY, MANY, "server", "--port", "7000")
    mesh.run("create", "client")


def test_tcp_connections_held_through_one_sidecar(mesh: Mesh, tmp_path: Path) -> None:
    """As many opaque TCP connections as the sidecar's descriptor limit allows, up to 10,000,
    held at once through the client's sidecar (and the server's), each echoing a line when opened
    and again after all are open; then all closed, and both sidecars back to their baseline."""
    echo_pods(mesh)
    apply(mesh, tmp_path, PLAINTEXT)
    base = {pod: figures(mesh, pod) for pod in ("client", "server")}
    limit = min(f["max_fds"] for f in base.values())
    n = min(TARGET_CONNS, (limit - max(f["open_fds"] for f in base.values()) - FD_RESERVE) // 2)
    if n < TARGET_CONNS:
        print(f"\nNOTE: the sidecars' descriptor limit is {limit} (the machine does not let the supervisor raise "
              f"it): {n} TCP connections instead of {TARGET_CONNS}, two descriptors each")
    if n < 1000:
        pytest.skip(f"sidecar descriptor limit {limit} leaves room for {n} connections only")
    check_room(mesh, "client", n)
    run = Run(mesh, tmp_path, "client", "echo:7000", n, BATCH)
    peak, result, after = hold(mesh, run, base, f"{n} TCP connections held through one sidecar (plaintext)")
    assert_all_answered(result, n)
    for pod in ("client", "server"):
        # every connection was live in both sidecars at once: two descriptors each
        assert peak[pod]["active"] >= n, (pod, peak[pod])
        assert peak[pod]["open_fds"] >= base[pod]["open_fds"] + 2 * n, (pod, peak[pod])
        assert peak[pod]["rss_peak_bytes"] < RSS_CEILING, (pod, mb(peak[pod]["rss_peak_bytes"]))
        assert after[pod]["accepted"] >= base[pod]["accepted"] + n


def test_mtls_connections_held_through_one_sidecar(mesh: Mesh, tmp_path: Path) -> None:
    """1,000 TCP connections with mTLS between the sidecars (the default): each one a verified
    handshake on both sides, all held, echoing twice, closed; both sidecars back to baseline."""
    echo_pods(mesh)
    base = {pod: figures(mesh, pod) for pod in ("client", "server")}
    check_room(mesh, "client", TLS_CONNS)
    run = Run(mesh, tmp_path, "client", "echo:7000", TLS_CONNS, TLS_BATCH)
    peak, result, _ = hold(mesh, run, base, f"{TLS_CONNS} mTLS connections held through one sidecar")
    per_conn = (peak["client"]["rss_bytes"] - base["client"]["rss_bytes"]) / TLS_CONNS
    print(f"   client sidecar: {per_conn / 1024:.1f} KB of RSS per held mTLS connection")
    assert_all_answered(result, TLS_CONNS)
    assert peak["client"]["tls_out"] - base["client"]["tls_out"] == TLS_CONNS
    assert peak["server"]["tls_in"] - base["server"]["tls_in"] == TLS_CONNS
    for pod in ("client", "server"):
        assert peak[pod]["active"] >= TLS_CONNS, (pod, peak[pod])
        assert peak[pod]["rss_peak_bytes"] < RSS_CEILING, (pod, mb(peak[pod]["rss_peak_bytes"]))


def web_conf(tmp_path: Path) -> Path:
    """nginx answering every request on 8080 with keep-alive, a deep accept backlog, no logs."""
    return nginx_conf(tmp_path / "nginx", 8080, "ok", worker_connections=16000, backlog=4096, nofile=20000)


# Idle upstream connections of the client's pool close after this: the leak check waits for it.
POOL_IDLE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  trafficPolicy:
    connectionPool:
      http: {idleTimeout: 5s}
"""


def test_ten_thousand_http_connections_through_one_sidecar(mesh: Mesh, tmp_path: Path) -> None:
    """10,000 concurrent HTTP/1.1 keep-alive client connections through one sidecar: each makes a
    request when opened, all stay open (idle) at once, then each makes a second request (all must
    be 200), then all close. The upstream side is the service's pool, so the descriptors stay
    within the sidecar's limit; after the pool's idle timeout both sidecars are back to baseline."""
    mesh.run("create", "web", "--service", "web:8080", "--", "nginx", "-c", str(web_conf(tmp_path)))
    mesh.run("create", "client")
    apply(mesh, tmp_path, PLAINTEXT)
    apply(mesh, tmp_path, POOL_IDLE)
    base = {pod: figures(mesh, pod) for pod in ("client", "web")}
    check_room(mesh, "client", TARGET_CONNS)
    run = Run(mesh, tmp_path, "client", "web:8080", TARGET_CONNS, BATCH, "--http", "/")
    peak, result, _ = hold(mesh, run, base,
                           f"{TARGET_CONNS} HTTP/1.1 keep-alive connections held through one sidecar (plaintext)",
                           settle_s=90.0)
    assert_all_answered(result, TARGET_CONNS)
    assert peak["client"]["active"] >= TARGET_CONNS, peak["client"]
    assert peak["client"]["open_fds"] >= base["client"]["open_fds"] + TARGET_CONNS
    assert peak["client"]["rss_peak_bytes"] < RSS_CEILING, mb(peak["client"]["rss_peak_bytes"])
    served = mesh.stats("client")["services"]["web"]
    assert served["requests"] >= 2 * TARGET_CONNS, served
