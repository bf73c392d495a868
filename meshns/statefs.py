"""Storage failures of the state directory, mapped in one place to one error family (exit 5).

The state directory holds the registry (SQLite) and every pod's files. When its file system is
full, SQLite says ``database or disk is full`` (SQLITE_FULL) or, when it cannot even size its
WAL index, ``disk I/O error`` (SQLITE_IOERR_SHMSIZE), and a plain file write raises
OSError(ENOSPC). Both become the same NoSpaceError with the same message, whichever layer hit it;
a lock held too long, a read-only file system or a file that is not a database each get their
own one-line message. The classification is pure and table-tested; only ``free_bytes`` looks at
the machine.
"""

from __future__ import annotations

import enum
import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshns.errors import MeshnsError, NoSpaceError, RegistryError

# SQLite primary result codes (the low byte of an extended code), from sqlite3.h.
SQLITE_PERM = 3
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

# An I/O error with less free space than this is taken for a full disk: SQLite reports a full
# file system as SQLITE_IOERR_* when the failing write is its WAL index (-shm), not the database.
LOW_SPACE_BYTES = 64 * 1024

STATE_DIR = "the state directory"


class Fault(enum.Enum):
    NO_SPACE = "no space"
    LOCKED = "locked"
    READ_ONLY = "read-only"
    CANNOT_OPEN = "cannot open"
    NOT_A_DATABASE = "not a database"
    DAMAGED = "damaged"
    OTHER = "other"


def sqlite_fault(code: int | None, text: str, free: int | None, read_only: bool = False) -> Fault:
    """What an sqlite3 error means for the operator (pure). ``code`` is the (extended) result
    code when Python exposes it, ``free`` the bytes free on the database's file system,
    ``read_only`` whether that file system is mounted read-only."""
    primary = code & 0xFF if code is not None else None
    low = text.lower()
    if read_only and (primary in (SQLITE_CANTOPEN, SQLITE_READONLY, SQLITE_IOERR) or primary is None):
        # On a read-only mount SQLite cannot create its WAL index and says "unable to open".
        return Fault.READ_ONLY
    if primary == SQLITE_FULL or (primary is None and "full" in low):
        return Fault.NO_SPACE
    if primary == SQLITE_IOERR and free is not None and free < LOW_SPACE_BYTES:
        return Fault.NO_SPACE
    if primary in (SQLITE_BUSY, SQLITE_LOCKED) or (primary is None and ("locked" in low or "busy" in low)):
        return Fault.LOCKED
    if primary in (SQLITE_READONLY, SQLITE_PERM) or (primary is None and "readonly" in low):
        return Fault.READ_ONLY
    if primary == SQLITE_CANTOPEN or (primary is None and "unable to open" in low):
        return Fault.CANNOT_OPEN
    if primary == SQLITE_NOTADB or (primary is None and "not a database" in low):
        return Fault.NOT_A_DATABASE
    if primary == SQLITE_CORRUPT or (primary is None and "malformed" in low):
        return Fault.DAMAGED
    return Fault.OTHER


def os_fault(err: int | None) -> Fault:
    if err in (errno.ENOSPC, errno.EDQUOT):
        return Fault.NO_SPACE
    if err in (errno.EROFS, errno.EACCES, errno.EPERM):
        return Fault.READ_ONLY
    return Fault.OTHER


def _statvfs(path: Path) -> os.statvfs_result | None:
    for p in (path, *path.parents):  # the nearest existing directory's file system
        try:
            return os.statvfs(p)
        except OSError:
            continue
    return None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer could still use where ``path`` lives (None: unknown)."""
    st = _statvfs(path)
    return None if st is None else st.f_bavail * st.f_frsize


def read_only_fs(path: Path) -> bool:
    st = _statvfs(path)
    return st is not None and bool(st.f_flag & os.ST_RDONLY)


def no_space(where: Path, doing: str, label: str = STATE_DIR) -> NoSpaceError:
    return NoSpaceError(f"no space left on {label} {where} ({doing}): free some space and retry")


def registry_error(exc: sqlite3.Error, path: Path, waited_s: float) -> RegistryError:
    """The one mapping of an sqlite3 error on the registry at ``path``."""
    text = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    fault = sqlite_fault(code if isinstance(code, int) else None, text, free_bytes(path.parent),
                         read_only_fs(path.parent))
    match fault:
        case Fault.NO_SPACE:
            return no_space(path.parent, f"registry {path.name}: {text}")
        case Fault.LOCKED:
            return RegistryError(f"registry {path} is locked by another process (waited {waited_s:.1f} s; "
                                 "MESHNS_REGISTRY_WAIT sets how long)")
        case Fault.READ_ONLY:
            return RegistryError(f"registry {path} is read-only ({text}): meshns must be able to write "
                                 "its state directory (is its file system mounted read-only?)")
        case Fault.CANNOT_OPEN:
            return RegistryError(f"cannot open registry {path} ({text}): is the state directory writable?")
        case Fault.NOT_A_DATABASE:
            return RegistryError(f"{path} is not a meshns registry ({text}): move it away or use another "
                                 "--state-dir")
        case Fault.DAMAGED:
            return RegistryError(f"registry {path} is damaged ({text})")
    return RegistryError(f"registry {path}: {text}")


def state_error(exc: OSError, where: Path, doing: str, label: str = STATE_DIR) -> RegistryError:
    """The one mapping of an OSError met while writing ``where`` (the state directory or /etc/netns)."""
    reason = exc.strerror or str(exc)
    match os_fault(exc.errno):
        case Fault.NO_SPACE:
            return no_space(where, doing, label)
        case Fault.READ_ONLY:
            return RegistryError(f"cannot write {label} {where} ({doing}: {reason})")
    return RegistryError(f"{label} {where}: {doing} failed: {reason}")


@contextmanager
def state_writes(where: Path, doing: str, label: str = STATE_DIR) -> Iterator[None]:
    """Around file writes to ``where``: an OSError leaves as a RegistryError (NoSpaceError when
    the file system is full), so the CLI prints one line instead of a traceback. A meshns error
    that some library raised for a full disk (the CA store's, say) is reported the same way."""
    try:
        yield
    except OSError as exc:
        raise state_error(exc, where, doing, label) from exc
    except RegistryError:
        raise
    except MeshnsError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and os_fault(cause.errno) == Fault.NO_SPACE:
            raise no_space(where, doing, label) from exc
        raise
