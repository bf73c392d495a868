"""Pods end to end: real namespaces, real rules, real sidecars, unmodified programs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Mesh, wait_for

pytestmark = pytest.mark.root


def serve_dir(tmp_path: Path, content: bytes, name: str = "index.html") -> Path:
    d = tmp_path / f"www-{os.urandom(3).hex()}"
    d.mkdir()
    (d / name).write_bytes(content)
    os.chmod(d, 0o755)
    return d


def accepted(mesh: Mesh, pod: str, direction: str) -> int:
    """Connections the pod's sidecar accepted on one listener (the validation probe included)."""
    return int(mesh.stats(pod)[direction]["accepted"])


def http_server(d: Path, port: int) -> list[str]:
    return ["python3", "-m", "http.server", str(port), "--bind", "0.0.0.0", "--directory", str(d)]


def test_http_between_pods_goes_through_both_sidecars(mesh: Mesh, tmp_path: Path) -> None:
    token = os.urandom(8).hex().encode()
    www = serve_dir(tmp_path, b"hello " + token)
    mesh.run("create", "web", "--", *http_server(www, 8080))
    mesh.run("create", "client")

    client0, web0 = mesh.stats("client"), mesh.stats("web")
    # http.server needs a moment to bind after the app starts; curl's own retry covers it.
    out = mesh.exec("client", "curl", "-sS", "--retry", "20", "--retry-all-errors", "--retry-delay", "0",
                    "--max-time", "20", "http://web:8080/index.html")
    assert out.stdout == "hello " + token.decode()

    client, web = mesh.stats("client"), mesh.stats("web")
    assert client["outbound"]["accepted"] > client0["outbound"]["accepted"]
    assert client["outbound"]["bytes_up"] > client0["outbound"]["bytes_up"]
    assert client["outbound"]["bytes_down"] - client0["outbound"]["bytes_down"] >= len(token)
    assert web["inbound"]["accepted"] > web0["inbound"]["accepted"]
    assert web["inbound"]["bytes_down"] - web0["inbound"]["bytes_down"] >= len(token)

    rules = {r["rule"]: r["packets"] for r in mesh.status("client")["rule_packets"]}
    assert rules["meshns: to outbound listener"] >= 1
    pods = {p["name"]: p for p in mesh.pods()}
    assert set(pods) == {"web", "client"}
    assert pods["web"]["ip"] != pods["client"]["ip"]
    assert pods["web"]["sidecar"] == "running" and pods["web"]["app"] == "running"


def test_status_and_list_for_people(mesh: Mesh, tmp_path: Path) -> None:
    mesh.run("create", "web", "--", "sleep", "600")
    text = mesh.run("status", "web").stdout
    assert "rules:      installed" in text and "sleep 600" in text
    assert Path(mesh.status("web")["log"]).exists()
    table = mesh.run("list").stdout.splitlines()
    assert table[0].split() == ["NAME", "IP", "STATE", "SIDECAR", "APP", "AGE"]
    assert table[1].split()[:5] == ["web", mesh.status("web")["ip"], "ready", "running", "running"]


def test_server_first_protocol_is_not_held_back(mesh: Mesh) -> None:
    # The server speaks first and the client never sends a byte (nc -d): a sidecar that
    # waited for client bytes to sniff the protocol would stall here until nc's timeout.
    banner = "220 meshns-test ESMTP ready"
    mesh.run("create", "smtp", "--", "socat", "TCP-LISTEN:2525,reuseaddr,fork",
             f"SYSTEM:echo '{banner}'")
    mesh.run("create", "client")
    before = accepted(mesh, "client", "outbound")
    out = wait_for(lambda: mesh.exec("client", "nc", "-d", "-w", "5", "smtp", "2525", check=False).stdout,
                   what="banner")
    assert out.strip() == banner
    assert accepted(mesh, "client", "outbound") > before


def test_half_close_request_then_reply(mesh: Mesh) -> None:
    # The client sends its request and closes its write side; the server replies only after
    # it sees EOF. Without a correct half-close the reply would never come back.
    mesh.run("create", "wc", "--", "socat", "TCP-LISTEN:7000,reuseaddr,fork", "SYSTEM:wc -c")
    mesh.run("create", "client")
    payload = "x" * 100_000
    out = wait_for(lambda: mesh.run("exec", "client", "--", "socat", "-t", "5", "-", "TCP:wc:7000",
                                    input=payload, check=False).stdout.strip(), what="reply")
    assert out == str(len(payload))


