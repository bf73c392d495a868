"""The real sidecar process behind real iptables REDIRECT rules, in throwaway namespaces (root).

Layout (everything created here and deleted in teardown, also on failure):

    mtst-dp-<hex>   "the pod": lo, dummy0 10.252.X.1/24 (on veth0 if the kernel has no dummy
                    driver), veth0 10.253.X.1/24
                    nat OUTPUT:     tcp to 10.252.X.0/24, not uid 1337  -> REDIRECT 15001
                    nat PREROUTING: tcp in on veth0                     -> REDIRECT 15006
                    sidecar (uid/gid 1337), peer-echo server on 0.0.0.0:9000
    mtst-dp-<hex>c  "another pod": veth1 10.253.X.2/24, dials the pod's 10.253.X.1:9000

Namespaces are entered only by child processes (`ip netns exec`), never by the test process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, iptables)"),
    pytest.mark.skipif(
        any(shutil.which(tool) is None for tool in ("ip", "iptables-legacy", "setpriv")),
        reason="needs ip, iptables-legacy and setpriv",
    ),
]

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")

# Echoes each connection; a connection whose first line is "whoami" gets its peer address instead.
PEER_ECHO = """
import asyncio
async def handle(r, w):
    line = await r.readline()
    if line == b"whoami\\n":
        w.write(w.get_extra_info("peername")[0].encode() + b"\\n")
    else:
        w.write(line)
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    await w.drain()
    w.close()
