"""The supervisor's state file (pods/<pod>/state.json), as create, status and list read it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshns.mesh import Mesh

STATE_FILE = "state.json"


def read_state(mesh: Mesh, pod: str) -> dict[str, object]:
    try:
        data = json.loads((mesh.cfg.pod_dir(pod) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
