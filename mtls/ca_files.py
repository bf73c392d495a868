"""The CA directory's key and certificate files, named by serial and cached per handle.

A file never changes under a given serial, so each is read at most once per CertAuthority. Keys are
written 0600 from their first byte, certificates 0644 (mtls/ca_store.py write_atomic); files are
written before ca.json names them and deleted after it stops naming them. Errors name the path,
never the contents.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshns.mtls.ca_store import CAError, fs_errors, write_atomic
from meshns.mtls.certs import key_pem, load_ec_key
from meshns.mtls.intermediate import IntermediateMaterial


class CaFiles:
    def __init__(self, ca_dir: Path) -> None:
        self._dir = ca_dir
        self._keys: dict[str, ec.EllipticCurvePrivateKey] = {}
        self._certs: dict[str, tuple[x509.Certificate, str]] = {}
        self._inter: dict[str, tuple[x509.Certificate, str, ec.EllipticCurvePrivateKey]] = {}

    def root_path(self, serial: str, ext: str) -> Path:
        return self._dir / f"root-{serial}.{ext}"

    def intermediate_path(self, serial: str, ext: str) -> Path:
        return self._dir / f"intermediate-{serial}.{ext}"

    def root(self, serial: str) -> tuple[x509.Certificate, str]:
        if serial not in self._certs:
            self._certs[serial] = _read_cert(self.root_path(serial, "pem"))
        return self._certs[serial]

    def root_key(self, serial: str) -> ec.EllipticCurvePrivateKey:
        if serial not in self._keys:
            self._keys[serial] = _read_key(self.root_path(serial, "key"))
        return self._keys[serial]

    def intermediate(self, serial: str) -> tuple[x509.Certificate, str, ec.EllipticCurvePrivateKey]:
        if serial not in self._inter:
            cert, pem = _read_cert(self.intermediate_path(serial, "pem"))
            self._inter[serial] = (cert, pem, _read_key(self.intermediate_path(serial, "key")))
        return self._inter[serial]

    def add_root(self, serial: str, cert: x509.Certificate, pem: str, key: ec.EllipticCurvePrivateKey) -> None:
        write_atomic(self.root_path(serial, "key"), key_pem(key).encode(), 0o600)
        write_atomic(self.root_path(serial, "pem"), pem.encode(), 0o644)
        self._keys[serial], self._certs[serial] = key, (cert, pem)

    def add_intermediate(self, serial: str, cert: x509.Certificate, pem: str,
                         key: ec.EllipticCurvePrivateKey) -> None:
        write_atomic(self.intermediate_path(serial, "key"), key_pem(key).encode(), 0o600)
        write_atomic(self.intermediate_path(serial, "pem"), pem.encode(), 0o644)
        self._inter[serial] = (cert, pem, key)

    def stage(self, m: IntermediateMaterial) -> list[Path]:
        """Write the files of an imported intermediate and its roots (root certificates only). Returns
        the files that were new to the directory, for the caller to remove if it does not commit."""
        written: list[Path] = []
        try:
            for path, data, mode in (*((self.root_path(s, "pem"), p, 0o644) for s, p in m.roots),
                                     (self.intermediate_path(m.serial, "key"), m.key_pem, 0o600),
                                     (self.intermediate_path(m.serial, "pem"), m.cert_pem, 0o644)):
                with fs_errors(path):
                    fresh = not path.exists()
                write_atomic(path, data.encode(), mode)
                if fresh:
                    written.append(path)
        except BaseException:
            self.unlink(written)
            raise
        return written

    def forget_root(self, serial: str) -> None:
        self._keys.pop(serial, None)
        self._certs.pop(serial, None)
        self.unlink([self.root_path(serial, "key"), self.root_path(serial, "pem")])

    def forget_intermediate(self, serial: str) -> None:
        # Chains already handed out carry the intermediate's certificate; its files are only for signing.
        self._inter.pop(serial, None)
        self.unlink([self.intermediate_path(serial, "key"), self.intermediate_path(serial, "pem")])

    @staticmethod
    def unlink(paths: list[Path]) -> None:
        for path in paths:
            with fs_errors(path):
                path.unlink(missing_ok=True)


def _read_cert(path: Path) -> tuple[x509.Certificate, str]:
    with fs_errors(path):
        pem = path.read_text()
    try:
        return x509.load_pem_x509_certificate(pem.encode()), pem
    except ValueError:
        raise CAError(f"{path}: not a PEM certificate") from None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    with fs_errors(path):
        data = path.read_bytes()
    try:
        return load_ec_key(data)
    except ValueError as exc:  # load_ec_key's messages never hold the file's bytes
        raise CAError(f"{path}: {exc}") from None