async def main():
    srv = await asyncio.start_server(handle, "0.0.0.0", 9000)
    print("listening", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""

# argv: host port payload-repr -> prints repr of everything received until EOF (or a reset).
CLIENT = """
import ast, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
out = b""
try:  # a rejected connection is reset at once: sending or shutting down may fail too
    s.sendall(ast.literal_eval(sys.argv[3]))
    s.shutdown(socket.SHUT_WR)
    while data := s.recv(65536):
        out += data
except OSError:  # reset or broken pipe
    pass
print(repr(out))
"""

HTTP_GET = """
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:15000" + sys.argv[1], timeout=5)
    print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
"""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


@dataclass
class Env:
    ns: str
    client_ns: str
    x: int
    workdir: Path

    def exec(self, ns: str, *cmd: str) -> str:
        return run("ip", "netns", "exec", ns, *cmd).stdout

    def dial(self, ns: str, host: str, port: int, payload: bytes) -> bytes:
        out = self.exec(ns, PYTHON, "-c", CLIENT, host, str(port), repr(payload)).strip()
        return bytes(eval(out))  # our own child's repr() of bytes

    def admin(self, path: str) -> tuple[int, str]:
        status, _, body = self.exec(self.ns, PYTHON, "-c", HTTP_GET, path).partition("\n")
        return int(status), body


@pytest.fixture
def env() -> Iterator[Env]:
    tag = secrets.token_hex(3)
    e = Env(f"mtst-dp-{tag}", f"mtst-dp-{tag}c", secrets.randbelow(250) + 1,
            Path(tempfile.mkdtemp(prefix="mtst-dp-")))
    try:
        run("ip", "netns", "add", e.ns)
        run("ip", "netns", "add", e.client_ns)
        for cmd in (
            "link set lo up",
            f"link add veth0 type veth peer name veth1 netns {e.client_ns}",
            f"addr add 10.253.{e.x}.1/24 dev veth0",
            "link set veth0 up",
        ):
            run("ip", "-n", e.ns, *cmd.split())
        # Some kernels (containers) lack the dummy driver; the address then sits on veth0 instead.
        dummy = run("ip", "-n", e.ns, "link", "add", "dummy0", "type", "dummy", check=False)
        has_dummy = dummy.returncode == 0
        dev = "dummy0" if has_dummy else "veth0"
        run("ip", "-n", e.ns, "addr", "add", f"10.252.{e.x}.1/24", "dev", dev)
        run("ip", "-n", e.ns, "link", "set", dev, "up")
        for cmd in ("link set lo up", f"addr add 10.253.{e.x}.2/24 dev veth1", "link set veth1 up"):
            run("ip", "-n", e.client_ns, *cmd.split())
        ipt = ("ip", "netns", "exec", e.ns, "iptables-legacy", "-w", "-t", "nat")
        run(*ipt, *f"-A OUTPUT -p tcp -m owner ! --uid-owner 1337 -d 10.252.{e.x}.0/24 "
                   "-j REDIRECT --to-ports 15001".split())
        run(*ipt, *["-A", "PREROUTING", "-p", "tcp", "-i", "veth0", "-j", "REDIRECT", "--to-ports", "15006"])
        yield e
    finally:
        run("ip", "netns", "del", e.client_ns, check=False)
        run("ip", "netns", "del", e.ns, check=False)
        shutil.rmtree(e.workdir, ignore_errors=True)


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, needle: str, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"{needle!r} not seen (exit={proc.poll()}):\n{log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)


def test_sidecar_behind_real_redirect(env: Env) -> None:
    x = env.x
    # The sidecar runs as uid 1337: its config and log must be reachable for it.
    os.chmod(env.workdir, 0o755)
    config = env.workdir / "sidecar.json"
    config.write_text(json.dumps({"pod": "it-pod", "pod_ip": f"10.253.{x}.1", "drain_timeout_s": 2}))
    config.chmod(0o644)
    sidecar_log, echo_log = env.workdir / "sidecar.log", env.workdir / "echo.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        echo = start(["ip", "netns", "exec", env.ns, PYTHON, "-u", "-c", PEER_ECHO], echo_log)
        procs.append(echo)
        sidecar = start(["ip", "netns", "exec", env.ns, "setpriv", "--reuid", "1337", "--regid", "1337",
                         "--clear-groups", PYTHON, "-m", "meshns.dataplane", "--config", str(config)],
                        sidecar_log)
        procs.append(sidecar)
        wait_for_line(echo, echo_log, "listening")
        wait_for_line(sidecar, sidecar_log, "sidecar ready pod=it-pod")
        assert env.admin("/ready") == (200, "ready\n")

        # Outbound: the app (root, not 1337) dials a captured address; REDIRECT sends it to 15001
        # and the sidecar recovers 10.252.X.1:9000 through SO_ORIGINAL_DST.
        assert env.dial(env.ns, f"10.252.{x}.1", 9000, b"hello\nworld") == b"hello\nworld"
        # The probe port is answered by the sidecar itself, naming the original destination.
        assert env.dial(env.ns, f"10.252.{x}.5", 15002, b"") == (
            f"meshns-probe outbound 10.252.{x}.5:15002\n".encode())
        # Inbound: another pod dials us over the veth; PREROUTING sends it to 15006 and the hop to the
        # app comes from 127.0.0.6.
        assert env.dial(env.client_ns, f"10.253.{x}.1", 9000, b"whoami\n") == b"127.0.0.6\n"
        # Dialling the listener directly is not redirected (no NAT): rejected as a loop, not relayed.
        assert env.dial(env.ns, "127.0.0.1", 15001, b"loop?") == b""

        status, body = env.admin("/stats")
        assert status == 200
        stats = json.loads(body)
        assert stats["pod"] == "it-pod"
        assert stats["pid"] == sidecar.pid
        assert stats["outbound"]["accepted"] == 3
        assert stats["outbound"]["bytes_up"] == len(b"hello\nworld")  # the rejected b"loop?" is not relayed
        assert stats["outbound"]["bytes_down"] == len(b"hello\nworld")
        assert stats["inbound"] == {"accepted": 1, "bytes_up": 7, "bytes_down": 10}
        assert stats["probes"] == 1
        assert stats["rejects"] == 1
        assert stats["connect_failures"] == 0

        sidecar.send_signal(signal.SIGTERM)
        assert sidecar.wait(10) == 0
        log_text = sidecar_log.read_text()
        assert "Traceback" not in log_text, log_text
    finally:
        for proc in procs:
            stop(proc)
