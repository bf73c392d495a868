"""decide_fault: independent delay and abort draws against percentages."""

from __future__ import annotations

import pytest

from meshns.dataplane.policy.fault import decide_fault
from meshns.snapshot import FaultPolicy

DELAY = FaultPolicy(delay_s=1.5, delay_percent=30.0)
ABORT = FaultPolicy(abort_status=503, abort_percent=50.0)
BOTH = FaultPolicy(delay_s=0.2, delay_percent=100.0, abort_status=500, abort_percent=100.0)
NEVER = FaultPolicy(delay_s=0.2, delay_percent=0.0, abort_status=500, abort_percent=0.0)


@pytest.mark.parametrize(
    ("fault", "rd", "ra", "want"),
    [
        (None, 0.0, 0.0, (None, None)),
        (DELAY, 0.0, 0.0, (1.5, None)),
        (DELAY, 0.2999, 0.0, (1.5, None)),
        (DELAY, 0.3, 0.0, (None, None)),
        (ABORT, 0.0, 0.4999, (None, 503)),
        (ABORT, 0.0, 0.5, (None, None)),
        (BOTH, 0.999999, 0.999999, (0.2, 500)),  # 100% always fires
        (NEVER, 0.0, 0.0, (None, None)),  # 0% never fires
        (FaultPolicy(delay_percent=100.0, abort_percent=100.0), 0.0, 0.0, (None, None)),  # nothing set
        (FaultPolicy(delay_s=1.0, delay_percent=0.1), 0.0009, 0.0, (1.0, None)),  # fractional percent
        (FaultPolicy(delay_s=1.0, delay_percent=0.1), 0.001, 0.0, (None, None)),
    ],
)
def test_decide_fault(
    fault: FaultPolicy | None, rd: float, ra: float, want: tuple[float | None, int | None]
) -> None:
    assert decide_fault(fault, rd, ra) == want


def test_fault_share_over_grid() -> None:
    n = 1000
    aborted = sum(decide_fault(ABORT, 0.0, i / n)[1] is not None for i in range(n))
    delayed = sum(decide_fault(DELAY, i / n, 0.0)[0] is not None for i in range(n))
    assert (aborted, delayed) == (500, 300)
