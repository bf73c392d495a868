"""The library-directory finder that makes `import iptc` cheap (intercept/xtlibs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshns.intercept.xtlibs import find_wrapper_dir, find_xtables, iptc_env, soname, system_lib_dirs


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_lib_dirs_multiarch_first_without_repeats() -> None:
    dirs = system_lib_dirs("x86_64-linux-gnu")
    assert dirs[:2] == [Path("/usr/lib/x86_64-linux-gnu"), Path("/lib/x86_64-linux-gnu")]
    assert Path("/usr/lib") in dirs
    assert len(dirs) == len(set(dirs))
    assert Path("/usr/lib/None") not in system_lib_dirs("")


def test_xtables_found_where_library_and_plugins_are(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _touch(a / "libxtables.so.12")  # library, but no plugin directory
    _touch(b / "xtables" / "libxt_comment.so")  # plugins, but no library
    _touch(c / "libxtables.so.12.7.0")
    _touch(c / "xtables" / "libxt_owner.so")
    assert find_xtables([tmp_path / "missing", a, b, c]) == (c, c / "xtables")


def test_xtables_empty_plugin_dir_or_nothing_is_none(tmp_path: Path) -> None:
    _touch(tmp_path / "libxtables.so.12")
    (tmp_path / "xtables").mkdir()
    assert find_xtables([tmp_path]) is None
    assert find_xtables([]) is None


def test_wrapper_dir_by_extension_suffix(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    _touch(b / "libxtwrapper.cpython-311-x86_64-linux-gnu.so")
    assert find_wrapper_dir([a, b], [".cpython-311-x86_64-linux-gnu.so", ".so"]) == b
    assert find_wrapper_dir([a, b], [".abi3.so"]) is None


def test_env_only_what_was_found_and_not_already_set() -> None:
    lib, plugins, wrapper = Path("/l"), Path("/l/xtables"), Path("/w")
    assert iptc_env({}, (lib, plugins), wrapper) == {"XTABLES_LIBDIR": "/l/xtables", "IPTABLES_LIBDIR": "/w:/l"}
    assert iptc_env({}, None, wrapper) == {"IPTABLES_LIBDIR": "/w"}
    assert iptc_env({}, (lib, plugins), None) == {"XTABLES_LIBDIR": "/l/xtables", "IPTABLES_LIBDIR": "/l"}
    assert iptc_env({}, None, None) == {}
    assert iptc_env({"XTABLES_LIBDIR": "/mine", "IPTABLES_LIBDIR": "/x"}, (lib, plugins), wrapper) == {}


def test_import_leaves_no_trace_in_the_environment() -> None:
    """The variables are set for the import only, and distutils is importable again afterwards."""
    code = ("import os, sys\n"
            "from meshns.intercept import apply\n"
            "import iptc.xtables as x\n"
            "assert 'XTABLES_LIBDIR' not in os.environ and 'IPTABLES_LIBDIR' not in os.environ\n"
            "assert sys.modules.get('distutils', 0) is not None\n"
            "import ctypes.util\n"
            "assert ctypes.util.find_library.__module__ == 'ctypes.util'\n"
            "print(x._xtables_libdir)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XTABLES_LIBDIR", "IPTABLES_LIBDIR")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert Path(out.stdout.strip()).name == "xtables"


@pytest.mark.parametrize(("name", "listings", "want"), [
    ("ip4tc", [["libip4tc.so.2", "libip4tc.so.2.0.0", "libc.so.6"]], "libip4tc.so.2"),
    ("c", [["libc.so.6", "libcap.so.2"]], "libc.so.6"),
    ("xtables", [[], ["libxtables.so.12"]], "libxtables.so.12"),  # the first directory holding one
    ("xtables", [["libxtables.so.12"], ["libxtables.so.10"]], "libxtables.so.12"),
    ("ip4tc", [["libip4tc.so", "libip4tc.so.2.0.0"]], None),  # dev link and full version only
    ("foo", [["libfoo.so.1", "libfoo.so.2"]], None),  # two majors: ldconfig decides
    ("c", [["libcrypt.so.1", "libc.so"]], None),
    ("ip4tc", [], None),
])
def test_soname_from_listings(name: str, listings: list[list[str]], want: str | None) -> None:
    assert soname(name, listings) == want


def test_import_starts_no_ldconfig() -> None:
    """python-iptables' five find_library calls are answered from the listings: no `ldconfig -p`
    (a process each, from the CLI, on every create)."""
    code = ("import subprocess\n"
            "real = subprocess.Popen.__init__\n"
            "seen = []\n"
            "def spy(self, args, *a, **k):\n"
            "    seen.append(args)\n"
            "    real(self, args, *a, **k)\n"
            "subprocess.Popen.__init__ = spy\n"
            "from meshns.intercept import apply\n"
            "print(seen)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
