"""meshns.fncache: dataclasses made with the install-time table get the same methods as without
it, and a missing, foreign or damaged table changes nothing."""

from __future__ import annotations

import dataclasses
import marshal
import sys
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from meshns import fncache


def _shapes() -> list[type]:
    """Classes of the kinds meshns uses (and a few more), made afresh on each call. This module
    has ``from __future__ import annotations``: code compiled with our flags would differ."""

    @dataclass(frozen=True)
    class Frozen:
        name: str
        port: int = 80
        tags: tuple[str, ...] = ()
        labels: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @dataclass(order=True, unsafe_hash=True)
    class Ordered:
        a: int
        b: str = "x"

    @dataclass(kw_only=True, slots=True)
    class KwSlots:
        a: int
        b: list[int] = field(default_factory=list)

    @dataclass(eq=False, repr=False)
    class Plain:
        a: int
        seed: InitVar[int] = 0
        K: ClassVar[int] = 3

        def __post_init__(self, seed: int) -> None:
            self.a += seed

    return [Frozen, Ordered, KwSlots, Plain]


def _exercise(classes: list[type]) -> list[Any]:
    Frozen, Ordered, KwSlots, Plain = classes
    f = Frozen("web", tags=("a",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.port = 1
    return [
        repr(f), f == Frozen("web", 80, ("a",)), hash(f) == hash(Frozen("web", 80, ("a",))),
        sorted([Ordered(2), Ordered(1, "y")]) == [Ordered(1, "y"), Ordered(2)], hash(Ordered(1)) == hash(Ordered(1)),
        repr(KwSlots(a=1)), KwSlots(a=1) == KwSlots(a=1, b=[]), hasattr(KwSlots(a=1), "__dict__"),
        Plain(1, 5).a, Plain(1) == Plain(1),
        [vars(c)["__init__"].__annotations__ for c in classes],
        [vars(c)["__init__"].__defaults__ for c in classes],
    ]


def _methods(classes: list[type]) -> list[bytes]:
    return [getattr(c, m).__code__.co_code for c in classes
            for m in ("__init__", "__repr__", "__eq__", "__lt__", "__hash__", "__setattr__")
            if hasattr(getattr(c, m, None), "__code__")]


@pytest.fixture
def stock_exec(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any], None]:
    """Run with dataclasses' plain ``exec`` (the table meshns/__init__ may have installed is put
    back after the test); returns a setter for another stand-in."""
    monkeypatch.delattr(dataclasses, "exec", raising=False)
    monkeypatch.setattr(fncache, "_table", {})

    def use(fn: Any) -> None:
        if fn is None:
            monkeypatch.delattr(dataclasses, "exec", raising=False)
        else:
            monkeypatch.setattr(dataclasses, "exec", fn, raising=False)

    return use


def test_classes_from_the_table_match_classes_made_without_it(tmp_path: Path, stock_exec: Callable[[Any], None]) -> None:
    plain = _shapes()
    want, want_code = _exercise(plain), _methods(plain)

    recorder = fncache.Recorder()

    stock_exec(recorder)
    # The recorder keeps meshns's classes only: these look like one.
    recorded = _shapes_as_meshns(recorder)
    assert recorded and _exercise(recorded) == want

    path = tmp_path / "table.bin"
    fncache.write(path, recorder.table)
    stock_exec(None)
    assert fncache.install(path)
    compiled: list[str] = []
    real_compile = compile

    def counting_compile(source: str, *args: Any, **kwargs: Any) -> Any:
        compiled.append(source)
        return real_compile(source, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fncache, "compile", counting_compile, raising=False)
        cached = _shapes_as_meshns(None)
        assert compiled == []  # every generated method came from the table
        assert _exercise(cached) == want
        assert _methods(cached) == want_code
        # A class whose methods are not in the table (another package's, or one added since the
        # table was written): compiled from its text, exactly as exec would.
        other = _other()
        assert compiled
    stock_exec(None)
    stock = _other()
    assert vars(other)["__init__"].__annotations__ == vars(stock)["__init__"].__annotations__
    assert _methods([other]) == _methods([stock])
    assert (repr(other(1)), other(1) == other(1, "w")) == (repr(stock(1)), True)


def _other() -> type:
    @dataclass(frozen=True)
    class Other:
        zeta: int
        omega: str = "w"

    return Other


def _shapes_as_meshns(recorder: fncache.Recorder | None) -> list[type]:
    """_shapes with dataclasses believing they are in a meshns module (the recorder keeps only
    those); the classes' own module does not matter to the generated code."""
    g = globals()
    saved = g["__name__"]
    g["__name__"] = "meshns.test_shapes"
    sys.modules["meshns.test_shapes"] = sys.modules[saved]  # dataclasses looks the module up
    try:
        return _shapes()
    finally:
        g["__name__"] = saved
        del sys.modules["meshns.test_shapes"]


def test_the_recorder_keeps_only_meshns_classes(stock_exec: Callable[[Any], None]) -> None:
    recorder = fncache.Recorder()
    stock_exec(recorder)
    _exercise(_shapes())  # this module is tests.unit..., not meshns
    assert recorder.table == {}


@pytest.mark.parametrize("content", [
    None,  # no table
    b"",
    b"something else entirely",
    fncache.HEADER + b"\x00garbage",
    b"meshns-fncache-2\n" + b"\x00\x00\x00\x00" + marshal.dumps({"x": b"y"}),  # another Python's magic
    fncache.HEADER + marshal.dumps(["not", "a", "dict"]),
])
def test_a_missing_or_foreign_table_changes_nothing(tmp_path: Path, stock_exec: Callable[[Any], None],
                                                    content: bytes | None) -> None:
    path = tmp_path / "table.bin"
    if content is not None:
        path.write_bytes(content)
    assert fncache.load(path) == {}
    assert not fncache.install(path)
    assert not hasattr(dataclasses, "exec")
    assert _exercise(_shapes()) == _exercise(_shapes())


def test_a_damaged_entry_is_compiled_from_its_text(tmp_path: Path, stock_exec: Callable[[Any], None]) -> None:
    recorder = fncache.Recorder()
    stock_exec(recorder)
    want = _exercise(_shapes_as_meshns(recorder))
    path = tmp_path / "table.bin"
    path.write_bytes(fncache.HEADER + marshal.dumps({text: b"\xff broken" for text in recorder.table}))
    stock_exec(None)
    assert fncache.install(path)
    assert _exercise(_shapes_as_meshns(None)) == want
