"""The benchmark's own network: plain namespaces on a bridge (direct and HAProxy cases) and a
private meshns mesh, each under names no one else uses, and a cleanup that finds everything of
ours by those names alone, so it also works after a run that was killed (as `meshns gc` does and
as tests/integration/conftest.py does for each test's mesh).

Traffic never leaves these namespaces: the plain bridge has no address on the host and the
namespaces no default route; the mesh's pods have no route off the host either (meshns's guard).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# Private names. 10.250/16 is outside the integration tests' random 10.200-249 meshes, so a test
# run on the same machine at the same time cannot collide with us.
MESH_BRIDGE = "mbench0"
MESH_CIDR = "10.250.0.0/24"
MESH_SERVICE_CIDR = "10.250.64.0/24"
MESH_PREFIX = "mb-"
PLAIN_BRIDGE = "mbench1"
PLAIN_PREFIX = "mbx-"  # namespaces of the direct and HAProxy cases
VETH_PREFIX = "vbx-"  # their host-side veth ends
PLAIN_NET = "10.250.128"  # /24, on PLAIN_BRIDGE only
TMP_PREFIX = "meshns-bench-"  # temp dir; every process we start has it in its command line

MESHNS = str(Path(sys.executable).parent / "meshns")


def run(argv: list[str], *, check: bool = True, timeout: float = 60, env: dict[str, str] | None = None,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input,
                          check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> exit {done.returncode}\n{done.stdout}{done.stderr}".strip())
    return done


@dataclass(frozen=True)
class Runner:
    """How to start a program inside a namespace: an argv prefix and its environment."""

    prefix: tuple[str, ...]
    env: dict[str, str] | None = None

    def argv(self, *cmd: str) -> list[str]:
        return [*self.prefix, *cmd]


@dataclass
class PlainNet:
    """Namespaces on PLAIN_BRIDGE with one address each, nothing else: what `direct` runs on and,
    with meshns's interception rules added, what HAProxy runs in."""

    log_dir: Path
    namespaces: dict[str, str] = field(default_factory=dict)  # name -> address
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[TextIO] = field(default_factory=list)

    def create_bridge(self) -> None:
        run(["ip", "link", "add", PLAIN_BRIDGE, "type", "bridge"])
        run(["ip", "link", "set", PLAIN_BRIDGE, "up"])

    def add(self, role: str, host: int) -> str:
        """Namespace PLAIN_PREFIX+role at PLAIN_NET.host/24, lo and eth0 up. Returns its address."""
        ns, veth, addr = PLAIN_PREFIX + role, VETH_PREFIX + role, f"{PLAIN_NET}.{host}"
        self.namespaces[ns] = addr  # recorded first, so cleanup finds a half-made one
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The peer is made inside the namespace in one request, as meshns does for a pod.
        run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "link", "set", veth, "master", PLAIN_BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        # As in a meshns pod: IPv4 only (the rules are IPv4 only).
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        return addr

    @staticmethod
    def runner(ns: str) -> Runner:
        return Runner(("ip", "netns", "exec", ns))

    def start(self, ns: str, name: str, *cmd: str) -> subprocess.Popen[bytes]:
        """A long-running program in ``ns``; ``ip netns exec`` execs it, so the pid is its own."""
        log = (self.log_dir / f"{name}.log").open("w")
        self._logs.append(log)
        proc = subprocess.Popen(self.runner(ns).argv(*cmd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def install_rules(self, ns: str, rules: str) -> list[str]:
        """Load iptables-restore text into ``ns`` with the legacy backend (python-iptables, which
        meshns uses, writes there too); returns the -A lines the kernel reports back."""
        run(["ip", "netns", "exec", ns, "iptables-legacy-restore", "--noflush"], input=rules)
        saved = run(["ip", "netns", "exec", ns, "iptables-legacy-save", "-t", "nat"]).stdout
        return [line.strip() for line in saved.splitlines() if line.startswith("-A ")]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()


@dataclass
class Mesh:
    """A private meshns mesh driven through its CLI, as the integration tests drive one."""

    state_dir: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MESHNS_STATE_DIR=str(self.state_dir), MESHNS_BRIDGE=MESH_BRIDGE,
                   MESHNS_POD_CIDR=MESH_CIDR, MESHNS_NS_PREFIX=MESH_PREFIX,
                   MESHNS_SERVICE_CIDR=MESH_SERVICE_CIDR)
        return env

    @property
    def argv(self) -> tuple[str, ...]:
        """The CLI with the state directory on its command line (the environment says it too):
        so a `meshns create` still running when we were killed carries our temp dir's name, and
        force_clean finds and stops it before it can make a pod after the cleanup."""
        return MESHNS, "--state-dir", str(self.state_dir)

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run([*self.argv, *args], check=check, timeout=timeout, env=self.env, input=input)

    def runner(self, pod: str) -> Runner:
        # `meshns exec` is the supported way in: the pod's namespace and its hosts file (names).
        return Runner((*self.argv, "exec", pod, "--"), self.env)

    def status(self, pod: str) -> dict[str, Any]:
        data = json.loads(self.run("status", pod, "-o", "json", "--window", "0").stdout)
        if not isinstance(data, dict):
            raise RuntimeError(f"meshns status {pod}: not an object")
        return data

    def sidecar_pid(self, pod: str) -> int:
        pid = self.status(pod).get("sidecar_pid")
        if not isinstance(pid, int):
            raise RuntimeError(f"pod {pod} has no running sidecar")
        return pid

    def sidecar(self, pod: str) -> Callable[[], int]:
        """A lookup of the pod's sidecar pid that asks `meshns status` (a second of CLI start-up on
        a busy machine) only when the pid it knows is no longer a sidecar (restarted)."""
        known = 0

        def pid() -> int:
            nonlocal known
            if not known or "meshns.dataplane" not in cmdline(known):
                known = self.sidecar_pid(pod)
            return known

        return pid

    def pod_names(self) -> list[str]:
        if not (self.state_dir / "registry.db").exists():
            return []
        done = self.run("list", "-o", "json", check=False)
        if done.returncode != 0:
            return []
        return [str(p["name"]) for p in json.loads(done.stdout)]

    def teardown(self) -> None:
        """delete every pod, then gc: the supported way out; force_clean mops up after it.
        One `meshns delete` for all (the scale section's 100 pods: one CLI start, not 100); it
        stops at the first pod it cannot delete, so then the rest go one by one."""
        pods = self.pod_names()
        if pods and self.run("delete", *pods, check=False, timeout=60 + 5 * len(pods)).returncode != 0:
            for pod in self.pod_names():
                self.run("delete", pod, check=False, timeout=60)
        if (self.state_dir / "registry.db").exists():
            self.run("gc", check=False, timeout=60)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
    except OSError:
        return ""


def _our_pids() -> list[int]:
    """Processes started by a benchmark run: their command line names the run's temp dir."""
    mark = "/" + TMP_PREFIX
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me and mark in cmdline(int(p))]


