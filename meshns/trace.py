"""A start-up timeline for performance work, off unless MESHNS_TRACE names a file.

``mark(step)`` appends ``<unix time> <pid> <step>`` to that file; the CLI, the supervisor and the
sidecar all mark their steps, so one create's timeline across the three processes can be read
back sorted by time. Lines are written with one O_APPEND write each, so processes never interleave
within a line. MESHNS_TRACE is read once, at import: when off, a mark costs one test; never raises.
"""

from __future__ import annotations

import os
import time

_PATH = os.environ.get("MESHNS_TRACE")


def mark(step: str) -> None:
    if not _PATH:
        return
    try:
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(fd).st_uid == os.getuid():
                os.fchmod(fd, 0o666)  # the sidecar appends as the proxy user once it dropped root
            os.write(fd, f"{time.time():.4f} {os.getpid()} {step}\n".encode())
        finally:
            os.close(fd)
    except OSError:
        pass
