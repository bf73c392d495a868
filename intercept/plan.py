"""The interception rules of a pod, as data (IPv4, nat table, REDIRECT mode).

Theory of operation
-------------------
The init step makes every TCP connection of the pod pass through its sidecar, using the nat table
only (so just the first packet of a connection is classified; conntrack rewrites the rest). The
logic is Istio's default sidecar listing with our chain names, minus Istio's 15008/15021/15020
inbound RETURNs (we have no such inbound listeners; our admin port listens on 127.0.0.1, which
PREROUTING never sees), plus user exclusions. Istio's 15090 RETURN is kept: the sidecar's
Prometheus listener is on the pod address, and a scrape must reach it rather than be redirected
to the inbound listener (which would forward it to the app). Every rule carries a "meshns: ..." comment,
as Linkerd's do, so `iptables-legacy-save` explains itself.

Inbound (packets arriving from outside the pod):

  PREROUTING -p tcp           -> MESHNS_INBOUND     only TCP; UDP (DNS...) is never touched
  MESHNS_INBOUND --dport 15090 -> RETURN            the sidecar's metrics listener (as Istio)
  MESHNS_INBOUND --dport P    -> RETURN             one per excluded inbound port (e.g. ssh)
  MESHNS_INBOUND -p tcp       -> MESHNS_IN_REDIRECT everything else
  MESHNS_IN_REDIRECT          -> REDIRECT 15006     the sidecar's inbound listener

Outbound (connections opened inside the pod; the OUTPUT hook):

  OUTPUT -p tcp               -> MESHNS_OUTPUT
  1 -s 127.0.0.6 -o lo        -> RETURN   loop breaker: the sidecar's inbound hop to the app uses
                                          this source, so that hop is not captured again
  2 proxy uid, -o lo, ! -d 127.0.0.1 -> MESHNS_IN_REDIRECT
                                          the sidecar's outbound hop to the pod's *own* address (an
                                          app calling its own service): send it to the inbound
                                          listener, so the call crosses both sidecar halves
  3 -o lo, not proxy uid      -> RETURN   the app talking to itself over loopback or its own
                                          address is not mesh traffic
  4 proxy uid                 -> RETURN   loop breaker: the sidecar's own upstream connections
  5-7 the same three for the proxy gid (a proxy run under another uid but the proxy group)
  8 -d 127.0.0.1              -> RETURN   plain localhost is never captured
  9 --dport P / -d CIDR       -> RETURN   user exclusions, after the loop breakers
  10 everything else          -> MESHNS_REDIRECT -> REDIRECT 15001 (the outbound listener)

The loop breakers (1, 4, 7) are what keep the sidecar's own connections from being redirected
back into itself; rules 2 and 5 must come before 4 and 7 or the app-calls-itself path is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from meshns import ports
from meshns.intercept.spec import InterceptSpec

NAT_TABLE = "nat"
INBOUND_CHAIN = "MESHNS_INBOUND"
REDIRECT_CHAIN = "MESHNS_REDIRECT"
IN_REDIRECT_CHAIN = "MESHNS_IN_REDIRECT"
OUTPUT_CHAIN = "MESHNS_OUTPUT"
CHAIN_PREFIX = "MESHNS_"
LOCALHOST = "127.0.0.1/32"
LOOPBACK_IF = "lo"
COMMENT_PREFIX = "meshns: "


@dataclass(frozen=True)
class Operand:
    """A value a rule tests, optionally negated (iptables' ``! -d 127.0.0.1/32``)."""

    value: str
    negated: bool = False


def not_(value: str) -> Operand:
    return Operand(value, negated=True)


@dataclass(frozen=True)
class TcpDport:
    """``-m tcp [!] --dport N``; needs ``-p tcp`` on the rule, as in iptables."""

    port: int
    negated: bool = False


@dataclass(frozen=True)
class Owner:
    """``-m owner [!] --uid-owner N`` or ``--gid-owner N`` (only valid in OUTPUT-hook chains)."""

    kind: Literal["uid", "gid"]
    ident: int
    negated: bool = False


@dataclass(frozen=True)
class Comment:
    """``-m comment --comment TEXT``: why the rule exists, visible in iptables-save."""

    text: str


@dataclass(frozen=True)
class OtherMatch:
    """A match we did not plan, seen when reading back; kept so a diff can show it."""

    name: str
    args: str


Match = TcpDport | Owner | Comment | OtherMatch


@dataclass(frozen=True)
class Target:
    """``-j NAME`` (a chain, RETURN, REDIRECT...) with REDIRECT's ``--to-ports``."""

    name: str
    to_ports: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ``-A CHAIN ...`` line. Fields mirror iptables' own rule structure."""

    chain: str
    target: Target
    src: Operand | None = None
    dst: Operand | None = None
    in_interface: Operand | None = None
    out_interface: Operand | None = None
    protocol: Operand | None = None
    matches: tuple[Match, ...] = field(default=())

    @property
    def comment(self) -> str | None:
        return next((m.text for m in self.matches if isinstance(m, Comment)), None)


@dataclass(frozen=True)
class RulePlan:
    """Everything the executor installs: new chains (in creation order) and rules (in order).

    Rules whose chain is not in ``chains`` are jumps from built-in chains (PREROUTING, OUTPUT).
    """

    table: str
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]

    def hook_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.chain not in self.chains)


