import multiprocessing
import sqlite3
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from meshns.errors import ConflictError, RegistryError
from meshns.model import PodSpec, PodState
from meshns.netns import ipam
from meshns.sqlite_registry import SqliteRegistry

NET = IPv4Network("10.77.0.0/24")


def alloc(used: set[IPv4Address]) -> IPv4Address:
    return ipam.allocate(NET, used)


def test_reserve_get_list_remove(tmp_path: Path) -> None:
    reg = SqliteRegistry(tmp_path / "r.db")
    spec = PodSpec(app=("python3", "-m", "http.server"), exclude_inbound_ports=(22,))
    rec = reg.reserve_pod("web", "ns-web", "mvaaa", spec, 123, alloc)
    assert rec.ip == IPv4Address("10.77.0.2") and rec.state == PodState.CREATING
    got = reg.get_pod("web")
    assert got is not None and got.spec == spec and got.owner_pid == 123
    reg.set_state("web", PodState.READY, None)
    assert reg.list_pods()[0].state == PodState.READY
    with pytest.raises(ConflictError):
        reg.reserve_pod("web", "ns-web2", "mvbbb", spec, 1, alloc)
    reg.remove_pod("web")
    assert reg.get_pod("web") is None
    # the address is free again
    assert reg.reserve_pod("db", "ns-db", "mvccc", spec, 1, alloc).ip == IPv4Address("10.77.0.2")


def test_meta_first_writer_wins(tmp_path: Path) -> None:
    reg = SqliteRegistry(tmp_path / "r.db")
    assert reg.set_meta_if_absent({"bridge": "b1"}) == {"bridge": "b1"}
    assert reg.set_meta_if_absent({"bridge": "b2"}) == {"bridge": "b1"}


def _reserve_many(path: str, prefix: str, n: int) -> None:
    reg = SqliteRegistry(Path(path))
    for i in range(n):
        reg.reserve_pod(f"{prefix}{i}", f"ns-{prefix}{i}", f"mv{prefix}{i}", PodSpec(), 1, alloc)


def test_two_processes_never_get_the_same_address(tmp_path: Path) -> None:
    path = str(tmp_path / "r.db")
    SqliteRegistry(Path(path)).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_reserve_many, args=(path, p, 40)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    pods = SqliteRegistry(Path(path)).list_pods()
    assert len(pods) == 80
    assert len({p.ip for p in pods}) == 80


def test_locked_registry_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    SqliteRegistry(path).close()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # Whether it fails while opening or while writing, it waits, then says why.
        with pytest.raises(RegistryError, match="locked by another process"):
            SqliteRegistry(path, busy_timeout_s=0.3).reserve_pod("web", "ns", "mv", PodSpec(), 1, alloc)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- storage failures: one mapping for SQLite and file writes (meshns.statefs) ----------------

import errno  # noqa: E402
import fcntl  # noqa: E402
import os  # noqa: E402

from meshns.config import ConfigRequest, resolve  # noqa: E402
from meshns.errors import MeshnsError, NoSpaceError, SystemFailure, UserError  # noqa: E402
from meshns.mesh import Mesh, registry_wait_s  # noqa: E402
from meshns.netns import files  # noqa: E402
from meshns.netns.publish import PodView, stale_pods  # noqa: E402
from meshns.registry import ConfigRow  # noqa: E402
from meshns.statefs import (  # noqa: E402
    LOW_SPACE_BYTES,
    Fault,
    os_fault,
    registry_error,
    sqlite_fault,
    state_error,
    state_writes,
)

PLENTY = 10 * 1024 * 1024


