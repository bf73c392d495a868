"""Operator commands against real pods: status rates, top, logs, metrics, explain, graceful delete."""

from __future__ import annotations

import json
import os
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


def wait_app(mesh: Mesh, pod: str, port: int) -> None:
    wait_for(lambda: mesh.exec(pod, "curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/", check=False)
             .returncode == 0, what=f"{pod}'s app")


@pytest.fixture
def reviews(mesh: Mesh) -> Mesh:
    """r1 serves reviews:9080 with the test backend; client has no app."""
    mesh.run("create", "r1", "--service", "reviews:9080", "--", PY, str(APPS / "backend.py"), "--name", "r1")
    mesh.run("create", "client")
    wait_app(mesh, "r1", 9080)
    return mesh


def require_metrics(mesh: Mesh, pod: str) -> str:
    done = mesh.run("metrics", pod, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def background_load(reviews: Mesh) -> Iterator[None]:
    """Requests from client to reviews (half of them 500s) for as long as the test runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for path in ("/whoami", "/status/500"):
                reviews.exec("client", PY, str(APPS / "load.py"), f"http://reviews:9080{path}", "-n", "3",
                             check=False)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield
    stop.set()
    t.join(timeout=60)


def test_metrics_status_and_top_show_the_traffic(reviews: Mesh, background_load: None) -> None:
    require_metrics(reviews, "r1")
    wait_for(lambda: "istio_requests_total{" in reviews.run("metrics", "r1").stdout, what="request metrics")

    rows = json.loads(reviews.run("status", "-o", "json", "--window", "1.5").stdout)
    by_name = {r["name"]: r for r in rows}
    for pod in ("r1", "client"):
        t = by_name[pod]["traffic"]
        assert t is not None and t["rps"] > 0, (pod, t)
        assert 0 < t["error_rate"] <= 1, (pod, t)  # the 500s are counted (exact shares: unit tests)
    assert by_name["r1"]["services"] == ["reviews:9080"]
    assert by_name["r1"]["traffic"]["inbound"]["rps"] > 0
    assert by_name["client"]["traffic"]["outbound"]["rps"] > 0
    assert by_name["client"]["identity"] == "spiffe://cluster.local/ns/default/sa/client"
    assert by_name["client"]["cert_expiry"].endswith("Z")

    table = reviews.run("status", "--window", "1").stdout.splitlines()
    assert table[0].split() == ["NAME", "IP", "SERVICES", "SIDECAR", "RESTARTS", "APP", "RPS", "ERR%"]
    detail = reviews.run("status", "r1", "--window", "1").stdout
    assert "services:   reviews:9080" in detail and "requests:" in detail and "rules:      installed" in detail

    sample = json.loads(reviews.run("top", "-n", "1", "-o", "json", "--interval", "1.5").stdout)
    pairs = [p for p in sample["pairs"] if p["source"] == "client" and "reviews" in p["destination"]]
    assert pairs and pairs[0]["rps"] > 0 and 0 <= pairs[0]["success_rate"] <= 1, sample
    assert pairs[0]["p50_ms"] is not None


def test_logs_access_has_one_line_per_request(reviews: Mesh) -> None:
    require_metrics(reviews, "client")
    token = os.urandom(4).hex()
    for i in range(5):
        reviews.exec("client", "curl", "-sS", "-o", "/dev/null", f"http://reviews:9080/whoami?t={token}-{i}")

    def mine() -> list[dict[str, Any]]:
        out = reviews.run("logs", "client", "--access").stdout
        return [rec for rec in map(json.loads, out.splitlines()) if token in str(rec.get("path", ""))]

    wait_for(lambda: len(mine()) >= 5, what="access log lines")
    time.sleep(0.3)
    recs = mine()
    assert len(recs) == 5 and {r["status"] for r in recs} == {200}
    assert all(r["reporter"] == "source" for r in recs)
    full = reviews.run("logs", "client").stdout
    assert "supervisor pod=client" in full  # the whole pod log, not just access lines
    assert reviews.run("logs", "r1", "--app").returncode == 0


def test_logs_follow_prints_new_lines(reviews: Mesh) -> None:
    require_metrics(reviews, "client")
    proc = reviews.popen("logs", "client", "-f", "--access")
    token = os.urandom(4).hex()
    reviews.exec("client", "curl", "-sS", "-o", "/dev/null", f"http://reviews:9080/whoami?f={token}")
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""

    def got() -> bool:
        nonlocal seen
        seen += proc.stdout.read() or b""  # type: ignore[union-attr]
        return token.encode() in seen

    wait_for(got, what="followed access line")
    assert proc.poll() is None  # still following
    proc.terminate()
    proc.wait(timeout=10)


def test_explain_service_excluded_port_and_localhost(reviews: Mesh) -> None:
    doc = json.loads(reviews.run("explain", "client", "reviews:9080", "-o", "json").stdout)
    assert doc["rules"]["live"] == "match the plan"
    assert doc["rules"]["captured"] is True and doc["rules"]["target_port"] == 15001
    assert ("MESHNS_OUTPUT", "meshns: outbound TCP to the sidecar") in [(s["chain"], s["rule"])
                                                                       for s in doc["rules"]["path"]]
    assert doc["listener"] == {"port": 15001, "name": "outbound"}
    svc = doc["sidecar"]["service"]
    assert svc["name"] == "reviews" and svc["routes"] and [e["pod"] for e in svc["endpoints"]] == ["r1"]
    assert "mTLS not enabled" in doc["mtls"] and "service reviews" in doc["verdict"]
    text = reviews.run("explain", "client", "reviews:9080").stdout
    assert "CAPTURED" in text and "listener: 15001" in text and "endpoint r1" in text

    to_pod = json.loads(reviews.run("explain", "client", "r1:9080", "-o", "json").stdout)
    assert to_pod["sidecar"] == {"kind": "pod", "pod": "r1"}

    reviews.run("create", "ex", "--exclude-outbound-ports", "9999")
    excl = json.loads(reviews.run("explain", "ex", "r1:9999", "-o", "json").stdout)
    assert excl["rules"]["captured"] is False and excl["rules"]["rule"] == "meshns: outbound port 9999 excluded"
    assert excl["listener"] is None and "not captured" in excl["verdict"]

    local = json.loads(reviews.run("explain", "client", "127.0.0.1:8080", "-o", "json").stdout)
    assert local["rules"]["captured"] is False and local["rules"]["out_interface"] == "lo"
    assert "loopback" in local["rules"]["rule"]

    bad = reviews.run("explain", "client", "nosuchname:80", check=False)
    assert bad.returncode == 2 and "hosts file" in bad.stderr


def test_delete_lets_inbound_request_in_flight_finish(mesh: Mesh) -> None:
    mesh.run("create", "slow", "--drain-timeout", "5", "--service", "slowsvc:8080",
             "--", PY, str(APPS / "graceful.py"), "--port", "8080")
    mesh.run("create", "client")
    wait_app(mesh, "slow", 8080)
    spec = json.loads((mesh.state_dir / "pods" / "slow" / "sidecar.json").read_text())
    assert spec["drain_timeout_s"] == 5.0

    result: dict[str, Any] = {}

    def call() -> None:
        done = mesh.exec("client", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                         "http://slowsvc:8080/sleep/3", check=False)
        result["code"], result["err"] = done.stdout, done.stderr

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.0)  # the request is at the app, sleeping
    started = time.monotonic()
    mesh.run("delete", "slow")
    took = time.monotonic() - started
    t.join(timeout=30)
    assert result.get("code") == "200", result
    assert took < 15, took
    mesh.run("delete", "client")
    assert mesh.leftovers() == []
