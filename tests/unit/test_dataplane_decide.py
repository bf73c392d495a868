"""decide() as a table: (direction, original destination, config) -> decision."""

from __future__ import annotations

import pytest

from meshns.dataplane.addrs import ClientAddr, ListenAddr, OrigDst
from meshns.dataplane.config import SidecarConfig
from meshns.dataplane.decide import AnswerProbe, Decision, Direction, Forward, Reject, decide

OUT, IN = Direction.OUTBOUND, Direction.INBOUND
CFG = SidecarConfig(pod="web-1", pod_ip="10.252.0.2")
TEST_CFG = SidecarConfig(pod="web-1", pod_ip="127.0.0.1", outbound_port=40001, inbound_port=40002,
                         probe_port=40003)
LOOP = "is a sidecar listener port; would loop"


@pytest.mark.parametrize(
    ("direction", "dst", "cfg", "want"),
    [
        # outbound: straight to where the app meant to go, from our own address
        (OUT, OrigDst("10.252.0.9", 80), CFG, Forward(OrigDst("10.252.0.9", 80), None)),
        (OUT, OrigDst("10.252.1.3", 5432), CFG, Forward(OrigDst("10.252.1.3", 5432), None)),
        (OUT, OrigDst("10.252.0.9", 15000), CFG, Forward(OrigDst("10.252.0.9", 15000), None)),
        # inbound: to the app, from 127.0.0.6 so the hop is not captured again
        (IN, OrigDst("10.252.0.2", 8080), CFG, Forward(OrigDst("10.252.0.2", 8080), "127.0.0.6")),
        (IN, OrigDst("10.252.0.2", 25), CFG, Forward(OrigDst("10.252.0.2", 25), "127.0.0.6")),
        # probes are answered, in either direction, whatever the address
        (OUT, OrigDst("10.252.0.5", 15002), CFG, AnswerProbe(b"meshns-probe outbound 10.252.0.5:15002\n")),
        (IN, OrigDst("10.252.0.2", 15002), CFG, AnswerProbe(b"meshns-probe inbound 10.252.0.2:15002\n")),
        # our own listener ports would loop
        (OUT, OrigDst("127.0.0.1", 15001), CFG, Reject(f"original destination 127.0.0.1:15001 {LOOP}")),
        (OUT, OrigDst("10.252.0.2", 15006), CFG, Reject(f"original destination 10.252.0.2:15006 {LOOP}")),
        (IN, OrigDst("10.252.0.2", 15006), CFG, Reject(f"original destination 10.252.0.2:15006 {LOOP}")),
        (IN, OrigDst("10.252.0.2", 15001), CFG, Reject(f"original destination 10.252.0.2:15001 {LOOP}")),
        # the admin port is the pod's own: refused from outside, an outbound call to another pod's
        # admin port goes to that pod's sidecar, which refuses it there
        (IN, OrigDst("10.252.0.2", 15000), CFG, Reject("original destination 10.252.0.2:15000 is the sidecar's "
                                                        "admin port; only the pod may use it")),
        (IN, OrigDst("127.0.0.1", 15000), TEST_CFG, Reject("original destination 127.0.0.1:15000 is the sidecar's "
                                                           "admin port; only the pod may use it")),
        # the ports that count are the configured (or, in tests, actually bound) ones
        (OUT, OrigDst("127.0.0.1", 15001), TEST_CFG, Forward(OrigDst("127.0.0.1", 15001), None)),
        (OUT, OrigDst("127.0.0.1", 40001), TEST_CFG, Reject(f"original destination 127.0.0.1:40001 {LOOP}")),
        (OUT, OrigDst("127.0.0.1", 40003), TEST_CFG, AnswerProbe(b"meshns-probe outbound 127.0.0.1:40003\n")),
        (IN, OrigDst("127.0.0.1", 15002), TEST_CFG, Forward(OrigDst("127.0.0.1", 15002), "127.0.0.6")),
    ],
)
def test_decide(direction: Direction, dst: OrigDst, cfg: SidecarConfig, want: Decision) -> None:
    assert decide(direction, dst, cfg) == want


def test_probe_wins_over_loop_if_ports_collide() -> None:
    cfg = SidecarConfig(pod="p", pod_ip="10.0.0.1", probe_port=15001)
    assert isinstance(decide(OUT, OrigDst("10.0.0.1", 15001), cfg), AnswerProbe)


def test_addresses_of_different_roles_never_compare_equal() -> None:
    # mypy --strict already refuses these comparisons (comparison-overlap); at runtime they are False.
    assert ClientAddr("10.0.0.1", 80) != OrigDst("10.0.0.1", 80)  # type: ignore[comparison-overlap]
    assert ListenAddr("10.0.0.1", 80) != OrigDst("10.0.0.1", 80)  # type: ignore[comparison-overlap]
    assert str(OrigDst("10.0.0.1", 80)) == "10.0.0.1:80"
