"""Services and the HTTP/1.1 data path, end to end in real pods: balancing, retries, timeouts,
budgets, breakers, outliers, faults, splits, header routes, websockets, big streams, live config.

Backends are tests/integration/apps/backend.py run unmodified as the pods' apps; clients are
curl and tests/integration/apps/load.py (a stdlib keep-alive load loop) run with meshns exec.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Mesh, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
URL = "http://reviews:9080"


def backend(name: str, port: int = 9080) -> list[str]:
    return [PY, str(APPS / "backend.py"), "--name", name, "--port", str(port)]


def wait_app(mesh: Mesh, pod: str, port: int = 9080) -> None:
    wait_for(lambda: mesh.exec(pod, "curl", "-sf", f"http://127.0.0.1:{port}/count", check=False).returncode == 0,
             what=f"{pod}'s app")


def control(mesh: Mesh, pod: str, path: str, port: int = 9080) -> str:
    """Talk to a backend from inside its own pod (127.0.0.1 is never captured)."""
    method = "GET" if path == "/count" else "POST"
    return mesh.exec(pod, "curl", "-s", "-X", method, f"http://127.0.0.1:{port}{path}").stdout


def served(mesh: Mesh, pod: str) -> int:
    return int(control(mesh, pod, "/count"))


def load(mesh: Mesh, pod: str, url: str, n: int, c: int = 1, *extra: str, timeout: float = 300) -> dict[str, Any]:
    out = mesh.exec(pod, PY, str(APPS / "load.py"), url, "-n", str(n), "-c", str(c), *extra, timeout=timeout)
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def apply(mesh: Mesh, tmp_path: Path, text: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    f = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
    f.write_text(text)
    return mesh.run("apply", "-f", str(f), check=check)


def service_stats(mesh: Mesh, pod: str, service: str = "reviews") -> dict[str, Any]:
    data = mesh.stats(pod)["services"][service]
    assert isinstance(data, dict)
    return data


VS_REVIEWS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
"""