def test_large_download_arrives_intact(mesh: Mesh, tmp_path: Path) -> None:
    blob = os.urandom(32 * 1024 * 1024)
    www = serve_dir(tmp_path, blob, "blob.bin")
    mesh.run("create", "web", "--", *http_server(www, 8080))
    mesh.run("create", "client")
    out = subprocess.run(
        ["ip", "netns", "exec", mesh.netns("client"), "curl", "-sS", "--retry", "20",
         "--retry-all-errors", "--retry-delay", "0", "http://" + mesh.status("web")["ip"] + ":8080/blob.bin"],
        capture_output=True, timeout=120, check=True)
    assert hashlib.sha256(out.stdout).hexdigest() == hashlib.sha256(blob).hexdigest()
    assert mesh.stats("client")["outbound"]["bytes_down"] >= len(blob)
    assert mesh.stats("web")["inbound"]["bytes_down"] >= len(blob)


def test_app_as_root_calls_itself_and_localhost(mesh: Mesh, tmp_path: Path) -> None:
    www = serve_dir(tmp_path, b"self")
    mesh.run("create", "web", "--", *http_server(www, 8080))
    ip = mesh.status("web")["ip"]
    before = accepted(mesh, "web", "outbound")
    for url in (f"http://{ip}:8080/index.html", "http://web:8080/index.html",
                "http://127.0.0.1:8080/index.html"):
        out = mesh.exec("web", "curl", "-sS", "--retry", "20", "--retry-all-errors", "--retry-delay", "0", url)
        assert out.stdout == "self", url
    # Calls to itself stay inside the pod: nothing went to the outbound listener.
    assert accepted(mesh, "web", "outbound") == before


def test_exclusions(mesh: Mesh, tmp_path: Path) -> None:
    www = serve_dir(tmp_path, b"ok")
    mesh.run("create", "web", "--exclude-inbound-ports", "9090", "--",
             "sh", "-c", f"{' '.join(http_server(www, 8080))} & exec {' '.join(http_server(www, 9090))}")
    web_ip = mesh.status("web")["ip"]
    mesh.run("create", "c1", "--exclude-outbound-ports", "9090")
    mesh.run("create", "c2", "--exclude-outbound-cidrs", f"{web_ip}/32")
    get = ["curl", "-sS", "--retry", "20", "--retry-all-errors", "--retry-delay", "0"]
    # Wait until both app ports answer directly, so retries do not blur the counts below.
    wait_for(lambda: mesh.exec("web", "curl", "-sf", "http://127.0.0.1:8080/index.html", check=False).stdout
             and mesh.exec("web", "curl", "-sf", "http://127.0.0.1:9090/index.html", check=False).stdout,
             what="app ports")
    c1, c2, web = (accepted(mesh, "c1", "outbound"), accepted(mesh, "c2", "outbound"),
                   accepted(mesh, "web", "inbound"))

    assert mesh.exec("c1", *get, "http://web:9090/index.html").stdout == "ok"
    assert accepted(mesh, "c1", "outbound") == c1  # excluded outbound port
    assert accepted(mesh, "web", "inbound") == web  # excluded inbound port
    assert mesh.exec("c1", *get, "http://web:8080/index.html").stdout == "ok"
    assert accepted(mesh, "c1", "outbound") == c1 + 1
    assert accepted(mesh, "web", "inbound") == web + 1
    assert mesh.exec("c2", *get, "http://web:8080/index.html").stdout == "ok"
    assert accepted(mesh, "c2", "outbound") == c2  # excluded CIDR
    assert accepted(mesh, "web", "inbound") == web + 2


