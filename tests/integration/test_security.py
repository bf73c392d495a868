"""Security of a pod in real namespaces: what the app (root, unmodified) can and cannot do to the
mesh, what the sidecar may do, where the keys are, and that hostile names go nowhere."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest
from conftest import Mesh

APPS = Path(__file__).parent / "apps"
PY = sys.executable
DOCKER_DEFAULT_LESS_MKNOD = 0xA00425FB


def backend(name: str, port: int = 9080) -> list[str]:
    return [PY, str(APPS / "backend.py"), "--name", name, "--port", str(port)]


def ip_of(mesh: Mesh, pod: str) -> str:
    return str({p["name"]: p["ip"] for p in mesh.pods()}[pod])


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def app_caps() -> int:
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return DOCKER_DEFAULT_LESS_MKNOD & ((1 << (last + 1)) - 1)


@pytest.fixture
def pods(mesh: Mesh) -> Mesh:
    mesh.run("create", "web", "--service", "web:9080", "--", *backend("web"))
    mesh.run("create", "client", "--", "sleep", "600")
    return mesh


def sh(mesh: Mesh, pod: str, script: str) -> str:
    """Run a shell script as the pod's app would run (meshns exec), stdout and stderr together."""
    done = mesh.exec(pod, "sh", "-c", "exec 2>&1; " + script, check=False)
    return done.stdout


def test_the_app_cannot_touch_the_rules_the_keys_or_other_pods(pods: Mesh) -> None:
    mesh = pods
    web, client = mesh.status("web"), mesh.status("client")
    state = mesh.state_dir
    keys = sorted(str(p) for p in (state / "ca").iterdir() if p.name.endswith(".key"))
    assert keys, "the mesh CA has a key on disk"
    before = mesh.stats("client")["outbound"]["accepted"]

    # The app started by create and the one started by exec get the same reduced capabilities.
    for pid in (int(client["app_pid"]), int(web["app_pid"])):
        st = proc_status(pid)
        assert int(st["CapBnd"], 16) == app_caps() and int(st["CapEff"], 16) == app_caps(), st
    assert "CapBnd:\t" + format(app_caps(), "016x") in sh(mesh, "client", "grep CapBnd /proc/self/status")

    # No way around the sidecar: the rules cannot be flushed, by either iptables flavour or nft.
    out = sh(mesh, "client", "iptables-legacy -t nat -F; iptables-nft -t nat -F; nft flush ruleset; echo done")
    assert "Permission denied" in out and out.rstrip().endswith("done"), out
    got = mesh.exec("client", "curl", "-sS", "--max-time", "5", "http://web:9080/headers").stdout
    assert "x-meshns-client-id: spiffe://cluster.local/ns/default/sa/client" in got.lower()
    assert mesh.stats("client")["outbound"]["accepted"] == before + 1

    # The state directory (registry, CA, pod logs) is an empty, read-only directory in the pod.
    out = sh(mesh, "client", f"ls -A {state}; cat {keys[0]}; touch {state}/x; echo end")
    assert "PRIVATE KEY" not in out and "No such file" in out and "Read-only file system" in out, out
    assert out.splitlines()[0].startswith("cat:"), out  # ls printed nothing

    # Nor through /proc: not the sidecar's or supervisor's memory, descriptors, environment or
    # root directory (the host's mount view), not another pod's namespace.
    sidecar, supervisor = int(web["sidecar_pid"]), int(web["supervisor_pid"])
    out = sh(mesh, "client", " ; ".join([
        f"head -c1 /proc/{sidecar}/mem", f"cat /proc/{sidecar}/fd/0", f"cat /proc/{sidecar}/environ",
        f"head -c1 /proc/{supervisor}/mem", f"cat /proc/{supervisor}/environ",
        f"ls /proc/1/root{state}", f"ls /proc/{supervisor}/root{state}",
        f"nsenter --net=/run/netns/{mesh.netns('web')} true", "umount " + str(state),
        "mknod /tmp/meshns-sbx-dev b 8 0", "echo end"]))
    assert out.count("Permission denied") >= 7 and "PRIVATE" not in out, out
    assert "Operation not permitted" in out and "must be superuser" in out, out
    assert out.rstrip().endswith("end") and not os.path.exists("/tmp/meshns-sbx-dev")

    # What the app may still do: be root in its own pod, bind low ports, use its hosts file.
    out = sh(mesh, "client", "id -u; python3 -c \"import socket; s=socket.socket(); s.bind(('', 80)); "
             "print('bound')\"; grep -cw client /etc/hosts")
    assert out.split() == ["0", "bound", "1"], out


