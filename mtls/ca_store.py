"""The CA directory's files: the state model (ca.json), the lock, atomic writes. No cryptography here.

ca.json is the commit point of every change: root and intermediate files are written before it
names them and deleted after it stops naming them, and every file is replaced whole (tmp file + os.replace), so a
reader holding the shared lock always sees a consistent CA even if a writer crashed midway.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from meshns.errors import SystemFailure
from meshns.mtls.identity import IdentityError, validate_trust_domain

STATE_FILE = "ca.json"
LOCK_FILE = ".lock"
MIN_TTL_S = 1.0
ROOT_STATES = ("active", "pending", "retiring")
# A CA in intermediate mode holds no root key: its roots are only trusted (the bundle), and it signs
# with an intermediate the root holder issued to this host. ca.json without "mode" is root mode.
MODES = ("root", "intermediate")
TRUSTED = "trusted"

_SERIAL_RE = re.compile(r"[0-9a-f]{1,64}")  # also keeps root file names free of path tricks


class CAError(SystemFailure):
    """The CA directory or one of its files is missing, unreadable or corrupt."""


class RootInfo(NamedTuple):
    serial: str
    state: str
    retire_at: float | None


class IntermediateInfo(NamedTuple):
    """The intermediate this CA signs workload certificates with."""

    serial: str
    host: str
    issuer: str  # serial of the root that signed it
    not_before: float
    not_after: float


@dataclass(frozen=True)
class CaState:
    trust_domain: str
    workload_ttl_s: float
    generation: int
    roots: tuple[RootInfo, ...]
    mode: str = "root"
    intermediate: IntermediateInfo | None = None

    def serial(self, state: str) -> str | None:
        return next((r.serial for r in self.roots if r.state == state), None)

    def to_json(self) -> bytes:
        doc: dict[str, object] = {}
        if self.mode != "root":  # root mode writes what it always wrote: older files stay byte-compatible
            doc["mode"] = self.mode
        doc.update({"trust_domain": self.trust_domain, "workload_ttl_s": self.workload_ttl_s,
                    "generation": self.generation, "roots": [r._asdict() for r in self.roots]})
        if self.intermediate is not None:
            doc["intermediate"] = self.intermediate._asdict()
        return (json.dumps(doc, indent=2) + "\n").encode()


@contextlib.contextmanager
def fs_errors(path: Path) -> Iterator[None]:
    """An OSError inside becomes a CAError naming the path (strerror only: never file contents)."""
    try:
        yield
    except PermissionError as exc:
        raise CAError(f"{path}: {exc.strerror or exc} (the CA is readable by root only)") from exc
    except OSError as exc:
        raise CAError(f"{path}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def locked(ca_dir: Path, *, exclusive: bool) -> Iterator[None]:
    """flock on <ca_dir>/.lock: writers exclusive, readers shared, held for the whole operation."""
    path = ca_dir / LOCK_FILE
    with fs_errors(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        with fs_errors(path):
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with fs_errors(path):
        # Created with its final mode (O_EXCL, never an existing file): a key is 0600 from its first byte.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed a public file below what readers need
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def read_state(ca_dir: Path) -> CaState:
    path = ca_dir / STATE_FILE
    with fs_errors(path):
        text = path.read_text()
    try:
        return _parse_state(json.loads(text))
    except (ValueError, IdentityError) as exc:
        raise CAError(f"{path}: corrupt CA state: {exc}") from None


def _number(v: object) -> float | None:
    """A finite JSON number as float, else None (bools are not numbers here)."""
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _parse_state(doc: object) -> CaState:
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    mode = doc.get("mode", "root")
    if mode not in MODES:
        raise ValueError(f"mode {str(mode)[:40]!r} is not one of {', '.join(MODES)}")
    td, ttl, gen, roots = (doc.get(k) for k in ("trust_domain", "workload_ttl_s", "generation", "roots"))
    if not isinstance(td, str):
        raise ValueError("trust_domain is not a string")
    validate_trust_domain(td)
    ttl_s = _number(ttl)
    if ttl_s is None or ttl_s < MIN_TTL_S:
        raise ValueError(f"workload_ttl_s must be a number >= {MIN_TTL_S:g}")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 1:
        raise ValueError("generation must be a positive integer")
    if not isinstance(roots, list):
        raise ValueError("roots is not a list")
    out: list[RootInfo] = []
    for r in roots:
        if not isinstance(r, dict):
            raise ValueError("a root is not a JSON object")
        serial, state, retire_at = r.get("serial"), r.get("state"), r.get("retire_at")
        if not isinstance(serial, str) or not _SERIAL_RE.fullmatch(serial):
            raise ValueError(f"root serial {serial!r} is not lower-case hex")
        allowed = ROOT_STATES if mode == "root" else (TRUSTED,)
        if not isinstance(state, str) or state not in allowed:
            raise ValueError(f"root {serial}: state {state!r} is not one of {', '.join(allowed)}")
        retire = _number(retire_at)
        if (state == "retiring") != (retire is not None) or (retire is None and retire_at is not None):
            raise ValueError(f"root {serial}: retire_at must be a number exactly when the root is retiring")
        out.append(RootInfo(serial, state, retire))
    states = [r.state for r in out]
    if len({r.serial for r in out}) != len(out):
        raise ValueError("root serials must be unique")
    if mode == "root" and (states.count("active") != 1 or states.count("pending") > 1):
        raise ValueError("the root set needs exactly one active root and at most one pending")
    if mode == "intermediate" and not out:
        raise ValueError("an intermediate-mode CA needs at least one trusted root")
    inter = _parse_intermediate(doc.get("intermediate"), {r.serial for r in out})
    if mode == "intermediate" and inter is None:
        raise ValueError("an intermediate-mode CA needs its intermediate")
    return CaState(td, ttl_s, gen, tuple(out), mode, inter)


def _parse_intermediate(doc: object, root_serials: set[str]) -> IntermediateInfo | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError("intermediate is not a JSON object")
    serial, host, issuer = doc.get("serial"), doc.get("host"), doc.get("issuer")
    if not isinstance(serial, str) or not _SERIAL_RE.fullmatch(serial):
        raise ValueError(f"intermediate serial {serial!r} is not lower-case hex")
    if not isinstance(host, str) or len(host) > 253:
        raise ValueError("intermediate host is not a host name")
    if not isinstance(issuer, str) or issuer not in root_serials:
        raise ValueError(f"intermediate {serial}: its issuer {issuer!r} is not one of the roots")
    nb, na = _number(doc.get("not_before")), _number(doc.get("not_after"))
    if nb is None or na is None or na <= nb:
        raise ValueError(f"intermediate {serial}: not_before and not_after must be numbers, in that order")
    return IntermediateInfo(serial, host, issuer, nb, na)