def _gone(pid: int) -> bool:
    """The process has exited (gone, or a zombie its parent has not reaped yet)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True


def test_sidecar_killed_is_restarted_and_app_never_bypasses_it(mesh: Mesh, tmp_path: Path) -> None:
    www = serve_dir(tmp_path, b"up")
    mesh.run("create", "web", "--", *http_server(www, 8080))
    mesh.run("create", "client")
    get = ["curl", "-sS", "--max-time", "5", "http://web:8080/index.html"]
    wait_for(lambda: mesh.exec("client", *get, check=False).stdout == "up", what="first answer")

    before = mesh.status("client")
    supervisor = int(before["supervisor_pid"])
    # Hold the supervisor so the window with no sidecar stays open, then kill the sidecar:
    # the rules still send the app's traffic to the (now closed) sidecar port, so it fails
    # instead of going around the mesh.
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(int(before["sidecar_pid"]), signal.SIGKILL)
        wait_for(lambda: _gone(int(before["sidecar_pid"])), what="sidecar gone")
        failed = mesh.exec("client", *get, check=False)
        assert failed.returncode != 0 and failed.stdout == ""
    finally:
        os.kill(supervisor, signal.SIGCONT)
    wait_for(lambda: mesh.status("client")["sidecar_pid"] != before["sidecar_pid"]
             and mesh.status("client")["sidecar"] == "running", what="restart")
    wait_for(lambda: mesh.exec("client", *get, check=False).stdout == "up", what="traffic back")
    assert mesh.status("client")["sidecar_restarts"] == 1


@pytest.mark.parametrize("started", ["at create", "restarted"])
def test_sidecar_does_not_outlive_its_supervisor(mesh: Mesh, started: str) -> None:
    # Both ways a sidecar starts: early, for a pod being created (it drops to the proxy user
    # itself), and by the supervisor alone after the first one died (in the forked child).
    mesh.run("create", "web", "--", "sleep", "600")
    status = mesh.status("web")
    if started == "restarted":
        os.kill(int(status["sidecar_pid"]), signal.SIGKILL)
        wait_for(lambda: mesh.status("web")["sidecar_pid"] not in (None, status["sidecar_pid"])
                 and mesh.status("web")["sidecar"] == "running", what="restart")
        status = mesh.status("web")
    sidecar, app = int(status["sidecar_pid"]), int(status["app_pid"])
    os.kill(int(status["supervisor_pid"]), signal.SIGKILL)
    # Orphaned, it would go on serving a pod nobody manages, and keep the pod's namespace (and
    # its rules) alive even after the namespace's name is removed.
    wait_for(lambda: _gone(sidecar), what="the sidecar gone with its supervisor")
    assert not _gone(app)  # the app is the user's: it stays, and its traffic now fails closed
    mesh.run("delete", "web")
    assert mesh.leftovers() == []


def test_delete_leaves_nothing(mesh: Mesh, tmp_path: Path) -> None:
    www = serve_dir(tmp_path, b"x")
    mesh.run("create", "web", "--", *http_server(www, 8080))
    mesh.run("create", "client", "--", "sleep", "600")
    web_status = mesh.status("web")
    mesh.run("delete", "web")
    assert not os.path.exists(f"/proc/{web_status['app_pid']}")
    assert [p["name"] for p in mesh.pods()] == ["client"]
    hosts = (Path("/etc/netns") / mesh.netns("client") / "hosts").read_text()
    assert "\tweb" not in hosts and "\tclient" in hosts
    mesh.run("delete", "client")
    assert mesh.leftovers() == []


def test_concurrent_creates_get_distinct_addresses(mesh: Mesh) -> None:
    procs = [mesh.popen("create", f"p{i}", "--", "sleep", "600") for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    ips = [p["ip"] for p in mesh.pods()]
    assert len(ips) == 4 and len(set(ips)) == 4


def test_bad_input_is_refused_cleanly(mesh: Mesh) -> None:
    for args in (["create", "Bad_Name"], ["create", "x" * 41], ["create", "ok", "--exclude-outbound-ports", "0"],
                 ["create", "ok", "--exclude-outbound-cidrs", "10.0.0.0/99"], ["delete", "missing"],
                 ["exec", "missing", "--", "true"], ["status", "missing"]):
        done = mesh.run(*args, check=False)
        assert done.returncode == 2, args
        assert done.stderr.startswith("meshns: error: ") and done.stderr.count("\n") == 1, done.stderr
    mesh.run("create", "web")
    again = mesh.run("create", "web", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert [p["name"] for p in mesh.pods()] == ["web"]
    mesh.run("delete", "web")
    assert mesh.leftovers() == []


def test_dry_run_changes_nothing(mesh: Mesh) -> None:
    out = mesh.run("create", "web", "--dry-run", "--exclude-inbound-ports", "22", "--", "sleep", "1").stdout
    assert f"ip netns add {mesh.prefix}web" in out
    assert "-A MESHNS_IN_REDIRECT -p tcp" in out and "--dport 22" in out
    assert "REDIRECT --to-ports 15001" in out
    assert mesh.leftovers() == []
    assert not (mesh.state_dir / "registry.db").exists()


def test_failed_create_rolls_back(mesh: Mesh) -> None:
    # Make step 3 fail for real: the pod's veth name is already taken on the host.
    mesh.run("create", "other")
    import hashlib as h

    veth = "mv" + h.sha256(mesh.netns("web").encode()).hexdigest()[:10]
    subprocess.run(["ip", "link", "add", veth, "type", "dummy"], check=False, capture_output=True)
    if subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"], check=True)
    try:
        done = mesh.run("create", "web", "--", "sleep", "600", check=False)
        assert done.returncode == 3 and "failed" in done.stderr
        assert [p["name"] for p in mesh.pods()] == ["other"]
        assert not os.path.exists(f"/run/netns/{mesh.netns('web')}")
        assert not (mesh.state_dir / "pods" / "web").exists()
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def test_service_pod_is_published_only_once_its_app_serves(mesh: Mesh) -> None:
    # The app starts listening 1 s after it starts: create returns only then, and a curl right
    # after create is answered by the app (not refused, retried, or ejected).
    app = "import time,http.server as h; time.sleep(1); h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"
    mesh.run("create", "web", "--service", "web:8080", "--", "python3", "-c", app)
    mesh.run("create", "client")
    out = mesh.exec("client", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://web:8080/").stdout
    assert out == "200"
    # An app that never listens on its service port: create fails, says why, and leaves nothing.
    done = mesh.run("create", "deaf", "--service", "deaf:9090", "--ready-timeout", "2", "--", "sleep", "600",
                    check=False)
    assert done.returncode == 3 and "did not accept connections on port 9090" in done.stderr
    assert sorted(p["name"] for p in mesh.pods()) == ["client", "web"]
    assert not os.path.exists(f"/run/netns/{mesh.netns('deaf')}")


@pytest.mark.parametrize("kill_when", ["row", "netns", "supervisor"])
def test_gc_after_create_was_killed(mesh: Mesh, kill_when: str) -> None:
    import sqlite3

    def reached() -> bool:
        if kill_when == "row":
            db = mesh.state_dir / "registry.db"
            if not db.exists():
                return False
            try:
                with sqlite3.connect(str(db)) as conn:
                    return bool(conn.execute("SELECT 1 FROM pods WHERE name='web'").fetchone())
            except sqlite3.OperationalError:
                return False  # the file exists but create has not made the tables yet
        if kill_when == "netns":
            return os.path.exists(f"/run/netns/{mesh.netns('web')}")
        return (mesh.state_dir / "pods" / "web" / "state.json").exists()

    proc = mesh.popen("create", "web", "--", "sleep", "600")
    wait_for(lambda: reached() or proc.poll() is not None, timeout_s=30, what=kill_when)
    proc.kill()
    proc.wait()
    out = mesh.run("gc").stdout
    if proc.returncode != 0 or "web" in out:  # killed before it finished
        assert mesh.leftovers() == [], out
    mesh.run("delete", "web", check=False)
    mesh.run("gc")
    assert mesh.leftovers() == []


def test_gc_removes_orphans_of_this_mesh_only(mesh: Mesh) -> None:
    mesh.run("create", "web", "--", "sleep", "600")
    status = mesh.status("web")
    # A killed supervisor (and its sidecar) leave a ready pod without a supervisor: reported.
    os.kill(int(status["supervisor_pid"]), signal.SIGKILL)
    out = mesh.run("gc").stdout
    assert "supervisor is not running" in out
    mesh.run("delete", "web")
    # A namespace that looks like ours by name but was not made by this mesh is left alone.
    foreign = f"{mesh.prefix}foreign"
    subprocess.run(["ip", "netns", "add", foreign], check=True)
    try:
        mesh.run("gc")
        assert os.path.exists(f"/run/netns/{foreign}")
    finally:
        subprocess.run(["ip", "netns", "del", foreign], check=True)
    assert json.loads(mesh.run("list", "-o", "json").stdout) == []