@pytest.mark.parametrize(("code", "text", "free", "want"), [
    (13, "database or disk is full", PLENTY, Fault.NO_SPACE),  # SQLITE_FULL, whatever statvfs says
    (None, "database or disk is full", None, Fault.NO_SPACE),  # no code exposed: the text decides
    (4874, "disk I/O error", 0, Fault.NO_SPACE),  # SQLITE_IOERR_SHMSIZE on a full file system
    (4874, "disk I/O error", LOW_SPACE_BYTES - 1, Fault.NO_SPACE),
    (778, "disk I/O error", PLENTY, Fault.OTHER),  # SQLITE_IOERR_WRITE with room left: a real I/O error
    (10, "disk I/O error", None, Fault.OTHER),  # free space unknown: not guessed
    (5, "database is locked", PLENTY, Fault.LOCKED),  # SQLITE_BUSY
    (517, "database is locked", PLENTY, Fault.LOCKED),  # SQLITE_BUSY_SNAPSHOT
    (6, "database table is locked", PLENTY, Fault.LOCKED),
    (None, "database is locked", None, Fault.LOCKED),
    (8, "attempt to write a readonly database", PLENTY, Fault.READ_ONLY),
    (1032, "attempt to write a readonly database", PLENTY, Fault.READ_ONLY),  # READONLY_DBMOVED
    (14, "unable to open database file", PLENTY, Fault.CANNOT_OPEN),
    (26, "file is not a database", PLENTY, Fault.NOT_A_DATABASE),
    (None, "file is not a database", None, Fault.NOT_A_DATABASE),
    (11, "database disk image is malformed", PLENTY, Fault.DAMAGED),
    (1, "no such table: pods", PLENTY, Fault.OTHER),
])
def test_sqlite_fault(code: int | None, text: str, free: int | None, want: Fault) -> None:
    assert sqlite_fault(code, text, free) is want


@pytest.mark.parametrize(("code", "text", "want"), [
    (14, "unable to open database file", Fault.READ_ONLY),  # no WAL index can be made on a read-only mount
    (8, "attempt to write a readonly database", Fault.READ_ONLY),
    (None, "unable to open database file", Fault.READ_ONLY),
    (13, "database or disk is full", Fault.NO_SPACE),  # unrelated errors keep their meaning
    (5, "database is locked", Fault.LOCKED),
    (26, "file is not a database", Fault.NOT_A_DATABASE),
])
def test_sqlite_fault_on_a_read_only_mount(code: int | None, text: str, want: Fault) -> None:
    assert sqlite_fault(code, text, PLENTY, read_only=True) is want


@pytest.mark.parametrize(("err", "want"), [
    (errno.ENOSPC, Fault.NO_SPACE), (errno.EDQUOT, Fault.NO_SPACE), (errno.EROFS, Fault.READ_ONLY),
    (errno.EACCES, Fault.READ_ONLY), (errno.EPERM, Fault.READ_ONLY), (errno.EIO, Fault.OTHER), (None, Fault.OTHER),
])
def test_os_fault(err: int | None, want: Fault) -> None:
    assert os_fault(err) is want


def _sqlite_error(code: int, text: str) -> sqlite3.Error:
    exc = sqlite3.OperationalError(text)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


def test_full_disk_reads_the_same_from_sqlite_and_from_a_file_write(tmp_path: Path) -> None:
    from_sqlite = registry_error(_sqlite_error(13, "database or disk is full"), tmp_path / "registry.db", 0.0)
    from_write = state_error(OSError(errno.ENOSPC, "No space left on device"), tmp_path, "writing pods/web")
    for exc in (from_sqlite, from_write):
        assert isinstance(exc, NoSpaceError) and exc.exit_code == 5
        text = str(exc)
        assert f"no space left on the state directory {tmp_path} (" in text and "\n" not in text


@pytest.mark.parametrize(("code", "text", "expect"), [
    (5, "database is locked", "is locked by another process (waited 1.5 s; MESHNS_REGISTRY_WAIT"),
    (8, "attempt to write a readonly database", "is read-only"),
    (26, "file is not a database", "is not a meshns registry (file is not a database)"),
    (11, "database disk image is malformed", "is damaged"),
    (14, "unable to open database file", "is the state directory writable?"),
])
def test_registry_error_messages(tmp_path: Path, code: int, text: str, expect: str) -> None:
    exc = registry_error(_sqlite_error(code, text), tmp_path / "registry.db", 1.5)
    assert type(exc) is RegistryError and exc.exit_code == 5
    assert expect in str(exc) and str(tmp_path / "registry.db") in str(exc)


def test_state_writes_maps_os_errors_and_errors_caused_by_them(tmp_path: Path) -> None:
    with pytest.raises(NoSpaceError, match="no space left on the state directory"), state_writes(tmp_path, "writing x"):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(RegistryError, match=r"cannot write the state directory .* \(writing x: Read-only file system\)"), \
            state_writes(tmp_path, "writing x"):
        raise OSError(errno.EROFS, "Read-only file system")
    # A library that wrapped the ENOSPC in its own error (the CA store does) reads the same.
    with pytest.raises(NoSpaceError), state_writes(tmp_path, "writing the CA"):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise SystemFailure("ca/ca.json: No space left on device") from exc
    # Anything else passes unchanged.
    with pytest.raises(SystemFailure, match="other"), state_writes(tmp_path, "x"):
        raise SystemFailure("other")
    with pytest.raises(ConflictError), state_writes(tmp_path, "x"):
        raise ConflictError("exists")


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(RegistryError, match="is not a meshns registry") as info:
        SqliteRegistry(path)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert path.stat().st_size == 4096  # left as it was


