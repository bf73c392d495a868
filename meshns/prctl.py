"""Two process flags set with prctl(2), shared by the supervisor (host side) and the sidecar.

- not dumpable: the process's /proc entries (mem, fd, environ) belong to root and a same-uid
  process cannot ptrace it; every sidecar runs as uid 1337, so without it one pod's sidecar could
  read another's key.
- no_new_privs: no execve (setuid binary, file capability) can ever raise privileges again.
- parent death signal: a sidecar dies with its supervisor, SIGKILL while it is still root (started
  early, before its pod is ready), SIGTERM (drain and exit) once it is the proxy user; the kernel
  clears the setting when the process changes its uid, so become_proxy sets it again after.
"""

from __future__ import annotations

import ctypes
from typing import Final

PR_SET_DUMPABLE: Final = 4
PR_SET_NO_NEW_PRIVS: Final = 38
PR_SET_PDEATHSIG: Final = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int, what: str) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({what}) failed")


def not_dumpable() -> None:
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE, 0")


def no_new_privs() -> None:
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "PR_SET_NO_NEW_PRIVS, 1")


def parent_death_signal(signum: int) -> None:
    _prctl(PR_SET_PDEATHSIG, signum, f"PR_SET_PDEATHSIG, {signum}")
