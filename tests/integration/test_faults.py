"""Faults on the data path, in real namespaces: a sidecar SIGKILLed under load, a backend killed
in the middle of its response, an app that answers HTTP with another protocol."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import MESHNS, Mesh, wait_for

APPS = Path(__file__).parent / "apps"
PY = sys.executable
LOOP_S = 16.0
REQUEST_TIMEOUT_S = 2.0  # probe_loop's: a request that began before a kill may fail until then


def _restarted(mesh: Mesh, pod: str, old_pid: int) -> bool:
    st = mesh.status(pod)
    return st["sidecar"] == "running" and int(st["sidecar_pid"]) != old_pid


def test_sidecar_killed_under_load_recovers_and_the_app_is_never_exposed(mesh: Mesh, tmp_path: Path) -> None:
    # Pod and service names differ on purpose: "web" is the service, so the client's sidecar
    # routes it (VIP, endpoint choice, retries), not a pod-to-pod relay.
    mesh.run("create", "web-1", "--service", "web:9080", "--", PY, str(APPS / "backend.py"), "--name", "web-1")
    mesh.run("create", "client", "--", "sleep", "600")
    out = tmp_path / "loop.jsonl"
    loop = subprocess.Popen([MESHNS, "exec", "client", "--", PY, str(APPS / "probe_loop.py"),
                             "http://web:9080/headers", str(LOOP_S), str(out)], env=mesh.env)
    mesh.procs.append(loop)  # type: ignore[arg-type]

    def lines() -> list[dict[str, object]]:
        return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []

    wait_for(lambda: sum(1 for r in lines() if r["ok"]) >= 20, timeout_s=30, what="load running")
    kills = []
    for pod in ("client", "web-1"):  # the caller's sidecar, then the server's
        pid = int(mesh.status(pod)["sidecar_pid"])
        kills.append((pod, time.time()))
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda pod=pod, pid=pid: _restarted(mesh, pod, pid), timeout_s=15, what=f"{pod} restart")
        wait_for(lambda t=kills[-1][1]: any(r["ok"] and float(r["t"]) > t for r in lines()), timeout_s=15,
                 what=f"traffic back after killing {pod}'s sidecar")
        time.sleep(1.5)
    assert loop.wait(timeout=LOOP_S + 30) == 0
    rows = lines()
    oks = [r for r in rows if r["ok"]]

    # Never unprotected: every request the app answered came through its sidecar with the
    # caller's verified identity; while a sidecar was down, requests failed instead.
    assert {r["id"] for r in oks} == {"spiffe://cluster.local/ns/default/sa/client"}, {r["id"] for r in oks}

    # Every failure is explained by a kill: it happened after one (a request already under way
    # may fail up to its timeout earlier) and before traffic came back.
    report = []
    windows = []
    for pod, t_kill in kills:
        back = min(float(r["t"]) for r in oks if float(r["t"]) > t_kill)
        windows.append((t_kill - REQUEST_TIMEOUT_S, back))
        failed = [r for r in rows if not r["ok"] and t_kill - REQUEST_TIMEOUT_S <= float(r["t"]) <= back]
        report.append(f"{pod} sidecar killed: first success {back - t_kill:.2f} s later, "
                      f"{len(failed)} requests failed meanwhile")
    print("\n".join(report))
    stray = [r for r in rows if not r["ok"] and not any(a <= float(r["t"]) <= b for a, b in windows)]
    assert not stray, stray
    assert len(oks) > 100, len(oks)
    assert mesh.status("client")["sidecar_restarts"] == 1 and mesh.status("web-1")["sidecar_restarts"] == 1


def test_backend_killed_mid_response_is_an_error_never_a_short_body(mesh: Mesh) -> None:
    # The app comes back (a shell loop) after each death, like a restarted service.
    loop = f"while :; do {PY} {APPS / 'dying.py'} 9090; sleep 0.2; done"
    mesh.run("create", "dying-1", "--service", "dying:9090", "--", "sh", "-c", loop)
    mesh.run("create", "client", "--", "sleep", "600")
    for path in ("/cl", "/chunked"):
        wait_for(lambda: mesh.exec("client", "curl", "-sS", "--max-time", "3", "http://dying:9090/ok",
                                   check=False).stdout == "ok", timeout_s=20, what="backend up")
        for via in ("curl", "python"):
            if via == "curl":
                done = mesh.exec("client", "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w",
                                 "%{http_code} %{size_download}", f"http://dying:9090{path}", check=False)
                code, size = done.stdout.split()
                # 18: partial file (Content-Length not reached), 56: failure receiving (reset)
                assert done.returncode in (18, 56), (path, done.returncode, done.stdout, done.stderr)
                assert code == "200" and int(size) < 1_000_000, done.stdout
            else:
                script = ("import http.client as h\n"
                          "c = h.HTTPConnection('dying', 9090, timeout=10); c.request('GET', '" + path + "')\n"
                          "r = c.getresponse()\n"
                          "try:\n    b = r.read(); print('complete', len(b))\n"
                          "except (h.IncompleteRead, OSError) as e: print('error', type(e).__name__)\n")
                done = mesh.exec("client", PY, "-c", script, check=False)
                assert done.stdout.startswith("error"), (path, done.stdout, done.stderr)
            wait_for(lambda: mesh.exec("client", "curl", "-sS", "--max-time", "3", "http://dying:9090/ok",
                                       check=False).stdout == "ok", timeout_s=20, what="backend back")
    log = Path(mesh.status("client")["log"]).read_text(errors="replace")
    assert "mid-response" in log


def test_an_app_answering_http_with_another_protocol_is_a_502_upe(mesh: Mesh) -> None:
    # A port that is called over HTTP but served by something else: here socat running cat, which
    # echoes the request back. The app's sidecar cannot read that as a response and answers as
    # Envoy answers an upstream protocol error: 502 with flag UPE (not 503 UC, which says the app
    # closed or reset), and the caller never sees the app's bytes.
    mesh.run("create", "echo-1", "--service", "echo:9095", "--", "socat", "TCP-LISTEN:9095,reuseaddr,fork", "EXEC:cat")
    mesh.run("create", "client", "--", "sleep", "600")

    def call() -> tuple[str, str]:
        done = mesh.exec("client", "curl", "-sS", "--max-time", "10", "-D", "-", "http://echo:9095/x", check=False)
        assert done.returncode == 0, done.stderr
        head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
        return head, body

    def listening() -> tuple[str, str] | None:
        head, body = call()
        return None if "response-flags: UF" in head else (head, body)  # 503 UF until socat listens

    head, body = wait_for(listening, timeout_s=20, what="the app listening")
    assert head.startswith("HTTP/1.1 502"), head
    assert "x-meshns-response-flags: UPE" in head, head
    assert "GET /x" not in body, body
    lines = [json.loads(x[x.index("{"):]) for x in Path(mesh.status("echo-1")["log"]).read_text().splitlines()
             if '"reporter"' in x]
    assert [(x["status"], x["response_flags"]) for x in lines if x.get("path") == "/x"][-1:] == [(502, "UPE")], lines
