"""Where the sidecar's compiled snapshot comes from, and how a new one is swapped in.

The control plane rewrites ``snapshot.json`` in the pod directory (write to a temporary name,
then rename) whenever pods, services or applied config change. The sidecar checks the file's
identity (inode, mtime, size) every ``poll_s``; on a change it parses the file, builds the
indexes once, and replaces ``current`` in a single assignment. Connections and requests already
in flight keep the Service objects they looked up, so a reload never disturbs them; the next
lookup sees the new snapshot.

The supervisor hands the sidecar an open descriptor of the pod directory (``dir_fd``), so the
proxy user reads the file relative to it without needing search permission on the state
directory's parents. A broken file is logged and the previous snapshot kept.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from meshns.snapshot import Service, Snapshot

log = logging.getLogger("meshns.dataplane.snapshots")

SNAPSHOT_FILE = "snapshot.json"


@dataclass(frozen=True)
class Loaded:
    snapshot: Snapshot
    by_dst: dict[tuple[str, int], Service]


class SnapshotStore:
    def __init__(self, pod: str, dir_fd: int | None = None, path: str = SNAPSHOT_FILE,
                 poll_s: float = 0.2) -> None:
        self.dir_fd = dir_fd
        self.path = path
        self.poll_s = poll_s
        self.current = Loaded(Snapshot(version=0, pod=pod), {})
        self.reloads = 0
        self.reload_errors = 0
        self._seen: tuple[int, int, int] | None = None

    @property
    def version(self) -> int:
        return self.current.snapshot.version

    def lookup(self, ip: str, port: int) -> Service | None:
        return self.current.by_dst.get((ip, port))

    def set(self, snapshot: Snapshot) -> None:
        """Swap in a snapshot directly (tests, and the file loader below)."""
        self.current = Loaded(snapshot, snapshot.by_dst())
        self.reloads += 1

    def check(self) -> bool:
        """Reload if the file changed; True when a new snapshot was swapped in."""
        if self.dir_fd is None and not os.path.isabs(self.path):
            return False
        try:
            st = os.stat(self.path, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("snapshot: cannot stat %s: %s", self.path, exc)
            return False
        ident = (st.st_ino, st.st_mtime_ns, st.st_size)
        if ident == self._seen:
            return False
        self._seen = ident
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self.dir_fd)
            with os.fdopen(fd, "r", encoding="utf-8") as f:
                snapshot = Snapshot.from_json(f.read())
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.reload_errors += 1
            log.error("snapshot: %s is unusable, keeping version %d: %s", self.path, self.version, exc)
            return False
        if snapshot.version < self.version:
            log.warning("snapshot: ignoring older version %d (have %d)", snapshot.version, self.version)
            return False
        self.set(snapshot)
        log.info("snapshot: version %d loaded (%d services)", snapshot.version, len(snapshot.services))
        return True

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.poll_s)