DR_SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"""


@pytest.fixture
def reviews(mesh: Mesh) -> Iterator[Mesh]:
    """Three endpoints of service reviews (r1, r2: version v1; r3: version v2) and a client."""
    for name, version in (("r1", "v1"), ("r2", "v1"), ("r3", "v2")):
        mesh.run("create", name, "--service", "reviews:9080", "--label", f"version={version}", "--", *backend(name))
    mesh.run("create", "client")
    for name in ("r1", "r2", "r3"):
        wait_app(mesh, name)
    yield mesh


def test_service_vip_name_and_listing(reviews: Mesh) -> None:
    mesh = reviews
    services = json.loads(mesh.run("service", "list", "-o", "json").stdout)
    assert [s["name"] for s in services] == ["reviews"]
    vip = services[0]["vip"]
    assert sorted(e["pod"] for e in services[0]["endpoints"]) == ["r1", "r2", "r3"]
    assert f"{vip}\treviews" in mesh.exec("client", "cat", "/etc/hosts").stdout
    assert mesh.exec("client", "curl", "-sS", f"{URL}/whoami").stdout in {"r1", "r2", "r3"}
    assert mesh.exec("client", "curl", "-sS", f"http://{vip}:9080/whoami").stdout in {"r1", "r2", "r3"}
    # HTTP/1.0 and HEAD through the same path
    assert mesh.exec("client", "curl", "-sS", "-0", f"{URL}/whoami").stdout in {"r1", "r2", "r3"}
    head = mesh.exec("client", "curl", "-sS", "-I", f"{URL}/whoami").stdout
    assert head.startswith("HTTP/1.1 200") and "x-meshns-attempts: 1" in head.lower()
    shown = mesh.run("service", "show", "reviews").stdout
    assert "least_request" in shown and "r3" in shown
    # header names keep their case and order on the wire
    seen = mesh.exec("client", "curl", "-sS", "-H", "X-Mixed-Case: 1", "-H", "aNother-ONE: 2", f"{URL}/headers").stdout
    lines = seen.splitlines()
    assert "X-Mixed-Case: 1" in lines and "aNother-ONE: 2" in lines
    assert lines.index("X-Mixed-Case: 1") < lines.index("aNother-ONE: 2")


@pytest.mark.parametrize("parser", ["h11", "httptools"])
def test_both_parsers_carry_the_same_traffic(mesh: Mesh, parser: str) -> None:
    mesh.run("create", "r1", "--service", "reviews:9080", "--", *backend("r1"))
    mesh.run("create", "client", "--http-parser", parser)
    wait_app(mesh, "r1")
    assert mesh.stats("client")["http_parser"] == parser
    assert mesh.exec("client", "curl", "-sS", f"{URL}/whoami").stdout == "r1"
    up = mesh.exec("client", "sh", "-c", f"head -c 3000000 /dev/zero | curl -sS -H 'Transfer-Encoding: chunked' "
                   f"-T - -X POST {URL}/upload").stdout
    assert up.split()[0] == "3000000"
    assert mesh.exec("client", "curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
                     f"{URL}/bytes/5000000").stdout == "5000000"
    # a chunked response (chunk extensions, a trailer): each parser's chunk rules, then re-framed
    got = mesh.exec("client", "sh", "-c", f"curl -sS {URL}/chunked/1000000 | sha256sum").stdout.split()[0]
    assert got == hashlib.sha256(b"c" * 1000000).hexdigest()


def test_per_request_balancing_over_one_connection(reviews: Mesh) -> None:
    mesh = reviews
    urls = [f"{URL}/whoami"] * 60
    out = mesh.exec("client", "curl", "-sS", "-w", " %{num_connects}\n", *urls).stdout.splitlines()
    names = [line.split()[0] for line in out]
    assert set(names) == {"r1", "r2", "r3"}  # balanced per request ...
    assert sum(int(line.split()[1]) for line in out) == 1  # ... over one client connection


def test_round_robin_is_exact(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, DR_SUBSETS.replace("  subsets:", "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n"
                                                             "  subsets:"))
    time.sleep(1.0)  # applied config reaches sidecars within a second
    result = load(mesh, "client", f"{URL}/whoami", 60)
    assert result["backends"] == {"r1": 20, "r2": 20, "r3": 20}


def test_flaky_backend_hidden_by_retries(reviews: Mesh) -> None:
    mesh = reviews
    control(mesh, "r1", "/mode/fail")  # r1 answers 503 to everything (retriable by default)
    result = load(mesh, "client", f"{URL}/whoami", 90, 3)
    assert result["failures"] == [] and result["status"] == {"200": 90}
    assert "r1" not in result["backends"]
    assert served(mesh, "r1") > 0  # it was tried ...
    assert int(max(result["attempts"], key=int)) >= 2  # ... and the retry hid it


def test_dead_backend_is_retried_then_ejected(reviews: Mesh) -> None:
    mesh = reviews
    mesh.exec("r1", "curl", "-s", "-X", "POST", "http://127.0.0.1:9080/mode/die", check=False)
    wait_for(lambda: mesh.exec("r1", "curl", "-s", "http://127.0.0.1:9080/count", check=False).returncode != 0,
             what="r1's app gone")
    result = load(mesh, "client", f"{URL}/whoami", 120, 2)
    assert result["failures"] == [] and result["status"] == {"200": 120}, result
    stats = service_stats(mesh, "client")
    assert stats["ejections"] >= 1
    # Once ejected, r1 is no longer tried: late requests need one attempt.
    late = load(mesh, "client", f"{URL}/whoami", 30)
    assert late["attempts"] == {"1": 30}


def test_slow_backend_cut_by_per_try_and_request_timeouts(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, VS_REVIEWS + """  - route:
    - destination: {host: reviews}
    retries: {attempts: 2, perTryTimeout: 300ms, retryOn: "5xx,reset,connect-failure"}
    timeout: 2s
""")
    time.sleep(1.0)
    control(mesh, "r1", "/mode/slow-10")
    result = load(mesh, "client", f"{URL}/whoami", 30, 1)
    assert result["status"] == {"200": 30} and "r1" not in result["backends"]
    for pod in ("r2", "r3"):
        control(mesh, pod, "/mode/slow-10")
    done = mesh.exec("client", "curl", "-sS", "-D", "-", "-o", "/dev/null", f"{URL}/whoami").stdout.lower()
    assert done.startswith("http/1.1 504") and "x-meshns-response-flags: ut" in done


def test_retry_budget_stops_a_storm(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, VS_REVIEWS + """  - route:
    - destination: {host: reviews}
    retries: {attempts: 5, retryOn: "5xx"}