_TCP = Operand("tcp")


def _rule(
    chain: str,
    why: str,
    target: Target,
    *matches: Match,
    src: Operand | None = None,
    dst: Operand | None = None,
    out_interface: Operand | None = None,
    protocol: Operand | None = None,
) -> Rule:
    # The comment goes last, where `iptables -A ... -m comment` puts it when written by hand.
    return Rule(
        chain,
        target,
        src=src,
        dst=dst,
        out_interface=out_interface,
        protocol=protocol,
        matches=(*matches, Comment(COMMENT_PREFIX + why)),
    )


def _jump(chain: str) -> Target:
    return Target(chain)


_RETURN = Target("RETURN")


def _inbound(spec: InterceptSpec) -> list[Rule]:
    # Prometheus scrapes the sidecar itself on the pod address (Istio's 15090 rule).
    rules = [_rule(INBOUND_CHAIN, f"sidecar metrics port {ports.METRICS_PORT}", _RETURN,
                   TcpDport(ports.METRICS_PORT), protocol=_TCP)]
    rules += [
        _rule(INBOUND_CHAIN, f"inbound port {p} excluded", _RETURN, TcpDport(p), protocol=_TCP)
        for p in spec.exclude_inbound_ports
    ]
    rules.append(_rule(INBOUND_CHAIN, "inbound TCP to the sidecar", _jump(IN_REDIRECT_CHAIN), protocol=_TCP))
    return rules


def _owner_rules(kind: Literal["uid", "gid"], ident: int) -> list[Rule]:
    lo = Operand(LOOPBACK_IF)
    return [
        _rule(
            OUTPUT_CHAIN,
            f"proxy {kind} to own pod address goes to inbound listener",
            _jump(IN_REDIRECT_CHAIN),
            Owner(kind, ident),
            dst=not_(LOCALHOST),
            out_interface=lo,
            protocol=_TCP,
        ),
        _rule(
            OUTPUT_CHAIN,
            f"app on loopback, not proxy {kind}",
            _RETURN,
            Owner(kind, ident, True),
            out_interface=lo,
        ),
        _rule(OUTPUT_CHAIN, f"loop breaker: proxy {kind} {ident}", _RETURN, Owner(kind, ident)),
    ]


def _outbound(spec: InterceptSpec) -> list[Rule]:
    rules = [
        _rule(
            OUTPUT_CHAIN,
            "loop breaker: inbound hop from " + spec.inbound_source_ip,
            _RETURN,
            src=Operand(spec.inbound_source_ip + "/32"),
            out_interface=Operand(LOOPBACK_IF),
        ),
        *_owner_rules("uid", spec.proxy_uid),
        *_owner_rules("gid", spec.proxy_gid),
        _rule(OUTPUT_CHAIN, "localhost is never captured", _RETURN, dst=Operand(LOCALHOST)),
    ]
    rules += [
        _rule(OUTPUT_CHAIN, f"outbound port {p} excluded", _RETURN, TcpDport(p), protocol=_TCP)
        for p in spec.exclude_outbound_ports
    ]
    rules += [
        _rule(OUTPUT_CHAIN, f"outbound CIDR {c} excluded", _RETURN, dst=Operand(c))
        for c in spec.exclude_outbound_cidrs
    ]
    rules.append(_rule(OUTPUT_CHAIN, "outbound TCP to the sidecar", _jump(REDIRECT_CHAIN)))
    return rules


def plan_rules(spec: InterceptSpec) -> RulePlan:
    """Compute the rules for ``spec``. Pure: same spec, same plan."""
    rules = [
        _rule(REDIRECT_CHAIN, "to outbound listener", Target("REDIRECT", spec.outbound_port), protocol=_TCP),
        _rule(IN_REDIRECT_CHAIN, "to inbound listener", Target("REDIRECT", spec.inbound_port), protocol=_TCP),
        _rule("PREROUTING", "capture inbound TCP", _jump(INBOUND_CHAIN), protocol=_TCP),
        *_inbound(spec),
        _rule("OUTPUT", "capture outbound TCP", _jump(OUTPUT_CHAIN), protocol=_TCP),
        *_outbound(spec),
    ]
    chains = (INBOUND_CHAIN, REDIRECT_CHAIN, IN_REDIRECT_CHAIN, OUTPUT_CHAIN)
    return RulePlan(NAT_TABLE, chains, tuple(rules))
