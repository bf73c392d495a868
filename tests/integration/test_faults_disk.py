"""Storage faults of the state directory: a full disk, a registry locked by another process, a
registry that is not a database, a read-only file system.

Every one must give a clear one-line error (`meshns: error: ...`) with exit code 5, leave
nothing half-made (no namespace, veth or registry row of the refused pod), leave the registry
intact (PRAGMA integrity_check), and not disturb the pods that were already running.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from conftest import MESHNS, Mesh, _registry_names, wait_for

pytestmark = pytest.mark.root

APPS = Path(__file__).parent / "apps"
STORAGE_EXIT = 5
NO_SPACE = "no space left on the state directory"


def backend(name: str) -> list[str]:
    return [sys.executable, str(APPS / "backend.py"), "--name", name, "--port", "9080"]


def run(m: Mesh, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHNS, *args], env={**m.env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, check=False)


def assert_refused(done: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 5 and exactly one line on stderr, saying why (no traceback)."""
    print(done.stderr, end="")
    assert done.returncode == STORAGE_EXIT, (done.returncode, done.stderr)
    assert done.stderr.startswith("meshns: error: ") and done.stderr.count("\n") == 1, done.stderr
    for w in words:
        assert w in done.stderr, done.stderr


def nothing_of(m: Mesh, pod: str) -> list[str]:
    """What a refused create of pod left on the machine (the registry is checked separately)."""
    ns = m.netns(pod)
    veth = "mv" + hashlib.sha256(ns.encode()).hexdigest()[:10]
    found = []
    if os.path.exists(f"/run/netns/{ns}"):
        found.append(f"namespace {ns}")
    if subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0:
        found.append(f"veth {veth}")
    for path in (Path("/etc/netns") / ns, m.state_dir / "netns" / ns, m.state_dir / "pods" / pod):
        if path.exists():
            found.append(str(path))
    return found


def registry(m: Mesh, *, immutable: bool = False) -> sqlite3.Connection:
    """immutable=1 reads the database file without its WAL index: possible on a full disk,
    where SQLite cannot size the -shm file; valid when no writer has frames pending."""
    path = m.state_dir / "registry.db"
    if immutable:
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    return sqlite3.connect(str(path))


def pod_rows(m: Mesh, *, immutable: bool = False) -> list[str]:
    with registry(m, immutable=immutable) as db:
        return sorted(str(r[0]) for r in db.execute("SELECT name FROM pods"))


def integrity(m: Mesh) -> str:
    with registry(m) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


def whoami(m: Mesh, src: str, host: str) -> str:
    def attempt() -> str:
        done = subprocess.run(["ip", "netns", "exec", m.netns(src), "curl", "-fsS", "--max-time", "5",
                               f"http://{host}:9080/whoami"], capture_output=True, text=True, timeout=30)
        return done.stdout if done.returncode == 0 else ""

    out: str = wait_for(attempt, timeout_s=15, what=f"{src} -> {host}")
    return out


def fill(directory: Path) -> Path:
    """Write until the file system says ENOSPC; the file is removed to free the space again."""
    path = directory / "filler"
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(chunk[:size])
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    st = os.statvfs(directory)
    assert st.f_bavail == 0
    return path


