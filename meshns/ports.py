"""Well-known numbers of the pod contract, shared by the init step and the sidecar.

They follow Istio's where a user would recognise them (15001 out, 15006 in, 15000 admin,
UID/GID 1337, 127.0.0.6 as the inbound hop's source) so operators' muscle memory carries over.
"""

from __future__ import annotations

from typing import Final

OUTBOUND_PORT: Final = 15001
INBOUND_PORT: Final = 15006
ADMIN_PORT: Final = 15000
# Connections whose original destination port is PROBE_PORT are answered by the sidecar itself
# with the original destination it recovered; the init step's validation uses this.
PROBE_PORT: Final = 15002
# The sidecar's Prometheus listener on the pod address (Envoy's 15090); inbound interception lets
# it pass so a scraper reaches the sidecar, not the app.
METRICS_PORT: Final = 15090
PROXY_UID: Final = 1337
PROXY_GID: Final = 1337
# Source address of the sidecar's inbound hop to the app; the OUTPUT chain lets it pass, so the
# hop to the pod's own address is not captured a second time.
INBOUND_SOURCE_IP: Final = "127.0.0.6"
# Ports the sidecar owns: a connection whose original destination is one of these would loop.
SIDECAR_PORTS: Final = frozenset({OUTBOUND_PORT, INBOUND_PORT})
