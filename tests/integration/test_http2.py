"""HTTP/2 and gRPC through the mesh, end to end in real pods: unary and streaming calls with and
without mTLS, per-call balancing over one channel, retries on gRPC status, deadlines and route
timeouts, the sidecar's own errors as gRPC statuses, h2load against h2c servers, HTTP/2 abuse
(rapid reset, SETTINGS and PING floods, oversized headers) answered with GOAWAY while other clients
are served, and gRPC request metrics.

Servers are tests/integration/apps/grpc_app.py (grpcio, plaintext h2c: the mesh does mTLS) and
nghttpd; clients are grpc_app.py client (one channel per run, no client-side retries), h2load and
tests/integration/apps/h2attack.py (a raw h2 client), all run with meshns exec.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PLAINTEXT, Mesh, wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
GRPC_APP = str(APPS / "grpc_app.py")
H2ATTACK = str(APPS / "h2attack.py")
SERVICE = "grpc:50051"
LOCAL = "127.0.0.1:50051"  # a server pod's own app, from inside that pod (never captured)


def grpc_server(mesh: Mesh, pod: str, *extra: str, service: str = SERVICE) -> None:
    """A pod serving `service` with grpc_app.py (create returns once the app accepts connections)."""
    mesh.run("create", pod, "--service", service, "--", PY, GRPC_APP, "server", "--port", service.split(":")[1],
             "--name", pod, *extra)


def grpc_call(mesh: Mesh, pod: str, scenario: str, *opts: str, target: str = SERVICE,
              timeout: float = 60) -> dict[str, Any]:
    out = mesh.exec(pod, PY, GRPC_APP, "client", "--target", target, scenario, *opts, timeout=timeout)
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def apply(mesh: Mesh, tmp_path: Path, text: str) -> None:
    f = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
    f.write_text(text)
    mesh.run("apply", "-f", str(f))


def vs_grpc(route_extra: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: grpc}}
spec:
  hosts: [grpc]
  http:
  - route:
    - destination: {{host: grpc}}
{route_extra}"""




def request_samples(mesh: Mesh, pod: str) -> list[dict[str, Any]]:
    """The istio_requests_total samples of a pod's sidecar: labels plus "value"."""
    text = mesh.run("metrics", pod).stdout
    return [{**s.labels, "value": s.value} for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "istio_requests_total"]


def show(value: object) -> str:
    """Assertion messages in full (pytest shortens the repr of a dict)."""
    return json.dumps(value, default=str)


def tx_bytes(mesh: Mesh, pod: str) -> int:
    """Bytes the pod sent out of its namespace (every interface but lo), from the kernel's counters."""
    total = 0
    for line in mesh.exec(pod, "cat", "/proc/net/dev").stdout.splitlines()[2:]:
        name, _, fields = line.partition(":")
        if name.strip() != "lo":
            total += int(fields.split()[8])
    return total


# ---------------------------------------------------------------- calls


@pytest.mark.parametrize("mtls", [True, False], ids=["mtls", "plaintext"])
def test_unary_and_streaming_calls_through_two_sidecars(mesh: Mesh, tmp_path: Path, mtls: bool) -> None:
    if not mtls:
        apply(mesh, tmp_path, PLAINTEXT)
    grpc_server(mesh, "g1")
    mesh.run("create", "client")

    unary = grpc_call(mesh, "client", "unary", "-n", "5")
    assert unary["ok"] == 5 and unary["servers"] == {"g1": 5}, show(unary)
    assert unary["trailers_ok"] == 5 and unary["echo_ok"] == 5, show(unary)  # trailing metadata and bodies intact
    big = grpc_call(mesh, "client", "unary", "-n", "2", "--size", "1000000")  # > any initial flow-control window
    assert big["ok"] == 2 and big["echo_ok"] == 2, show(big)

    down = grpc_call(mesh, "client", "server-stream", "-n", "50", "--size", "65536")
    assert (down["code"], down["count"], down["in_order"], down["bytes"]) == ("OK", 50, True, 50 * 65536), show(down)
    up = grpc_call(mesh, "client", "client-stream", "-n", "50", "--size", "65536")
    assert (up["code"], up["server"], up["count"], up["sum"], up["bytes"]) == ("OK", "g1", 50, 1275, 50 * 65536), show(up)
    bidi = grpc_call(mesh, "client", "bidi", "-n", "30", "--size", "1000")  # ping-pong: each message relayed alone
    assert (bidi["code"], bidi["count"], bidi["in_order"], bidi["servers"]) == ("OK", 30, True, {"g1": 30}), show(bidi)

    stats = mesh.stats("client")
    if mtls:
        assert stats["tls_out"] >= 1 and mesh.stats("g1")["tls_in"] >= 1, show(stats)
    else:
        assert stats["tls_out"] == 0, show(stats)


