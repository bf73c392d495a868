"""Reading a pod's logs: pod.log (supervisor + sidecar stderr, access log included) and app.log.

The sidecar writes one JSON object per access-log line (logger ``meshns.access``) into the same
stream as its other log lines, so ``--access`` picks those lines out by shape, not by position.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Fields an access-log record carries; two of them make a JSON line an access-log line and not
# some other structured message.
ACCESS_KEYS = frozenset({"reporter", "method", "path", "status", "response_flags", "duration_ms",
                         "upstream_host", "authority"})
FOLLOW_POLL_S = 0.2


def access_record(line: str) -> dict[str, Any] | None:
    """The access-log record in ``line`` (the whole line, or from its first ``{`` when a logging
    prefix precedes it), else None."""
    text = line.strip()
    start = text.find("{")
    if start < 0 or not text.endswith("}"):
        return None
    try:
        data = json.loads(text[start:])
    except ValueError:
        return None
    if isinstance(data, dict) and len(ACCESS_KEYS & data.keys()) >= 2:
        return data
    return None


def read_lines(path: Path, follow: bool, stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """The file's lines; with ``follow``, then the lines appended later (like tail -f) until
    ``stop()`` is true or the file goes away (the pod was deleted). A truncated file is re-read."""
    with open(path, encoding="utf-8", errors="replace") as f:
        pending = ""
        while True:
            chunk = f.read()
            if chunk:
                pending += chunk
                *lines, pending = pending.split("\n")
                yield from (line + "\n" for line in lines)
                continue
            if not follow:
                if pending:
                    yield pending
                return
            if stop():
                return
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return
            if size < f.tell():  # truncated or replaced: start again from the top
                f.seek(0)
                pending = ""
            time.sleep(FOLLOW_POLL_S)
