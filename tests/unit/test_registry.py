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
