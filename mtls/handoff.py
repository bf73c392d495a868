"""The directory that carries an intermediate from the root holder to its host.

`meshns ca intermediate --out DIR` writes it on the host holding the mesh root, the operator carries
it over (it holds a private key), and `meshns ca import-intermediate DIR` reads it on the host::

    intermediate.pem    the intermediate CA certificate, mode 0644
    intermediate.key    its EC private key, PKCS8 PEM, mode 0600
    roots.pem           the mesh roots (the trust bundle), mode 0644
    ca-settings.json    {"trust_domain": ..., "workload_ttl_s": ...}, mode 0644

The directory is made 0700 and nothing in it is ever overwritten: every file is created with
O_EXCL, and if one cannot be written the ones already written are removed again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from meshns.errors import ConflictError, SystemFailure, UserError
from meshns.mtls.identity import IdentityError, validate_trust_domain

INTERMEDIATE_PEM = "intermediate.pem"
INTERMEDIATE_KEY = "intermediate.key"
ROOTS_PEM = "roots.pem"
SETTINGS = "ca-settings.json"
FILES = (INTERMEDIATE_PEM, INTERMEDIATE_KEY, ROOTS_PEM, SETTINGS)
MAX_FILE_BYTES = 1 << 20


@dataclass(frozen=True, repr=False)
class Handoff:
    trust_domain: str
    workload_ttl_s: float
    roots_pem: str
    intermediate_cert_pem: str
    intermediate_key_pem: str

    def __repr__(self) -> str:  # never the key
        return f"Handoff(trust_domain={self.trust_domain!r}, workload_ttl_s={self.workload_ttl_s!r})"


def refuse_existing(out_dir: Path) -> None:
    """ConflictError if out_dir holds any of the files (checked before anything is issued)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if taken := [name for name in FILES if (out_dir / name).exists()]:
        raise ConflictError(f"{out_dir} already holds {', '.join(taken)}; refusing to overwrite "
                            "(use a new or empty directory)")


def write_handoff(out_dir: Path, h: Handoff) -> list[Path]:
    """Write the four files into out_dir (created 0700 if missing). Returns their paths."""
    refuse_existing(out_dir)
    made = not out_dir.exists()
    settings = {"trust_domain": h.trust_domain, "workload_ttl_s": h.workload_ttl_s}
    contents = ((INTERMEDIATE_KEY, h.intermediate_key_pem, 0o600), (INTERMEDIATE_PEM, h.intermediate_cert_pem, 0o644),
                (ROOTS_PEM, h.roots_pem, 0o644), (SETTINGS, json.dumps(settings, indent=2) + "\n", 0o644))
    written: list[Path] = []
    try:
        if made:
            out_dir.mkdir(mode=0o700, parents=True)
            os.chmod(out_dir, 0o700)  # mkdir's mode is narrowed by the umask
        for name, text, mode in contents:
            path = out_dir / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            written.append(path)
            try:
                os.fchmod(fd, mode)
                view = memoryview(text.encode())
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
    except FileExistsError as exc:
        _undo(written, out_dir if made else None)
        raise ConflictError(f"{exc.filename}: already exists; refusing to overwrite") from None
    except OSError as exc:
        _undo(written, out_dir if made else None)
        raise SystemFailure(f"{exc.filename or out_dir}: {exc.strerror or exc}") from None
    return written


def read_handoff(src: Path) -> Handoff:
    """The four files from src; UserError naming the file if one is missing or malformed."""
    if not src.is_dir():
        raise UserError(f"{src} is not a directory")
    texts = {name: _read(src / name) for name in FILES}
    try:
        doc = json.loads(texts[SETTINGS])
    except ValueError:
        raise UserError(f"{src / SETTINGS}: not JSON") from None
    if not isinstance(doc, dict):
        raise UserError(f"{src / SETTINGS}: not a JSON object")
    if unknown := sorted(k for k in doc if k not in ("trust_domain", "workload_ttl_s")):
        raise UserError(f"{src / SETTINGS}: unknown keys {', '.join(str(k)[:40] for k in unknown)}")
    td, ttl = doc.get("trust_domain"), doc.get("workload_ttl_s")
    if not isinstance(td, str):
        raise UserError(f"{src / SETTINGS}: trust_domain must be a string")
    try:
        validate_trust_domain(td)
    except IdentityError as exc:
        raise UserError(f"{src / SETTINGS}: {exc}") from None
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not math.isfinite(ttl) or ttl < 1:
        raise UserError(f"{src / SETTINGS}: workload_ttl_s must be a number of seconds >= 1")
    return Handoff(td, float(ttl), texts[ROOTS_PEM], texts[INTERMEDIATE_PEM], texts[INTERMEDIATE_KEY])


def _read(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path} is missing") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise UserError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a PEM/JSON text file") from None


def _undo(written: list[Path], made_dir: Path | None) -> None:
    for path in written:
        path.unlink(missing_ok=True)
    if made_dir is not None:
        with contextlib.suppress(OSError):  # not empty: somebody else's files, leave them
            made_dir.rmdir()
