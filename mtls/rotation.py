"""When a workload certificate is renewed. Pure: time is an argument.

Like Istio, a certificate is renewed when a fixed fraction of its lifetime has passed (half by
default), so the old one still has as long again to live if renewal is slow or fails and is retried.
The lifetime is counted from issue, not from not_before, which is backdated for clock skew.
"""

from __future__ import annotations

ROTATE_AT = 0.5


def next_rotation(issued_at: float, not_after: float, fraction: float = ROTATE_AT) -> float:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"rotation fraction must be in (0, 1], got {fraction!r}")
    # A certificate issued already expired (not_after <= issued_at) is due at once.
    return issued_at + fraction * max(0.0, not_after - issued_at)


def rotation_due(issued_at: float, not_after: float, now: float, fraction: float = ROTATE_AT) -> bool:
    return now >= next_rotation(issued_at, not_after, fraction)
