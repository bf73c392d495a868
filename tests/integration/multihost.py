"""Several simulated hosts on this one machine, for multi-host tests (a helper, not a test module).

A ``Lan`` is a "lan" network namespace holding a bridge (the test network 10.R.0.0/24), an "etcd"
namespace on it (10.R.0.2) running a real etcd, and any number of ``SimHost``: each a network
namespace on the lan (10.R.0.(10+i)) with ip_forward on and its own meshns state directory,
bridge, namespace prefix and service CIDR. ``Lan(etcd_members=3)`` runs one etcd cluster of three
members instead, each in its own namespace ("etcd0".."etcd2", 10.R.0.2 .. 10.R.0.4); members can
be stopped, killed and started one by one (``stop_etcd(member=1, kill=True)``). ``SimHost.run`` drives the real ``meshns`` command
inside that host's network namespace only (``nsenter --net``: it keeps the mount namespace, so
the pod namespaces meshns bind-mounts under /run/netns stay visible to later commands; ``ip
netns exec`` would make a private mount namespace and lose them).

Every name starts with the Lan's random prefix ``mh<6 hex>-`` (interfaces stay within 15
characters), and nothing is ever created in the root network namespace. Cleanup always runs:
each host's pods are deleted with ``meshns delete`` and ``meshns gc`` inside the host, then
whatever is left (processes in the host's or its pods' namespaces, pod namespaces, /etc/netns
dirs, the host, etcd and lan namespaces, the temporary directory) is removed by force; the exit
raises AssertionError if force was needed or anything of the prefix is still on the machine.

    with Lan() as lan:
        a, b = lan.add_host("a"), lan.add_host("b")
        a.run("create", "web", "--", "sleep", "600", env=a.env_with_cidr(a.test_pod_cidr))

or as a pytest fixture in a test module::

    @pytest.fixture
    def lan(request): yield from lan_fixture(request)
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

MESHNS = str(Path(sys.executable).parent / "meshns")
NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
LAN_IF = "lan0"  # the host's end of its lan veth, inside the host namespace
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
_HOST_NAME = re.compile(r"^[a-z0-9]{1,8}$")
MAX_HOSTS = 100
MAX_ETCD_MEMBERS = 7  # 10.R.0.2 .. 10.R.0.8, clear of the hosts' 10.R.0.10 on


# ---------------------------------------------------------------- namespaces and processes

def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} -> {done.returncode}: {done.stderr.strip()}")
    return done


def _nsenter(netns: str, argv: Sequence[str]) -> list[str]:
    argv = list(argv)
    if argv[:1] == ["meshns"]:
        argv[0] = MESHNS
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]


def netns_list() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def ns_id(netns: str) -> tuple[int, int] | None:
    """(device, inode) of a named namespace, as /proc/<pid>/ns/net shows it; None if absent."""
    try:
        st = os.stat(NETNS_DIR / netns)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text(errors="replace").rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def pids_in(ids: set[tuple[int, int]]) -> list[int]:
    """Live processes whose network namespace is one of ``ids`` (how ``ip netns pids`` finds them)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in ids and not _zombie(int(entry)):
            found.append(int(entry))
    return found


def pids_mentioning(word: str) -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()
            and word in _cmdline(int(e)) and not _zombie(int(e))]


