"""Two-way sync between this host's registry and etcd, decided as a three-way merge (pure).

Config documents and revocations may be changed on any host: `meshns apply` on host A writes
A's registry, and A's agent must carry it to etcd; B's agent must carry it from etcd into B's
registry. Comparing the two sides alone cannot tell "deleted here" from "new there", so the
agent remembers the *base*: the value both sides last agreed on (kept in the agent's state
file). Per key, with L = local, R = remote (etcd), B = base:

    L == R            agreed: nothing to do; the base becomes L
    L == B, R != B    only etcd changed: pull R (a missing R deletes locally)
    R == B, L != B    only this host changed: push L (a missing L deletes in etcd)
    otherwise         both changed: a present value beats a deletion (no document is lost
                      to a race), else the later stamp (applied_at) wins, etcd on a tie

Every rule is idempotent, so a round cut short (etcd down, agent killed) is simply decided
again from what is there next time: nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Value:
    """A document's text (compared) and when it was applied (only breaks conflicts)."""

    text: str
    stamp: float = 0.0


@dataclass
class Plan(Generic[K]):
    push_put: dict[K, Value] = field(default_factory=dict)
    push_delete: list[K] = field(default_factory=list)
    pull_put: dict[K, Value] = field(default_factory=dict)
    pull_delete: list[K] = field(default_factory=list)
    base: dict[K, str] = field(default_factory=dict)  # what both sides hold once the plan is done

    @property
    def pushes(self) -> bool:
        return bool(self.push_put or self.push_delete)

    @property
    def pulls(self) -> bool:
        return bool(self.pull_put or self.pull_delete)


def _text(v: Value | None) -> str | None:
    return None if v is None else v.text


def plan_sync(local: Mapping[K, Value], remote: Mapping[K, Value], base: Mapping[K, str]) -> Plan[K]:
    plan: Plan[K] = Plan()
    for key in sorted({*local, *remote, *base}, key=repr):
        lv, rv, b = local.get(key), remote.get(key), base.get(key)
        lt, rt = _text(lv), _text(rv)
        if lt == rt:
            winner = lv
        elif lt == b:
            winner = rv
        elif rt == b:
            winner = lv
        elif lv is None or rv is None:
            winner = lv or rv
        else:
            winner = lv if lv.stamp > rv.stamp else rv
        if winner is not None:
            plan.base[key] = winner.text
        if _text(winner) != lt:
            if winner is None:
                plan.pull_delete.append(key)
            else:
                plan.pull_put[key] = winner
        if _text(winner) != rt:
            if winner is None:
                plan.push_delete.append(key)
            else:
                plan.push_put[key] = winner
    return plan