def test_calls_are_balanced_per_request_over_one_channel(mesh: Mesh) -> None:
    for pod in ("g1", "g2", "g3"):
        grpc_server(mesh, pod)
    mesh.run("create", "client")
    result = grpc_call(mesh, "client", "unary", "-n", "30")  # one channel: one HTTP/2 connection
    assert result["ok"] == 30 and set(result["servers"]) == {"g1", "g2", "g3"}, show(result)


def test_flaky_endpoint_hidden_by_grpc_status_retries(mesh: Mesh, tmp_path: Path) -> None:
    grpc_server(mesh, "g1")
    grpc_server(mesh, "g2", "--fail-first", "1000000")  # every Flaky call: UNAVAILABLE
    mesh.run("create", "client")
    apply(mesh, tmp_path, vs_grpc("    retries: {attempts: 3, retryOn: unavailable}\n"))
    time.sleep(1.0)  # applied config reaches sidecars within a second
    result = grpc_call(mesh, "client", "flaky", "-n", "30")
    assert result["ok"] == 30 and result["servers"] == {"g1": 30}, show(result)
    tried = grpc_call(mesh, "g2", "stats", target=LOCAL)
    assert tried["calls"].get("Flaky", 0) >= 1, show(tried)  # g2 was tried: the retries hid it


def test_deadline_and_route_timeout(mesh: Mesh, tmp_path: Path) -> None:
    grpc_server(mesh, "g1", "--sleep", "5")
    mesh.run("create", "client")
    own = grpc_call(mesh, "client", "slow", "--deadline", "1")
    assert own["code"] == "DEADLINE_EXCEEDED", show(own)
    apply(mesh, tmp_path, vs_grpc("    timeout: 0.5s\n"))
    time.sleep(1.0)
    cut = grpc_call(mesh, "client", "slow", "--deadline", "30")
    assert cut["code"] == "DEADLINE_EXCEEDED" and cut["details"].startswith("meshns:"), show(cut)


def test_sidecar_errors_are_grpc_statuses(mesh: Mesh) -> None:
    grpc_server(mesh, "g1")
    mesh.run("create", "client")
    first = grpc_call(mesh, "client", "unary", "-n", "1")
    assert first["ok"] == 1, show(first)
    grpc_call(mesh, "g1", "die", target=LOCAL)  # the app answers, then exits
    wait_for(lambda: grpc_call(mesh, "g1", "unary", "-n", "1", "--deadline", "2", target=LOCAL)["ok"] == 0,
             what="g1's app gone")
    result = grpc_call(mesh, "client", "unary", "-n", "3")
    assert result["codes"] == {"UNAVAILABLE": 3}, show(result)
    # made by a sidecar as a gRPC status, not grpcio's translation of an HTTP 503 or a reset
    assert result["errors"] and all(e["details"].startswith("meshns:") for e in result["errors"]), show(result)


# ---------------------------------------------------------------- plain HTTP/2 (h2c)


