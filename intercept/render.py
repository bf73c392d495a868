"""Render a RulePlan as iptables-save text, byte for byte as iptables-legacy-save prints it.

Why mimic iptables-save exactly: the same renderer prints the plan (``--dry-run``, golden files)
and what was read back from the kernel, and the lines can be compared with the real
``iptables-legacy-save -t nat`` output line by line. So we follow its conventions:

- chains in libiptc's order: built-in chains in hook order, then user chains sorted by name
  (libiptc keeps them sorted; MESHNS_INBOUND sorts before MESHNS_IN_REDIRECT because 'B' < '_');
- options in the kernel struct's order: -s, -d, -i, -o, -p, then each -m match in rule order,
  then -j with the target's options; ``!`` precedes the option it negates;
- addresses with a prefix length (/32), strings quoted only when they need it
  (xtables_save_string).

Only our chains are declared (":MESHNS_X - [0:0]"), no counters, no timestamps, so the text is
deterministic. Rules in built-in chains are our jumps only.
"""

from __future__ import annotations

from meshns.intercept.plan import (
    Comment,
    Operand,
    OtherMatch,
    Owner,
    Rule,
    RulePlan,
    TcpDport,
)

# Hook order of the nat table's built-in chains, as libiptc lists them.
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")

_NO_QUOTE = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_string(value: str) -> str:
    """Quote like libxtables' xtables_save_string: bare if safe, else "..." with \\ escapes."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in value)
    return f'"{escaped}"'


def _opt(flag: str, operand: Operand | None) -> list[str]:
    if operand is None:
        return []
    return (["!"] if operand.negated else []) + [flag, operand.value]


def _match(match: TcpDport | Owner | Comment | OtherMatch) -> list[str]:
    if isinstance(match, TcpDport):
        return ["-m", "tcp", *(["!"] if match.negated else []), "--dport", str(match.port)]
    if isinstance(match, Owner):
        return ["-m", "owner", *(["!"] if match.negated else []), f"--{match.kind}-owner", str(match.ident)]
    if isinstance(match, Comment):
        return ["-m", "comment", "--comment", save_string(match.text)]
    return ["-m", match.name, *([match.args] if match.args else [])]


def render_rule(rule: Rule) -> str:
    """One ``-A CHAIN ...`` line in iptables-save's canonical option order."""
    words = ["-A", rule.chain]
    words += _opt("-s", rule.src)
    words += _opt("-d", rule.dst)
    words += _opt("-i", rule.in_interface)
    words += _opt("-o", rule.out_interface)
    words += _opt("-p", rule.protocol)
    for match in rule.matches:
        words += _match(match)
    words += ["-j", rule.target.name]
    if rule.target.to_ports is not None:
        words += ["--to-ports", str(rule.target.to_ports)]
    return " ".join(words)


def chain_order(plan: RulePlan) -> list[str]:
    """Chains in the order iptables-save lists them (see module docstring)."""
    used = {r.chain for r in plan.rules}
    builtins = [c for c in BUILTIN_CHAINS if c in used]
    # libiptc compares chain names with strcmp; Python's str order agrees for ASCII names.
    return builtins + sorted(plan.chains)


def render_save(plan: RulePlan) -> str:
    """iptables-save text for ``plan``: ``*nat``, our chain declarations, rules, ``COMMIT``."""
    unknown = {r.chain for r in plan.rules} - set(plan.chains) - set(BUILTIN_CHAINS)
    if unknown:
        # A rule in a chain the plan neither creates nor finds built in would vanish from the text.
        raise ValueError(f"rules in undeclared chains: {sorted(unknown)}")
    lines = [f"*{plan.table}"]
    lines += [f":{name} - [0:0]" for name in sorted(plan.chains)]
    for chain in chain_order(plan):
        lines += [render_rule(r) for r in plan.rules if r.chain == chain]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
