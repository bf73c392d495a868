"""Install a RulePlan with python-iptables, read it back, report counters.

Backend: python-iptables drives libiptc, i.e. the *legacy* xtables backend, not nf_tables. That is
deliberate and fine inside the pod namespaces meshns creates (nothing else writes their nat
table), but it means the rules are visible with ``iptables-legacy-save``, not with an nft-based
``iptables-save`` (which only warns that legacy tables exist).

Everything here acts on the *current* network namespace; the ``*_in_netns`` wrappers run it in a
forked child that entered the pod's namespace (meshns.netns.child), never in the caller.

Idempotency: one libiptc handle, autocommit off, one commit. Our chains are created if missing
and flushed, every jump to a MESHNS_ chain in the built-in chains is removed, stale MESHNS_
chains are deleted, then the plan is appended. Re-running therefore leaves exactly one copy of
every rule, and the kernel swaps the whole table in atomically at commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from meshns.errors import MeshnsError, PermissionError_, SystemFailure
from meshns.intercept.plan import (
    CHAIN_PREFIX,
    NAT_TABLE,
    Comment,
    Match,
    Operand,
    OtherMatch,
    Owner,
    Rule,
    RulePlan,
    Target,
    TcpDport,
)
from meshns.intercept.render import BUILTIN_CHAINS, render_save
from meshns.intercept.xtlibs import quick_iptc_import
from meshns.netns.child import run_in_netns

with quick_iptc_import():  # tells python-iptables where its libraries are (intercept/xtlibs.py)
    import iptc
    from iptc.xtables import XTablesError

# The lock iptables-legacy itself takes (iptables -w), so we never interleave a read-modify-commit
# with an iptables binary. It is a host-wide file; holding it for one commit is cheap.
XTABLES_LOCK = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
LOCK_WAIT_S = 10.0
_IPTC_ERRORS = (iptc.IPTCError, XTablesError, ValueError, OSError)


def _fail(action: str, exc: BaseException) -> MeshnsError:
    # libiptc hands its strerror text back as bytes; show it as text.
    detail = re.sub(r"b'([^']*)'", r"\1", str(exc))
    if os.geteuid() != 0:
        return PermissionError_(f"{action}: needs root: {detail}")
    if "can't commit" in detail:
        detail += " (the kernel refused the rule set: a match or target not allowed in its chain?)"
    return SystemFailure(f"{action}: {type(exc).__name__}: {detail}")


@contextlib.contextmanager
def _xtables_lock() -> Iterator[None]:
    fd = os.open(XTABLES_LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SystemFailure(
                        f"another iptables holds {XTABLES_LOCK} for more than {LOCK_WAIT_S:g} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing drops the flock


@contextlib.contextmanager
def _nat_table(action: str) -> Iterator[Any]:
    """A fresh libiptc handle on the nat table of *this* namespace, autocommit off.

    iptc caches Table objects per process; a cached handle may have been opened in another
    namespace before a fork, so we always re-initialise (refresh) after turning autocommit off,
    otherwise refresh would commit the stale handle first. Uncommitted changes are discarded.
    """
    try:
        table = iptc.Table(NAT_TABLE)
        saved = table.autocommit
        table.autocommit = False
        table.refresh()
    except _IPTC_ERRORS as exc:
        raise _fail(f"{action}: cannot open the nat table", exc) from exc
    try:
        yield table
    except _IPTC_ERRORS as exc:
        raise _fail(action, exc) from exc
    finally:
        with contextlib.suppress(*_IPTC_ERRORS):
            table.refresh()  # autocommit is off: frees without committing
        table.autocommit = saved


def _neg(operand: Operand) -> str:
    return ("!" if operand.negated else "") + operand.value


def _add_match(rule: Any, match: Match) -> None:
    if isinstance(match, TcpDport):
        rule.create_match("tcp").dport = ("!" if match.negated else "") + str(match.port)
    elif isinstance(match, Owner):
        setattr(
            rule.create_match("owner"),
            f"{match.kind}_owner",
            ("!" if match.negated else "") + str(match.ident),
        )
    elif isinstance(match, Comment):
        rule.create_match("comment").comment = match.text
    else:
        raise SystemFailure(f"cannot install unplanned match {match!r}")


def _set_target(rule: Any, target: Target, chains: frozenset[str]) -> None:
    if target.name in chains:
        # A jump to a user chain. iptc.Target(rule, "CHAIN") would instantiate (and so create in
        # the namespace) every table just to look the name up; a standard target whose name is
        # the chain is what iptables itself builds, and libiptc maps it to the jump.
        jump = iptc.Target(rule, "ACCEPT")
        jump.standard_target = target.name
        rule.target = jump
        return
    rule.target = iptc.Target(rule, target.name)
    if target.to_ports is not None:
        rule.target.to_ports = str(target.to_ports)


def _to_iptc(rule: Rule, chains: frozenset[str]) -> Any:
    out = iptc.Rule()
    for attr in ("src", "dst", "in_interface", "out_interface", "protocol"):
        operand: Operand | None = getattr(rule, attr)
        if operand is not None:
            setattr(out, attr, _neg(operand))
    for match in rule.matches:
        _add_match(out, match)
    _set_target(out, rule.target, chains)
    return out


def _ours(table: Any) -> list[str]:
    return sorted(c.name for c in table.chains if c.name.startswith(CHAIN_PREFIX))


def apply_plan(plan: RulePlan) -> None:
    """Install ``plan`` in the current namespace's nat table, idempotently, in one commit."""
    chains = frozenset(plan.chains)
    with _xtables_lock(), _nat_table("installing interception rules") as table:
        for hook in BUILTIN_CHAINS:
            chain = iptc.Chain(table, hook)
            for rule in chain.rules:
                if rule.target.name.startswith(CHAIN_PREFIX):
                    chain.delete_rule(rule)
        stale = [name for name in _ours(table) if name not in chains]
        for name in stale:  # flush all first: stale chains may jump to each other
            table.flush_entries(name)
        for name in stale:
            table.delete_chain(name)
        for name in plan.chains:
            if table.is_chain(name):
                table.flush_entries(name)
            else:
                table.create_chain(name)
        for rule in plan.rules:
            iptc.Chain(table, rule.chain).append_rule(_to_iptc(rule, chains))
        table.commit()


