"""The etcd key layout of a mesh (cluster.keys), the pod-block walk and the cluster-settings
check (cluster.store's pure part): round trips, refusals, and keys that are not ours."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from meshns.cluster import keys
from meshns.cluster.etcd_wire import prefix_range_end
from meshns.cluster.store import ClusterSettings, settings_conflicts
from meshns.errors import UserError

N = IPv4Network


@pytest.mark.parametrize("name", ["a", "0", "host-1", "a" * 40, "h0-0-0", "9lives"])
def test_good_host_and_mesh_names(name: str) -> None:
    assert keys.validate_host_name(name) == name
    assert keys.validate_mesh_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "a.b", "a/b", "a" * 41, "é", "a b", "..", "a\n"])
def test_bad_host_and_mesh_names(name: str) -> None:
    with pytest.raises(UserError, match="host name"):
        keys.validate_host_name(name)
    with pytest.raises(UserError, match="mesh name"):
        keys.mesh_prefix(name)


def test_fixed_keys() -> None:
    assert keys.mesh_prefix("default") == "/meshns/default/"
    assert keys.cluster_key("m1") == "/meshns/m1/cluster"
    assert keys.trust_bundle_key("m1") == "/meshns/m1/trust/bundle"
    assert keys.hosts_prefix("m1") == "/meshns/m1/hosts/"
    assert keys.host_key("m1", "h1") == "/meshns/m1/hosts/h1"
    assert keys.blocks_prefix("m1") == "/meshns/m1/blocks/"
    assert keys.block_key("m1", N("10.188.3.0/24")) == "/meshns/m1/blocks/10.188.3.0-24"
    assert keys.pods_prefix("m1") == "/meshns/m1/pods/"
    assert keys.pods_prefix("m1", "h1") == "/meshns/m1/pods/h1/"
    assert keys.pod_key("m1", "h1", "web-0") == "/meshns/m1/pods/h1/web-0"
    assert keys.config_key("m1", "VirtualService", "default", "reviews.v1") == \
        "/meshns/m1/config/VirtualService/default/reviews.v1"
    assert keys.revoked_key("m1", "spiffe://cluster.local/ns/default/sa/web") == \
        "/meshns/m1/revoked/spiffe%3A%2F%2Fcluster.local%2Fns%2Fdefault%2Fsa%2Fweb"


def test_every_prefix_holds_its_keys_and_no_other_mesh() -> None:
    # "m1" must not be a prefix of "m10"'s keys: every prefix ends in '/'.
    assert not keys.pod_key("m10", "h1", "p").startswith(keys.mesh_prefix("m1"))
    assert not keys.pod_key("m1", "h10", "p").startswith(keys.pods_prefix("m1", "h1"))
    assert keys.host_key("m1", "h1").startswith(keys.hosts_prefix("m1"))
    assert keys.config_key("m1", "Gateway", "a", "b").startswith(keys.config_prefix("m1"))
    assert keys.revoked_key("m1", "spiffe://td/ns/a/sa/b").startswith(keys.revoked_prefix("m1"))


@pytest.mark.parametrize("host,pod", [("h1", "web"), ("a" * 40, "p" * 40), ("0", "0-a")])
def test_pod_key_round_trip(host: str, pod: str) -> None:
    assert keys.parse_pod_key("m", keys.pod_key("m", host, pod)) == (host, pod)


@pytest.mark.parametrize("host,pod", [("H1", "web"), ("h1", "Web"), ("h1", "a/b"), ("h/1", "p"), ("h1", "")])
def test_pod_key_refuses_bad_parts(host: str, pod: str) -> None:
    with pytest.raises(UserError):
        keys.pod_key("m", host, pod)


@pytest.mark.parametrize("key", [
    "/meshns/m/pods/h1",              # no pod
    "/meshns/m/pods/h1/web/extra",    # too deep
    "/meshns/m/pods/h1/",             # empty pod
    "/meshns/m/pods/H1/web",          # bad host
    "/meshns/m/pods/h1/We b",         # bad pod
    "/meshns/other/pods/h1/web",      # another mesh
    "/meshns/m/hosts/h1",             # another section
    "/meshns/m/podsx/h1/web",
])
def test_pod_key_parser_rejects(key: str) -> None:
    assert keys.parse_pod_key("m", key) is None


@pytest.mark.parametrize("kind,ns,name", [
    ("VirtualService", "default", "reviews"),
    ("DestinationRule", "istio-system", "a.b.c"),
    ("AuthorizationPolicy", "n" * 63, "x"),
])
def test_config_key_round_trip(kind: str, ns: str, name: str) -> None:
    assert keys.parse_config_key("m", keys.config_key("m", kind, ns, name)) == (kind, ns, name)


@pytest.mark.parametrize("kind,ns,name", [
    ("Virtual/Service", "default", "x"), ("", "default", "x"), ("VS", "De", "x"), ("VS", "a.b", "x"),
    ("VS", "default", "a/b"), ("VS", "default", ""), ("VS", "default", "UP"), ("1VS", "default", "x"),
])
def test_config_key_refuses_bad_parts(kind: str, ns: str, name: str) -> None:
    with pytest.raises(UserError):
        keys.config_key("m", kind, ns, name)


@pytest.mark.parametrize("key", [
    "/meshns/m/config/VS/default", "/meshns/m/config/VS/default/x/y", "/meshns/m/config/V S/default/x",
    "/meshns/n/config/VS/default/x",
])
def test_config_key_parser_rejects(key: str) -> None:
    assert keys.parse_config_key("m", key) is None


@pytest.mark.parametrize("uri", [
    "spiffe://cluster.local/ns/default/sa/web",
    "spiffe://example.org/ns/a-b/sa/svc.account",
])
def test_revoked_key_round_trip(uri: str) -> None:
    key = keys.revoked_key("m", uri)
    assert key.count("/") == 4  # the ID is one key level: /meshns/m/revoked/<id>
    assert keys.parse_revoked_key("m", key) == uri


@pytest.mark.parametrize("uri", ["", "http://x/ns/a/sa/b", "spiffe://td/ns/a", "spiffe://TD/ns/a/sa/b"])
def test_revoked_key_refuses_malformed_ids(uri: str) -> None:
    with pytest.raises(UserError):
        keys.revoked_key("m", uri)


@pytest.mark.parametrize("key", [
    "/meshns/m/revoked/spiffe://td/ns/a/sa/b",            # not quoted: several levels
    "/meshns/m/revoked/spiffe%3A%2F%2Ftd%2Fns%2Fa",       # not an ns/sa ID
    "/meshns/m/revoked/spiffe%3a%2f%2ftd%2fns%2fa%2fsa%2fb",  # not the canonical quoting
    "/meshns/m/revoked/",
])
def test_revoked_key_parser_rejects(key: str) -> None:
    assert keys.parse_revoked_key("m", key) is None


@pytest.mark.parametrize("host", ["h1", "a" * 40])
def test_host_key_round_trip(host: str) -> None:
    assert keys.parse_host_key("m", keys.host_key("m", host)) == host


@pytest.mark.parametrize("key", ["/meshns/m/hosts/", "/meshns/m/hosts/a/b", "/meshns/m/hosts/A", "/meshns/m/host/a"])
def test_host_key_parser_rejects(key: str) -> None:
    assert keys.parse_host_key("m", key) is None


@pytest.mark.parametrize("block", ["10.188.0.0/24", "10.0.0.0/8", "192.168.1.8/29", "0.0.0.0/0"])
def test_block_key_round_trip(block: str) -> None:
    assert keys.parse_block_key("m", keys.block_key("m", N(block))) == N(block)


@pytest.mark.parametrize("key", [
    "/meshns/m/blocks/10.188.0.0",        # no prefix length
    "/meshns/m/blocks/10.188.0.1-24",     # host bits set
    "/meshns/m/blocks/10.188.0.0-33",
    "/meshns/m/blocks/10.188.0.0-024",    # not the canonical spelling
    "/meshns/m/blocks/10.188.0.0--24",
    "/meshns/m/blocks/10.188.0.0-24/x",
    "/meshns/m/blocks/10.188.0.0/24",
    "/meshns/n/blocks/10.188.0.0-24",
])
def test_block_key_parser_rejects(key: str) -> None:
    assert keys.parse_block_key("m", key) is None


# -- the candidate walk --------------------------------------------------------------------------

@pytest.mark.parametrize("cidr,prefix,taken,first", [
    ("10.188.0.0/16", 24, [], ["10.188.0.0/24", "10.188.1.0/24", "10.188.2.0/24"]),
    ("10.188.0.0/16", 24, ["10.188.0.0/24", "10.188.2.0/24"], ["10.188.1.0/24", "10.188.3.0/24", "10.188.4.0/24"]),
    ("10.188.0.0/22", 24, ["10.188.1.0/24"], ["10.188.0.0/24", "10.188.2.0/24", "10.188.3.0/24"]),
    ("10.188.0.0/24", 24, [], ["10.188.0.0/24"]),
    ("10.188.0.0/24", 24, ["10.188.0.0/24"], []),
    ("10.0.0.0/8", 29, ["10.0.0.0/29"], ["10.0.0.8/29", "10.0.0.16/29", "10.0.0.24/29"]),
    # a block of another size or outside the cluster takes nothing from the walk
    ("10.188.0.0/23", 24, ["10.188.0.0/23", "10.9.0.0/24"], ["10.188.0.0/24", "10.188.1.0/24"]),
])
def test_candidate_blocks(cidr: str, prefix: int, taken: list[str], first: list[str]) -> None:
    walk = keys.candidate_blocks(N(cidr), prefix, {N(t) for t in taken})
    assert [next(walk, None) for _ in first] == [N(f) for f in first]
    if N(cidr).num_addresses // 2 ** (32 - prefix) <= len(first) + len(taken):
        assert next(walk, None) is None  # small clusters: the walk ends when they are full


def test_candidate_walk_is_lazy_on_a_huge_cluster() -> None:
    walk = keys.candidate_blocks(N("10.0.0.0/8"), 32, set())
    assert next(walk) == N("10.0.0.0/32")


@pytest.mark.parametrize("cidr,prefix", [("10.188.0.0/16", 15), ("10.188.0.0/16", 33)])
def test_candidate_walk_refuses_block_sizes_that_do_not_fit(cidr: str, prefix: int) -> None:
    with pytest.raises(UserError, match="block size"):
        keys.candidate_blocks(N(cidr), prefix, set())


@pytest.mark.parametrize("block,ok", [
    ("10.188.7.0/24", True), ("10.188.255.0/24", True), ("10.189.0.0/24", False),
    ("10.188.0.0/25", False), ("10.188.0.0/23", False), ("10.188.0.0/16", False),
])
def test_check_block(block: str, ok: bool) -> None:
    if ok:
        assert keys.check_block(N(block), N("10.188.0.0/16"), 24) == N(block)
    else:
        with pytest.raises(UserError, match=r"not a /24 block of the cluster CIDR 10\.188\.0\.0/16"):
            keys.check_block(N(block), N("10.188.0.0/16"), 24)


# -- range ends ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix,end", [
    (b"/meshns/m/", b"/meshns/m0"),
    (b"a", b"b"),
    (b"a\xff", b"b"),
    (b"a\xff\xff", b"b"),
    (b"\xff", b"\0"),
    (b"", b"\0"),
    (b"ab\xfe", b"ab\xff"),
])
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert prefix_range_end(prefix) == end


# -- cluster settings ----------------------------------------------------------------------------

HAVE = ClusterSettings(N("10.188.0.0/16"), 24, "cluster.local", 1.0)


@pytest.mark.parametrize("cidr,prefix,td,problems", [
    (None, None, None, []),
    (N("10.188.0.0/16"), 24, "cluster.local", []),
    (N("10.1.0.0/16"), None, None, ["cluster CIDR 10.1.0.0/16 (the mesh has 10.188.0.0/16)"]),
    (None, 26, "example.org", ["block size 26 (the mesh has 24)", "trust domain example.org (the mesh has cluster.local)"]),
])
def test_settings_conflicts(cidr: IPv4Network | None, prefix: int | None, td: str | None, problems: list[str]) -> None:
    assert settings_conflicts(HAVE, cidr, prefix, td) == problems


def test_settings_json_round_trip() -> None:
    assert ClusterSettings.from_json(HAVE.to_json()) == HAVE


@pytest.mark.parametrize("cidr,prefix,td,match", [
    ("10.188.0.0/16", 15, "cluster.local", "block size"),
    ("10.188.0.0/16", 30, "cluster.local", "block size"),
    ("127.0.0.0/16", 24, "cluster.local", "not usable"),
    ("10.188.0.0/16", 24, "Bad Domain", "trust domain"),
])
def test_settings_refused(cidr: str, prefix: int, td: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        ClusterSettings(N(cidr), prefix, td)


@pytest.mark.parametrize("raw", [b"", b"{}", b"[]", b'{"cluster_cidr": "x", "block_prefix": 24, "trust_domain": "t"}'])
def test_unreadable_settings(raw: bytes) -> None:
    with pytest.raises(UserError, match="unreadable"):
        ClusterSettings.from_json(raw)
