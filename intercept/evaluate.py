"""Which interception rule a new outbound TCP connection meets: a pure walk of a RulePlan.

Theory of operation. The kernel runs the nat OUTPUT hook on the first packet of a connection
opened inside the pod. We walk the plan the same way: start in the built-in OUTPUT chain, try
each rule in order with iptables' match semantics (``!`` negation, CIDR prefixes, ``-o`` with the
``+`` wildcard, owner uid/gid, ``-p tcp --dport``), follow jumps into our chains, pop back on
RETURN or on falling off a user chain, and stop at REDIRECT (captured) or another terminal target.
Falling off the built-in chain means its policy: ACCEPT, i.e. the connection goes out untouched.

The caller says which interface the packet leaves on: destinations that are the pod's own
addresses (its pod IP) and 127/8 leave on ``lo``; anything else on the pod's eth0. It is an
argument, not guessed here, so the function stays a function of its inputs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshns.intercept.plan import Comment, Operand, OtherMatch, Owner, Rule, RulePlan, TcpDport

# Targets that end the walk without capturing the connection.
_TERMINAL = frozenset({"ACCEPT", "DROP", "REJECT"})
_MAX_DEPTH = 16  # iptables allows deeper nesting, but a loop in a read-back plan must not hang us


@dataclass(frozen=True)
class Step:
    """One rule that matched on the way, with what it did."""

    chain: str
    rule: str  # the rule's comment ("" when it has none)
    target: str


@dataclass(frozen=True)
class Verdict:
    captured: bool
    chain: str  # where the walk ended: the REDIRECT or RETURN rule's chain, or OUTPUT for its policy
    rule: str  # that rule's comment, or "policy ACCEPT" when nothing decided
    target_port: int | None  # REDIRECT --to-ports when captured
    path: tuple[Step, ...] = ()  # every matching rule from OUTPUT to the decision


def _addr_match(op: Operand | None, addr: str | None) -> bool:
    if op is None:
        return True
    inside = addr is not None and ipaddress.IPv4Address(addr) in ipaddress.IPv4Network(op.value, strict=False)
    return inside != op.negated


def _iface_match(op: Operand | None, iface: str | None) -> bool:
    if op is None:
        return True
    if iface is None:
        hit = False
    elif op.value.endswith("+"):  # iptables' prefix wildcard: -o veth+
        hit = iface.startswith(op.value[:-1])
    else:
        hit = iface == op.value
    return hit != op.negated


def _rule_matches(rule: Rule, dst_ip: str, dst_port: int, uid: int, gid: int, out_interface: str,
                  src_ip: str | None) -> bool:
    proto_tcp = rule.protocol is None or ((rule.protocol.value == "tcp") != rule.protocol.negated)
    if not proto_tcp:
        return False
    if not (_addr_match(rule.src, src_ip) and _addr_match(rule.dst, dst_ip)):
        return False
    # OUTPUT has no input interface: a rule requiring one never matches (unless negated).
    if not (_iface_match(rule.in_interface, None) and _iface_match(rule.out_interface, out_interface)):
        return False
    for m in rule.matches:
        if isinstance(m, TcpDport):
            if rule.protocol is None or (m.port == dst_port) == m.negated:
                return False
        elif isinstance(m, Owner):
            ident = uid if m.kind == "uid" else gid
            if (m.ident == ident) == m.negated:
                return False
        elif isinstance(m, OtherMatch):
            return False  # a match we cannot model: treat as not matching, like a missing module
        elif isinstance(m, Comment):
            continue
    return True


def evaluate_output(plan: RulePlan, dst_ip: str, dst_port: int, uid: int, out_interface: str,
                    *, gid: int | None = None, src_ip: str | None = None) -> Verdict:
    """Walk the nat OUTPUT path for a TCP connection to ``dst_ip:dst_port`` opened by ``uid``.

    ``gid`` defaults to ``uid`` (the proxy runs as 1337:1337, apps usually as root:root).
    ``src_ip`` defaults to what the kernel picks for a connection leaving on ``lo``: 127.0.0.1 for
    127/8, the destination itself for the pod's own address; off the pod it is left unknown,
    which only ever fails a positive ``-s`` match (our only one is the 127.0.0.6 loop breaker).
    """
    gid = uid if gid is None else gid
    if src_ip is None and out_interface == "lo":
        src_ip = "127.0.0.1" if ipaddress.IPv4Address(dst_ip) in ipaddress.IPv4Network("127.0.0.0/8") else dst_ip
    by_chain: dict[str, list[Rule]] = {}
    for r in plan.rules:
        by_chain.setdefault(r.chain, []).append(r)
    path: list[Step] = []
    decided: Step | None = None  # the last RETURN: what let the connection through, if it goes through
    # The call stack: (chain, index of the next rule to try).
    stack: list[tuple[str, int]] = [("OUTPUT", 0)]
    while stack:
        chain, i = stack.pop()
        rules = by_chain.get(chain, [])
        while i < len(rules):
            rule = rules[i]
            i += 1
            if not _rule_matches(rule, dst_ip, dst_port, uid, gid, out_interface, src_ip):
                continue
            step = Step(chain, rule.comment or "", rule.target.name)
            path.append(step)
            target = rule.target.name
            if target == "REDIRECT":
                return Verdict(True, chain, step.rule, rule.target.to_ports, tuple(path))
            if target in _TERMINAL:
                return Verdict(False, chain, step.rule, None, tuple(path))
            if target == "RETURN":
                decided = step
                break  # back to the caller (or, in a built-in chain, to its policy)
            if target in by_chain or target in plan.chains:
                if len(stack) >= _MAX_DEPTH:
                    raise ValueError(f"jump depth above {_MAX_DEPTH} at {chain} -> {target}")
                stack.append((chain, i))
                stack.append((target, 0))
                break
            # Any other target (LOG, MARK...) does not end the walk in iptables either.
    # Off the end of OUTPUT: policy ACCEPT. The RETURN that got us there is the rule to name.
    if decided is not None:
        return Verdict(False, decided.chain, decided.rule, None, tuple(path))
    return Verdict(False, "OUTPUT", "policy ACCEPT", None, tuple(path))