def test_h2load_against_h2c_servers(mesh: Mesh, tmp_path: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    (www / "file").write_bytes(os.urandom(16384))
    for pod in ("w1", "w2"):
        mesh.run("create", pod, "--service", "web:8080", "--", "nghttpd", "--no-tls", "-d", str(www), "8080")
    mesh.run("create", "client")
    before = {pod: tx_bytes(mesh, pod) for pod in ("w1", "w2")}
    out = mesh.exec("client", "h2load", "-n", "2000", "-c", "4", "-m", "10", "http://web:8080/file",
                    timeout=120).stdout
    m = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", out, re.MULTILINE)
    assert m, show(out)
    total, _, done, succeeded, failed, errored, timed_out = map(int, m.groups())
    assert (total, done, succeeded, failed, errored, timed_out) == (2000, 2000, 2000, 0, 0, 0), show(out)
    assert re.search(r"^status codes: 2000 2xx", out, re.MULTILINE), out
    # both endpoints served: each sent well over 1 MB of the 32 MB of 16 KiB bodies
    sent = {pod: tx_bytes(mesh, pod) - before[pod] for pod in ("w1", "w2")}
    assert all(n > 1_000_000 for n in sent.values()), show(sent)


def test_http1_and_http2_clients_reach_the_same_service(mesh: Mesh) -> None:
    # dual.py speaks HTTP/1.1 and HTTP/2 (prior knowledge) on one port: each client is served in
    # its own protocol, HTTP/2 requests of one connection are spread over both endpoints, and an
    # HTTP/1.1 request asking to upgrade to h2c is served as HTTP/1.1 with the Upgrade dropped.
    for pod in ("d1", "d2"):
        mesh.run("create", pod, "--service", "dual:8080", "--", PY, str(APPS / "dual.py"), "--port", "8080",
                 "--name", pod)
    mesh.run("create", "client")
    h1 = mesh.exec("client", "curl", "-sS", "--http1.1", "http://dual:8080/").stdout.split()
    assert h1[1:] == ["HTTP/1.1", "upgrade=-"], h1
    h2one = mesh.exec("client", "curl", "-sS", "--http2-prior-knowledge", "http://dual:8080/").stdout.split()
    assert h2one[1:] == ["HTTP/2", "upgrade=-"], h2one
    # nghttp sends all its URLs on one connection (curl 7.88 cannot reuse a prior-knowledge one)
    urls = [f"http://dual:8080/{i}" for i in range(20)]
    h2 = mesh.exec("client", "nghttp", *urls).stdout.splitlines()
    assert len(h2) == 20 and all(line.split()[1:] == ["HTTP/2", "upgrade=-"] for line in h2), h2
    assert {line.split()[0] for line in h2} == {"d1", "d2"}, h2
    upgraded = mesh.exec("client", "curl", "-sS", "--http2", "-w", " %{http_version}", "http://dual:8080/").stdout.split()
    assert upgraded[1:] == ["HTTP/1.1", "upgrade=-", "1.1"], upgraded  # h2c refused cleanly


# ---------------------------------------------------------------- abuse


ATTACKS = ("rapid-reset", "settings-flood", "ping-flood", "big-headers")


def test_attacks_get_goaway_while_other_clients_are_served(mesh: Mesh, tmp_path: Path) -> None:
    """Each attack from the attacker pod, through its own sidecar, one after the other, while a
    legitimate client in another pod makes unary calls on one channel the whole time."""
    grpc_server(mesh, "g1")
    mesh.run("create", "attacker")
    mesh.run("create", "legit")
    ready, stop = tmp_path / "legit-ready", tmp_path / "legit-stop"
    legit = mesh.popen("exec", "legit", "--", PY, GRPC_APP, "client", "--target", SERVICE, "loop",
                       "--duration", "90", "--ready-file", str(ready), "--stop-file", str(stop))
    try:
        wait_for(ready.exists, timeout_s=20, what="the legitimate client's first answer")
        attacks = {mode: json.loads(mesh.exec("attacker", PY, H2ATTACK, "grpc", "50051", mode).stdout)
                   for mode in ATTACKS}
        after = grpc_call(mesh, "attacker", "unary", "-n", "3")  # a new connection from the same pod is served
    finally:
        stop.touch()
    out, err = legit.communicate(timeout=60)
    assert legit.returncode == 0, err.decode(errors="replace")
    served = json.loads(out)
    # any GOAWAY code (the sidecar sends ENHANCE_YOUR_CALM for floods), then the connection closed
    not_stopped = {mode: r for mode, r in attacks.items() if not (r["goaway"] and r["closed"])}
    assert not not_stopped, show(not_stopped)
    assert served["failed"] == 0 and served["ok"] > 0, show(served)
    assert after["ok"] == 3, show(after)


# ---------------------------------------------------------------- metrics


def test_grpc_request_metrics(mesh: Mesh) -> None:
    grpc_server(mesh, "g1", "--fail-first", "1000000", "--fail-code", "NOT_FOUND")  # Flaky: NOT_FOUND, never retried
    mesh.run("create", "client")
    ok = grpc_call(mesh, "client", "unary", "-n", "5")
    assert ok["ok"] == 5, show(ok)
    failing = grpc_call(mesh, "client", "flaky", "-n", "3")
    assert failing["codes"] == {"NOT_FOUND": 3}, show(failing)

    def counts() -> dict[str, float] | None:
        got: dict[str, float] = {}
        for s in request_samples(mesh, "client"):
            if s.get("reporter") == "source" and s.get("request_protocol") == "grpc":
                assert s.get("response_code") == "200", show(s)  # gRPC errors travel in trailers of a 200
                assert s.get("destination_workload") == "g1", show(s)
                got[s["grpc_response_status"]] = got.get(s["grpc_response_status"], 0) + s["value"]
        return got if got.get("0", 0) >= 5 and got.get("5", 0) >= 3 else None

    try:
        wait_for(counts, timeout_s=10, what="grpc request metrics on the client's sidecar")
    except AssertionError:
        raise AssertionError(f"no grpc series: {show(request_samples(mesh, 'client'))}") from None


def test_apps_work_without_the_mesh(tmp_path: Path) -> None:
    """The test apps themselves, on loopback with no pods: a failure here is not the mesh's."""
    server = subprocess.Popen([PY, GRPC_APP, "server", "--port", "0", "--name", "solo", "--fail-first", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()  # "... serving meshns.test.Echo on 0.0.0.0:PORT"
        port = int(line.rsplit(":", 1)[1])

        def call(*args: str) -> dict[str, Any]:
            out = subprocess.run([PY, GRPC_APP, "client", "--target", f"127.0.0.1:{port}", *args],
                                 capture_output=True, text=True, timeout=60, check=True).stdout
            data = json.loads(out)
            assert isinstance(data, dict)
            return data

        wait_for(lambda: call("unary", "-n", "1", "--deadline", "2")["ok"] == 1, what="the grpc app")
        assert call("flaky", "-n", "2")["codes"] == {"UNAVAILABLE": 1, "OK": 1}
        assert call("slow", "--sleep", "3", "--deadline", "0.5")["code"] == "DEADLINE_EXCEEDED"
        assert call("bidi", "-n", "5")["count"] == 5
    finally:
        server.kill()
        server.wait()
