"""The fuzz harness (scripts/fuzz/fuzz_http1.py) on its seed corpus, without atheris: every
target's entry function runs on every seed, so the nightly fuzz run cannot rot unnoticed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "scripts" / "fuzz" / "fuzz_http1.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_http1", HARNESS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FUZZ = _load()
SEEDS = FUZZ.seeds()


@pytest.mark.parametrize("target", sorted(FUZZ.TARGETS))
def test_every_target_runs_clean_on_its_seeds(target: str) -> None:
    seeds = SEEDS[target]
    assert len(seeds) >= 10
    for data in seeds:
        FUZZ.TARGETS[target](data)  # a crash is any exception at all


@pytest.mark.parametrize("target", sorted(FUZZ.TARGETS))
def test_every_target_runs_clean_on_its_regressions(target: str) -> None:
    for data in FUZZ.regressions()[target]:
        FUZZ.TARGETS[target](data)


def test_the_regressions_are_there() -> None:
    assert len(FUZZ.regressions()["request"]) >= 2


def test_the_request_target_catches_a_divergence(monkeypatch: pytest.MonkeyPatch) -> None:
    # The differential is armed: a parser that silently drops a request is caught.
    from meshns.dataplane.http1.parser import parser_kit

    kits = [parser_kit("h11"), parser_kit("httptools")]

    class Dropping:
        def __init__(self, sink: Any) -> None:
            pass

        def feed(self, data: bytes) -> None:
            return None

    monkeypatch.setattr(FUZZ, "_KITS", [kits[0], type(kits[1])("x", Dropping, kits[1].response)])
    with pytest.raises(AssertionError):
        FUZZ.request_one(bytes([0]) + b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_seed_files_are_written_once(tmp_path: Path) -> None:
    n = FUZZ.write_seeds(tmp_path)
    assert n == sum(len(set(v)) for v in SEEDS.values())
    assert FUZZ.write_seeds(tmp_path) == 0
    assert {p.name for p in tmp_path.iterdir()} == set(FUZZ.TARGETS)
