"""Fault injection (Istio VirtualService ``fault``): delay and/or abort a share of requests.

The two draws are independent, as in Envoy: a request can be both delayed and then aborted.
Percentages are 0..100; 0 never fires and 100 always does (a draw in [0, 1) is always < 1).
"""

from __future__ import annotations

from meshns.snapshot import FaultPolicy


def _fires(r: float, percent: float) -> bool:
    return r * 100.0 < percent


def decide_fault(
    fault: FaultPolicy | None, r_delay: float, r_abort: float
) -> tuple[float | None, int | None]:
    """(delay in seconds or None, abort status or None)."""
    if fault is None:
        return None, None
    delay = None
    if fault.delay_s is not None and _fires(r_delay, fault.delay_percent):
        delay = fault.delay_s
    abort = None
    if fault.abort_status is not None and _fires(r_abort, fault.abort_percent):
        abort = fault.abort_status
    return delay, abort