""")
    time.sleep(1.0)
    for pod in ("r1", "r2", "r3"):
        control(mesh, pod, "/mode/slow-0.2")
    for pod in ("r1", "r2", "r3"):
        control(mesh, pod, "/mode/fail")  # everything fails: each request would make 6 tries
    n = 200
    result = load(mesh, "client", f"{URL}/whoami", n, 20)
    assert result["status"] == {"503": n}
    upstream = sum(served(mesh, p) for p in ("r1", "r2", "r3"))
    stats = service_stats(mesh, "client")
    assert upstream < n * 6 * 0.5, upstream  # no storm: far fewer than 6 tries per request
    assert stats["retries"] > 0 and stats["budget_exhausted"] > 0


def test_overflow_answers_503_at_once(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, DR_SUBSETS + "  trafficPolicy:\n    connectionPool:\n      http: {http2MaxRequests: 1}\n")
    time.sleep(1.0)
    slow = subprocess.Popen(["ip", "netns", "exec", mesh.netns("client"), "curl", "-s", f"{URL}/sleep/3"],
                            stdout=subprocess.PIPE)
    try:
        time.sleep(0.5)
        out = mesh.exec("client", "curl", "-sS", "-D", "-", "-o", "/dev/null", f"{URL}/whoami").stdout.lower()
        assert out.startswith("http/1.1 503") and "x-meshns-response-flags: uo" in out
    finally:
        assert slow.wait(20) == 0
    assert service_stats(mesh, "client")["overflows"] >= 1


def test_weighted_split_between_subsets(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, DR_SUBSETS + "---\n" + VS_REVIEWS + """  - route:
    - destination: {host: reviews, subset: v1}
      weight: 80
    - destination: {host: reviews, subset: v2}
      weight: 20
""")
    time.sleep(1.0)
    n = 600
    result = load(mesh, "client", f"{URL}/whoami", n, 4)
    v2 = result["backends"].get("r3", 0) / n
    assert result["status"] == {"200": n}
    assert 0.14 <= v2 <= 0.26, result["backends"]


def test_header_routing(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, DR_SUBSETS + """---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
""")
    time.sleep(1.0)
    jason = load(mesh, "client", f"{URL}/whoami", 20, 1, "-H", "end-user: jason")
    others = load(mesh, "client", f"{URL}/whoami", 40, 1, "-H", "end-user: someone")
    assert jason["backends"] == {"r3": 20}
    assert set(others["backends"]) <= {"r1", "r2"} and sum(others["backends"].values()) == 40


def test_fault_injection_abort(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, VS_REVIEWS + """  - fault:
      abort: {httpStatus: 418, percentage: {value: 100}}
    route:
    - destination: {host: reviews}