def _kill_all(ids: set[tuple[int, int]], timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process in those namespaces, again until none is left (a dying supervisor
    may fork once more). Returns the pids killed."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = pids_in(ids)
        if not pids:
            return killed
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return killed
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[Any], grace_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---------------------------------------------------------------- hosts

class SimHost:
    """One simulated host: a network namespace on the lan with its own mesh."""

    def __init__(self, lan: Lan, name: str, index: int) -> None:
        self.lan = lan
        self.name = name
        self.index = index
        self.netns = f"{lan.prefix}h{name}"
        self.address = f"{lan.net}.0.{10 + index}"
        self.dir = lan.dir / "hosts" / name
        self.state_dir = self.dir / "state"
        self.bridge = f"{lan.prefix}b{index}"
        self.prefix = f"{lan.prefix}p{index}-"  # this host's pod namespaces
        self.service_cidr = f"{lan.net}.{128 + index}.0/24"
        self.test_pod_cidr = f"{lan.net}.{1 + index}.0/24"  # for tests that run without an agent
        self.lan_peer = f"{lan.prefix}v{index}"  # the lan end of the host's veth, in the lan namespace
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed = False
        self._ids: set[tuple[int, int]] = set()

    def __repr__(self) -> str:
        return f"SimHost({self.name!r}, {self.address}, netns={self.netns})"

    @property
    def env(self) -> dict[str, str]:
        """meshns's environment for this host; no MESHNS_POD_CIDR (the agent's block claim gives it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHNS_")}
        env.update(MESHNS_STATE_DIR=str(self.state_dir), MESHNS_BRIDGE=self.bridge,
                   MESHNS_NS_PREFIX=self.prefix, MESHNS_SERVICE_CIDR=self.service_cidr)
        return env

    def env_with_cidr(self, cidr: str) -> dict[str, str]:
        return {**self.env, "MESHNS_POD_CIDR": cidr}

    def ns_ids(self) -> set[tuple[int, int]]:
        """The host's namespace and every pod namespace named with its prefix (remembered, so a
        namespace deleted while a process still holds it is still recognised)."""
        for ns in [self.netns, *self.pod_netns()]:
            found = ns_id(ns)
            if found:
                self._ids.add(found)
        return set(self._ids)

    def pod_netns(self) -> list[str]:
        return [ns for ns in netns_list() if ns.startswith(self.prefix)]

    def pids(self) -> list[int]:
        return pids_in(self.ns_ids())

    # -- running things inside the host

    def run(self, *meshns_args: str, check: bool = True, timeout: float = 60, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The real meshns CLI inside this host's network namespace."""
        return self.run_cmd("meshns", *meshns_args, check=check, timeout=timeout, input=input, env=env)

    def run_cmd(self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Any command inside this host's network namespace, with the host's env ("meshns" as
        argv[0] is this venv's meshns)."""
        done = subprocess.run(_nsenter(self.netns, argv), env=self.env if env is None else env,
                              capture_output=True, text=True, timeout=timeout, input=input, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(argv)} -> {done.returncode}\n"
                                 f"stdout: {done.stdout}\nstderr: {done.stderr}")
        return done

    def popen(self, *argv: str, env: dict[str, str] | None = None, stdout: int | IO[Any] | None = None,
              stderr: int | IO[Any] | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """A background command inside this host's network namespace. Output goes to a log
        file in the host's directory unless told otherwise; cleanup (and kill()) stop it."""
        log_path = self.dir / f"popen-{len(self.procs)}.log"
        log = None
        if stdout is None or stderr is None:
            log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(_nsenter(self.netns, argv), env=self.env if env is None else env,
                                    stdout=log if stdout is None else stdout,
                                    stderr=log if stderr is None else stderr, **kwargs)
        finally:
            if log is not None:
                log.close()
        proc.log_path = log_path  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def pod_ip(self, pod: str) -> str:
        ip = json.loads(self.run("status", pod, "-o", "json").stdout)["ip"]
        assert isinstance(ip, str)
        return ip

    # -- failure

    def kill(self) -> None:
        """The host dies: SIGKILL every process in its namespace and its pods', and unplug it
        from the lan (both ends of its lan veth down). Its namespaces and state stay, as on a
        machine that lost power; cleanup still removes them."""
        _kill_all(self.ns_ids())
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        _ip("-n", self.lan.lan_ns, "link", "set", self.lan_peer, "down")
        _ip("-n", self.netns, "link", "set", LAN_IF, "down")
        self.killed = True

    # -- cleanup

    def _registry_pods(self) -> list[str]:
        db = self.state_dir / "registry.db"
        if not db.exists():
            return []
        done = self.run("list", "-o", "json", check=False)
        if done.returncode == 0:
            return [p["name"] for p in json.loads(done.stdout)]
        with sqlite3.connect(str(db)) as conn:
            return [r[0] for r in conn.execute("SELECT name FROM pods")]

    def polite_cleanup(self) -> list[str]:
        """Stop our background commands, meshns delete every pod and gc; return what is left."""
        for proc in self.procs:
            _stop(proc)
        if ns_id(self.netns) is None:
            return []
        problems: list[str] = []
        if (self.state_dir / "registry.db").exists():
            try:
                for pod in self._registry_pods():
                    done = self.run("delete", pod, check=False)
                    if done.returncode != 0:
                        problems.append(f"meshns delete {pod}: {done.stderr.strip()[-300:]}")
                if (self.state_dir / "host" / "settings.json").exists():
                    # A member leaves the mesh (its agent stops); a killed host cannot reach
                    # etcd any more, so it only forgets its membership.
                    leave = ["host", "leave", "--force"] if self.killed else ["host", "leave"]
                    done = self.run(*leave, check=False, timeout=90)
                    if done.returncode != 0:
                        done = self.run("host", "leave", "--force", check=False, timeout=90)
                    if done.returncode != 0:
                        problems.append(f"meshns host leave: {done.stderr.strip()[-300:]}")
                done = self.run("gc", check=False)
                if done.returncode != 0:
                    problems.append(f"meshns gc: {done.stderr.strip()[-300:]}")
            except (subprocess.TimeoutExpired, AssertionError, sqlite3.Error, ValueError) as exc:
                problems.append(f"cleanup command failed: {exc}")
        return problems + self.leftovers()

    def leftovers(self) -> list[str]:
        """What of this host's mesh is still there (the host namespace itself aside)."""
        found = [f"pod namespace {ns}" for ns in self.pod_netns()]
        if ETC_NETNS.is_dir():
            found += [f"/etc/netns/{d}" for d in os.listdir(ETC_NETNS) if d.startswith(self.prefix)]
        pids = set(self.pids()) | set(pids_mentioning(str(self.state_dir)))
        found += [f"process {pid}: {_cmdline(pid)[:120]}" for pid in sorted(pids)]
        if ns_id(self.netns) is not None:
            links = _ip("-n", self.netns, "-o", "link", "show", check=False).stdout
            if f": {self.bridge}:" in links:
                found.append(f"bridge {self.bridge} in {self.netns}")
            rules = subprocess.run(_nsenter(self.netns, ["iptables", "-w", "-S", "FORWARD"]),
                                   capture_output=True, text=True, check=False).stdout
            if f"meshns-guard:{self.bridge}" in rules:
                found.append(f"host guard rules in {self.netns}")
        db = self.state_dir / "registry.db"
        if db.exists():
            try:
                with sqlite3.connect(str(db)) as conn:
                    found += [f"registry row {r[0]}" for r in conn.execute("SELECT name FROM pods")]
            except sqlite3.Error as exc:
                found.append(f"registry unreadable: {exc}")
        return found

    def force_cleanup(self) -> None:
        _kill_all(self.ns_ids())
        for ns in self.pod_netns():
            _ip("netns", "del", ns, check=False)
        if ETC_NETNS.is_dir():
            for d in os.listdir(ETC_NETNS):
                if d.startswith(self.prefix):
                    shutil.rmtree(ETC_NETNS / d, ignore_errors=True)
        for pid in pids_mentioning(str(self.state_dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ip("netns", "del", self.netns, check=False)


# ---------------------------------------------------------------- etcd members

class EtcdMember:
    """One etcd process: its namespace on the lan, address, data directory and log."""

    def __init__(self, lan: Lan, index: int) -> None:
        self.index = index
        single = lan.etcd_count == 1
        # One member keeps the original names; a cluster's members are numbered.
        self.netns = f"{lan.prefix}etcd" if single else f"{lan.prefix}etcd{index}"
        self.name = f"{lan.prefix}etcd" if single else f"m{index}"
        self.lan_end = f"{lan.prefix}ve" if single else f"{lan.prefix}ve{index}"
        self.address = f"{lan.net}.0.{2 + index}"
        self.client_url = f"http://{self.address}:{ETCD_CLIENT_PORT}"
        self.peer_url = f"http://{self.address}:{ETCD_PEER_PORT}"
        self.data = Path()  # set when the Lan makes its directory
        self.log = Path()
        self.proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"EtcdMember({self.name!r}, {self.client_url}, running={self.running})"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_bytes()[-size:].decode(errors="replace")
        except OSError:
            return ""


# ---------------------------------------------------------------- the lan

class Lan:
    """The test network, etcd on it, and the simulated hosts. A context manager."""

    def __init__(self, base_dir: str | Path | None = None, net: int | None = None, etcd_members: int = 1) -> None:
        if not 1 <= etcd_members <= MAX_ETCD_MEMBERS:
            raise ValueError(f"etcd_members: 1 to {MAX_ETCD_MEMBERS}")
        self.prefix = f"mh{secrets.token_hex(3)}-"
        r = net if net is not None else random.randint(240, 250)
        self.net = f"10.{r}"  # the lan is 10.R.0.0/24
        self.cidr = f"{self.net}.0.0/24"
        self.lan_ns = f"{self.prefix}lan"
        self.lan_bridge = f"{self.prefix}br"
        self.gateway = f"{self.net}.0.1"  # the lan bridge's own address, in the lan namespace
        self.etcd_count = etcd_members
        self.etcd_members = [EtcdMember(self, i) for i in range(etcd_members)]
        self.etcd_endpoints = [m.client_url for m in self.etcd_members]
        # The first member's, as with one etcd.
        first = self.etcd_members[0]
        self.etcd_ns = first.netns
        self.etcd_address = first.address
        self.etcd_endpoint = first.client_url
        self.etcd_name = first.name
        self._base_dir = base_dir
        self.dir = Path()
        self.etcd_data = Path()
        self.etcd_log = Path()
        self.hosts: list[SimHost] = []
        self._ids: set[tuple[int, int]] = set()

    # -- setup

    def __enter__(self) -> Lan:
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix, dir=self._base_dir))
        os.chmod(self.dir, 0o755)
        (self.dir / "etcd").mkdir()
        for m in self.etcd_members:
            if self.etcd_count == 1:
                m.data, m.log = self.dir / "etcd" / "data", self.dir / "etcd" / "etcd.log"
            else:
                m.data, m.log = self.dir / "etcd" / m.name / "data", self.dir / "etcd" / f"{m.name}.log"
                m.data.parent.mkdir()
        self.etcd_data, self.etcd_log = self.etcd_members[0].data, self.etcd_members[0].log
        try:
            if any(ns.startswith(self.prefix) for ns in netns_list()):
                raise RuntimeError(f"prefix {self.prefix} already in use")
            self._add_ns(self.lan_ns)
            _ip("-n", self.lan_ns, "link", "add", self.lan_bridge, "type", "bridge")
            _ip("-n", self.lan_ns, "addr", "add", f"{self.gateway}/24", "dev", self.lan_bridge)
            _ip("-n", self.lan_ns, "link", "set", self.lan_bridge, "up")
            for m in self.etcd_members:
                self._add_ns(m.netns)
                self._plug(m.netns, m.lan_end, "eth0", m.address)
            self.start_etcd()
        except BaseException:
            self.close()
            raise
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        found = ns_id(ns)
        assert found is not None
        self._ids.add(found)
        _ip("-n", ns, "link", "set", "lo", "up")

    def _plug(self, ns: str, lan_end: str, inner: str, address: str) -> None:
        """A veth pair from the lan bridge into ``ns``, made inside the namespaces (never root)."""
        _ip("-n", self.lan_ns, "link", "add", lan_end, "type", "veth", "peer", "name", inner, "netns", ns)
        _ip("-n", self.lan_ns, "link", "set", lan_end, "master", self.lan_bridge, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", ns, "link", "set", inner, "up")

    def add_host(self, name: str) -> SimHost:
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"host name {name!r}: 1-8 of a-z, 0-9")
        if any(h.name == name for h in self.hosts):
            raise ValueError(f"host {name!r} exists")
        if len(self.hosts) >= MAX_HOSTS:
            raise ValueError("too many hosts")
        host = SimHost(self, name, len(self.hosts))
        self.hosts.append(host)  # before anything is made, so cleanup knows of it
        host.dir.mkdir(parents=True)
        self._add_ns(host.netns)
        self._plug(host.netns, host.lan_peer, LAN_IF, host.address)
        host.run_cmd("sysctl", "-qw", "net.ipv4.ip_forward=1")
        host.ns_ids()
        return host

    # -- etcd

    @property
    def etcd_proc(self) -> subprocess.Popen[bytes] | None:
        """The first member's etcd process (the only one with one member)."""
        return self.etcd_members[0].proc

    def _members(self, member: int | None) -> list[EtcdMember]:
        if member is None:
            return list(self.etcd_members)
        if not 0 <= member < self.etcd_count:
            raise ValueError(f"etcd member {member}: this lan has {self.etcd_count}")
        return [self.etcd_members[member]]

    def etcdctl(self, *args: str, check: bool = True, timeout: float = 30,
                endpoints: Sequence[str] | None = None) -> subprocess.CompletedProcess[str]:
        """etcdctl against the lan's etcd (every member, unless ``endpoints`` says which), run
        inside the first member's namespace."""
        urls = ",".join(self.etcd_endpoints if endpoints is None else endpoints)
        argv = ["etcdctl", "--endpoints", urls, "--dial-timeout=2s", "--command-timeout=3s", *args]
        env = {**os.environ, "ETCDCTL_API": "3"}
        done = subprocess.run(_nsenter(self.etcd_ns, argv), env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def etcd_healthy(self, member: int) -> bool:
        """That member answers a quorum read (``etcdctl endpoint health``): it runs and the
        cluster it is in has a leader."""
        url = self.etcd_members[member].client_url
        return self.etcdctl("endpoint", "health", check=False, endpoints=[url]).returncode == 0

    def start_etcd(self, member: int | None = None, *, timeout_s: float = 30.0, wait: bool = True) -> None:
        """Start etcd (again: same data directory, same address) and wait until it is healthy.
        ``member=None``: every member not running (all of them must have been stopped if there
        is one); a number: that member, which must not be running. With ``wait`` it waits until
        each member started answers a quorum read, so starting one member while too few others
        run times out (``wait=False`` for that)."""
        members = self._members(member)
        if member is None:
            if all(m.running for m in members):
                raise RuntimeError("etcd is already running")
            members = [m for m in members if not m.running]
        elif members[0].running:
            raise RuntimeError(f"etcd member {members[0].name} is already running")
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.etcd_members)
        for m in members:
            argv = ["etcd", "--name", m.name, "--data-dir", str(m.data),
                    "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                    "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                    "--initial-cluster", cluster, "--initial-cluster-state", "new",
                    "--initial-cluster-token", self.prefix]
            with open(m.log, "ab") as log:
                m.proc = subprocess.Popen(_nsenter(m.netns, argv), stdout=log, stderr=log, start_new_session=True)
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        waiting = list(members)
        while waiting:
            for m in list(waiting):
                assert m.proc is not None
                if m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited with {m.proc.returncode}:\n{m.log_tail()}")
                if self.etcd_healthy(m.index):
                    waiting.remove(m)
            if not waiting:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in waiting)
                raise RuntimeError(f"etcd not healthy after {timeout_s}s:\n{tails}")
            time.sleep(0.1)

    def stop_etcd(self, member: int | None = None, kill: bool = False) -> None:
        """Stop etcd (SIGTERM, or SIGKILL with kill=True): every member (None) or that one; its
        data directory stays."""
        for m in self._members(member):
            proc = m.proc
            if proc is None or proc.poll() is not None:
                continue
            if kill:
                proc.kill()
                proc.wait(10)
            else:
                _stop(proc, grace_s=10)

    def etcd_log_tail(self, size: int = 4000, member: int = 0) -> str:
        return self.etcd_members[member].log_tail(size)

    # -- cleanup

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.dump_logs()
        problems = self.close()
        if problems:
            message = "multihost cleanup: " + "; ".join(problems)
            if exc is None:
                raise AssertionError(message)
            print(message, file=sys.stderr)  # the test's own failure is the one to report

    def close(self) -> list[str]:
        """Delete everything; returns what needed force or could not be removed."""
        problems: list[str] = []
        for host in self.hosts:
            try:
                left = host.polite_cleanup()
            except Exception as exc:
                left = [f"cleanup raised {exc!r}"]
            if left:
                problems.append(f"host {host.name} needed force after delete + gc: {left}")
            host.force_cleanup()
        self.stop_etcd(kill=True)
        own = [m.netns for m in self.etcd_members] + [self.lan_ns]
        for ns in own:
            found = ns_id(ns)
            if found:
                self._ids.add(found)
        _kill_all(self._ids)
        for ns in netns_list():  # anything else of ours, the lan and etcd namespaces last
            if ns.startswith(self.prefix) and ns not in own:
                problems.append(f"stray namespace {ns}")
                found = ns_id(ns)
                if found:
                    _kill_all({found})
                _ip("netns", "del", ns, check=False)
        for ns in own:
            _ip("netns", "del", ns, check=False)
        if ETC_NETNS.is_dir():
            for d in os.listdir(ETC_NETNS):
                if d.startswith(self.prefix):
                    problems.append(f"stray /etc/netns/{d}")
                    shutil.rmtree(ETC_NETNS / d, ignore_errors=True)
        if str(self.dir) not in ("", "."):
            for pid in pids_mentioning(str(self.dir)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self.dir, ignore_errors=True)
        left = self._wait_clean()
        if left:
            problems.append(f"still on the machine after cleanup: {left}")
        return problems

    def leftovers(self) -> list[str]:
        """Anything of this Lan on the machine: namespaces, /etc/netns dirs, root links, processes."""
        found = [f"namespace {ns}" for ns in netns_list() if ns.startswith(self.prefix)]
        if ETC_NETNS.is_dir():
            found += [f"/etc/netns/{d}" for d in os.listdir(ETC_NETNS) if d.startswith(self.prefix)]
        links = _ip("-o", "link", "show", check=False).stdout
        found += [f"root link {line.split(': ')[1]}" for line in links.splitlines() if self.prefix in line]
        ids = set(self._ids)
        for host in self.hosts:
            ids |= host.ns_ids()
        pids = set(pids_in(ids)) | set(pids_mentioning(self.prefix))
        found += [f"process {pid}: {_cmdline(pid)[:120]}" for pid in sorted(pids)]
        if str(self.dir) not in ("", ".") and self.dir.exists():
            found.append(f"directory {self.dir}")
        return found

    def _wait_clean(self, timeout_s: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.leftovers()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def dump_logs(self) -> None:
        """The tail of etcd's log, every background command's and every pod's, to stdout (pytest
        shows it with a failure)."""
        for m in self.etcd_members:
            print(f"----- etcd {m.name} ({m.client_url}) -----\n{m.log_tail()}")
        for host in self.hosts:
            logs = [Path(getattr(p, "log_path", "")) for p in host.procs]
            pods = host.state_dir / "pods"
            if pods.is_dir():
                logs += [pods / pod / n for pod in sorted(os.listdir(pods)) for n in ("pod.log", "app.log")]
            for path in logs:
                if path.is_file():
                    tail = path.read_bytes()[-4000:].decode(errors="replace")
                    print(f"----- {host.name}: {path.relative_to(self.dir)} -----\n{tail}")


def lan_fixture(request: pytest.FixtureRequest | None = None, etcd_members: int = 1) -> Iterator[Lan]:
    """Body of a ``lan`` fixture: ``@pytest.fixture def lan(request): yield from lan_fixture(request)``.
    Skips without root; dumps the logs when the test failed; teardown fails on force or leftovers.
    ``etcd_members=3``: etcd is a cluster of three members (``Lan(etcd_members=3)``)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, iptables)")
    failed_before = request.session.testsfailed if request is not None else 0
    with Lan(etcd_members=etcd_members) as lan:
        yield lan
        if request is not None and request.session.testsfailed > failed_before:
            lan.dump_logs()
