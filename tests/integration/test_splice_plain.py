"""Long plaintext bodies through two sidecars (PeerAuthentication DISABLE): both sidecars move
them with splice(2) (dataplane.splice), the client gets them whole, a keep-alive follow-up on the
same connection is intact, and an app dying mid-body is still an error, never a short body."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import pytest
from conftest import PLAINTEXT, Mesh, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
PY = sys.executable
URL = "http://reviews:9080"


def test_plaintext_long_bodies_are_spliced_whole_and_a_death_mid_body_is_an_error(mesh: Mesh,
                                                                                   tmp_path: Path) -> None:
    cfg = tmp_path / f"cfg-{time.monotonic_ns()}.yaml"
    cfg.write_text(PLAINTEXT)
    mesh.run("apply", "-f", str(cfg))
    mesh.run("create", "r1", "--service", "reviews:9080", "--",
             PY, str(APPS / "backend.py"), "--name", "r1", "--port", "9080")
    loop = f"while :; do {PY} {APPS / 'dying.py'} 9090; sleep 0.2; done"
    mesh.run("create", "dying-1", "--service", "dying:9090", "--", "sh", "-c", loop)
    mesh.run("create", "client")
    wait_for(lambda: mesh.exec("client", "curl", "-sf", "--max-time", "3", f"{URL}/whoami",
                               check=False).stdout == "r1", timeout_s=20, what="r1 up")
    # two long bodies and a short answer between them, on one client connection (curl reuses it)
    done = mesh.exec("client", "sh", "-c",
                     f"curl -sS --max-time 20 {URL}/bytes/3000000 {URL}/whoami {URL}/bytes/1048576 | sha256sum")
    expected = hashlib.sha256(b"m" * 3_000_000 + b"r1" + b"m" * 1_048_576).hexdigest()
    assert done.stdout.split()[0] == expected, done.stdout
    assert mesh.stats("client")["http_spliced"] >= 2
    assert mesh.stats("r1")["http_spliced"] >= 2
    # the app dies after 300,000 of its 1,000,000 bytes
    wait_for(lambda: mesh.exec("client", "curl", "-sS", "--max-time", "3", "http://dying:9090/ok",
                               check=False).stdout == "ok", timeout_s=20, what="dying up")
    before = mesh.stats("client")["http_spliced"]
    done = mesh.exec("client", "curl", "-sS", "--max-time", "10", "-o", "/dev/null", "-w",
                     "%{http_code} %{size_download}", "http://dying:9090/cl", check=False)
    code, size = done.stdout.split()
    # 18: partial file (Content-Length not reached), 56: failure receiving (reset)
    assert done.returncode in (18, 56), (done.returncode, done.stdout, done.stderr)
    assert code == "200" and int(size) < 1_000_000, done.stdout
    assert mesh.stats("client")["http_spliced"] == before + 1
    log = Path(mesh.status("client")["log"]).read_text(errors="replace")
    assert "mid-response" in log
