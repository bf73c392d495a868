"""Validation of every name that reaches the kernel, a file path or a rule.

Pod names become namespace names, file names under the state directory and /etc/netns, and
host names in every pod's /etc/hosts; so they are held to DNS-label rules (lower case letters,
digits, inner hyphens) and a length that keeps derived names within the kernel's limits. A name
that passes here cannot inject into a path, a shell word or an iptables rule.
"""

from __future__ import annotations

import hashlib
import re

from meshns.errors import UserError
from meshns.model import ServicePortDecl

POD_NAME_MAX = 40
_POD_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_PREFIX_RE = re.compile(r"^[a-z0-9-]{0,20}$")


def validate_pod_name(name: str) -> str:
    if not name:
        raise UserError("pod name is empty")
    if len(name) > POD_NAME_MAX:
        raise UserError(f"pod name {name!r} is too long ({len(name)} > {POD_NAME_MAX} characters)")
    if not _POD_RE.fullmatch(name):
        raise UserError(
            f"pod name {name!r} is invalid: use lower-case letters, digits and inner '-' "
            "(like a DNS label)"
        )
    return name


def validate_service_name(name: str) -> str:
    try:
        return validate_pod_name(name)
    except UserError as exc:
        raise UserError(str(exc).replace("pod name", "service name")) from None


def parse_service_decl(text: str) -> ServicePortDecl:
    """``NAME:PORT`` or ``NAME:PORT:TARGET_PORT`` (the pod listens on TARGET_PORT)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise UserError(f"--service {text!r}: expected NAME:PORT or NAME:PORT:TARGET_PORT")
    name = validate_service_name(parts[0])
    ports = []
    for p in parts[1:]:
        if not p.isdigit() or not 1 <= int(p) <= 65535:
            raise UserError(f"--service {text!r}: {p!r} is not a port (1-65535)")
        ports.append(int(p))
    return ServicePortDecl(name, ports[0], ports[-1])


_LABEL_KEY_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` with Kubernetes' label rules (so Istio subsets' labels mean the same)."""
    key, sep, value = text.partition("=")
    if not sep or not _LABEL_KEY_RE.fullmatch(key) or not _LABEL_VALUE_RE.fullmatch(value):
        raise UserError(f"--label {text!r}: expected KEY=VALUE (letters, digits, '.', '_', '-')")
    return key, value


def validate_ifname(name: str, what: str = "interface name") -> str:
    if not _IFNAME_RE.fullmatch(name) or name in {".", ".."}:
        raise UserError(f"{what} {name!r} is invalid: 1-15 characters of letters, digits, '_', '.', '-'")
    return name


def validate_ns_prefix(prefix: str) -> str:
    if not _PREFIX_RE.fullmatch(prefix):
        raise UserError(f"namespace prefix {prefix!r} is invalid: up to 20 of a-z, 0-9, '-'")
    return prefix


def netns_name(prefix: str, pod: str) -> str:
    return f"{prefix}{pod}"


def veth_host_name(netns: str) -> str:
    """Host end of the pod's veth pair: derived from the namespace name, so it is unique across
    meshes on one host, fits IFNAMSIZ (15), and gc can recompute it from the registry alone."""
    return "mv" + hashlib.sha256(netns.encode()).hexdigest()[:10]