# --- reading back -------------------------------------------------------------------------------


def _operand(text: str | None, *, address: bool = False) -> Operand | None:
    if text is None:
        return None
    negated = text.startswith("!")
    value = text.removeprefix("!")
    if address:  # libiptc gives "a.b.c.d/255.255.255.255"; iptables-save prints a prefix length
        net = ipaddress.IPv4Network(value, strict=False)
        if net.prefixlen == 0 and not negated:
            return None
        value = str(net)
    return Operand(value, negated)


def _param(params: dict[str, list[str]], key: str) -> tuple[str, bool]:
    values = params[key]
    return values[-1], values[0] == "!"


def _from_match(match: Any) -> Match:
    name = str(match.name)
    params: dict[str, list[str]] = match.get_all_parameters()
    if name == "tcp" and set(params) == {"dport"}:
        port, negated = _param(params, "dport")
        return TcpDport(int(port), negated)
    if name == "owner" and len(params) == 1 and set(params) <= {"uid-owner", "gid-owner"}:
        key = next(iter(params))
        ident, negated = _param(params, key)
        return Owner("uid" if key == "uid-owner" else "gid", int(ident), negated)
    if name == "comment" and set(params) == {"comment"}:
        return Comment(" ".join(params["comment"]))
    words: list[str] = []
    for key, values in params.items():  # best effort: only used to show an unexpected rule
        negated = values[:1] == ["!"]
        words += ["!"] * negated + [f"--{key}", *values[negated:]]
    return OtherMatch(name, " ".join(words))


def _from_iptc(chain: str, rule: Any) -> Rule:
    target_params: dict[str, list[str]] = rule.target.get_all_parameters()
    to_ports = target_params.get("to-ports")
    protocol = None if rule.protocol in ("ip", "0", "all") else str(rule.protocol)
    return Rule(
        chain,
        Target(str(rule.target.name), int(to_ports[0]) if to_ports else None),
        src=_operand(rule.src, address=True),
        dst=_operand(rule.dst, address=True),
        in_interface=_operand(rule.in_interface),
        out_interface=_operand(rule.out_interface),
        protocol=_operand(protocol),
        matches=tuple(_from_match(m) for m in rule.matches),
    )


def _installed(table: Any) -> tuple[RulePlan, list[tuple[Rule, int]]]:
    """Our chains and the built-in chains' jumps to them, with each rule's packet counter."""
    ours = _ours(table)
    found: list[tuple[Rule, int]] = []
    for hook in BUILTIN_CHAINS:
        for raw in iptc.Chain(table, hook).rules:
            if raw.target.name.startswith(CHAIN_PREFIX):
                found.append((_from_iptc(hook, raw), int(raw.get_counters()[0])))
    for name in ours:
        for raw in iptc.Chain(table, name).rules:
            found.append((_from_iptc(name, raw), int(raw.get_counters()[0])))
    return RulePlan(NAT_TABLE, tuple(ours), tuple(r for r, _ in found)), found


def read_installed() -> str:
    """What the kernel holds for us, rendered like render_save (equal to it after apply_plan)."""
    with _nat_table("reading interception rules") as table:
        plan, _ = _installed(table)
        return render_save(plan)


def rule_counters() -> list[tuple[str, str, int]]:
    """(chain, rule comment, packets) for our rules, in iptables-save order.

    In the nat table only a connection's first packet is counted, so packets == connections.
    """
    with _nat_table("reading interception counters") as table:
        _, found = _installed(table)
    # _installed walks built-in chains in hook order, then ours sorted: iptables-save's order.
    return [(rule.chain, rule.comment or "", packets) for rule, packets in found]


# --- in a pod's namespace -----------------------------------------------------------------------


def apply_in_netns(netns_name: str, plan: RulePlan) -> None:
    run_in_netns(netns_name, apply_plan, plan)


def read_installed_in_netns(netns_name: str) -> str:
    return run_in_netns(netns_name, read_installed)


def counters_in_netns(netns_name: str) -> list[tuple[str, str, int]]:
    return run_in_netns(netns_name, rule_counters)