def _netns_ours() -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return [n for n in names if n.startswith((MESH_PREFIX, PLAIN_PREFIX))]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def leftovers() -> list[str]:
    """Everything of the benchmark's still on the machine (empty when clean)."""
    found = [f"namespace {ns}" for ns in _netns_ours()]
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if name in (MESH_BRIDGE, PLAIN_BRIDGE) or name.startswith(VETH_PREFIX):
            found.append(f"link {name}")
        elif f"master {MESH_BRIDGE} " in line or f"master {PLAIN_BRIDGE} " in line:
            found.append(f"link {name} (port of our bridge)")
    rules = run(["iptables", "-w", "-S", "FORWARD"], check=False).stdout
    found += [f"host rule: {r}" for r in rules.splitlines() if f"meshns-guard:{MESH_BRIDGE}" in r]
    etc = Path("/etc/netns")
    if etc.is_dir():
        found += [f"/etc/netns/{d}" for d in os.listdir(etc) if d.startswith(MESH_PREFIX)]
    found += [f"process {pid}: {cmdline(pid)[:100]}" for pid in _our_pids()]
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    found += [f"temp dir {d}" for d in tmp.glob(TMP_PREFIX + "*")]
    return found


def force_clean() -> list[str]:
    """Remove everything of ours by name (processes first, then namespaces, links, host rules,
    /etc/netns entries, temp dirs). Idempotent; returns what it found. A second pass takes what
    a process stopped in the middle of the first one (a half-made pod) still left."""
    found = leftovers()
    if found:
        _clean_once()
        if leftovers():
            time.sleep(0.5)
            _clean_once()
    return found


def _clean_once() -> None:
    _kill(_our_pids())
    for ns in _netns_ours():
        pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
        _kill([int(p) for p in pids if p.isdigit()])
        run(["ip", "netns", "del", ns], check=False)
    for bridge in (MESH_BRIDGE, PLAIN_BRIDGE):
        ports = run(["ip", "-o", "link", "show", "master", bridge], check=False).stdout
        for line in ports.splitlines():
            run(["ip", "link", "del", line.split(": ")[1].split("@")[0]], check=False)
        run(["ip", "link", "del", bridge], check=False)
    links = run(["ip", "-o", "link", "show"], check=False).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0] if ": " in line else ""
        if name.startswith(VETH_PREFIX):
            run(["ip", "link", "del", name], check=False)
    for spec in (["-i", MESH_BRIDGE, "!", "-o", MESH_BRIDGE], ["!", "-i", MESH_BRIDGE, "-o", MESH_BRIDGE]):
        while run(["iptables", "-w", "-D", "FORWARD", *spec, "-m", "comment", "--comment",
                   f"meshns-guard:{MESH_BRIDGE}", "-j", "DROP"], check=False).returncode == 0:
            pass
    etc = Path("/etc/netns")
    if etc.is_dir():
        for d in os.listdir(etc):
            if d.startswith(MESH_PREFIX):
                shutil.rmtree(etc / d, ignore_errors=True)
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    for stale in tmp.glob(TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