def test_the_sidecar_runs_with_no_privilege_at_all(pods: Mesh) -> None:
    st = proc_status(int(pods.status("web")["sidecar_pid"]))
    assert st["Uid"].split() == ["1337"] * 4 and st["Gid"].split() == ["1337"] * 4
    assert st["Groups"] == ""
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(st[key], 16) == 0, (key, st[key])
    assert st["NoNewPrivs"] == "1"
    # The supervisor (root, holds the pod key between issue and hand-over) is not dumpable:
    # its /proc entries belong to root alone, whatever its uid.
    sup = int(pods.status("web")["supervisor_pid"])
    assert os.stat(f"/proc/{sup}/environ").st_uid == 0
    assert Path(f"/proc/{sup}/status").read_text().count("Uid:\t0") == 1


def test_the_admin_port_answers_only_inside_its_pod(pods: Mesh) -> None:
    mesh = pods
    web_ip = ip_of(mesh, "web")
    inside = mesh.exec("web", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/ready").stdout
    assert inside.strip() == "ready" or "ready" in inside.lower()
    rejects = mesh.stats("web")["rejects"]
    # From another pod, through both sidecars (the normal path) and to the admin port directly.
    for url in (f"http://{web_ip}:15000/stats", f"http://{web_ip}:15000/config_dump"):
        out = mesh.exec("client", "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                        url, check=False)
        assert out.returncode != 0 and out.stdout in ("", "000"), (url, out)
    assert mesh.stats("web")["rejects"] >= rejects + 2
    log = Path(mesh.status("web")["log"]).read_text(errors="replace")
    assert "is the sidecar's admin port; only the pod may use it" in log
    # A pod's app cannot reach the admin port of another pod through its own loopback either:
    # 127.0.0.1 is per pod.
    own = json.loads(mesh.exec("client", "curl", "-sS", "--max-time", "5", "http://127.0.0.1:15000/stats").stdout)
    assert own["pod"] == "client"


def _secrets_in(text: str, key_bodies: list[str]) -> list[str]:
    found = re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)
    found += [b[:40] for b in key_bodies if b[:40] in text]
    return found


def test_keys_are_0600_and_never_in_logs_snapshots_or_dumps(pods: Mesh) -> None:
    mesh = pods
    mesh.exec("client", "curl", "-sS", "--max-time", "5", "http://web:9080/whoami")
    state = mesh.state_dir
    ca = state / "ca"
    assert stat.S_IMODE(ca.stat().st_mode) == 0o700
    bodies = []
    for path in sorted(p for p in state.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if b"PRIVATE KEY" in data:
            # Private keys live only in the CA directory, readable by root alone.
            assert path.parent == ca and stat.S_IMODE(path.stat().st_mode) == 0o600, path
            bodies.append("".join(data.decode().splitlines()[1:-1]))
    assert bodies
    # Everything a person or a tool can read: files in the state dir other than the keys, the
    # CLI's outputs, the admin endpoint's dumps.
    texts = {str(p): p.read_text(errors="replace") for p in state.rglob("*")
             if p.is_file() and p.parent != ca and p.name != "registry.db"}
    texts["registry.db"] = (state / "registry.db").read_bytes().decode(errors="replace")
    for pod in ("web", "client"):
        texts[f"status {pod}"] = mesh.run("status", pod, "-o", "json").stdout
        for path in ("/config_dump", "/certs", "/stats", "/clusters", "/stats/prometheus"):
            texts[f"{pod} {path}"] = mesh.exec(pod, "curl", "-sS", "--max-time", "5",
                                               f"http://127.0.0.1:15000{path}").stdout
    texts["logs"] = mesh.run("logs", "web", check=False).stdout
    texts["service show"] = mesh.run("service", "show", "web").stdout
    assert len(texts["web /config_dump"]) > 100 and "spiffe://" in texts["web /certs"]
    leaks = {name: _secrets_in(text, bodies) for name, text in texts.items()}
    assert not any(leaks.values()), {k: v for k, v in leaks.items() if v}


@pytest.mark.parametrize("args", [
    ["create", "a;touch /tmp/meshns-pwned"],
    ["create", "$(touch /tmp/meshns-pwned)"],
    ["create", "../../etc"],
    ["create", "web -j ACCEPT"],
    ["create", "ok", "--service", "x`touch /tmp/meshns-pwned`:80"],
    ["create", "ok", "--service", "../x:80"],
    ["create", "ok", "--label", "a=$(touch /tmp/meshns-pwned)"],
    ["create", "ok", "--namespace", "../../etc"],
    ["create", "ok", "--service-account", "a/../b"],
    ["create", "ok", "--exclude-outbound-ports", "22;touch /tmp/meshns-pwned"],
    ["create", "ok", "--exclude-outbound-cidrs", "0.0.0.0/0 -j ACCEPT"],
    ["--bridge", "br0;id", "list"],
    ["--ns-prefix", "../", "list"],
])
def test_hostile_names_go_nowhere(mesh: Mesh, args: list[str]) -> None:
    done = mesh.run(*args, check=False)
    assert done.returncode == 2, (args, done.stderr)
    assert done.stderr.startswith("meshns: error: ") and "Traceback" not in done.stderr
    assert not os.path.exists("/tmp/meshns-pwned")
    assert mesh.leftovers() == []
