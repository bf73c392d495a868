"""Pure tests of the interception plan and its iptables-save rendering (no root, no kernel)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from meshns.errors import UserError
from meshns.intercept.plan import (
    IN_REDIRECT_CHAIN,
    INBOUND_CHAIN,
    OUTPUT_CHAIN,
    REDIRECT_CHAIN,
    Comment,
    Rule,
    RulePlan,
    Target,
    plan_rules,
)
from meshns.intercept.render import render_rule, render_save, save_string
from meshns.intercept.spec import InterceptSpec, parse_cidr_list, parse_port_list

GOLDEN = Path(__file__).parent / "golden"

# Istio's default listing (ANCHORS.md) with our names and comments; the 15008/15090/15021/15020
# RETURNs are deliberately absent.
DEFAULT_OUTPUT = [
    '-A MESHNS_OUTPUT -s 127.0.0.6/32 -o lo -m comment --comment "meshns: loop breaker: inbound hop '
    'from 127.0.0.6" -j RETURN',
    "-A MESHNS_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -m comment --comment "
    '"meshns: proxy uid to own pod address goes to inbound listener" -j MESHNS_IN_REDIRECT',
    '-A MESHNS_OUTPUT -o lo -m owner ! --uid-owner 1337 -m comment --comment "meshns: app on loopback, '
    'not proxy uid" -j RETURN',
    '-A MESHNS_OUTPUT -m owner --uid-owner 1337 -m comment --comment "meshns: loop breaker: proxy uid '
    '1337" -j RETURN',
    "-A MESHNS_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -m comment --comment "
    '"meshns: proxy gid to own pod address goes to inbound listener" -j MESHNS_IN_REDIRECT',
    '-A MESHNS_OUTPUT -o lo -m owner ! --gid-owner 1337 -m comment --comment "meshns: app on loopback, '
    'not proxy gid" -j RETURN',
    '-A MESHNS_OUTPUT -m owner --gid-owner 1337 -m comment --comment "meshns: loop breaker: proxy gid '
    '1337" -j RETURN',
    '-A MESHNS_OUTPUT -d 127.0.0.1/32 -m comment --comment "meshns: localhost is never captured" -j RETURN',
    '-A MESHNS_OUTPUT -m comment --comment "meshns: outbound TCP to the sidecar" -j MESHNS_REDIRECT',
]


def lines(plan: RulePlan, chain: str) -> list[str]:
    return [render_rule(r) for r in plan.rules if r.chain == chain]


def test_default_plan_mirrors_istio() -> None:
    plan = plan_rules(InterceptSpec())
    assert plan.table == "nat"
    assert plan.chains == (INBOUND_CHAIN, REDIRECT_CHAIN, IN_REDIRECT_CHAIN, OUTPUT_CHAIN)
    assert lines(plan, OUTPUT_CHAIN) == DEFAULT_OUTPUT
    assert lines(plan, "PREROUTING") == [
        '-A PREROUTING -p tcp -m comment --comment "meshns: capture inbound TCP" -j MESHNS_INBOUND'
    ]
    assert lines(plan, "OUTPUT") == [
        '-A OUTPUT -p tcp -m comment --comment "meshns: capture outbound TCP" -j MESHNS_OUTPUT'
    ]
    assert lines(plan, INBOUND_CHAIN) == [
        # Istio's 15090 rule: Prometheus scrapes reach the sidecar's metrics listener.
        '-A MESHNS_INBOUND -p tcp -m tcp --dport 15090 -m comment --comment "meshns: sidecar metrics port 15090" '
        "-j RETURN",
        '-A MESHNS_INBOUND -p tcp -m comment --comment "meshns: inbound TCP to the sidecar" '
        "-j MESHNS_IN_REDIRECT",
    ]
    assert lines(plan, REDIRECT_CHAIN)[0].endswith("-j REDIRECT --to-ports 15001")
    assert lines(plan, IN_REDIRECT_CHAIN)[0].endswith("-j REDIRECT --to-ports 15006")


def test_every_rule_says_why_and_only_tcp_is_captured() -> None:
    spec = InterceptSpec(
        exclude_inbound_ports=(22,), exclude_outbound_ports=(5432,), exclude_outbound_cidrs=("10.0.0.0/8",)
    )
    plan = plan_rules(spec)
    for rule in plan.rules:
        assert rule.comment is not None and rule.comment.startswith("meshns: "), rule
        assert isinstance(rule.matches[-1], Comment)
    for rule in plan.hook_rules():
        assert rule.protocol is not None and rule.protocol.value == "tcp" and not rule.protocol.negated
    assert {r.chain for r in plan.hook_rules()} == {"PREROUTING", "OUTPUT"}


def test_plan_is_pure() -> None:
    spec = InterceptSpec(exclude_outbound_ports=(1, 2))
    assert plan_rules(spec) == plan_rules(InterceptSpec(exclude_outbound_ports=(1, 2)))


def ret(chain: str, middle: str, why: str) -> str:
    return f'-A {chain} {middle} -m comment --comment "meshns: {why}" -j RETURN'


@pytest.mark.parametrize(
    ("spec", "chain", "expected", "position"),
    [
        # Inbound exclusions come first in MESHNS_INBOUND, in the user's order.
        (
            InterceptSpec(exclude_inbound_ports=(22, 8443)),
            INBOUND_CHAIN,
            [
                ret(INBOUND_CHAIN, "-p tcp -m tcp --dport 22", "inbound port 22 excluded"),
                ret(INBOUND_CHAIN, "-p tcp -m tcp --dport 8443", "inbound port 8443 excluded"),
            ],
            1,  # after the metrics port's RETURN
        ),
        # Outbound exclusions come after every loop breaker and before the final jump.
        (
            InterceptSpec(exclude_outbound_ports=(5432,)),
            OUTPUT_CHAIN,
            [ret(OUTPUT_CHAIN, "-p tcp -m tcp --dport 5432", "outbound port 5432 excluded")],
            len(DEFAULT_OUTPUT) - 1,
        ),
        (
            InterceptSpec(exclude_outbound_cidrs=("169.254.169.254", "10.1.2.3/8")),
            OUTPUT_CHAIN,
            [
                ret(OUTPUT_CHAIN, "-d 169.254.169.254/32", "outbound CIDR 169.254.169.254/32 excluded"),
                ret(OUTPUT_CHAIN, "-d 10.0.0.0/8", "outbound CIDR 10.0.0.0/8 excluded"),
            ],
            len(DEFAULT_OUTPUT) - 1,
        ),
    ],
)
def test_exclusions(spec: InterceptSpec, chain: str, expected: list[str], position: int) -> None:
    got = lines(plan_rules(spec), chain)
    default = lines(plan_rules(InterceptSpec()), chain)
    assert got == default[:position] + expected + default[position:]


def test_custom_ports_and_ids() -> None:
    spec = InterceptSpec(
        proxy_uid=2102, proxy_gid=2103, outbound_port=4140, inbound_port=4143, inbound_source_ip="127.0.0.7"
    )
    text = render_save(plan_rules(spec))
    assert "--to-ports 4140" in text and "--to-ports 4143" in text
    assert "--uid-owner 2102" in text and "--gid-owner 2103" in text
    assert "-s 127.0.0.7/32 -o lo" in text
    assert "1337" not in text and "15001" not in text


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"proxy_uid": 0}, "proxy_uid"),
        ({"proxy_gid": -1}, "proxy_gid"),
        ({"proxy_uid": True}, "proxy_uid"),
        ({"outbound_port": 0}, "outbound_port"),
        ({"inbound_port": 65536}, "65536"),
        ({"inbound_port": 15001}, "15001"),
        ({"inbound_source_ip": "127.0.0.300"}, "127.0.0.300"),
        ({"inbound_source_ip": "::1"}, "::1"),
        ({"exclude_outbound_ports": (22, 70000)}, "70000"),
        ({"exclude_inbound_ports": ("22",)}, "'22'"),
        ({"exclude_outbound_cidrs": ("10.0.0.0/33",)}, "10.0.0.0/33"),
        ({"exclude_outbound_cidrs": ("fd00::/8",)}, "fd00::/8"),
        ({"exclude_outbound_cidrs": ("bogus",)}, "bogus"),
    ],
)
def test_bad_spec_is_a_user_error_naming_the_value(kwargs: dict[str, Any], names: str) -> None:
    with pytest.raises(UserError, match=names):
        InterceptSpec(**kwargs)


def test_spec_normalises() -> None:
    spec = InterceptSpec(
        exclude_outbound_cidrs=("10.1.2.3/8", "10.0.0.0/8", " 192.168.0.1 "),
        exclude_outbound_ports=(80, 80, 22),
    )
    assert spec.exclude_outbound_cidrs == ("10.0.0.0/8", "192.168.0.1/32")
    assert spec.exclude_outbound_ports == (80, 22)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", ()), ("  ", ()), ("22", (22,)), ("22,8080", (22, 8080)), (" 22 , 8080 ,22", (22, 8080))],
)
def test_parse_port_list(text: str, expected: tuple[int, ...]) -> None:
    assert parse_port_list(text) == expected


@pytest.mark.parametrize("text", ["22,", "22,,80", "x", "-1", "0", "65536", "22;80", "0x16", "2 2"])
def test_parse_port_list_rejects(text: str) -> None:
    with pytest.raises(UserError, match="port"):
        parse_port_list(text)


def test_parse_cidr_list() -> None:
    assert parse_cidr_list("") == ()
    assert parse_cidr_list("10.1.0.0/16, 192.168.1.7") == ("10.1.0.0/16", "192.168.1.7/32")
    for bad in ["10.0.0.0/8,", "300.1.1.1", "10.0.0.0/8;1.1.1.1"]:
        with pytest.raises(UserError, match="CIDR"):
            parse_cidr_list(bad)


@pytest.mark.parametrize(
    ("value", "saved"),
    [("abc_-9", "abc_-9"), ("meshns: x", '"meshns: x"'), ('a "q" \\ b', '"a \\"q\\" \\\\ b"'), ("", '""')],
)
def test_save_string_quotes_like_xtables(value: str, saved: str) -> None:
    assert save_string(value) == saved


def test_render_refuses_rules_in_undeclared_chains() -> None:
    plan = RulePlan("nat", (), (Rule("MESHNS_GHOST", Target("RETURN")),))
    with pytest.raises(ValueError, match="MESHNS_GHOST"):
        render_save(plan)


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("intercept_default.rules", InterceptSpec()),
        (
            "intercept_exclusions.rules",
            InterceptSpec(
                exclude_inbound_ports=(22, 8443),
                exclude_outbound_ports=(5432, 6379),
                exclude_outbound_cidrs=("169.254.169.254/32", "10.96.0.0/12"),
            ),
        ),
    ],
)
def test_golden(name: str, spec: InterceptSpec) -> None:
    text = render_save(plan_rules(spec))
    path = GOLDEN / name
    if os.environ.get("MESHNS_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; rerun with MESHNS_UPDATE_GOLDEN=1 if intended"
