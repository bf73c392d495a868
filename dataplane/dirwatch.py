"""Wake when a file is renamed or written into a directory (inotify), so an idle sidecar need not
poll its snapshot.

Each wake-up of an idle Python event loop costs about 0.1 ms of CPU on the 2-core VM; polling the
snapshot 5 times a second, times a hundred pods, is a share of a core taken from whatever the host
does next (a `meshns create`). With a watch the sidecar wakes only when publish renames a file into
its pod directory, and reloads at once rather than up to a poll interval later.

The watch is on ``/proc/self/fd/<dir_fd>``: the sidecar holds an open descriptor of its pod
directory and, as the proxy user, may not be able to reach the directory by its path. inotify
instances are limited per user (fs.inotify.max_user_instances, 128 by default, shared by every
sidecar on the host since they all run as the proxy user): when none is left, ``open_watch`` says
so and the caller keeps polling.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from typing import Final

log = logging.getLogger("meshns.dataplane.dirwatch")

IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_TO: Final = 0x00000080
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC
MASK: Final = IN_CLOSE_WRITE | IN_MOVED_TO  # publish renames; an operator's editor may write in place

_libc = ctypes.CDLL(None, use_errno=True)


def open_watch(dir_fd: int) -> int | None:
    """A non-blocking inotify descriptor watching the directory open as ``dir_fd``; None (and a
    warning saying why) if the kernel refuses one."""
    fd = int(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
    if fd < 0:
        _refused("inotify_init1", ctypes.get_errno())
        return None
    wd = int(_libc.inotify_add_watch(fd, f"/proc/self/fd/{dir_fd}".encode(), MASK))
    if wd < 0:
        err = ctypes.get_errno()
        os.close(fd)
        _refused("inotify_add_watch", err)
        return None
    return fd


def drain(fd: int) -> bool:
    """Read every pending event (their content does not matter: the caller re-checks its files);
    True if there was any."""
    got = False
    while True:
        try:
            if not os.read(fd, 4096):
                return got
        except BlockingIOError:
            return got
        got = True


def _refused(call: str, err: int) -> None:
    hint = (" (fs.inotify.max_user_instances or max_user_watches reached)"
            if err in (errno.EMFILE, errno.ENOSPC) else "")
    log.warning("snapshot: %s failed: %s%s; polling the snapshot instead", call, os.strerror(err), hint)
