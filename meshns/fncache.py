"""The code ``dataclasses`` compiles for each class's generated methods, compiled once at install
time instead of at every process start.

``@dataclass`` writes each generated method (``__init__``, ``__eq__``, ``__repr__``,
``__setattr__`` of a frozen class...) as source text and runs ``exec`` on it when the class
statement runs. Compiling that text is about three quarters of the decorator's cost: ~1 ms per
class on the 2-core VM, and a sidecar loads ~50 dataclasses, the CLI more, on every
`meshns create`. The text depends only on the class's fields and options, so its compiled code is
the same in every process.

``install`` (called by ``meshns/__init__``, before any of our dataclasses exists) loads the table
written by ``python -m meshns.fncache`` (scripts/provision.sh and scripts/bench.sh run it after
compileall) and gives the ``dataclasses`` module an ``exec`` that looks the text up there and
compiles only what is missing, exactly as ``exec`` would (``dont_inherit``: no ``from __future__``
flags of ours leak in). Keyed by the full text, so a stale table can never give a class the wrong
code, only miss. No table (or one written by another Python): nothing is changed. Other packages'
dataclasses created after ``install`` use the table too, and miss.

The table sits in meshns's ``__pycache__`` beside the bytecode, written by root like it, and is as
trusted: marshal data is code, exactly as a .pyc is.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import importlib
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType
from typing import Any

HEADER = b"meshns-fncache-2\n" + importlib.util.MAGIC_NUMBER

# text -> marshalled code. Each entry is unmarshalled when a class needs it: unmarshalling all of
# them (~540 code objects) at every start would cost a good part of what the table saves.
_table: dict[str, bytes] = {}


def table_path() -> Path:
    return Path(__file__).resolve().parent / "__pycache__" / f"fncache.{sys.implementation.cache_tag}.bin"


def _exec(source: Any, globals: Any = None, locals: Any = None) -> None:
    if type(source) is str:
        code = None
        blob = _table.get(source)
        if blob is not None:
            with contextlib.suppress(ValueError, EOFError, TypeError):  # damaged: compiled below
                code = marshal.loads(blob)  # noqa: S302 - our own table, as trusted as a .pyc
        # Never exec the text here: exec inherits the calling frame's __future__ flags, and this
        # module's ``annotations`` would turn the generated methods' annotations into strings.
        source = code if code is not None else compile(source, "<string>", "exec", dont_inherit=True)
    builtins.exec(source, globals, locals)  # noqa: S102 - what dataclasses itself does


def load(path: Path) -> dict[str, bytes]:
    """The table at ``path``; empty if absent, unreadable or written by another Python."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if not data.startswith(HEADER):
        return {}
    try:
        table = marshal.loads(data[len(HEADER):])  # noqa: S302 - see the module's last paragraph
    except (ValueError, EOFError, TypeError):
        return {}
    if not isinstance(table, dict):
        return {}
    return {k: v for k, v in table.items() if isinstance(k, str) and isinstance(v, bytes)}


def install(path: Path | None = None) -> bool:
    """Use the table for dataclasses made from now on; False (nothing changed) without one."""
    table = load(table_path() if path is None else path)
    if not table:
        return False
    _table.update(table)
    dataclasses.exec = _exec  # type: ignore[attr-defined]  # module globals come before builtins
    return True


class Recorder:
    """Stands in for ``exec`` in ``dataclasses`` while modules are imported: compiles each text
    as ``exec`` would and runs it, keeping the code of meshns's own classes (``dataclasses``
    passes the class's module globals). Other packages' classes would only make the table, which
    every process loads whole, larger."""

    def __init__(self) -> None:
        self.table: dict[str, CodeType] = {}

    def __call__(self, source: Any, globals: Any = None, locals: Any = None) -> None:
        if type(source) is str:
            code = self.table.get(source) or compile(source, "<string>", "exec", dont_inherit=True)
            if isinstance(globals, dict) and str(globals.get("__name__", "")).startswith("meshns."):
                self.table[source] = code
            source = code
        builtins.exec(source, globals, locals)  # noqa: S102 - what dataclasses itself does


def modules() -> list[str]:
    """Every meshns module but ``__main__`` ones (importing those runs a program)."""
    import pkgutil  # noqa: PLC0415 - only here, at install time: every process imports this module

    import meshns  # noqa: PLC0415 - this module is imported by meshns/__init__ itself

    names = ["meshns"]
    for info in pkgutil.walk_packages(meshns.__path__, prefix="meshns."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def write(path: Path, table: dict[str, CodeType]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(HEADER + marshal.dumps({text: marshal.dumps(code) for text, code in table.items()}))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main() -> int:
    """Import every meshns module with a recorder in place and write the table. (Only meshns and
    this module are imported before the recorder is in place, and they define no dataclasses; any
    table loaded by then is not consulted: the recorder compiles every text afresh.)"""
    recorder = Recorder()
    dataclasses.exec = recorder  # type: ignore[attr-defined]
    failed = []
    for name in modules():
        try:
            importlib.import_module(name)
        except Exception as exc:  # an optional dependency missing: that module's classes miss
            failed.append(f"{name}: {exc}")
    del dataclasses.exec  # type: ignore[attr-defined]
    write(table_path(), recorder.table)
    for line in failed:
        print(f"fncache: not imported: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
