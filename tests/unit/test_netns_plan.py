import os
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from meshns.config import MeshConfig
from meshns.netns.files import render_hosts
from meshns.netns.hostguard import render_guard
from meshns.netns.plan import (
    ConfigurePod,
    CreateVethPair,
    EnsureBridge,
    bridge_commands,
    inside_commands,
    plan_pod_network,
    render_plan,
    veth_commands,
)

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


def test_ip_batch_commands_are_what_dry_run_prints() -> None:
    """netns.apply runs these through `ip -batch`; the dry-run's rendering says the same commands."""
    plan = plan_pod_network(CFG, "web", IPv4Address("10.188.0.2"), "meshns-web", "mv0123456789")
    bridge, _ns, veth, pod = plan.steps
    assert isinstance(bridge, EnsureBridge) and isinstance(veth, CreateVethPair) and isinstance(pod, ConfigurePod)
    assert bridge_commands(bridge.name, bridge.address) == ["addr replace 10.188.0.1/16 dev meshns0",
                                                            "link set meshns0 up"]
    assert veth_commands(veth) == ["link add name mv0123456789 type veth peer name eth0 netns meshns-web",
                                   "link set mv0123456789 master meshns0 up"]
    assert inside_commands(pod) == [
        "link set lo up",
        "link set eth0 address 0a:58:0a:bc:00:02",
        "addr add 10.188.0.2/16 dev eth0",
        "link set eth0 up",
        "route add default via 10.188.0.1 dev eth0",
    ]
    rendered = render_plan(plan)
    for cmd in veth_commands(veth)[1:] + inside_commands(pod)[1:]:
        assert cmd.split(" ", 2)[2] in rendered  # modulo "ip -n <netns>" and "name"


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
