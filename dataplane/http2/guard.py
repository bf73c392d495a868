"""Flood detection for one downstream HTTP/2 connection.

HTTP/2 lets a client make the server work without the client paying in kind: a stream opened and
reset at once costs the client two tiny frames and the proxy a request set-up plus an upstream
request (CVE-2023-44487, "rapid reset"); every SETTINGS and PING frame must be answered with an
ack. Concurrency limits do not help, because a reset stream stops counting against
SETTINGS_MAX_CONCURRENT_STREAMS at once. So the connection counts these events per time window
and, past a limit, sends GOAWAY(ENHANCE_YOUR_CALM) and closes: the defence Envoy, nginx and Go
shipped for the CVE.

Counting is a sliding window approximated with two fixed buckets: the count of the current bucket
plus the previous bucket's count weighted by how much of it the sliding window still overlaps
(estimate = previous * (1 - elapsed/window) + current). That is O(1) per event and constant memory
per connection, whatever the rate, where exact timestamps would cost memory proportional to the
very flood being measured. The estimate assumes the previous bucket's events were spread evenly:
a burst just before a bucket boundary is counted as if spread, so in the worst alignment about
twice the limit can pass within one true window, but never more, and never over sustained periods,
which is what the guard is for. A client whose events come at an even rate below the limit stays
below it in every estimate: each estimate mixes two buckets' rates with weights summing to one.

The guard is pure: the clock is injected, nothing is scheduled, and a tripped guard stays tripped
so every later event gets the same answer while the connection is being torn down.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

_EPSILON: Final = 1e-9


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """Per-connection limits, each "per ``window_s``". Defaults are generous for real clients
    (browsers and gRPC channels send a handful of SETTINGS/PINGs per connection) and far below
    what a flood needs to hurt."""

    window_s: float = 1.0
    max_premature_resets: int = 100  # client RST_STREAMs on streams whose response had not completed, per window
    max_settings: int = 50  # SETTINGS frames from the peer per window
    max_pings: int = 50  # PING frames (non-ack) from the peer per window
    max_streams_opened: int = 2000  # new streams per window, a cap on stream churn whatever ends them

    def __post_init__(self) -> None:
        # Checked here so a bad config fails at load, not as a division by zero on the data path.
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise ValueError(f"window_s must be a positive number of seconds, not {self.window_s!r}")
        for name in ("max_premature_resets", "max_settings", "max_pings", "max_streams_opened"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


class _Window:
    """One kind of event: the two buckets of the sliding-window estimate."""

    __slots__ = ("_bucket", "_current", "_previous")

    def __init__(self) -> None:
        self._bucket = 0  # index of the current bucket, counted from the guard's origin
        self._current = 0
        self._previous = 0

    def add(self, bucket: int, elapsed: float) -> float:
        """Count one event in ``bucket``, ``elapsed`` (0..1) of the way through it; return the
        estimated number of events in the window that ends now."""
        if bucket != self._bucket:
            if bucket < self._bucket:
                # The clock went backwards (an injected clock can): stay in the bucket we have,
                # and weigh the previous bucket fully, the cautious reading.
                elapsed = 0.0
            else:
                # One bucket on: the current becomes the previous. Two or more: both are stale.
                self._previous = self._current if bucket == self._bucket + 1 else 0
                self._current = 0
                self._bucket = bucket
        self._current += 1
        return self._previous * (1.0 - elapsed) + self._current


class FloodGuard:
    """Counts one connection's events; a method returns a reason once a limit is exceeded.

    The caller sends GOAWAY(ENHANCE_YOUR_CALM) and closes when a reason comes back. After that
    every method returns the first reason without counting, so a caller that keeps feeding events
    during the teardown neither trips again with a different story nor does extra work.
    """

    __slots__ = ("_limits", "_now", "_opened", "_origin", "_pings", "_resets", "_settings", "_tripped")

    def __init__(self, limits: GuardLimits, now: Callable[[], float]) -> None:
        self._limits = limits
        self._now = now
        # Buckets are aligned to the connection's start, so a test (or a log) can reason about
        # which bucket an event fell into from the connection's own timeline.
        self._origin = now()
        self._opened = _Window()
        self._resets = _Window()
        self._settings = _Window()
        self._pings = _Window()
        self._tripped: str | None = None

    @property
    def tripped(self) -> str | None:
        """The first reason ever returned, or None."""
        return self._tripped

    def stream_opened(self) -> str | None:
        return self._count(self._opened, self._limits.max_streams_opened, "stream churn", "streams opened")

    def premature_reset(self) -> str | None:
        """A client RST_STREAM on a stream whose response had not completed."""
        return self._count(
            self._resets, self._limits.max_premature_resets, "rapid reset", "streams reset by the client"
        )

    def settings_received(self) -> str | None:
        return self._count(self._settings, self._limits.max_settings, "SETTINGS flood", "SETTINGS frames")

    def ping_received(self) -> str | None:
        """A PING without the ACK flag (acks answer our own PINGs and cost nothing)."""
        return self._count(self._pings, self._limits.max_pings, "PING flood", "PING frames")

    def _count(self, window: _Window, limit: int, what: str, events: str) -> str | None:
        if self._tripped is not None:
            return self._tripped
        span = self._limits.window_s
        position = (self._now() - self._origin) / span
        bucket = math.floor(position)
        estimate = window.add(bucket, position - bucket)
        # The tolerance keeps float noise in the weighting (1001.9 - 1000 is 1.89999...) from
        # deciding a count that is exactly at the limit.
        if estimate <= limit + _EPSILON:
            return None
        self._tripped = f"{what}: {math.ceil(estimate)} {events} within {span} s (limit {limit})"
        return self._tripped
