"""The documents and operations behind the Envoy-style admin paths: /config_dump, /clusters,
/logging (read and change levels live). Not the hot path: plain dict building per call."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Final

from meshns.dataplane.accesslog import ACCESS_LOGGER
from meshns.dataplane.admin import Query, Reply
from meshns.dataplane.config import LOG_LEVELS
from meshns.dataplane.http1.context import HttpContext
from meshns.dataplane.snapshots import SnapshotStore

# Loggers /logging lists even before they have logged anything.
KNOWN_LOGGERS: Final = (
    "meshns", "meshns.dataplane", "meshns.dataplane.relay", "meshns.dataplane.http1",
    "meshns.dataplane.snapshots", "meshns.dataplane.admin", ACCESS_LOGGER,
)


def config_dump(store: SnapshotStore) -> dict[str, object]:
    snap = store.current.snapshot
    return {"version": snap.version, "pod": snap.pod, "reloads": store.reloads,
            "reload_errors": store.reload_errors, "snapshot": dataclasses.asdict(snap)}


def clusters(hctx: HttpContext, store: SnapshotStore, now: float) -> dict[str, object]:
    """Per service of the snapshot: endpoints with health (ejected, until when, in wall-clock
    seconds from now), tries in flight, and the breaker and request counters."""
    out: dict[str, object] = {}
    for svc in store.current.snapshot.services:
        pool = hctx.pools.get(svc.name)
        st = pool.state if pool is not None else None
        eps = []
        for ep in svc.endpoints:
            row: dict[str, object] = {"pod": ep.pod, "ip": ep.ip, "labels": dict(ep.labels),
                                      "health": "healthy", "ejected": False}
            if st is not None:
                until = st.outlier.ejected_until(ep.ip)
                ejected = st.outlier.is_ejected(ep.ip, now)
                row["ejected"] = ejected
                row["health"] = "ejected" if ejected else "healthy"
                row["active_requests"] = st.active.get(ep.ip, 0)
                row["times_ejected"] = st.outlier.times_ejected(ep.ip)
                if ejected and until is not None:
                    row["ejected_for_s"] = round(max(0.0, until - now), 3)
                    row["ejected_until_unix"] = round(time.time() + until - now, 3)
            eps.append(row)
        doc: dict[str, object] = {"vip": svc.vip, "ports": [dataclasses.asdict(p) for p in svc.ports],
                                  "lb": svc.lb, "endpoints": eps}
        if st is not None and pool is not None:
            doc.update({
                "active_requests": st.active_requests, "active_retries": st.active_retries,
                "requests": st.requests, "retries": st.retries, "ejections": st.ejections,
                "overflows": st.overflows, "budget_exhausted": st.budget_exhausted,
                "connections": st.breaker.connections, "pending": st.breaker.pending,
                "idle_connections": pool.idle_count(),
            })
        out[svc.name] = doc
    return {"services": out}


def logging_levels() -> dict[str, object]:
    names = sorted({*KNOWN_LOGGERS, *(n for n in logging.root.manager.loggerDict if n.startswith("meshns"))})
    levels = {n: logging.getLevelName(logging.getLogger(n).getEffectiveLevel()).lower() for n in names}
    levels["root"] = logging.getLevelName(logging.root.level).lower()
    return {"loggers": levels}


def set_logging(query: Query) -> Reply:
    """POST /logging?level=LEVEL[&logger=NAME]: the root logger (every meshns logger that has no
    level of its own follows it) or the named one."""
    level = query.get("level", "").lower()
    if level not in LOG_LEVELS:
        return 400, "text/plain", f"level must be one of {', '.join(LOG_LEVELS)}\n".encode()
    name = query.get("logger", "")
    logger = logging.getLogger(name) if name and name != "root" else logging.root
    logger.setLevel(level.upper())
    return 200, "text/plain", f"{name or 'root'}: {level}\n".encode()
