"""What operators see: a real Prometheus scraping sidecars, trace headers at the app, access logs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Mesh, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
URL = "http://reviews:9080"


def backend(name: str) -> list[str]:
    return [PY, str(APPS / "backend.py"), "--name", name, "--port", "9080"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, promql: str) -> list[dict[str, Any]]:
    """Prometheus' instant query API; [] while Prometheus is still starting."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
    except OSError:
        return []
    assert data["status"] == "success"
    result = data["data"]["result"]
    assert isinstance(result, list)
    return result


@pytest.fixture
def services(mesh: Mesh) -> Mesh:
    for name in ("r1", "r2"):
        mesh.run("create", name, "--service", "reviews:9080", "--", *backend(name))
    mesh.run("create", "client")
    for name in ("r1", "r2"):
        wait_for(lambda n=name: mesh.exec(n, "curl", "-sf", "http://127.0.0.1:9080/count", check=False).returncode == 0,
                 what=f"{name}'s app")
    return mesh


def test_prometheus_scrapes_sidecars_with_istio_names(services: Mesh, tmp_path: Path) -> None:
    mesh = services
    ips = {p["name"]: p["ip"] for p in mesh.pods()}
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "- job_name: meshns\n"
        "  metrics_path: /stats/prometheus\n"
        "  static_configs:\n"
        f"  - targets: [{', '.join(f'{ip}:15090' for ip in ips.values())}]\n")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = subprocess.Popen(
        ["ip", "netns", "exec", mesh.netns("client"), PY, str(APPS / "load.py"), f"{URL}/whoami", "-n", "100000",
         "-c", "2", "--pace", "0.02"], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: query(port, "up") and all(r["value"][1] == "1" for r in query(port, "up"))
                 and len(query(port, "up")) == 3, timeout_s=60, what="all three sidecars up in Prometheus")

        def series(promql: str) -> list[dict[str, Any]]:
            return query(port, promql)

        source = wait_for(lambda: series(
            'sum by (source_workload, destination_service, response_code) '
            '(rate(istio_requests_total{reporter="source"}[10s])) > 0'), timeout_s=60, what="source series")
        assert {(r["metric"]["source_workload"], r["metric"]["destination_service"], r["metric"]["response_code"])
                for r in source} == {("client", "reviews", "200")}
        def both_servers() -> list[dict[str, Any]] | None:
            got = series('sum by (destination_workload, source_workload) '
                         '(rate(istio_requests_total{reporter="destination"}[10s])) > 0')
            return got if len(got) == 2 else None

        dest = wait_for(both_servers, timeout_s=60, what="destination series from both servers")
        assert {r["metric"]["destination_workload"] for r in dest} == {"r1", "r2"}
        assert {r["metric"]["source_workload"] for r in dest} == {"client"}
        p90 = wait_for(lambda: series(
            'histogram_quantile(0.9, sum by (le) (rate(istio_request_duration_milliseconds_bucket'
            '{reporter="source"}[10s])))'), timeout_s=30, what="latency histogram")
        assert float(p90[0]["value"][1]) > 0
        versions = series("meshns_config_version")
        assert len(versions) == 3 and all(float(r["value"][1]) >= 1 for r in versions)
    finally:
        load.kill()
        load.wait()
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def test_trace_headers_reach_the_app_and_access_logs_match(services: Mesh) -> None:
    mesh = services
    fresh = mesh.exec("client", "curl", "-sS", f"{URL}/headers").stdout.lower()
    assert "x-request-id: " in fresh and "traceparent: 00-" in fresh
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    seen = mesh.exec("client", "curl", "-sS", "-H", f"traceparent: {parent}", "-H", "x-request-id: abc-123",
                     "-H", "x-b3-traceid: 80f198ee56343ba864fe8b2a57d3eff7", "-H", "x-b3-spanid: e457b5a2e4d86bd1",
                     "-H", "x-b3-sampled: 1", f"{URL}/headers").stdout
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in seen.splitlines())}
    assert headers["x-request-id"] == "abc-123"
    version, trace, span, flags = headers["traceparent"].split("-")
    assert (version, trace, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span != "00f067aa0ba902b7"  # a new span per hop
    assert headers["x-b3-traceid"] == "80f198ee56343ba864fe8b2a57d3eff7"
    assert headers["x-b3-parentspanid"] == "e457b5a2e4d86bd1" and headers["x-b3-spanid"] != "e457b5a2e4d86bd1"

    before = _access_lines(mesh, "client")
    for i in range(5):
        mesh.exec("client", "curl", "-sS", "-o", "/dev/null", "-H", f"x-request-id: req-{i}", f"{URL}/status/{200 + i}")
    def ours() -> list[dict[str, Any]] | None:
        got = [x for x in _access_lines(mesh, "client")[len(before):] if str(x.get("request_id", "")).startswith("req-")]
        return got if len(got) == 5 else None

    lines = wait_for(ours, what="five access log lines")
    assert [x["status"] for x in lines] == [200, 201, 202, 203, 204]
    assert all(x["method"] == "GET" and x["reporter"] == "source" for x in lines)


def _access_lines(mesh: Mesh, pod: str) -> list[dict[str, Any]]:
    out = []
    for line in Path(mesh.status(pod)["log"]).read_text().splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            item = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(item, dict) and "reporter" in item:
            out.append(item)
    return out
