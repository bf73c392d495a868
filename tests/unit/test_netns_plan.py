import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from meshns.config import MeshConfig
from meshns.netns.files import render_hosts
from meshns.netns.hostguard import render_guard
from meshns.netns.plan import ConfigurePod, CreateVethPair, EnsureBridge, plan_pod_network, render_plan

GOLDEN = Path(__file__).parent / "golden"
CFG = MeshConfig(Path("/var/lib/meshns"), "meshns0", IPv4Network("10.188.0.0/16"), "meshns-")


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MESHNS_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def test_plan_shape() -> None:
    plan = plan_pod_network(CFG, "web", IPv4Address("10.188.0.2"), "meshns-web", "mv0123456789")
    bridge, _ns, veth, pod = plan.steps
    assert isinstance(bridge, EnsureBridge) and str(bridge.address) == "10.188.0.1/16"
    assert isinstance(veth, CreateVethPair) and veth.peer == "eth0" and veth.netns == "meshns-web"
    assert isinstance(pod, ConfigurePod) and str(pod.address) == "10.188.0.2/16"
    assert str(pod.gateway) == "10.188.0.1"
    assert pod.mac == "0a:58:0a:bc:00:02"  # derived from the address: a reused address keeps its MAC


def test_plan_golden() -> None:
    plan = plan_pod_network(CFG, "web", IPv4Address("10.188.0.2"), "meshns-web", "mv0123456789")
    _golden("netns_plan_web.txt", render_plan(plan))


def test_guard_rules_golden() -> None:
    _golden("host_guard.txt", "\n".join(render_guard("meshns0")) + "\n")


def test_hosts_lists_every_pod_sorted() -> None:
    text = render_hosts([("web", IPv4Address("10.0.0.3")), ("client", IPv4Address("10.0.0.2"))])
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert lines.index("10.0.0.2\tclient") < lines.index("10.0.0.3\tweb")


def test_a_service_named_like_a_pod_wins_the_name() -> None:
    from meshns.model import PodRecord, PodSpec, PodState, ServiceRecord
    from meshns.netns.publish import hosts_text

    def pod(name: str, ip: str) -> PodRecord:
        return PodRecord(name, IPv4Address(ip), f"meshns-{name}", "v", PodState.READY, PodSpec(), None, 0.0, 0.0)

    text = hosts_text([pod("web", "10.0.0.3"), pod("client", "10.0.0.2")],
                      [ServiceRecord("web", IPv4Address("10.1.0.9"), ((80, 80),), 0.0)])
    assert [ln for ln in text.splitlines() if not ln.startswith("#")] == [
        "127.0.0.1\tlocalhost", "10.0.0.2\tclient", "10.1.0.9\tweb"]
