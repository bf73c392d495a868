"""Access log lines: one JSON object per HTTP request and per TCP connection, on stderr.

Lines go through the logger ``meshns.access`` whose handler formats just the message, so each
stderr line is exactly one JSON document (the supervisor puts stderr in the pod log; ``meshns logs
POD`` reads it back). Its level can be changed live through the admin endpoint like any other
logger's (``POST /logging?logger=meshns.access&level=warning`` silences it).

Field names follow Envoy's default access log where one exists. Paths are fine here (they are
never metric labels). Lines are batched (``BatchingHandler``): written when 32 KiB are pending and
at most ``FLUSH_S`` after the first line of a batch (the handler's ``on_batch`` hook: the server
arms a timer then), because a write and flush per line cost a large share of the request rate on
the hot path. An idle sidecar has no timer to wake for.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Final

ACCESS_LOGGER: Final = "meshns.access"
FLUSH_S: Final = 0.5
BATCH_BYTES: Final = 32 * 1024
log = logging.getLogger(ACCESS_LOGGER)


_stamp_second = -1
_stamp_prefix = ""


def _now_iso() -> str:
    """ISO 8601 UTC with milliseconds; the strftime part is cached per second (hot path)."""
    global _stamp_second, _stamp_prefix
    t = time.time()
    sec = int(t)
    if sec != _stamp_second:
        _stamp_second, _stamp_prefix = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_stamp_prefix}.{int((t - sec) * 1000):03d}Z"


# Values a client controls (path, authority, ids) go through the C JSON string encoder; the
# rest are our own names and numbers. Building the line by hand avoids a dict and json.dumps per
# request, which measured as most of the access log's cost.
_q = json.encoder.encode_basestring_ascii


def http_line(*, reporter: str, source_workload: str, source_address: str,
              destination_workload: str, destination_service: str, destination_address: str,
              method: str, path: str, authority: str, protocol: str, status: int, response_flags: str,
              attempts: int, duration_ms: float, request_bytes: int, response_bytes: int,
              request_id: str, upstream_host: str) -> str:
    return (
        f'{{"time":"{_now_iso()}","kind":"http","reporter":"{reporter}",'
        f'"source_workload":{_q(source_workload)},"source_address":{_q(source_address)},'
        f'"destination_workload":{_q(destination_workload)},"destination_service":{_q(destination_service)},'
        f'"destination_address":{_q(destination_address)},"method":{_q(method)},"path":{_q(path)},'
        f'"authority":{_q(authority)},"protocol":{_q(protocol)},"status":{int(status)},'
        f'"response_flags":{_q(response_flags)},"attempts":{int(attempts)},"duration_ms":{duration_ms:.3f},'
        f'"request_bytes":{int(request_bytes)},"response_bytes":{int(response_bytes)},'
        f'"request_id":{_q(request_id)},"upstream_host":{_q(upstream_host)}}}'
    )


def tcp_line(*, reporter: str, source_workload: str, source_address: str,
             destination_workload: str, destination_service: str, destination_address: str,
             response_flags: str, duration_ms: float, bytes_received: int, bytes_sent: int) -> str:
    return json.dumps({
        "time": _now_iso(), "kind": "tcp", "reporter": reporter, "protocol": "tcp",
        "source_workload": source_workload, "source_address": source_address,
        "destination_workload": destination_workload, "destination_service": destination_service,
        "destination_address": destination_address, "upstream_host": destination_address,
        "response_flags": response_flags, "duration_ms": round(duration_ms, 3),
        "bytes_received": bytes_received, "bytes_sent": bytes_sent,
    }, separators=(",", ":"))


def write(line: str) -> None:
    """Queue one line without a LogRecord when our own handler is the only one (the sidecar's
    setup); any other handler (a test's, an operator's) gets an ordinary log record."""
    handlers = log.handlers
    if len(handlers) == 1 and isinstance(handlers[0], BatchingHandler):
        handlers[0].add(line)
    else:
        log.info(line)


def enabled() -> bool:
    return log.isEnabledFor(logging.INFO)


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.pending: list[str] = []
        self.size = 0
        # Called when a line starts a new batch (nothing pending before it): the server arms a
        # one-shot flush FLUSH_S later, instead of waking every FLUSH_S while idle.
        self.on_batch: Callable[[], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
        except Exception:  # as StreamHandler: a bad record must not break the data path
            self.handleError(record)
            return
        self.add(msg)

    def add(self, msg: str) -> None:
        self.pending.append(msg)
        self.size += len(msg)
        if self.size >= BATCH_BYTES:
            self.flush()
        elif len(self.pending) == 1 and self.on_batch is not None:
            self.on_batch()

    def flush(self) -> None:
        self.acquire()
        try:
            if self.pending:
                self.stream.write("\n".join(self.pending) + "\n")
                self.pending.clear()
                self.size = 0
            super().flush()
        finally:
            self.release()


def flush() -> None:
    for handler in log.handlers:
        handler.flush()


def on_batch(hook: Callable[[], None] | None) -> None:
    """Set the hook our own handler calls when a line starts a new batch (see BatchingHandler)."""
    for handler in log.handlers:
        if isinstance(handler, BatchingHandler):
            handler.on_batch = hook
            if hook is not None and handler.pending:  # a batch begun before the hook was set
                hook()


def install_handler(stream: IO[str] | None = None) -> logging.Handler:
    """Give ``meshns.access`` its own handler (JSON only) at INFO, not propagating to the root
    logger (whose format adds time and level, and whose level may be warning)."""
    handler = BatchingHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler
