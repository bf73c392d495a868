"""The handle every command works through: resolved config, open registry, the mesh lock.

The lock (an flock on <state>/lock) serialises the few steps that read the whole pod set and
change shared kernel state from it: making or removing the bridge and its guard rules, and
rewriting every pod's hosts file. Address allocation does not need it; the registry's own
transaction covers that.

Both locks are waited for at most MESHNS_REGISTRY_WAIT seconds (default 10), then the command
fails with exit code 5 and says which lock was held: a stuck meshns elsewhere never makes
another one hang. Tests set the variable low so a lock test does not sit for 10 s.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from meshns.config import ConfigRequest, MeshConfig, resolve, to_record
from meshns.errors import PermissionError_, RegistryError, UserError
from meshns.model import PodRecord
from meshns.sqlite_registry import SqliteRegistry
from meshns.statefs import state_error

REGISTRY_WAIT_ENV = "MESHNS_REGISTRY_WAIT"
DEFAULT_REGISTRY_WAIT_S = 10.0
LOCK_POLL_S = 0.02


def registry_wait_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds to wait for the registry's write lock and the mesh lock (pure given environ)."""
    env = os.environ if environ is None else environ
    text = env.get(REGISTRY_WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_REGISTRY_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{REGISTRY_WAIT_ENV}={text!r}: expected a number of seconds >= 0")
    return value


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
        wait_s = registry_wait_s()
        try:
            probe.state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as exc:
            raise state_error(exc, probe.state_dir, "creating it") from exc
        registry = SqliteRegistry(probe.state_dir / "registry.db", busy_timeout_s=wait_s)
        try:
            recorded = registry.get_meta()
            cfg = resolve(req, recorded)
            if record and recorded != to_record(cfg):
                cfg = resolve(req, registry.set_meta_if_absent(to_record(cfg)))
        except BaseException:
            registry.close()
            raise
        return cls(cfg, registry)

    @staticmethod
    def peek(request: ConfigRequest) -> tuple[MeshConfig, list[PodRecord]]:
        """Config and pods as recorded, without creating or changing anything (for --dry-run)."""
        req = request.with_env()
        cfg = resolve(req, {})
        path = cfg.state_dir / "registry.db"
        if not path.exists():
            return cfg, []
        registry = SqliteRegistry(path, busy_timeout_s=registry_wait_s())
        try:
            return resolve(req, registry.get_meta()), registry.list_pods()
        finally:
            registry.close()

    @contextmanager
    def locked(self) -> Iterator[None]:
        path = self.cfg.lock_path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise state_error(exc, self.cfg.state_dir, f"opening the mesh lock {path.name}") from exc
        try:
            wait_s = self.registry.busy_timeout_s
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise state_error(exc, self.cfg.state_dir, f"locking {path.name}") from exc
                if time.monotonic() >= deadline:
                    raise RegistryError(f"the mesh lock {path} is held by another process (waited {wait_s:.1f} s; "
                                        f"{REGISTRY_WAIT_ENV} sets how long)")
                time.sleep(LOCK_POLL_S)
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        self.registry.close()
