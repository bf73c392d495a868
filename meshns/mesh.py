"""The handle every command works through: resolved config, open registry, the mesh lock.

The lock (an flock on <state>/lock) serialises the few steps that read the whole pod set and
change shared kernel state from it: making or removing the bridge and its guard rules, and
rewriting every pod's hosts file. Address allocation does not need it; the registry's own
transaction covers that.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from meshns.config import ConfigRequest, MeshConfig, resolve, to_record
from meshns.errors import PermissionError_, RegistryError
from meshns.model import PodRecord
from meshns.sqlite_registry import SqliteRegistry


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise PermissionError_(f"{what} needs root (network namespaces and iptables): try sudo")


class Mesh:
    def __init__(self, cfg: MeshConfig, registry: SqliteRegistry) -> None:
        self.cfg = cfg
        self.registry = registry

    @classmethod
    def open(cls, request: ConfigRequest, *, record: bool) -> Mesh:
        """Open the mesh; with record=True, remember its settings on first use."""
        req = request.with_env()
        probe = resolve(req, {})
        try:
            probe.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise RegistryError(f"cannot create state directory {probe.state_dir}: {exc.strerror}") from exc
        registry = SqliteRegistry(probe.state_dir / "registry.db")
        recorded = registry.get_meta()
        cfg = resolve(req, recorded)
        if record and recorded != to_record(cfg):
            cfg = resolve(req, registry.set_meta_if_absent(to_record(cfg)))
        return cls(cfg, registry)

    @staticmethod
    def peek(request: ConfigRequest) -> tuple[MeshConfig, list[PodRecord]]:
        """Config and pods as recorded, without creating or changing anything (for --dry-run)."""
        req = request.with_env()
        cfg = resolve(req, {})
        path = cfg.state_dir / "registry.db"
        if not path.exists():
            return cfg, []
        registry = SqliteRegistry(path)
        try:
            return resolve(req, registry.get_meta()), registry.list_pods()
        finally:
            registry.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.cfg.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        self.registry.close()
