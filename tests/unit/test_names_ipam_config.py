from ipaddress import IPv4Address, IPv4Network

import pytest

from meshns.config import ConfigRequest, resolve
from meshns.errors import ConflictError, UserError
from meshns.names import netns_name, validate_ifname, validate_ns_prefix, validate_pod_name, veth_host_name
from meshns.netns import ipam


@pytest.mark.parametrize("name", ["web", "a", "web-1", "0abc", "x" * 40])
def test_good_pod_names(name: str) -> None:
    assert validate_pod_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Web", "-web", "web-", "we_b", "we b", "web;rm", "../etc", "x" * 41, "web\n", "wéb", "a/b", "$(id)"],
)
def test_bad_pod_names(name: str) -> None:
    with pytest.raises(UserError):
        validate_pod_name(name)


@pytest.mark.parametrize("name,ok", [("meshns0", True), ("br-x.1", True), ("a" * 15, True),
                                     ("a" * 16, False), ("", False), ("br 0", False), ("..", False),
                                     ("br/0", False)])
def test_ifnames(name: str, ok: bool) -> None:
    if ok:
        assert validate_ifname(name) == name
    else:
        with pytest.raises(UserError):
            validate_ifname(name)


def test_ns_prefix() -> None:
    assert validate_ns_prefix("") == ""
    assert validate_ns_prefix("t-12ab-") == "t-12ab-"
    with pytest.raises(UserError):
        validate_ns_prefix("Bad/")


def test_veth_name_is_short_stable_and_distinct() -> None:
    a = veth_host_name(netns_name("meshns-", "web"))
    assert a == veth_host_name("meshns-web")
    assert len(a) <= 15 and a.startswith("mv")
    assert a != veth_host_name(netns_name("other-", "web"))


NET = IPv4Network("10.9.0.0/29")  # hosts .1-.6, .1 is the gateway


@pytest.mark.parametrize(
    "used,want",
    [
        (set(), "10.9.0.2"),
        ({"10.9.0.2"}, "10.9.0.3"),
        ({"10.9.0.2", "10.9.0.4"}, "10.9.0.3"),  # a deleted pod's address is reused
        ({"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"}, "10.9.0.6"),
    ],
)
def test_allocate_lowest_free(used: set[str], want: str) -> None:
    assert ipam.allocate(NET, {IPv4Address(u) for u in used}) == IPv4Address(want)


def test_allocate_never_gives_gateway_network_or_broadcast() -> None:
    used: set[IPv4Address] = set()
    for _ in range(5):
        used.add(ipam.allocate(NET, used))
    assert IPv4Address("10.9.0.1") not in used
    assert IPv4Address("10.9.0.0") not in used and IPv4Address("10.9.0.7") not in used
    with pytest.raises(ConflictError, match="exhausted"):
        ipam.allocate(NET, used)


@pytest.mark.parametrize("cidr", ["10.0.0.1/24", "nonsense", "10.0.0.0/30", "127.0.0.0/8", "10.0.0.0/7",
                                  "224.0.0.0/24", "169.254.0.0/16"])
def test_bad_pod_cidrs(cidr: str) -> None:
    with pytest.raises(UserError):
        ipam.parse_pod_cidr(cidr)


def test_gateway() -> None:
    assert str(ipam.gateway_interface(IPv4Network("10.188.0.0/16"))) == "10.188.0.1/16"


def test_config_precedence_and_defaults() -> None:
    cfg = resolve(ConfigRequest(state_dir="/tmp/x"), {})
    assert (cfg.bridge, str(cfg.pod_cidr), cfg.ns_prefix) == ("meshns0", "10.188.0.0/16", "meshns-")
    recorded = {"bridge": "br7", "pod_cidr": "10.7.0.0/24", "ns_prefix": "p-"}
    cfg = resolve(ConfigRequest(state_dir="/tmp/x"), recorded)
    assert (cfg.bridge, str(cfg.pod_cidr), cfg.ns_prefix) == ("br7", "10.7.0.0/24", "p-")
    cfg = resolve(ConfigRequest(state_dir="/tmp/x", bridge="br7"), recorded)
    assert cfg.bridge == "br7"


def test_config_refuses_mixing_meshes() -> None:
    with pytest.raises(ConflictError, match="bridge"):
        resolve(ConfigRequest(state_dir="/tmp/x", bridge="other"), {"bridge": "br7"})


def test_config_env() -> None:
    req = ConfigRequest().with_env({"MESHNS_STATE_DIR": "/s", "MESHNS_BRIDGE": "b1", "MESHNS_NS_PREFIX": ""})
    assert req.state_dir == "/s" and req.bridge == "b1" and req.ns_prefix == ""
    assert ConfigRequest(bridge="cli").with_env({"MESHNS_BRIDGE": "env"}).bridge == "cli"


def test_config_rejects_bad_values() -> None:
    with pytest.raises(UserError):
        resolve(ConfigRequest(state_dir="/tmp/x", bridge="way-too-long-bridge"), {})
    with pytest.raises(UserError):
        resolve(ConfigRequest(state_dir="/tmp/x", pod_cidr="10.0.0.0/33"), {})
