"""Make ``import iptc`` (python-iptables) cheap: tell it where its libraries are.

python-iptables finds its libraries at import time, the slow way: it runs ``ldconfig -N -v`` to
find the xtables plugin directory (unless XTABLES_LIBDIR is set), looks for its own
``libxtwrapper`` with ``ctypes.util.find_library`` (which runs ldconfig, then gcc and ld, for
each of several names, before it tries site-packages), and imports ``distutils`` (through
setuptools' shim: most of a 0.4 s import) only for that site-packages fallback. Every
``meshns create`` pays for it.

So before the import we find the directories ourselves (a few stat calls) and hand them over in
the variables python-iptables documents, XTABLES_LIBDIR and IPTABLES_LIBDIR, for the duration of
the import only: they are removed again afterwards, so nothing we start (an app, a sidecar)
inherits them, and libxtables itself later reads the environment as before. Whatever we cannot
find is left unset, and python-iptables searches as it always did. Values already in the
environment win. ``distutils`` is made unimportable for the import, which sends python-iptables
down the path it takes on Python 3.12 (where distutils is gone): ``sysconfig``.

The search functions are pure over the directories they are given (tests/unit/test_xtlibs.py).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator, MutableMapping
from pathlib import Path

XTABLES_LIB = "libxtables.so."
WRAPPER_LIB = "libxtwrapper"


def system_lib_dirs(multiarch: str | None = None) -> list[Path]:
    """Where the dynamic linker usually finds libxtables, most specific first, without repeats."""
    if multiarch is None:
        multiarch = sysconfig.get_config_var("MULTIARCH") or None
    names = []
    if multiarch:
        names += [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"]
    names += ["/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib64", "/usr/local/lib"]
    out: list[Path] = []
    for name in names:
        path = Path(name)
        if path not in out:
            out.append(path)
    return out


def find_xtables(lib_dirs: Iterable[Path]) -> tuple[Path, Path] | None:
    """The first directory holding libxtables.so.N with an ``xtables`` plugin directory next to
    it (libxt_*.so inside), as (library dir, plugin dir); None if there is none."""
    for lib_dir in lib_dirs:
        try:
            has_lib = any(n.startswith(XTABLES_LIB) for n in os.listdir(lib_dir))
        except OSError:
            continue
        plugins = lib_dir / "xtables"
        if has_lib and _has_plugins(plugins):
            return lib_dir, plugins
    return None


def _has_plugins(plugins: Path) -> bool:
    try:
        return any(n.startswith("libxt_") and n.endswith(".so") for n in os.listdir(plugins))
    except OSError:
        return False


def find_wrapper_dir(search: Iterable[Path], suffixes: Iterable[str]) -> Path | None:
    """The first directory holding python-iptables' own ``libxtwrapper<suffix>`` (it is built
    as an extension module and installed next to the ``iptc`` package)."""
    names = [WRAPPER_LIB + s for s in suffixes]
    for d in search:
        if any((d / n).is_file() for n in names):
            return d
    return None


def soname(name: str, listings: Iterable[Iterable[str]]) -> str | None:
    """What ``ctypes.util.find_library(name)`` answers on Linux (a soname such as
    ``libip4tc.so.2``) from the system library directories' listings, most specific first
    (pure): the ``lib<name>.so.<major>`` of the first directory holding one. None when none does,
    or when a directory holds two majors (which one ldconfig's cache lists first is its business:
    the caller asks it)."""
    prefix = f"lib{name}.so."
    for names in listings:
        found = {n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()}
        if len(found) == 1:
            return found.pop()
        if found:
            return None
    return None


def _listings(dirs: Iterable[Path]) -> Iterator[list[str]]:
    for d in dirs:
        try:
            yield os.listdir(d)
        except OSError:
            continue


def iptc_env(environ: MutableMapping[str, str] | dict[str, str], xtables: tuple[Path, Path] | None,
             wrapper_dir: Path | None) -> dict[str, str]:
    """The variables to set for the import (pure): only what was found and is not set already."""
    out: dict[str, str] = {}
    if xtables is not None and "XTABLES_LIBDIR" not in environ:
        out["XTABLES_LIBDIR"] = str(xtables[1])
    dirs = [str(d) for d in (wrapper_dir, xtables[0] if xtables else None) if d is not None]
    if dirs and "IPTABLES_LIBDIR" not in environ:
        out["IPTABLES_LIBDIR"] = ":".join(dirs)
    return out


def _wrapper_search() -> list[Path]:
    out: list[Path] = []
    spec = importlib.util.find_spec("iptc")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        out += [Path(p).parent for p in spec.submodule_search_locations]
    for key in ("platlib", "purelib"):
        path = Path(sysconfig.get_path(key))
        if path not in out:
            out.append(path)
    return out


@contextlib.contextmanager
def quick_iptc_import() -> Iterator[None]:
    """Wrap ``import iptc``: the environment above for the import, restored afterwards."""
    if "iptc" in sys.modules:
        yield
        return
    try:
        env = iptc_env(os.environ, find_xtables(system_lib_dirs()),
                       find_wrapper_dir(_wrapper_search(), importlib.machinery.EXTENSION_SUFFIXES))
    except (OSError, ValueError):
        env = {}
    block_distutils = "distutils" not in sys.modules
    os.environ.update(env)
    if block_distutils:
        sys.modules["distutils"] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    # python-iptables asks ctypes.util.find_library for libc, xtables, ip4tc and ip6tc (libc
    # twice); on Linux each call runs `ldconfig -p` and parses its output: five processes started
    # from the CLI on every create. The same answer from the library directories' listings,
    # falling back to ctypes wherever they do not settle it.
    listings = list(_listings(system_lib_dirs()))
    stock = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return soname(name, listings) or stock(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = stock
        for key in env:
            os.environ.pop(key, None)
        if block_distutils and sys.modules.get("distutils", "") is None:
            del sys.modules["distutils"]
