"""meshns killed (SIGKILL) right after every step of create, delete, apply -f and delete -f.

MESHNS_CRASH_AT=<step> (netns/crashpoints.py) makes the command kill itself after that step,
deterministically. The tests are parametrized over the step lists there, so a new step gets a
test by being declared. After each kill, one `meshns gc` must leave:

- the host clean of the killed pod (no namespace, veth, /etc/netns entry, owner mark, pod
  directory, process or registry row), or, when the kill came after the point of no return
  (the row marked ready), a ready pod that actually serves;
- the registry consistent with the machine: `meshns list -o json` names exactly the namespaces,
  bridge ports, /etc/netns entries and pod directories that exist, and every pod's hosts file
  and snapshot say exactly what the registry says (same generation, same pods);
- the pod running alongside ("steady") untouched: same supervisor, sidecar and app, still
  serving; and a new create of the same name works and serves, in both directions.

Most cases share one mesh with the steady pod (a pod create costs about a second, and a fresh
mesh per case would double the file's time); each case uses its own pod name, so one case's
failure cannot hide in the next. The steps that need the mesh to be empty (the bridge made by
the first pod, removed with the last) run in a fresh mesh of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import MESHNS, Mesh, _force_clean, _new_mesh, _pids_with, _registry_names, wait_for

from meshns.netns.crashpoints import (
    CONFIG_STEPS,
    CREATE_COMMITTED,
    CREATE_STEPS,
    DELETE_STEPS,
    ENV,
    LAST_POD_ONLY,
)

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
SERVICE = "victim"  # every killed pod serves this service; it outlives them, as services do
KILLED = -9


def backend(name: str) -> list[str]:
    return [sys.executable, str(APPS / "backend.py"), "--name", name, "--port", "9080"]


def create_args(pod: str, service: str = SERVICE) -> list[str]:
    return ["create", pod, "--service", f"{service}:9080", "--drain-timeout", "1", "--", *backend(pod)]


def run(m: Mesh, *args: str, crash_at: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = m.env
    if crash_at is not None:
        env[ENV] = crash_at
    return subprocess.run([MESHNS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def pod_name(step: str) -> str:
    return step.replace(":", "-")


def curl(m: Mesh, src: str, url: str) -> str:
    """GET from inside pod src, through its sidecar (ip netns exec: no CLI start-up per call).
    Retried here rather than with curl's --retry, whose back-off starts at a second: a sidecar
    loads a new snapshot within 0.2 s of a publish, and until then a new endpoint answers 503."""
    last: list[str] = []

    def attempt() -> str:
        done = subprocess.run(["ip", "netns", "exec", m.netns(src), "curl", "-fsS", "--max-time", "5", url],
                              capture_output=True, text=True, timeout=30, check=False)
        last[:] = [done.stderr]
        return done.stdout if done.returncode == 0 else ""

    try:
        out: str = wait_for(attempt, timeout_s=15, what=f"{src} -> {url}")
    except AssertionError:
        raise AssertionError(f"{src} -> {url}: {last}") from None
    return out


def veth_of(m: Mesh, pod: str) -> str:
    return "mv" + hashlib.sha256(m.netns(pod).encode()).hexdigest()[:10]


def links(m: Mesh) -> tuple[set[str], set[str]]:
    """(all link names, names of ports on the mesh's bridge)."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names, ports = set(), set()
    for line in out.splitlines():
        name = line.split(": ")[1].split("@")[0]
        names.add(name)
        if f" master {m.bridge} " in line:
            ports.add(name)
    return names, ports


def db_rows(m: Mesh, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(str(m.state_dir / "registry.db")) as conn:
        return list(conn.execute(sql).fetchall())


def traces(m: Mesh, pod: str) -> list[str]:
    """Everything of pod still on the machine or in other pods' views."""
    ns = m.netns(pod)
    found = []
    if os.path.exists(f"/run/netns/{ns}"):
        found.append(f"namespace {ns}")
    if veth_of(m, pod) in links(m)[0]:
        found.append(f"veth {veth_of(m, pod)}")
    for path in (Path("/etc/netns") / ns, m.state_dir / "netns" / ns, m.state_dir / "pods" / pod):
        if path.exists():
            found.append(str(path))
    if db_rows(m, f"SELECT state FROM pods WHERE name = '{pod}'"):
        found.append("registry row")
    for pid in _pids_with(str(m.state_dir)):
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        if pod in words:
            found.append(f"process {pid}: {' '.join(words)[:100]}")
    for other in _registry_names(m):
        if other == pod:
            continue
        hosts = (Path("/etc/netns") / m.netns(other) / "hosts").read_text()
        if f"\t{pod}\n" in hosts:
            found.append(f"{other}'s hosts file")
        snap = json.loads((m.state_dir / "pods" / other / "snapshot.json").read_text())
        if pod in json.dumps(snap):
            found.append(f"{other}'s snapshot")
    return found


def assert_consistent(m: Mesh) -> dict[str, str]:
    """The registry, as `meshns list` shows it, matches the machine and every pod's view of it.
    Returns pod name -> IP."""
    pods = {p["name"]: p for p in m.pods()}
    assert all(p["state"] == "ready" for p in pods.values()), pods
    prefix = m.prefix
    have_ns = {ns[len(prefix):] for ns in os.listdir("/run/netns") if ns.startswith(prefix)}
    assert have_ns == set(pods), "namespaces"
    assert links(m)[1] == {veth_of(m, p) for p in pods}, "bridge ports"
    etc = Path("/etc/netns")
    assert {d[len(prefix):] for d in os.listdir(etc) if d.startswith(prefix)} == set(pods), "/etc/netns"
    assert set(os.listdir(m.state_dir / "netns")) == {m.netns(p) for p in pods}, "owner marks"
    assert set(os.listdir(m.state_dir / "pods")) == set(pods), "pod directories"
    services = {str(n): str(v) for n, v in db_rows(m, "SELECT name, vip FROM services")}
    want_hosts = {**{n: p["ip"] for n, p in pods.items()}, **services}
    generation = int(db_rows(m, "SELECT value FROM meta WHERE key = 'generation'")[0][0])
    for name in pods:
        lines = (etc / m.netns(name) / "hosts").read_text().splitlines()
        entries = {ln.split("\t")[1]: ln.split("\t")[0] for ln in lines if ln and not ln.startswith("#")}
        entries.pop("localhost")
        assert entries == want_hosts, f"{name}'s hosts file"
        pod_dir = m.state_dir / "pods" / name
        snap = json.loads((pod_dir / "snapshot.json").read_text())
        assert snap["version"] == generation, f"{name}'s snapshot is behind the registry"
        assert {w["pod"] for w in snap["workloads"]} == set(pods), f"{name}'s snapshot workloads"
        for svc in snap["services"]:
            assert {e["pod"] for e in svc["endpoints"]} <= set(pods), f"{name}'s snapshot endpoints"
        assert not [f for f in os.listdir(pod_dir) if f.endswith(".tmp")], "staged snapshot left behind"
        assert json.loads((pod_dir / "security.json").read_text())["pod"] == name, f"{name}'s security.json"
    # publish's shared staged file, hard-linked into the pod directories and then unlinked
    assert not [f for f in os.listdir(m.state_dir) if f.startswith(".snapshot.json.")], "shared staged snapshot left behind"
    return {n: p["ip"] for n, p in pods.items()}


def supervised(m: Mesh, pod: str) -> tuple[Any, ...]:
    state = json.loads((m.state_dir / "pods" / pod / "state.json").read_text())
    return state["phase"], state["supervisor_pid"], state["sidecar_pid"], state["app_pid"], state["sidecar_restarts"]


@dataclass
class Shared:
    mesh: Mesh
    steady: tuple[Any, ...]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    m = _new_mesh(tmp_path_factory.mktemp("crash"))
    try:
        m.run(*create_args("steady", "stable"))
        yield Shared(m, supervised(m, "steady"))
    finally:
        problems: list[str] = []
        if m.state_dir.exists():
            for pod in _registry_names(m):
                m.run("delete", pod, check=False)
            m.run("gc", check=False)
            problems = m.leftovers()
        _force_clean(m)
        assert not problems, f"teardown found leftovers after delete + gc: {problems}"


def check_steady(s: Shared, victim: str) -> None:
    """The pod that ran through the crash kept its processes and serves; victim serves too."""
    m = s.mesh
    assert supervised(m, "steady") == s.steady
    assert curl(m, victim, "http://stable:9080/whoami") == "steady"
    assert curl(m, "steady", f"http://{SERVICE}:9080/whoami") == victim


def row_state(m: Mesh, pod: str) -> str | None:
    rows = db_rows(m, f"SELECT state FROM pods WHERE name = '{pod}'")
    return str(rows[0][0]) if rows else None


@pytest.mark.parametrize("step", CREATE_STEPS)
def test_create_killed(shared: Shared, step: str) -> None:
    m, pod = shared.mesh, pod_name(step)
    committed = CREATE_STEPS.index(step) >= CREATE_STEPS.index(CREATE_COMMITTED)
    done = run(m, *create_args(pod), crash_at=step)
    assert done.returncode == KILLED, done.stderr
    assert row_state(m, pod) == ("ready" if committed else "creating")  # killed where it should be
    m.run("gc")
    pods = assert_consistent(m)
    if committed:
        # Past the point of no return: the pod is kept, gc has published it everywhere, it
        # serves, and a delete removes it entirely.
        assert set(pods) == {"steady", pod}
    else:
        assert set(pods) == {"steady"}
        assert traces(m, pod) == []
        m.run(*create_args(pod))
    check_steady(shared, pod)
    m.run("delete", pod)
    assert traces(m, pod) == []


@pytest.mark.parametrize("step", [s for s in DELETE_STEPS if s not in LAST_POD_ONLY])
def test_delete_killed(shared: Shared, step: str) -> None:
    m, pod = shared.mesh, pod_name(step)
    m.run(*create_args(pod))
    done = run(m, "delete", pod, crash_at=step)
    assert done.returncode == KILLED, done.stderr
    row_gone = DELETE_STEPS.index(step) >= DELETE_STEPS.index("delete:row-removed")
    assert row_state(m, pod) == (None if row_gone else "deleting")  # killed where it should be
    m.run("gc")
    assert set(assert_consistent(m)) == {"steady"}
    assert traces(m, pod) == []
    m.run(*create_args(pod))
    check_steady(shared, pod)
    m.run("delete", pod)
    assert traces(m, pod) == []


@pytest.mark.parametrize("step", ["create:bridge-ready", "create:guard-installed", *LAST_POD_ONLY])
def test_killed_with_no_other_pod(mesh: Mesh, step: str) -> None:
    """The bridge and its guard rules are made by the first pod and removed with the last."""
    pod = pod_name(step)
    if step.startswith("delete:"):
        mesh.run(*create_args(pod))
        done = run(mesh, "delete", pod, crash_at=step)
    else:
        done = run(mesh, *create_args(pod), crash_at=step)
    assert done.returncode == KILLED, done.stderr
    out = mesh.run("gc").stdout
    assert mesh.leftovers() == [], out
    # gc finished in one pass: a second one finds nothing.
    assert mesh.run("gc").stdout.strip() == "nothing to clean"
    mesh.run(*create_args(pod))
    assert curl(mesh, pod, f"http://{SERVICE}:9080/whoami") == pod


URL = "http://stable:9080/whoami"
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stable}
spec:
  hosts: [stable]
  http:
  - fault:
      abort: {httpStatus: 418, percentage: {value: 100}}
    route:
    - destination: {host: stable}
"""


def status_code(m: Mesh, src: str, url: str) -> str:
    return curl_raw(m, src, "-o", "/dev/null", "-w", "%{http_code}", url)


def curl_raw(m: Mesh, src: str, *args: str) -> str:
    done = subprocess.run(["ip", "netns", "exec", m.netns(src), "curl", "-sS", "--max-time", "5", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    return done.stdout


def snapshot_version(m: Mesh, pod: str) -> int:
    return int(json.loads((m.state_dir / "pods" / pod / "snapshot.json").read_text())["version"])


def registry_generation(m: Mesh) -> int:
    return int(db_rows(m, "SELECT value FROM meta WHERE key = 'generation'")[0][0])


@pytest.mark.parametrize("step", CONFIG_STEPS)
def test_config_change_killed_before_the_pods_were_told(shared: Shared, step: str, tmp_path: Path) -> None:
    """The registry has the change, the pods not yet: gc gives it to them."""
    m, client = shared.mesh, pod_name(step)
    f = tmp_path / "vs.yaml"
    f.write_text(VS)
    m.run(*create_args(client))
    try:
        if step.startswith("delete-f:"):
            m.run("apply", "-f", str(f))
            wait_for(lambda: status_code(m, client, URL) == "418", what="the fault applied")
            done = run(m, "delete", "-f", str(f), crash_at=step)
            assert run(m, "get", "vs", "stable").returncode == 2  # gone from the registry
            want = "200"
        else:
            done = run(m, "apply", "-f", str(f), crash_at=step)
            assert "kind: VirtualService" in m.run("get", "vs", "stable").stdout  # stored
            want = "418"
        assert done.returncode == KILLED, done.stderr
        # The crash came before publish: no pod has the change yet.
        assert snapshot_version(m, client) < registry_generation(m)
        out = m.run("gc").stdout
        assert "republished" in out, out
        assert m.run("gc").stdout.strip() == "nothing to clean"
        assert_consistent(m)
        wait_for(lambda: status_code(m, client, URL) == want, what=f"answer {want} once gc republished")
        assert supervised(m, "steady") == shared.steady
    finally:
        m.run("delete", "-f", str(f), check=False)
        m.run("delete", client)
