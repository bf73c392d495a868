"""Processes of a pod: finding them by namespace, checking a pid is really ours, stopping them.

A pid read from a file may have been reused by an unrelated process after a crash, so every
pid is checked against its command line before it is signalled. Processes inside a namespace
are found the way ``ip netns pids`` does: by comparing /proc/<pid>/ns/net with the namespace's
inode.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable

from meshns.netns.child import netns_path


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return []


def is_ours(pid: int, *markers: str) -> bool:
    """True when pid is alive and its command line contains every marker word."""
    words = cmdline(pid)
    return alive(pid) and all(m in words for m in markers)


def pids_in_netns(name: str) -> list[int]:
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def find_processes(*markers: str) -> list[int]:
    """Pids whose command line contains every marker word (e.g. orphaned supervisors)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and is_ours(int(e), *markers)]


def terminate(pids: Iterable[int], grace_s: float) -> None:
    """SIGTERM, wait up to grace_s, then SIGKILL whatever is left."""
    pending = [p for p in pids if alive(p)]
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pending and time.monotonic() < deadline:
        time.sleep(0.02)
        pending = [p for p in pending if alive(p)]
    for pid in pending:
        _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while pending and time.monotonic() < deadline:
        time.sleep(0.01)
        pending = [p for p in pending if alive(p)]


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