def test_reads_work_while_another_process_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    reg = SqliteRegistry(path)
    reg.reserve_pod("web", "ns-web", "mvaaa", PodSpec(), 1, alloc)
    reg.close()
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # Opening an existing registry writes nothing, so list/status are not held up...
        reader = SqliteRegistry(path, busy_timeout_s=0.2)
        assert [p.name for p in reader.list_pods()] == ["web"]
        # ...but a write waits, then fails clearly, and changed nothing.
        with pytest.raises(RegistryError, match="locked by another process"):
            reader.set_state("web", PodState.DELETING, 2)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    pod = reader.get_pod("web")
    assert pod is not None and pod.state == PodState.CREATING
    reader.set_state("web", PodState.READY, None)  # the lock is free: the write goes through


@pytest.mark.parametrize(("value", "want"), [
    (None, 10.0), ("", 10.0), ("2.5", 2.5), ("0", 0.0), (" 7 ", 7.0),
    ("abc", None), ("-1", None), ("inf", None), ("nan", None),
])
def test_registry_wait_from_environment(value: str | None, want: float | None) -> None:
    env = {} if value is None else {"MESHNS_REGISTRY_WAIT": value}
    if want is None:
        with pytest.raises(UserError, match="MESHNS_REGISTRY_WAIT"):
            registry_wait_s(env)
    else:
        assert registry_wait_s(env) == want


def test_mesh_lock_held_elsewhere_is_a_clear_error_after_the_wait(tmp_path: Path) -> None:
    cfg = resolve(ConfigRequest(state_dir=str(tmp_path)), {})
    mesh = Mesh(cfg, SqliteRegistry(cfg.registry_path, busy_timeout_s=0.2))
    fd = os.open(cfg.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(RegistryError, match=r"mesh lock .* is held by another process"), mesh.locked():
            pass
    finally:
        os.close(fd)
    with mesh.locked():  # free again
        pass


def test_remove_and_restore_configs_in_one_transaction(tmp_path: Path) -> None:
    reg = SqliteRegistry(tmp_path / "r.db")
    reg.put_configs([ConfigRow("VirtualService", "default", "a", '{"v": 1}'),
                     ConfigRow("DestinationRule", "default", "b", '{"v": 1}')])
    keys = [("VirtualService", "default", "a"), ("DestinationRule", "default", "b"), ("VirtualService", "default", "zz")]
    before = reg.get_configs(keys)
    assert [r.name for r in before] == ["a", "b"]
    gen = reg.generation()
    assert reg.remove_configs(keys) == [True, True, False]
    assert reg.list_configs() == [] and reg.generation() == gen + 1
    assert reg.remove_configs(keys[2:]) == [False] and reg.generation() == gen + 1  # nothing gone: no bump
    # Undo: the documents come back with their original applied_at (their order between rivals).
    reg.put_configs([ConfigRow("VirtualService", "default", "new", "{}")])
    reg.restore_configs(before, [("VirtualService", "default", "new")])
    assert sorted(reg.list_configs(), key=str) == sorted(before, key=str)


def test_stale_pods() -> None:
    hosts = "h\n"
    views = [
        PodView("fresh", True, 7, hosts),
        PodView("old-snapshot", True, 6, hosts),
        PodView("old-hosts", True, 7, "h\nold\n"),
        PodView("ready-without-files", True, None, None),
        PodView("creating-without-files", False, None, None),  # a create at work: not yet
        PodView("creating-old", False, 5, hosts),
    ]
    assert stale_pods(views, 7, hosts) == ["old-snapshot", "old-hosts", "ready-without-files", "creating-old"]


def test_hosts_rewritten_in_place_keep_the_inode(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    files.write_in_place(path, "long text that is longer\n")
    inode = path.stat().st_ino
    files.write_in_place(path, "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode


def test_every_storage_error_is_a_meshns_error() -> None:
    assert issubclass(NoSpaceError, RegistryError) and issubclass(RegistryError, MeshnsError)
    assert NoSpaceError.exit_code == RegistryError.exit_code == 5
