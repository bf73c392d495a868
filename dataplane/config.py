"""The sidecar's own configuration: a frozen dataclass validated once, at load time.

The sidecar is started by a supervisor with ``--config FILE``; a typo in that file must stop the
process at start with a message naming the bad key, never surface later as an odd runtime failure.
So every key is checked for existence and type here (``bool`` is not an ``int``, an ``int`` is an
acceptable ``float``), and the rest of the data plane trusts the object it is given.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from meshns import ports
from meshns.errors import UserError

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
HTTP_PARSERS: Final = ("auto", "h11", "httptools")
ACCESS_LOG_MODES: Final = ("on", "off", "http")


@dataclass(frozen=True)
class SidecarConfig:
    """Everything one sidecar process needs to start. Ports may be 0 (ephemeral) for tests."""

    pod: str
    pod_ip: str
    outbound_port: int = ports.OUTBOUND_PORT
    inbound_port: int = ports.INBOUND_PORT
    admin_port: int = ports.ADMIN_PORT
    probe_port: int = ports.PROBE_PORT
    # Source of the inbound hop to the app; interception lets it pass so it is not captured again.
    inbound_source_ip: str = ports.INBOUND_SOURCE_IP
    bind_ip: str = "0.0.0.0"
    connect_timeout_s: float = 5.0
    # Envoy's connection idle default (1 h): long-lived quiet connections are normal for databases.
    idle_timeout_s: float = 3600.0
    drain_timeout_s: float = 5.0
    log_level: str = "info"
    # The pod directory, opened by the supervisor and inherited: the snapshot is read relative
    # to it, so the proxy user needs no access to the state directory's parents. -1: none.
    snapshot_dir_fd: int = -1
    snapshot_file: str = "snapshot.json"  # security.json beside it holds the pod's own part
    # HTTP/1 parser: "auto" (httptools when importable, else h11), "h11" (the strict reference)
    # or "httptools" (llhttp, the fast one).
    http_parser: str = "auto"
    # Prometheus listener on bind_ip (GET /stats/prometheus, /metrics); 0: ephemeral, -1: none.
    # Off unless the pod's config asks (meshns create writes 15090): a sidecar built in a test on
    # the host must not grab a well-known port by default.
    metrics_port: int = -1
    # Access log lines on stderr (logger "meshns.access"): "on" (HTTP requests and TCP
    # connections), "http" (HTTP requests only) or "off".
    access_log: str = "on"
    # mTLS: a pipe from the supervisor carrying this pod's certificate, key and trust bundle as
    # JSON lines (the first before start, then one per rotation). -1: no identity, no mTLS.
    identity_fd: int = -1
    # A pipe to the supervisor: the sidecar writes one line on it (and closes it) once every
    # listener accepts, so the supervisor probes then instead of polling a process still
    # starting (each probe is a fork into the pod). -1: nobody to tell.
    ready_fd: int = -1
    tls_handshake_timeout_s: float = 10.0
    # Inbound, before choosing TLS or plaintext: how long to wait for a silent client's first
    # bytes. A meshed client sends its ClientHello at once; only a plaintext client of a
    # server-first protocol waits this long, then is served as plaintext (PERMISSIVE).
    inbound_peek_timeout_s: float = 1.0
    # HTTP/1 requests (both listeners): a body larger than this is refused with 413 (0: no limit,
    # Envoy's default, which streams bodies of any size); a request head not complete this long
    # after its first byte is refused with 408 (Envoy's request_headers_timeout; a keep-alive
    # connection idle between requests is governed by idle_timeout_s instead).
    max_request_body_bytes: int = 0
    request_headers_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _check_semantics(self)


_FIELD_TYPES: Final[dict[str, type]] = {
    "pod": str,
    "pod_ip": str,
    "outbound_port": int,
    "inbound_port": int,
    "admin_port": int,
    "probe_port": int,
    "inbound_source_ip": str,
    "bind_ip": str,
    "connect_timeout_s": float,
    "idle_timeout_s": float,
    "drain_timeout_s": float,
    "log_level": str,
    "snapshot_dir_fd": int,
    "snapshot_file": str,
    "http_parser": str,
    "metrics_port": int,
    "identity_fd": int,
    "ready_fd": int,
    "tls_handshake_timeout_s": float,
    "inbound_peek_timeout_s": float,
    "access_log": str,
    "max_request_body_bytes": int,
    "request_headers_timeout_s": float,
}
_REQUIRED: Final = frozenset({"pod", "pod_ip"})

# Keep the type table honest: a field added to the dataclass but not here would escape validation.
assert set(_FIELD_TYPES) == {f.name for f in dataclasses.fields(SidecarConfig)}


def _check_type(key: str, value: object, want: type) -> Any:
    # bool is a subclass of int in Python, but `"outbound_port": true` is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float) if want is float else want):
        raise UserError(
            f"sidecar config: {key} must be {want.__name__}, got {type(value).__name__} {value!r}"
        )
    return float(value) if want is float else value  # type: ignore[arg-type]


def _check_ipv4(key: str, value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise UserError(f"sidecar config: {key} must be an IPv4 address, got {value!r}") from exc


def _check_semantics(cfg: SidecarConfig) -> None:
    if not cfg.pod:
        raise UserError("sidecar config: pod must not be empty")
    for key in ("pod_ip", "inbound_source_ip", "bind_ip"):
        _check_ipv4(key, getattr(cfg, key))
    for key in ("outbound_port", "inbound_port", "admin_port", "probe_port"):
        port = getattr(cfg, key)
        if not 0 <= port <= 65535:
            raise UserError(f"sidecar config: {key} must be in 0..65535, got {port}")
    if not -1 <= cfg.metrics_port <= 65535:
        raise UserError(f"sidecar config: metrics_port must be -1 (off) or in 0..65535, got {cfg.metrics_port}")
    if cfg.access_log not in ACCESS_LOG_MODES:
        raise UserError(f"sidecar config: access_log must be one of {', '.join(ACCESS_LOG_MODES)}")
    if cfg.outbound_port and cfg.outbound_port == cfg.inbound_port:
        raise UserError("sidecar config: outbound_port and inbound_port must differ")
    for key in ("connect_timeout_s", "idle_timeout_s", "drain_timeout_s", "tls_handshake_timeout_s",
                "inbound_peek_timeout_s", "request_headers_timeout_s"):
        value = getattr(cfg, key)
        if not 0 < value < float("inf"):  # also rejects NaN
            raise UserError(f"sidecar config: {key} must be a positive finite number, got {value}")
    if cfg.max_request_body_bytes < 0:
        raise UserError(f"sidecar config: max_request_body_bytes must be 0 (no limit) or more, "
                        f"got {cfg.max_request_body_bytes}")
    if cfg.http_parser not in HTTP_PARSERS:
        raise UserError(f"sidecar config: http_parser must be one of {', '.join(HTTP_PARSERS)}")
    if cfg.ready_fd < -1:
        raise UserError(f"sidecar config: ready_fd must be -1 or a descriptor, got {cfg.ready_fd}")
    if cfg.snapshot_dir_fd < -1:
        raise UserError(f"sidecar config: snapshot_dir_fd must be -1 or a descriptor, got {cfg.snapshot_dir_fd}")
    if not cfg.snapshot_file:
        raise UserError("sidecar config: snapshot_file must not be empty")
    if cfg.log_level not in LOG_LEVELS:
        raise UserError(f"sidecar config: log_level must be one of {', '.join(LOG_LEVELS)}")


def config_from_dict(raw: object) -> SidecarConfig:
    """Validate a decoded JSON object into a SidecarConfig; raises UserError naming the bad key."""
    if not isinstance(raw, dict):
        raise UserError(f"sidecar config: top level must be an object, got {type(raw).__name__}")
    for key in raw:
        if key not in _FIELD_TYPES:
            raise UserError(f"sidecar config: unknown key {key!r}")
    missing = sorted(_REQUIRED - raw.keys())
    if missing:
        raise UserError(f"sidecar config: missing required key {missing[0]!r}")
    values = {key: _check_type(key, value, _FIELD_TYPES[key]) for key, value in raw.items()}
    return SidecarConfig(**values)


def load_config(path: str | Path) -> SidecarConfig:
    """Read and validate the JSON config file; unreadable or malformed files are UserErrors too.

    ``-`` reads standard input as it is: the supervisor passes the config through a pipe, which
    the proxy user could not reopen by name (/dev/stdin of a root-owned pipe is not readable).
    """
    try:
        text = sys.stdin.read() if str(path) == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"sidecar config: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"sidecar config: {path} is not valid JSON: {exc}") from exc
    return config_from_dict(raw)
