"""One exception tree for meshns, split by who was at fault.

The CLI maps these to exit codes and one-line messages; foreign exceptions (sqlite3, netlink,
libiptc, OSError) are caught at the edge that called the foreign code and re-raised as one of
these, with the original chained, so no caller needs to know which library failed.
"""

from __future__ import annotations


class MeshnsError(Exception):
    """Base of every error meshns raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class UserError(MeshnsError):
    """The request itself is wrong: bad name, bad CIDR, unknown option value. Nothing was changed."""

    exit_code = 2


class NotFoundError(UserError):
    """The named object does not exist."""


class ConflictError(UserError):
    """The object exists already, or the request clashes with existing state."""


class PermissionError_(MeshnsError):
    """The operation needs privileges the caller does not have (usually: run as root)."""

    exit_code = 4


class SystemFailure(MeshnsError):
    """The machine refused: a netlink, iptables or process operation failed. Rolled back."""

    exit_code = 3


class RegistryError(MeshnsError):
    """The state directory could not be read or written: the registry locked too long, a full or
    read-only file system, a file that is not a registry. Nothing was changed (or it was rolled
    back). One exit code for all of these because the remedy is the same kind: fix the host's
    storage or wait for the other process, then retry; the message says which."""

    exit_code = 5


class NoSpaceError(RegistryError):
    """The state directory's file system is full (SQLite's SQLITE_FULL, or ENOSPC/EDQUOT on a
    file write). Kept under exit code 5 with the other storage failures: a script that retries
    after the operator fixed the storage need not tell them apart; the message does."""


class ValidationFailed(SystemFailure):
    """Interception was installed but a probe connection did not come back through the sidecar."""
