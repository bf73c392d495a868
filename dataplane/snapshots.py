"""Where the sidecar's compiled snapshot comes from, and how a new one is swapped in.

The control plane writes a pod's snapshot as two files in the pod directory (write to a
temporary name, then rename) whenever pods, services or applied config change:
``snapshot.json``, the mesh-wide part every pod shares (version, services, workloads), and
``security.json``, this pod's own (its name and Security; no file means the default Security).
The sidecar checks both files' identities (inode, mtime, size) when an inotify watch on the pod
directory fires (every ``poll_s`` where the kernel grants no watch, see dataplane.dirwatch); when
either changed it reads snapshot.json and then security.json, combines them
(meshns.snapshot.combine), builds the indexes once, and replaces ``current`` in a single
assignment. Publish renames every security file before any snapshot.json, so reading in that
order a version never comes with an older security part. Connections and requests already in
flight keep the Service objects they looked up, so a reload never disturbs them; the next lookup
sees the new snapshot.

The supervisor hands the sidecar an open descriptor of the pod directory (``dir_fd``), so the
proxy user reads the files relative to it without needing search permission on the state
directory's parents. A broken file is logged and the previous snapshot kept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from meshns.dataplane import dirwatch
from meshns.snapshot import SECURITY_FILE, SNAPSHOT_FILE, Service, Snapshot, combine, snapshot_from_dict

log = logging.getLogger("meshns.dataplane.snapshots")

__all__ = ["SECURITY_FILE", "SNAPSHOT_FILE", "Loaded", "SnapshotStore", "same_but_version"]

Ident = tuple[int, int, int]
# With an inotify watch, the files are still looked at this often: a safety net that costs one
# wake-up every few seconds, not five a second.
RECHECK_S = 5.0


@dataclass(frozen=True)
class Loaded:
    snapshot: Snapshot
    by_dst: dict[tuple[str, int], Service]


class SnapshotStore:
    def __init__(self, pod: str, dir_fd: int | None = None, path: str = SNAPSHOT_FILE,
                 poll_s: float = 0.2, security_path: str | None = None) -> None:
        self.dir_fd = dir_fd
        self.path = path
        # security.json beside snapshot.json unless told otherwise.
        self.security_path = security_path or os.path.join(os.path.dirname(path), SECURITY_FILE)
        self.pod = pod
        self.poll_s = poll_s
        self._current = Loaded(Snapshot(version=0, pod=pod), {})
        # Set when the pod directory changed (the watch): the next use of ``current`` re-checks
        # the files first. An idle sidecar then does nothing when publish rewrites every pod's
        # snapshot (a create changes the workloads every pod lists): on a host of a hundred pods,
        # a hundred reloads per create otherwise, on the CPU the next create needs.
        self._dirty = False
        self.reloads = 0
        self.reload_errors = 0
        self._seen: tuple[Ident, Ident | None] | None = None
        # The decoded file behind ``current`` (None: set directly, or nothing loaded yet): a
        # rewrite that only moves the version on is swapped in without rebuilding anything.
        self._raw: dict[str, Any] | None = None

    @property
    def current(self) -> Loaded:
        """The snapshot in force, re-checked first if the files changed since the last use."""
        if self._dirty:
            self._dirty = False
            self.check()
        return self._current

    @property
    def noticed(self) -> bool:
        """A change of the files was noticed and not read yet (it will be at the next use)."""
        return self._dirty

    @property
    def version(self) -> int:
        return self.current.snapshot.version

    def lookup(self, ip: str, port: int) -> Service | None:
        return self.current.by_dst.get((ip, port))

    def set(self, snapshot: Snapshot) -> None:
        """Swap in a snapshot directly (tests, and the file loader below)."""
        self._current = Loaded(snapshot, snapshot.by_dst())
        self.reloads += 1
        self._raw = None

    def _ident(self, path: str) -> Ident | None:
        """(inode, mtime, size) of ``path``; None when there is no such file."""
        try:
            st = os.stat(path, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self, path: str) -> tuple[Any, Ident] | None:
        """The decoded file and the identity of what was read; None when there is no such file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "r", encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            return json.loads(f.read()), (st.st_ino, st.st_mtime_ns, st.st_size)

    def check(self) -> bool:
        """Reload if either file changed; True when a new snapshot was swapped in."""
        if self.dir_fd is None and not os.path.isabs(self.path):
            return False
        try:
            mine = self._ident(self.path)
            if mine is None:
                return False
            idents = (mine, self._ident(self.security_path))
        except OSError as exc:
            log.warning("snapshot: cannot stat %s: %s", self.path, exc)
            return False
        if idents == self._seen:
            return False
        try:
            # snapshot.json first: publish renames the security files before it (module doc).
            mesh = self._read(self.path)
            own = self._read(self.security_path)
            if mesh is None:
                return False  # removed between the stat and the open (the pod is going away)
            # What was read, not what was stat'ed: a file replaced in between is read again.
            self._seen = (mesh[1], None if own is None else own[1])
            raw = combine(mesh[0], None if own is None else own[0], self.pod)
            same = self._raw is not None and same_but_version(raw, self._raw)
            # Publish rewrites every pod's snapshot on every change, and some changes (a pod
            # marked ready at the end of its create) leave them as they were but for the
            # version: every sidecar rebuilding its objects and indexes for that is CPU taken
            # from the create, times the number of pods.
            snapshot = (dataclasses.replace(self._current.snapshot, version=raw["version"]) if same
                        else snapshot_from_dict(raw))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._seen = idents  # not read again until one of them changes
            self.reload_errors += 1
            log.error("snapshot: %s or %s is unusable, keeping version %d: %s",
                      self.path, self.security_path, self._current.snapshot.version, exc)
            return False
        if snapshot.version < self._current.snapshot.version:
            log.warning("snapshot: ignoring older version %d (have %d)", snapshot.version,
                        self._current.snapshot.version)
            return False
        if same:
            self._current = Loaded(snapshot, self._current.by_dst)
            self.reloads += 1
        else:
            self.set(snapshot)
        self._raw = raw
        log.info("snapshot: version %d loaded (%d services)", snapshot.version, len(snapshot.services))
        return True

    async def watch(self) -> None:
        """Note every change of the pod directory: told by an inotify watch (dataplane.dirwatch)
        where the kernel grants one, with a slow re-check behind it; every ``poll_s`` where not.
        The files are read at the next use of ``current`` (every connection, request, status
        and metrics read goes through it), not here."""
        watch_fd = dirwatch.open_watch(self.dir_fd) if self.dir_fd is not None else None
        loop = asyncio.get_running_loop()
        if watch_fd is not None:
            loop.add_reader(watch_fd, self._on_dir_event, watch_fd)
        try:
            while True:
                self._dirty = True
                await asyncio.sleep(self.poll_s if watch_fd is None else max(self.poll_s, RECHECK_S))
        finally:
            if watch_fd is not None:
                loop.remove_reader(watch_fd)
                os.close(watch_fd)

    def _on_dir_event(self, watch_fd: int) -> None:
        if dirwatch.drain(watch_fd):
            self._dirty = True


def same_but_version(new: object, old: dict[str, Any]) -> bool:
    """Whether a decoded snapshot file says what ``old`` said, the version aside (pure). The new
    version must be an int: anything odd goes the long way, through the full parser's checks."""
    if not isinstance(new, dict) or new.keys() != old.keys():
        return False
    version = new.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return False
    return all(new[k] == old[k] for k in new if k != "version")
