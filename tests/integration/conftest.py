"""Fixtures for integration tests: each test gets its own mesh (state directory, bridge, pod
CIDR, namespace prefix), drives the real `meshns` command, and leaves the machine clean even
when it fails: teardown deletes every pod, runs gc, then removes by force anything that is
still there and fails the test if it had to."""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MESHNS = str(Path(sys.executable).parent / "meshns")

pytestmark = pytest.mark.root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests need root (namespaces, iptables)")
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(skip)


@dataclass
class Mesh:
    state_dir: Path
    bridge: str
    cidr: str
    prefix: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def service_cidr(self) -> str:
        a, b, c = self.cidr.split(".")[:3]
        return f"{a}.{b}.{(int(c) + 64) % 256}.0/24"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MESHNS_STATE_DIR=str(self.state_dir), MESHNS_BRIDGE=self.bridge,
                   MESHNS_POD_CIDR=self.cidr, MESHNS_NS_PREFIX=self.prefix,
                   MESHNS_SERVICE_CIDR=self.service_cidr)
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([MESHNS, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"meshns {' '.join(args)} -> {done.returncode}\n"
                                 f"stdout: {done.stdout}\nstderr: {done.stderr}")
        return done

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([MESHNS, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def exec(self, pod: str, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("exec", pod, "--", *cmd, check=check, timeout=timeout)

    def status(self, pod: str) -> dict[str, Any]:
        data = json.loads(self.run("status", pod, "-o", "json").stdout)
        assert isinstance(data, dict)
        return data

    def pods(self) -> list[dict[str, Any]]:
        data = json.loads(self.run("list", "-o", "json").stdout)
        assert isinstance(data, list)
        return data

    def stats(self, pod: str) -> dict[str, Any]:
        stats = self.status(pod)["sidecar_stats"]
        assert isinstance(stats, dict), f"no sidecar stats for {pod}"
        return stats

    def netns(self, pod: str) -> str:
        return f"{self.prefix}{pod}"

    def leftovers(self) -> list[str]:
        """Everything of this mesh still on the machine."""
        found = []
        for ns in _netns_list():
            if ns.startswith(self.prefix):
                found.append(f"namespace {ns}")
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        if f": {self.bridge}:" in links:
            found.append(f"bridge {self.bridge}")
        if f"master {self.bridge} " in links:
            found.append(f"ports on {self.bridge}")
        rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
        if f"meshns-guard:{self.bridge}" in rules:
            found.append("host guard rules")
        etc = Path("/etc/netns")
        if etc.is_dir():
            found.extend(f"/etc/netns/{d}" for d in os.listdir(etc) if d.startswith(self.prefix))
        for pid in _pids_with(str(self.state_dir)):
            found.append(f"process {pid}: {' '.join(_cmdline(pid))[:120]}")
        db = self.state_dir / "registry.db"
        if db.exists():
            import sqlite3

            with sqlite3.connect(str(db)) as conn:
                rows = conn.execute("SELECT name FROM pods").fetchall()
            found.extend(f"registry row {r[0]}" for r in rows)
        pods_dir = self.state_dir / "pods"
        if pods_dir.is_dir() and os.listdir(pods_dir):
            found.append(f"pod dirs {os.listdir(pods_dir)}")
        return found


def _netns_list() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _pids_with(word: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
            and word in _cmdline(int(p))]


def _force_clean(m: Mesh) -> None:
    for pid in _pids_with(str(m.state_dir)):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for ns in _netns_list():
        if ns.startswith(m.prefix):
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    links = subprocess.run(["ip", "-o", "link", "show", "master", m.bridge], capture_output=True,
                           text=True).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0]
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", m.bridge], capture_output=True)
    for spec in (["-i", m.bridge, "!", "-o", m.bridge], ["!", "-i", m.bridge, "-o", m.bridge]):
        subprocess.run(["iptables", "-w", "-D", "FORWARD", *spec, "-m", "comment", "--comment",
                        f"meshns-guard:{m.bridge}", "-j", "DROP"], capture_output=True)
    etc = Path("/etc/netns")
    if etc.is_dir():
        for d in os.listdir(etc):
            if d.startswith(m.prefix):
                shutil.rmtree(etc / d, ignore_errors=True)


def _new_mesh(base: Path) -> Mesh:
    tag = secrets.token_hex(3)
    cidr = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24"
    return Mesh(state_dir=base / f"state-{tag}", bridge=f"tb{tag}", cidr=cidr, prefix=f"t{tag}-")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


def _dump_pod_logs(m: Mesh) -> None:
    """On failure, the tail of every pod's logs goes into the captured output of the report,
    so a CI failure can be read without the machine it ran on."""
    pods_dir = m.state_dir / "pods"
    if not pods_dir.is_dir():
        return
    for pod in sorted(os.listdir(pods_dir)):
        for name in ("pod.log", "app.log"):
            path = pods_dir / pod / name
            if path.is_file():
                tail = path.read_bytes()[-6000:].decode(errors="replace")
                print(f"----- {pod}/{name} (last {len(tail)} bytes) -----\n{tail}")


@pytest.fixture
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    m = _new_mesh(tmp_path)
    try:
        yield m
    finally:
        if request.node.stash.get(_FAILED, False):
            _dump_pod_logs(m)
        for proc in m.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        problems: list[str] = []
        if m.state_dir.exists():
            for pod in _registry_names(m):
                m.run("delete", pod, check=False, timeout=60)
            m.run("gc", check=False, timeout=60)
            problems = m.leftovers()
        _force_clean(m)
        assert not problems, f"teardown found leftovers after delete + gc: {problems}"


def _registry_names(m: Mesh) -> list[str]:
    db = m.state_dir / "registry.db"
    if not db.exists():
        return []
    import sqlite3

    with sqlite3.connect(str(db)) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM pods")]


def wait_for(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# PeerAuthentication turning mTLS off mesh-wide (namespace default): for the plaintext cases.
PLAINTEXT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: DISABLE}
"""


def nginx_conf(d: Path, port: int, body: str, worker_connections: int, backlog: int,
               nofile: int | None = None) -> Path:
    """An nginx (Debian's, unmodified) answering every request on ``port`` with ``body``, with
    keep-alive, no logs and every temp path under ``d``, run in the foreground as a pod's app."""
    d.mkdir(exist_ok=True)
    conf = d / "nginx.conf"
    rlimit = f"worker_rlimit_nofile {nofile};" if nofile else ""
    conf.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
{rlimit}
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_timeout 600s;
  keepalive_requests 1000000;
  server {{
    listen {port} backlog={backlog};
    location / {{ return 200 "{body}\\n"; }}
  }}
}}
""")
    return conf