@contextmanager
def tmpfs_state(m: Mesh, size: str) -> Iterator[None]:
    """The mesh's state directory on a small tmpfs of its own. On the way out every pod is
    deleted and gc run while it is still mounted (pods keep log files open in it), then it is
    unmounted."""
    m.state_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(m.state_dir)], check=True)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            (m.state_dir / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,rw", str(m.state_dir)], capture_output=True)
        for pod in _registry_names(m):
            run(m, "delete", pod)
        run(m, "gc")
        if subprocess.run(["umount", str(m.state_dir)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(m.state_dir)], check=True)


VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - fault:
      abort: {httpStatus: 418, percentage: {value: 100}}
    route:
    - destination: {host: api}
"""


def test_full_disk_refuses_cleanly_and_running_pods_keep_working(mesh: Mesh, tmp_path: Path) -> None:
    vs = tmp_path / "vs.yaml"
    vs.write_text(VS)
    with tmpfs_state(mesh, "4M"):
        mesh.run("create", "api", "--service", "api:9080", "--", *backend("api"))
        mesh.run("create", "client")
        assert whoami(mesh, "client", "api") == "api"
        filler = fill(mesh.state_dir)

        # Nothing else has the registry open, so SQLite cannot even size its WAL index: every
        # command is refused when it opens the registry, before it changes anything.
        assert_refused(run(mesh, "create", "web", "--", *backend("web")), NO_SPACE, "registry.db")
        assert nothing_of(mesh, "web") == []
        assert_refused(run(mesh, "apply", "-f", str(vs)), NO_SPACE)
        assert_refused(run(mesh, "delete", "client"), NO_SPACE)
        assert pod_rows(mesh, immutable=True) == ["api", "client"]
        # The pods made before the disk filled keep serving, through both sidecars.
        assert whoami(mesh, "client", "api") == "api"

        filler.unlink()
        assert integrity(mesh) == "ok"
        assert pod_rows(mesh) == ["api", "client"]
        assert run(mesh, "get", "vs", "api").returncode == 2  # the refused apply stored nothing
        mesh.run("create", "web", "--", *backend("web"))
        assert whoami(mesh, "client", "web") == "web"
        mesh.run("apply", "-f", str(vs))
        mesh.run("delete", "web")
        assert nothing_of(mesh, "web") == []


def preallocate_wal(m: Mesh) -> sqlite3.Connection:
    """Hold the registry open (as a concurrent `meshns status` would) with a WAL file already
    grown: after a checkpoint, SQLite reuses it from the start, so small transactions need no
    new space. This is the case where a full disk is met by a file write, not by SQLite."""
    db = sqlite3.connect(str(m.state_dir / "registry.db"), isolation_level=None)
    db.execute("INSERT INTO meta (key, value) VALUES ('test-padding', hex(randomblob(300000)))")
    db.execute("DELETE FROM meta WHERE key = 'test-padding'")
    busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    assert busy == 0
    return db


def snapshots_ok(m: Mesh, pods: list[str]) -> None:
    for pod in pods:
        json.loads((m.state_dir / "pods" / pod / "snapshot.json").read_text())  # whole, parseable
        assert not [f for f in os.listdir(m.state_dir / "pods" / pod) if f.endswith(".tmp")]
        assert json.loads((m.state_dir / "pods" / pod / "security.json").read_text())["pod"] == pod
    assert not [f for f in os.listdir(m.state_dir) if f.startswith(".snapshot.json.")]  # the shared staged file


def test_full_disk_met_by_a_file_write_rolls_back(mesh: Mesh, tmp_path: Path) -> None:
    vs = tmp_path / "vs.yaml"
    vs.write_text(VS)
    with tmpfs_state(mesh, "4M"):
        mesh.run("create", "api", "--service", "api:9080", "--", *backend("api"))
        mesh.run("create", "client")
        mesh.run("create", "extra", "--service", "extrasvc:9080", "--", *backend("extra"))
        holder = preallocate_wal(mesh)
        try:
            filler = fill(mesh.state_dir)

            # create gets its registry row (the WAL has room), then a pod file cannot be
            # written: everything is rolled back, the row included.
            done = run(mesh, "create", "web", "--", *backend("web"))
            assert_refused(done, NO_SPACE, "rolled back")
            assert nothing_of(mesh, "web") == []
            assert pod_rows(mesh) == ["api", "client", "extra"]
            # apply stores the documents, cannot write the snapshots, and puts the registry back.
            done = run(mesh, "apply", "-f", str(vs))
            assert_refused(done, NO_SPACE, "nothing was changed")
            assert run(mesh, "get", "vs", "api").returncode == 2
            snapshots_ok(mesh, ["api", "client", "extra"])
            assert whoami(mesh, "client", "api") == "api"  # the fault was never applied
            # delete is how space is freed: it works (a service endpoint is taken out of its
            # service without the grace period when even that cannot be published), and
            # removes the pod entirely; the other pods forget it.
            mesh.run("delete", "extra")
            assert nothing_of(mesh, "extra") == [] and pod_rows(mesh) == ["api", "client"]
            hosts = (Path("/etc/netns") / mesh.netns("client") / "hosts").read_text()
            assert "\textra\n" not in hosts
            assert whoami(mesh, "client", "api") == "api"
        finally:
            holder.close()
        filler.unlink()
        assert integrity(mesh) == "ok"
        mesh.run("gc")
        mesh.run("create", "web", "--", *backend("web"))
        assert whoami(mesh, "client", "web") == "web"
        mesh.run("apply", "-f", str(vs))
        routes = [r for svc in json.loads((mesh.state_dir / "pods" / "client" / "snapshot.json").read_text())["services"]
                  if svc["name"] == "api" for r in svc["routes"]]
        assert [r["fault"]["abort_status"] for r in routes] == [418]


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()  # hold until the test says so (or closes stdin)
db.execute("ROLLBACK")
"""


@contextmanager
def registry_locked(m: Mesh) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the registry's write lock until the context ends."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(m.state_dir / "registry.db")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def test_locked_registry_waits_then_refuses(mesh: Mesh) -> None:
    mesh.run("create", "api", "--service", "api:9080", "--", *backend("api"))
    # Held for longer than the wait: a clear error, nothing made.
    with registry_locked(mesh):
        done = run(mesh, "create", "web", "--", *backend("web"), env={"MESHNS_REGISTRY_WAIT": "1"})
        assert_refused(done, "locked by another process", "MESHNS_REGISTRY_WAIT")
        assert nothing_of(mesh, "web") == []
        # Reading is not held up by another writer.
        assert [p["name"] for p in mesh.pods()] == ["api"]
    assert pod_rows(mesh) == ["api"]

    # Released within the wait: create waits for it, then goes through.
    with registry_locked(mesh) as holder:
        proc = subprocess.Popen([MESHNS, "create", "web", "--", *backend("web")],
                                env={**mesh.env, "MESHNS_REGISTRY_WAIT": "60"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            # create has opened the registry; give it time to reach the write lock, then it
            # must still be there, waiting, with nothing made.
            wait_for(lambda: has_open(proc.pid, mesh.state_dir / "registry.db") or proc.poll() is not None,
                     timeout_s=30, what="create to open the registry")
            time.sleep(0.5)
            assert proc.poll() is None, proc.communicate()
            assert nothing_of(mesh, "web") == []
            assert holder.stdin is not None
            holder.stdin.write("release\n")
            holder.stdin.flush()
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert whoami(mesh, "web", "api") == "api"


def has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
    return False


def test_bad_wait_setting_is_a_bad_request(mesh: Mesh) -> None:
    done = run(mesh, "list", env={"MESHNS_REGISTRY_WAIT": "soon"})
    assert done.returncode == 2 and "MESHNS_REGISTRY_WAIT" in done.stderr and done.stderr.count("\n") == 1


def test_registry_that_is_not_a_database(mesh: Mesh) -> None:
    mesh.state_dir.mkdir(parents=True)
    garbage = os.urandom(8192)
    (mesh.state_dir / "registry.db").write_bytes(garbage)
    for args in (["create", "web"], ["list"], ["gc"], ["apply", "-f", "/dev/null"]):
        assert_refused(run(mesh, *args), "is not a meshns registry")
    assert nothing_of(mesh, "web") == []
    assert (mesh.state_dir / "registry.db").read_bytes() == garbage  # never overwritten
    (mesh.state_dir / "registry.db").unlink()


def test_read_only_state_directory(mesh: Mesh, tmp_path: Path) -> None:
    # A remount would be refused while the pods keep their logs open for writing; a read-only
    # bind mount of the same directory shows meshns the same registry, read-only.
    mesh.run("create", "api", "--service", "api:9080", "--", *backend("api"))
    mesh.run("create", "client")
    view = tmp_path / "read-only-view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(mesh.state_dir), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        done = run(mesh, "--state-dir", str(view), "create", "web", "--", *backend("web"))
        assert_refused(done, "read-only")
        assert nothing_of(mesh, "web") == []
        assert_refused(run(mesh, "--state-dir", str(view), "delete", "client"), "read-only")
    finally:
        subprocess.run(["umount", str(view)], check=True)
    assert whoami(mesh, "client", "api") == "api"
    assert integrity(mesh) == "ok" and pod_rows(mesh) == ["api", "client"]
