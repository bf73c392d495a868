"""A cursor over one parsed YAML value that knows its own field path.

Every typed read either returns a Python value of the promised type or raises FieldError with
the dotted path of the bad field (``spec.http[0].route[1].weight``), so the object parsers read
like the Istio reference and never format a path themselves. Warnings for valid-but-ignored
Istio fields are collected on the shared Ctx and turned into messages by parse.py, which also
knows which document they belong to.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from typing import NoReturn

from meshns.istio.schema import PERCENT, Schema


class FieldError(Exception):
    """One bad field; parse.py adds the document it came from and raises UserError."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass
class Ctx:
    warnings: list[str] = field(default_factory=list)  # "<path> <what>", prefixed later


def show(value: object) -> str:
    """A value as the user wrote it (JSON spelling), cut short so a huge blob can't flood an error."""
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# Go's time.ParseDuration grammar (Istio reads durations with it, so "1m30s" and "0.5s" both work).
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_s(text: str) -> float | None:
    """Seconds for a Go/protobuf duration string, or None if it is not one."""
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _DURATION_UNIT_S[m.group(2)]
        pos = m.end()
    return total if text else None


class Node:
    __slots__ = ("ctx", "path", "value")

    def __init__(self, value: object, path: str, ctx: Ctx) -> None:
        self.value = value
        self.path = path
        self.ctx = ctx

    def fail(self, message: str) -> NoReturn:
        raise FieldError(self.path, message)

    def warn(self, message: str) -> None:
        self.ctx.warnings.append(f"{self.path} {message}")

    def _child(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    # -- containers ------------------------------------------------------------------------------

    def obj(self, schema: Schema) -> Node:
        """Check this is a mapping of Istio's `schema`: unknown keys fail, unimplemented ones warn."""
        mapping = self._mapping(f"an object ({schema.name})")
        for key in mapping:
            path = self._child(key)
            if key not in schema.known:
                hint = difflib.get_close_matches(key, sorted(schema.known), n=1)
                did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
                raise FieldError(path, f"unknown field (not in Istio's {schema.name}){did_you_mean}")
            if key in schema.ignored and mapping[key] is not None:
                self.ctx.warnings.append(f"{path} is not implemented by meshns; ignored")
        return self

    def _mapping(self, what: str) -> dict[str, object]:
        if not isinstance(self.value, dict):
            self.fail(f"must be {what}, got {show(self.value)}")
        return self.value

    def has(self, key: str) -> bool:
        return self._mapping("an object").get(key) is not None

    def get(self, key: str) -> Node | None:
        """The field, or None when absent or null (protobuf JSON reads null as 'not set')."""
        value = self._mapping("an object").get(key)
        return None if value is None else Node(value, self._child(key), self.ctx)

    def req(self, key: str) -> Node:
        node = self.get(key)
        if node is None:
            raise FieldError(self._child(key), "required")
        return node

    def items(self, what: str = "an object") -> list[tuple[str, Node]]:
        """Entries of a free-form map (labels, header matches): keys are data, not field names."""
        return [(k, Node(v, self._child(k), self.ctx)) for k, v in self._mapping(what).items()]

    def list_(self, *, non_empty: bool = False) -> list[Node]:
        if not isinstance(self.value, list):
            self.fail(f"must be a list, got {show(self.value)}")
        if non_empty and not self.value:
            self.fail("must not be empty")
        return [Node(v, f"{self.path}[{i}]", self.ctx) for i, v in enumerate(self.value)]

    # -- scalars ---------------------------------------------------------------------------------

    def str_(self, *, pattern: re.Pattern[str] | None = None, what: str = "a string") -> str:
        if not isinstance(self.value, str) or (pattern is not None and not pattern.fullmatch(self.value)):
            self.fail(f"must be {what}, got {show(self.value)}")
        return self.value

    def int_(self, lo: int, hi: int) -> int:
        # bool is an int in Python; YAML `true` is never meant as a number.
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.fail(f"must be an integer {lo}..{hi}, got {show(v)}")
        return v

    def bool_(self) -> bool:
        if not isinstance(self.value, bool):
            self.fail(f"must be true or false, got {show(self.value)}")
        return self.value

    def number(self, lo: float, hi: float) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
            self.fail(f"must be a number {lo:g}..{hi:g}, got {show(v)}")
        return float(v)

    def duration_s(self, *, allow_zero: bool = False) -> float:
        seconds = parse_duration_s(self.value) if isinstance(self.value, str) else None
        if seconds is None:
            self.fail(f'must be a duration like "1s", "250ms" or "1.5m", got {show(self.value)}')
        if seconds <= 0 and not (allow_zero and seconds == 0):
            self.fail(f"must be a positive duration, got {show(self.value)}")
        return seconds

    def percentage(self) -> float:
        """Istio's Percent message: {value: 0..100}."""
        return self.obj(PERCENT).req("value").number(0, 100)

