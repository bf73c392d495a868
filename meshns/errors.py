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
    """The registry could not be read or written (locked too long, disk full, corrupt)."""

    exit_code = 5


class ValidationFailed(SystemFailure):
    """Interception was installed but a probe connection did not come back through the sidecar."""
