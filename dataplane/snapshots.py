"""Where the sidecar's compiled snapshot comes from, and how a new one is swapped in.

The control plane rewrites ``snapshot.json`` in the pod directory (write to a temporary name,
then rename) whenever pods, services or applied config change. The sidecar checks the file's
identity (inode, mtime, size) when an inotify watch on the pod directory fires (every
``poll_s`` where the kernel grants no watch, see dataplane.dirwatch); on a change it parses the
file, builds the indexes once, and replaces ``current`` in a single assignment. Connections and
requests already in flight keep the Service objects they looked up, so a reload never disturbs
them; the next lookup sees the new snapshot.

The supervisor hands the sidecar an open descriptor of the pod directory (``dir_fd``), so the
proxy user reads the file relative to it without needing search permission on the state
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
from meshns.snapshot import Service, Snapshot, snapshot_from_dict

log = logging.getLogger("meshns.dataplane.snapshots")

SNAPSHOT_FILE = "snapshot.json"
# With an inotify watch, the file is still looked at this often: a safety net that costs one
# wake-up every few seconds, not five a second.
RECHECK_S = 5.0


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
        # The decoded file behind ``current`` (None: set directly, or nothing loaded yet): a
        # rewrite that only moves the version on is swapped in without rebuilding anything.
        self._raw: dict[str, Any] | None = None

    @property
    def version(self) -> int:
        return self.current.snapshot.version

    def lookup(self, ip: str, port: int) -> Service | None:
        return self.current.by_dst.get((ip, port))

    def set(self, snapshot: Snapshot) -> None:
        """Swap in a snapshot directly (tests, and the file loader below)."""
        self.current = Loaded(snapshot, snapshot.by_dst())
        self.reloads += 1
        self._raw = None

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
                raw = json.loads(f.read())
            same = self._raw is not None and same_but_version(raw, self._raw)
            # Publish rewrites every pod's snapshot on every change, and some changes (a pod
            # marked ready at the end of its create) leave them as they were but for the
            # version: every sidecar rebuilding its objects and indexes for that is CPU taken
            # from the create, times the number of pods.
            snapshot = (dataclasses.replace(self.current.snapshot, version=raw["version"]) if same
                        else snapshot_from_dict(raw))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.reload_errors += 1
            log.error("snapshot: %s is unusable, keeping version %d: %s", self.path, self.version, exc)
            return False
        if snapshot.version < self.version:
            log.warning("snapshot: ignoring older version %d (have %d)", snapshot.version, self.version)
            return False
        if same:
            self.current = Loaded(snapshot, self.current.by_dst)
            self.reloads += 1
        else:
            self.set(snapshot)
        self._raw = raw
        log.info("snapshot: version %d loaded (%d services)", snapshot.version, len(snapshot.services))
        return True

    async def watch(self) -> None:
        """Reload whenever the snapshot changes: woken by an inotify watch on the pod directory
        (dataplane.dirwatch) where the kernel grants one, with a slow re-check behind it; polled
        every ``poll_s`` where not."""
        watch_fd = dirwatch.open_watch(self.dir_fd) if self.dir_fd is not None else None
        loop = asyncio.get_running_loop()
        if watch_fd is not None:
            loop.add_reader(watch_fd, self._on_dir_event, watch_fd)
        try:
            while True:
                self.check()
                await asyncio.sleep(self.poll_s if watch_fd is None else max(self.poll_s, RECHECK_S))
        finally:
            if watch_fd is not None:
                loop.remove_reader(watch_fd)
                os.close(watch_fd)

    def _on_dir_event(self, watch_fd: int) -> None:
        if dirwatch.drain(watch_fd):
            self.check()


def same_but_version(new: object, old: dict[str, Any]) -> bool:
    """Whether a decoded snapshot file says what ``old`` said, the version aside (pure). The new
    version must be an int: anything odd goes the long way, through the full parser's checks."""
    if not isinstance(new, dict) or new.keys() != old.keys():
        return False
    version = new.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        return False
    return all(new[k] == old[k] for k in new if k != "version")
