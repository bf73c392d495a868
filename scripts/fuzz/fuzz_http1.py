"""Fuzz targets of the sidecar's HTTP/1 parsing, for atheris (libFuzzer), run by scripts/fuzz.sh.

    fuzz_http1.py request|response|detect [libFuzzer options] [CORPUS_DIR...]
    fuzz_http1.py --seed DIR        write the seed corpus (DIR/request, DIR/response, DIR/detect)

A crash is any exception other than ParseError, plus the invariants each target asserts:

    request   both request parsers (h11 and httptools adapters), the input split into pieces of
              a size taken from its first byte: when both accept, they report the same heads,
              bodies and completions; when one refuses, the other never completed a request
              more than the refusing one did (the smuggling shape: a request one parser took
              and the other did not)
    response  both response parsers, as HEAD or GET, with or without the upstream's EOF, split
              as requests are: the same invariants
    detect    the detector on prefixes of the input: a verdict never changes with more bytes

and, for both parser targets, no stall: when one parser refuses bytes that have not ended (no
EOF) and the other is still waiting for more of the message refused, the other refuses them once
a blank line follows.
A refusal may come at a different byte, but never only when a timeout ends the wait (the SSH
banner an app sent instead of a response, found by hand, had that shape).

The entry functions (``TARGETS``) need no atheris: tests/unit/test_http1_fuzz_harness.py runs
them on the seed corpus, so the harness cannot rot between nightly runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Known, documented difference (dataplane/http1/strict.py): a chunk size written with more than
# 20 hex digits (leading zeros) is taken by llhttp and refused by the h11 adapter, in requests and
# responses alike. Fails closed.
_LONG_CHUNK_SIZE = re.compile(rb"(?:^|\n)[0-9A-Fa-f]{21,}")
# What ends any line or head still coming: a parser waiting for it has seen all it will see.
_BLANK = b"\r\n\r\n"


def _other_coding(events: list[Any]) -> bool:
    """A response head with a Transfer-Encoding that is not "chunked" alone. Known, documented
    difference (head.response_head): llhttp reads such a body to the close (RFC 9112 6.3), h11
    refuses the response. Fails closed."""
    return any(e[0] == "rhead" and any(n.lower() == b"transfer-encoding" and v.strip().lower() != b"chunked"
                                       for n, v in e[3])
               for e in events if isinstance(e, tuple))


class _Rec:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.body = bytearray()

    def _flush(self) -> None:
        if self.body:
            self.events.append(("body", bytes(self.body)))
            self.body.clear()

    def on_request_begin(self) -> None:
        pass

    def on_request_head(self, h: Any) -> None:
        self.events.append(("head", h.method, h.target, h.minor, h.headers, h.content_length, h.chunked))

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    def on_request_complete(self) -> None:
        self._flush()
        self.events.append("end")

    def on_response_head(self, h: Any) -> None:
        # h11 hands on a Transfer-Encoding value lowercased; it is hop-by-hop, never forwarded.
        headers = [(n, v.lower() if n.lower() == b"transfer-encoding" else v) for n, v in h.headers]
        self.events.append(("rhead", h.status, h.reason, headers, h.content_length, h.chunked))

    on_response_body = on_request_body
    on_response_complete = on_request_complete


def _kits() -> list[Any]:
    from meshns.dataplane.http1.parser import parser_kit  # noqa: PLC0415 (after atheris instruments)

    return [parser_kit("h11"), parser_kit("httptools")]


_KITS: list[Any] = []


def _pieces(data: bytes) -> tuple[int, bytes]:
    """The first byte chooses how the rest is split (1 to 64 bytes a piece, or whole)."""
    if not data:
        return 1, b""
    step = data[0] % 65
    return (step or 1 << 20), data[1:]


def _run_request(kit: Any, data: bytes, step: int) -> tuple[str, list[Any], int]:
    from meshns.dataplane.http1.head import ParseError  # noqa: PLC0415

    rec = _Rec()
    parser = kit.request(rec)
    try:
        for i in range(0, len(data), step):
            if parser.feed(data[i:i + step]) is not None:
                rec._flush()
                return "upgrade", rec.events, 0
    except ParseError as exc:
        assert exc.status in (400, 413, 414, 431, 501), exc.status
        return "reject", rec.events, exc.status
    rec._flush()
    return "ok", rec.events, 0


def _completed(events: list[Any]) -> list[Any]:
    """The events of the messages that completed."""
    last = max((i for i, e in enumerate(events) if e == "end"), default=-1)
    return events[:last + 1]


def request_one(data: bytes) -> None:
    if not _KITS:
        _KITS.extend(_kits())
    step, body = _pieces(data)
    a, b = (_run_request(kit, body, step) for kit in _KITS)
    if _LONG_CHUNK_SIZE.search(body):
        return
    if a[0] == b[0] == "ok":
        assert a[1] == b[1], (a, b)
    else:
        _agree_on_refusal(a, b)
        for kit, (x, y) in zip(_KITS, ((a, b), (b, a)), strict=True):
            # x waits in the message y refused: both completed as many before it
            if x[0] == "ok" and y[0] == "reject" and x[1].count("end") == y[1].count("end"):
                assert _run_request(kit, body + _BLANK, step)[0] == "reject", ("stalls", a, b)


def _agree_on_refusal(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    """When a side refused (verdict, events...): a refusal may come at a different byte (llhttp
    at the first bad one, h11 at the end of the line), but what both completed agrees, and no
    side completed a message the other refused (the smuggling or desync shape)."""
    if a[0] != "reject" and b[0] != "reject":
        return
    done_a, done_b = _completed(a[1]), _completed(b[1])
    n = min(len(done_a), len(done_b))
    assert done_a[:n] == done_b[:n], (a, b)
    if a[0] == "reject" and b[0] != "upgrade":
        assert done_b.count("end") <= done_a.count("end"), ("httptools completed more", a, b)
    if b[0] == "reject" and a[0] != "upgrade":
        assert done_a.count("end") <= done_b.count("end"), ("h11 completed more", a, b)


def _run_response(kit: Any, data: bytes, step: int, flags: int) -> tuple[str, list[Any]]:
    from meshns.dataplane.http1.head import ParseError  # noqa: PLC0415

    rec = _Rec()
    parser = kit.response(rec, bool(flags & 1), bool(flags & 2))
    try:
        for i in range(0, len(data), step):
            rest = parser.feed(data[i:i + step])
            if rest is not None:
                rec._flush()
                return "upgrade", [*rec.events, rest + data[i + step:]]
        if flags & 4:
            parser.feed_eof()
    except ParseError:  # the exchange answers 502 whatever the status says (upstream_broken)
        rec._flush()
        return "reject", rec.events
    rec._flush()
    return "ok", rec.events


def response_one(data: bytes) -> None:
    if not _KITS:
        _KITS.extend(_kits())
    flags = data[0] if data else 0
    step, body = _pieces(data[1:]) if data else (1, b"")
    a, b = (_run_response(kit, body, step, flags) for kit in _KITS)
    if a[0] == "reject" and _other_coding(b[1]):
        return
    if _LONG_CHUNK_SIZE.search(body):
        return
    if a[0] == b[0] and a[0] != "reject":
        assert a[1] == b[1], (a, b)
    else:
        _agree_on_refusal(a, b)
        if not flags & 4:
            for kit, (x, y) in zip(_KITS, ((a, b), (b, a)), strict=True):
                # x waits for the rest of the response y refused
                if x[0] == "ok" and y[0] == "reject" and "end" not in x[1]:
                    assert _run_response(kit, body + _BLANK, step, flags)[0] == "reject", ("stalls", a, b)


def detect_one(data: bytes) -> None:
    from meshns.dataplane.http1.detect import NeedMore, detect  # noqa: PLC0415

    n = len(data)
    cuts = range(n + 1) if n <= 256 else sorted({*range(0, n + 1, max(1, n // 32)), n})
    decided = None
    for i in cuts:
        got = detect(data[:i])
        if decided is not None:
            assert got == decided, (data[:i], got, decided)
        elif not isinstance(got, NeedMore):
            decided = got


TARGETS: dict[str, Callable[[bytes], None]] = {"request": request_one, "response": response_one, "detect": detect_one}


def _load(path: Path, name: str) -> Any:
    name = f"_fuzz_seed_{name}"  # never the name a test runner gives the same file
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def seeds() -> dict[str, list[bytes]]:
    """The seed inputs per target, from the unit tests' tables and the attacker's table."""
    bad = _load(ROOT / "tests" / "integration" / "apps" / "badclient.py", "badclient")
    requests: list[bytes] = [data for _, data, _ in bad.CASES] + [data for _, data in bad.GOOD_LIMITS]
    responses: list[bytes] = []
    try:
        unit = _load(ROOT / "tests" / "unit" / "test_http1_parsers.py", "test_http1_parsers")
        requests += list(unit.REQUESTS.values())
        responses += [data for data, _, _ in unit.RESPONSES.values()]
    except ImportError:  # pytest or hypothesis missing: the attacker's table alone
        pass
    requests = [r for r in requests if len(r) <= 8192]  # libFuzzer's inputs stay small
    out = {
        # the first byte is the split: whole (0) and a byte at a time (1)
        "request": [bytes([0]) + r for r in requests] + [bytes([1]) + r for r in requests[:20]],
        "response": [bytes([f, 0]) + r for r in responses for f in (0, 4)],
        "detect": [*requests, bad.TLS_GARBAGE, bad.TLS_TRUNCATED, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                   b"get /key\r\n", b"*1\r\n$4\r\nPING\r\n"],
    }
    return out


def regressions() -> dict[str, list[bytes]]:
    """Inputs that once crashed a target (scripts/fuzz/regressions/<target>/), replayed forever."""
    base = Path(__file__).resolve().parent / "regressions"
    return {t: [p.read_bytes() for p in sorted((base / t).glob("*"))] if (base / t).is_dir() else []
            for t in TARGETS}


def write_seeds(corpus: Path) -> int:
    n = 0
    for target, inputs in seeds().items():
        d = corpus / target
        d.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            path = d / ("seed-" + hashlib.sha256(data).hexdigest()[:40])
            if not path.exists():
                path.write_bytes(data)
                n += 1
    return n


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--seed":
        print(f"{write_seeds(Path(argv[2]))} new seed inputs in {argv[2]}")
        return 0
    if len(argv) < 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [CORPUS...] | --seed DIR",
              file=sys.stderr)
        return 2
    import atheris  # type: ignore[import-not-found]  # noqa: PLC0415 (only the fuzz run needs it)

    with atheris.instrument_imports():
        import h11  # noqa: F401, PLC0415

        import meshns.dataplane.http1.detect  # noqa: PLC0415
        import meshns.dataplane.http1.head  # noqa: PLC0415
        import meshns.dataplane.http1.parse_h11  # noqa: PLC0415
        import meshns.dataplane.http1.parse_httptools  # noqa: PLC0415
        import meshns.dataplane.http1.strict  # noqa: F401, PLC0415
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
