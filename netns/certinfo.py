"""The public half of a pod's identity, written by its supervisor for `meshns cert show` / `status`.

Only the certificate and its dates: the key exists in the supervisor's and the sidecar's memory
and nowhere else. ``ca_generation`` is the CA state the sidecar was last sent, which is how
`meshns ca rotate` knows every sidecar trusts a new root before it starts signing with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshns.mtls.tls import WorkloadTls

CERT_INFO = "cert.json"


def write_cert_info(pod_dir: Path, w: WorkloadTls, ca_generation: int) -> None:
    data = {"identity": w.identity, "serial": w.serial, "not_before": w.not_before, "not_after": w.not_after,
            "issued_at": w.issued_at, "ca_generation": ca_generation, "cert_pem": w.cert_pem,
            "roots": w.bundle_pem.count("BEGIN CERTIFICATE")}
    tmp = pod_dir / f".{CERT_INFO}.tmp"
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.chmod(tmp, 0o644)
    os.replace(tmp, pod_dir / CERT_INFO)


def read_cert_info(pod_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((pod_dir / CERT_INFO).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
