"""`meshns ca intermediate` on the root holder and `meshns ca import-intermediate` on another host,
run through the real entry point (exit codes, one-line errors) against throwaway state directories."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from meshns.cli.main import main
from meshns.mtls.ca import CertAuthority, key_pem, new_key
from meshns.mtls.identity import SpiffeId

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the CA commands need root")

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def meshns(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    def run(state: Path, *args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["meshns", "--state-dir", str(state), *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def one_line_error(err: str, text: str) -> None:
    assert err.count("\n") == 1 and err.startswith("meshns: error: ") and text in err, err


@pytest.fixture
def root_host(tmp_path: Path, meshns: Run) -> Path:
    state = tmp_path / "a"
    code, _, err = meshns(state, "ca", "init", "--trust-domain", "example.org", "--workload-ttl", "2h")
    assert code == 0, err
    return state


def test_round_trip(root_host: Path, tmp_path: Path, meshns: Run) -> None:
    out = tmp_path / "handoff" / "b"
    code, text, err = meshns(root_host, "ca", "intermediate", "--host", "node-b", "--out", str(out), "--ttl", "720h")
    assert code == 0, err
    assert "meshns ca import-intermediate" in text
    assert mode(out) == 0o700
    assert {p.name: mode(p) for p in out.iterdir()} == {
        "intermediate.pem": 0o644, "intermediate.key": 0o600, "roots.pem": 0o644, "ca-settings.json": 0o644}
    assert json.loads((out / "ca-settings.json").read_text()) == {"trust_domain": "example.org", "workload_ttl_s": 7200.0}
    root = CertAuthority.load(root_host / "ca")
    assert (out / "roots.pem").read_text() == root.bundle_pem()
    (inter,) = x509.load_pem_x509_certificates((out / "intermediate.pem").read_bytes())
    assert (inter.not_valid_after_utc - inter.not_valid_before_utc).total_seconds() == 720 * 3600 + 60

    host = tmp_path / "b"
    code, text, err = meshns(host, "ca", "import-intermediate", str(out))
    assert code == 0, err
    assert text.startswith("imported: intermediate ") and "host node-b" in text
    ca = CertAuthority.load(host / "ca")
    assert (ca.mode, ca.trust_domain, ca.workload_ttl_s) == ("intermediate", "example.org", 7200.0)
    assert ca.bundle_pem() == root.bundle_pem()

    code, text, _ = meshns(host, "ca", "import-intermediate", str(out))
    assert code == 0 and text.startswith("already imported")

    code, text, _ = meshns(host, "ca", "show", "-o", "json")
    doc = json.loads(text)
    assert code == 0 and doc["mode"] == "intermediate" and doc["intermediate"]["host"] == "node-b"
    assert doc["intermediate"]["serial"] == format(inter.serial_number, "x")
    assert doc["roots"] == [{"serial": root.active_serial, "state": "trusted", "retire_at": "-"}]
    code, text, _ = meshns(host, "ca", "show")
    assert code == 0 and text.startswith("intermediate mode, trust domain example.org") and "host node-b" in text
    code, text, _ = meshns(root_host, "ca", "show")
    assert code == 0 and text.startswith("root mode") and "signed by the active root" in text

    code, _, err = meshns(host, "ca", "rotate")
    assert code == 3
    one_line_error(err, "this host's CA holds an intermediate; rotate roots on the host holding the mesh root")

    # A renewal: --replace swaps the intermediate in.
    renewed = tmp_path / "handoff" / "b2"
    assert meshns(root_host, "ca", "intermediate", "--host", "node-b", "--out", str(renewed))[0] == 0
    code, _, err = meshns(host, "ca", "import-intermediate", str(out))  # the old one again: still fine
    assert code == 0
    code, _, err = meshns(host, "ca", "import-intermediate", str(renewed))
    assert code == 2
    one_line_error(err, "already exists")
    code, text, err = meshns(host, "ca", "import-intermediate", "--replace", str(renewed))
    assert code == 0, err
    assert CertAuthority.load(host / "ca").signer_serial != format(inter.serial_number, "x")


def test_intermediate_refuses_bad_input(root_host: Path, tmp_path: Path, meshns: Run) -> None:
    out = tmp_path / "out"
    code, _, err = meshns(root_host, "ca", "intermediate", "--host", "Bad_Host", "--out", str(out))
    assert code == 2 and not out.exists()
    one_line_error(err, "host name 'Bad_Host' is invalid")
    out.mkdir()
    (out / "roots.pem").write_text("mine")
    code, _, err = meshns(root_host, "ca", "intermediate", "--host", "b", "--out", str(out))
    assert code == 2
    one_line_error(err, "already holds roots.pem; refusing to overwrite")
    assert [p.name for p in out.iterdir()] == ["roots.pem"] and (out / "roots.pem").read_text() == "mine"
    (tmp_path / "file").write_text("")
    code, _, err = meshns(root_host, "ca", "intermediate", "--host", "b", "--out", str(tmp_path / "file"))
    assert code == 2
    one_line_error(err, "is not a directory")
    code, _, err = meshns(root_host, "ca", "intermediate", "--host", "b", "--out", str(tmp_path / "o2"), "--ttl", "1ms")
    assert code == 2 and not (tmp_path / "o2").exists()
    code, _, err = meshns(tmp_path / "no-ca", "ca", "intermediate", "--host", "b", "--out", str(tmp_path / "o3"))
    assert code == 2 and not (tmp_path / "o3").exists()
    one_line_error(err, "no CA yet")


def test_import_refuses_bad_material_and_leaves_nothing(root_host: Path, tmp_path: Path, meshns: Run) -> None:
    out = tmp_path / "out"
    assert meshns(root_host, "ca", "intermediate", "--host", "b", "--out", str(out))[0] == 0
    host = tmp_path / "b"

    def refused(src: Path, text: str) -> None:
        code, _, err = meshns(host, "ca", "import-intermediate", str(src))
        assert code == 2
        one_line_error(err, text)
        assert not (host / "ca").exists()

    def variant(name: str, files: dict[str, str] | None = None) -> Path:
        """A copy of the good directory with some files replaced."""
        d = tmp_path / name
        d.mkdir()
        for src in out.iterdir():
            (d / src.name).write_bytes(src.read_bytes())
        for name_, text in (files or {}).items():
            (d / name_).write_text(text)
        return d

    refused(tmp_path / "missing", "is not a directory")
    d = variant("mismatch", {"intermediate.key": key_pem(new_key())})
    refused(d, "intermediate key does not match")
    other = CertAuthority.ensure(tmp_path / "other-ca", "example.org")
    okey = new_key()
    d = variant("foreign", {"intermediate.pem": other.issue_intermediate("b", okey.public_key()).cert_pem,
                            "intermediate.key": key_pem(okey)})
    refused(d, "was not signed by any of the 1 root(s) given")
    leaf_key = new_key()
    leaf = CertAuthority.load(root_host / "ca").issue(SpiffeId("example.org", "a", "b"), leaf_key.public_key())
    d = variant("leaf", {"intermediate.pem": leaf.cert_pem, "intermediate.key": key_pem(leaf_key)})
    refused(d, "is not a CA certificate")
    d = variant("badsettings", {"ca-settings.json": '{"trust_domain": "example.org", "workload_ttl_s": 60, "x": 1}'})
    refused(d, "unknown keys x")
    d = variant("otherdomain", {"ca-settings.json": '{"trust_domain": "other.org", "workload_ttl_s": 60}'})
    refused(d, "not trust domain 'other.org'")
    d = variant("gone")
    (d / "roots.pem").unlink()
    refused(d, "roots.pem is missing")