""")
    time.sleep(1.0)
    out = mesh.exec("client", "curl", "-sS", "-D", "-", "-o", "/dev/null", f"{URL}/whoami").stdout.lower()
    assert out.startswith("http/1.1 418") and "x-meshns-response-flags: fi" in out
    assert served(mesh, "r1") + served(mesh, "r2") + served(mesh, "r3") == 0


def test_websocket_through_the_mesh(mesh: Mesh) -> None:
    mesh.run("create", "ws", "--service", "echo:8765", "--", PY, str(APPS / "ws_echo.py"), "8765")
    mesh.run("create", "client")
    out = wait_for(lambda: mesh.exec("client", PY, str(APPS / "ws_client.py"), "ws://echo:8765/", "hello", "mesh",
                                     check=False).stdout, what="websocket echo")
    assert out.split() == ["hello", "mesh"]


def test_tcp_service_is_balanced_per_connection_and_server_first_works(mesh: Mesh) -> None:
    for name in ("s1", "s2"):
        mesh.run("create", name, "--service", "smtp:2525", "--", "socat", "TCP-LISTEN:2525,reuseaddr,fork",
                 f"SYSTEM:echo 220 {name}")
    mesh.run("create", "client")
    seen: set[str] = set()

    def banner() -> bool:
        out = mesh.exec("client", "nc", "-d", "-w", "5", "smtp", "2525", check=False).stdout.strip()
        if out:
            seen.add(out)
        return seen == {"220 s1", "220 s2"}

    wait_for(banner, timeout_s=30, what="banners from both endpoints")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_gigabyte_up_and_down_with_flat_sidecar_memory(mesh: Mesh) -> None:
    mesh.run("create", "r1", "--service", "reviews:9080", "--", *backend("r1"))
    mesh.run("create", "client")
    wait_app(mesh, "r1")
    pid = int(mesh.status("client")["sidecar_pid"])
    base = _rss_kib(pid)
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    gib = 1 << 30
    try:
        down = mesh.exec("client", "curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
                         f"{URL}/bytes/{gib}", timeout=300).stdout
        up = mesh.exec("client", "sh", "-c", f"head -c {gib} /dev/zero | curl -sS -T - -X POST {URL}/upload",
                       timeout=300).stdout
    finally:
        stop.set()
        sampler.join()
    assert int(down) == gib
    zeros = hashlib.sha256()
    block = bytes(1 << 20)
    for _ in range(1024):
        zeros.update(block)
    assert up.split() == [str(gib), zeros.hexdigest()]
    assert (peak[0] - base) < 64 * 1024, f"sidecar RSS grew from {base} KiB to {peak[0]} KiB"


def test_live_config_and_endpoint_changes_lose_no_request(reviews: Mesh, tmp_path: Path) -> None:
    mesh = reviews
    apply(mesh, tmp_path, DR_SUBSETS)
    proc = subprocess.Popen(
        ["ip", "netns", "exec", mesh.netns("client"), PY, str(APPS / "load.py"), f"{URL}/whoami",
         "-n", "1000000", "--duration", "240", "-c", "4", "--pace", "0.004"], stdout=subprocess.PIPE, text=True)
    try:
        # The load runs until every change below is made and the new endpoint has had a few
        # seconds of traffic (SIGUSR1 ends it), however slowly a loaded machine gets there.
        time.sleep(1.0)  # the load's workers are up before the first change
        for weights in ((100, 0), (0, 100), (50, 50)):
            time.sleep(0.7)
            apply(mesh, tmp_path, f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {weights[0]}
    - destination: {{host: reviews, subset: v2}}
      weight: {weights[1]}
""")
        mesh.run("create", "r4", "--service", "reviews:9080", "--label", "version=v1", "--", *backend("r4"))
        mesh.run("delete", "r2")
        time.sleep(3.0)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads(out)
    assert result["failures"] == [], result["failures"][:5]
    assert list(result["status"]) == ["200"] and result["status"]["200"] > 1000
    assert result["backends"].get("r4", 0) > 0  # the new endpoint got traffic while the load ran


def test_apply_validates_reports_and_round_trips(mesh: Mesh, tmp_path: Path) -> None:
    mesh.run("create", "r1", "--service", "reviews:9080", "--", *backend("r1"))
    bad = apply(mesh, tmp_path, VS_REVIEWS + """  - route:
    - destination: {host: reviews}
    retries: {attempts: "three"}
""", check=False)
    assert bad.returncode == 2 and "spec.http[0].retries.attempts" in bad.stderr
    assert mesh.run("get").stdout.strip() == ""  # nothing was applied
    good = apply(mesh, tmp_path, VS_REVIEWS + """  - route:
    - destination: {host: reviews}
    mirror: {host: reviews}
""")
    assert "spec.http[0].mirror is not implemented" in good.stderr
    first = mesh.run("get", "vs", "reviews").stdout
    f = tmp_path / "again.yaml"
    f.write_text(first)
    mesh.run("apply", "-f", str(f))
    assert mesh.run("get", "vs", "reviews").stdout == first
    assert "virtualservice/reviews deleted" in mesh.run("delete", "-f", str(f)).stdout
    assert mesh.run("get").stdout.strip() == ""


def test_endpoint_recreated_on_a_reused_address_is_reachable_at_once(mesh: Mesh) -> None:
    # Addresses are reused after delete; other pods' neighbour caches must not send the new
    # pod's traffic to the old one's MAC (that stalled connections for tens of seconds).
    mesh.run("create", "r1", "--service", "reviews:9080", "--", *backend("r1"))
    mesh.run("create", "client")
    wait_app(mesh, "r1")
    first = load(mesh, "client", f"{URL}/whoami", 50)
    old_ip = mesh.status("r1")["ip"]
    mesh.run("delete", "r1")
    mesh.run("create", "r1", "--service", "reviews:9080", "--", *backend("r1"))
    assert mesh.status("r1")["ip"] == old_ip
    wait_app(mesh, "r1")
    again = load(mesh, "client", f"{URL}/whoami", 300)
    assert first["status"] == {"200": 50}
    assert again["failures"] == [] and again["status"] == {"200": 300}, again
    assert again["attempts"] == {"1": 300} or again["attempts"].get("1", 0) >= 299  # at most the stale pooled one
