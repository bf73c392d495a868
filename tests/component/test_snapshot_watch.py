"""The sidecar's snapshot watch on a real directory: a file renamed into the pod directory wakes
the store through inotify (no polling behind it in these tests), and where no watch is granted the
store polls."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from httpkit import uvloop_test

from meshns.dataplane import dirwatch, snapshots
from meshns.dataplane.snapshots import SnapshotStore
from meshns.snapshot import SECURITY_FILE, Security, Snapshot, security_json

NEVER_S = 3600.0  # a poll or re-check that never comes within a test


def _publish(pod_dir: Path, version: int) -> None:
    tmp = pod_dir / f".snapshot.json.{os.getpid()}.tmp"
    tmp.write_text(Snapshot(version, "a").to_json())
    os.replace(tmp, pod_dir / "snapshot.json")  # as publish does: a rename into the directory


async def _until(ready: Callable[[], bool]) -> None:
    async with asyncio.timeout(20):
        while not ready():
            await asyncio.sleep(0.01)


async def _until_version(store: SnapshotStore, version: int) -> None:
    await _until(lambda: store.version == version)


@contextlib.asynccontextmanager
async def _watching(pod_dir: Path, poll_s: float, *, checked: bool = False) -> AsyncIterator[SnapshotStore]:
    """A store on ``pod_dir`` with its watch running (``checked``: the files read once first)."""
    dir_fd = os.open(pod_dir, os.O_RDONLY | os.O_DIRECTORY)
    store = SnapshotStore("a", dir_fd, poll_s=poll_s)
    if checked:
        assert store.check()
    task = asyncio.ensure_future(store.watch())
    try:
        yield store
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        os.close(dir_fd)


@uvloop_test
async def test_a_rename_into_the_pod_directory_wakes_the_store(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snapshots, "RECHECK_S", NEVER_S)
    _publish(tmp_path, 1)
    async with _watching(tmp_path, NEVER_S) as store:
        await _until_version(store, 1)  # the first check, at start
        for version in (2, 3, 4):
            _publish(tmp_path, version)
            await _until_version(store, version)  # only the watch can have noticed
        assert store.reload_errors == 0


@uvloop_test
async def test_a_change_is_read_at_the_next_use_not_when_noticed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle sidecar does not reload when publish rewrites every pod's snapshot: the watch only
    notes the change, and the first use of the store reads it."""
    monkeypatch.setattr(snapshots, "RECHECK_S", NEVER_S)
    _publish(tmp_path, 1)
    async with _watching(tmp_path, NEVER_S, checked=True) as store:
        # The watch's own first mark, read by the use in the condition.
        await _until(lambda: store.current is not None and not store.noticed)
        reloads = store.reloads
        _publish(tmp_path, 2)
        await _until(lambda: store.noticed)
        assert store.reloads == reloads  # noticed, not read
        assert store.lookup("10.9.9.9", 80) is None and store.version == 2
        assert store.reloads == reloads + 1 and not store.noticed


@uvloop_test
async def test_a_security_file_renamed_in_alone_wakes_the_store(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An AuthorizationPolicy change rewrites security.json and moves the version on; a publish
    that changes only a pod's security part is still seen at once."""
    monkeypatch.setattr(snapshots, "RECHECK_S", NEVER_S)
    _publish(tmp_path, 1)
    async with _watching(tmp_path, NEVER_S) as store:
        await _until_version(store, 1)
        identity = "spiffe://cluster.local/ns/default/sa/a"
        tmp = tmp_path / ".security.json.tmp"
        tmp.write_text(security_json("a", Security(identity=identity)))
        os.replace(tmp, tmp_path / SECURITY_FILE)
        await _until(lambda: store.current.snapshot.security.identity == identity)


@uvloop_test
async def test_without_a_watch_the_store_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dirwatch, "open_watch", lambda _dir_fd: None)  # e.g. max_user_instances reached
    async with _watching(tmp_path, 0.02) as store:
        _publish(tmp_path, 7)
        await _until_version(store, 7)


def test_watch_sees_renames_and_writes_and_drain_empties_it(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = dirwatch.open_watch(dir_fd)
        assert fd is not None
        try:
            assert not dirwatch.drain(fd)  # nothing yet
            _publish(tmp_path, 1)
            assert dirwatch.drain(fd)
            assert not dirwatch.drain(fd)
            (tmp_path / "other").write_text("x")  # written in place, closed
            assert dirwatch.drain(fd)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
